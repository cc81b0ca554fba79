"""Recording what a model's attention really computes, one entry per attention *call*.

Every model family we read attention from sends its attention through transformers' attention
interface: each attention module looks up ``ALL_ATTENTION_FUNCTIONS.get_interface(...)`` and calls
the returned kernel with the query, key and value states *as the kernel sees them* — after rotary
position embeddings, before grouped key/value heads are repeated — plus the mask the model built
(padding, causal, sliding window) and the scale. :func:`recording` wraps that lookup for the
duration of one forward pass: the kernel the model configured still runs unchanged (eager, SDPA,
flash), and a :class:`Recorder` keeps the inputs of the calls a method asked for.

Recording per call rather than per module is what makes shared-layer models right: ALBERT applies
one layer module ``L`` times, and call ``i`` is its ``i``-th application.

Families whose attention does not go through the interface (DeBERTa's disentangled attention,
MPNet's relative position bias, …) make no call at all; :func:`attention_layout` finds that out
with a four-token probe forward, so methods can refuse them at construction.

The wrapper shadows ``get_interface`` on the shared ``ALL_ATTENTION_FUNCTIONS`` object (installed on
the first recording; without an active recording it returns the kernel unchanged); it is the one place lightning_kd reaches into transformers' attention
dispatch (tested against the pinned transformers version in ``tests/core/test_attention_capture.py``).
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

# Kernel keyword arguments that change the attention maths in ways the rebuilt probabilities leave
# out; a call carrying one of them is refused rather than silently misread.
_UNSUPPORTED_KWARGS = {"softcap": "logit soft-capping", "s_aux": "attention sinks"}


@dataclass
class AttentionCall:
    """The inputs of one attention kernel call, with keys and values repeated to the query heads.

    Attributes:
        queries: ``(B, h, N, d_h)`` query states as the kernel received them (rotary applied).
        keys: ``(B, h, N, d_h)`` key states, grouped heads repeated as the model's eager kernel does.
        values: ``(B, h, N, d_h)`` value states, repeated likewise.
        allowed: ``(B, 1, N, N)`` boolean mask of the (query, key) pairs the model lets attend, or
            ``None`` when it lets every query attend every key.
        scaling: the factor the scores ``Q Kᵀ`` are multiplied by.
        causal: whether the model masks keys after the query (read from the module).
    """

    queries: Tensor
    keys: Tensor
    values: Tensor
    allowed: Tensor | None
    scaling: float
    causal: bool


@dataclass
class Recorder:
    """Collects the attention calls of one forward pass.

    Args:
        keep: call indices whose tensors are kept (the others are only counted).
    """

    keep: frozenset[int] = frozenset()
    calls: dict[int, AttentionCall] = field(default_factory=dict)
    causal: list[bool] = field(default_factory=list)
    standard_scale: list[bool] = field(default_factory=list)
    count: int = 0

    def record(self, module: nn.Module, query: Tensor, key: Tensor, value: Tensor, mask, kwargs: dict) -> None:
        index = self.count
        self.count += 1
        causal = bool(getattr(module, "is_causal", False))
        scaling = kwargs.get("scaling")
        scaling = float(scaling) if scaling is not None else query.shape[-1] ** -0.5
        self.causal.append(causal)
        self.standard_scale.append(abs(scaling - query.shape[-1] ** -0.5) < 1e-12)
        if index not in self.keep:
            return
        for name, what in _UNSUPPORTED_KWARGS.items():
            if kwargs.get(name) is not None:
                raise ValueError(
                    f"{type(module).__name__} uses {what}, which lightning_kd's attention terms do not model; "
                    "use hidden-state or logit methods with this model."
                )
        groups = query.shape[1] // key.shape[1]
        self.calls[index] = AttentionCall(
            queries=query,
            keys=key.repeat_interleave(groups, dim=1) if groups > 1 else key,
            values=value.repeat_interleave(groups, dim=1) if groups > 1 else value,
            allowed=_allowed_pairs(mask, query.shape[-2], key.shape[-2], causal, kwargs.get("sliding_window"), query.device),
            scaling=scaling,
            causal=causal,
        )


def _allowed_pairs(mask, queries: int, keys: int, causal: bool, window, device) -> Tensor | None:
    """The boolean (query, key) mask a kernel applied, from whatever form the model passed it in."""
    if isinstance(mask, Tensor):
        if mask.dtype == torch.bool:
            return mask
        # An additive float mask: 0 where allowed, the dtype's minimum (or -inf) where not.
        allowed = mask > torch.finfo(mask.dtype).min / 2
        if mask.masked_fill(~allowed, 0).abs().max() > 0:
            raise ValueError(
                "This model adds position biases to its attention scores through the mask (e.g. ALiBi); "
                "lightning_kd's attention terms do not model them. Use hidden-state or logit methods."
            )
        return allowed
    if mask is not None:
        raise ValueError(f"Unsupported attention mask type {type(mask).__name__}; load the model with attn_implementation='eager' or 'sdpa'.")
    if window is not None and keys > window:
        raise ValueError(
            "The attention kernel applies a sliding window without a mask tensor (flash attention); load the model "
            "with attn_implementation='eager' or 'sdpa' so lightning_kd can read the window."
        )
    if not causal:
        return None
    return torch.ones(queries, keys, dtype=torch.bool, device=device).tril(keys - queries)[None, None]


_state = threading.local()


def _recording_get_interface(original):
    def get_interface(attn_implementation, default):
        kernel = original(attn_implementation, default)
        recorder: Recorder | None = getattr(_state, "recorder", None)
        if recorder is None:
            return kernel

        def recorded(module, query, key, value, attention_mask, *args, **kwargs):
            recorder.record(module, query, key, value, attention_mask, kwargs)
            return kernel(module, query, key, value, attention_mask, *args, **kwargs)

        return recorded

    return get_interface


def _install() -> None:
    """Wrap ``ALL_ATTENTION_FUNCTIONS.get_interface`` once (an instance attribute shadowing the method).

    It stays installed: outside a recording it returns exactly the kernel transformers chose, and a
    thread-local recorder keeps recordings of different threads apart.
    """
    if "get_interface" not in vars(ALL_ATTENTION_FUNCTIONS):
        original = type(ALL_ATTENTION_FUNCTIONS).get_interface.__get__(ALL_ATTENTION_FUNCTIONS)
        ALL_ATTENTION_FUNCTIONS.get_interface = _recording_get_interface(original)


@contextmanager
def recording(keep: frozenset[int] = frozenset()) -> Iterator[Recorder]:
    """Record the attention calls made in this thread while the block runs (nesting is refused)."""
    _install()
    if getattr(_state, "recorder", None) is not None:
        raise RuntimeError("An attention recording is already active in this thread; models are captured one at a time.")
    recorder = Recorder(keep=frozenset(keep))
    _state.recorder = recorder
    try:
        yield recorder
    finally:
        _state.recorder = None


@dataclass(frozen=True)
class AttentionLayout:
    """What a model's attention looks like, from a probe forward.

    Attributes:
        calls: attention calls per forward (layer applications; ALBERT counts its shared layer once per use).
        causal: per call, whether keys after the query are masked.
        sliding: per call, the sliding window the config declares for that layer (``None``: full attention).
        standard_scale: per call, whether scores are scaled by ``d_h^-½`` (GPT-2 can scale by layer).
    """

    calls: int
    causal: tuple[bool, ...]
    sliding: tuple[int | None, ...]
    standard_scale: tuple[bool, ...]

    def plain(self, call: int) -> bool:
        """Whether call ``call`` is bidirectional, full and ``d_h^-½``-scaled: padding is then its only mask."""
        return not self.causal[call] and self.sliding[call] is None and self.standard_scale[call]

    def kind(self, call: int) -> tuple[bool, int | None]:
        """``(causal, sliding window)`` of one call: attention terms only compare calls of one kind."""
        return self.causal[call], self.sliding[call]


# Probed once per model object (and again if its config object is replaced).
_layouts: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def attention_layout(model: nn.Module) -> AttentionLayout:
    """Probe ``model`` with a four-token forward and describe its attention calls (cached per model).

    A model whose attention bypasses transformers' attention interface reports ``calls == 0``.
    """
    cached = _layouts.get(model)
    if cached is not None and cached[0] is model.config:
        return cached[1]
    config = model.config
    ids = torch.arange(4, dtype=torch.long).add(1).clamp_max(config.vocab_size - 1)[None]
    device = next(model.parameters()).device
    with torch.no_grad(), recording() as recorder:
        model(input_ids=ids.to(device), attention_mask=torch.ones_like(ids, device=device))
    layout = AttentionLayout(
        recorder.count, tuple(recorder.causal), tuple(_declared_windows(config, recorder.count)), tuple(recorder.standard_scale)
    )
    _layouts[model] = (model.config, layout)
    return layout


def _declared_windows(config, calls: int) -> list[int | None]:
    """Per call, the sliding window a config declares (``layer_types`` + ``sliding_window``)."""
    types = getattr(config, "layer_types", None)
    window = getattr(config, "sliding_window", None)
    if not types or len(types) != calls:
        return [None] * calls
    return [window if kind == "sliding_attention" else None for kind in types]


def family_name(model: nn.Module) -> str:
    """The model family as users know it (``model_type``, e.g. ``deberta-v2``), for messages."""
    return getattr(model.config, "model_type", None) or type(model).__name__


def check_attention_layers(model: nn.Module, layers: frozenset[int], role: str, method: str) -> AttentionLayout:
    """Refuse (``ValueError``) a model whose attention ``method`` cannot read, before any training.

    Args:
        model: the student or a teacher.
        layers: 0-based attention calls the method reads.
        role: ``"student"`` or ``"teacher 0"``… for the message.
        method: the method's name for the message.
    """
    layout = attention_layout(model)
    family = family_name(model)
    if layout.calls == 0:
        raise ValueError(
            f"{method} reads attention, but the {role} ({family}, {type(model).__name__}) computes its attention "
            "outside transformers' attention interface (e.g. DeBERTa's disentangled attention, MPNet's relative "
            "position bias), so its attention cannot be read exactly. Use a method without attention terms on it "
            "(KD, PKD, DistilBERT, CKD, MGSKD, …; see the README's support table)."
        )
    depth = model.config.num_hidden_layers
    if layout.calls != depth:
        raise ValueError(
            f"The {role} ({family}) made {layout.calls} attention calls for {depth} layers; lightning_kd maps one call "
            f"to one layer, so {method}'s attention terms cannot be read from it."
        )
    if layers and max(layers) >= layout.calls:
        raise ValueError(
            f"{method} asked for attention layer {max(layers)} of the {role}, which has {layout.calls} layers "
            f"(0-based 0..{layout.calls - 1})."
        )
    return layout
