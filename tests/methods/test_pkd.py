"""PKD: contract, patience loss against a written-out formula, layer pairs, properties, errors, two teachers."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from lightning_kd.losses.prediction import PredictionLoss
from lightning_kd.methods import PKD
from lightning_kd.methods.pkd import pkd_pairs
from tests.conftest import make_batch, make_tiny_bert
from tests.methods.contract import check_contract

INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def _hidden(model, batch):
    model.eval()
    with torch.no_grad():
        return model(**{k: batch[k] for k in INPUTS}, output_hidden_states=True).hidden_states


@pytest.mark.parametrize("stage", ["classification", "mlm"])
def test_pkd_contract(stage, tmp_path):
    teacher = make_tiny_bert(stage, seed=1)
    method = PKD(teacher=teacher, student_init="teacher_first", student_layers=2)
    check_contract(method, make_batch(stage), tmp_path)


def test_pkd_contract_with_width_projection(tmp_path):
    teacher = make_tiny_bert(seed=1)
    student = make_tiny_bert(seed=2, layers=2, hidden=16)
    method = PKD(teacher=teacher, student=student, projection="student_to_teacher", pairs=["intermediate", "final"])
    check_contract(method, make_batch(), tmp_path)


@pytest.mark.parametrize(
    ("teacher_depth", "student_depth", "intermediate", "final"),
    [
        (12, 6, [2, 4, 6, 8, 10], 12),
        (12, 4, [3, 6, 9], 12),
        (6, 3, [2, 4], 6),
        (12, 5, [3, 6, 9, 11], 12),  # GKD greedy segments 3,3,3,2,1
        (12, 7, [2, 4, 6, 8, 10, 11], 12),  # segments 2,2,2,2,2,1,1
    ],
)
def test_layer_pairs_follow_the_uniform_segmentation(teacher_depth, student_depth, intermediate, final):
    pairs = pkd_pairs(["intermediate"], "uniform", teacher_depth, student_depth)
    assert pairs == [(j, t) for j, t in zip(range(1, student_depth), intermediate)]
    full = pkd_pairs(["embedding", "intermediate", "final"], "uniform", teacher_depth, student_depth)
    assert full[0] == (0, 0) and full[-1] == (student_depth, final)


def test_pkd_last_layer_map():
    assert pkd_pairs(["intermediate", "final"], "last", 12, 6) == [(1, 7), (2, 8), (3, 9), (4, 10), (5, 11), (6, 12)]


def test_patience_and_prediction_match_formula():
    """The paper's written formula: squared distance summed over the features and the pairs."""
    teacher, student = make_tiny_bert(seed=1), make_tiny_bert(seed=2, layers=2)
    with torch.no_grad():  # spread the logits so the soft term is far from zero
        teacher.classifier.weight.mul_(100.0)
        student.classifier.weight.mul_(100.0)
    batch, T, alpha, beta = make_batch(), 4.0, 0.3, 7.0
    method = PKD(
        teacher=teacher,
        student=student,
        alpha=alpha,
        beta=beta,
        pairs=["intermediate", "final"],
        feature_reduction="sum",
        pair_reduction="sum",
        prediction=PredictionLoss(temperature=T, soft_weight=1.0, hard_weight=1.0),
    ).eval()
    terms = method.compute_losses(batch)
    hs, ht = _hidden(student, batch), _hidden(teacher, batch)
    # 4 -> 2 layers: student H_1 <-> teacher H_2, student H_2 <-> teacher H_4; [CLS] only, normalised, summed.
    expected = 0.0
    for j, t in [(1, 2), (2, 4)]:
        for b in range(hs[j].shape[0]):
            s_vec, t_vec = hs[j][b, 0].tolist(), ht[t][b, 0].tolist()
            ns, nt = math.sqrt(sum(v * v for v in s_vec)), math.sqrt(sum(v * v for v in t_vec))
            expected += sum((a / ns - c / nt) ** 2 for a, c in zip(s_vec, t_vec)) / hs[j].shape[0]
    assert terms["patience"].item() == pytest.approx(beta * expected, rel=1e-5)

    inputs = {k: batch[k] for k in INPUTS}
    with torch.no_grad():
        zs, zt = student(**inputs).logits.double(), teacher(**inputs).logits.double()
    kl = (zt.div(T).softmax(-1) * (zt.div(T).log_softmax(-1) - zs.div(T).log_softmax(-1))).sum(-1).mean()
    hard = torch.nn.functional.cross_entropy(zs, batch["labels"])
    assert terms["soft"].item() == pytest.approx(alpha * T * T * kl.item(), rel=1e-4)
    assert terms["hard"].item() == pytest.approx((1 - alpha) * hard.item(), rel=1e-4)


