"""How many bytes of text each token id stands for: the denominator of bits per byte.

Perplexities of models with different tokenizers are not comparable (a token is a different amount of
text); bits per byte are: the summed next-token NLL over the scored tokens, in bits, divided by the
UTF-8 bytes of the text those tokens spell. :func:`token_byte_lengths` gives that byte count per id,
read from the tokenizer's own token strings:

* **byte-level BPE** (GPT-2, Llama 3, Qwen, SmolLM: a ``ByteLevel`` decoder): every character of a token
  string stands for exactly one byte (the bytes-to-unicode map), so a token spells ``len(string)``
  bytes — exact, including spaces and partial UTF-8 characters;
* **SentencePiece-style** (Llama 2, Mistral, Gemma: ``▁`` for a space, ``<0xNN>`` byte fallbacks): ``▁``
  is one byte, a byte-fallback token one byte, any other character its UTF-8 length. Exact but for
  the dummy space some tokenizers prepend to a text's first word (one byte per document);
* **other decoders** (WordPiece, word-level): the token's UTF-8 length plus one byte for the space that
  decoding joins it with (``##`` continuations none): an approximation, named in the report.

Special tokens (BOS, EOS, pad, chat markers) spell no text: 0 bytes. Their NLL still counts, as it does
in a perplexity.
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import Tensor

from lightning_kd.cross_tokenizer.token_text import token_scheme

_BYTE_FALLBACK = re.compile(r"^<0x[0-9A-Fa-f]{2}>$")


def byte_rule(tokenizer: Any) -> str:
    """``"byte_level"``, ``"sentencepiece"`` or ``"approximate"``: how :func:`token_byte_lengths` counts
    bytes for ``tokenizer`` (module docstring), from how it writes its tokens (:func:`token_scheme`)."""
    scheme = token_scheme(tokenizer)
    return scheme if scheme in ("byte_level", "sentencepiece") else "approximate"


def token_byte_lengths(tokenizer: Any) -> Tensor:
    """``(len(tokenizer),)`` int64: the UTF-8 bytes of text each token id spells (0 for special tokens)."""
    rule = byte_rule(tokenizer)
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    strings = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    lengths = [0 if index in special or string is None else _bytes(string, rule) for index, string in enumerate(strings)]
    return torch.tensor(lengths, dtype=torch.long)


def _bytes(token: str, rule: str) -> int:
    if rule == "byte_level":
        return len(token)
    if rule == "sentencepiece":
        if _BYTE_FALLBACK.match(token):
            return 1
        return len(token.replace("\u2581", " ").encode("utf-8"))
    if token.startswith("##"):
        return len(token[2:].encode("utf-8"))
    return len(token.encode("utf-8")) + 1
