"""What text a vocabulary entry stands for, in a form comparable across tokenizer families.

Each tokenizer family marks word starts differently in its token strings:

* **byte-level BPE** (GPT-2, Llama 3, Qwen, SmolLM2): every byte is written as one printable character
  (GPT-2's bytes-to-unicode table), a space as ``Ġ``; ``Ġword`` is the bytes `` word``;
* **SentencePiece** (Llama 2, Mistral, Gemma): ``▁`` is a space, ``<0xNN>`` a byte-fallback token;
* **WordPiece** (BERT): a token continuing a word carries the ``##`` prefix; any other token begins a
  word, the space before it being implied;
* **other** (word-level vocabularies): every token is a whole word.

:func:`token_key` turns a token string into ``(starts_word, body)``: ``starts_word`` is True when the
token's text begins with one space (byte-level, SentencePiece) or is a word-initial WordPiece token;
``body`` is the UTF-8 bytes of the rest. Bytes rather than text, so byte tokens holding part of a
multi-byte character (byte-level pieces, ``<0xC3>``) still match each other. Consequences of the
single rule, which :class:`~lightning_kd.losses.cross_vocabulary.VocabularyMatch` inherits:

* ``Ġcat``, ``▁cat`` and WordPiece ``cat`` are the same key ``(True, b"cat")``; ``at``, ``##at`` are
  ``(False, b"at")``;
* WordPiece splits punctuation off words without a space, but reads ``.`` as word-initial, so its
  ``.`` matches ``Ġ.``/``▁.`` rather than a byte-level ``.`` that follows a word: WordPiece cannot tell
  the two apart, and this choice keeps the rule the same for every token;
* a lone space token (``Ġ``, ``▁``) is ``(True, b"")``; two spaces ``(True, b" ")``.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from typing import Any, Literal

TokenScheme = Literal["byte_level", "sentencepiece", "wordpiece", "word"]
TokenKey = tuple[bool, bytes]

_BYTE_FALLBACK = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")
_SPACE = b" "


@lru_cache(maxsize=1)
def _unicode_to_byte() -> dict[str, int]:
    """The inverse of GPT-2's bytes-to-unicode table: printable Latin-1 bytes stand for themselves, the
    other 68 bytes (controls, space, ...) take the code points from 256 upward, in byte order."""
    printable = {*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)}
    table = {chr(byte): byte for byte in printable}
    shifted = 256
    for byte in range(256):
        if byte not in printable:
            table[chr(shifted)] = byte
            shifted += 1
    return table


def token_scheme(tokenizer: Any) -> TokenScheme:
    """How ``tokenizer`` writes word starts in its token strings (module docstring).

    Fast tokenizers are read from their backend's decoder (and, for WordPiece, model); slow ones from
    the attributes their classes define.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        if hasattr(tokenizer, "byte_encoder"):
            return "byte_level"
        if hasattr(tokenizer, "sp_model"):
            return "sentencepiece"
        return "wordpiece" if hasattr(tokenizer, "wordpiece_tokenizer") else "word"
    decoder = backend.decoder
    described = json.dumps(json.loads(decoder.__getstate__()), ensure_ascii=False) if decoder is not None else ""
    if '"ByteLevel"' in described:
        return "byte_level"
    # Llama-2-style decoders replace "▁" by a space and fall back to bytes rather than use Metaspace.
    if '"Metaspace"' in described or '"ByteFallback"' in described or "\u2581" in described:
        return "sentencepiece"
    model = json.loads(backend.model.__getstate__())
    if '"WordPiece"' in described or model.get("type") == "WordPiece":
        return "wordpiece"
    return "word"


def continuation_prefix(tokenizer: Any) -> str:
    """The WordPiece prefix of word-continuing tokens (``##`` unless the tokenizer says otherwise)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        model = json.loads(backend.model.__getstate__())
        return model.get("continuing_subword_prefix") or "##"
    return "##"


def token_key(token: str, scheme: TokenScheme, prefix: str = "##") -> TokenKey | None:
    """``(starts_word, body bytes)`` of one vocabulary entry, or ``None`` when it spells nothing
    comparable (a byte-level string outside the byte table, an empty WordPiece continuation).

    Args:
        token: the entry as ``convert_ids_to_tokens`` writes it.
        scheme: the tokenizer's :func:`token_scheme`.
        prefix: the WordPiece continuation prefix (``"wordpiece"`` only).
    """
    if scheme == "byte_level":
        table = _unicode_to_byte()
        if any(char not in table for char in token):
            return None  # an added token written as plain text, not in the byte alphabet
        raw = bytes(table[char] for char in token)
    elif scheme == "sentencepiece":
        fallback = _BYTE_FALLBACK.match(token)
        raw = bytes([int(fallback.group(1), 16)]) if fallback else token.replace("\u2581", " ").encode("utf-8")
    elif scheme == "wordpiece":
        if token.startswith(prefix) and len(token) > len(prefix):
            return False, token[len(prefix):].encode("utf-8")
        return True, token.encode("utf-8")
    else:
        return True, token.encode("utf-8")
    if raw.startswith(_SPACE):
        return True, raw[1:]
    return (False, raw) if raw else None


def vocabulary_keys(tokenizer: Any) -> dict[TokenKey, int]:
    """Key → the lowest id spelling it, over ``tokenizer``'s whole vocabulary (added tokens included),
    leaving out special tokens (BOS, EOS, pad, ``[CLS]``, ...) and entries :func:`token_key` refuses."""
    scheme = token_scheme(tokenizer)
    prefix = continuation_prefix(tokenizer) if scheme == "wordpiece" else "##"
    special = set(getattr(tokenizer, "all_special_ids", None) or [])
    added = getattr(tokenizer, "added_tokens_decoder", None) or {}
    special |= {index for index, token in added.items() if getattr(token, "special", False)}
    strings = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    keys: dict[TokenKey, int] = {}
    for index, string in enumerate(strings):
        if index in special or string is None:
            continue
        key = token_key(string, scheme, prefix)
        if key is not None:
            keys.setdefault(key, index)  # duplicates (e.g. "<0x41>" and "A"): the first id wins
    return keys
