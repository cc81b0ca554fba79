"""Packed causal-LM blocks with a teacher's own encoding of the same text (CausalLMDataModule teacher_tokenizer).

Student and teacher are tiny tokenizers of different families trained on one corpus: a byte-level BPE
(GPT-2 style, lossless decoding) and a SentencePiece-style metaspace BPE, in both roles; a WordPiece whose
template adds ``[CLS]`` stands in for a teacher with a BOS.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from lightning_kd.cross_tokenizer.alignment import shared_prefix_pairs
from lightning_kd.data import CausalLMDataModule
from lightning_kd.data.teacher_blocks import teacher_encoder
from tests.cross_tokenizer.tokenizers import CORPUS, metaspace_bpe, wordpiece_and_bpe

BLOCK_SIZES = (16, 7)  # 7 cuts many words and documents in the middle


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> dict:
    """Saved tokenizer directories (byte-level ``bpe``, ``metaspace``, ``wordpiece`` with [CLS]/[SEP] as BOS/EOS,
    ``eosless`` WordPiece), the loaded tokenizers, a training and a validation text file, a ``datasets`` cache."""
    root = tmp_path_factory.mktemp("causal_encodings")
    wordpiece, bpe = wordpiece_and_bpe(root / "built")
    metaspace = metaspace_bpe(root / "built")
    bpe.save_pretrained(root / "bpe")
    metaspace.save_pretrained(root / "metaspace")
    wordpiece.save_pretrained(root / "eosless")
    wordpiece.bos_token, wordpiece.eos_token = "[CLS]", "[SEP]"
    wordpiece.save_pretrained(root / "wordpiece")
    (root / "train.txt").write_text("\n".join(CORPUS) + "\n")
    (root / "validation.txt").write_text("\n".join(CORPUS[:9]) + "\n")
    return {
        **{name: str(root / name) for name in ("bpe", "metaspace", "wordpiece", "eosless")},
        "tokenizers": {"bpe": bpe, "metaspace": metaspace, "wordpiece": wordpiece},
        "train": str(root / "train.txt"), "validation": str(root / "validation.txt"), "cache": str(root / "hf_cache"),
    }


def _data(
    assets, student: str, teacher: str | list[str | None] | None, block_size: int = 16, **options
) -> CausalLMDataModule:
    """A set-up module over the corpus; ``student`` and ``teacher`` name tokenizers of ``assets``."""
    names = [teacher] if not isinstance(teacher, list) else teacher
    paths = [None if name is None else assets[name] for name in names]
    data = CausalLMDataModule(
        assets[student], train_files=[assets["train"]], validation_files=[assets["validation"]], block_size=block_size,
        batch_size=4, teacher_tokenizer=paths if isinstance(teacher, list) else paths[0], cache_dir=assets["cache"],
        **options,
    )
    data.setup("fit")
    return data


def _runs(ids: list[int], specials: set[int]) -> list[list[int]]:
    """The ids between special tokens, empty runs left out (a block may open on an EOS)."""
    runs, current = [], []
    for token in ids:
        if token in specials:
            runs, current = runs + [current] * bool(current), []
        else:
            current.append(token)
    return runs + [current] * bool(current)


def _block_text(ids: list[int], bpe) -> tuple[str, list[str]]:
    """A block's text and its document pieces, from the byte-level side's ids alone (its decoding is lossless)."""
    pieces = [bpe.decode(run) for run in _runs(ids, set(bpe.all_special_ids))]
    return "".join(pieces), pieces


def _covered(text: str, spans: list[list[int]]) -> str:
    """The characters the spans read, in order, each once; refuses a gap (a character no token read)."""
    out, read = "", 0
    for start, end in spans:
        assert start <= read, f"no token reads {text[read:start]!r}"
        out, read = out + text[read:end], max(read, end)
    return out


def _spelled(tokenizer, token: int) -> str:
    """The text one token stands for, its leading space included (decoders strip a text's first ▁)."""
    piece = tokenizer.convert_ids_to_tokens(token)
    return piece.replace("▁", " ") if "▁" in piece else tokenizer.convert_tokens_to_string([piece])


@pytest.mark.parametrize("block_size", BLOCK_SIZES)
@pytest.mark.parametrize("student, teacher", [("bpe", "metaspace"), ("metaspace", "bpe")])
def test_both_encodings_of_a_block_cover_the_same_text_and_the_students_rows_are_todays(
    assets, student, teacher, block_size
):
    data = _data(assets, student, teacher, block_size)
    plain = _data(assets, student, None, block_size)
    rows = data.datasets["train"]
    assert rows["input_ids"] == plain.datasets["train"]["input_ids"], "the student's ids are exactly today's"
    tokenizers = assets["tokenizers"]
    byte_side = "student" if student == "bpe" else "teacher"
    starts_mid_word = 0
    for row in rows:
        sides = {"student": (row["input_ids"], row["offset_mapping"]),
                 "teacher": (row["teacher_input_ids"], row["teacher_offset_mapping"])}
        text, pieces = _block_text(sides[byte_side][0], tokenizers["bpe"])
        assert pieces and all(any(piece in document for document in CORPUS) for piece in pieces)
        for side, name in (("student", student), ("teacher", teacher)):
            ids, offsets = sides[side]
            assert len(ids) == len(offsets) and (side == "teacher" or len(ids) == block_size)
            specials = set(tokenizers[name].all_special_ids)
            real = [(span, token) for token, span in zip(ids, offsets) if token not in specials]
            assert all(span == [0, 0] for token, span in zip(ids, offsets) if token in specials)
            assert _covered(text, [span for span, _ in real]) == text, "each side's tokens read the block's text"
            for (start, end), token in real:  # and each covers the characters it spells
                spelled = _spelled(tokenizers[name], token)
                if spelled == " " and text[start:end] != " ":
                    continue  # a lone ▁ prepended to a piece opening mid-word: it has the next character's span
                # A word's ▁ may be the one prepended to a piece's text: no character of it.
                assert text[start:end] in (spelled, spelled.removeprefix(" ")), (token, spelled, text[start:end])
        starts_mid_word += not text[0].isspace() and not any(document.startswith(pieces[0]) for document in CORPUS)
    assert starts_mid_word, "some block opens inside a word, so the teacher reads a word's tail"

    batch = next(iter(data.val_dataloader()))
    reference = next(iter(plain.val_dataloader()))
    for key in ("input_ids", "attention_mask", "labels"):
        assert torch.equal(batch[key], reference[key]), key


@pytest.mark.parametrize("student, teacher", [("bpe", "metaspace"), ("metaspace", "bpe")])
def test_every_word_end_is_a_shared_prefix_and_the_teacher_ids_spell_the_text(assets, student, teacher):
    data = _data(assets, student, teacher, block_size=7)
    tokenizers = assets["tokenizers"]
    teacher_tokenizer = tokenizers[teacher]
    byte_side = "input_ids" if student == "bpe" else "teacher_input_ids"
    for batch in list(data.val_dataloader()) + [data._collator()([data.datasets["train"][i] for i in range(8)])]:
        assert batch["offset_mapping"].shape == (*batch["input_ids"].shape, 2)
        mask = batch["teacher_attention_mask"]
        assert bool((batch["teacher_input_ids"][mask == 0] == teacher_tokenizer.pad_token_id).all())
        assert bool((batch["teacher_offset_mapping"][mask == 0] == 0).all()), "padding spans no character"
        rows, s_pos, t_pos = shared_prefix_pairs(batch["offset_mapping"], batch["teacher_offset_mapping"],
                                                 batch["attention_mask"], mask)
        for row in range(len(batch["input_ids"])):
            ids = batch[byte_side][row]
            ids = ids[batch["attention_mask" if student == "bpe" else "teacher_attention_mask"][row].bool()].tolist()
            text, pieces = _block_text(ids, tokenizers["bpe"])
            word_ends, where = set(), 0
            for piece in pieces:
                word_ends |= {where + p for p in range(1, len(piece) + 1)
                              if piece[p - 1] != " " and (p == len(piece) or piece[p] == " ")}
                where += len(piece)
            paired = rows == row
            ends = batch["offset_mapping"][row, s_pos[paired], 1].tolist()
            assert ends == batch["teacher_offset_mapping"][row, t_pos[paired], 1].tolist()
            assert word_ends <= set(ends), f"block text {text!r}: unpaired word ends {sorted(word_ends - set(ends))}"
            teacher_ids = batch["teacher_input_ids"][row][mask[row].bool()].tolist()
            runs = _runs(teacher_ids, set(teacher_tokenizer.all_special_ids))
            decoded = [teacher_tokenizer.decode(run) for run in runs]
            # SentencePiece's decoder drops a piece's leading space; byte-level decoding gives it back.
            assert [d.lstrip(" ") for d in decoded] == [p.lstrip(" ") for p in pieces]
            assert teacher != "bpe" or decoded == pieces


def _text_before(ids: list[int], offsets: list[list[int]], token: int) -> list[int]:
    """Per occurrence of ``token``: the end of the text read before it (0 when none)."""
    out, read = [], 0
    for current, (_, end) in zip(ids, offsets):
        if current == token:
            out.append(read)
        read = max(read, end)
    return out


@pytest.mark.parametrize("student, teacher, add_bos", [("bpe", "metaspace", None), ("metaspace", "bpe", None),
                                                        ("metaspace", "wordpiece", True)])
def test_the_teachers_eos_and_bos_fall_where_the_students_document_boundaries_do(assets, student, teacher, add_bos):
    data = _data(assets, student, teacher, block_size=7, add_bos=add_bos)
    s_tok, t_tok = assets["tokenizers"][student], assets["tokenizers"][teacher]
    closed = opened = 0
    for row in data.datasets["train"]:
        s_eos = _text_before(row["input_ids"], row["offset_mapping"], s_tok.eos_token_id)
        t_eos = _text_before(row["teacher_input_ids"], row["teacher_offset_mapping"], t_tok.eos_token_id)
        assert s_eos == t_eos, "the teacher's EOS closes each document after the same text as the student's"
        if add_bos:
            s_bos = _text_before(row["input_ids"], row["offset_mapping"], s_tok.bos_token_id)
            # ... and a block that opens mid-document opens with the teacher's BOS too (it reads every sequence from one)
            mid_document = row["input_ids"][0] != s_tok.bos_token_id
            want = ([0] if mid_document else []) + s_bos
            assert want == _text_before(row["teacher_input_ids"], row["teacher_offset_mapping"], t_tok.bos_token_id)
            opened += len(s_bos)
        else:
            specials = set(t_tok.all_special_ids)
            teacher_specials = sum(token in specials for token in row["teacher_input_ids"])
            assert teacher_specials == len(s_eos), "its EOS only: the teacher's template adds no BOS"
        closed += len(s_eos)
    assert closed >= len(CORPUS) - 1 and opened >= (len(CORPUS) - 1) * bool(add_bos), "only the dropped tail is missed"


def test_a_streamed_corpus_gives_the_same_blocks(assets):
    mapped = _data(assets, "bpe", "metaspace", block_size=7)
    streamed = _data(assets, "bpe", "metaspace", block_size=7, streaming=True)
    for one, other in zip(mapped.val_dataloader(), streamed.val_dataloader(), strict=True):
        assert one.keys() == other.keys() and all(torch.equal(one[key], other[key]) for key in one)


def test_a_list_names_each_teachers_prefix_and_the_students_own_tokenizer_is_no_second_encoding(assets):
    data = _data(assets, "bpe", [None, "metaspace"])
    assert data.teacher_encodings == [None, assets["metaspace"]]
    batch = next(iter(data.val_dataloader()))
    assert {"teacher1_input_ids", "teacher1_attention_mask", "teacher1_offset_mapping", "offset_mapping"} <= set(batch)
    same = _data(assets, "bpe", "bpe")
    assert same.teacher_encodings is None
    assert set(next(iter(same.val_dataloader()))) == {"input_ids", "attention_mask", "labels"}


@pytest.mark.parametrize("options, message", [
    (dict(prompt_field="prompt", response_field="response"), "packed plain text"),
    (dict(messages_field="messages"), "chat template"),
    (dict(separate_documents=True), "separate_documents"),
])
def test_what_is_not_packed_plain_text_is_refused(assets, options, message):
    with pytest.raises(ValueError, match=message):
        CausalLMDataModule(
            assets["bpe"], train_files=[assets["train"]], teacher_tokenizer=assets["metaspace"], **options
        )


def test_a_teacher_without_eos_or_offsets_is_refused(assets):
    with pytest.raises(ValueError, match="no EOS token"):
        _data(assets, "bpe", "eosless")
    with pytest.raises(ValueError, match="only fast tokenizers"):
        teacher_encoder("teacher_", SimpleNamespace(is_fast=False), "slow-teacher")


def test_the_fingerprint_names_the_teacher_only_when_there_is_one(assets):
    plain = _data(assets, "bpe", None).fingerprint
    assert "teacher_tokenizer" not in plain, "caches of same-tokenizer runs keep their keys"
    assert _data(assets, "bpe", "bpe").fingerprint == plain
    metaspace = _data(assets, "bpe", "metaspace").fingerprint
    assert metaspace["teacher_tokenizer"] == assets["metaspace"]
    assert _data(assets, "bpe", "metaspace").fingerprint == metaspace, "stable: the same teacher hits the same cache"
    wordpiece = _data(assets, "bpe", "wordpiece").fingerprint
    fingerprints = {plain["datasets_fingerprint"], metaspace["datasets_fingerprint"], wordpiece["datasets_fingerprint"]}
    assert len(fingerprints) == 3, "another teacher tokenizer re-tokenises"
