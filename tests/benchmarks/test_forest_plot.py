"""The boards' forest plot: one panel per table, written atomically, off-scale rows drawn at the edge."""

from __future__ import annotations

from pathlib import Path

from benchmarks.forest_plot import Interval, Panel, draw

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_draw_writes_one_png_and_leaves_no_temporary_file(tmp_path: Path):
    panel = Panel("a table", "difference", [Interval("better row", 2.0, 0.5, 3.5, "better"),
                                            Interval("noisy row", 0.2, -1.0, 1.4, "within noise"),
                                            Interval("wrecked row", -400.0, -420.0, -380.0, "worse")], limit=5.0)
    image = tmp_path / "board.png"
    draw([panel, Panel("empty table", "difference", [])], image)
    assert image.read_bytes().startswith(PNG_SIGNATURE)
    assert [p.name for p in tmp_path.iterdir()] == ["board.png"]


def test_nothing_is_written_when_no_panel_has_rows(tmp_path: Path):
    draw([Panel("empty table", "difference", [])], tmp_path / "board.png")
    assert not (tmp_path / "board.png").exists()
