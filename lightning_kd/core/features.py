"""What one forward pass captured, and how to capture only that.

Methods declare a :class:`FeatureRequest`; :func:`capture` runs the model with hidden states
switched on only when asked and forward hooks only on the attention projections of the layers
asked for. Pre-softmax attention scores and probabilities are rebuilt from the hooked Q and K:
HF returns probabilities *after* dropout (wrong for a training student) and never returns scores,
and SDPA kernels return neither.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

# Attribute names of the Q/K/V projections in the HF encoders we support.
_PROJECTION_NAMES = (("query", "key", "value"), ("q_lin", "k_lin", "v_lin"), ("q_proj", "k_proj", "v_proj"))
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
    """

    hidden_states: bool = False
    qkv_layers: frozenset[int] = frozenset()
    score_layers: frozenset[int] = frozenset()
    prob_layers: frozenset[int] = frozenset()

    def merge(self, other: "FeatureRequest") -> "FeatureRequest":
        """The union of two requests (used when methods are combined)."""
        return FeatureRequest(
            hidden_states=self.hidden_states or other.hidden_states,
            qkv_layers=self.qkv_layers | other.qkv_layers,
            score_layers=self.score_layers | other.score_layers,
            prob_layers=self.prob_layers | other.prob_layers,
        )

    @property
    def hooked_layers(self) -> frozenset[int]:
        return self.qkv_layers | self.score_layers | self.prob_layers


@dataclass
class Features:
    """Tensors captured from one forward pass. Teacher tensors are upcast to float32."""

    logits: Tensor
    loss: Tensor | None = None
    hidden_states: tuple[Tensor, ...] | None = None
    queries: dict[int, Tensor] = field(default_factory=dict)
    keys: dict[int, Tensor] = field(default_factory=dict)
    values: dict[int, Tensor] = field(default_factory=dict)
    attention_mask: Tensor | None = None
    num_heads: int = 1

    def to(self, device: torch.device | str) -> "Features":
        """The same features with every tensor on ``device`` (used for teachers placed elsewhere)."""

        def move(value):
            if isinstance(value, Tensor):
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
        """Pre-softmax scores ``Q_h K_hᵀ / √d_h`` of a layer, shape ``(B, h, N, N)``, no mask applied."""
        q, k = self.split_heads(self.queries[layer]), self.split_heads(self.keys[layer])
        return q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])

    def attention_probs(self, layer: int) -> Tensor:
        """Attention probabilities of a layer (padding keys masked out, no dropout), ``(B, h, N, N)``."""
        scores = self.attention_scores(layer)
        if self.attention_mask is not None:
            keep = self.attention_mask[:, None, None, :].bool()
            scores = scores.masked_fill(~keep, torch.finfo(scores.dtype).min)
        return scores.softmax(dim=-1)


def attention_projections(model: nn.Module) -> list[tuple[nn.Module, nn.Module, nn.Module]]:
    """The ``(query, key, value)`` projection modules of each encoder layer, in layer order.

    Raises:
        ValueError: the model has no recognisable self-attention projections.
    """
    found = []
    for module in model.modules():
        for names in _PROJECTION_NAMES:
            if all(isinstance(getattr(module, n, None), nn.Linear) for n in names):
                found.append(tuple(getattr(module, n) for n in names))
                break
    if not found:
        raise ValueError(
            f"{type(model).__name__} has no self-attention projections named query/key/value, q_lin/k_lin/v_lin "
            "or q_proj/k_proj/v_proj; attention-level methods cannot capture its Q/K/V. Use a logit-level method."
        )
    return found


def model_inputs(batch: dict[str, Tensor]) -> dict[str, Tensor]:
    """The keys of a batch that an HF encoder takes as inputs (labels excluded)."""
    return {k: v for k, v in batch.items() if k in MODEL_INPUT_KEYS}


def capture(
    model: nn.Module,
    batch: dict[str, Tensor],
    request: FeatureRequest,
    *,
    with_labels: bool = False,
    upcast: bool = False,
) -> Features:
    """Run ``model`` on ``batch`` and return the requested features.

    Args:
        model: an HF model with a head (sequence classification or masked LM).
        batch: model inputs, plus ``labels`` when ``with_labels``.
        request: what to capture.
        with_labels: pass ``labels`` so the model computes its own task/MLM loss.
        upcast: cast captured floating tensors to float32 (used for low-precision teachers).
    """
    projections = attention_projections(model) if request.hooked_layers else []
    if request.hooked_layers and max(request.hooked_layers) >= len(projections):
        raise ValueError(
            f"A method asked for attention layer {max(request.hooked_layers)} but {type(model).__name__} "
            f"has {len(projections)} layers (0-based indices 0..{len(projections) - 1})."
        )
    store: dict[str, dict[int, Tensor]] = {"q": {}, "k": {}, "v": {}}
    handles = []
    for layer in sorted(request.hooked_layers):
        for slot, module in zip("qkv", projections[layer]):
            def hook(_m, _inp, out, slot=slot, layer=layer):
                store[slot][layer] = out
            handles.append(module.register_forward_hook(hook))
    inputs = model_inputs(batch)
    if with_labels and "labels" in batch:
        inputs["labels"] = batch["labels"]
    try:
        outputs = model(**inputs, output_hidden_states=request.hidden_states, return_dict=True)
    finally:
        for handle in handles:
            handle.remove()

    def cast(t: Tensor) -> Tensor:
        return t.float() if upcast and t.is_floating_point() else t

    hidden = tuple(cast(h) for h in outputs.hidden_states) if request.hidden_states else None
    config = getattr(model, "config", None)
    return Features(
        logits=cast(outputs.logits),
        loss=outputs.loss if with_labels else None,
        hidden_states=hidden,
        queries={k: cast(v) for k, v in store["q"].items()},
        keys={k: cast(v) for k, v in store["k"].items()},
        values={k: cast(v) for k, v in store["v"].items()},
        attention_mask=batch.get("attention_mask"),
        num_heads=getattr(config, "num_attention_heads", None) or getattr(config, "n_heads", 1),
    )
