"""Finding each family's layer list (ALBERT's shared groups as slots) and trimming per-layer config fields."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import PretrainedConfig

from lightning_kd.models.layer_config import layer_fields_at, per_layer_fields, trimmed_config
from lightning_kd.models.layer_stack import LayerStackNotFound, find_layer_stack
from tests.families import FAMILIES, family_config, make_family_model

PREFIXES = {
    "bert": "bert.encoder.layer",
    "roberta": "roberta.encoder.layer",
    "distilbert": "distilbert.transformer.layer",
    "electra": "electra.encoder.layer",
    "albert": "albert.encoder.albert_layer_groups",
    "deberta_v2": "deberta.encoder.layer",
    "mpnet": "mpnet.encoder.layer",
    "xlm_roberta": "roberta.encoder.layer",
    "modernbert": "model.layers",
    "gpt2": "transformer.h",
    "llama": "model.layers",
    "qwen2": "model.layers",
}


@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_layer_list(family):
    model = make_family_model(family)
    stack = find_layer_stack(model)
    assert stack.prefix == PREFIXES[family]
    assert model.get_submodule(stack.prefix) is stack.modules
    assert getattr(stack.owner, stack.attribute) is stack.modules
    if family == "albert":  # one shared group runs all four layers
        assert stack.slots == (0, 0, 0, 0) and stack.shared and stack.module_at(3) is stack.modules[0]
    else:
        assert stack.slots == (0, 1, 2, 3) and not stack.shared


def test_albert_groups_map_layers_to_slots():
    config = family_config("albert", layers=4)
    config.num_hidden_groups = 2
    from transformers import AlbertForSequenceClassification

    assert find_layer_stack(AlbertForSequenceClassification(config)).slots == (0, 0, 1, 1)


class _Wrapped(nn.Module):
    """Two same-length lists: the general rule cannot tell which one holds the layers."""

    def __init__(self) -> None:
        super().__init__()
        self.config = PretrainedConfig(num_hidden_layers=2)
        self.config.model_type = "custom"
        self.blocks = nn.ModuleList([nn.Linear(2, 2), nn.Linear(2, 2)])
        self.adapters = nn.ModuleList([nn.Linear(2, 2), nn.Linear(2, 2)])


def test_a_list_that_cannot_be_found_is_named():
    with pytest.raises(LayerStackNotFound, match=r"_Wrapped \(custom\).*blocks, adapters"):
        find_layer_stack(_Wrapped())
    model = _Wrapped()
    del model.adapters
    assert find_layer_stack(model).prefix == "blocks"  # one candidate: the general rule takes it


def test_per_layer_fields_are_found_and_trimmed():
    modern = family_config("modernbert", layers=4)
    assert per_layer_fields(modern) == {"layer_types": ["full_attention", "sliding_attention"] * 2}
    trimmed = trimmed_config(modern, [1, 2])
    assert trimmed.num_hidden_layers == 2 and trimmed.layer_types == ["sliding_attention", "full_attention"]
    assert modern.layer_types == ["full_attention", "sliding_attention"] * 2, "the original is left alone"
    assert layer_fields_at(modern, 1) == {"layer_types": "sliding_attention"}
    trimmed.validate_layer_type()


def test_non_layer_lists_stay_and_layer_index_lists_are_renumbered():
    deberta = family_config("deberta_v2", layers=2)  # pos_att_type has two entries, like the depth
    assert "pos_att_type" not in per_layer_fields(deberta)
    assert trimmed_config(deberta, [1]).pos_att_type == ["p2c", "c2p"]
    config = family_config("llama", layers=4)
    config.mlp_only_layers = [1, 3]
    config.no_rope_layers = [1, 0, 1, 0]  # an unvalidated per-layer list (SmolLM3-style)
    trimmed = trimmed_config(config, [0, 3])
    assert trimmed.mlp_only_layers == [1] and trimmed.no_rope_layers == [1, 0]


def test_trimmed_config_builds_a_model_that_reloads(tmp_path):
    config = trimmed_config(family_config("qwen2", layers=4, use_sliding_window=True, sliding_window=4, max_window_layers=2), [1, 3])
    assert config.layer_types == ["full_attention", "sliding_attention"]
    torch.manual_seed(0)
    from transformers import AutoConfig, AutoModelForSequenceClassification

    AutoModelForSequenceClassification.from_config(config).save_pretrained(tmp_path)
    assert AutoConfig.from_pretrained(tmp_path).layer_types == ["full_attention", "sliding_attention"]
