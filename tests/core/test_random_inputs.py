"""Forward repeats and randomised inputs: which tokens change, what stays, which passes, the hard loss."""

from __future__ import annotations

import pytest
import torch

from lightning_kd.core.random_inputs import (
    RandomInputs,
    random_token_ids,
    randomise_batch,
)
from lightning_kd.losses.prediction import PredictionLoss
from lightning_kd.methods import KD
from tests.conftest import make_batch, make_tiny_bert


def _same_except_ids(original: dict, changed: dict) -> None:
    assert set(original) == set(changed)
    for key, value in original.items():
        if key != "input_ids":
            assert torch.equal(value, changed[key]), key


@pytest.mark.parametrize("stage", ["classification", "mlm"])
def test_replace_shuffle_permutes_the_flattened_batch_and_touches_nothing_else(stage):
    batch = make_batch(stage)
    torch.manual_seed(0)
    randomised, hard = randomise_batch(batch, RandomInputs(mode="replace", method="shuffle"), vocab_size=220)
    assert hard is randomised
    _same_except_ids(batch, randomised)
    ids, new = batch["input_ids"], randomised["input_ids"]
    assert new.shape == ids.shape and not torch.equal(new, ids)
    assert torch.equal(new.flatten().sort().values, ids.flatten().sort().values)  # same multiset, pads included
    # Tokens move across sequences: some row holds an id multiset it did not hold before.
    assert any(not torch.equal(new[r].sort().values, ids[r].sort().values) for r in range(ids.shape[0]))


def test_replace_sample_draws_every_token_uniformly_in_the_vocabulary():
    batch = make_batch("mlm", batch=8, length=32)
    torch.manual_seed(0)
    randomised, _ = randomise_batch(batch, RandomInputs(mode="replace", method="sample"), vocab_size=7)
    _same_except_ids(batch, randomised)
    new = randomised["input_ids"]
    assert new.dtype == batch["input_ids"].dtype and new.min() >= 0 and new.max() < 7
    assert set(new.unique().tolist()) == set(range(7))  # 256 draws cover all 7 ids


@pytest.mark.parametrize("stage", ["classification", "mlm"])
def test_dual_appends_a_random_copy_and_keeps_it_out_of_the_hard_labels(stage):
    batch = make_batch(stage)
    size = batch["input_ids"].shape[0]
    torch.manual_seed(0)
    doubled, hard = randomise_batch(batch, RandomInputs(mode="dual", method="sample"), vocab_size=220)
    for key, value in batch.items():
        assert doubled[key].shape[0] == 2 * size
        assert torch.equal(doubled[key][:size], value), key
        if key != "input_ids":
            assert torch.equal(doubled[key][size:], value), key  # masks, token types, labels duplicated
    assert not torch.equal(doubled["input_ids"][size:], batch["input_ids"])
    assert torch.equal(hard["input_ids"], doubled["input_ids"])
    assert torch.equal(hard["labels"][:size], batch["labels"])
    assert (hard["labels"][size:] == -100).all()
    assert torch.equal(hard["attention_mask"], doubled["attention_mask"])


def test_dual_refuses_regression_labels():
    batch = {**make_batch(), "labels": torch.rand(4)}
    with pytest.raises(ValueError, match="regression"):
        randomise_batch(batch, RandomInputs(mode="dual"), vocab_size=220)


def test_random_token_ids_rejects_unknown_method():
    with pytest.raises(ValueError, match="shuffle"):
        random_token_ids(torch.zeros(2, 3, dtype=torch.long), "flip", 10)


def test_bad_settings_fail_at_construction():
    with pytest.raises(ValueError, match="mode"):
        RandomInputs(mode="swap")
    with pytest.raises(ValueError, match="passes"):
        RandomInputs(mode="dual", passes=[])
    with pytest.raises(ValueError, match="passes"):
        RandomInputs(mode="dual", passes=[1, 1])
    teacher, student = make_tiny_bert(seed=1), make_tiny_bert(seed=2, layers=2, hidden=16)
    with pytest.raises(ValueError, match="forward_repeats >= 1"):
        KD(teacher=teacher, student=student, random_inputs=RandomInputs(mode="dual", passes=[1]))
    with pytest.raises(ValueError, match="forward_repeats must be >= 0"):
        KD(teacher=teacher, student=student, forward_repeats=-1)
    with pytest.raises(ValueError, match="hard_weight=0"):
        KD(teacher=teacher, student=student, random_inputs=RandomInputs(mode="replace"))
    KD(teacher=teacher, student=student, prediction=PredictionLoss(hard_weight=0.0), random_inputs=RandomInputs(mode="replace"))


