"""Theseus: teacher blocks, the hybrid forward against a hand-written loop, layouts and the guard,
gradients, the contract, two teachers and construction errors."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from lightning_kd.callbacks import TheseusReplacingRate
from lightning_kd.callbacks.compatibility import keyed_generator
from lightning_kd.methods import Theseus
from lightning_kd.models.theseus import sample_student_positions, teacher_blocks
from tests.callbacks.runs import fit, tiny
from tests.conftest import make_batch
from tests.methods.contract import check_contract

INPUTS = ("input_ids", "attention_mask", "token_type_ids")


@pytest.mark.parametrize(
    ("teacher_depth", "student_depth", "blocks"),
    [
        (12, 6, [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9], [10, 11]]),
        (12, 4, [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 10, 11]]),
        (6, 3, [[0, 1], [2, 3], [4, 5]]),
        (12, 5, [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 10], [11]]),  # GKD front-loads non-divisible splits
        (12, 7, [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9], [10], [11]]),
    ],
)
def test_teacher_blocks(teacher_depth, student_depth, blocks):
    assert teacher_blocks(teacher_depth, student_depth) == blocks


def _method(**knobs):
    return Theseus(teacher=tiny(layers=4), student_init="teacher_first", student_layers=2, **knobs).eval()


def _hybrid_by_hand(method, batch, layout):
    """Student embeddings → the chosen modules with BERT's additive mask → student pooler and classifier."""
    student, teacher = method.student, method.teachers[0]
    with torch.no_grad():
        hidden = student.bert.embeddings(input_ids=batch["input_ids"], token_type_ids=batch["token_type_ids"])
        additive = (1.0 - batch["attention_mask"][:, None, None, :].float()) * torch.finfo(torch.float32).min
        blocks = teacher_blocks(4, 2)
        for position, choice in enumerate(layout):
            modules = (
                [student.bert.encoder.layer[position]]
                if choice is None
                else [teacher.bert.encoder.layer[j] for j in blocks[position]]
            )
            for module in modules:
                hidden = module(hidden, additive)
        return student.classifier(student.bert.pooler(hidden))


