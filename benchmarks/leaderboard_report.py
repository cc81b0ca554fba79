"""Writes ``docs/leaderboard.md`` and its plot from the leaderboard's results file.

Per task: the teacher, then every row with its test accuracy and F1 (mean ± std over the seeds),
validation accuracy, Δ accuracy against the no-teacher student of the same init with its 95 %
paired-bootstrap interval and verdict (:mod:`benchmarks.leaderboard_stats`), wall time per seed and
the row's note. Rows not run yet, or failed, are listed as such, never left out.
"""

from __future__ import annotations

import textwrap

from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


def task_section(spec: Spec, results: Results, task: Task, command: str) -> str:
    """The Markdown of one task: heading, note, teacher line, table and row notes."""
    rows = collect(spec, results, task)
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


def plot(spec: Spec, results: Results, path: Path) -> None:
    """One panel per task: test accuracy (mean ± std over seeds) of every finished row, baselines grey,
    the teacher and each baseline as lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = [t for t in spec.tasks if any(r.entries for r in collect(spec, results, t))]
    if not tasks:
        return
    heights = [max(2.0, 0.32 * len([r for r in collect(spec, results, t) if r.entries]) + 1.2) for t in tasks]
    figure, axes = plt.subplots(len(tasks), 1, figsize=(9, sum(heights)), gridspec_kw={"height_ratios": heights}, squeeze=False)
    for axis, task in zip(axes[:, 0], tasks):
        rows = [r for r in collect(spec, results, task) if r.entries]
        rows.sort(key=lambda r: r.accuracy.mean)
        names = [r.row.name for r in rows]
        means = [r.accuracy.mean for r in rows]
        errors = [r.accuracy.std for r in rows]
        colours = ["tab:grey" if r.row.baseline else ("tab:green" if r.difference and r.difference.verdict == "better" else "tab:orange") for r in rows]
        axis.barh(names, means, xerr=errors, color=colours, capsize=2)
        teacher = results.runs.get(run_key(task.name, TEACHER_ROW, "-"))
        if teacher and teacher.get("status") == "ok":
            axis.axvline(100 * teacher["test"]["accuracy"], color="tab:blue", linestyle="--", label="teacher")
        for r in rows:
            if r.row.baseline:
                axis.axvline(r.accuracy.mean, color="tab:grey", linestyle=":", linewidth=1)
        low = min(means) - max(errors + [0]) - 2
        axis.set_xlim(max(0, low), 100 * teacher["test"]["accuracy"] + 2 if teacher and teacher.get("status") == "ok" else max(means) + 3)
        title = f"{task.title}: test accuracy, mean ± std over seeds (green: beyond noise above its no-teacher baseline, grey: baselines)"
        axis.set_title(textwrap.fill(title, 110), fontsize=8)  # one line overflowed the figure
        axis.tick_params(axis="y", labelsize=7)
        axis.legend(loc="lower right", fontsize=7)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def write_report(spec: Spec, results: Results, markdown: Path, image: Path, command: str, preamble: str) -> None:
    """Write the Markdown page (``preamble`` first, then the machine line and one section per task) and the plot."""
    sections = [preamble.strip(), "", machine_line(results), ""]
    for task in spec.tasks:
        sections += [task_section(spec, results, task, command), ""]
    markdown.parent.mkdir(parents=True, exist_ok=True)
    markdown.write_text("\n".join(sections).rstrip() + "\n")
    plot(spec, results, image)
