"""Every method × model-family cell trains one step or is refused at construction, and the README's
support table is exactly what the cells produce (see ``tests/support_matrix.py``)."""

from __future__ import annotations

import pytest

from tests.support_matrix import cells, readme_table, run_cell, table

OUTCOMES: dict = {}


@pytest.mark.parametrize("cell", cells(), ids=lambda cell: "-".join(cell))
def test_cell_trains_or_is_refused_at_construction(cell, tmp_path_factory):
    OUTCOMES[cell] = run_cell(*cell, tmp_path_factory.getbasetemp())


def test_readme_support_table_is_the_matrix(tmp_path_factory):
    for cell in cells():  # cells deselected in this session run here
        if cell not in OUTCOMES:
            OUTCOMES[cell] = run_cell(*cell, tmp_path_factory.getbasetemp())
    assert readme_table() == table(OUTCOMES), "README's support table is stale: run `python -m tests.support_matrix`"
