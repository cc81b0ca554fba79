"""What one forward pass captured, and how to capture only that.

Methods declare a :class:`FeatureRequest`; :func:`capture` runs the model with hidden states
switched on only when asked and records the attention calls of the layers asked for (see
:mod:`lightning_kd.core.attention_capture`): the query, key and value states the attention kernel
received (rotary embeddings applied, grouped key/value heads repeated), the mask it applied
(padding, causal, sliding window) and its scale. Pre-softmax scores and probabilities are rebuilt
from those: HF returns probabilities *after* dropout (wrong for a training student) and never
returns scores, and SDPA kernels return neither.

Token-level (MLM, causal-LM) logits are computed only at the rows the request names
(:mod:`lightning_kd.core.logit_rows`): the model's own head runs on those rows
(:mod:`lightning_kd.core.compact_head`) and :class:`Features` carries them compact, ``(R, V)``, with
their ``(B, N)`` row mask. ``logit_rows="all"`` (the default) is the model's plain forward.

The batch is a *prepared* one (:meth:`~lightning_kd.stages.base.Stage.prepare`): its labels pair with
the logits at their own position. The model's stage (told by its class) decides whether its own
loss may read them; a causal LM's never does (it would shift them again), so its loss is computed
from the logits.
"""

from __future__ import annotations

import dataclasses
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from lightning_kd.core.attention_capture import recording
from lightning_kd.core.compact_head import HeadCall, check_compact_output, compact_head, labels_taken
from lightning_kd.core.fused_head import HeadRows, linear_head, rows_entering
from lightning_kd.core.logit_rows import LogitRows, row_mask, rows_at, widest
from lightning_kd.losses.topk_teacher import TopKTeacher
from lightning_kd.stages import stage_of_class
from lightning_kd.stages.labelled_rows import hard_labels, marks_rows

MODEL_INPUT_KEYS = ("input_ids", "attention_mask", "token_type_ids", "position_ids", "inputs_embeds")


@dataclass(frozen=True)
class FeatureRequest:
    """The tensors a method needs from one model's forward pass.

    Attributes:
        hidden_states: all hidden states ``H_0 … H_L`` (``H_0`` = embedding output).
        qkv_layers: 0-based layers whose Q/K/V projection outputs (``(B, N, d)``, bias included,
            before the head split) are captured.
        score_layers: layers whose pre-softmax scores ``QKᵀ/√d_h`` (``(B, h, N, N)``, unmasked) are needed.
        prob_layers: layers whose attention probabilities (masked softmax of the scores, before
            dropout) are needed.
        logit_rows: the rows of a token-level (MLM) head's logits to compute (see
            :data:`~lightning_kd.core.logit_rows.LogitRows`): ``"all"`` (default: the model's own forward),
            ``"tokens"``, ``"labelled"`` or ``"none"``. Sequence-level logits are always whole.
            :class:`~lightning_kd.core.module.DistillationModule` sets it from what its losses read.
        head_rows: at those rows, keep the hidden rows entering a decoder's LM head instead of projecting
            them (:mod:`lightning_kd.core.fused_head`): ``Features.logits`` is then ``None`` and the
            prediction terms project the rows chunk by chunk. Models whose head is not a verified linear
            head compute their logits as usual.
    """

    hidden_states: bool = False
    qkv_layers: frozenset[int] = frozenset()
    score_layers: frozenset[int] = frozenset()
    prob_layers: frozenset[int] = frozenset()
    logit_rows: LogitRows = "all"
    head_rows: bool = False

    def merge(self, other: "FeatureRequest") -> "FeatureRequest":
        """The union of two requests (used when methods are combined)."""
        return FeatureRequest(
            hidden_states=self.hidden_states or other.hidden_states,
            qkv_layers=self.qkv_layers | other.qkv_layers,
            score_layers=self.score_layers | other.score_layers,
            prob_layers=self.prob_layers | other.prob_layers,
            logit_rows=widest(self.logit_rows, other.logit_rows),
            head_rows=self.head_rows and other.head_rows,  # a request that reads logits needs them
        )

    @property
    def hooked_layers(self) -> frozenset[int]:
        return self.qkv_layers | self.score_layers | self.prob_layers