def _record_inputs(model, store: list):
    def hook(_module, args, kwargs):
        store.append(kwargs["input_ids"].clone())

    return model.register_forward_pre_hook(hook, with_kwargs=True)


def test_only_the_chosen_passes_are_randomised_and_teacher_and_student_see_the_same_ids():
    teacher, student = make_tiny_bert(seed=1), make_tiny_bert(seed=2, layers=2, hidden=16)
    method = KD(
        teacher=teacher, student=student, prediction=PredictionLoss(hard_weight=0.0), forward_repeats=2,
        random_inputs=RandomInputs(mode="replace", method="sample", passes=[1]),
    )
    batch = make_batch()
    seen_student, seen_teacher = [], []
    handles = [_record_inputs(method.student, seen_student), _record_inputs(method.teachers[0], seen_teacher)]
    method.compute_losses(batch)
    for handle in handles:
        handle.remove()
    assert len(seen_student) == len(seen_teacher) == 3
    assert torch.equal(seen_student[0], batch["input_ids"]) and torch.equal(seen_student[2], batch["input_ids"])
    assert not torch.equal(seen_student[1], batch["input_ids"])
    for s, t in zip(seen_student, seen_teacher):
        assert torch.equal(s, t)
    assert method.pass_index == 0


def test_validation_never_sees_random_inputs():
    method = KD(
        teacher=make_tiny_bert(seed=1), student=make_tiny_bert(seed=2, layers=2, hidden=16),
        prediction=PredictionLoss(hard_weight=0.0), random_inputs=RandomInputs(mode="replace", method="sample"),
    )
    method.setup("validate")
    seen: list = []
    handle = _record_inputs(method.student, seen)
    batch = make_batch()
    method.validation_step(batch, 0)
    handle.remove()
    assert torch.equal(seen[0], batch["input_ids"])


def test_forward_repeats_sum_each_term_over_passes():
    teacher, student = make_tiny_bert(seed=1), make_tiny_bert(seed=2, layers=2, hidden=16)
    batch = make_batch()
    once = KD(teacher=teacher, student=student, prediction=PredictionLoss(temperature=2.0)).eval().compute_losses(batch)
    thrice = KD(teacher=teacher, student=student, prediction=PredictionLoss(temperature=2.0), forward_repeats=2).eval().compute_losses(batch)
    assert set(once) == set(thrice)
    for name in once:
        torch.testing.assert_close(thrice[name], 3 * once[name])


def test_dual_mode_hard_loss_is_the_original_halfs():
    teacher, student = make_tiny_bert(seed=1), make_tiny_bert(seed=2, layers=2, hidden=16)
    for stage in ("classification", "mlm"):
        if stage == "mlm":
            teacher, student = make_tiny_bert("mlm", seed=1), make_tiny_bert("mlm", seed=2, layers=2, hidden=16)
        batch = make_batch(stage)
        plain = KD(teacher=teacher, student=student, prediction=PredictionLoss(soft_weight=0.0)).eval().compute_losses(batch)
        dual = KD(teacher=teacher, student=student, prediction=PredictionLoss(soft_weight=0.0), random_inputs=RandomInputs(mode="dual"))
        terms = dual.eval().compute_losses(batch)
        torch.testing.assert_close(terms["hard"], plain["hard"])
        # The soft term does see the random half: it differs from the clean batch's.
        soft_dual = KD(teacher=teacher, student=student, prediction=PredictionLoss(hard_weight=0.0), random_inputs=RandomInputs(mode="dual"))
        soft_plain = KD(teacher=teacher, student=student, prediction=PredictionLoss(hard_weight=0.0))
        torch.manual_seed(0)
        assert not torch.allclose(soft_dual.eval().compute_losses(batch)["soft"], soft_plain.eval().compute_losses(batch)["soft"])
