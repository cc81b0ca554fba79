"""KD and StudentOnly: the method contract in both stages, the loss against a written-out formula, errors."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_kd.losses.prediction import PredictionLoss
from lightning_kd.methods import KD, StudentOnly
from tests.conftest import make_batch, make_tiny_bert
from tests.methods.contract import check_contract


@pytest.mark.parametrize("stage", ["classification", "mlm"])
def test_kd_contract(stage, tmp_path):
    teacher = make_tiny_bert(stage, seed=1)
    student = make_tiny_bert(stage, seed=2, layers=2, hidden=16)
    method = KD(teacher=teacher, student=student, prediction=PredictionLoss(temperature=2.0))
    check_contract(method, make_batch(stage), tmp_path)


def test_student_only_contract(tmp_path):
    method = StudentOnly(student=make_tiny_bert("classification", seed=2, layers=2, hidden=16))
    result = check_contract(method, make_batch(), tmp_path)
    assert set(result["first"]) == {"hard", "loss"}


def test_kd_finetune_loss_matches_formula():
    teacher, student = make_tiny_bert(seed=1), make_tiny_bert(seed=2, layers=2, hidden=16)
    with torch.no_grad():  # spread the tiny models' logits so the loss is far from zero
        teacher.classifier.weight.mul_(200.0)
        student.classifier.weight.mul_(200.0)
    batch, T = make_batch(), 3.0
    method = KD(teacher=teacher, student=student, prediction=PredictionLoss(soft_weight=0.7, hard_weight=0.2, temperature=T)).eval()
    terms = method.compute_losses(batch)
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    with torch.no_grad():
        zs, zt = student(**inputs).logits.double(), teacher(**inputs).logits.double()
    expected_soft = 0.0
    for b in range(zs.shape[0]):
        p = [math.exp(v / T) for v in zt[b].tolist()]
        q = [math.exp(v / T) for v in zs[b].tolist()]
        p = [v / sum(p) for v in p]
        q = [v / sum(q) for v in q]
        expected_soft += sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q))
    expected_soft = 0.7 * T * T * expected_soft / zs.shape[0]
    logp = torch.log_softmax(zs, -1)
    expected_hard = 0.2 * -logp[torch.arange(zs.shape[0]), batch["labels"]].mean()
    assert terms["soft"].item() == pytest.approx(expected_soft, rel=1e-4)
    assert terms["hard"].item() == pytest.approx(expected_hard.item(), rel=1e-4)


def test_kd_pretraining_soft_term_covers_masked_tokens_only():
    teacher, student = make_tiny_bert("mlm", seed=1), make_tiny_bert("mlm", seed=2, layers=2)
    batch = make_batch("mlm")
    method = KD(teacher=teacher, student=student, prediction=PredictionLoss(hard_weight=0.0, temperature=2.0)).eval()
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    with torch.no_grad():
        zs, zt = student(**inputs).logits, teacher(**inputs).logits
    kl = (zt.div(2).softmax(-1) * (zt.div(2).log_softmax(-1) - zs.div(2).log_softmax(-1))).sum(-1)
    keep = batch["labels"].ne(-100)
    expected = 4.0 * kl[keep].mean()
    assert method.compute_losses(batch)["soft"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_teacher_stays_in_eval_mode_and_out_of_checkpoints(tiny_teacher, tiny_student):
    method = KD(teacher=tiny_teacher, student=tiny_student)
    method.train()
    assert method.student.training and not method.teachers[0].training
    checkpoint = {"state_dict": method.state_dict()}
    method.on_save_checkpoint(checkpoint)
    assert checkpoint["state_dict"] and not any(k.startswith("teachers.") for k in checkpoint["state_dict"])
    method.on_load_checkpoint(checkpoint)
    method.load_state_dict(checkpoint["state_dict"], strict=True)


def test_bad_inputs_fail_fast(tiny_teacher, tiny_student):
    with pytest.raises(ValueError, match="needs a teacher|distils from a teacher"):
        KD(student=tiny_student)
    with pytest.raises(ValueError, match="vocabulary"):
        KD(teacher=tiny_teacher, student=make_tiny_bert(seed=3, layers=2, vocab_size=300))
    with pytest.raises(ValueError, match="labels"):
        KD(teacher=tiny_teacher, student=tiny_student, num_labels=3)
    with pytest.raises(ValueError, match="between 1 and 4"):
        KD(teacher=tiny_teacher, student_init="teacher_first", student_layers=9)
    with pytest.raises(ValueError, match="0-based teacher layers"):
        KD(teacher=tiny_teacher, student_init="teacher_layers", student_layers=[0, 7])
    with pytest.raises(ValueError, match="temperature"):
        KD(teacher=tiny_teacher, student=tiny_student, prediction=PredictionLoss(temperature=0))
    with pytest.raises(ValueError, match="trains the student alone"):
        StudentOnly(student=tiny_student, teacher=tiny_teacher)


def test_a_run_without_teachers_has_no_strategy_submodule():
    """StudentOnly's model summary lists the student alone (no empty `multi_teacher Average`)."""
    from pytorch_lightning.utilities.model_summary import ModelSummary

    method = StudentOnly(student=make_tiny_bert(seed=2, layers=2))
    assert "multi_teacher" not in dict(method.named_children())
    assert "multi_teacher" not in str(ModelSummary(method, max_depth=1))
    with pytest.raises(ValueError, match="remove `multi_teacher`"):
        from lightning_kd.methods.multi_teacher import TMKD

        StudentOnly(student=make_tiny_bert(seed=2, layers=2), multi_teacher=TMKD())
