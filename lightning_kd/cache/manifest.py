"""``manifest.json``: the key a teacher cache directory was filled under, and its record layout.

A cache is only valid for the exact teacher, tokenizer, training data, masking, request and
storage settings that filled it. Opening a directory whose stored key differs from the current
one raises :class:`StaleCacheError` naming every differing component, never a silent mix.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lightning_kd.fault.atomic_io import atomic_write

#: Bumped whenever the on-disk format changes; older caches are then refused, not misread.
#: 2: compact MLM logits (top-k per logit row in ``rows.bin``), the request's logit rows in the key.
CACHE_FORMAT_VERSION = 2
MANIFEST = "manifest.json"

#: Key component → how a message names it.
COMPONENTS = {
    "format_version": "library cache format version",
    "teacher_index": "teacher index",
    "teacher_config": "teacher config",
    "teacher_weights": "teacher weights",
    "teacher_precision": "teacher precision",
    "tokenizer": "tokenizer",
    "dataset": "dataset",
    "masking_seed": "masking seed",
    "request": "stored feature request",
    "top_k": "top_k",
    "dtype": "storage dtype",
}


class StaleCacheError(ValueError):
    """A cache directory was filled under another key (teacher, tokenizer, data, masking, request, ...)."""


def read_manifest(directory: Path) -> dict[str, Any] | None:
    """The manifest of ``directory``, or ``None`` for a new cache.

    Raises:
        StaleCacheError: shard files exist without a manifest (the directory was tampered with).
    """
    path = directory / MANIFEST
    if path.is_file():
        return json.loads(path.read_text())
    if any(directory.glob("rank*/*.bin")):
        raise StaleCacheError(
            f"{directory} holds cached teacher outputs but no {MANIFEST}, so what they were computed from is unknown. "
            "Delete the directory (or point the cache's `path` elsewhere)."
        )
    return None


def check_key(stored: dict[str, Any], expected: dict[str, Any], directory: Path) -> None:
    """Refuse a cache whose key differs from ``expected``, naming each differing component.

    Raises:
        StaleCacheError: at least one component differs.
    """
    differences = []
    for name in sorted(set(stored) | set(expected), key=lambda n: list(COMPONENTS).index(n) if n in COMPONENTS else 99):
        old, new = stored.get(name), expected.get(name)
        if old != new:
            differences.append(f"  - {COMPONENTS.get(name, name)}: {_difference(old, new)}")
    if differences:
        raise StaleCacheError(
            f"The teacher cache at {directory} was filled for something else, so its outputs would be stale:\n"
            + "\n".join(differences)
            + f"\nDelete {directory} (it is refilled on the next run) or point the cache's `path` elsewhere."
        )


def write_manifest(directory: Path, key: dict[str, Any], layout: dict[str, Any]) -> None:
    """Write the manifest atomically (every rank writes the same bytes, so concurrent writers agree)."""
    text = json.dumps({"key": key, "layout": layout}, indent=1, sort_keys=True)
    atomic_write(directory / MANIFEST, lambda handle: handle.write(text.encode()))


def _difference(old: Any, new: Any) -> str:
    """``old → new``; for dicts only the entries that differ."""
    if isinstance(old, dict) and isinstance(new, dict):
        keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        return "; ".join(f"{k}: {_short(old.get(k))} → {_short(new.get(k))}" for k in keys)
    return f"{_short(old)} → {_short(new)}"


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= 32 else text[:14] + "…" + text[-8:]  # hashes: enough digits to tell apart