@pytest.mark.parametrize("layout", [[None, 0], [0, None], [0, 0]])
def test_hybrid_forward_matches_a_hand_written_loop(layout):
    method, batch = _method(), make_batch()
    method.draw_layout = lambda rate, generator=None: layout
    method.replacing_rate = 0.5
    with torch.no_grad():
        # spread the classifier so the loss is far from log 2
        method.student.classifier.weight.mul_(50.0)
        terms = method.compute_losses(batch)
    logits = _hybrid_by_hand(method, batch, layout)
    expected = F.cross_entropy(logits.double(), batch["labels"])
    assert terms["hard"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert method.last_layout == layout


def test_all_teacher_layout_of_a_truncated_student_is_the_teacher():
    """Embeddings, pooler and head copied from the teacher + every teacher block = the teacher itself."""
    method, batch = _method(), make_batch()
    method.draw_layout = lambda rate, generator=None: [0, 0]
    method.replacing_rate = 0.0
    inputs = {k: batch[k] for k in INPUTS}
    with torch.no_grad():
        teacher_loss = method.teachers[0](**inputs, labels=batch["labels"]).loss
        assert method.compute_losses(batch)["hard"].item() == pytest.approx(teacher_loss.item(), rel=1e-6)


def test_rate_one_trains_the_pure_student_and_nothing_is_left_registered():
    method, batch = _method(hard_weight=0.5), make_batch()
    method.replacing_rate = 1.0
    inputs = {k: batch[k] for k in INPUTS}
    with torch.no_grad():
        expected = 0.5 * method.student(**inputs, labels=batch["labels"]).loss
        assert method.compute_losses(batch)["hard"].item() == pytest.approx(expected.item(), rel=1e-6)
    method.replacing_rate = 0.0
    method.compute_losses(batch)
    encoder = method.student.bert.encoder
    assert "layer" not in encoder.__dict__ and len(encoder.layer) == 2
    assert not any("teacher" in name for name in method.student.state_dict())
    assert sum(1 for _ in method.student.parameters()) == sum(1 for _ in copy.deepcopy(method.student).parameters())


def test_gradients_flow_through_frozen_teacher_blocks_into_the_student():
    method, batch = _method(), make_batch()
    method.draw_layout = lambda rate, generator=None: [None, 0]  # student layer 0, then teacher layers 2-3
    method.replacing_rate = 0.5
    method.compute_losses(batch)["loss"].backward()
    student = method.student
    assert student.bert.embeddings.word_embeddings.weight.grad is not None
    assert student.bert.encoder.layer[0].output.dense.weight.grad is not None
    assert student.bert.encoder.layer[1].output.dense.weight.grad is None, "the replaced student layer is unused"
    assert all(p.grad is None and not p.requires_grad for p in method.teachers[0].parameters())


def test_layout_guard():
    draws = 4000
    g = torch.Generator().manual_seed(0)
    guarded = [sample_student_positions(0.3, 6, g, "at_least_one_student") for _ in range(draws)]
    reference = [sample_student_positions(0.3, 6, g, "reference") for _ in range(draws)]
    assert all(any(layout) for layout in guarded)
    assert sum(not any(layout) for layout in reference) / draws == pytest.approx(0.7**6, abs=0.02)
    # the guard is exact rejection sampling: P(position j is student | at least one) = p / (1 − (1−p)^6)
    conditional = 0.3 / (1 - 0.7**6)
    for j in range(6):
        assert sum(layout[j] for layout in guarded) / draws == pytest.approx(conditional, abs=0.03)
    assert sum(sample_student_positions(0.0, 6, g, "at_least_one_student")) == 1
    assert not any(sample_student_positions(0.0, 6, g, "reference"))
    assert all(sample_student_positions(1.7, 6, g, "reference"))


def test_layouts_are_keyed_so_ranks_and_resumed_runs_agree():
    a, b = _method(), _method()
    layouts_a = [a.draw_layout(0.4, keyed_generator(7, "theseus", step, 0)) for step in range(5)]
    layouts_b = [b.draw_layout(0.4, keyed_generator(7, "theseus", step, 0)) for step in range(5)]
    assert layouts_a == layouts_b and len({str(x) for x in layouts_a}) > 1


@pytest.mark.parametrize("stage", ["classification", "mlm"])
def test_theseus_contract(stage, tmp_path):
    method = Theseus(teacher=tiny(stage, layers=4), student_init="teacher_first", student_layers=2)
    method.replacing_rate = 0.5
    result = check_contract(method, make_batch(stage), tmp_path)
    assert set(result["first"]) == {"hard", "loss"}


def test_two_teachers_of_different_depth():
    t1, t2 = tiny(layers=4), tiny(seed=3, layers=6)
    method = Theseus(teachers=[t1, t2], student_init="teacher_first", student_layers=2).eval()
    method.replacing_rate = 0.0
    used = set()
    for _ in range(12):
        assert torch.isfinite(method.compute_losses(make_batch())["loss"])
        used |= {c for c in method.last_layout if c is not None}
    assert used == {0, 1}


def test_bad_inputs_fail_fast():
    teacher = tiny(layers=4)
    with pytest.raises(ValueError, match="width"):
        Theseus(teacher=teacher, student=tiny(seed=2, layers=2, hidden=16))
    with pytest.raises(ValueError, match="fewer than the student"):
        Theseus(teacher=tiny(layers=2), student=tiny(seed=2, layers=3))
    with pytest.raises(ValueError, match="multi_teacher"):
        from lightning_kd.core.multi_teacher import Average

        Theseus(teacher=teacher, student_init="teacher_first", student_layers=2, multi_teacher=Average())
    with pytest.raises(ValueError, match="hard_weight"):
        Theseus(teacher=teacher, student_init="teacher_first", student_layers=2, hard_weight=0.0)
    with pytest.raises(ValueError, match="forward_repeats"):
        Theseus(teacher=teacher, student_init="teacher_first", student_layers=2, forward_repeats=1)
    sdpa = tiny(seed=2, layers=2)
    sdpa.config._attn_implementation = "sdpa"
    with pytest.raises(ValueError, match="attention implementation"):
        Theseus(teacher=teacher, student=sdpa)
    with pytest.raises(RuntimeError, match="replacing rate"):
        Theseus(teacher=teacher, student_init="teacher_first", student_layers=2).compute_losses(make_batch())


def test_fit_without_the_rate_callback_attaches_the_papers_schedule(tmp_path):
    method = Theseus(teacher=tiny(layers=4), student_init="teacher_first", student_layers=2)
    trainer = fit(method, [], tmp_path, max_steps=1)
    (schedule,) = [c for c in trainer.callbacks if isinstance(c, TheseusReplacingRate)]
    assert (schedule.replacing_rate, schedule.not_replaced_steps, schedule.schedule) == (0.3, 0.66, "linear")
    assert method.replacing_rate == pytest.approx(0.3)


def test_a_pure_student_that_answers_alike_is_reported_at_the_first_batch():
    """The failure of the first-layers init: a student whose output does not depend on the input.
    Zeroing the classifier's weight makes every example's logits the classifier's bias."""
    import warnings

    method, batch = _method(), make_batch()
    method.train()
    with torch.no_grad():  # a random tiny head barely separates examples; a trained one does (MiniLM: spread 0.25)
        method.student.classifier.weight.mul_(1000.0)
    assert method.student_answers_alike(batch) is None
    with warnings.catch_warnings(record=True) as recorded:
        warnings.simplefilter("always")
        method.on_train_batch_start(batch, 0)
    assert not [w for w in recorded if "Theseus" in str(w.message)]
    with torch.no_grad():
        method.student.classifier.weight.zero_()
    assert method.student_answers_alike(batch) == pytest.approx(0.0)
    assert method.student.training  # the check runs in eval mode and restores the mode
    with pytest.warns(UserWarning, match="student_init: teacher_uniform"):
        method.on_train_batch_start(batch, 0)
    with warnings.catch_warnings(record=True) as recorded:  # only the first batch of a run is checked
        warnings.simplefilter("always")
        method.on_train_batch_start(batch, 1)
    assert not [w for w in recorded if "Theseus" in str(w.message)]
