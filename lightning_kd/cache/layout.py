"""What one cached example holds, and how batches of teacher features become records and back.

Only real tokens are stored (positions where ``attention_mask`` is 1, in position order), so a
record does not depend on how much padding its batch had. Per token: the input id (to recognise
the row later), the requested hidden states ``H_0 … H_L``, Q/K of every layer whose scores,
probabilities or Q/K/V are requested and V of the Q/K/V layers, and — when the teacher's request
asks for every logit row — vocabulary-level logits (MLM): their ``top_k`` largest values with their
ids, or all of them with ``top_k=None``. Per example: sequence-level (classification) logits.

Compact heads (a request naming some logit rows, e.g. the labelled ones) store vocabulary-level
logits per *logit row* instead, in a third record stream: the row's index among its example's real
tokens, then its top-k (or all) logits. A masked-LM cache thus holds ~15 % of the rows a per-token
store would. Records are numpy structured arrays, so a shard file is a flat array of fixed-size
records that :mod:`lightning_kd.cache.shards` memory-maps.

A causal LM's top-k (:attr:`RecordLayout.tail_temperature`) stores instead the teacher's top-k
log-probabilities at the soft term's temperature, their ids and the log of the remaining mass (a
``tail`` field); they come back as a :class:`~lightning_kd.losses.topk_teacher.TopKTeacher`, which the
prediction loss's divergences read over ``k + 1`` outcomes, never as ``(R, V)`` logits.

On the way back, tokens are scattered into ``(B, N, …)`` tensors with zeros at padded positions,
and top-k logits become ``(B, N, V)`` (or compact ``(R, V)``) tensors holding the stored values and
:data:`TOPK_FILL` elsewhere, i.e. a softmax over the ``k`` kept logits (renormalised top-k). Compact
rows come back only where the batch's own row mask says, which is checked against the stored rows.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from lightning_kd.core.features import FeatureRequest, Features
from lightning_kd.core.fused_head import with_logits
from lightning_kd.core.logit_rows import row_mask
from lightning_kd.losses.topk_teacher import TopKTeacher

StorageDtype = Literal["float16", "bfloat16", "float32"]
Level = Literal["token", "example", "row"]

#: Logit given to the ids outside the stored top-k. Finite (``-inf`` makes ``0·log 0`` NaN in a KL),
#: and so low that ``exp`` of it underflows to exactly 0 at any sensible temperature.
TOPK_FILL = -1.0e9

_TORCH = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32, "int32": torch.int32}
# numpy has no bfloat16: its bits are stored as int16 and viewed back on read.
_NUMPY = {"float16": np.float16, "bfloat16": np.int16, "float32": np.float32, "int32": np.int32}


@dataclass(frozen=True)
class Field:
    """One stored tensor with its dtype and shape, at one ``level``: ``"token"`` (one record per real
    token), ``"example"`` (one per example) or ``"row"`` (one per compact logit row)."""

    name: str
    level: Level
    dtype: str
    shape: tuple[int, ...]


@dataclass
class EncodedRows:
    """A batch's records: ``tokens`` (all real tokens, example after example), ``examples`` (one per
    example or ``None``), ``counts`` (real tokens per example), and for compact logits ``rows``
    (logit rows, example after example) with ``row_counts`` (logit rows per example)."""

    tokens: np.ndarray
    examples: np.ndarray | None
    counts: np.ndarray
    rows: np.ndarray | None = None
    row_counts: np.ndarray | None = None

    def select(self, rows: list[int]) -> EncodedRows:
        """The records of the batch rows ``rows`` (in that order)."""
        examples = self.examples[rows] if self.examples is not None else None
        logit_rows = _pick(self.rows, self.row_counts, rows) if self.rows is not None else None
        row_counts = self.row_counts[rows] if self.row_counts is not None else None
        return EncodedRows(_pick(self.tokens, self.counts, rows), examples, self.counts[rows], logit_rows, row_counts)


def _pick(records: np.ndarray, counts: np.ndarray, examples: list[int]) -> np.ndarray:
    """The records of ``examples`` from records stored example after example, ``counts`` per example."""
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    return np.concatenate([records[starts[e] : starts[e] + counts[e]] for e in examples]) if examples else records[:0]


class RecordLayout:
    """The stored fields of one teacher cache (see the module docstring).

    Args:
        fields: every stored tensor; ``input_ids`` (per token, int32) must be first, and ``row_token``
            (per logit row, int32: its index among the example's real tokens) first of the row fields.
        num_heads: the teacher's attention heads (decoded features rebuild scores from Q and K with it).
        top_k: vocabulary-level logits kept per token or row, or ``None`` for all.
        vocabulary_size: ``V`` of vocabulary-level logits (``None`` for sequence-level logits).
        compact: vocabulary-level logits are stored per compact logit row (possibly none), not per token.
        tail_temperature: with top-k logits, the ``T`` at which the teacher's top log-probabilities and its
            tail mass are stored (a ``tail`` field; decoded as a
            :class:`~lightning_kd.losses.topk_teacher.TopKTeacher`); ``None``: raw top-k logits, renormalised.
    """

    def __init__(self, fields: list[Field], num_heads: int, top_k: int | None, vocabulary_size: int | None,
                 compact: bool = False, tail_temperature: float | None = None) -> None:
        self.fields, self.num_heads, self.top_k, self.vocabulary_size = fields, num_heads, top_k, vocabulary_size
        self.compact = compact
        self.tail_temperature = tail_temperature if any(f.name == "tail" for f in fields) else None
        self.token_fields = [f for f in fields if f.level == "token"]
        self.example_fields = [f for f in fields if f.level == "example"]
        self.row_fields = [f for f in fields if f.level == "row"]
        self.token_dtype = _record_dtype(self.token_fields)
        self.example_dtype = _record_dtype(self.example_fields) if self.example_fields else None
        self.row_dtype = _record_dtype(self.row_fields) if self.row_fields else None
        self.vocabulary_logits = any(f.name in ("logits", "topk_values") for f in self.token_fields + self.row_fields)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_features(cls, probe: Features, request: FeatureRequest, top_k: int | None, dtype: StorageDtype,
                      tail_temperature: float | None = None) -> RecordLayout:
        """The layout that stores what ``request`` needs, with shapes read from a probe forward's features
        (``tail_temperature``: keep top-k log-probabilities and the tail mass at that ``T``)."""
        probe = with_logits(probe)
        fields = [Field("input_ids", "token", "int32", ())]
        if request.hidden_states:
            states = probe.hidden_states
            fields.append(Field("hidden", "token", dtype, (len(states), states[0].shape[-1])))
        for layer in sorted(request.hooked_layers):
            fields.append(Field(f"q{layer}", "token", dtype, (probe.queries[layer].shape[-1],)))
            fields.append(Field(f"k{layer}", "token", dtype, (probe.keys[layer].shape[-1],)))
        for layer in sorted(request.qkv_layers):
            fields.append(Field(f"v{layer}", "token", dtype, (probe.values[layer].shape[-1],)))
        logits, vocabulary = probe.logits, None
        compact = probe.logit_rows is not None
        if probe.token_level:
            vocabulary = logits.shape[-1]
            level: Level = "row" if compact else "token"
            if compact and request.logit_rows == "none":
                top_k = None  # no row is ever read: nothing stored
            elif top_k is not None and top_k < vocabulary:
                fields += [Field("topk_values", level, "float32", (top_k,)), Field("topk_indices", level, "int32", (top_k,))]
                if tail_temperature is not None:
                    fields.append(Field("tail", level, "float32", ()))
            else:
                fields.append(Field("logits", level, "float32", (vocabulary,)))
                top_k = None
            if compact and request.logit_rows != "none":
                fields.insert(next(i for i, f in enumerate(fields) if f.level == "row"), Field("row_token", "row", "int32", ()))
        else:
            fields.append(Field("logits", "example", "float32", tuple(logits.shape[1:])))
            top_k = None  # sequence-level logits are few; they are always stored in full
        return cls(fields, probe.num_heads, top_k, vocabulary, compact, tail_temperature)

    def describe(self) -> dict[str, Any]:
        """JSON form, stored in the manifest."""
        return {"num_heads": self.num_heads, "top_k": self.top_k, "vocabulary_size": self.vocabulary_size,
                "compact": self.compact, "tail_temperature": self.tail_temperature,
                "fields": [[f.name, f.level, f.dtype, list(f.shape)] for f in self.fields]}

    @classmethod
    def from_description(cls, described: dict[str, Any]) -> RecordLayout:
        fields = [Field(name, level, dtype, tuple(shape)) for name, level, dtype, shape in described["fields"]]
        return cls(fields, described["num_heads"], described["top_k"], described["vocabulary_size"], described["compact"],
                   described.get("tail_temperature"))

    def top_k_of(self, features: Features, mask: Tensor | None = None) -> TopKTeacher:
        """The teacher's top-k log-probabilities and tail at this layout's temperature, per row of its
        compact logits (or head rows), or of its whole logits at the ``(B, N)`` positions of ``mask``."""
        if features.head_rows is not None:
            head_rows = features.head_rows
            return TopKTeacher.of_rows(head_rows.rows, head_rows.head.project, head_rows.head.vocab_size, self.top_k,
                                       self.tail_temperature)
        logits = features.logits if mask is None else features.logits[mask]
        return TopKTeacher.of_logits(logits, self.top_k, self.tail_temperature)

    def tail_view(self, features: Features, batch: dict[str, Tensor]) -> Features:
        """``features`` as this layout gives them back: top ids and tail bucket at the rows it stores."""
        if features.logit_rows is not None:
            return dataclasses.replace(features, logits=None, head_rows=None, logit_topk=self.top_k_of(features))
        mask = real_tokens(batch).to(features.logits.device)
        return dataclasses.replace(features, logits=None, logit_rows=mask, logit_topk=self.top_k_of(features, mask))

    # ------------------------------------------------------------------ features → records
    def encode(self, features: Features, batch: dict[str, Tensor]) -> EncodedRows:
        """Records of every row of ``batch`` from the teacher's (float32) ``features``.

        Raises:
            ValueError: a value overflows the storage dtype (float16 holds at most 65504).
        """
        mask = real_tokens(batch).to(batch["input_ids"].device)
        counts = mask.sum(dim=1).cpu().numpy().astype(np.int64)
        tokens = np.zeros(int(counts.sum()), dtype=self.token_dtype)
        tokens["input_ids"] = batch["input_ids"].to(mask.device)[mask].to(torch.int32).cpu().numpy()
        logit_rows = row_counts = None
        if self.compact:
            logit_rows, row_counts = self._encode_rows(features, mask)
        vocabulary = self._vocabulary_columns(features, mask) if self.vocabulary_logits and not self.compact else {}
        for field in self.token_fields[1:]:
            if field.name == "hidden":
                value = torch.stack(features.hidden_states, dim=2)[mask]
            elif field.name in vocabulary:
                value = vocabulary[field.name]
            else:
                store = {"q": features.queries, "k": features.keys, "v": features.values}[field.name[0]]
                value = store[int(field.name[1:])][mask]
            tokens[field.name] = _to_numpy(value, field)
        examples = None
        if self.example_dtype is not None:
            examples = np.zeros(len(counts), dtype=self.example_dtype)
            examples["logits"] = _to_numpy(features.logits, self.example_fields[0])  # sequence-level: never head rows
        return EncodedRows(tokens, examples, counts, logit_rows, row_counts)

    def _vocabulary_columns(self, features: Features, mask: Tensor | None = None) -> dict[str, Tensor]:
        """The stored vocabulary-level columns of the compact rows (``mask=None``) or of the whole logits at
        ``mask``: ``logits``, or ``topk_values``/``topk_indices`` (raw logits), or with a tail the
        top log-probabilities, their ids and ``tail`` (chunk by chunk from head rows: no ``(R, V)`` tensor)."""
        if self.tail_temperature is not None:
            top = self.top_k_of(features, mask)
            return {"topk_values": top.log_probs, "topk_indices": top.indices, "tail": top.tail}
        logits = with_logits(features).logits
        logits = (logits if mask is None else logits[mask]).float()
        if self.top_k is None:
            return {"logits": logits}
        top = logits.topk(self.top_k, dim=-1)
        return {"topk_values": top.values, "topk_indices": top.indices}

    def _encode_rows(self, features: Features, real: Tensor) -> tuple[np.ndarray | None, np.ndarray]:
        """Row records of compact logits (each row's index among its example's real tokens, then its
        logits) and the rows per example.

        Raises:
            ValueError: a logit row lies at a padded position (the cache stores real tokens only).
        """
        rows = features.logit_rows.to(real.device)
        real = real.to(rows.device)
        if bool((rows & ~real).any()):
            raise ValueError(
                "The teacher's logit rows include padded positions (labels at padding?), which the cache cannot store "
                "(it keeps real tokens only). Check the data's labels, or train without the teacher cache."
            )
        row_counts = rows.sum(dim=1).cpu().numpy().astype(np.int64)
        if self.row_dtype is None:
            return None, row_counts
        records = np.zeros(int(row_counts.sum()), dtype=self.row_dtype)
        records["row_token"] = (real.long().cumsum(dim=1) - 1)[rows].to(torch.int32).cpu().numpy()
        vocabulary = self._vocabulary_columns(features)
        for field in self.row_fields[1:]:
            records[field.name] = _to_numpy(vocabulary[field.name], field)
        return records, row_counts

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
            source = rows.tokens if field.level == "token" else rows.examples
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
        logit_rows = logit_topk = None
        if self.compact:
            logits, logit_rows = self._decode_rows(rows, batch, request, mask, device)
            if isinstance(logits, TopKTeacher):
                logits, logit_topk = None, logits
        elif self.example_dtype is not None:
            logits = column("logits").float()
        elif self.tail_temperature is not None:  # the real tokens' rows, as compact rows
            logits, logit_rows = None, mask
            logit_topk = TopKTeacher(column("topk_indices").long(), column("topk_values").float(), column("tail").float(),
                                     self.tail_temperature, self.vocabulary_size)
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
            logit_rows=logit_rows,
            logit_topk=logit_topk,
        )

    def _decode_rows(self, rows: EncodedRows, batch: dict[str, Tensor], request: FeatureRequest, real: Tensor,
                     device: torch.device) -> tuple[Tensor | TopKTeacher, Tensor]:
        """Compact ``(R, V)`` logits (or a top-k teacher with its tail) at the batch's own logit rows, and
        those ``(B, N)`` rows.

        Raises:
            ValueError: the stored rows are not the batch's (its MLM labels changed since the cache was filled).
        """
        wanted = row_mask(batch, request.logit_rows)
        wanted = torch.ones_like(real) if wanted is None else wanted.to(device).bool()
        size, length = real.shape
        stored = torch.zeros(size * length, dtype=torch.bool, device=device)
        if rows.rows is not None and len(rows.rows):
            where = real.reshape(-1).nonzero().squeeze(1)  # flat positions of the real tokens, example after example
            token_starts = torch.as_tensor(np.concatenate([[0], np.cumsum(rows.counts)[:-1]]), device=device)
            example = torch.repeat_interleave(torch.arange(size, device=device), torch.as_tensor(rows.row_counts, device=device))
            token = torch.as_tensor(rows.rows["row_token"].astype(np.int64), device=device)
            stored[where[token_starts[example] + token]] = True
        stored = stored.view(size, length)
        if not torch.equal(stored, wanted):
            bad = int((stored != wanted).any(dim=1).nonzero()[0, 0])
            raise ValueError(
                f"cached teacher logit rows for batch row {bad} are not the positions this batch's labels mark: the data's "
                "MLM masks changed since the cache was filled. Delete the teacher cache directory (or point its path "
                "elsewhere); for pretraining, set data.init_args.masking_seed so masks are static."
            )
        count = int(wanted.sum())
        if self.row_dtype is None:  # "none" rows: nothing is stored or read
            return torch.zeros(count, self.vocabulary_size, device=device), wanted

        def column(name: str) -> Tensor:
            field = next(f for f in self.row_fields if f.name == name)
            return _from_numpy(rows.rows[name], field).to(device, non_blocking=True)

        if self.tail_temperature is not None:
            return TopKTeacher(column("topk_indices").long(), column("topk_values").float(), column("tail").float(),
                               self.tail_temperature, self.vocabulary_size), wanted
        if self.top_k is not None:
            logits = torch.full((count, self.vocabulary_size), TOPK_FILL, device=device)
            logits.scatter_(1, column("topk_indices").long(), column("topk_values").float())
        else:
            logits = column("logits").float()
        return logits, wanted

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

    logits = features.logits
    if logits is None:  # head rows or a top-k teacher: rows at real tokens only (the cache refuses others)
        pass
    elif features.logit_rows is not None:  # compact rows: zero those at padded positions
        logits = logits * keep.to(logits.device)[features.logit_rows].unsqueeze(-1).to(logits.dtype)
    elif logits.dim() == 3:
        logits = zero(logits)
    return Features(
        logits=logits,
        hidden_states=tuple(zero(h) for h in features.hidden_states) if features.hidden_states is not None else None,
        queries={k: zero(v) for k, v in features.queries.items()},
        keys={k: zero(v) for k, v in features.keys.items()},
        values={k: zero(v) for k, v in features.values.items()},
        attention_mask=features.attention_mask,
        num_heads=features.num_heads,
        logit_rows=features.logit_rows,
        head_rows=features.head_rows,
        logit_topk=features.logit_topk,
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
