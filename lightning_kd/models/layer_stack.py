"""Where a Hugging Face model keeps its stack of transformer layers, and which module runs each layer.

A model's ``num_hidden_layers`` layer *applications* run modules held in one ``nn.ModuleList``.
Usually entry ``i`` runs layer ``i`` (BERT ``bert.encoder.layer``, DistilBERT
``distilbert.transformer.layer``, GPT-2 ``transformer.h``, Llama/Qwen2/ModernBERT ``model.layers``).
ALBERT shares layers: its list holds ``num_hidden_groups`` groups and layer ``i`` runs group
``int(i / (num_hidden_layers / num_hidden_groups))`` (one shared group for every layer by default).
:class:`LayerStack` records both the list and that layer → entry ("slot") map, so copying weights and
swapping layers work on slots without caring which family they are in.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

#: Paths of the layer list below ``model.base_model``, tried in order before the general rule.
_KNOWN_PATHS = ("encoder.layer", "transformer.layer", "layers", "h", "encoder.layers", "layer", "block")


class LayerStackNotFound(ValueError):
    """The model's layer list cannot be located (the message names the model and its family)."""


@dataclass(frozen=True)
class LayerStack:
    """A model's layer list and which entry runs each layer application.

    Attributes:
        owner: the module holding the list as an attribute (e.g. ``BertEncoder``).
        attribute: the attribute's name (``"layer"``, ``"h"``, ``"layers"``, ``"albert_layer_groups"``).
        prefix: the list's dotted name in the model's state dict (``"bert.encoder.layer"``).
        modules: the registered ``nn.ModuleList``.
        slots: for each layer application ``i = 0…num_hidden_layers−1``, the index into ``modules``
            that runs it (``(0, 1, 2, 3)`` for BERT; ``(0, 0, 0, 0)`` for a fully shared ALBERT).
    """

    owner: nn.Module
    attribute: str
    prefix: str
    modules: nn.ModuleList
    slots: tuple[int, ...]

    @property
    def depth(self) -> int:
        """Number of layer applications (``config.num_hidden_layers``)."""
        return len(self.slots)

    @property
    def shared(self) -> bool:
        """Whether one module runs several layer applications (ALBERT's shared groups)."""
        return len(set(self.slots)) < len(self.slots)

    def module_at(self, layer: int) -> nn.Module:
        """The module that runs layer application ``layer``."""
        return self.modules[self.slots[layer]]


def family_of(model: nn.Module) -> str:
    """``"ClassName (model_type)"``, how refusals name a model and its family."""
    model_type = getattr(getattr(model, "config", None), "model_type", None) or "unknown family"
    return f"{type(model).__name__} ({model_type})"


def find_layer_stack(model: nn.Module) -> LayerStack:
    """The layer stack of ``model`` (a ``PreTrainedModel`` with or without a task head).

    Rule: ALBERT-style shared groups (``config.num_hidden_groups``) first; then the known paths
    below the base model (``encoder.layer``, ``transformer.layer``, ``layers``, ``h``, …) holding
    ``num_hidden_layers`` modules; then the one ``ModuleList`` below the base model with
    ``num_hidden_layers`` entries of a single class. The registered list is read from the owner's
    submodule table, so a list shadowed by a Theseus hybrid does not hide it.

    Raises:
        LayerStackNotFound: none of the rules finds exactly one list.
    """
    config = model.config
    depth = config.num_hidden_layers
    base = getattr(model, "base_model", model)
    names = {id(module): name for name, module in model.named_modules()}

    groups = getattr(config, "num_hidden_groups", None)
    if groups:
        owner = getattr(base, "encoder", None)
        modules = owner._modules.get("albert_layer_groups") if isinstance(owner, nn.Module) else None
        if isinstance(modules, nn.ModuleList) and len(modules) == groups:
            slots = tuple(int(i / (depth / groups)) for i in range(depth))
            return LayerStack(owner, "albert_layer_groups", names[id(modules)], modules, slots)

    for path in _KNOWN_PATHS:
        owner_path, _, attribute = path.rpartition(".")
        try:
            owner = base.get_submodule(owner_path) if owner_path else base
        except AttributeError:
            continue
        modules = owner._modules.get(attribute)
        if isinstance(modules, nn.ModuleList) and len(modules) == depth and depth > 0:
            return LayerStack(owner, attribute, names[id(modules)], modules, tuple(range(depth)))

    candidates = [
        (name, module)
        for name, module in base.named_modules()
        if isinstance(module, nn.ModuleList) and len(module) == depth > 0 and len({type(m) for m in module}) == 1
    ]
    if len(candidates) == 1:
        name, modules = candidates[0]
        owner_name, _, attribute = name.rpartition(".")
        owner = base.get_submodule(owner_name) if owner_name else base
        return LayerStack(owner, attribute, names[id(modules)], modules, tuple(range(depth)))
    found = "none" if not candidates else ", ".join(name for name, _ in candidates)
    raise LayerStackNotFound(
        f"Cannot find the layer list of {family_of(model)}: no ModuleList of its {depth} layers at a known path "
        f"({', '.join(_KNOWN_PATHS)}) below the base model, and {found} by the general rule."
    )
