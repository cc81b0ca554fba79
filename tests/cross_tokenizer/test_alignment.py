"""Token alignment by character offsets: hand-checked spans, then two real tokenizers of different families."""

from __future__ import annotations

import re

import pytest
import torch

from lightning_kd.cross_tokenizer import aligned_teacher_states, shared_prefix_pairs, span_overlap
from tests.cross_tokenizer.tokenizers import metaspace_bpe, wordpiece_and_bpe

# "unhappy cats": u0 n1 h2 a3 p4 p5 y6 ␣7 c8 a9 t10 s11.
# Student (WordPiece-like): [CLS] un ##happy cats [SEP] [PAD]; the space belongs to no token.
STUDENT = torch.tensor([[[0, 0], [0, 2], [2, 7], [8, 12], [0, 0], [0, 0]]])
STUDENT_MASK = torch.tensor([[1, 1, 1, 1, 1, 0]])
# Teacher (byte-level-like): unh appy Ġc ats [PAD]; "Ġc" holds the space.
TEACHER = torch.tensor([[[0, 3], [3, 7], [7, 9], [9, 12], [0, 0]]])
TEACHER_MASK = torch.tensor([[1, 1, 1, 1, 0]])


def test_unhappy_cats_overlap_by_hand():
    expected = torch.zeros(1, 6, 5, dtype=torch.bool)
    expected[0, 1, 0] = True  # un ~ unh ("un")
    expected[0, 2, 0] = expected[0, 2, 1] = True  # ##happy ~ unh ("h"), appy; not Ġc (the space is not in ##happy)
    expected[0, 3, 2] = expected[0, 3, 3] = True  # cats ~ Ġc ("c"), ats
    assert torch.equal(span_overlap(STUDENT, TEACHER, STUDENT_MASK, TEACHER_MASK), expected)
    # Without masks the padding is still empty (0, 0) and overlaps nothing.
    assert torch.equal(span_overlap(STUDENT, TEACHER), expected)


def test_unhappy_cats_shared_prefixes_by_hand():
    # Student ends: un→2, ##happy→7, cats→12; teacher ends: 3, 7, 9, 12. Shared: 7 and 12.
    batch, student, teacher = shared_prefix_pairs(STUDENT, TEACHER, STUDENT_MASK, TEACHER_MASK)
    assert batch.tolist() == [0, 0]
    assert student.tolist() == [2, 3]
    assert teacher.tolist() == [1, 3]
    assert student.dtype == teacher.dtype == batch.dtype == torch.int64


def test_unhappy_cats_aligned_states_by_hand():
    states = torch.arange(5 * 2, dtype=torch.float32).reshape(1, 5, 2)  # teacher token j holds [2j, 2j+1]
    aligned, has_partner = aligned_teacher_states(states, span_overlap(STUDENT, TEACHER, STUDENT_MASK, TEACHER_MASK))
    expected = torch.tensor([[[0.0, 0.0], [0.0, 1.0], [1.0, 2.0], [5.0, 6.0], [0.0, 0.0], [0.0, 0.0]]])
    assert torch.equal(aligned, expected)
    assert has_partner.tolist() == [[False, True, True, True, False, False]]


def test_aligned_states_keep_autograd():
    states = torch.randn(1, 5, 3, dtype=torch.bfloat16, requires_grad=True)
    aligned, _ = aligned_teacher_states(states, span_overlap(STUDENT, TEACHER, STUDENT_MASK, TEACHER_MASK))
    assert aligned.dtype == torch.float32
    aligned.sum().backward()
    # Teacher token j receives Σ over its student partners of 1 / (that partner's count).
    expected = torch.tensor([1.0 + 0.5, 0.5, 0.5, 0.5, 0.0])
    assert torch.allclose(states.grad[0, :, 0].float(), expected)


def test_masks_remove_tokens_from_both_functions():
    teacher_mask = TEACHER_MASK.clone()
    teacher_mask[0, 1] = 0  # drop "appy"
    overlap = span_overlap(STUDENT, TEACHER, STUDENT_MASK, teacher_mask)
    assert not overlap[..., 1].any()
    assert overlap[0, 2].tolist() == [True, False, False, False, False]
    _, student, teacher = shared_prefix_pairs(STUDENT, TEACHER, STUDENT_MASK, teacher_mask)
    assert list(zip(student.tolist(), teacher.tolist())) == [(3, 3)]


