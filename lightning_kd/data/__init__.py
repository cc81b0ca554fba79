"""Data modules: task classification data (GLUE, SuperGLUE, files, embedded), MLM pretraining corpora and causal-LM data.

Imports are lazy so that ``import lightning_kd.core`` (which needs only :mod:`.sources`) does not
pay for ``datasets``; ``from lightning_kd.data import GlueDataModule`` works as usual.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "GlueDataModule": "lightning_kd.data.glue",
    "CausalLMDataModule": "lightning_kd.data.causal_lm",
    "PretrainDataModule": "lightning_kd.data.pretrain",
    "resolve_source": "lightning_kd.data.sources",
    "TASKS": "lightning_kd.data.tasks",
    "TaskSpec": "lightning_kd.data.tasks",
    "get_task": "lightning_kd.data.tasks",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'lightning_kd.data' has no attribute {name!r}")
