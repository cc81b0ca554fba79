"""Writes ``docs/leaderboard.md`` and its plot from the leaderboard's results file.

Per task: the teacher, then every row with its test accuracy and F1 (mean ± std over the seeds),
validation accuracy, Δ accuracy against the no-teacher student of the same init with its 95 %
paired-bootstrap interval and verdict (:mod:`benchmarks.leaderboard_stats`), wall time per seed and
the row's note. Rows not run yet, or failed, are listed as such, never left out.

The page opens, right after its title, with what to pick on each task (the rows whose Δ interval
excludes 0, computed here); the plot is a forest plot per task of the same Δs and intervals.
"""

from __future__ import annotations

import os

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.forest_plot import Interval, Panel, draw, write_atomically
from benchmarks.leaderboard_results import Results, run_key
from benchmarks.leaderboard_runner import TEACHER_ROW
from benchmarks.leaderboard_spec import Row, Spec, Task
from benchmarks.leaderboard_stats import Difference, Summary, paired_difference, summarize


@dataclass
class RowResult:
    """What the report shows for one row of one task."""

    row: Row
    entries: list[dict[str, Any]]
    failed: list[dict[str, Any]]
    accuracy: Summary | None = None
    f1: Summary | None = None
    validation: Summary | None = None
    wall: Summary | None = None
    cpu: Summary | None = None
    difference: Difference | None = None


def collect(spec: Spec, results: Results, task: Task) -> list[RowResult]:
    """Every row of ``task`` with its finished seeds summarised and its Δ against its baseline."""
    rows = []
    for row in spec.rows_of(task):
        stored = {e["seed"]: e for e in results.entries(task.name, row.name) if e.get("seed") in spec.seeds}
        ok = [e for e in stored.values() if e.get("status") == "ok"]
        failed = [e for e in stored.values() if e.get("status") != "ok"]
        result = RowResult(row, ok, failed)
        if ok:
            result.accuracy = summarize([100 * e["test"]["accuracy"] for e in ok])
            result.f1 = summarize([100 * e["test"]["f1"] for e in ok])
            result.validation = summarize([100 * e["validation"]["accuracy"] for e in ok])
            result.wall = summarize([e["wall_s"] for e in ok])
            if all(e.get("cpu_s") is not None for e in ok):
                result.cpu = summarize([e["cpu_s"] for e in ok])
        rows.append(result)
    by_name = {r.row.name: r for r in rows}
    for result in rows:
        baseline = spec.baseline_of(result.row, task)
        if baseline is None or not result.entries or not by_name[baseline.name].entries:
            continue
        ours = {e["seed"]: e["test"]["correct"] for e in result.entries}
        theirs = {e["seed"]: e["test"]["correct"] for e in by_name[baseline.name].entries}
        if set(ours) & set(theirs):
            result.difference = paired_difference(ours, theirs)
    return rows


def _soft_target_line(teacher: dict) -> str:
    """What the teacher's soft targets look like on the examples the rows learn from, against the test split."""
    train, test = teacher["train"], teacher["test"]
    return (
        f"On the {train['examples']:,} training examples every row learns from (part of the teacher's own training "
        f"data) the teacher is right on {100 * train['accuracy']:.1f} % and gives the true label a mean probability of "
        f"{train['true_label_probability']:.2f} (top class {train['top_probability']:.2f}); on the test split "
        f"{100 * test['accuracy']:.1f} % and {test['true_label_probability']:.2f}. This is what the soft targets carry "
        f"beyond the labels."
    )


