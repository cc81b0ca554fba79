"""Multi-teacher strategies: how per-teacher losses become one training loss (one file per strategy)."""

from lightning_kd.core.multi_teacher import Average, MultiTeacherStrategy

__all__ = ["Average", "MultiTeacherStrategy"]