def test_split_character_pairs_only_after_its_last_byte():
    # "é!" where a byte-level student splits "é" into two byte tokens that both carry the span (0, 1).
    student = torch.tensor([[[0, 1], [0, 1], [1, 2]]])
    teacher = torch.tensor([[[0, 1], [1, 2]]])
    _, s, t = shared_prefix_pairs(student, teacher)
    assert list(zip(s.tolist(), t.tolist())) == [(1, 0), (2, 1)]
    assert span_overlap(student, teacher)[0].tolist() == [[True, False], [True, False], [False, True]]


def test_segments_keep_the_two_texts_apart():
    # A pair ("ab cd", "ab"): offsets of the second text restart at 0.
    student = torch.tensor([[[0, 2], [3, 5], [0, 2]]])
    teacher = torch.tensor([[[0, 1], [1, 2], [2, 5], [0, 2]]])
    student_segments = torch.tensor([[0, 0, 1]])
    teacher_segments = torch.tensor([[0, 0, 0, 1]])
    overlap = span_overlap(student, teacher, student_segments=student_segments, teacher_segments=teacher_segments)
    assert overlap[0].tolist() == [[True, True, False, False], [False, False, True, False], [False, False, False, True]]
    _, s, t = shared_prefix_pairs(student, teacher, student_segments=student_segments, teacher_segments=teacher_segments)
    assert list(zip(s.tolist(), t.tolist())) == [(0, 1), (1, 2), (2, 3)]
    # One text assumed: the second text's "ab" collides with the first's.
    assert span_overlap(student, teacher)[0, 2].tolist() == [True, True, False, True]
    with pytest.raises(ValueError, match="both"):
        span_overlap(student, teacher, student_segments=student_segments)


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match=r"\(B, L, 2\)"):
        span_overlap(STUDENT[..., :1], TEACHER)
    with pytest.raises(ValueError, match="batch sizes"):
        shared_prefix_pairs(STUDENT.expand(2, -1, -1), TEACHER)


# ---- real tokenizers ---------------------------------------------------------------------------

TEXTS = [
    "The unhappy caterpillars sat quietly in the garden",
    "distillation teaches small students",
    "butterflies",
]


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    wordpiece, bpe = wordpiece_and_bpe(tmp_path_factory.mktemp("tokenizers"))
    return wordpiece, bpe, metaspace_bpe(tmp_path_factory.mktemp("metaspace"))


def _encode(tokenizer, texts):
    batch = tokenizer(texts, padding=True, return_offsets_mapping=True, return_tensors="pt")
    return batch["offset_mapping"], batch["attention_mask"]


def _characters(span):
    return set(range(int(span[0]), int(span[1])))


def _token_ends(offsets, mask):
    return [int(end) for (start, end), keep in zip(offsets.tolist(), mask.tolist()) if keep and end > start]


def test_tokenizers_cut_words_differently(tokenizers):
    wordpiece, bpe, metaspace = tokenizers
    word = "caterpillars"
    spans = [set(map(tuple, _encode(t, [word])[0][0].tolist())) - {(0, 0)} for t in (wordpiece, bpe, metaspace)]
    assert spans[0] != spans[1], "the test tokenizers must disagree on some boundary"


@pytest.mark.parametrize("pair", [(0, 1), (1, 0), (2, 1), (0, 2)], ids=["wp-bpe", "bpe-wp", "meta-bpe", "wp-meta"])
def test_overlap_matches_shared_characters(tokenizers, pair):
    student_tok, teacher_tok = tokenizers[pair[0]], tokenizers[pair[1]]
    s_offsets, s_mask = _encode(student_tok, TEXTS)
    t_offsets, t_mask = _encode(teacher_tok, TEXTS)
    overlap = span_overlap(s_offsets, t_offsets, s_mask, t_mask)
    for b in range(len(TEXTS)):
        teacher_chars = set().union(*(_characters(span) for span, keep in zip(t_offsets[b], t_mask[b]) if keep))
        for i in range(s_offsets.shape[1]):
            mine = _characters(s_offsets[b, i]) if s_mask[b, i] else set()
            partners = [j for j in range(t_offsets.shape[1]) if t_mask[b, j] and mine & _characters(t_offsets[b, j])]
            assert overlap[b, i].nonzero().squeeze(-1).tolist() == partners
            # Every character of the student token the teacher encodes at all lies in its partners.
            covered = set().union(*(_characters(t_offsets[b, j]) for j in partners))
            assert mine & teacher_chars <= covered