def task_section(spec: Spec, results: Results, task: Task, command: str, rows: list[RowResult] | None = None) -> str:
    """The Markdown of one task: heading, note, teacher line, table and row notes (``rows``: ``collect``'s
    answer for ``task`` when the caller has it already)."""
    rows = collect(spec, results, task) if rows is None else rows
    lines = [f"## {task.title}", ""]
    if task.note:
        lines += [task.note, ""]
    teacher = results.runs.get(run_key(task.name, TEACHER_ROW, "-"))
    if teacher and teacher.get("status") == "ok":
        wall = f", made in {teacher['wall_s'] / 60:.0f} min" if teacher.get("wall_s") else ""
        lines += [
            f"**Teacher** (6 layers, `{task.teacher_config}`{wall}): test accuracy **{100 * teacher['test']['accuracy']:.2f}**, "
            f"F1 {100 * teacher['test']['f1']:.2f}, validation accuracy {100 * teacher['validation']['accuracy']:.2f} "
            f"({teacher['test']['examples']} test examples; one run: the teacher is made once per task and shared by every row).",
            "",
        ]
        if "train" in teacher and "true_label_probability" in teacher["train"]:
            lines += [_soft_target_line(teacher), ""]
    else:
        lines += ["**Teacher**: not scored yet.", ""]
    lines += [
        "| row | init (teacher layers) | stages | test accuracy | test F1 | Δ accuracy vs no-teacher (95 % CI) | beyond noise? | val accuracy | wall / seed | seeds |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    ordered = sorted(rows, key=lambda r: (not r.row.baseline, -(r.difference.delta if r.difference else -1e9)))
    for result in ordered:
        lines.append(_table_row(result))
    missing = [r for r in rows if len(r.entries) < len(spec.seeds)]
    notes = [(r.row.name, note) for r in ordered if (note := task.note_of(r.row))]
    if notes:
        lines += ["", "Notes:", ""]
        lines += [f"- **{name}**: {note}" for name, note in notes]
    if missing:
        names = ", ".join(f"{r.row.name} ({len(r.entries)}/{len(spec.seeds)})" for r in missing)
        lines += ["", f"Not finished yet (seeds done / planned): {names}. Continue with `{command}`."]
    failed = [(r, e) for r in rows for e in r.failed]
    if failed:
        lines += ["", "Failed runs (retried on the next run):", ""]
        lines += [f"- {r.row.name} seed {e['seed']}: {e.get('error', '')}" for r, e in failed]
    return "\n".join(lines)


def _table_row(result: RowResult) -> str:
    row = result.row
    stages = " → ".join(
        f"{s.method()}" + (f" ({s.share:.0%})" if s.share < 1 else "") for s in row.stages
    )
    name = f"**{row.name}**" if row.baseline else row.name
    if result.accuracy is None:
        status = "failed" if result.failed else "not run yet"
        return f"| {name} | {row.init_label} | {stages} | {status} | | | | | | 0 |"
    delta, verdict = "(baseline)", ""
    if result.difference is not None:
        d = result.difference
        delta = f"{d.delta:+.2f} ({d.low:+.2f} … {d.high:+.2f})"
        verdict = {"better": "yes, better", "worse": "yes, worse", "within noise": "no"}[d.verdict]
    elif not row.baseline:
        delta = "baseline not run yet"
    return (
        f"| {name} | {row.init_label} | {stages} | {_pm(result.accuracy)} | {_pm(result.f1)} | {delta} | {verdict} | "
        f"{_pm(result.validation)} | {_minutes(result)} | {result.accuracy.n} |"
    )


def _minutes(result: RowResult) -> str:
    """Wall minutes per seed, and the CPU minutes (all threads) when recorded."""
    wall = f"{result.wall.mean / 60:.1f} min"
    return f"{wall} (CPU {result.cpu.mean / 60:.1f})" if result.cpu is not None else wall


def _pm(summary: Summary | None) -> str:
    return "" if summary is None else f"{summary.mean:.2f} ± {summary.std:.2f}"


def machine_line(results: Results) -> str:
    """The machine(s), precision(s) and dates the stored runs were made on."""
    machines = {(e["machine"]["cpu"], e["machine"]["cores"], e["machine"]["precision"], e["machine"].get("torch", "?"))
                for e in results.runs.values() if e.get("machine")}
    dates = sorted(e["finished"][:10] for e in results.runs.values() if e.get("finished"))
    described = "; ".join(f"{cpu}, {cores} cores, precision {precision}, torch {torch}" for cpu, cores, precision, torch in sorted(machines))
    span = f"{dates[0]} to {dates[-1]}" if dates and dates[0] != dates[-1] else (dates[0] if dates else "no runs yet")
    return f"Machine: {described or 'no runs yet'}. Runs made {span}."


@dataclass(frozen=True)
class ForestPoint:
    """One row of a task's forest plot: its paired Δ accuracy (points) from its own no-teacher student.

    Attributes:
        row: the row's name.
        init: the teacher layers it starts from (``"0,1,2"``).
        baseline: the name of the no-teacher row it is paired with (the one with the same init).
        accuracy: the row's mean test accuracy over its seeds (points).
        delta, low, high: Δ and its 95 % interval, as in the table.
        verdict: ``"better"``, ``"worse"`` or ``"within noise"``.
    """

    row: str
    init: str
    baseline: str
    accuracy: float
    delta: float
    low: float
    high: float
    verdict: str


def forest_points(spec: Spec, task: Task, rows: list[RowResult]) -> list[ForestPoint]:
    """The rows of ``task`` that have a Δ against their baseline (``collect``'s answer), largest Δ first."""
    points = [
        ForestPoint(r.row.name, r.row.init_label, spec.baseline_of(r.row, task).name, r.accuracy.mean, r.difference.delta,
                    r.difference.low, r.difference.high, r.difference.verdict)
        for r in rows if r.difference is not None
    ]
    return sorted(points, key=lambda p: -p.delta)


def beyond_noise(points: list[ForestPoint]) -> tuple[list[ForestPoint], list[ForestPoint]]:
    """The points whose interval excludes 0: those above their baseline, then those below (order kept)."""
    return [p for p in points if p.verdict == "better"], [p for p in points if p.verdict == "worse"]


def _short_title(task: Task) -> str:
    """The task's title without its parenthesised details (``"Rotten Tomatoes"``)."""
    return task.title.split(" (")[0]


def _join(words: list[str], last: str = "and") -> str:
    """``"a"``, ``"a and b"``, ``"a, b and c"``."""
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} {last} {words[-1]}"


