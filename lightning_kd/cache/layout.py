"""What one cached example holds, and how batches of teacher features become records and back.

Only real tokens are stored (positions where ``attention_mask`` is 1, in position order), so a
record does not depend on how much padding its batch had. Per token: the input id (to recognise
the row later), the requested hidden states ``H_0 … H_L``, Q/K of every layer whose scores,
probabilities or Q/K/V are requested and V of the Q/K/V layers, and vocabulary-level logits
(MLM) — their ``top_k`` largest values with their ids, or all of them with ``top_k=None``. Per
example: sequence-level (classification) logits. Records are numpy structured arrays, so a shard
file is a flat array of fixed-size records that :mod:`lightning_kd.cache.shards` memory-maps.

On the way back, tokens are scattered into ``(B, N, …)`` tensors with zeros at padded positions,
and top-k logits become a ``(B, N, V)`` tensor holding the stored values and
:data:`TOPK_FILL` elsewhere, i.e. a softmax over the ``k`` kept logits (renormalised top-k).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from lightning_kd.core.features import FeatureRequest, Features

StorageDtype = Literal["float16", "bfloat16", "float32"]

#: Logit given to the ids outside the stored top-k. Finite (``-inf`` makes ``0·log 0`` NaN in a KL),
#: and so low that ``exp`` of it underflows to exactly 0 at any sensible temperature.
TOPK_FILL = -1.0e9

_TORCH = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32, "int32": torch.int32}
# numpy has no bfloat16: its bits are stored as int16 and viewed back on read.
_NUMPY = {"float16": np.float16, "bfloat16": np.int16, "float32": np.float32, "int32": np.int32}


@dataclass(frozen=True)
class Field:
    """One stored tensor: ``per_token`` (one row per real token) or per example, with its dtype and shape."""

    name: str
    per_token: bool
    dtype: str
    shape: tuple[int, ...]


@dataclass
class EncodedRows:
    """A batch's records: ``tokens`` (all real tokens, row after row), ``examples`` (one per row or
    ``None``) and ``counts`` (real tokens per row)."""

    tokens: np.ndarray
    examples: np.ndarray | None
    counts: np.ndarray

    def select(self, rows: list[int]) -> EncodedRows:
        """The records of the batch rows ``rows`` (in that order)."""
        starts = np.concatenate([[0], np.cumsum(self.counts)[:-1]])
        tokens = np.concatenate([self.tokens[starts[r] : starts[r] + self.counts[r]] for r in rows]) if rows else self.tokens[:0]
        examples = self.examples[rows] if self.examples is not None else None
        return EncodedRows(tokens, examples, self.counts[rows])


class RecordLayout:
    """The stored fields of one teacher cache (see the module docstring).

    Args:
        fields: every stored tensor; ``input_ids`` (per token, int32) must be first.
        num_heads: the teacher's attention heads (decoded features rebuild scores from Q and K with it).
        top_k: vocabulary-level logits kept per token, or ``None`` for all.
        vocabulary_size: ``V`` of vocabulary-level logits (``None`` for sequence-level logits).
    """

    def __init__(self, fields: list[Field], num_heads: int, top_k: int | None, vocabulary_size: int | None) -> None:
        self.fields, self.num_heads, self.top_k, self.vocabulary_size = fields, num_heads, top_k, vocabulary_size
        self.token_fields = [f for f in fields if f.per_token]
        self.example_fields = [f for f in fields if not f.per_token]
        self.token_dtype = _record_dtype(self.token_fields)
        self.example_dtype = _record_dtype(self.example_fields) if self.example_fields else None
        self.vocabulary_logits = any(f.name in ("logits", "topk_values") for f in self.token_fields)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_features(cls, probe: Features, request: FeatureRequest, top_k: int | None, dtype: StorageDtype) -> RecordLayout:
        """The layout that stores what ``request`` needs, with shapes read from a probe forward's features."""
        fields = [Field("input_ids", True, "int32", ())]
        if request.hidden_states:
            states = probe.hidden_states
            fields.append(Field("hidden", True, dtype, (len(states), states[0].shape[-1])))
        for layer in sorted(request.hooked_layers):
            fields.append(Field(f"q{layer}", True, dtype, (probe.queries[layer].shape[-1],)))
            fields.append(Field(f"k{layer}", True, dtype, (probe.keys[layer].shape[-1],)))
        for layer in sorted(request.qkv_layers):
            fields.append(Field(f"v{layer}", True, dtype, (probe.values[layer].shape[-1],)))
        logits, vocabulary = probe.logits, None
        if logits.dim() == 3:
            vocabulary = logits.shape[-1]
            if top_k is not None and top_k < vocabulary:
                fields += [Field("topk_values", True, "float32", (top_k,)), Field("topk_indices", True, "int32", (top_k,))]
            else:
                fields.append(Field("logits", True, "float32", (vocabulary,)))
                top_k = None
        else:
            fields.append(Field("logits", False, "float32", tuple(logits.shape[1:])))
            top_k = None  # sequence-level logits are few; they are always stored in full
        return cls(fields, probe.num_heads, top_k, vocabulary)

    def describe(self) -> dict[str, Any]:
        """JSON form, stored in the manifest."""
        return {"num_heads": self.num_heads, "top_k": self.top_k, "vocabulary_size": self.vocabulary_size,
                "fields": [[f.name, f.per_token, f.dtype, list(f.shape)] for f in self.fields]}

    @classmethod
    def from_description(cls, described: dict[str, Any]) -> RecordLayout:
        fields = [Field(name, per_token, dtype, tuple(shape)) for name, per_token, dtype, shape in described["fields"]]
        return cls(fields, described["num_heads"], described["top_k"], described["vocabulary_size"])

    # ------------------------------------------------------------------ features → records
    def encode(self, features: Features, batch: dict[str, Tensor]) -> EncodedRows:
        """Records of every row of ``batch`` from the teacher's (float32) ``features``.

        Raises:
            ValueError: a value overflows the storage dtype (float16 holds at most 65504).
        """
        mask = real_tokens(batch).to(features.logits.device)
        counts = mask.sum(dim=1).cpu().numpy().astype(np.int64)
        tokens = np.zeros(int(counts.sum()), dtype=self.token_dtype)
        tokens["input_ids"] = batch["input_ids"].to(mask.device)[mask].to(torch.int32).cpu().numpy()
        top = features.logits[mask].float().topk(self.top_k, dim=-1) if self.top_k is not None else None
        for field in self.token_fields[1:]:
            if field.name == "hidden":
                value = torch.stack(features.hidden_states, dim=2)[mask]
            elif field.name == "topk_values":
                value = top.values
            elif field.name == "topk_indices":
                value = top.indices
            elif field.name == "logits":
                value = features.logits[mask]
            else:
                store = {"q": features.queries, "k": features.keys, "v": features.values}[field.name[0]]
                value = store[int(field.name[1:])][mask]
            tokens[field.name] = _to_numpy(value, field)
        examples = None
        if self.example_dtype is not None:
            examples = np.zeros(len(counts), dtype=self.example_dtype)
            examples["logits"] = _to_numpy(features.logits, self.example_fields[0])
        return EncodedRows(tokens, examples, counts)

    # ------------------------------------------------------------------ records → features
    def decode(self, rows: EncodedRows, batch: dict[str, Tensor], request: FeatureRequest, device: torch.device) -> Features:
        """Float32 features of ``batch`` on ``device`` from its rows' records (zeros at padded positions).

        Only what ``request`` asks for is rebuilt (a cache may hold more).
        """
        mask = real_tokens(batch).to(device)
        size, length = mask.shape
        where = mask.reshape(-1).nonzero().squeeze(1)

        def column(name: str) -> Tensor:
            field = next(f for f in self.fields if f.name == name)
            source = rows.tokens if field.per_token else rows.examples
            return _from_numpy(source[name], field).to(device, non_blocking=True)

        def spread(values: Tensor) -> Tensor:
            out = values.new_zeros((size * length, *values.shape[1:]), dtype=torch.float32)
            out[where] = values.float()
            return out.view(size, length, *values.shape[1:])

        hidden = None
        if request.hidden_states:
            values = column("hidden").float().transpose(0, 1)  # (L+1, T, d)
            out = values.new_zeros((values.shape[0], size * length, values.shape[-1]))
            out[:, where] = values
            hidden = tuple(out.view(values.shape[0], size, length, -1).unbind(0))
        if self.example_dtype is not None:
            logits = column("logits").float()
        elif self.top_k is not None:
            logits = torch.zeros(size * length, self.vocabulary_size, device=device)
            logits.index_fill_(0, where, TOPK_FILL)
            logits[where[:, None], column("topk_indices").long()] = column("topk_values").float()
            logits = logits.view(size, length, -1)
        else:
            logits = spread(column("logits"))
        qk = request.hooked_layers
        return Features(
            logits=logits,
            hidden_states=hidden,
            queries={layer: spread(column(f"q{layer}")) for layer in sorted(qk)},
            keys={layer: spread(column(f"k{layer}")) for layer in sorted(qk)},
            values={layer: spread(column(f"v{layer}")) for layer in sorted(request.qkv_layers)},
            attention_mask=batch.get("attention_mask"),
            num_heads=self.num_heads,
        )

    # ------------------------------------------------------------------ checks
    def differing_row(self, rows: EncodedRows, batch: dict[str, Tensor]) -> int | None:
        """The first batch row whose real tokens differ from its stored input ids, or ``None``."""
        mask = real_tokens(batch).cpu()
        counts = mask.sum(dim=1).numpy()
        ids = batch["input_ids"].cpu()
        start = 0
        for row, stored_count in enumerate(rows.counts):
            stored = rows.tokens["input_ids"][start : start + stored_count]
            start += stored_count
            if counts[row] != stored_count or not np.array_equal(ids[row][mask[row]].numpy(), stored):
                return row
        return None


