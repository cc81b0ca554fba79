"""A model directory zipped and cut into parts (``embedded:all-mpnet-base-v2``), extracted once, atomically.

Everything runs on a tiny archive made here and split into parts in ``tmp_path``; the real five
packages are never needed.
"""

from __future__ import annotations

import io
import json
import multiprocessing
import os
import random
import sys
import time
import zipfile
from pathlib import Path

import pytest

from lightning_kd.models.split_archive import (
    MARKER,
    ConcatenatedParts,
    extracted_directory,
    is_extracted,
    model_prefix,
    packaged_parts,
)

#: The tiny model directory inside the archive, as sentence-transformers lays one out (plus clutter).
MEMBERS = {
    "tiny-model/config.json": b'{"model_type": "mpnet"}',
    "tiny-model/model.safetensors": random.Random(0).randbytes(10_000),  # incompressible, so parts are not empty
    "tiny-model/tokenizer.json": b'{"version": "1.0"}',
    "tiny-model/vocab.txt": b"[PAD]\nhello\n",
    "tiny-model/1_Pooling/config.json": b'{"pooling_mode_mean_tokens": true}',
    "tiny-model/desktop.ini": b"[.ShellClassInfo]",
    "tiny-model/1_Pooling/desktop.ini": b"[.ShellClassInfo]",
}


