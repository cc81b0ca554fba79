"""A reusable intermediate loss's settings are its method's own keyword arguments, declared once:
the ``…Settings`` dataclass has the method's fields, defaults and descriptions, validates like the
method, pickles, and MixBaseline parses its block from YAML."""

from __future__ import annotations

import dataclasses
import inspect
import pickle
import typing

import pytest
from jsonargparse import ArgumentParser

from lightning_kd.methods.distilbert import DistilBERT, DistilBERTSettings
from lightning_kd.methods.minilm import MiniLM, MiniLMSettings
from lightning_kd.methods.minilmv2 import MiniLMv2, MiniLMv2Settings
from lightning_kd.methods.mix_baseline import MixBaseline
from lightning_kd.methods.tinybert import TinyBERT, TinyBERTSettings

PAIRS = [(TinyBERT, TinyBERTSettings), (MiniLM, MiniLMSettings), (MiniLMv2, MiniLMv2Settings), (DistilBERT, DistilBERTSettings)]


@pytest.mark.parametrize(("method", "settings"), PAIRS, ids=lambda x: x.__name__)
def test_fields_are_the_methods_own_arguments_with_their_defaults_and_docs(method, settings):
    own = {
        name: parameter.default
        for name, parameter in inspect.signature(method.__init__).parameters.items()
        if parameter.kind is inspect.Parameter.KEYWORD_ONLY and name != "prediction"
    }
    fields = dataclasses.fields(settings)
    assert [f.name for f in fields] == list(own)
    assert {f.name: getattr(settings(), f.name) for f in fields} == own
    assert settings.__module__ == method.__module__ and settings.__qualname__ == settings.__name__
    for name in own:
        assert f"    {name}: " in settings.__doc__ and len(settings.__doc__.split(f"    {name}: ", 1)[1].split("\n")[0]) > 10


def test_instances_do_not_share_mutable_defaults_and_pickle():
    first, second = TinyBERTSettings(), TinyBERTSettings()
    first.terms.append("final")
    assert second.terms == ["embedding", "attention", "hidden", "final"]
    settings = MiniLMv2Settings(relation_heads=[4, 8], mask_padding=True, padded_queries="keep")
    assert pickle.loads(pickle.dumps(settings)) == settings
    assert settings.arguments() == {"relation_heads": [4, 8], "teacher_layer": -1, "mask_padding": True, "padded_queries": "keep"}
    assert MiniLMSettings.from_arguments({"self": None, "mask_padding": True, "kwargs": {}}) == MiniLMSettings(mask_padding=True)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: TinyBERTSettings(terms=["bogus"]), "Unknown TinyBERT terms"),
        (lambda: TinyBERTSettings(terms=["final", "final"]), "twice"),
        (lambda: MiniLMv2Settings(padded_queries="keep"), "mask_padding"),
        (lambda: DistilBERTSettings(alpha_cos=-1.0), ">= 0"),
        (lambda: DistilBERTSettings(cos_positions="padding"), "cos_positions"),
    ],
)
def test_settings_validate_as_the_method_does(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_mix_baseline_reads_each_block_with_the_methods_keys():
    hints = typing.get_type_hints(MixBaseline.__init__)
    parser = ArgumentParser(exit_on_error=False)
    for block in ("tinybert", "minilm"):
        parser.add_argument(f"--{block}", type=hints[block])
    config = parser.parse_string("tinybert: {terms: [final], layer_map: last}\nminilm: {mask_padding: true}\n")
    built = parser.instantiate_classes(config)
    assert built.tinybert == TinyBERTSettings(terms=["final"], layer_map="last")
    assert built.minilm == MiniLMSettings(mask_padding=True)
