"""Clear errors: malformed rows name the file and line; missing data and bad arguments say how to fix."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from lightning_kd.data import GlueDataModule, PretrainDataModule
from tests.data.layouts import write_glue, write_superglue


def _module(task: str, tiny_tokenizer_dir: Path, cache_dir: str, **kwargs) -> GlueDataModule:
    return GlueDataModule(task, str(tiny_tokenizer_dir), cache_dir=cache_dir, **kwargs)


def _expect_located(error: pytest.ExceptionInfo, path: Path, line: int, what: str) -> None:
    message = str(error.value)
    assert str(path) in message and f"line {line}:" in message and re.search(what, message), message


@pytest.mark.parametrize(
    ("task", "name", "bad_line", "what"),
    [
        ("sst2", "train.tsv", "a sentence with a tab\tinside\t1", "expected 2 tab-separated columns"),
        ("cola", "train.tsv", "gj04\t1\tsentence without marker", "expected 4 tab-separated columns"),
        ("mnli", "train.tsv", "\t".join(["0"] * 11) + "\tmaybe", "label 'maybe' is not one of"),
        ("stsb", "train.tsv", "\t".join(["0"] * 9) + "\thigh", "not a number"),
        ("mrpc", "train.tsv", "2\t1\t2\ta\tb", r"label id 2 is outside \[0, 2\)"),
    ],
)
def test_malformed_glue_rows(tmp_path: Path, tiny_tokenizer_dir: Path, cache_dir: str, task: str, name: str,
                             bad_line: str, what: str) -> None:
    write_glue(tmp_path, task)
    path = tmp_path / {"sst2": "SST-2", "cola": "CoLA", "mnli": "MNLI", "stsb": "STS-B", "mrpc": "MRPC"}[task] / name
    lines = path.read_text().splitlines()
    lines.insert(2, bad_line)  # third physical line
    path.write_text("\n".join(lines) + "\n")
    data = _module(task, tiny_tokenizer_dir, cache_dir, data_dir=str(tmp_path))
    with pytest.raises(ValueError) as error:
        data.setup("fit")
    _expect_located(error, path, 3, what)


def test_glue_header_must_have_the_columns(tmp_path: Path) -> None:
    from lightning_kd.data.labels import LabelEncoder
    from lightning_kd.data.readers import iter_task_file
    from lightning_kd.data.tasks import get_task

    path = tmp_path / "train.tsv"
    path.write_text("text\tlabel\ngood\t1\n")
    with pytest.raises(ValueError) as error:
        list(iter_task_file(path, get_task("sst2"), LabelEncoder(2).encode))
    _expect_located(error, path, 1, "header lacks column")


@pytest.mark.parametrize(
    ("task", "bad_record", "what"),
    [
        ("boolq", '{"question": "q", "label": true}', "missing field 'passage'"),
        ("cb", '{"premise": "p", "hypothesis": "h", "label": "perhaps"}', "label 'perhaps'"),
        ("copa", '{"premise": "p", "choice1": "a", "choice2": "b", "question": "why", "label": 0}',
         "'cause' or 'effect'"),
        ("wsc", '{"text": "t", "label": true}', "missing field 'target'"),
        ("multirc", '{"passage": {"text": "p", "questions": [{"question": "q", "answers": [{"text": "a"}]}]}}',
         "missing label"),
        ("wic", '{"word": "w", "sentence1": "a", "sentence2": ', "invalid JSON"),
        ("superglue-rte", '["premise", "hypothesis"]', "expected a JSON object"),
    ],
)
def test_malformed_superglue_records(tmp_path: Path, tiny_tokenizer_dir: Path, cache_dir: str, task: str,
                                     bad_record: str, what: str) -> None:
    write_superglue(tmp_path, task)
    path = next(tmp_path.glob("*/train.jsonl"))
    path.write_text(path.read_text() + "\n" + bad_record + "\n")  # a blank line, then the bad record
    bad_line = len(path.read_text().splitlines())
    with pytest.raises(ValueError) as error:
        _module(task, tiny_tokenizer_dir, cache_dir, data_dir=str(tmp_path)).setup("fit")
    _expect_located(error, path, bad_line, what)


def test_malformed_user_files(tmp_path: Path, tiny_tokenizer_dir: Path, cache_dir: str) -> None:
    csv_path = tmp_path / "train.csv"
    csv_path.write_text('text,label\n"good\nfilm",1\nbad film\n')  # the record on line 2 spans two lines
    with pytest.raises(ValueError) as error:
        _module("custom", tiny_tokenizer_dir, cache_dir, train_file=str(csv_path), label_names=["0", "1"]).setup("fit")
    _expect_located(error, csv_path, 4, "expected 2 columns")

    jsonl = tmp_path / "train.jsonl"
    jsonl.write_text(json.dumps({"text": "good", "label": 1}) + "\n" + json.dumps({"label": 0}) + "\n")
    with pytest.raises(ValueError) as error:
        _module("custom", tiny_tokenizer_dir, cache_dir, train_file=str(jsonl)).num_labels  # noqa: B018
    _expect_located(error, jsonl, 2, "missing field 'text'")

    wrong_column = tmp_path / "cols.csv"
    wrong_column.write_text("sentence,label\ngood,1\n")
    with pytest.raises(ValueError) as error:
        _module("custom", tiny_tokenizer_dir, cache_dir, train_file=str(wrong_column), text_columns=["review"],
                label_names=["0", "1"]).setup("fit")
    _expect_located(error, wrong_column, 1, r"no column\(s\) \['review'\]")


def test_missing_files_say_what_was_expected(tmp_path: Path, tiny_tokenizer_dir: Path, cache_dir: str) -> None:
    (tmp_path / "SST-2").mkdir()
    with pytest.raises(FileNotFoundError, match=r"SST-2/train\.tsv.*data_dir.*hf_dataset"):
        _module("sst2", tiny_tokenizer_dir, cache_dir, data_dir=str(tmp_path)).setup("fit")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        _module("boolq", tiny_tokenizer_dir, cache_dir, data_dir=str(tmp_path / "nowhere")).setup("fit")
    with pytest.raises(FileNotFoundError, match="missing.csv"):
        _module("custom", tiny_tokenizer_dir, cache_dir, train_file=str(tmp_path / "missing.csv")).setup("fit")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"task": "sst3", "data_dir": "x"}, "Valid tasks: cola, sst2"),
        ({"task": "sst2"}, r"No data for task 'sst2'.*data_dir=.*hf_dataset=.*train_file="),
        ({"task": "custom"}, "train_file=.*hf_dataset="),
        ({"task": "sst2", "data_dir": "x", "hf_dataset": "glue"}, "Conflicting data sources"),
        ({"task": "custom", "data_dir": "x"}, "data_dir reads the GLUE/SuperGLUE layouts"),
        ({"task": "sst2", "data_dir": "x", "text_columns": ["a"]}, "text_columns/label_column describe your own"),
        ({"task": "custom", "train_file": "a.csv", "text_columns": ["a", "b", "c"]}, "1 or 2 columns"),
        ({"task": "stsb", "train_file": "a.tsv", "label_names": ["a", "b"]}, "regression"),
        ({"task": "sst2", "train_file": "a.tsv", "label_names": ["a", "b", "c"]}, "2 classes"),
        ({"task": "sst2", "data_dir": "x", "hf_config": "sst2"}, "hf_config only applies"),
        ({"task": "sst2", "data_dir": "x", "batch_size": 0}, "batch_size must be a positive"),
        ({"task": "sst2", "data_dir": "x", "max_length": -1}, "max_length must be a positive"),
    ],
)
def test_arguments_are_checked_in_init(tiny_tokenizer_dir: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        GlueDataModule(tokenizer=str(tiny_tokenizer_dir), **kwargs)


def test_init_reads_nothing() -> None:
    # Neither the tokenizer nor the data exist: construction still succeeds; only setup reads.
    data = GlueDataModule("sst2", "no/such/tokenizer", data_dir="/no/such/glue")
    assert data.tokenizer_name == "no/such/tokenizer" and data.num_labels == 2 and not data.datasets


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "Pass exactly one corpus"),
        ({"train_files": ["a.txt"], "hf_dataset": "wiki"}, "Pass exactly one corpus"),
        ({"hf_dataset": "wiki", "validation_files": ["b.txt"]}, "validation_files go with train_files"),
        ({"train_files": ["a.txt"], "mlm_probability": 1.5}, "mlm_probability"),
        ({"train_files": ["a.txt"], "block_size": 2}, "block_size"),
        ({"train_files": ["a.txt"], "validation_fraction": 0.0}, "validation_fraction"),
        ({"train_files": ["a.txt"], "streaming": True, "num_proc": 2}, "streaming"),
    ],
)
def test_pretrain_arguments_are_checked_in_init(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PretrainDataModule("tok", **kwargs)


def test_pretrain_missing_file(tmp_path: Path, tiny_tokenizer_dir: Path) -> None:
    data = PretrainDataModule(str(tiny_tokenizer_dir), train_files=[str(tmp_path / "corpus.txt")])
    with pytest.raises(FileNotFoundError, match=r"corpus\.txt.*train_files="):
        data.setup("fit")
