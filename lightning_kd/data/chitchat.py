"""The embedded Chit-Chat conversation corpus (``embedded:chitchat``) as prompt/response JSONL files.

The PyPI package ``chitchat-dataset`` (MIT) ships ``chitchat_dataset/dataset.json``: 7,168
conversations from BYU's Chit-Chat Challenge, ``{id: {"messages": [turn, ...], ...}}`` where a
turn is a list of consecutive messages ``{"text", "timestamp", "sender"}`` by one sender.

:func:`write_chitchat_splits` turns it once into two JSONL files of ``{"prompt", "response",
"conversation"}`` rows, one per pair of consecutive turns (prompt: one turn's messages joined by
newlines; response: the next turn's), and caches them. Conversations, not pairs, are split
between training and validation (a seeded draw), so no conversation is in both.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

#: The ``train_files``/``validation_files`` entry that selects this corpus.
CHITCHAT = "embedded:chitchat"
_FORMAT_VERSION = 1


def turn_text(turn: list[dict[str, Any]]) -> str:
    """A turn's non-blank messages, stripped and joined by newlines."""
    return "\n".join(m["text"].strip() for m in turn if isinstance(m.get("text"), str) and m["text"].strip())


def conversation_pairs(conversation: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """``(prompt, response)`` for each pair of consecutive turns of a conversation with text on both sides."""
    texts = [turn_text(turn) for turn in conversation.get("messages") or []]
    for prompt, response in zip(texts, texts[1:]):
        if prompt and response:
            yield prompt, response


def split_conversations(ids: list[str], validation_fraction: float, seed: int) -> tuple[set[str], set[str]]:
    """Seeded draw of ``validation_fraction`` of the conversation ids (at least one, never all) for validation."""
    order = sorted(ids)
    random.Random(seed).shuffle(order)
    held_out = min(len(order) - 1, max(1, round(len(order) * validation_fraction)))
    return set(order[held_out:]), set(order[:held_out])


def write_chitchat_splits(
    source: str | Path, directory: str | Path, validation_fraction: float, seed: int
) -> dict[str, Path]:
    """Write (once) the ``train`` and ``validation`` prompt/response JSONL files of a Chit-Chat ``dataset.json``.

    Files are cached under ``directory`` in a folder keyed by the source file (path, size, modification
    time), ``validation_fraction`` and ``seed``; a second call returns them without reading the source.

    Args:
        source: the ``dataset.json`` file.
        directory: where the converted files are cached.
        validation_fraction: share of the conversations (with at least one pair) held out.
        seed: seed of the draw.

    Returns:
        ``{"train": path, "validation": path}``.

    Raises:
        ValueError: the file is not in the Chit-Chat format, or has fewer than two conversations with a pair.
    """
    source = Path(source)
    stat = source.stat()
    key = hashlib.sha1(
        f"{_FORMAT_VERSION}:{source.resolve()}:{stat.st_size}:{stat.st_mtime_ns}:{validation_fraction}:{seed}".encode()
    ).hexdigest()[:16]
    folder = Path(directory) / f"chitchat-{key}"
    paths = {split: folder / f"{split}.jsonl" for split in ("train", "validation")}
    if all(path.is_file() for path in paths.values()):
        return paths
    with source.open(encoding="utf-8") as handle:
        data = json.load(handle)
    if not isinstance(data, dict) or not all(isinstance(v, dict) and "messages" in v for v in data.values()):
        raise ValueError(f"{source}: not a Chit-Chat dataset.json ({{id: {{'messages': [[message, ...], ...]}}}})")
    pairs = {cid: list(conversation_pairs(conversation)) for cid, conversation in data.items()}
    pairs = {cid: rows for cid, rows in pairs.items() if rows}
    if len(pairs) < 2:
        raise ValueError(f"{source}: {len(pairs)} conversation(s) with two turns; cannot split off validation")
    train_ids, validation_ids = split_conversations(list(pairs), validation_fraction, seed)
    folder.mkdir(parents=True, exist_ok=True)
    for split, chosen in (("train", train_ids), ("validation", validation_ids)):
        partial = paths[split].with_suffix(f".{os.getpid()}.tmp")
        with partial.open("w", encoding="utf-8") as out:
            for cid in pairs:  # the file's order, so a given split always lists its rows the same way
                if cid in chosen:
                    for prompt, response in pairs[cid]:
                        out.write(json.dumps({"prompt": prompt, "response": response, "conversation": cid}) + "\n")
        partial.replace(paths[split])  # atomic: concurrent ranks never read a half-written file
    return paths
