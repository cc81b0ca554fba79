"""TeacherPool on its own (no DistillationModule): loading and freezing, precision, placement,
following a device, the live forward, and routing through a cache."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from lightning_kd.core.features import FeatureRequest, capture
from lightning_kd.core.teacher_pool import TeacherPool
from tests.conftest import make_batch, make_tiny_bert

HEAD = "sequence_classification"


def _deepspeed3():
    strategy = type("DeepSpeedStrategy", (), {"config": {"zero_optimization": {"stage": 3}}})()
    return SimpleNamespace(strategy=strategy)


def test_teachers_are_frozen_in_their_own_precision_and_outside_any_module():
    first, second = make_tiny_bert(seed=1), make_tiny_bert(seed=3, layers=2)
    pool = TeacherPool([first, second], HEAD, num_labels=2, precision=["bfloat16", "float32"])
    assert not isinstance(pool, nn.Module) and len(pool) == 2
    assert list(pool.models) == [first, second]
    assert next(first.parameters()).dtype == torch.bfloat16 and next(second.parameters()).dtype == torch.float32
    assert all(not p.requires_grad for p in pool.models.parameters())
    assert not any(t.training for t in pool.models)
    assert pool.sources[0].startswith("<in-memory BertForSequenceClassification")
    first.train()
    pool.eval()
    assert not first.training


def test_bad_settings_fail_before_any_weights_load():
    # A missing directory would fail to load; the placement count is checked first.
    with pytest.raises(ValueError, match="one per teacher"):
        TeacherPool(["/no/such/teacher", "/no/such/other"], HEAD, placement=["cpu"])
    with pytest.raises(ValueError, match="'gpu0' is not one of"):
        TeacherPool(["/no/such/teacher"], HEAD, placement="gpu0")
    with pytest.raises(ValueError, match="teacher_precision lists 1"):
        TeacherPool([make_tiny_bert(seed=1), make_tiny_bert(seed=3)], HEAD, precision=["bfloat16"])
    with pytest.raises(ValueError, match="masked_lm head"):
        TeacherPool([make_tiny_bert(seed=1)], "masked_lm")


def test_placement_follows_the_trainer_and_the_methods_needs():
    pool = TeacherPool([make_tiny_bert(seed=1), make_tiny_bert(seed=3)], HEAD, placement=["auto", "cpu"])
    assert pool.check() == ["student", "cpu"]
    assert pool.placement(0, _deepspeed3()) == "zero3"
    assert pool.placement(0, _deepspeed3(), reads_weights="Theseus") == "student"
    with pytest.raises(ValueError, match="Theseus uses the teacher's modules"):
        pool.check(reads_weights="Theseus")
    with pytest.raises(ValueError, match="not DeepSpeed"):
        TeacherPool([make_tiny_bert(seed=1)], HEAD, placement="zero3").check(SimpleNamespace(strategy=None))


def test_forward_matches_the_teacher_and_comes_back_to_the_students_device():
    teacher = make_tiny_bert(seed=1)
    pool = TeacherPool([teacher], HEAD, precision="bfloat16", placement="cpu")
    batch = make_batch()
    features = pool.forward(0, batch, FeatureRequest(hidden_states=True), device=torch.device("cpu"))
    with torch.no_grad():
        expected = capture(teacher, batch, FeatureRequest(hidden_states=True), upcast=True)
    assert features.logits.dtype == torch.float32 and not features.logits.requires_grad
    torch.testing.assert_close(features.logits, expected.logits)
    assert len(features.hidden_states) == teacher.config.num_hidden_layers + 1
    # An offloaded teacher stays on the host; its features travel to the student's device.
    on_meta = pool.forward(0, batch, FeatureRequest(), device=torch.device("meta"))
    assert on_meta.logits.device.type == "meta" and next(teacher.parameters()).device.type == "cpu"


def test_teachers_placed_with_the_student_follow_its_device_never_its_dtype():
    pool = TeacherPool([make_tiny_bert(seed=1), make_tiny_bert(seed=3)], HEAD, precision="bfloat16", placement=["student", "cpu"])
    pool.follow(torch.device("meta"))
    assert next(pool.models[0].parameters()).device.type == "meta"
    assert next(pool.models[1].parameters()).device.type == "cpu"
    assert all(p.dtype == torch.bfloat16 for p in pool.models.parameters())


def test_run_reads_the_cache_when_there_is_one_and_the_live_forward_otherwise():
    pool = TeacherPool([make_tiny_bert(seed=1)], HEAD)
    batch, calls = make_batch(), []
    method = SimpleNamespace(teacher_forward=lambda index, batch: calls.append(("live", index)) or "live features")
    assert pool.run(0, batch, method) == "live features"
    pool.cache = SimpleNamespace(teacher_features=lambda owner, index, batch: calls.append(("cache", owner, index)) or "cached")
    assert pool.run(0, batch, method) == "cached"
    assert calls == [("live", 0), ("cache", method, 0)]


def test_a_method_keeps_the_pools_teachers_out_of_its_state_and_hyper_parameters():
    from lightning_kd.methods import KD

    student = make_tiny_bert(seed=2, layers=2, hidden=16)
    method = KD(teachers=[make_tiny_bert(seed=1), make_tiny_bert(seed=3)], student=student)
    assert method.teachers is method.teacher_pool.models
    # Checkpoints hold exactly the student's tensors under ``student.``, as before the pool existed.
    assert set(method.state_dict()) == {f"student.{name}" for name in student.state_dict()}
    assert not any(p is q for p in method.parameters() for q in method.teachers.parameters())
    assert "teacher_pool" not in method.hparams and "teachers" not in method.hparams
