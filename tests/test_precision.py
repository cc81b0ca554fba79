"""``trainer.precision: auto`` picks what the hardware runs natively, and says so."""

from __future__ import annotations

import logging
import platform
from pathlib import Path

import pytest

from lightning_kd import precision
from lightning_kd.cli import run_cli
from lightning_kd.trainer import AutoPrecisionTrainer

AVX2_LAPTOP = {"architecture": "x86_64", "avx2": True, "avx512_f": False, "avx512_bf16": False, "amx_bf16": False}
SAPPHIRE_RAPIDS = {**AVX2_LAPTOP, "avx512_f": True, "avx512_bf16": True, "amx_bf16": True}
APPLE_M1 = {"architecture": "arm64", "neon": True, "bf16": False}
APPLE_M2 = {"architecture": "arm64", "neon": True, "bf16": True}


@pytest.mark.parametrize(
    ("capabilities", "native", "evidence"),
    [
        (AVX2_LAPTOP, False, "AVX-512-BF16/AMX absent"),
        ({**AVX2_LAPTOP, "avx512_f": True, "avx512_bf16": True}, True, "AVX-512-BF16 present"),
        (SAPPHIRE_RAPIDS, True, "AVX-512-BF16 and AMX-BF16 present"),
        (APPLE_M1, False, "Arm BF16 extension absent"),
        (APPLE_M2, True, "Arm BF16 present"),
        ({}, False, "cannot query"),
    ],
)
def test_cpu_bf16_support_reads_the_cpu_features(monkeypatch, capabilities, native, evidence):
    monkeypatch.setattr(precision, "cpu_capabilities", lambda: capabilities)
    found, said = precision.cpu_bf16_support()
    assert found is native and evidence in said


@pytest.mark.skipif(not Path("/proc/cpuinfo").exists() or platform.machine() != "x86_64", reason="Linux x86 flags")
def test_the_real_check_agrees_with_the_kernel_cpu_flags():
    flags = set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    assert precision.cpu_bf16_support()[0] == bool({"avx512_bf16", "amx_bf16"} & flags)


@pytest.mark.parametrize(("native", "expected"), [(False, "32-true"), (True, "bf16-mixed")])
def test_auto_on_cpu_uses_bf16_only_where_native(monkeypatch, caplog, native, expected):
    monkeypatch.setattr(precision, "cpu_bf16_support", lambda: (native, "simulated CPU"))
    with caplog.at_level(logging.INFO):
        trainer = AutoPrecisionTrainer(precision="auto", accelerator="cpu", devices=1, logger=False, enable_checkpointing=False)
    assert trainer.precision == expected
    assert f"precision: auto -> {expected} (" in caplog.text and "simulated CPU" in caplog.text


@pytest.mark.parametrize(("native", "expected"), [(True, "bf16-mixed"), (False, "16-mixed")])
def test_auto_on_a_cuda_gpu_falls_back_to_fp16(monkeypatch, native, expected):
    monkeypatch.setattr(precision, "cuda_bf16_support", lambda: (native, "Tesla T4"))
    chosen, reason = precision.choose_precision("cuda")
    assert chosen == expected and "Tesla T4" in reason


def test_other_values_pass_through_unchanged(monkeypatch):
    monkeypatch.setattr(precision, "cpu_bf16_support", lambda: pytest.fail("only 'auto' asks the hardware"))
    assert AutoPrecisionTrainer(precision="bf16-mixed", accelerator="cpu", logger=False).precision == "bf16-mixed"
    assert AutoPrecisionTrainer(accelerator="cpu", logger=False).precision == "32-true"


def test_the_accelerator_is_resolved_before_choosing(monkeypatch):
    from pytorch_lightning.accelerators import CPUAccelerator, CUDAAccelerator, MPSAccelerator, XLAAccelerator

    for accelerator in (CUDAAccelerator, MPSAccelerator, XLAAccelerator):
        monkeypatch.setattr(accelerator, "is_available", staticmethod(lambda: False))
    assert precision.resolve_accelerator("auto") == "cpu"
    assert precision.resolve_accelerator(CPUAccelerator()) == "cpu"
    monkeypatch.setattr(CUDAAccelerator, "is_available", staticmethod(lambda: True))
    assert precision.resolve_accelerator("auto") == precision.resolve_accelerator("gpu") == "cuda"
    assert precision.choose_precision("mps")[0] == "32-true"


@pytest.mark.parametrize("config", ["configs/quickstart/1_finetune_teacher.yaml", "configs/trainer/cpu.yaml"])
def test_shipped_configs_ask_for_auto_and_the_cli_resolves_it(monkeypatch, tmp_path, config):
    root = Path(__file__).resolve().parents[1]
    monkeypatch.setattr(precision, "cpu_bf16_support", lambda: (False, "simulated AVX2 laptop"))
    args = ["--config", str(root / config), "--model=lightning_kd.methods.StudentOnly", "--model.student=embedded:all-MiniLM-L6-v2",
            "--data=lightning_kd.data.GlueDataModule", "--data.task=rotten_tomatoes", "--data.tokenizer=embedded:all-MiniLM-L6-v2",
            "--trainer.logger=false", f"--trainer.default_root_dir={tmp_path}", f"--export.dirpath={tmp_path / 'student'}"]
    cli = run_cli(args, run=False)
    assert cli.config.trainer.precision == "auto"
    assert cli.trainer.precision == "32-true"
