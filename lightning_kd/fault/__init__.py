"""Fault tolerance: atomic checkpoint files, periodic checkpoints that resume exactly, a stop on NaN/inf losses.

See ``docs/fault_tolerance.md``.
"""

from lightning_kd.fault.atomic_io import AtomicCheckpointIO, atomic_write, install_atomic_checkpoint_io, remove_stale_temporaries
from lightning_kd.fault.nonfinite import NonFiniteLossError, check_finite_loss
from lightning_kd.fault.periodic_checkpoint import PeriodicCheckpoint

__all__ = [
    "AtomicCheckpointIO",
    "NonFiniteLossError",
    "PeriodicCheckpoint",
    "atomic_write",
    "check_finite_loss",
    "install_atomic_checkpoint_io",
    "remove_stale_temporaries",
]