def make_archive(members: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        archive.writestr("tiny-model/", b"")  # a directory entry, as archivers write them
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def split(data: bytes, directory: Path, sizes: tuple[int, ...] = (1000, 3000)) -> list[Path]:
    """Cut ``data`` into parts named like the real ones (``archive.zip.001`` ...): ``sizes``, then the rest."""
    directory.mkdir(parents=True, exist_ok=True)
    bounds = [0, *(sum(sizes[: i + 1]) for i in range(len(sizes))), len(data)]
    assert bounds[-2] < len(data), "the archive must be longer than the given part sizes"
    parts = []
    for index, (start, end) in enumerate(zip(bounds, bounds[1:]), start=1):
        path = directory / f"archive.zip.{index:03d}"
        path.write_bytes(data[start:end])
        parts.append(path)
    return parts


@pytest.fixture
def parts(tmp_path) -> list[Path]:
    return split(make_archive(MEMBERS), tmp_path / "packages")


def test_parts_read_as_one_seekable_file(tmp_path):
    data = bytes(range(256)) * 20
    pieces = split(data, tmp_path, sizes=(7, 1000, 1))
    with ConcatenatedParts(pieces) as view:
        assert view.read() == data
        view.seek(5)
        assert view.read(10) == data[5:15]  # across the first boundary
        view.seek(-3, io.SEEK_END)
        assert view.read(100) == data[-3:] and view.read(1) == b""
        view.seek(1006)
        assert view.tell() == 1006 and view.read(3) == data[1006:1009]


def test_extraction_writes_the_model_directory(tmp_path, parts):
    notes = []
    target = extracted_directory(parts, tmp_path / "cache" / "tiny", note=notes.append)
    assert target == tmp_path / "cache" / "tiny"
    assert len(notes) == 1 and "extracting archive.zip.001 (+2 parts) once into" in notes[0]
    for name, data in MEMBERS.items():
        relative = name.removeprefix("tiny-model/")
        if relative.endswith("desktop.ini"):
            assert not (target / relative).exists(), "operating-system clutter is not a model file"
        else:
            assert (target / relative).read_bytes() == data
    marker = json.loads((target / MARKER).read_text())
    assert marker["archive_folder"] == "tiny-model"
    assert marker["parts"] == [[p.name, p.stat().st_size] for p in parts]
    assert sorted(p.name for p in target.parent.iterdir()) == [".tiny.lock", "tiny"]


def test_second_call_reuses_the_directory_and_a_new_release_is_extracted_again(tmp_path, parts):
    notes = []
    first = extracted_directory(parts, tmp_path / "tiny", note=notes.append)
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    assert extracted_directory(parts, tmp_path / "tiny", note=notes.append) == first
    assert len(notes) == 1 and (first / "model.safetensors").stat().st_mtime_ns == stamp
    newer = split(make_archive({**MEMBERS, "tiny-model/vocab.txt": b"[PAD]\nhello\nworld\n"}), tmp_path / "v2")
    extracted_directory(newer, tmp_path / "tiny", note=notes.append)
    assert len(notes) == 2 and (first / "vocab.txt").read_bytes().endswith(b"world\n")
    assert is_extracted(first, newer) and not is_extracted(first, parts)


def test_a_half_written_leftover_is_rebuilt(tmp_path, parts):
    target = tmp_path / "tiny"
    leftover = tmp_path / ".tiny.partial-999-deadbeef"
    leftover.mkdir()
    (leftover / "model.safetensors").write_bytes(b"torn")
    target.mkdir()  # a killed run's directory without the completion marker
    (target / "config.json").write_text("{}")
    assert not is_extracted(target, parts)
    extracted_directory(parts, target, note=lambda _: None)
    assert is_extracted(target, parts) and not leftover.exists()
    assert (target / "model.safetensors").read_bytes() == MEMBERS["tiny-model/model.safetensors"]


def test_a_damaged_part_publishes_nothing(tmp_path):
    data = bytearray(make_archive(MEMBERS, compression=zipfile.ZIP_STORED))
    at = bytes(data).index(MEMBERS["tiny-model/model.safetensors"][:64]) + 100
    data[at] ^= 0xFF  # one flipped byte inside the weights: the member's CRC no longer matches
    damaged = split(bytes(data), tmp_path / "packages")
    with pytest.raises(zipfile.BadZipFile):
        extracted_directory(damaged, tmp_path / "tiny", note=lambda _: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".tiny.lock", "packages"]


def test_parts_that_are_no_zip_or_hold_no_model_are_explained(tmp_path):
    garbage = split(bytes(5000), tmp_path / "garbage")
    with pytest.raises(ValueError, match="do not form a zip archive"):
        extracted_directory(garbage, tmp_path / "a", note=lambda _: None)
    no_model = split(make_archive({"notes/readme.txt": bytes(5000)}, zipfile.ZIP_STORED), tmp_path / "plain")
    with pytest.raises(ValueError, match="no model directory"):
        extracted_directory(no_model, tmp_path / "b", note=lambda _: None)
    with pytest.raises(FileNotFoundError, match="archive.zip.009"):
        extracted_directory([*garbage, tmp_path / "archive.zip.009"], tmp_path / "c")


def test_the_shallowest_model_folder_is_chosen_and_nothing_escapes_it(tmp_path):
    names = ["m/config.json", "m/model.safetensors", "m/vocab.txt", "m/sub/config.json",
             "m/sub/pytorch_model.bin", "m/sub/tokenizer.json", "other/config.json"]
    assert str(model_prefix(names)) == "m"
    assert str(model_prefix(["config.json", "model.safetensors", "tokenizer.json"])) == "."
    members = {"config.json": b"{}", "model.safetensors": b"w", "tokenizer.json": b"{}", "../escaped.txt": b"x"}
    parts = split(make_archive(members, zipfile.ZIP_STORED), tmp_path / "packages", sizes=(10,))
    target = extracted_directory(parts, tmp_path / "out" / "model", note=lambda _: None)
    assert (target / "config.json").is_file() and not (tmp_path / "out" / "escaped.txt").exists()


def _extract_in_child(parts: list[str], target: str, log: str) -> None:
    def slow_note(_: str) -> None:  # runs under the lock, only in the process that extracts
        with open(log, "a") as handle:
            handle.write(f"{os.getpid()}\n")
        time.sleep(1.0)

    extracted_directory(parts, target, note=slow_note)


@pytest.mark.skipif(sys.platform == "win32", reason="fork and flock")
def test_concurrent_processes_extract_once_and_never_see_half_a_directory(tmp_path, parts):
    target, log = tmp_path / "tiny", tmp_path / "extractions.log"
    context = multiprocessing.get_context("fork")
    children = [
        context.Process(target=_extract_in_child, args=([str(p) for p in parts], str(target), str(log)))
        for _ in range(2)
    ]
    for child in children:
        child.start()
    while any(child.is_alive() for child in children):
        if target.exists():  # whenever the directory is there, it is whole
            assert is_extracted(target, parts)
        time.sleep(0.01)
    assert all(child.exitcode == 0 for child in children)
    assert len(log.read_text().split()) == 1, "the second process waited and reused the first one's directory"


def test_a_missing_part_package_names_the_install_command(parts):
    found = [("pytest", "pytest/__init__.py")]  # an installed distribution standing in for part 001
    absent = [("lightning-kd-no-such-part-002", "x/archive.zip.002"), ("pytest", "pytest/no_such_part.zip.003")]
    with pytest.raises(FileNotFoundError) as error:
        packaged_parts(found + absent, "make install-cross", "The embedded 'tiny'")
    message = str(error.value)
    assert "split over 3 packages" in message and "Install all parts with: make install-cross" in message
    assert "lightning-kd-no-such-part-002" in message and message.count("pytest") == 1
    assert packaged_parts(found, "make install-cross", "x")[0].name == "__init__.py"
