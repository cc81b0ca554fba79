"""DeepSpeed ZeRO 0-3 on CPU (fp32, bf16), two processes, activation checkpointing, frozen teachers.

Uses the CPU test subclass (tests/scale/deepspeed_cpu.py); fp16 and NCCL runs are the GPU tests at
the end, skipped without CUDA.
"""

from __future__ import annotations

import glob
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.core.test_ddp import _method
from tests.scale.deepspeed_run import ResumableRows, fit, gathered_student

ROOT = Path(__file__).resolve().parents[2]
STAGES = [0, 1, 2, 3]


def _teacher_copy(method) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in method.teachers.state_dict().items()}


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
@pytest.mark.parametrize("stage", STAGES)
def test_stage_trains_student_only_and_checkpoints_no_teacher(stage, precision, tmp_path):
    reference = _method()
    teacher_before = _teacher_copy(reference)
    method, trainer = fit(stage, devices=1, precision=precision, steps=2)
    engine = trainer.strategy.deepspeed_engine

    # The teacher is outside the engine: untouched, in its own precision, in no optimizer group.
    teacher_ids = {id(p) for p in method.teachers.parameters()}
    assert not teacher_ids & {id(p) for p in engine.module.parameters()}
    optimised = {id(p) for group in engine.optimizer.param_groups for p in group["params"]}
    assert not teacher_ids & optimised
    assert all(p.dtype == torch.float32 for p in method.teachers.parameters())
    for key, value in _teacher_copy(method).items():
        torch.testing.assert_close(value.cpu(), teacher_before[key], msg=f"teacher {key} changed")
    if stage == 3:  # "auto" placement partitions the teacher with its own inference engine
        assert all(hasattr(p, "ds_id") for p in method.teachers.parameters())

    # The student moved, and the checkpoint holds it but no teacher tensor.
    student = gathered_student(method)
    initial = reference.student.state_dict()
    assert any(not torch.allclose(student[k], initial[k].float()) for k in student), "the student did not train"
    trainer.save_checkpoint(tmp_path / "ckpt")
    saved_keys = set()
    for file in glob.glob(str(tmp_path / "ckpt" / "**" / "*.pt"), recursive=True):
        state = torch.load(file, map_location="cpu", weights_only=False)
        for section in ("module", "frozen_param_fragments", "param_shapes"):
            value = state.get(section)
            for entry in value if isinstance(value, list) else [value]:
                saved_keys.update(entry or {})
    assert saved_keys, "the checkpoint records no module parameter"
    assert not any("teachers" in key for key in saved_keys), sorted(k for k in saved_keys if "teachers" in k)[:3]


@pytest.mark.slow
@pytest.mark.parametrize("stage", [2, 3])
def test_resume_mid_epoch_from_a_deepspeed_checkpoint(stage, tmp_path):
    """A DeepSpeed checkpoint directory taken mid-epoch resumes to the uninterrupted run's weights
    (student + optimizer restored by DeepSpeed, teacher reloaded from its source)."""
    from pytorch_lightning.callbacks import ModelCheckpoint

    every_3 = ModelCheckpoint(dirpath=tmp_path, filename="{step}", every_n_train_steps=3, save_top_k=-1)
    fit(stage, devices=1, precision="32-true", steps=4, datamodule=ResumableRows(), callbacks=[every_3])
    assert (tmp_path / "step=3.ckpt").is_dir()  # DeepSpeed writes a directory (a shard per rank)
    straight, _ = fit(stage, devices=1, precision="32-true", steps=5, datamodule=ResumableRows())
    resumed, _ = fit(stage, devices=1, precision="32-true", steps=5, datamodule=ResumableRows(), ckpt_path=str(tmp_path / "step=3.ckpt"))
    expected, actual = gathered_student(straight), gathered_student(resumed)
    for key, value in expected.items():
        torch.testing.assert_close(actual[key], value, rtol=1e-5, atol=1e-6, msg=key)


