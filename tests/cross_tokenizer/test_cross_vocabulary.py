"""Losses between two vocabularies: ULD against a plain-Python reference, bucketed divergences over
matched tokens against hand-computed values, and the vocabulary match on real tokenizers."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lightning_kd.cross_tokenizer import token_key, token_scheme
from lightning_kd.losses.cross_vocabulary import VocabularyMatch, hybrid_rows, matched_divergence_rows, uld_rows
from tests.cross_tokenizer.tokenizers import metaspace_bpe, wordpiece_and_bpe


def _rows(n: int, vs: int, vt: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, vs, generator=generator) * 2, torch.randn(n, vt, generator=generator) * 2


def _python_uld(student, teacher, temperature=1.0, top=None):
    """ULD row by row in plain Python: sorted(..., reverse=True), explicit zero padding, optional truncation."""
    values = []
    for s_row, t_row in zip(student.tolist(), teacher.tolist()):
        q = sorted(_softmax(s_row, temperature), reverse=True)
        p = sorted(_softmax(t_row, temperature), reverse=True)
        width = max(len(q), len(p))
        q += [0.0] * (width - len(q))
        p += [0.0] * (width - len(p))
        if top is None:
            values.append(sum(abs(a - b) for a, b in zip(q, p)))
        else:
            head = sum(abs(a - b) for a, b in zip(q[:top], p[:top]))
            values.append(head + abs(sum(q[top:]) - sum(p[top:])))
    return torch.tensor(values)


def _softmax(row, temperature):
    peak = max(row)
    weights = [math.exp((x - peak) / temperature) for x in row]
    total = sum(weights)
    return [w / total for w in weights]


def _autograd_uld(student, teacher):
    """ULD written with differentiable torch ops, for the gradient."""
    q = torch.softmax(student, -1).sort(-1, descending=True).values
    p = torch.softmax(teacher, -1).sort(-1, descending=True).values
    width = max(q.shape[-1], p.shape[-1])
    return (F.pad(q, (0, width - q.shape[-1])) - F.pad(p, (0, width - p.shape[-1]))).abs().sum(-1)


# ---- ULD -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("vs,vt", [(7, 11), (11, 7), (9, 9)])
@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_uld_matches_python_reference(vs, vt, temperature):
    student, teacher = _rows(6, vs, vt)
    assert torch.allclose(uld_rows(student, teacher, temperature), _python_uld(student, teacher, temperature), atol=1e-6)


def test_uld_is_zero_for_identical_distributions():
    student, _ = _rows(4, 13, 13)
    assert torch.allclose(uld_rows(student, student.clone()), torch.zeros(4), atol=1e-6)
    # A permuted copy is the same sorted vector, and extra zero-probability columns pad with zeros.
    padded = torch.cat([student[:, torch.randperm(13)], torch.full((4, 3), -1e4)], dim=1)
    assert torch.allclose(uld_rows(student, padded), torch.zeros(4), atol=1e-6)


def test_uld_ignores_vocabulary_order():
    student, teacher = _rows(5, 10, 17, seed=1)
    reference = uld_rows(student, teacher)
    assert torch.allclose(uld_rows(student[:, torch.randperm(10)], teacher), reference, atol=1e-6)
    assert torch.allclose(uld_rows(student, teacher[:, torch.randperm(17)]), reference, atol=1e-6)


def test_uld_gradient_reaches_the_student_only():
    student, teacher = _rows(5, 8, 12, seed=2)
    weights = torch.randn(5)
    mine = student.clone().requires_grad_()
    theirs = teacher.clone().requires_grad_()
    (uld_rows(mine, theirs) * weights).sum().backward()
    assert theirs.grad is None
    expected = student.clone().requires_grad_()
    (_autograd_uld(expected, teacher) * weights).sum().backward()
    assert torch.allclose(mine.grad, expected.grad, atol=1e-6)


def test_uld_chunks_change_nothing():
    student, teacher = _rows(7, 9, 14, seed=3)
    results = []
    for chunk_rows in (1, 3, None):
        leaf = student.clone().requires_grad_()
        values = uld_rows(leaf, teacher, chunk_rows=chunk_rows)
        values.sum().backward()
        results.append((values.detach(), leaf.grad))
    for values, grad in results[1:]:
        assert torch.equal(values, results[0][0])
        assert torch.allclose(grad, results[0][1], atol=1e-7)


def test_uld_top_is_exact_when_it_keeps_everything_and_a_lower_bound_otherwise():
    student, teacher = _rows(6, 9, 15, seed=4)
    exact = uld_rows(student, teacher)
    for top in (15, 40):
        assert torch.allclose(uld_rows(student, teacher, top=top), exact, atol=1e-6)
    for top in (1, 4, 9, 12):
        approximate = uld_rows(student, teacher, top=top)
        assert torch.allclose(approximate, _python_uld(student, teacher, top=top), atol=1e-6)
        assert (approximate <= exact + 1e-6).all()


def test_uld_top_gradient_matches_autograd():
    student, teacher = _rows(4, 9, 15, seed=5)
    top = 5

    def reference(s):
        q = torch.softmax(s, -1).sort(-1, descending=True).values
        p = torch.softmax(teacher, -1).sort(-1, descending=True).values
        head = (q[:, :top] - p[:, :top]).abs().sum(-1)
        return head + (q[:, top:].sum(-1) - p[:, top:].sum(-1)).abs()

    mine, theirs = student.clone().requires_grad_(), student.clone().requires_grad_()
    uld_rows(mine, teacher, top=top).sum().backward()
    reference(theirs).sum().backward()
    assert torch.allclose(mine.grad, theirs.grad, atol=1e-6)


@pytest.mark.parametrize("top", [None, 4])
def test_scaled_uld_against_python_and_autograd(top):
    """Rows multiplied by exp(log-scale): the value is the Python ULD of the scaled vectors, and the gradient
    into the student's logits and its log-scale is autograd's through a differentiable sort."""
    student, teacher = _rows(5, 8, 12, seed=8)
    generator = torch.Generator().manual_seed(9)
    s_scale, t_scale = -3 * torch.rand(5, generator=generator), -3 * torch.rand(5, generator=generator)
    values = uld_rows(student, teacher, 1.5, top=top, student_log_scale=s_scale, teacher_log_scale=t_scale)
    want = []
    for row in range(5):
        q = [math.exp(float(s_scale[row])) * x for x in sorted(_softmax(student[row].tolist(), 1.5), reverse=True)]
        p = [math.exp(float(t_scale[row])) * x for x in sorted(_softmax(teacher[row].tolist(), 1.5), reverse=True)]
        q += [0.0] * (len(p) - len(q))
        cut = len(p) if top is None else top
        want.append(sum(abs(a - b) for a, b in zip(q[:cut], p[:cut])) + abs(sum(q[cut:]) - sum(p[cut:])))
    torch.testing.assert_close(values, torch.tensor(want, dtype=torch.float32), rtol=1e-5, atol=1e-7)

    def reference(s, scale):
        q = (torch.softmax(s / 1.5, -1) * scale.exp()[:, None]).sort(-1, descending=True).values
        p = (torch.softmax(teacher / 1.5, -1) * t_scale.exp()[:, None]).sort(-1, descending=True).values
        q = F.pad(q, (0, p.shape[-1] - q.shape[-1]))
        cut = p.shape[-1] if top is None else top
        return (q[:, :cut] - p[:, :cut]).abs().sum(-1) + (q[:, cut:].sum(-1) - p[:, cut:].sum(-1)).abs()

    weights = torch.rand(5, generator=generator)
    mine = [student.clone().requires_grad_(), s_scale.clone().requires_grad_()]
    theirs = [student.clone().requires_grad_(), s_scale.clone().requires_grad_()]
    (weights * uld_rows(mine[0], teacher, 1.5, top=top, student_log_scale=mine[1], teacher_log_scale=t_scale)).sum().backward()
    (weights * reference(*theirs)).sum().backward()
    torch.testing.assert_close(mine[0].grad, theirs[0].grad, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(mine[1].grad, theirs[1].grad, rtol=1e-5, atol=1e-7)
    chunked = uld_rows(student, teacher, 1.5, chunk_rows=2, top=top, student_log_scale=s_scale, teacher_log_scale=t_scale)
    torch.testing.assert_close(chunked, values)
    unscaled = uld_rows(student, teacher, 1.5, top=top, student_log_scale=torch.zeros(5), teacher_log_scale=torch.zeros(5))
    torch.testing.assert_close(unscaled, uld_rows(student, teacher, 1.5, top=top))
    with pytest.raises(ValueError, match="one value per row"):
        uld_rows(student, teacher, student_log_scale=torch.zeros(4))


def test_uld_low_precision_student_gets_its_own_dtype_back():
    student, teacher = _rows(3, 6, 8, seed=6)
    leaf = student.to(torch.bfloat16).requires_grad_()
    values = uld_rows(leaf, teacher.to(torch.bfloat16))
    values.sum().backward()
    assert values.dtype == torch.float32 and leaf.grad.dtype == torch.bfloat16


def test_uld_refuses_mismatched_rows_and_bad_arguments():
    student, teacher = _rows(3, 6, 8)
    with pytest.raises(ValueError, match="rows"):
        uld_rows(student, teacher[:2])
    with pytest.raises(ValueError, match="top"):
        uld_rows(student, teacher, top=0)
    with pytest.raises(ValueError, match="temperature"):
        uld_rows(student, teacher, temperature=0.0)


# ---- matched divergence ------------------------------------------------------------------------


def _full_kl(student, teacher, temperature=1.0):
    log_p = F.log_softmax(teacher / temperature, -1)
    return (log_p.exp() * (log_p - F.log_softmax(student / temperature, -1))).sum(-1)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_identity_match_is_the_full_divergence(temperature):
    student, teacher = _rows(5, 12, 12, seed=7)
    match = VocabularyMatch.identity(12)
    assert torch.allclose(matched_divergence_rows(student, teacher, match, temperature), _full_kl(student, teacher, temperature), atol=1e-6)
    reverse = matched_divergence_rows(student, teacher, match, temperature, kind="reverse_kl")
    assert torch.allclose(reverse, _full_kl(teacher, student, temperature), atol=1e-6)
    p, q = F.softmax(teacher / temperature, -1), F.softmax(student / temperature, -1)
    m = 0.3 * p + 0.7 * q
    jsd = 0.3 * (p * (p / m).log()).sum(-1) + 0.7 * (q * (q / m).log()).sum(-1)
    assert torch.allclose(matched_divergence_rows(student, teacher, match, temperature, kind="jsd", jsd_beta=0.3), jsd, atol=1e-6)


def test_identity_match_gradient_is_finite_and_the_full_kl_gradient():
    student, teacher = _rows(4, 10, 10, seed=8)
    mine, theirs = student.clone().requires_grad_(), student.clone().requires_grad_()
    matched_divergence_rows(mine, teacher, VocabularyMatch.identity(10)).sum().backward()
    _full_kl(theirs, teacher).sum().backward()
    assert torch.isfinite(mine.grad).all()
    assert torch.allclose(mine.grad, theirs.grad, atol=1e-6)


def test_bucket_mass_by_hand():
    # Student vocabulary of 3, teacher of 4; student 0 ↔ teacher 2, student 1 ↔ teacher 0.
    q = torch.tensor([[0.5, 0.2, 0.3]])
    p = torch.tensor([[0.1, 0.2, 0.6, 0.1]])
    match = VocabularyMatch(torch.tensor([0, 1]), torch.tensor([2, 0]))
    # Buckets: teacher (0.6, 0.1, 0.2 + 0.1), student (0.5, 0.2, 0.3).
    expected = 0.6 * math.log(0.6 / 0.5) + 0.1 * math.log(0.1 / 0.2) + 0.3 * math.log(0.3 / 0.3)
    value = matched_divergence_rows(q.log(), p.log(), match)
    assert value.item() == pytest.approx(expected, abs=1e-6)
    tvd = matched_divergence_rows(q.log(), p.log(), match, kind="tvd")
    assert tvd.item() == pytest.approx(0.5 * (0.1 + 0.1 + 0.0), abs=1e-6)


def test_matched_divergence_gradient_reaches_the_student_only():
    student, teacher = _rows(3, 6, 9, seed=9)
    match = VocabularyMatch(torch.tensor([0, 2, 5]), torch.tensor([8, 1, 3]))
    mine, theirs = student.clone().requires_grad_(), teacher.clone().requires_grad_()
    matched_divergence_rows(mine, theirs, match).sum().backward()
    assert theirs.grad is None
    assert torch.isfinite(mine.grad).all() and mine.grad.abs().sum() > 0


def test_matched_divergence_ignores_vocabulary_order():
    student, teacher = _rows(4, 7, 9, seed=10)
    match = VocabularyMatch(torch.tensor([0, 3, 6]), torch.tensor([5, 0, 2]))
    reference = matched_divergence_rows(student, teacher, match)
    s_perm, t_perm = torch.randperm(7), torch.randperm(9)
    # Column c of a permuted side holds old column perm[c], so old id k moved to argsort(perm)[k].
    moved = VocabularyMatch(s_perm.argsort()[match.student_ids], t_perm.argsort()[match.teacher_ids])
    assert torch.allclose(matched_divergence_rows(student[:, s_perm], teacher[:, t_perm], moved), reference, atol=1e-6)


def test_match_validation():
    with pytest.raises(ValueError, match="distinct"):
        VocabularyMatch(torch.tensor([0, 0]), torch.tensor([1, 2]))
    with pytest.raises(ValueError, match=r"\(M,\)"):
        VocabularyMatch(torch.tensor([0, 1]), torch.tensor([1]))
    student, teacher = _rows(2, 4, 4)
    with pytest.raises(ValueError, match="columns"):
        matched_divergence_rows(student, teacher, VocabularyMatch.identity(5))


# ---- hybrid ------------------------------------------------------------------------------------


def test_hybrid_ends():
    student, teacher = _rows(4, 8, 11, seed=11)
    empty = VocabularyMatch(torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long))
    assert torch.allclose(hybrid_rows(student, teacher, empty), uld_rows(student, teacher), atol=1e-6)
    same, other = _rows(4, 8, 8, seed=12)
    assert torch.allclose(hybrid_rows(same, other, VocabularyMatch.identity(8)), _full_kl(same, other), atol=1e-6)


def test_hybrid_unmatched_term_and_gradient():
    student, teacher = _rows(3, 6, 9, seed=13)
    match = VocabularyMatch(torch.tensor([1, 4]), torch.tensor([7, 0]))
    mine, theirs = student.clone().requires_grad_(), teacher.clone().requires_grad_()
    values = hybrid_rows(mine, theirs, match, matched_weight=0.0, unmatched_weight=2.0)
    values.sum().backward()
    assert theirs.grad is None

    # Reference: sorted L1 between the un-renormalised probabilities of the unmatched columns.
    leaf = student.clone().requires_grad_()
    q = torch.softmax(leaf, -1)[:, [0, 2, 3, 5]].sort(-1, descending=True).values
    p = torch.softmax(teacher, -1)[:, [1, 2, 3, 4, 5, 6, 8]].sort(-1, descending=True).values
    reference = 2.0 * (F.pad(q, (0, 3)) - p).abs().sum(-1)
    reference.sum().backward()
    assert torch.allclose(values, reference, atol=1e-6)
    assert torch.allclose(mine.grad, leaf.grad, atol=1e-6)
    both = hybrid_rows(student, teacher, match, matched_weight=0.5, unmatched_weight=2.0)
    assert torch.allclose(both, 0.5 * matched_divergence_rows(student, teacher, match) + reference.detach(), atol=1e-6)


# ---- vocabulary match on real tokenizers -------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    wordpiece, bpe = wordpiece_and_bpe(tmp_path_factory.mktemp("tokenizers"))
    return wordpiece, bpe, metaspace_bpe(tmp_path_factory.mktemp("metaspace"))


@pytest.mark.parametrize(
    "token,scheme,key",
    [
        ("Ġcat", "byte_level", (True, b"cat")),
        ("cat", "byte_level", (False, b"cat")),
        ("Ċ", "byte_level", (False, b"\n")),
        ("ĠĠ", "byte_level", (True, b" ")),
        ("Ã©", "byte_level", (False, "é".encode())),
        ("Ã", "byte_level", (False, b"\xc3")),
        ("▁cat", "sentencepiece", (True, b"cat")),
        ("▁", "sentencepiece", (True, b"")),
        ("<0x0A>", "sentencepiece", (False, b"\n")),
        ("<0xC3>", "sentencepiece", (False, b"\xc3")),
        ("##at", "wordpiece", (False, b"at")),
        ("cat", "wordpiece", (True, b"cat")),
        ("cat", "word", (True, b"cat")),
    ],
)
def test_token_keys(token, scheme, key):
    assert token_key(token, scheme) == key


def test_schemes_of_the_test_tokenizers(tokenizers):
    assert [token_scheme(t) for t in tokenizers] == ["wordpiece", "byte_level", "sentencepiece"]


def _expected_bpe_string(wordpiece_token: str) -> str:
    return wordpiece_token[2:] if wordpiece_token.startswith("##") else "Ġ" + wordpiece_token


def test_wordpiece_to_byte_level_match(tokenizers):
    wordpiece, bpe, _ = tokenizers
    match = VocabularyMatch.between(wordpiece, bpe)
    assert len(match) > 50
    assert match.student_ids.tolist() == sorted(match.student_ids.tolist())
    pairs = list(zip(wordpiece.convert_ids_to_tokens(match.student_ids.tolist()), bpe.convert_ids_to_tokens(match.teacher_ids.tolist())))
    assert all(_expected_bpe_string(s) == t for s, t in pairs)
    assert ("the", "Ġthe") in pairs and ("##s", "s") in pairs
    # Complete: every non-special WordPiece entry whose byte-level spelling exists is matched.
    bpe_vocab = bpe.get_vocab()
    special = set(wordpiece.all_special_ids)
    expected = {i for token, i in wordpiece.get_vocab().items() if i not in special and _expected_bpe_string(token) in bpe_vocab}
    assert set(match.student_ids.tolist()) == expected
    assert not set(match.teacher_ids.tolist()) & set(bpe.all_special_ids)


def test_sentencepiece_to_byte_level_match(tokenizers):
    _, bpe, metaspace = tokenizers
    match = VocabularyMatch.between(metaspace, bpe)
    pairs = list(zip(metaspace.convert_ids_to_tokens(match.student_ids.tolist()), bpe.convert_ids_to_tokens(match.teacher_ids.tolist())))
    assert all(s.replace("\u2581", "Ġ") == t for s, t in pairs)
    assert ("\u2581cat", "Ġcat") in pairs
    assert not set(match.student_ids.tolist()) & set(metaspace.all_special_ids)


def test_real_match_in_the_loss(tokenizers):
    wordpiece, bpe, _ = tokenizers
    match = VocabularyMatch.between(wordpiece, bpe)
    student, teacher = _rows(3, len(wordpiece), len(bpe), seed=14)
    student.requires_grad_()
    values = matched_divergence_rows(student, teacher, match) + hybrid_rows(student, teacher, match, top=32)
    values.sum().backward()
    assert torch.isfinite(values).all() and (values >= 0).all() and torch.isfinite(student.grad).all()
