"""The classes of text-classification data are checked across splits before anything is built: a stray training
label is refused with file, line and label (with and without a teacher); label_names states the classes."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import pytest

from lightning_kd.data.glue import GlueDataModule
from lightning_kd.data.label_check import census, check_label_splits
from lightning_kd.data.readers.generic import iter_table_file
from lightning_kd.data.readers.lines import DataFileError
from tests.cli_fixtures import classification_data_args, quick_trainer_args, write_classification_csvs, write_models


def _with_label(source: Path, target: Path, line: int, label: str) -> Path:
    """A copy of CSV ``source`` whose ``line`` (1-based, the header is line 1) has ``label``."""
    rows = list(csv.reader(source.open(newline="")))
    rows[line - 1][-1] = label
    with target.open("w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    return target


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("label_assets")
    files = write_classification_csvs(root)
    stray = _with_label(files["train"], root / "train_stray.csv", 6, "maybe")
    return {**files, "stray": stray, "root": root}


def _module(assets, train: Path, **kwargs) -> GlueDataModule:
    return GlueDataModule(
        task="text-classification", tokenizer="unused", train_file=str(train), validation_file=str(assets["validation"]),
        test_file=str(assets["test"]), text_columns=["text"], **kwargs,
    )


def test_a_training_label_no_evaluation_split_has_is_refused_with_file_line_and_label(assets):
    with pytest.raises(DataFileError) as error:
        _ = _module(assets, assets["stray"]).num_labels
    message = str(error.value)
    assert message.startswith(f"{assets['stray']}, line 6: label 'maybe' appears only in the training data (1 row); ")
    assert "validation.csv and test.csv have only bad, good" in message and "would get 3 classes where the evaluation data has 2" in message
    assert message.endswith("list the classes explicitly: data.init_args.label_names: [bad, good, maybe].")
    # The knob: naming the classes accepts the third one.
    assert _module(assets, assets["stray"], label_names=["bad", "good", "maybe"]).num_labels == 3
    assert _module(assets, assets["train"]).num_labels == 2


def test_an_evaluation_label_the_training_data_lacks_is_refused_too(assets, tmp_path):
    validation = _with_label(assets["validation"], tmp_path / "validation.csv", 3, "neutral")
    train = census([(2, "bad"), (3, "good")], "train.csv")
    evaluation = census([(2, "good"), (3, "neutral"), (4, "bad")], str(validation))
    with pytest.raises(DataFileError, match=r"validation\.csv, line 3: label 'neutral' never occurs in the training data, whose labels are bad, good"):
        check_label_splits(train, [evaluation])
    check_label_splits(train, [])  # no evaluation data: nothing to compare


def test_integer_labels_and_datasets_are_located_too():
    train = census([(0, 0), (1, 1), (2, "2")], "data (train split)", unit="row")
    with pytest.raises(DataFileError, match=r"^data \(train split\): row 2: label 2 appears only in the training data"):
        check_label_splits(train, [census([(0, 0), (1, 1)], "data (validation split)", unit="row")])


def test_empty_texts_are_kept_with_a_warning_naming_the_lines(tmp_path):
    path = tmp_path / "empty.csv"
    path.write_text("text,label\ngood movie,good\n  ,bad\nbad movie,bad\n,good\n")
    with pytest.warns(UserWarning, match=r"empty\.csv: 2 row\(s\) have an empty text \(line 3, 5\); they are kept"):
        rows = list(iter_table_file(path, ["text"], "label", None))
    assert len(rows) == 4


# ------------------------------------------------------------------ through the command
@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return write_models(tmp_path_factory.mktemp("label_models"))


@pytest.mark.parametrize("method", ["StudentOnly", "KD"])
def test_the_command_refuses_a_stray_training_label_before_building_the_models(assets, models, tmp_path, monkeypatch, capsys, method):
    from lightning_kd.cli import main

    teacher = models["teacher_classification"]
    model = ["--model", method, f"--model.init_args.{'student' if method == 'StudentOnly' else 'teacher'}={teacher}"]
    files = {"train": assets["stray"], "validation": assets["validation"], "test": assets["test"]}
    monkeypatch.setattr(sys, "argv", ["lightning-kd", "fit", *model, *classification_data_args(teacher, files), *quick_trainer_args(tmp_path)])
    with pytest.raises(SystemExit) as exit_info:
        main()
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    assert f"lightning-kd: error: {assets['stray']}, line 6: label 'maybe' appears only in the training data" in err
    assert "predicts 2 labels" not in err and "Traceback" not in err
    assert not (tmp_path / "student").exists()