def _deltas(points: list[ForestPoint]) -> str:
    """``"Δ +2.53 (95 % CI +0.56 … +4.63) and +1.91 (+0.14 … +3.54)"``: the table's Δs of ``points``, in order."""
    intervals = [f"{p.delta:+.2f} ({'95 % CI ' if k == 0 else ''}{p.low:+.2f} … {p.high:+.2f})" for k, p in enumerate(points)]
    return f"Δ {_join(intervals)}"


def pick_line(spec: Spec, task: Task, rows: list[RowResult]) -> str:
    """One bullet for ``task``: per initial layer set, the rows that beat their no-teacher student beyond
    noise (or the no-teacher student when none does), the rows that lose beyond noise, and how many are
    within noise. Computed from the stored results only."""
    points = forest_points(spec, task, rows)
    if not points:
        return f"- **{_short_title(task)}**: no row has been compared with its no-teacher student yet."
    better, worse = beyond_noise(points)
    baselines = [r for r in rows if r.row.baseline and r.accuracy is not None]
    parts, plain = [], []
    for baseline in baselines:
        winners = [p for p in better if p.baseline == baseline.row.name]
        if winners:
            parts.append(
                f"Starting from teacher layers {baseline.row.init_label}, pick {_join([p.row for p in winners], 'or')}, "
                f"beyond noise above the no-teacher student from those layers ({baseline.accuracy.mean:.2f}): test accuracy "
                f"{_join([f'{p.accuracy:.2f}' for p in winners])}, {_deltas(winners)}"
            )
        else:
            plain.append(baseline)
    if plain:
        layers = _join([b.row.init_label for b in plain], "or")
        scores = _join([f"{b.accuracy.mean:.2f}" for b in plain])
        respectively = " respectively" if len(plain) > 1 else ""
        parts.append(f"Starting from teacher layers {layers}, pick the no-teacher student (labels alone; test accuracy "
                     f"{scores}{respectively}): no row beats it beyond noise")
    text = f"- **{_short_title(task)}**: {'. '.join(parts)}."
    if worse:
        text += (f" Avoid {_join([_with_init(p, points) for p in worse])}, beyond noise below their no-teacher student: "
                 f"test accuracy {_join([f'{p.accuracy:.2f}' for p in worse])}, {_deltas(worse)}.")
    else:
        text += " No row is beyond noise below its no-teacher student."
    within = len(points) - len(better) - len(worse)
    return text + f" {within} of the {len(points)} rows compared {'is' if within == 1 else 'are'} within noise."


