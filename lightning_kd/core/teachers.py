"""Frozen teachers: loading, precision, freezing and the eval lock."""

from __future__ import annotations

from torch import nn
from transformers import PreTrainedModel

from lightning_kd.models.loading import ModelSource, Precision, load_model
from lightning_kd.stages import Stage

def freeze(model: nn.Module) -> nn.Module:
    """Put ``model`` in eval mode with no trainable parameter."""
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model


def load_teachers(
    sources: list[ModelSource], stage: Stage, num_labels: int | None, dtype: Precision | list[Precision]
) -> nn.ModuleList:
    """Load and freeze every teacher, each in its own precision (captured tensors are upcast).

    Args:
        dtype: one precision for all teachers, or one per teacher.
    """
    dtypes = dtype if isinstance(dtype, list) else [dtype] * len(sources)
    if len(dtypes) != len(sources):
        raise ValueError(f"teacher_precision lists {len(dtypes)} precisions for {len(sources)} teachers; give one per teacher or a single value.")
    return nn.ModuleList(freeze(load_model(s, stage, num_labels, role="teacher", dtype=d)) for s, d in zip(sources, dtypes))


def describe_source(source: ModelSource) -> str:
    """What a checkpoint records about where a teacher came from."""
    if isinstance(source, PreTrainedModel):
        return f"<in-memory {type(source).__name__}: {getattr(source.config, '_name_or_path', '') or 'unnamed'}>"
    return str(source)
