"""Teacher placement policy, teacher precision independent of the trainer's, and the memory estimate."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import pytorch_lightning as pl
import torch

from lightning_kd.core import memory
from lightning_kd.core.placement import check_placements, resolve_placement
from lightning_kd.methods import KD
from tests.core.test_ddp import _Data
from tests.conftest import make_batch, make_tiny_bert


def _kd(**kwargs) -> KD:
    return KD(teacher=make_tiny_bert(seed=1), student=make_tiny_bert(seed=2, layers=2, hidden=16), **kwargs)


def _trainer(**kwargs) -> pl.Trainer:
    options = dict(accelerator="cpu", devices=1, max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    return pl.Trainer(**{**options, **kwargs})


def test_placements_are_validated():
    assert check_placements("cpu", 2) == ["cpu", "cpu"]
    assert check_placements(["auto", "cuda:1"], 2) == ["auto", "cuda:1"]
    with pytest.raises(ValueError, match="one per teacher"):
        check_placements(["cpu"], 2)
    with pytest.raises(ValueError, match="'gpu0' is not one of"):
        check_placements("gpu0", 1)


def test_auto_is_the_student_device_without_deepspeed_and_zero3_needs_deepspeed():
    plain = SimpleNamespace(strategy=SimpleNamespace(config=None))
    assert resolve_placement("auto", plain) == "student"
    with pytest.raises(ValueError, match="not DeepSpeed.*configs/trainer/deepspeed/zero3.yaml"):
        resolve_placement("zero3", plain)


def test_zero3_placement_without_deepspeed_fails_before_training():
    method = _kd(teacher_placement="zero3")
    trainer = _trainer()
    with pytest.raises(ValueError, match="teacher_placement='zero3'"):
        trainer.fit(method, datamodule=_Data(8))
    assert trainer.global_step == 0


def test_teachers_are_not_submodules_and_keep_their_precision_under_a_true_half_trainer():
    method = _kd(teacher_precision="float32")
    assert not any(name.startswith("teachers") for name in method.state_dict())
    assert not any(p is q for p in method.parameters() for q in method.teachers.parameters())
    _trainer(precision="bf16-true").fit(method, datamodule=_Data(8))
    assert next(method.student.parameters()).dtype == torch.bfloat16  # the plugin casts the module...
    assert all(p.dtype == torch.float32 for p in method.teachers.parameters())  # ...never the teacher


def test_teacher_forward_returns_features_on_the_student_device():
    method = _kd(teacher_placement="cpu")
    features = method.teacher_forward(0, make_batch())
    assert features.logits.device == method.device and features.logits.dtype == torch.float32


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cpu_offloaded_teacher_serves_a_gpu_student():
    method = _kd(teacher_placement="cpu").to("cuda")
    batch = {k: v.cuda() for k, v in make_batch().items()}
    losses = method.compute_losses(batch)
    assert next(method.teachers[0].parameters()).device.type == "cpu"
    assert losses["loss"].device.type == "cuda" and torch.isfinite(losses["loss"])


# ------------------------------------------------------------------------------- memory estimate
def _fake_trainer(stage: int | None, world: int, precision: str, offload: bool = False):
    config = None
    if stage is not None:
        zero = {"stage": stage, **({"offload_optimizer": {"device": "cpu"}, "offload_param": {"device": "cpu"}} if offload else {})}
        config = {"zero_optimization": zero}
    name = "DeepSpeedStrategy" if stage is not None else "SingleDeviceStrategy"
    strategy = type(name, (), {"config": config, "root_device": torch.device("cuda", 0)})()
    data = SimpleNamespace(batch_size=4, max_length=16)
    return SimpleNamespace(strategy=strategy, world_size=world, precision=precision, datamodule=data)


def _lines(result, device: str) -> dict[str, float]:
    return {what.split(" (")[0]: size for what, size in result.lines.get(device, [])}


def test_estimate_shards_what_each_zero_stage_partitions():
    method = _kd()
    trainable = sum(p.numel() for p in method.parameters() if p.requires_grad)
    teacher = sum(p.numel() * 4 for p in method.teachers.parameters())

    plain = _lines(memory.estimate(method, _fake_trainer(None, 1, "32-true"), None, None), "cuda:0")
    assert plain == {"teacher 0 weights": teacher, "student + method weights": 4 * trainable, "gradients": 4 * trainable, "AdamW state": 8 * trainable}

    zero2 = _lines(memory.estimate(method, _fake_trainer(2, 2, "bf16-mixed"), None, None), "cuda:0")
    assert zero2["student + method weights"] == 2 * trainable  # bf16 weights, replicated
    assert zero2["gradients"] == 2 * trainable / 2  # bf16 gradients, partitioned
    assert zero2["AdamW state"] == 12 * trainable / 2  # fp32 master + two moments, partitioned
    assert zero2["teacher 0 weights"] == teacher  # replicated below ZeRO-3

    zero3 = memory.estimate(method, _fake_trainer(3, 2, "bf16-mixed", offload=True), None, None)
    device, host = _lines(zero3, "cuda:0"), _lines(zero3, "host")
    assert host["teacher 0 weights"] == teacher / 2 and host["student + method weights"] == 2 * trainable / 2
    assert host["AdamW state"] == 12 * trainable / 2 and device == {"gradients": 2 * trainable / 2}


def test_activations_follow_the_layer_formula_and_checkpointing_shrinks_them():
    method = _kd()
    config = method.student.config
    b, n, d, h, layers = 4, 16, config.hidden_size, config.num_attention_heads, config.num_hidden_layers
    per_layer = b * n * d * (34 + 5 * h * n / d) * 4 / 2  # fp32: twice the 16-bit figure
    logits = b * 2 * 4 * 3
    assert memory.student_activations(method, b, n, 4) == pytest.approx(layers * per_layer + logits)
    checkpointed = _kd(activation_checkpointing=True)
    assert memory.student_activations(checkpointed, b, n, 4) == pytest.approx(layers * 2 * b * n * d * 4 / 2 + per_layer + logits)


def test_a_run_that_will_not_fit_is_refused_before_training(monkeypatch):
    monkeypatch.setattr(memory, "free_bytes", lambda device: 1024)
    method = _kd()
    trainer = _trainer()
    with pytest.raises(MemoryError, match=r"needs about .* GiB on cpu.* activation_checkpointing.*memory_check: warn"):
        trainer.fit(method, datamodule=_Data(8))
    assert trainer.global_step == 0

    warned = _kd(memory_check="warn")
    with pytest.warns(UserWarning, match="needs about"):
        _trainer().fit(warned, datamodule=_Data(8))
    _trainer().fit(_kd(memory_check="off"), datamodule=_Data(8))  # no estimate, no refusal


# ------------------------------------------------------------------ activation checkpointing of the student
@pytest.mark.parametrize("name", ["KD", "TinyBERT", "MiniLM", "MiniLMv2", "PKD"])
def test_activation_checkpointing_leaves_losses_and_gradients_unchanged(name):
    """Hooked Q/K/V and hidden states keep their gradients when the student's layers are recomputed."""
    from lightning_kd import methods
    from lightning_kd.losses.prediction import PredictionLoss

    no_dropout = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    extra = {"MiniLMv2": {"relation_heads": 4}}.get(name, {})
    if name != "KD" and name != "PKD":
        extra["prediction"] = PredictionLoss()

    def build(checkpointing: bool):
        teacher = make_tiny_bert(seed=1, **no_dropout)
        student = make_tiny_bert(seed=2, layers=2, hidden=32, **no_dropout)
        return getattr(methods, name)(teacher=teacher, student=student, activation_checkpointing=checkpointing, **extra)

    batch = make_batch()
    results = []
    for checkpointing in (False, True):
        method = build(checkpointing).train()
        losses = method.compute_losses(batch)
        losses["loss"].backward()
        grads = {n: p.grad.clone() for n, p in method.trainable_named_parameters() if p.grad is not None}
        results.append((losses, grads))
    (plain, plain_grads), (checkpointed, checkpointed_grads) = results
    assert build(True).student.is_activation_checkpointing
    for term, value in plain.items():
        torch.testing.assert_close(checkpointed[term], value, msg=term)
    assert plain_grads.keys() == checkpointed_grads.keys() and plain_grads
    for key, value in plain_grads.items():
        torch.testing.assert_close(checkpointed_grads[key], value, rtol=1e-5, atol=1e-6, msg=key)