@dataclass
class Features:
    """Tensors captured from one forward pass. Teacher tensors are upcast to float32.

    Attributes:
        logits: the head's logits: ``(B, C)`` sequence-level, ``(B, N, V)`` token-level, or compact
            ``(R, V)`` token-level rows at the positions of ``logit_rows``; ``None`` when ``head_rows``
            holds what would have made them.
        loss: the model's own task/MLM loss when captured with labels (from the compact rows when compact).
        logit_rows: ``(B, N)`` bool positions of compact ``logits`` (row-major order); ``None`` when whole.
        queries / keys / values: per captured layer, ``(B, N, h·d_h)`` states as the attention
            kernel received them (heads side by side; keys and values repeated to the query heads).
        scalings: per captured layer, the factor the model multiplies ``Q Kᵀ`` by (default ``d_h^-½``).
        key_masks: per captured layer whose mask is more than key padding (causal, sliding window),
            the ``(B, 1, N, N)`` boolean (query, key) pairs the model lets attend.
        head_rows: the rows that entered the LM head at ``logit_rows`` and the head, instead of logits
            (fused heads; :class:`~lightning_kd.core.fused_head.HeadRows`).
        logit_topk: a teacher's distribution at ``logit_rows`` as its top ids and one tail bucket, instead
            of logits (a causal-LM top-k teacher cache; :class:`~lightning_kd.losses.topk_teacher.TopKTeacher`).
    """

    logits: Tensor | None
    loss: Tensor | None = None
    hidden_states: tuple[Tensor, ...] | None = None
    queries: dict[int, Tensor] = field(default_factory=dict)
    keys: dict[int, Tensor] = field(default_factory=dict)
    values: dict[int, Tensor] = field(default_factory=dict)
    scalings: dict[int, float] = field(default_factory=dict)
    key_masks: dict[int, Tensor] = field(default_factory=dict)
    attention_mask: Tensor | None = None
    num_heads: int = 1
    logit_rows: Tensor | None = None
    head_rows: HeadRows | None = None
    logit_topk: TopKTeacher | None = None

    @property
    def token_level(self) -> bool:
        """Whether the logits are per position (an MLM head), whole or compact."""
        return self.logit_rows is not None or self.logits.dim() == 3

    def _logits(self) -> Tensor:
        if self.logits is None and self.logit_topk is not None:
            raise RuntimeError(
                "These teacher features come from a top-k teacher cache (top ids and a tail bucket), not logits: only "
                "the prediction loss's divergences read them. Use top_k: null in the cache to store whole logits."
            )
        if self.logits is None:
            raise RuntimeError(
                "These features hold the rows entering the LM head (fused heads), not logits: only the prediction "
                "terms read them. A method whose own terms read logits keeps prediction_only_logits = False; or set "
                "`method.compact_heads = False`."
            )
        return self.logits

    def logits_at(self, mask: Tensor | None) -> Tensor:
        """``(R', V)`` token logits at the ``(B, N)`` positions of ``mask`` (``None``: every position),
        in row-major order, whole or compact alike (see :func:`~lightning_kd.core.logit_rows.rows_at`)."""
        return rows_at(self._logits(), self.logit_rows, mask)

    def to(self, device: torch.device | str) -> "Features":
        """The same features with every tensor on ``device`` (used for teachers placed elsewhere)."""

        def move(value):
            if isinstance(value, (Tensor, TopKTeacher)):
                return value.to(device, non_blocking=True)
            if isinstance(value, tuple):
                return tuple(move(v) for v in value)
            if isinstance(value, dict):
                return {k: move(v) for k, v in value.items()}
            return value

        return dataclasses.replace(self, **{f.name: move(getattr(self, f.name)) for f in dataclasses.fields(self)})

    def split_heads(self, tensor: Tensor, num_heads: int | None = None) -> Tensor:
        """``(B, N, d)`` → ``(B, h, N, d/h)``."""
        heads = num_heads or self.num_heads
        batch, length, width = tensor.shape
        return tensor.view(batch, length, heads, width // heads).transpose(1, 2)

    def attention_scores(self, layer: int) -> Tensor:
        """Pre-softmax scores ``Q_h K_hᵀ · scale`` of a layer, shape ``(B, h, N, N)``, no mask applied."""
        q, k = self.split_heads(self.queries[layer]), self.split_heads(self.keys[layer])
        return q @ k.transpose(-1, -2) * self.scaling(layer)

    def scaling(self, layer: int) -> float:
        """The factor layer ``layer`` multiplies ``Q Kᵀ`` by."""
        return self.scalings.get(layer) or (self.queries[layer].shape[-1] // self.num_heads) ** -0.5

    def key_mask(self, layer: int) -> Tensor | None:
        """Boolean mask of the keys each query of ``layer`` attends: ``(B, 1, N, N)`` where the model
        masks more than padding, else ``(B, 1, 1, N)`` from the padding mask, or ``None``."""
        if layer in self.key_masks:
            return self.key_masks[layer]
        return self.attention_mask.bool()[:, None, None, :] if self.attention_mask is not None else None

    def attention_probs(self, layer: int) -> Tensor:
        """Attention probabilities of a layer (the model's mask applied, no dropout), ``(B, h, N, N)``."""
        scores = self.attention_scores(layer)
        keep = self.key_mask(layer)
        if keep is not None:
            scores = scores.masked_fill(~keep, torch.finfo(scores.dtype).min)
        return scores.softmax(dim=-1)


def model_inputs(batch: dict[str, Tensor]) -> dict[str, Tensor]:
    """The keys of a batch that an HF model takes as inputs (labels excluded).

    With ``position_ids``, an attention mask without padding is left out: it says nothing, and
    transformers builds the block-diagonal causal mask of packed documents (position ids restarting
    at each document) only when the mask is absent.
    """
    inputs = {k: v for k, v in batch.items() if k in MODEL_INPUT_KEYS}
    mask = inputs.get("attention_mask")
    if "position_ids" in inputs and mask is not None and bool(mask.bool().all()):
        del inputs["attention_mask"]
    return inputs


def capture(
    model: nn.Module,
    batch: dict[str, Tensor],
    request: FeatureRequest,
    *,
    with_labels: bool = False,
    upcast: bool = False,
    rows: Tensor | None = None,
) -> Features:
    """Run ``model`` on ``batch`` and return the requested features.

    Args:
        model: an HF model with a head (sequence classification, masked LM or causal LM).
        batch: a prepared batch: model inputs, plus ``labels`` (aligned with the logits) when ``with_labels``.
        request: what to capture.
        with_labels: compute the model's task/MLM/next-token loss on ``labels`` (by the model's own
            forward where its stage allows, else from the logits). A batch that marks its labelled rows
            (:mod:`lightning_kd.stages.labelled_rows`) scores those rows only, from the logits.
        upcast: cast captured floating tensors to float32 (used for low-precision teachers).
        rows: the ``(B, N)`` positions of token logits to compute, when they are not those
            ``request.logit_rows`` names in ``batch`` (a student whose hard labels differ from the
            batch the losses read; see :meth:`~lightning_kd.core.module.DistillationModule.run_pass`).
            Models without a vocabulary head lightning_kd knows (classifiers, other families) return whole logits.
    """
    layers = request.hooked_layers
    inputs = model_inputs(batch)
    # Unlabelled transfer rows of a token-level batch keep their labels for the terms but none for the hard loss.
    marked = with_labels and marks_rows(batch)
    if with_labels and "labels" in batch:
        inputs["labels"] = hard_labels(batch)
    if rows is None:
        rows = row_mask(batch, request.logit_rows)
    stage = stage_of_class(type(model).__name__)
    entry = stage.head_entry(model) if stage is not None and rows is not None else None
    # Fused heads: the rows entering the vocabulary projection are kept and it does not project. A decoder's
    # head entry is that projection; an MLM head's is its transform, which runs on the compact rows first.
    projection = model.get_output_embeddings() if request.head_rows and entry is not None else None
    fused = linear_head(model) if isinstance(projection, nn.Module) else None
    # Labels reach the model's own loss only where its stage allows it for these labels (not a batch with
    # unlabelled rows, whose all-unlabelled case HF's loss makes NaN) and the logits are whole.
    take_labels = "labels" in inputs and (entry is not None or (
        stage is not None and (marked or not stage.labels_reach_model(inputs["labels"]))))
    seen = HeadCall()
    if stage is not None:
        inputs.update(stage.forward_options)
    with recording(layers) as recorder:
        if entry is None:
            with labels_taken(model, seen) if take_labels else nullcontext():
                outputs = model(**inputs, output_hidden_states=request.hidden_states, return_dict=True)
            rows = None
        else:
            with compact_head(model, entry, rows) as seen, rows_entering(projection) if fused is not None else nullcontext() as entered:
                outputs = model(**inputs, output_hidden_states=request.hidden_states, return_dict=True)
            check_compact_output(model, seen, outputs.logits, int(rows.sum()))
    if layers and max(layers) >= recorder.count:
        raise ValueError(
            f"A method asked for attention layer {max(layers)} but {type(model).__name__} has {recorder.count} layers "
            f"that call attention (0-based indices 0..{recorder.count - 1})."
        )

    def cast(t: Tensor) -> Tensor:
        return t.float() if upcast and t.is_floating_point() else t

    hidden = tuple(cast(h) for h in outputs.hidden_states) if request.hidden_states else None
    padding = batch.get("attention_mask")
    calls = recorder.calls
    config = getattr(model, "config", None)
    loss = outputs.loss if with_labels else None
    head_rows = None
    if fused is not None:
        labels = seen.labels[rows.to(seen.labels.device)] if take_labels and seen.labels is not None else None
        head_rows = HeadRows(cast(entered[0]), fused, labels)  # the loss: from the rows, on first use
    elif take_labels and seen.labels is not None:
        score = stage.labelled_rows_loss if marked else stage.loss_from_logits
        loss = score(outputs.logits, seen.labels, rows)
    return Features(
        logits=None if head_rows is not None else cast(outputs.logits),
        loss=loss,
        hidden_states=hidden,
        queries={i: cast(_merge_heads(c.queries)) for i, c in calls.items()},
        keys={i: cast(_merge_heads(c.keys)) for i, c in calls.items()},
        values={i: cast(_merge_heads(c.values)) for i, c in calls.items() if i in request.qkv_layers},
        scalings={i: c.scaling for i, c in calls.items()},
        key_masks={i: m for i, c in calls.items() if (m := _structural_mask(c.allowed, padding)) is not None},
        attention_mask=padding,
        num_heads=next(iter(calls.values())).queries.shape[1] if calls else _config_heads(config),
        logit_rows=rows,
        head_rows=head_rows,
    )


def _merge_heads(states: Tensor) -> Tensor:
    """``(B, h, N, d_h)`` → ``(B, N, h·d_h)``: heads side by side, as the output projection reads them."""
    batch, heads, length, width = states.shape
    return states.transpose(1, 2).reshape(batch, length, heads * width)


def _structural_mask(allowed: Tensor | None, padding: Tensor | None) -> Tensor | None:
    """The ``(B, 1, N, N)`` pairs a model lets attend when it masks more than padded keys (causal,
    sliding window), padded keys included; ``None`` when the padding mask says it all."""
    if allowed is None:
        return None
    allowed = allowed.bool()
    if padding is None:
        return None if bool(allowed.all()) else allowed
    keys = padding.bool()[:, None, None, :]
    full = (allowed & keys).expand(keys.shape[0], 1, allowed.shape[-2], keys.shape[-1])
    return None if torch.equal(full, keys.expand_as(full)) else full


def _config_heads(config) -> int:
    return getattr(config, "num_attention_heads", None) or getattr(config, "n_heads", None) or 1


def shared_key_mask(student: Features, student_layer: int, teacher: Features, teacher_layer: int) -> Tensor | None:
    """The model-applied key mask that a student and a teacher attention layer share, for the loss.

    ``None`` when both mask padded keys only (the losses then use the padding mask). Attention terms
    compare distributions over the same keys, so a pair whose masks differ (a causal layer against a
    bidirectional one, different sliding windows) is an error naming the layers.
    """
    ours, theirs = student.key_masks.get(student_layer), teacher.key_masks.get(teacher_layer)
    if ours is None and theirs is None:
        return None
    if ours is None or theirs is None or ours.shape != theirs.shape or not torch.equal(ours, theirs):
        raise ValueError(
            f"Student attention layer {student_layer} and teacher layer {teacher_layer} attend different keys "
            "(causal vs bidirectional attention, or different sliding windows); attention terms compare the two "
            "distributions key by key. Pair layers of the same attention type (layer_map / student_layers)."
        )
    return ours
