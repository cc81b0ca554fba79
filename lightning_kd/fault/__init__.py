"""Fault tolerance: atomic checkpoint files, periodic checkpoints that resume exactly, a stop on NaN/inf losses,
non-zero exits for interrupted runs, resuming with a rebuilt optimizer, and clear errors for corrupt checkpoints.

See ``docs/fault_tolerance.md``.
"""

from lightning_kd.fault.atomic_io import (
    AtomicCheckpointIO,
    CorruptCheckpointError,
    atomic_write,
    install_atomic_checkpoint_io,
    remove_stale_temporaries,
)
from lightning_kd.fault.nonfinite import NonFiniteLossError, check_finite_loss
from lightning_kd.fault.periodic_checkpoint import PeriodicCheckpoint
from lightning_kd.fault.reset_optimizer import ResetOptimizerOnResume

__all__ = [
    "AtomicCheckpointIO",
    "CorruptCheckpointError",
    "NonFiniteLossError",
    "PeriodicCheckpoint",
    "ResetOptimizerOnResume",
    "atomic_write",
    "check_finite_loss",
    "install_atomic_checkpoint_io",
    "remove_stale_temporaries",
]
