"""Fixtures for the data tests (the tokenizer fixtures come from ``tests/conftest.py``)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def cache_dir(tmp_path: Path) -> str:
    """A per-test ``datasets`` cache, so tests never share or leave Arrow files behind."""
    return str(tmp_path / "hf_cache")