@pytest.mark.parametrize("pair", [(0, 1), (1, 0), (2, 1)], ids=["wp-bpe", "bpe-wp", "meta-bpe"])
def test_shared_prefixes_on_real_tokenizers(tokenizers, pair):
    student_tok, teacher_tok = tokenizers[pair[0]], tokenizers[pair[1]]
    s_offsets, s_mask = _encode(student_tok, TEXTS)
    t_offsets, t_mask = _encode(teacher_tok, TEXTS)
    batch, student, teacher = shared_prefix_pairs(s_offsets, t_offsets, s_mask, t_mask)
    for b, i, j in zip(batch.tolist(), student.tolist(), teacher.tolist()):
        end = int(s_offsets[b, i, 1])
        assert int(t_offsets[b, j, 1]) == end
        for offsets, mask, position in ((s_offsets, s_mask, i), (t_offsets, t_mask, j)):
            # Tokens 0..position have read every character before `end` and nothing after it.
            real = [(int(s), int(e)) for (s, e), keep in zip(offsets[b].tolist(), mask[b].tolist()) if keep and e > s]
            index = [k for k, (s, e), keep in zip(range(len(mask[b])), offsets[b].tolist(), mask[b].tolist()) if keep and e > s]
            read = [span for k, span in zip(index, real) if k <= position]
            unread = [span for k, span in zip(index, real) if k > position]
            assert max(e for _, e in read) == end
            assert all(s >= end for s, _ in unread)
    # Every end of a word is a shared prefix (both families cut there), in every example.
    for b, text in enumerate(TEXTS):
        word_ends = {m.end() for m in re.finditer(r"\w+", text)}
        paired = {int(s_offsets[b, i, 1]) for bb, i in zip(batch.tolist(), student.tolist()) if bb == b}
        assert word_ends <= paired
        assert paired <= set(_token_ends(s_offsets[b], s_mask[b])) & set(_token_ends(t_offsets[b], t_mask[b]))
    # The "caterpillars" boundaries differ, so some student ends have no partner.
    assert len(student) < int(((s_offsets[..., 1] > s_offsets[..., 0]) & s_mask.bool()).sum())


def test_text_pairs_with_segments(tokenizers):
    wordpiece, bpe, _ = tokenizers
    first, second = "unhappy cats", "happy caterpillars"
    s = wordpiece(first, second, return_offsets_mapping=True)
    t = bpe(first, second, return_offsets_mapping=True)
    s_segments = torch.tensor([[-1 if x is None else x for x in s.sequence_ids()]])
    t_segments = torch.tensor([[-1 if x is None else x for x in t.sequence_ids()]])
    s_offsets, t_offsets = torch.tensor([s["offset_mapping"]]), torch.tensor([t["offset_mapping"]])
    overlap = span_overlap(s_offsets, t_offsets, student_segments=s_segments, teacher_segments=t_segments)
    for i, j in overlap[0].nonzero().tolist():
        assert s_segments[0, i] == t_segments[0, j] >= 0
    _, student, teacher = shared_prefix_pairs(s_offsets, t_offsets, student_segments=s_segments, teacher_segments=t_segments)
    texts = (first, second)
    ends = [(int(s_segments[0, i]), texts[int(s_segments[0, i])][: int(s_offsets[0, i, 1])]) for i in student.tolist()]
    assert ends == [(0, "unhappy"), (0, "unhappy cats"), (1, "happy"), (1, "happy caterpillars")]
    assert (s_segments[0, student] == t_segments[0, teacher]).all()
