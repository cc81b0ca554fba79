"""Files that are not UTF-8, and splits without rows, fail naming the file (and the line) and the fix."""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import pytest

from lightning_kd.data import GlueDataModule, PretrainDataModule
from lightning_kd.data.readers.lines import DataFileError, first_undecodable
from tests.data.layouts import write_glue, write_superglue

LATIN1 = "café".encode("cp1252")  # b"caf\xe9": not UTF-8


def _insert_bytes(path: Path, line: int, raw: bytes) -> None:
    """Put ``raw`` (a whole line) at the 1-based ``line`` of ``path``."""
    lines = path.read_bytes().splitlines()
    lines.insert(line - 1, raw)
    path.write_bytes(b"\n".join(lines) + b"\n")


def _assert_not_utf8(error: pytest.ExceptionInfo, path: Path, line: int) -> None:
    message = str(error.value)
    assert isinstance(error.value, DataFileError) and error.value.line == line, message
    assert message.startswith(f"{path}, line {line}: ") and "0xe9" in message and "re-encode the file as UTF-8" in message, message


def _module(tokenizer: Path, cache_dir: str, task: str = "text-classification", **kwargs) -> GlueDataModule:
    return GlueDataModule(task, str(tokenizer), cache_dir=cache_dir, **kwargs)


@pytest.mark.parametrize(
    ("name", "header", "row"),
    [
        ("train.csv", b"text,label", b"a fine movie,good"),
        ("train.tsv", b"text\tlabel", b"a fine movie\tgood"),
        ("train.csv.gz", b"text,label", b"a fine movie,good"),
        ("train.jsonl", None, b'{"text": "a fine movie", "label": "good"}'),
    ],
)
def test_user_files_that_are_not_utf8_name_the_line(tmp_path, tiny_tokenizer_dir, cache_dir, name, header, row):
    lines = ([header] if header else []) + [row, row.replace(b"good", b"bad"), row.replace(b"fine", LATIN1), row]
    raw = b"\n".join(lines) + b"\n"
    path = tmp_path / name
    path.write_bytes(gzip.compress(raw) if name.endswith(".gz") else raw)
    bad_line = lines.index(row.replace(b"fine", LATIN1)) + 1
    with pytest.raises(DataFileError) as error:  # the classes are read from the training labels
        _ = _module(tiny_tokenizer_dir, cache_dir, train_file=str(path), text_columns=["text"]).num_labels
    _assert_not_utf8(error, path, bad_line)
    with pytest.raises(DataFileError) as error:  # and the rows themselves
        _module(tiny_tokenizer_dir, cache_dir, train_file=str(path), text_columns=["text"], label_names=["bad", "good"]).setup("fit")
    _assert_not_utf8(error, path, bad_line)


def test_a_bad_byte_far_into_a_large_file_is_found_on_its_line(tmp_path, tiny_tokenizer_dir, cache_dir):
    # The decoder works in 8 KiB blocks: its own position says nothing about lines.
    path = tmp_path / "train.csv"
    path.write_bytes(b"text,label\n" + b"".join(b"a fine movie number %d,good\n" % i for i in range(2000)))
    _insert_bytes(path, 1500, b"a " + LATIN1 + b" movie,bad")
    with pytest.raises(DataFileError) as error:
        _module(tiny_tokenizer_dir, cache_dir, train_file=str(path), text_columns=["text"], label_names=["bad", "good"]).setup("fit")
    _assert_not_utf8(error, path, 1500)
    assert "(byte 6 of the line)" in str(error.value)


def test_glue_and_superglue_layouts_name_the_line(tmp_path, tiny_tokenizer_dir, cache_dir):
    write_glue(tmp_path, "sst2")
    glue = tmp_path / "SST-2" / "train.tsv"
    _insert_bytes(glue, 3, b"a " + LATIN1 + b" movie\t1")
    with pytest.raises(DataFileError) as error:
        _module(tiny_tokenizer_dir, cache_dir, "sst2", data_dir=str(tmp_path)).setup("fit")
    _assert_not_utf8(error, glue, 3)

    write_superglue(tmp_path, "boolq")
    superglue = tmp_path / "BoolQ" / "val.jsonl"
    _insert_bytes(superglue, 2, b'{"question": "is it ' + LATIN1 + b'", "passage": "p", "idx": 9, "label": true}')
    with pytest.raises(DataFileError) as error:
        _module(tiny_tokenizer_dir, cache_dir, "boolq", data_dir=str(tmp_path)).setup("validate")
    _assert_not_utf8(error, superglue, 2)


def test_first_undecodable_counts_lines_and_bytes(tmp_path):
    path = tmp_path / "mixed.txt"
    path.write_bytes("naïve line\r\n".encode() + b"second\n" + b"x\xc3 broken sequence\n")
    assert first_undecodable(path) == (3, 2, b"\xc3")
    path.write_bytes("all fine: café\n".encode())
    assert first_undecodable(path) is None


@pytest.mark.parametrize("suffix", [".csv", ".tsv"])
def test_a_header_only_training_file_names_the_file_and_split(tmp_path, tiny_tokenizer_dir, cache_dir, suffix):
    path = tmp_path / f"train{suffix}"
    path.write_text("text,label\n" if suffix == ".csv" else "text\tlabel\n\n")
    message = rf"^{re.escape(str(path))}: no examples for the train split"
    with pytest.raises(DataFileError, match=message):  # classes inferred from the (absent) training labels
        _ = _module(tiny_tokenizer_dir, cache_dir, train_file=str(path), text_columns=["text"]).num_labels
    with pytest.raises(DataFileError, match=message):
        _module(tiny_tokenizer_dir, cache_dir, train_file=str(path), text_columns=["text"], label_names=["bad", "good"]).setup("fit")


def test_empty_splits_of_the_standard_layouts_name_file_and_split(tmp_path, tiny_tokenizer_dir, cache_dir):
    write_glue(tmp_path, "sst2")
    dev = tmp_path / "SST-2" / "dev.tsv"
    dev.write_text("sentence\tlabel\n")
    with pytest.raises(DataFileError, match=rf"^{re.escape(str(dev))}: no examples for the validation split"):
        _module(tiny_tokenizer_dir, cache_dir, "sst2", data_dir=str(tmp_path)).setup("fit")

    write_superglue(tmp_path, "cb")
    train = tmp_path / "CB" / "train.jsonl"
    train.write_text("\n\n")
    with pytest.raises(DataFileError, match=rf"^{re.escape(str(train))}: no examples for the train split"):
        _module(tiny_tokenizer_dir, cache_dir, "cb", data_dir=str(tmp_path)).setup("fit")


def test_pretraining_corpora_name_the_file(tmp_path, tiny_tokenizer_dir):
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(b"the movie was good\nthe film was bad\n" + b"a " + LATIN1 + b" scene\n")
    data = PretrainDataModule(str(tiny_tokenizer_dir), train_files=[str(corpus)], block_size=8, cache_dir=str(tmp_path / "cache"))
    with pytest.raises(DataFileError) as error:
        data.setup("fit")
    _assert_not_utf8(error, corpus, 3)

    empty = tmp_path / "empty.txt"
    empty.write_text("")
    data = PretrainDataModule(str(tiny_tokenizer_dir), train_files=[str(empty)], block_size=8, cache_dir=str(tmp_path / "cache2"))
    with pytest.raises(DataFileError, match=rf"^{re.escape(str(empty))}: no text for the train split"):
        data.setup("fit")