def _with_init(point: ForestPoint, points: list[ForestPoint]) -> str:
    """The row's name, with its teacher layers when they are not the ones most rows of the task start from."""
    common = Counter(p.init for p in points).most_common(1)[0][0]
    return point.row if point.init == common else f"{point.row} (from layers {point.init})"


def pick_section(spec: Spec, collected: dict[str, list[RowResult]], image: str) -> str:
    """The page's opening section: the setting in one fixed sentence, one computed bullet per task, the
    rule on notes, and the forest plot (``image``: its path relative to the page)."""
    examples = sorted({t.train_examples for t in spec.tasks})
    budget = f"{examples[0]:,} labelled training examples" if len(examples) == 1 else "a few thousand labelled training examples"
    lines = [
        "## What to pick",
        "",
        f"Measured in one setting only: the student is 3 of the fine-tuned teacher's own 6 layers (its head "
        f"included), trained on {budget} for one epoch. There the no-teacher student is already strong and "
        "most rows are within noise of it; a student further from the teacher, more data or general "
        "distillation are not measured here. From the tables below (Δ: paired difference from the no-teacher "
        "student with the same initial layers, 95 % interval):",
        "",
    ]
    lines += [pick_line(spec, task, collected[task.name]) for task in spec.tasks]
    lines += [
        "",
        "A row that does not beat its no-teacher student keeps its note under its task's table. The plot shows "
        "every row's Δ with its interval, sorted by Δ (filled: the interval excludes 0).",
        "",
        f"![Δ accuracy of every row from its own no-teacher student, per task]({image})",
    ]
    return "\n".join(lines)


def plot(spec: Spec, collected: dict[str, list[RowResult]], path: Path) -> None:
    """A forest plot per task (``collect``'s answers by task name), one panel each, written atomically:
    every row's Δ from its own no-teacher student with its 95 % interval, sorted by Δ, a line at 0."""
    panels = []
    for task in spec.tasks:
        points = forest_points(spec, task, collected[task.name])
        title = (f"{_short_title(task)}: Δ test accuracy from each row's own no-teacher student (same initial layers), "
                 "paired by seed, 95 % interval")
        intervals = [Interval(_with_init(p, points), p.delta, p.low, p.high, p.verdict) for p in points]
        panels.append(Panel(title, "accuracy difference from the no-teacher student (points)", intervals))
    # One scale for every task, as the tables share one unit.
    limit = max((max(abs(i.low), abs(i.high)) for panel in panels for i in panel.intervals), default=0.0) + 0.5
    draw([Panel(p.title, p.xlabel, p.intervals, limit) for p in panels], path)


def _split_title(preamble: str) -> tuple[str, str]:
    """The preamble's first line when it is a Markdown title, and the rest (``""`` and all otherwise)."""
    text = preamble.strip()
    first, _, rest = text.partition("\n")
    return (first, rest.strip()) if first.startswith("# ") else ("", text)


def write_report(spec: Spec, results: Results, markdown: Path, image: Path, command: str, preamble: str) -> None:
    """Write the Markdown page (the preamble's title, what to pick, the rest of ``preamble``, the machine
    line and one section per task) and the forest plot, both atomically."""
    collected = {task.name: collect(spec, results, task) for task in spec.tasks}
    title, rest = _split_title(preamble)
    picture = Path(os.path.relpath(image.resolve(), markdown.resolve().parent)).as_posix()
    sections = ([title, ""] if title else []) + [pick_section(spec, collected, picture), ""]
    sections += ([rest, ""] if rest else []) + [machine_line(results), ""]
    for task in spec.tasks:
        sections += [task_section(spec, results, task, command, collected[task.name]), ""]
    text = "\n".join(sections).rstrip() + "\n"
    write_atomically(markdown, lambda temporary: temporary.write_text(text))
    plot(spec, collected, image)