@pytest.mark.slow
def test_activation_checkpointing_gives_the_same_step():
    plain, _ = fit(2, devices=1, precision="32-true", steps=2)
    checkpointed, _ = fit(2, devices=1, precision="32-true", steps=2, activation_checkpointing=True)
    assert checkpointed.student.is_activation_checkpointing
    for key, value in gathered_student(plain).items():
        torch.testing.assert_close(gathered_student(checkpointed)[key], value, rtol=1e-5, atol=1e-6, msg=key)


def _two_processes(stage: int, tmp_path: Path, accelerator: str = "cpu") -> dict:
    out = tmp_path / f"stage{stage}.pt"
    # In-process fits of this session left MASTER_PORT & co. (and a listening store) behind: start clean.
    inherited = {k: v for k, v in os.environ.items() if k not in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "NODE_RANK")}
    env = {**inherited, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "tests.scale.deepspeed_run", "--stage", str(stage), "--devices", "2", "--out", str(out)]
    command += ["--accelerator", accelerator]
    log = tmp_path / f"stage{stage}.log"
    for attempt in range(2):
        # Output goes to a file, not a pipe: DeepSpeed's launcher leaves helpers that hold a pipe open after exit.
        with open(log, "w") as sink:
            result = subprocess.run(command, cwd=ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT, timeout=300)
        # The free port Lightning picks for the rendezvous can be taken before it binds it; only that is retried.
        if result.returncode == 0 or "EADDRINUSE" not in log.read_text() or attempt:
            break
    assert result.returncode == 0, log.read_text()[-4000:]
    return torch.load(out, weights_only=False)


@pytest.mark.slow
@pytest.mark.parametrize("stage", [2, 3])
def test_two_processes_match_one_process(stage, tmp_path):
    """Two ranks with half the batch each reach the single process's weights; under ZeRO-3 each rank
    stores half of the teacher."""
    double = _two_processes(stage, tmp_path)
    single, _ = fit(0, devices=1, precision="32-true", steps=3)
    for key, value in gathered_student(single).items():
        torch.testing.assert_close(double["student"][key], value, rtol=1e-4, atol=1e-5, msg=f"{key} differs")
    if stage == 3:
        assert double["world_size"] == 2
        assert sum(double["teacher_shard"]) >= double["teacher_total"]
        assert max(double["teacher_shard"]) < 0.6 * double["teacher_total"], double
    else:
        assert double["teacher_shard"] == [double["teacher_total"]] * 2  # replicated by default below ZeRO-3


# ---------------------------------------------------------------------------------------- GPU only
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("stage", [2, 3])
def test_fp16_zero_on_gpu(stage):
    """The stock DeepSpeedStrategy with fp16 loss scaling trains the student on a GPU."""
    import pytorch_lightning as pl
    from pytorch_lightning.strategies import DeepSpeedStrategy

    from tests.core.test_ddp import _Data

    method = _method()
    before = {k: v.clone() for k, v in method.student.state_dict().items()}
    trainer = pl.Trainer(
        accelerator="gpu", devices=1, strategy=DeepSpeedStrategy(stage=stage), precision="16-mixed", max_steps=8,
        logger=False, enable_checkpointing=False, enable_progress_bar=False, use_distributed_sampler=False,
    )
    trainer.fit(method, datamodule=_Data(8))
    after = gathered_student(method)
    assert all(torch.isfinite(v).all() for v in after.values())
    assert any(not torch.allclose(after[k].cpu(), before[k].float()) for k in after)
    assert all(p.dtype == torch.float32 for p in method.teachers.parameters())


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
@pytest.mark.parametrize("stage", [2, 3])
def test_nccl_two_gpus_match_one_gpu(stage, tmp_path):
    """Over NCCL, two GPUs with half the batch each reach the one-GPU weights; ZeRO-3 halves the teacher."""
    double = _two_processes(stage, tmp_path, accelerator="gpu")
    single, _ = fit(0, devices=1, precision="32-true", steps=3, accelerator="gpu")
    for key, value in gathered_student(single).items():
        torch.testing.assert_close(double["student"][key], value, rtol=1e-3, atol=1e-4, msg=f"{key} differs")
    if stage == 3:
        assert max(double["teacher_shard"]) < 0.6 * double["teacher_total"], double