def real_tokens(batch: dict[str, Tensor]) -> Tensor:
    """``(B, N)`` bool: the positions whose features are stored (all of them without an attention mask)."""
    mask = batch.get("attention_mask")
    return mask.bool() if mask is not None else torch.ones_like(batch["input_ids"], dtype=torch.bool)


def topk_logits(logits: Tensor, k: int) -> Tensor:
    """``(…, V)`` logits keeping the ``k`` largest per row and :data:`TOPK_FILL` elsewhere (what a
    top-k cache returns)."""
    top = logits.topk(k, dim=-1)
    return torch.full_like(logits, TOPK_FILL).scatter_(-1, top.indices, top.values)


def zero_padding(features: Features, mask: Tensor) -> Features:
    """``features`` with every token-level tensor zeroed at padded positions (what a cache returns there)."""
    keep = mask.bool()

    def zero(t: Tensor) -> Tensor:
        return t * keep.view(*keep.shape, *([1] * (t.dim() - 2))).to(t.dtype)

    return Features(
        logits=zero(features.logits) if features.logits.dim() == 3 else features.logits,
        hidden_states=tuple(zero(h) for h in features.hidden_states) if features.hidden_states is not None else None,
        queries={k: zero(v) for k, v in features.queries.items()},
        keys={k: zero(v) for k, v in features.keys.items()},
        values={k: zero(v) for k, v in features.values.items()},
        attention_mask=features.attention_mask,
        num_heads=features.num_heads,
    )


def _record_dtype(fields: list[Field]) -> np.dtype:
    # Widest fields first and aligned records, so every field of every record is naturally aligned.
    ordered = sorted(fields, key=lambda f: -np.dtype(_NUMPY[f.dtype]).itemsize)
    return np.dtype([(f.name, _NUMPY[f.dtype], f.shape) for f in ordered], align=True)


def _to_numpy(value: Tensor, field: Field) -> np.ndarray:
    stored = value.detach().to(_TORCH[field.dtype])
    if stored.is_floating_point() and not torch.isfinite(stored).all() and torch.isfinite(value).all():
        raise ValueError(
            f"A teacher {field.name!r} value does not fit the cache's storage dtype {field.dtype} "
            f"(largest magnitude {value.abs().max().item():.4g}); set the cache's dtype to bfloat16 or float32."
        )
    if field.dtype == "bfloat16":
        stored = stored.view(torch.int16)
    return stored.cpu().numpy()


def _from_numpy(array: np.ndarray, field: Field) -> Tensor:
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    return tensor.view(torch.bfloat16) if field.dtype == "bfloat16" else tensor
