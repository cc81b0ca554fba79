"""Callbacks, one job per file."""

from lightning_kd.callbacks.export_student import ExportStudent

__all__ = ["ExportStudent"]