def test_authors_code_scale_is_the_default():
    """The PKD authors' code, written out: ``F.mse_loss`` of the stacked ``(B, pairs, d)`` normalised [CLS]
    vectors (a mean over batch, pairs and features), ``beta·`` that, and the soft term
    ``KLDivLoss(reduction="mean")(log_softmax(z_S/T), softmax(z_T/T))·T²`` (a mean over batch *and* classes)
    with ``prediction.class_mean``."""
    teacher, student = make_tiny_bert(seed=1), make_tiny_bert(seed=2, layers=3)
    with torch.no_grad():
        teacher.classifier.weight.mul_(100.0)
        student.classifier.weight.mul_(100.0)
    batch, T, alpha, beta = make_batch(), 5.0, 0.4, 100.0
    method = PKD(
        teacher=teacher, student=student, alpha=alpha, beta=beta,
        prediction=PredictionLoss(temperature=T, soft_weight=1.0, hard_weight=1.0, class_mean=True),
    ).eval()
    assert method.feature_reduction == "mean" and method.pair_reduction == "mean"
    terms = method.compute_losses(batch)
    hs, ht = _hidden(student, batch), _hidden(teacher, batch)
    pairs = method.layer_pairs[0]
    assert pairs == [(1, 2), (2, 3)]  # 4 -> 3 layers (segments 2, 1, 1): student H_1, H_2 against teacher H_2, H_3
    s_stack = torch.stack([hs[j][:, 0] for j, _ in pairs], dim=1).double()
    t_stack = torch.stack([ht[t][:, 0] for _, t in pairs], dim=1).double()
    authors = torch.nn.functional.mse_loss(
        torch.nn.functional.normalize(t_stack, p=2, dim=2), torch.nn.functional.normalize(s_stack, p=2, dim=2)
    )
    assert terms["patience"].item() == pytest.approx(beta * authors.item(), rel=1e-5)

    inputs = {k: batch[k] for k in INPUTS}
    with torch.no_grad():
        zs, zt = student(**inputs).logits.double(), teacher(**inputs).logits.double()
    kl_mean = torch.nn.KLDivLoss(reduction="mean")(torch.log_softmax(zs / T, dim=1), torch.softmax(zt / T, dim=1)) * T * T
    assert terms["soft"].item() == pytest.approx(alpha * kl_mean.item(), rel=1e-4)


def test_gkd_scale_and_unnormalised_variants():
    teacher, student = make_tiny_bert(seed=1), make_tiny_bert(seed=2, layers=2)
    batch = make_batch()
    hs, ht = _hidden(student, batch), _hidden(teacher, batch)

    def patience(**kw):
        return (
            PKD(teacher=teacher, student=student, beta=1.0, prediction=None, **kw).eval().compute_losses(batch)["patience"].item()
        )

    width = hs[1].shape[-1]
    paper = patience(feature_reduction="sum", pair_reduction="sum")
    assert patience(feature_reduction="mean", pair_reduction="sum") == pytest.approx(paper / width, rel=1e-5)  # GKD
    assert patience() == pytest.approx(paper / width, rel=1e-5)  # one intermediate pair: mean = sum over pairs
    # MT-BERT style: plain MSE over every position (padding included), mean over features, summed over pairs
    mse = sum(((hs[j] - ht[t]) ** 2).mean().item() for j, t in [(1, 2), (2, 4)])
    got = patience(
        normalize=False, feature_reduction="mean", pair_reduction="sum", positions="all_positions", pairs=["intermediate", "final"]
    )
    assert got == pytest.approx(mse, rel=1e-5)
    averaged = patience(normalize=False, positions="all_positions", pairs=["intermediate", "final"])
    assert averaged == pytest.approx(mse / 2, rel=1e-5)


def test_zero_patience_for_an_exact_copy():
    teacher = make_tiny_bert(seed=1)
    method = PKD(
        teacher=teacher, student=copy.deepcopy(teacher), pairs=["embedding", "intermediate", "final"], positions="all_tokens"
    )
    terms = method.eval().compute_losses(make_batch())
    assert terms["patience"].item() == pytest.approx(0.0, abs=1e-6)
    assert terms["soft"].item() == pytest.approx(0.0, abs=1e-6)


