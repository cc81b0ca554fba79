"""A YAML ``prediction:`` block that sets some keys keeps the method's own defaults for the others.

jsonargparse fills the keys a config file's nested block omits from the *type's* defaults, not from
the argument's default instance, so a method whose paper defaults differ from ``PredictionLoss()``
types its argument with a subclass holding them (``PKDPrediction``: ``temperature = 10``). Without
it, ``prediction: {temperature: 4}`` in a DistilBERT config silently dropped ``α_ce = 5``."""

from __future__ import annotations

import dataclasses
import inspect
import typing

import pytest
import yaml

from lightning_kd import methods
from lightning_kd.cli import run_cli
from lightning_kd.losses.prediction import PredictionLoss


def _prediction_methods() -> list[type]:
    found = []
    for name in methods.__all__:
        cls = getattr(methods, name)
        if isinstance(cls, type) and "prediction" in inspect.signature(cls.__init__).parameters:
            found.append(cls)
    return found


def _expected(cls: type) -> PredictionLoss:
    default = inspect.signature(cls.__init__).parameters["prediction"].default
    if default is None or default is inspect.Parameter.empty:
        hint = typing.get_type_hints(cls.__init__)["prediction"]
        block_type = next(t for t in (hint, *typing.get_args(hint)) if isinstance(t, type) and issubclass(t, PredictionLoss))
        default = block_type()
    return dataclasses.replace(default, class_mean=True)


def test_methods_with_paper_defaults_are_covered():
    names = {cls.__name__ for cls in _prediction_methods()}
    assert {"KD", "PKD", "DistilBERT", "DIITO", "ALPKD", "CKD", "RAILKD", "MGSKD", "TinyBERT"} <= names


@pytest.mark.parametrize("cls", _prediction_methods(), ids=lambda c: c.__name__)
def test_a_partial_block_keeps_the_methods_defaults(cls, tmp_path, capsys):
    config = tmp_path / "partial.yaml"
    config.write_text(
        f"model:\n  class_path: {cls.__module__}.{cls.__name__}\n  init_args:\n    teacher: unused\n"
        "    prediction:\n      class_mean: true\n"  # a key no method changes: every default must survive

        "data:\n  class_path: lightning_kd.data.GlueDataModule\n  init_args: {task: sst2}\n"
    )
    with pytest.raises(SystemExit) as exit_info:
        run_cli(["fit", "--config", str(config), "--print_config"])
    out, err = capsys.readouterr()
    assert exit_info.value.code == 0, err
    printed = yaml.safe_load(out)["model"]["init_args"]["prediction"]
    assert printed == dataclasses.asdict(_expected(cls))