def test_teachers_follow_the_students_device_but_never_its_dtype():
    method = _kd()
    method.to(torch.float64)
    assert next(method.student.parameters()).dtype == torch.float64
    assert all(p.dtype == torch.float32 for p in method.teachers.parameters())
    method.to("meta")  # a second device, even on a CPU-only machine
    assert next(method.teachers[0].parameters()).device.type == "meta"
    offloaded = _kd(teacher_placement="cpu").to("meta")
    assert next(offloaded.teachers[0].parameters()).device.type == "cpu"


def test_methods_that_use_teacher_weights_in_their_step_keep_teachers_with_the_student():
    from lightning_kd.callbacks import TheseusReplacingRate
    from lightning_kd.methods import Theseus

    teacher = make_tiny_bert(seed=1)
    method = Theseus(teacher=teacher, student_init="teacher_first", student_layers=2, teacher_placement="cpu")
    trainer = _trainer(callbacks=[TheseusReplacingRate()])
    with pytest.raises(ValueError, match="Theseus uses the teacher's modules or weights inside its own step.*'auto' or 'student'"):
        trainer.fit(method, datamodule=_Data(8))
    assert trainer.global_step == 0
    deepspeed3 = SimpleNamespace(strategy=type("DeepSpeedStrategy", (), {"config": {"zero_optimization": {"stage": 3}}})())
    assert resolve_placement("auto", deepspeed3, reads_teacher_weights="Theseus") == "student"
    assert resolve_placement("auto", deepspeed3) == "zero3"