def test_padding_invariance_with_all_tokens():
    teacher, student = make_tiny_bert(seed=1), make_tiny_bert(seed=2, layers=2)
    method = PKD(teacher=teacher, student=student, positions="all_tokens", prediction=None).eval()
    batch = make_batch()
    changed = {k: v.clone() for k, v in batch.items()}
    pad = batch["attention_mask"] == 0
    assert pad.any()
    changed["input_ids"][pad] = 7
    torch.testing.assert_close(method.compute_losses(changed)["patience"], method.compute_losses(batch)["patience"])
    # padding is part of the GKD variant, so there the value changes
    gkd = PKD(teacher=teacher, student=student, positions="all_positions", prediction=None).eval()
    assert gkd.compute_losses(changed)["patience"].item() != pytest.approx(gkd.compute_losses(batch)["patience"].item())


def test_gradients_reach_student_and_projection_only():
    teacher, student = make_tiny_bert(seed=1), make_tiny_bert(seed=2, layers=2, hidden=16)
    method = PKD(teacher=teacher, student=student, projection="teacher_to_student")
    method.compute_losses(make_batch())["loss"].backward()
    assert all(p.grad is None for p in method.teachers.parameters())
    assert method.projections[0].weight.grad is not None
    assert student.bert.encoder.layer[0].attention.self.query.weight.grad is not None


def test_two_teachers_of_different_depth_and_width():
    t1, t2 = make_tiny_bert(seed=1), make_tiny_bert(seed=3, layers=6, hidden=48)
    method = PKD(teachers=[t1, t2], student=make_tiny_bert(seed=2, layers=2), projection="teacher_to_student")
    assert method.layer_pairs == [[(1, 2)], [(1, 3)]]
    assert torch.isfinite(method.compute_losses(make_batch())["loss"])


def test_per_sample_patience_averages_to_the_scalar():
    teacher, student = make_tiny_bert(seed=1), make_tiny_bert(seed=2, layers=2)
    method = PKD(teacher=teacher, student=student).eval()
    batch = make_batch()
    from lightning_kd.core.features import capture

    s = capture(method.student, batch, method.student_request())
    t = method.run_teacher(0, batch)
    per = method.patience(batch, s, t, 0, per_sample=True)
    assert per.shape == (4,)
    torch.testing.assert_close(per.mean(), method.patience(batch, s, t, 0))


def test_bad_inputs_fail_fast(tiny_teacher):
    narrow = make_tiny_bert(seed=2, layers=2, hidden=16)
    with pytest.raises(ValueError, match="projection='student_to_teacher'"):
        PKD(teacher=tiny_teacher, student=narrow)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        PKD(teacher=tiny_teacher, student_init="teacher_first", student_layers=2, alpha=1.5)
    with pytest.raises(ValueError, match="use KD"):
        PKD(teacher=tiny_teacher, student_init="teacher_first", student_layers=2, beta=0)
    with pytest.raises(ValueError, match="non-empty list"):
        PKD(teacher=tiny_teacher, student_init="teacher_first", student_layers=2, pairs=[])
    with pytest.raises(ValueError, match="add 'final' or 'embedding'"):
        PKD(teacher=tiny_teacher, student_init="teacher_first", student_layers=1)
    with pytest.raises(ValueError, match="one teacher hidden-state index"):
        PKD(teacher=tiny_teacher, student_init="teacher_first", student_layers=2, layer_map=[2, 3, 4])
    with pytest.raises(ValueError, match="prediction is None"):
        PKD(teacher=tiny_teacher, student_init="teacher_first", student_layers=2, prediction=None, alpha=0.9)
    with pytest.raises(ValueError, match="pair_reduction"):
        PKD(teacher=tiny_teacher, student_init="teacher_first", student_layers=2, pair_reduction="max")


def test_saved_hyperparameters_keep_the_unmixed_prediction():
    teacher = make_tiny_bert(seed=1)
    method = PKD(teacher=teacher, student_init="teacher_first", student_layers=2, alpha=0.25)
    assert method.prediction.soft_weight == pytest.approx(0.25) and method.prediction.hard_weight == pytest.approx(0.75)
    saved = method.hparams["prediction"]
    assert saved.soft_weight == 1.0 and saved.hard_weight == 1.0 and method.hparams["alpha"] == 0.25
    rebuilt = PKD(teacher=teacher, student_init="teacher_first", student_layers=2, alpha=0.25, prediction=saved)
    assert rebuilt.prediction == method.prediction
