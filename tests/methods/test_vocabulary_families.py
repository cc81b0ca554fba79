"""LogitsDistil (each vocab_head), VocabDistil and ERDistill on every family of tests/families.py, in
both stages where the stage applies (decoder LMs: fine-tuning only). Each combination either trains
(compute_losses, backward, one optimizer step, finite terms before and after) or is refused with a
ValueError naming the family, the reason and the fix when the method is built."""

from __future__ import annotations

import pytest
import torch

from lightning_kd.methods import ERDistill, LogitsDistil, VocabDistil
from tests.conftest import make_batch
from tests.families import DECODERS, FAMILIES, make_family_model
from tests.models.test_vocab_head import FACTORISED, make_lm

VARIANTS = {
    # name: (method, stages, options)
    "logits_distil/mlm": (LogitsDistil, ("classification",), {"vocab_head": "mlm"}),
    "logits_distil/tied": (LogitsDistil, ("classification",), {"vocab_head": "tied"}),
    "logits_distil": (LogitsDistil, ("mlm",), {}),  # pre-training: the masked-LM logits themselves
    "vocab_distil/mlm": (VocabDistil, ("classification",), {"vocab_head": "mlm"}),
    "vocab_distil/tied": (VocabDistil, ("classification",), {"vocab_head": "tied"}),
    "vocab_distil": (VocabDistil, ("mlm",), {}),
    "erdistill": (ERDistill, ("classification", "mlm"), {}),
}
CASES = [
    pytest.param(family, stage, variant, id=f"{family}-{stage}-{variant}")
    for family in FAMILIES
    for variant, (_, stages, _) in VARIANTS.items()
    for stage in stages
    if not (stage == "mlm" and family in DECODERS)
]


def refusal(family: str, variant: str) -> str | None:
    """The message pattern a combination is refused with, or ``None`` when it trains."""
    if variant.endswith("/tied") and family in FACTORISED:
        # H·Eᵀ needs the rows in the hidden space; the fix is the family's masked-LM head.
        return rf"vocab_head='tied' does not apply to the teacher 0: \w+ \({family}\) maps its 16-wide word embeddings into its 32-wide hidden space.*vocab_head: mlm"
    return None


@pytest.fixture(scope="module")
def counts_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("counts") / "counts.txt"
    path.write_text("\n".join(str(c) for c in torch.randint(0, 100, (220,), generator=torch.Generator().manual_seed(0)).tolist()))
    return str(path)


def build(family: str, stage: str, variant: str, tokenizer_dir, counts_file):
    method, _, options = VARIANTS[variant]
    options = dict(options)
    teacher = make_family_model(family, stage, layers=4, seed=1)
    student = make_family_model(family, stage, layers=2, seed=2)
    if options.get("vocab_head") == "mlm":  # a classifier has no LM head: each comes from the family's LM
        options.update(teacher_mlm_heads=[make_lm(family, 4, seed=1)], student_mlm_head=make_lm(family, 2, seed=2))
    if method is VocabDistil:
        options.update(export_tokenizer=str(tokenizer_dir), token_counts=counts_file, size_multiple=16)
    if method is not ERDistill:
        options["temperature"] = 2.0
    return method(teacher=teacher, student=student, **options)


@pytest.mark.parametrize(("family", "stage", "variant"), CASES)
def test_trains_one_step_or_is_refused_at_construction(family, stage, variant, tiny_tokenizer_dir, counts_file):
    expected = refusal(family, variant)
    if expected is not None:
        with pytest.raises(ValueError, match=expected):
            build(family, stage, variant, tiny_tokenizer_dir, counts_file)
        return
    method = build(family, stage, variant, tiny_tokenizer_dir, counts_file)
    batch = make_batch(stage)
    optimizer = torch.optim.AdamW([p for _, p in method.trainable_named_parameters()], lr=1e-3)
    terms = method.compute_losses(batch)
    wanted = {"local", "global"} if variant == "erdistill" else {"vocabulary"}
    assert wanted <= set(terms), sorted(terms)
    for name, value in terms.items():
        assert torch.isfinite(value), f"{name} = {value}"
    terms["loss"].backward()
    optimizer.step()
    assert all(torch.isfinite(v) for v in method.compute_losses(batch).values())


def test_vocab_distil_gathers_an_untied_student_head_to_the_kept_rows(tiny_tokenizer_dir, counts_file):
    """Llama's lm_head is untied: the student's copy of it keeps the kept tokens' rows, in row order."""
    method = build("llama", "classification", "vocab_distil/mlm", tiny_tokenizer_dir, counts_file)
    rows = method.vocab_map.row_token
    source = make_lm("llama", 2, seed=2).get_output_embeddings().weight
    assert method.student_vocab_head.decoder.shape == (rows.numel(), 32)
    torch.testing.assert_close(method.student_vocab_head.decoder.detach(), source.detach()[rows])
    assert method.teacher_vocab_heads[0].decoder.shape == (220, 32)  # the teacher keeps every column


@pytest.mark.parametrize("family", sorted(FACTORISED))
def test_factorised_heads_read_the_model_s_own_hidden_to_embedding_map(family):
    """With vocab_head: mlm, ELECTRA's and ALBERT's classifiers score words through their MLM head's
    hidden → embedding dense before the tied 16-wide decoder."""
    method = build(family, "classification", "logits_distil/mlm", None, None)
    dense = method.student_vocab_head.transform.dense
    assert (dense.in_features, dense.out_features) == (32, 16)
    assert method.student_vocab_head.decoder is None  # tied to the student's current 16-wide embeddings


@pytest.mark.parametrize("family", list(FAMILIES))
def test_vocab_distil_export_reloads_with_the_students_logits(family, tiny_tokenizer_dir, counts_file, tmp_path):
    """The compressed student saves and reloads as a plain HF model with the same logits (RoBERTa, XLM-R and
    MPNet keep the token their position ids count from at its own row)."""
    from transformers import AutoModelForMaskedLM, AutoModelForSequenceClassification

    stage, variant = ("classification", "vocab_distil/tied") if family in DECODERS else ("mlm", "vocab_distil")
    method = build(family, stage, variant, tiny_tokenizer_dir, counts_file).eval()
    assert all(method.vocab_map.student_row[i] == i for i in method.pinned_ids)
    out = method.export_student(tmp_path / "student")
    auto = AutoModelForMaskedLM if stage == "mlm" else AutoModelForSequenceClassification
    reloaded = auto.from_pretrained(out).eval()
    batch = make_batch(stage)
    inputs = {"input_ids": method.vocab_map.student_ids(batch["input_ids"]), "attention_mask": batch["attention_mask"]}
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**inputs).logits, method.student(**inputs).logits, rtol=1e-5, atol=1e-5)
