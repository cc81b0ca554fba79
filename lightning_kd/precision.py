"""``trainer.precision: auto``: the training precision the hardware runs natively.

bf16 autocast is only a win where the hardware computes in bf16. A CPU without AVX-512-BF16 or AMX
(most laptops and many VMs, AVX2 only) emulates it: a MiniLM-L6 training step was 8.4× slower than
in fp32 on such a CPU. So:

* CPU: ``bf16-mixed`` when the CPU has bf16 instructions (x86: AVX-512-BF16 or AMX-BF16; Arm:
  the BF16 extension, e.g. Apple M2 and later, Graviton 3), else ``32-true``;
* CUDA GPU: ``bf16-mixed`` when the GPU computes bf16 natively (Ampere and later), else
  ``16-mixed`` (V100, T4: fp16 with loss scaling);
* anything else (MPS, TPU, …): ``32-true``; name a precision to use another.

The CPU's features come from ``torch.cpu.get_capabilities()`` (the cpuinfo library PyTorch
bundles; it reads CPUID on x86 and the OS's feature registers on Arm, sysctl on macOS). Tests
replace :func:`cpu_bf16_support` to simulate a CPU.
"""

from __future__ import annotations

from typing import Any

import torch
from pytorch_lightning.accelerators import Accelerator, CPUAccelerator, CUDAAccelerator, MPSAccelerator, XLAAccelerator

# Capability names in torch.cpu.get_capabilities() that mean native bf16 arithmetic, with their usual names,
# and what to say when none is there.
_X86_BF16 = ({"avx512_bf16": "AVX-512-BF16", "amx_bf16": "AMX-BF16"}, "AVX-512-BF16/AMX absent")
_ARM_BF16 = ({"bf16": "Arm BF16", "sve_bf16": "SVE BF16"}, "the Arm BF16 extension absent")


def cpu_capabilities() -> dict[str, Any]:
    """The CPU's features as PyTorch detects them (``{}`` on a PyTorch without ``torch.cpu.get_capabilities``)."""
    query = getattr(torch.cpu, "get_capabilities", None)
    return dict(query()) if query is not None else {}


def cpu_bf16_support() -> tuple[bool, str]:
    """Whether this CPU computes bf16 natively, and the evidence, e.g. ``(False, "AVX-512-BF16/AMX absent")``."""
    capabilities = cpu_capabilities()
    if not capabilities:
        return False, "this PyTorch cannot query the CPU's features"
    arm = str(capabilities.get("architecture", "")).lower() in ("arm64", "aarch64")
    flags, absent = _ARM_BF16 if arm else _X86_BF16
    present = [label for flag, label in flags.items() if capabilities.get(flag)]
    return (True, f"{' and '.join(present)} present") if present else (False, absent)


def cuda_bf16_support() -> tuple[bool, str]:
    """Whether the current CUDA GPU computes bf16 natively (not emulated), and its name."""
    name = torch.cuda.get_device_name()
    try:
        native = torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:  # PyTorch before 2.3 has no including_emulation (and reported native support only)
        native = torch.cuda.is_bf16_supported()
    return native, name


def resolve_accelerator(accelerator: str | Accelerator | None) -> str:
    """The accelerator Lightning will use for ``accelerator`` (``"auto"``/``"gpu"`` resolved as Lightning does)."""
    if isinstance(accelerator, Accelerator):
        return {CPUAccelerator: "cpu", CUDAAccelerator: "cuda", MPSAccelerator: "mps"}.get(type(accelerator), type(accelerator).__name__)
    name = str(accelerator or "auto").lower()
    # Lightning's own order (lightning_fabric.utilities.device_parser._select_auto_accelerator, and
    # _choose_gpu_accelerator_backend for "gpu"), through the accelerators' public availability checks.
    if name == "auto" and XLAAccelerator.is_available():
        return "tpu"
    if name in ("auto", "gpu"):
        if MPSAccelerator.is_available():
            return "mps"
        if CUDAAccelerator.is_available() or name == "gpu":  # "gpu" without one: Lightning raises its own error
            return "cuda"
        return "cpu"
    return name


def choose_precision(accelerator: str) -> tuple[str, str]:
    """The precision for a resolved ``accelerator`` (``"cpu"``, ``"cuda"``, …) and why, for the log line."""
    if accelerator == "cpu":
        native, evidence = cpu_bf16_support()
        if native:
            return "bf16-mixed", f"this CPU runs bf16 natively: {evidence}"
        return "32-true", f"this CPU has no native bf16: {evidence}; bf16 would be emulated, several times slower"
    if accelerator == "cuda":
        native, name = cuda_bf16_support()
        if native:
            return "bf16-mixed", f"{name} runs bf16 natively"
        return "16-mixed", f"{name} has no native bf16"
    return "32-true", f"no automatic choice for the {accelerator} accelerator; set trainer.precision to use another"
