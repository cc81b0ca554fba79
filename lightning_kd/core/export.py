"""Writing the student as a plain Hugging Face directory, atomically."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

from transformers import AutoTokenizer, PreTrainedModel

from lightning_kd.data.sources import resolve_source


def load_tokenizer(source: str | None):
    """The tokenizer saved next to a model, or ``None`` when ``source`` holds none."""
    if not source:
        return None
    try:
        return AutoTokenizer.from_pretrained(resolve_source(source))
    except (OSError, ValueError, TypeError):
        return None


def atomic_replace_directory(staging: Path, target: Path) -> None:
    """Move a fully written ``staging`` directory to ``target``, never leaving a half-written target.

    An existing ``target`` is moved aside first and deleted only once the new one is in place.
    """
    backup = None
    if target.exists():
        backup = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(target, backup)
    try:
        os.replace(staging, target)
    except BaseException:
        if backup is not None:
            os.replace(backup, target)
        raise
    if backup is not None:
        shutil.rmtree(backup, ignore_errors=True)


def export_model(model: PreTrainedModel, directory: str | os.PathLike, tokenizer=None, metadata: dict | None = None) -> Path:
    """Save ``model`` (float32 safetensors) and ``tokenizer`` to ``directory`` atomically.

    The result loads with ``AutoModel…from_pretrained(directory)`` and no lightning_kd import.
    ``metadata`` (how the model was distilled) goes to ``distillation.json`` beside it.
    """
    target = Path(directory).resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        dtype = next(model.parameters()).dtype
        model.float().save_pretrained(staging, safe_serialization=True)
        model.to(dtype)
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
        if metadata:
            (staging / "distillation.json").write_text(json.dumps(metadata, indent=2, default=str))
        atomic_replace_directory(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target
