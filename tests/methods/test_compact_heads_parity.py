"""Every MLM-stage method: losses and gradients with compact heads equal the full-head computation
(``method.compact_heads = False``: every row through each model's own forward, as before), and each
model projects only the rows the method reads."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from lightning_kd.losses.prediction import PredictionLoss
from lightning_kd.methods import (
    CKD,
    DIITO,
    KD,
    RAILKD,
    AnnealingKD,
    ContinuationKD,
    DistilBERT,
    ERDistill,
    LogitsDistil,
    MiniLM,
    MiniLMv2,
    MixBaseline,
    StudentOnly,
    TinyBERT,
    VocabDistil,
)
from lightning_kd.methods.diito import DIITO_PREDICTION
from lightning_kd.methods.distilbert import DISTILBERT_PREDICTION
from lightning_kd.methods.minilmv2 import MiniLMv2Settings
from lightning_kd.methods.multi_teacher import DGKD, MTBERT, RLKD, MixMT, Uncertainty
from tests.conftest import make_batch, make_tiny_bert
from tests.methods import test_mobilebert as mobilebert

V = 220


def _pair(student_hidden: int = 32) -> dict:
    return {"teacher": make_tiny_bert("mlm", seed=1), "student": make_tiny_bert("mlm", seed=2, layers=2, hidden=student_hidden)}


def _teachers() -> dict:
    return {"teachers": [make_tiny_bert("mlm", seed=1), make_tiny_bert("mlm", seed=3, layers=3)],
            "student": make_tiny_bert("mlm", seed=2, layers=2, hidden=16)}


def _annealing(cls, **knobs):
    method = cls(**_pair(), **knobs)
    method.teacher_scale = 0.5
    if cls is ContinuationKD:
        method.hard_mix, method.margin = 0.4, 0.0
    return method


def _rail():
    method = RAILKD(**_pair(16))
    method.resample_teacher_layers(torch.Generator().manual_seed(0))
    return method


def _vocab_distil(tmp_path_factory, **knobs):
    counts = tmp_path_factory.mktemp("counts") / "counts.txt"
    counts.write_text("\n".join(str(c) for c in torch.randint(0, 100, (V,), generator=torch.Generator().manual_seed(0)).tolist()))
    from tests.conftest import write_tiny_tokenizer

    tokenizer = write_tiny_tokenizer(tmp_path_factory.mktemp("tokenizer"))
    return VocabDistil(**_pair(16), export_tokenizer=str(tokenizer), token_counts=str(counts), size_multiple=16, temperature=2.0,
                       prediction=PredictionLoss(soft_weight=0.0, hard_weight=0.5, temperature=2.0), **knobs)


# name → (builder, the student's rows, teacher 0's rows)
CASES = {
    "KD": (lambda t: KD(**_pair(16), prediction=PredictionLoss(temperature=2.0)), "labelled", "labelled"),
    "KD all_tokens gkd": (lambda t: KD(**_pair(16), prediction=PredictionLoss(soft_positions="all_tokens", reduction="gkd")), "tokens", "tokens"),
    "KD mse no hard": (lambda t: KD(**_pair(16), prediction=PredictionLoss(hard_weight=0.0, soft_loss="mse")), "labelled", "labelled"),
    "KD all_positions": (lambda t: KD(**_pair(16), prediction=PredictionLoss(soft_loss="ce", soft_positions="all_positions")), "all", "all"),
    "StudentOnly": (lambda t: StudentOnly(student=make_tiny_bert("mlm", seed=2, layers=2)), "labelled", None),
    "DistilBERT": (lambda t: DistilBERT(**_pair()), "tokens", "tokens"),
    "DistilBERT masked": (lambda t: DistilBERT(**_pair(), prediction=replace(DISTILBERT_PREDICTION, soft_positions="masked_tokens"), cos_positions="masked_tokens"), "labelled", "labelled"),
    "TinyBERT intermediate": (lambda t: TinyBERT(**_pair(16)), "none", "none"),
    "TinyBERT prediction": (lambda t: TinyBERT(**_pair(16), terms=[], prediction=PredictionLoss(temperature=2.0)), "labelled", "labelled"),
    "MiniLM": (lambda t: MiniLM(**_pair(16)), "none", "none"),
    "MiniLMv2": (lambda t: MiniLMv2(**_pair(16), relation_heads=4), "none", "none"),
    "CKD": (lambda t: CKD(**_pair(16)), "labelled", "labelled"),
    "RAIL-KD": (lambda t: _rail(), "labelled", "labelled"),
    "ERDistill": (lambda t: ERDistill(**_pair(16)), "labelled", "labelled"),
    "ERDistill relations only": (lambda t: ERDistill(**_pair(16), prediction=None), "none", "none"),
    "MixBaseline": (lambda t: MixBaseline(**_pair(), methods=["TinyBERT", "MiniLMv2", "MiniLM", "DistilBERT"],
                                          minilmv2=MiniLMv2Settings(relation_heads=4), prediction_from=["DistilBERT"]), "tokens", "tokens"),
    "LogitsDistil tokens": (lambda t: LogitsDistil(**_pair(16), temperature=2.0), "tokens", "tokens"),
    "LogitsDistil targets + hard": (lambda t: LogitsDistil(**_pair(16), positions="targets", prediction=PredictionLoss(soft_weight=0.0, hard_weight=0.5), top_n=10), "labelled", "labelled"),
    "LogitsDistil targets gkd mse": (lambda t: LogitsDistil(**_pair(16), positions="targets", vocabulary_loss="mse", reduction="gkd"),
                                     "labelled", "labelled"),
    "LogitsDistil all": (lambda t: LogitsDistil(**_pair(16), positions="all"), "all", "all"),
    "VocabDistil kept": (lambda t: _vocab_distil(t, positions="targets"), "labelled", "labelled"),
    "VocabDistil all columns": (lambda t: _vocab_distil(t, columns="all"), "tokens", "tokens"),
    "DIITO": (lambda t: DIITO(**_pair()), "labelled", "labelled"),
    "DIITO all_tokens + causal cosine": (lambda t: DIITO(**_pair(), prediction=replace(DIITO_PREDICTION, soft_positions="all_tokens"), causal_cosine_weight=0.3), "tokens", "tokens"),
    "AnnealingKD": (lambda t: _annealing(AnnealingKD), "labelled", "labelled"),
    "ContinuationKD": (lambda t: _annealing(ContinuationKD, soft_positions="all_tokens"), "tokens", "tokens"),
    "MobileBERT": (lambda t: mobilebert.method(prediction=PredictionLoss(temperature=2.0)), "labelled", "labelled"),
    "KD + MT-BERT": (lambda t: KD(**_teachers(), prediction=PredictionLoss(hard_weight=0.0), multi_teacher=MTBERT()), "labelled", "labelled"),
    "KD + Uncertainty all_tokens": (lambda t: KD(**_teachers(), multi_teacher=Uncertainty(positions="all_tokens")), "tokens", "labelled"),
    "KD + Uncertainty gkd": (lambda t: KD(**_teachers(), multi_teacher=Uncertainty(reduction="gkd", mode="hard")), "labelled", "labelled"),
    "KD + RL-KD": (lambda t: KD(**_teachers(), prediction=PredictionLoss(hard_weight=0.0), multi_teacher=RLKD(num_teachers=2, num_classes=V, positions="all_tokens")),
                   "labelled", "tokens"),
    "KD + DGKD": (lambda t: KD(**_teachers(), multi_teacher=DGKD(survival_p=0.5, sum_losses=True)), "labelled", "labelled"),
    "KD + MixMT": (lambda t: KD(**_teachers(), prediction=PredictionLoss(hard_weight=0.0), multi_teacher=MixMT([Uncertainty(), RLKD(num_teachers=2, num_classes=V)])),
                   "labelled", "labelled"),
}


def _step(method, batch) -> tuple[dict, dict]:
    """Terms and student/method gradients of one step (seeded: DIITO's swap, DGKD's draw)."""
    method.zero_grad(set_to_none=True)
    for module in method.modules():
        if hasattr(module, "_previous"):
            module._previous = None  # RL-KD's agent: score each run's own first step, not the other run's
    torch.manual_seed(0)
    terms = method.compute_losses(batch)
    terms["loss"].backward()
    grads = {name: p.grad.clone() for name, p in method.named_parameters() if p.grad is not None}
    return {name: value.detach().clone() for name, value in terms.items()}, grads


def _head_rows(model) -> list[int]:
    """Rows each call of ``model``'s vocabulary decoder projects (recorded by a forward hook)."""
    seen: list[int] = []
    model._compact_probe = model.get_output_embeddings().register_forward_hook(
        lambda _m, args, _o: seen.append(args[0].numel() // args[0].shape[-1]))
    return seen


@pytest.mark.parametrize("name", list(CASES))
def test_compact_heads_give_the_full_heads_losses_and_gradients(name, tmp_path_factory):
    build, student_rows, teacher_rows = CASES[name]
    torch.manual_seed(0)
    method = build(tmp_path_factory).eval()  # eval: no dropout, so both runs see the same models
    assert method.student_features_request().logit_rows == student_rows
    if teacher_rows is not None:
        assert method.teacher_features_request(0).logit_rows == teacher_rows
    batch = make_batch("mlm")
    counted = [_head_rows(method.student), *(_head_rows(t) for t in method.teachers)]
    compact_terms, compact_grads = _step(method, batch)
    rows_seen = [list(c) for c in counted]
    method.compact_heads = False
    for c in counted:
        c.clear()
    full_terms, full_grads = _step(method, batch)
    for model in (method.student, *method.teachers):
        model._compact_probe.remove()

    assert compact_terms.keys() == full_terms.keys() and len(compact_terms) > 1
    for term in full_terms:
        torch.testing.assert_close(compact_terms[term], full_terms[term], rtol=2e-5, atol=2e-6, msg=f"{name}: term {term}")
    assert compact_grads.keys() == full_grads.keys() and compact_grads
    for key in full_grads:
        torch.testing.assert_close(compact_grads[key], full_grads[key], rtol=2e-4, atol=2e-6, msg=f"{name}: gradient of {key}")

    # The full run projects every position; the compact run only the rows its terms read.
    size, length = batch["input_ids"].shape
    assert all(rows == size * length for seen in counted for rows in seen)
    labelled, real = int(batch["labels"].ne(-100).sum()), int(batch["attention_mask"].sum())
    expected = {"none": 0, "labelled": labelled, "tokens": real, "all": size * length}
    assert all(rows == expected[student_rows] for rows in rows_seen[0])
    if teacher_rows is not None:
        assert all(rows == expected[teacher_rows] for rows in rows_seen[1])


def test_a_method_reading_logits_in_its_own_terms_keeps_every_row_by_default():
    from lightning_kd.core.module import DistillationModule

    class OwnTerms(KD):
        prediction_only_logits = DistillationModule.prediction_only_logits

    method = OwnTerms(**_pair(16))
    assert not DistillationModule.prediction_only_logits
    assert method.student_features_request().logit_rows == "all" and method.teacher_features_request(0).logit_rows == "all"


def test_fine_tuning_heads_are_never_compacted():
    method = KD(teacher=make_tiny_bert(seed=1), student=make_tiny_bert(seed=2, layers=2, hidden=16))
    assert method.student_features_request().logit_rows == "all" and method.teacher_features_request(0).logit_rows == "all"


def test_validation_reads_the_labelled_rows_only():
    method = StudentOnly(student=make_tiny_bert("mlm", seed=2, layers=2)).eval()
    batch = make_batch("mlm")
    logged = {}
    method.log = lambda name, value, **_: logged.__setitem__(name, value)
    method.log_dict = lambda metrics, **_: logged.update(metrics.compute())
    results = {}
    for compact in (True, False):
        method.compact_heads = compact
        metrics = method.task_stage.metrics(None, "val/")
        method._evaluate(batch, metrics, "val/")
        results[compact] = dict(logged)
    torch.testing.assert_close(results[True]["val/loss"], results[False]["val/loss"], rtol=1e-5, atol=1e-6)
    assert results[True]["val/mlm_accuracy"] == results[False]["val/mlm_accuracy"]


def test_the_environment_switch_and_an_explicit_setting(monkeypatch):
    method = KD(**_pair(16))
    monkeypatch.setenv("LIGHTNING_KD_COMPACT_HEADS", "0")
    assert method.student_features_request().logit_rows == "all"
    method.compact_heads = True  # an explicit setting wins
    assert method.student_features_request().logit_rows == "labelled"
    monkeypatch.setenv("LIGHTNING_KD_COMPACT_HEADS", "yes")
    with pytest.raises(ValueError, match="must be 1 .* or 0"):
        KD(**_pair(16)).student_features_request()
