"""Every distillation method, one class per file. This import list is the registry."""

from lightning_kd.methods.kd import KD
from lightning_kd.methods.student_only import StudentOnly

__all__ = ["KD", "StudentOnly"]
