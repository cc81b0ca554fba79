"""A frozen teacher block standing at one student position of a Theseus hybrid.

The student's encoder loop calls whatever sits in its layer list exactly as it calls its own layer:
positional and keyword arguments of the family's layer signature (attention masks of any form,
rotary ``(cos, sin)`` tables, relative-position inputs, ``position_ids``, a cache, …), and it reads
the result as that layer returns it (a tensor for BERT, GPT-2, Llama, …; a tuple for DeBERTa-v2
and MPNet). :class:`TeacherBlock` forwards every argument to each teacher layer of the block in
turn and returns the last layer's output in the same form. Two arguments are adapted:

* floating tensors are cast to the teacher's dtype (a bf16/fp16 teacher), additive masks clamped
  to that dtype's range first so that ``finfo(float32).min`` does not become ``-inf``; the output
  goes back to the student's dtype;
* a key/value cache is not handed on: teacher layers carry the teacher's ``layer_idx`` and would
  write into the student's cache slots (two layers of one block, or a student layer further on,
  would then read each other's keys). A training forward starts from an empty cache and reads
  nothing back, so running the block without one gives the same result; a cache that already holds
  tokens is refused.

Loops that read attributes of the layer at a position (ModernBERT picks the mask by
``layer.attention_type``) get the student position's value; :func:`check_hybrid_compatible
<lightning_kd.models.theseus.check_hybrid_compatible>` has checked at construction that every
teacher layer of the block has that same per-layer type.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from transformers.cache_utils import Cache

#: Attributes an encoder loop may read from the layer at a position; answered by the student's layer there.
POSITION_ATTRIBUTES = frozenset({"attention_type", "layer_type", "is_sliding", "sliding_window", "layer_idx"})


def _narrow(tensor: Tensor, dtype: torch.dtype) -> Tensor:
    """``tensor`` in ``dtype``, clamped to its finite range when that range is smaller."""
    if tensor.dtype == dtype:
        return tensor
    info = torch.finfo(dtype)
    if info.max < torch.finfo(tensor.dtype).max:
        tensor = tensor.clamp(info.min, info.max)
    return tensor.to(dtype)


def _holds_past(cache: Cache, length: int) -> bool:
    """Whether ``cache`` holds tokens from before this forward: in one forward a slot holds at most
    the ``length`` tokens a student layer wrote there."""
    slots = len(getattr(cache, "layers", None) or ()) or 1
    return any(cache.get_seq_length(slot) > length for slot in range(slots))


def _for_teacher(value, dtype: torch.dtype, length: int):
    """One call argument as the teacher layer gets it (see the module docstring)."""
    if isinstance(value, Cache):
        if _holds_past(value, length):
            raise RuntimeError(
                "A Theseus hybrid runs teacher layers without the student's cache, so it cannot continue from a cache "
                "that already holds tokens; run the hybrid on whole sequences (training does)."
            )
        return None
    if isinstance(value, Tensor) and value.is_floating_point():
        return _narrow(value, dtype)
    if isinstance(value, (tuple, list)) and any(isinstance(v, Tensor) for v in value):
        return type(value)(_for_teacher(v, dtype, length) for v in value)
    return value


def _back(value, dtype: torch.dtype):
    return value.to(dtype) if isinstance(value, Tensor) and value.is_floating_point() else value


class TeacherBlock:
    """Teacher layers run in turn where the student's layer at ``position_layer`` would run.

    Not an ``nn.Module``: it is placed in a plain list for one forward and never registered.

    Args:
        layers: the block's teacher modules, in order (each called like a student layer).
        dtype: the teacher's parameter dtype (inputs are cast to it, outputs cast back).
        position_layer: the student's layer at this position, which answers the loop's questions
            about the position (:data:`POSITION_ATTRIBUTES`).
    """

    def __init__(self, layers: Sequence[nn.Module], dtype: torch.dtype, position_layer: nn.Module) -> None:
        self.layers, self.dtype, self.position_layer = list(layers), dtype, position_layer

    def __getattr__(self, name: str):
        # Only reached for attributes not set in __init__.
        if name in POSITION_ATTRIBUTES:
            return getattr(self.__dict__["position_layer"], name)
        raise AttributeError(f"A Theseus teacher block has no attribute {name!r}.")

    def __call__(self, *args, **kwargs):
        if args:
            hidden, args = args[0], args[1:]
        else:
            hidden = kwargs.pop("hidden_states")
        outer = hidden.dtype
        length = hidden.shape[1]
        args = tuple(_for_teacher(value, self.dtype, length) for value in args)
        kwargs = {name: _for_teacher(value, self.dtype, length) for name, value in kwargs.items()}
        hidden = hidden.to(self.dtype)
        output = hidden
        for layer in self.layers:
            output = layer(hidden, *args, **kwargs)
            hidden = output[0] if isinstance(output, tuple) else output
        if isinstance(output, tuple):  # DeBERTa-v2, MPNet: (hidden, attention weights…) like the student layer
            return (hidden.to(outer),) + tuple(_back(value, outer) for value in output[1:])
        return hidden.to(outer)

    forward = __call__
