"""`lightning-kd` reports bad input as one sentence (exit status 2, no traceback); bugs keep their traceback."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl

from lightning_kd.cli import main
from lightning_kd.errors import DEBUG_ENV, HOW_TO_DEBUG, exception_chain
from tests.cli_fixtures import TEACHER_SHAPE, classification_data_args, quick_trainer_args, write_cli_assets
from tests.conftest import make_tiny_bert, write_tiny_tokenizer

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli_error_assets")
    paths = write_cli_assets(root)
    train = paths["train"].read_text().splitlines()
    bad_row = root / "bad_row.csv"
    bad_row.write_text("\n".join([*train[:3], "an extra,column,here", *train[3:]]) + "\n")  # line 4
    latin1 = root / "latin1.csv"
    latin1.write_bytes("\n".join([*train[:4], "caf\xe9 movie,good", *train[4:]]).encode("cp1252") + b"\n")  # line 5
    header_only = root / "header_only.csv"
    header_only.write_text("text,label\n")
    # A teacher whose config.json claims a classification head that its weights do not have.
    liar = root / "teacher_without_head"
    make_tiny_bert("classification", seed=1, **TEACHER_SHAPE).bert.save_pretrained(liar)
    config = json.loads((liar / "config.json").read_text())
    (liar / "config.json").write_text(json.dumps({**config, "architectures": ["BertForSequenceClassification"]}))
    write_tiny_tokenizer(liar)
    paths.update(bad_row=bad_row, latin1=latin1, header_only=header_only, liar=liar)
    return paths


def _args(assets, root: Path, *extra: str, model: tuple[str, ...] | None = None) -> list[str]:
    teacher = assets["teacher_classification"]
    model = model or (
        "--model=lightning_kd.methods.KD",
        f"--model.teacher={teacher}",
        "--model.student_init=teacher_uniform",
        "--model.student_layers=3",
    )
    files = {key: assets[key] for key in ("train", "validation", "test")}
    return ["fit", *model, *classification_data_args(teacher, files), *quick_trainer_args(root), *extra]


def _main(monkeypatch, capsys, argv: list[str]) -> tuple[int | str | None, str]:
    monkeypatch.setattr(sys, "argv", ["lightning-kd", *argv])
    with pytest.raises(SystemExit) as exit_info:
        main()
    return exit_info.value.code, capsys.readouterr().err


def _assert_short(code, err: str, *expected: str) -> str:
    """Exit status 2; one 'lightning-kd: error:' line matching every pattern, then how to get the traceback."""
    assert code == 2, err
    messages = [line for line in err.splitlines() if line.startswith("lightning-kd: error: ")]
    assert len(messages) == 1, err
    assert err.rstrip().endswith(HOW_TO_DEBUG), err
    for unwanted in ("Traceback", "Does not validate", "Given value", "init_args=Namespace"):
        assert unwanted not in err, err
    for pattern in expected:
        assert re.search(pattern, messages[0]), messages[0]
    return messages[0]


def _flat_temperature_model(assets) -> tuple[str, ...]:
    """A method whose ``temperature`` is an argument of its own (KD's is ``prediction.temperature``)."""
    return ("--model=lightning_kd.methods.LogitsDistil", f"--model.teacher={assets['teacher_classification']}",
            "--model.student_init=teacher_uniform", "--model.student_layers=3")


def _bad_input_cases(assets, root: Path) -> dict[str, tuple[list[str], tuple[str, ...]]]:
    teacher, student = assets["teacher_classification"], assets["student_classification"]
    return {
        "negative temperature": (_args(assets, root, "--model.prediction.temperature=-1"), (r"model \(KD\): temperature must be > 0, got -1",)),
        "layer map out of range": (
            _args(assets, root, model=("--model=lightning_kd.methods.PKD", f"--model.teacher={teacher}",
                                       "--model.student_init=teacher_uniform", "--model.student_layers=3", "--model.layer_map=[2,4,40]")),
            (r"layer_map entries \[40\] are out of range", r"1\.\.12"),
        ),
        "width mismatch": (
            _args(assets, root, model=("--model=lightning_kd.methods.SID", f"--model.teacher={teacher}", f"--model.student={student}")),
            (r"model \(SID\)", r"width 96.*width 48",),
        ),
        "missing teacher": (_args(assets, root, f"--model.teacher={root / 'no_such_teacher'}"), (r"no_such_teacher", r"config\.json")),
        "unknown task": (_args(assets, root, "--data.task=sst3"), (r"data \(GlueDataModule\): Unknown task 'sst3'", r"Valid tasks: cola")),
        "malformed data row": (_args(assets, root, f"--data.train_file={assets['bad_row']}"),
                               (re.escape(str(assets["bad_row"])) + ", line 4", r"expected 2 columns")),
        "misspelt key": (_args(assets, root, "--model.init_args.temprature=3", model=_flat_temperature_model(assets)),
                         (r"Unknown key model\.init_args\.temprature; did you mean temperature\?",)),
        "misspelt trainer key": (_args(assets, root, "--trainer.max_epochx=3"), (r"Unknown key trainer\.max_epochx; did you mean trainer\.max_epochs",)),
        "optimizer section": (_args(assets, root, "--optimizer=torch.optim.SGD"),
                              (r"Unknown key optimizer: LightningCLI's `optimizer:` section is not used here.*learning_rate",)),
        "misspelt section": (_args(assets, root, "--trainr.max_epochs=3"), (r"Unknown key trainr\.max_epochs; did you mean trainer\.max_epochs\?",)),
        "missing data file": (_args(assets, root, f"--data.train_file={root / 'nowhere.csv'}"), (r"nowhere\.csv", r"does not exist")),
        "non-UTF-8 file": (_args(assets, root, f"--data.train_file={assets['latin1']}"),
                           (re.escape(str(assets["latin1"])) + ", line 5", r"0xe9", r"not valid UTF-8", r"re-encode")),
        "header-only file": (_args(assets, root, f"--data.train_file={assets['header_only']}"),
                             (re.escape(str(assets["header_only"])), r"no examples for the train split")),
        "bad validation file, found while fitting": (
            _args(assets, root, f"--data.validation_file={assets['latin1']}"),
            (re.escape(str(assets["latin1"])) + ", line 5", r"not valid UTF-8"),
        ),
        "bad student_init": (_args(assets, root, "--model.student_init=teacher_uniformm"),
                             (r"model\.init_args\.student_init: Expected a .*Literal.*Got value: teacher_uniformm",)),
        "value of the wrong type": (_args(assets, root, "--model.temperature=hot", model=_flat_temperature_model(assets)), (r"model\.init_args\.temperature: Expected a <class 'float'>",)),
        "unknown method class": (_args(assets, root, model=("--model=lightning_kd.methods.KDD",)),
                                 (r"^lightning-kd: error: --model: unknown method 'KDD'; did you mean KD\b", r"The methods: ALPKD, .*VocabDistil")),
        "teacher whose config lies about its head": (
            _args(assets, root, f"--model.teacher={assets['liar']}"),
            (r"lacks trained weights for classifier\.bias, classifier\.weight", r"BertForSequenceClassification", r"fine-tune it"),
        ),
        "bad callback setting": (_args(assets, root, "--progress.every_n_steps=0"), (r"progress\.every_n_steps must be >= 1",)),
        "missing tokenizer": (_args(assets, root, f"--data.tokenizer={root / 'no_tokenizer'}"),
                              (r"Cannot load a tokenizer from '.*no_tokenizer'", r"embedded:all-MiniLM-L6-v2")),
    }


CASES = [
    "negative temperature", "layer map out of range", "width mismatch", "missing teacher", "unknown task",
    "malformed data row", "misspelt key", "misspelt trainer key", "misspelt section", "missing data file",
    "non-UTF-8 file", "header-only file", "bad validation file, found while fitting", "bad student_init",
    "value of the wrong type", "unknown method class", "teacher whose config lies about its head", "bad callback setting",
    "missing tokenizer",
]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_sentence_with_exit_status_2(assets, tmp_path, monkeypatch, capsys, case):
    argv, expected = _bad_input_cases(assets, tmp_path)[case]
    code, err = _main(monkeypatch, capsys, argv)
    _assert_short(code, err, *expected)
    assert not (tmp_path / "student").exists()


def test_misspelt_key_in_a_config_file_lists_the_closest(assets, tmp_path, monkeypatch, capsys):
    config = tmp_path / "typo.yaml"
    config.write_text("model:\n  init_args:\n    student_layer: 3\ntrainer:\n  max_epoch: 2\n")
    code, err = _main(monkeypatch, capsys, [*_args(assets, tmp_path), f"--config={config}"])
    _assert_short(code, err, r"Unknown key (model\.init_args\.student_layer; did you mean student_layers|trainer\.max_epoch; did you mean trainer\.max_epochs)")


@pytest.mark.parametrize(
    ("model", "yaml_key", "suggestion"),
    [
        ("KD", "temperature: 2.0", "prediction.temperature"),
        ("KD", "soft_weight: 1.0", "prediction.soft_weight"),
        ("DistilBERT", "alpha_ce: 5.0", "prediction.soft_weight"),
        ("DIITO", "mlm_weight: 0.25", "prediction.hard_weight"),
        ("LogitsDistil", "hard_weight: 0.0", "prediction.hard_weight"),
    ],
)
def test_a_flat_prediction_key_points_to_the_prediction_block(assets, tmp_path, monkeypatch, capsys, model, yaml_key, suggestion):
    config = tmp_path / "flat.yaml"
    config.write_text(f"model:\n  class_path: lightning_kd.methods.{model}\n  init_args:\n    {yaml_key}\n")
    code, err = _main(monkeypatch, capsys, [*_args(assets, tmp_path), f"--config={config}"])
    key = yaml_key.split(":")[0]
    _assert_short(code, err, rf"Unknown key model\.init_args\.{key}; did you mean {re.escape(suggestion)}\?")


def test_a_key_with_no_close_match_lists_the_valid_ones(assets, tmp_path, monkeypatch, capsys):
    code, err = _main(monkeypatch, capsys, _args(assets, tmp_path, "--model.init_args.zzzz=1"))
    _assert_short(code, err, r"Unknown key model\.init_args\.zzzz; valid keys here: .*adam_epsilon.*see --help")


@pytest.mark.parametrize("how", ["flag", "environment"])
def test_debug_shows_the_traceback(assets, tmp_path, monkeypatch, how):
    argv = _args(assets, tmp_path, "--model.prediction.temperature=-1")
    if how == "flag":
        argv.append("--debug")
    else:
        monkeypatch.setenv(DEBUG_ENV, "1")
    monkeypatch.setattr(sys, "argv", ["lightning-kd", *argv])
    with pytest.raises(ValueError) as error:
        main()
    assert any("temperature must be > 0" in str(e) for e in exception_chain(error.value))
    assert "--debug" not in sys.argv, "the flag is taken out before parsing"


class _Buggy(pl.Callback):
    """Fails at the start of training like a bug would (not a check of the user's input)."""

    def __init__(self, kind: str = "type") -> None:
        self.kind = kind

    def on_train_start(self, trainer, pl_module) -> None:
        if self.kind == "type":
            raise TypeError("unsupported operand type(s) for +: 'Tensor' and 'NoneType'")
        raise ValueError("a ValueError from code outside lightning_kd")


@pytest.mark.parametrize(("kind", "raised"), [("type", TypeError), ("value", ValueError)])
def test_a_bug_during_training_keeps_its_traceback(assets, tmp_path, monkeypatch, capsys, kind, raised):
    monkeypatch.setattr(sys, "argv", ["lightning-kd", *_args(assets, tmp_path, "--trainer.callbacks+=tests.test_cli_errors._Buggy",
                                                             f"--trainer.callbacks.kind={kind}")])
    with pytest.raises(raised):
        main()
    assert "lightning-kd: error:" not in capsys.readouterr().err


def test_python_callers_still_get_the_original_exception(assets, tmp_path):
    from lightning_kd.cli import run_cli

    with pytest.raises(ValueError) as error:
        run_cli(_args(assets, tmp_path, "--model.prediction.temperature=-1"))
    assert any("temperature must be > 0" in str(e) for e in exception_chain(error.value))


@pytest.mark.parametrize(
    ("extra", "expected"),
    [(["--model.init_args.temprature=3"], "did you mean temperature?"), (["--data.train_file={latin1}"], ", line 5: byte 0xe9")],
)
def test_the_installed_command_prints_no_traceback(assets, tmp_path, extra, expected):
    model = _flat_temperature_model(assets) if "temprature" in extra[0] else None
    argv = _args(assets, tmp_path, *[e.format(latin1=assets["latin1"]) for e in extra], model=model)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop(DEBUG_ENV, None)
    done = subprocess.run([sys.executable, "-m", "lightning_kd", *argv], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and expected in done.stderr, done.stderr
    assert done.stderr.rstrip().endswith(HOW_TO_DEBUG)


def test_a_nan_stop_is_its_own_report_with_exit_status_3(assets, tmp_path, monkeypatch, capsys):
    code, err = _main(monkeypatch, capsys, _args(assets, tmp_path, "--trainer.callbacks+=tests.fault.helpers.PoisonLossAt",
                                                 "--trainer.callbacks.step=1"))
    assert code == 3
    assert "lightning-kd: error: " in err and "non-finite" in err.lower()
    assert "Traceback" not in err
