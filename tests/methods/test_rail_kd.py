"""RAIL-KD: the distance against loops, the whole loss against an independent re-derivation, the
layers used, padding invariance, gradients, the contract, two teachers and construction errors."""

from __future__ import annotations

import math

import pytest
import torch
from pytorch_lightning.utilities.exceptions import MisconfigurationException

from lightning_kd.callbacks import RailKDResampling
from lightning_kd.losses.rail import rail_distance
from lightning_kd.methods import RAILKD
from tests.callbacks.runs import fit, tiny
from tests.conftest import make_batch, make_tiny_bert
from tests.methods.contract import check_contract

INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def _normalise(v):
    norm = math.sqrt(sum(x * x for x in v))
    return [x / norm for x in v]


def test_rail_distance_matches_loops():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g)
    per_example = [sum((a - b) ** 2 for a, b in zip(_normalise(s[i].tolist()), _normalise(t[i].tolist()))) for i in range(3)]
    assert rail_distance(s, t).item() == pytest.approx(sum(per_example), rel=1e-5)
    assert rail_distance(s, t, batch_reduction="mean").item() == pytest.approx(sum(per_example) / 3, rel=1e-5)
    s3, t3, w = torch.randn(3, 2, 4, generator=g), torch.randn(3, 2, 4, generator=g), torch.tensor([0.5, 2.0])
    total = 0.0
    for i in range(3):
        for j in range(2):
            d = sum((a - b) ** 2 for a, b in zip(_normalise(s3[i, j].tolist()), _normalise(t3[i, j].tolist())))
            total += [0.5, 2.0][j] * d
    assert rail_distance(s3, t3, w).item() == pytest.approx(total, rel=1e-5)
    torch.testing.assert_close(rail_distance(s, s), torch.tensor(0.0))


def _hidden(model, batch):
    with torch.no_grad():
        return model.eval()(**{k: batch[k] for k in INPUTS}, output_hidden_states=True).hidden_states


def _expected_rail(method, student, teacher, batch, pooling):
    """Pool with explicit loops, project with the method's weights, normalise, sum squared gaps."""
    hs, ht = _hidden(student, batch), _hidden(teacher, batch)
    mask = batch["attention_mask"]
    s_idx, t_idx = method.student_indices, method.teacher_indices(0)

    def pool(h, b):
        rows = [n for n in range(h.shape[1]) if pooling == "mean_with_padding" or mask[b, n]]
        return h[b, rows].double().mean(0)

    def project(linear, x):
        return linear.weight.detach().double() @ x + linear.bias.detach().double()

    total = 0.0
    for b in range(mask.shape[0]):
        if method.variant == "concatenated":
            zs = project(method.student_projection, torch.cat([pool(hs[i], b) for i in s_idx]))
            zt = project(method.teacher_projections[0], torch.cat([pool(ht[j], b) for j in t_idx]))
            total += float(((zs / zs.norm() - zt / zt.norm()) ** 2).sum())
        else:
            for weight, i, j in zip(method.layer_weights.tolist(), s_idx, t_idx):
                zs, zt = (
                    project(method.student_projection, pool(hs[i], b)),
                    project(method.teacher_projections[0], pool(ht[j], b)),
                )
                total += weight * float(((zs / zs.norm() - zt / zt.norm()) ** 2).sum())
    return total


@pytest.mark.parametrize("pooling", ["mean", "mean_with_padding"])
@pytest.mark.parametrize(("variant", "weights"), [("concatenated", 1.0), ("layer_wise", [0.5, 1.0, 2.0, 1.5])])
def test_rail_term_matches_an_independent_derivation(variant, weights, pooling):
    teacher, student = tiny(layers=6), tiny(seed=2, layers=3, hidden=16)
    method = RAILKD(
        teacher=teacher,
        student=student,
        variant=variant,
        layer_weights=weights,
        pooling=pooling,
        layers=["embedding", "intermediate", "final"],
        projection_size=5,
        inter_weight=0.25,
    ).eval()
    method.set_teacher_layers([[1, 4]])
    assert method.teacher_indices(0) == [0, 1, 4, 6] and method.student_indices == [0, 1, 2, 3]
    batch = make_batch()
    terms = method.compute_losses(batch)
    assert terms["rail"].item() == pytest.approx(0.25 * _expected_rail(method, student, teacher, batch, pooling), rel=1e-4)
    assert set(terms) == {"soft", "hard", "rail", "loss"}


@pytest.mark.parametrize(
    ("teacher_depth", "student_depth", "uniform"),
    [(12, 6, [2, 4, 6, 8, 10]), (12, 4, [3, 6, 9]), (6, 3, [2, 4]), (12, 5, [3, 6, 9, 11]), (12, 7, [2, 4, 6, 8, 10, 11])],
)
def test_teacher_layers_used(teacher_depth, student_depth, uniform):
    teacher = make_tiny_bert(seed=1, layers=teacher_depth, hidden=8, heads=2)
    fixed = RAILKD(teacher=teacher, student_init="teacher_first", student_layers=student_depth, layer_selection="uniform")
    assert fixed.teacher_layers == [uniform] and fixed.student_indices == list(range(1, student_depth))
    method = RAILKD(teacher=teacher, student_init="teacher_first", student_layers=student_depth, layers=["intermediate", "final"])
    g = torch.Generator().manual_seed(3)
    for _ in range(20):
        (drawn,) = method.draw_teacher_layers(g)
        assert drawn == sorted(set(drawn)) and len(drawn) == student_depth - 1
        assert all(1 <= j <= teacher_depth - 1 for j in drawn)
    method.set_teacher_layers([drawn])
    assert method.teacher_indices(0) == [*drawn, teacher_depth]


