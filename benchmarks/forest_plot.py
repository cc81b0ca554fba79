"""Forest plots of paired differences, one panel per table, for every board's page.

A board states each row against its own baseline (the no-teacher student of the same setting) as a paired
difference with a 95 % interval; the plot draws exactly those numbers, largest first, with a line at zero, so
that what the table means is seen at once: a row whose interval holds 0 is within noise, however good its
absolute score looks. Points whose interval runs past the panel's limit (a recipe that wrecks the student)
are drawn at the edge as an arrow, their numbers printed beside them as for every row.
"""

from __future__ import annotations

import os
import tempfile
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# verdict: (legend label, marker, colour, filled). "better" is towards the baseline's improvement, whatever
# the sign: a higher accuracy, a lower perplexity.
MARKERS = {
    "better": ("better than the baseline", "o", "tab:green", True),
    "within noise": ("within noise: interval holds 0", "o", "tab:grey", False),
    "worse": ("worse than the baseline", "s", "tab:red", True),
}


@dataclass(frozen=True)
class Interval:
    """One row's paired difference from its baseline: ``delta`` with its 95 % interval ``low … high``."""

    label: str
    delta: float
    low: float
    high: float
    verdict: str  # a key of MARKERS


@dataclass(frozen=True)
class Panel:
    """One table's rows (drawn top to bottom in this order), the panel's title and x-axis label, and the
    x-axis half-width (``None``: wide enough for every interval)."""

    title: str
    xlabel: str
    intervals: Sequence[Interval]
    limit: float | None = None


def write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write`` on a temporary file beside ``path``, then move it onto ``path`` in one step, so a
    reader never sees a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
    os.close(handle)
    temporary = Path(name)
    temporary.chmod(path.stat().st_mode & 0o777 if path.exists() else 0o644)  # mkstemp's file is private (0600)
    try:
        write(temporary)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def draw(panels: Sequence[Panel], path: Path) -> None:
    """Write the panels that have rows, stacked, as one image at ``path`` (atomically); nothing when none has."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [panel for panel in panels if panel.intervals]
    if not panels:
        return
    heights = [0.27 * len(panel.intervals) + 1.7 for panel in panels]
    figure, axes = plt.subplots(len(panels), 1, figsize=(9.5, sum(heights)), gridspec_kw={"height_ratios": heights}, squeeze=False)
    for axis, panel in zip(axes[:, 0], panels):
        _panel(axis, panel)
    figure.tight_layout()
    write_atomically(path, lambda temporary: figure.savefig(temporary, dpi=110, format=path.suffix.lstrip(".") or "png"))
    plt.close(figure)


def _panel(axis: Any, panel: Panel) -> None:
    from matplotlib.transforms import blended_transform_factory, offset_copy

    intervals = list(panel.intervals)
    limit = panel.limit or max(max(abs(i.low), abs(i.high)) for i in intervals) * 1.05 + 0.5
    position = {k: len(intervals) - 1 - k for k in range(len(intervals))}
    for verdict, (label, marker, colour, filled) in MARKERS.items():
        chosen = [(k, i) for k, i in enumerate(intervals) if i.verdict == verdict]
        if not chosen:
            continue
        inside = [(k, i) for k, i in chosen if -limit <= i.delta <= limit]
        if inside:
            axis.errorbar(
                [i.delta for _, i in inside], [position[k] for k, _ in inside],
                xerr=[[i.delta - max(i.low, -limit) for _, i in inside], [min(i.high, limit) - i.delta for _, i in inside]],
                fmt=marker, color=colour, markerfacecolor=colour if filled else "white", markersize=5, capsize=2,
                linewidth=1.2, label=f"{label} ({len(chosen)})",
            )
        labelled = bool(inside)
        for k, i in chosen:
            if not -limit <= i.delta <= limit:  # off the scale: an arrow at the edge it points past
                edge = limit if i.delta > 0 else -limit
                axis.plot([edge], [position[k]], marker=">" if i.delta > 0 else "<", color=colour, markersize=7,
                          linestyle="none", label=None if labelled else f"{label} ({len(chosen)})")
                labelled = True
    axis.axvline(0, color="black", linewidth=1)
    axis.set_yticks(range(len(intervals)))
    axis.set_yticklabels([i.label for i in reversed(intervals)], fontsize=8)
    axis.set_ylim(-0.7, len(intervals) - 0.3)
    axis.set_xlim(-limit, limit)
    axis.grid(axis="x", color="0.9", linewidth=0.8)
    axis.set_axisbelow(True)
    numbers = blended_transform_factory(axis.transAxes, axis.transData)
    for k, i in enumerate(intervals):
        axis.text(1.01, position[k], f"{i.delta:+.2f} ({i.low:+.2f} … {i.high:+.2f})", transform=numbers, fontsize=7, va="center")
    axis.set_xlabel(panel.xlabel, fontsize=8)
    axis.set_title(textwrap.fill(panel.title, 100), fontsize=9)
    axis.tick_params(axis="x", labelsize=8)
    # Below the axis, not over it: "best" still covers a row when the rows span the whole scale.
    below = offset_copy(axis.transAxes, fig=axis.figure, y=-30, units="points")  # under the tick labels and x label
    axis.legend(loc="upper center", bbox_to_anchor=(0.5, 0.0), bbox_transform=below, ncol=3, fontsize=7, frameon=False)
