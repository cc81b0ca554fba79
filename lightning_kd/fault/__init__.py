"""Fault tolerance: atomic checkpoint files, periodic checkpoints that resume exactly, a stop on NaN/inf losses
that names a checkpoint which really recovers, clear errors for failed writes and corrupt checkpoints, one run
per directory, non-zero exits for interrupted runs, and resuming with a rebuilt optimizer.

See ``docs/fault_tolerance.md``. Imports are lazy (``from lightning_kd.fault import PeriodicCheckpoint`` works
as usual), so the light modules (``run_lock``, ``checkpoint_files``) load without torch or Lightning.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "AtomicCheckpointIO": "lightning_kd.fault.atomic_io",
    "CorruptCheckpointError": "lightning_kd.fault.atomic_io",
    "atomic_write": "lightning_kd.fault.atomic_io",
    "install_atomic_checkpoint_io": "lightning_kd.fault.atomic_io",
    "remove_stale_temporaries": "lightning_kd.fault.atomic_io",
    "CheckpointWriteError": "lightning_kd.fault.write_errors",
    "DirectoryInUseError": "lightning_kd.fault.run_lock",
    "NonFiniteLossError": "lightning_kd.fault.nonfinite",
    "check_finite_loss": "lightning_kd.fault.nonfinite",
    "NonFiniteRecovery": "lightning_kd.fault.recovery",
    "PeriodicCheckpoint": "lightning_kd.fault.periodic_checkpoint",
    "ResetOptimizerOnResume": "lightning_kd.fault.reset_optimizer",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'lightning_kd.fault' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
