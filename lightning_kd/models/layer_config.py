"""Per-layer fields of a model config: finding them, and trimming them to a subset of the layers.

Transformers 5 configs describe some layers one by one: ``layer_types`` (ModernBERT's alternating
global/sliding attention, Qwen2's sliding-window layers, …) and ``mlp_layer_types`` are validated
against ``num_hidden_layers``; other families keep per-layer lists of their own (``no_rope_layers``,
…). A student made of teacher layers ``[1, 3]`` needs each of those lists cut to entries 1 and 3,
so that every copied layer keeps its type and the config still validates when it is reloaded.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

from transformers import PretrainedConfig

#: Validated by ``PretrainedConfig.validate_layer_type``: always per-layer.
_ALWAYS_PER_LAYER = ("layer_types", "mlp_layer_types")
#: Lists that are never per-layer, even when their length happens to equal the depth.
_NEVER_PER_LAYER = frozenset(
    {"architectures", "pos_att_type", "bad_words_ids", "suppress_tokens", "begin_suppress_tokens", "forced_decoder_ids"}
)
#: Lists of layer *indices* (renumbered to the kept layers, not sliced).
_INDEX_FIELDS = ("mlp_only_layers",)


def per_layer_fields(config: PretrainedConfig) -> dict[str, list]:
    """``{name: values}`` of the config's list-valued fields with one entry per layer.

    A field is per-layer when transformers validates it against ``num_hidden_layers``
    (``layer_types``, ``mlp_layer_types``) or when it is any other top-level list (or tuple) whose
    length is ``num_hidden_layers`` and is not a known non-layer list (token-id lists,
    ``architectures``, DeBERTa's ``pos_att_type``).
    """
    depth = config.num_hidden_layers
    fields = {}
    for name in config.to_dict():
        if name in _NEVER_PER_LAYER or name.endswith(("_token_id", "_token_ids")):
            continue
        value = getattr(config, name, None)
        if isinstance(value, (list, tuple)) and (name in _ALWAYS_PER_LAYER or len(value) == depth):
            fields[name] = list(value)
    return fields


def layer_fields_at(config: PretrainedConfig, layer: int) -> dict[str, object]:
    """``{name: value}`` of every per-layer field at ``layer`` (e.g. ``{"layer_types": "sliding_attention"}``)."""
    return {name: values[layer] for name, values in per_layer_fields(config).items() if layer < len(values)}


def trimmed_config(config: PretrainedConfig, layers: Sequence[int]) -> PretrainedConfig:
    """A copy of ``config`` for a model made of ``layers`` (0-based, in order): ``num_hidden_layers``
    set to their count, every per-layer list cut to their entries and layer-index lists renumbered."""
    trimmed = copy.deepcopy(config)
    for name, values in per_layer_fields(config).items():
        setattr(trimmed, name, [values[i] for i in layers])
    for name in _INDEX_FIELDS:
        indices = getattr(config, name, None)
        if isinstance(indices, (list, tuple)):
            kept = set(indices)
            setattr(trimmed, name, [position for position, layer in enumerate(layers) if layer in kept])
    trimmed.num_hidden_layers = len(layers)
    return trimmed
