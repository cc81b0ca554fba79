"""Writing the student as a plain Hugging Face directory, atomically, replacing nothing but an earlier export.

Which directories an export may replace is decided in :mod:`lightning_kd.core.export_target`.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

from transformers import AutoTokenizer, PreTrainedModel

from lightning_kd.core.export_target import LIBRARY, MARKER, check_export_target, write_file_list
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
    """Publish a fully written export in ``staging`` as ``target``, never leaving a half-written target.

    ``staging``'s marker gets the list of its files (so a later export recognises it), ``target`` is
    checked to be new, empty or an earlier export (:func:`check_export_target`), then moved aside; it
    is deleted only once the new directory is in place.
    """
    write_file_list(staging)
    check_export_target(target)  # again, just before replacing: something may have appeared since
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
    ``distillation.json`` beside it records ``metadata`` (how the model was distilled) and the files
    written. ``directory`` must be new, empty or an earlier export; anything else raises
    :class:`~lightning_kd.core.export_target.ExportTargetError` before a file is written.
    """
    target = check_export_target(directory)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        dtype = next(model.parameters()).dtype
        model.float().save_pretrained(staging, safe_serialization=True)
        model.to(dtype)
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
        (staging / MARKER).write_text(json.dumps({"library": LIBRARY, **(metadata or {})}, indent=2, default=str))
        atomic_replace_directory(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target