def test_padding_is_left_out_of_the_mean_pool():
    method = RAILKD(teacher=tiny(), student=tiny(seed=2, layers=2, hidden=16)).eval()
    method.resample_teacher_layers()
    batch = make_batch()
    changed = dict(batch, input_ids=batch["input_ids"].masked_fill(~batch["attention_mask"].bool(), 7))
    with torch.no_grad():
        assert method.compute_losses(changed)["rail"].item() == pytest.approx(
            method.compute_losses(batch)["rail"].item(), rel=1e-6
        )
    method.pooling = "mean_with_padding"
    with torch.no_grad():
        assert method.compute_losses(changed)["rail"].item() != pytest.approx(
            method.compute_losses(batch)["rail"].item(), rel=1e-6
        )


def test_zero_when_the_student_is_the_teacher_and_the_projections_agree():
    teacher = tiny(layers=4)
    method = RAILKD(teacher=teacher, student_init="teacher_first", student_layers=4, layer_selection="uniform").eval()
    method.teacher_projections[0].load_state_dict(method.student_projection.state_dict())
    assert method.teacher_layers == [[1, 2, 3]]
    with torch.no_grad():
        assert method.compute_losses(make_batch())["rail"].item() == pytest.approx(0.0, abs=1e-10)


def test_gradients_reach_the_student_and_both_projections_only():
    method = RAILKD(teacher=tiny(), student=tiny(seed=2, layers=2, hidden=16), prediction=None)
    method.resample_teacher_layers()
    method.compute_losses(make_batch())["loss"].backward()
    assert method.student_projection.weight.grad is not None
    assert method.teacher_projections[0].weight.grad is not None, "the teacher-side projection is trained too"
    assert method.student.bert.encoder.layer[0].output.dense.weight.grad is not None
    assert all(p.grad is None for p in method.teachers[0].parameters())


@pytest.mark.parametrize("stage", ["classification", "mlm"])
def test_rail_kd_contract(stage, tmp_path):
    method = RAILKD(teacher=tiny(stage), student=tiny(stage, seed=2, layers=2, hidden=16))
    method.resample_teacher_layers()
    check_contract(method, make_batch(stage), tmp_path)
    saved = method.state_dict()
    assert {"student_projection.weight", "teacher_projections.0.weight"} <= set(saved), "projections are checkpointed"


def test_two_teachers_of_different_depth_and_width():
    t1, t2 = tiny(layers=4), tiny(seed=3, layers=6, hidden=24)
    method = RAILKD(teachers=[t1, t2], student=tiny(seed=2, layers=3, hidden=16)).eval()
    drawn = method.resample_teacher_layers(torch.Generator().manual_seed(1))
    assert len(drawn) == 2 and all(len(d) == 2 for d in drawn) and max(drawn[1]) <= 5
    assert method.teacher_projections[1].in_features == 2 * 24
    assert torch.isfinite(method.compute_losses(make_batch())["loss"])


def test_bad_inputs_fail_fast():
    teacher, student = tiny(), tiny(seed=2, layers=2, hidden=16)
    with pytest.raises(ValueError, match="inter_weight"):
        RAILKD(teacher=teacher, student=student, inter_weight=0)
    with pytest.raises(ValueError, match="must list 'intermediate'"):
        RAILKD(teacher=teacher, student=student, layers=["final"])
    with pytest.raises(ValueError, match="one per pair"):
        RAILKD(teacher=teacher, student=student, variant="layer_wise", layer_weights=[1.0, 2.0])
    with pytest.raises(ValueError, match="layer-wise"):
        RAILKD(teacher=teacher, student=student, layer_weights=0.5)
    with pytest.raises(ValueError, match="at least the student's"):
        RAILKD(teacher=tiny(layers=2), student=tiny(seed=2, layers=3, hidden=16))
    with pytest.raises(ValueError, match="intermediate layers"):
        RAILKD(teacher=teacher, student=tiny(seed=2, layers=1, hidden=16))
    with pytest.raises(RuntimeError, match="RailKDResampling"):
        RAILKD(teacher=teacher, student=student).compute_losses(make_batch())
    with pytest.raises(ValueError, match="distinct layers"):
        RAILKD(teacher=teacher, student=student).set_teacher_layers([[4]])


def test_fit_attaches_the_resampling_callback_and_it_refuses_fixed_layers(tmp_path):
    method = RAILKD(teacher=tiny(), student=tiny(seed=2, layers=2, hidden=16))
    trainer = fit(method, [], tmp_path / "random", max_steps=1)
    (resampling,) = [c for c in trainer.callbacks if isinstance(c, RailKDResampling)]
    assert (resampling.every_n_epochs, resampling.every_n_steps) == (1, None)
    assert method.teacher_layers is not None
    fixed = RAILKD(teacher=tiny(), student=tiny(seed=2, layers=2, hidden=16), layer_selection="uniform")
    with pytest.raises(MisconfigurationException, match="fixed layers"):
        fit(fixed, [RailKDResampling()], tmp_path, max_steps=1)
    fit(fixed, [], tmp_path, max_steps=1)  # fixed layers need no callback
