"""Board 2: a strong teacher of another tokenizer, a small pretrained student, full and scarce labels.

Every row of a section fits the same student (a config plus ``--key=value`` overrides, ``benchmarks/transfer_board.yaml``)
with each seed in a process of its own, exports it, and scores the export on the task's validation split (where
recipes are chosen) and once on its test split, keeping per-example correctness so that a row's paired difference
from its section's baseline row gets the leaderboard's two-level bootstrap interval over seeds and test examples
(:mod:`benchmarks.leaderboard_stats`). Scoring is :func:`benchmarks.leaderboard_eval.evaluate_export`, as on the
method board.

Usage (from the repository root)::

    python -m benchmarks.transfer_board plan
    python -m benchmarks.transfer_board run [--row NAME] [--seed S]
    python -m benchmarks.transfer_board report        # docs/leaderboard_transfer.md and its plot (.png)

Resumable: finished runs live in ``benchmarks/transfer_board_results.json`` and are skipped.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import yaml

from benchmarks.forest_plot import Interval, Panel, draw, write_atomically
from benchmarks.leaderboard_eval import evaluate_export
from benchmarks.leaderboard_runner import cli_value
from benchmarks.leaderboard_stats import Summary, paired_difference, summarize
from benchmarks.lm_board import machine

SPEC = Path("benchmarks/transfer_board.yaml")
RESULTS = Path("benchmarks/transfer_board_results.json")
OUTPUTS = Path("outputs/transfer_board")
PAGE = Path("docs/leaderboard_transfer.md")


def rows_of(spec: dict) -> list[tuple[dict, dict]]:
    """``(row, section)`` for every row of the board, in order."""
    return [(row, section) for section in spec["sections"] for row in section["rows"]]


def task_of(spec: dict, section: dict) -> tuple[str, dict]:
    """The task a section's rows are scored on and its data settings: the section's own, else the board's."""
    return section.get("task", spec["task"]), {**(spec.get("data") or {}), **(section.get("data") or {})}


def run_directory(row: dict, seed: int) -> Path:
    return OUTPUTS / "".join(c if c.isalnum() else "_" for c in row["name"]) / f"seed{seed}"


def fit_and_score(spec: dict, section: dict, row: dict, seed: int) -> dict:
    """Fit ``row`` with ``seed`` (a ``lightning-kd fit`` subprocess, its log beside the run) and score the export.

    The section's ``overrides`` (e.g. another task and teacher for every row of a 20 Newsgroups section) apply
    first, then the row's own."""
    directory = run_directory(row, seed)
    directory.mkdir(parents=True, exist_ok=True)
    args = [sys.executable, "-m", "lightning_kd", "fit", "--config", row["config"], f"--seed_everything={seed}",
            f"--trainer.default_root_dir={directory}", f"--export.dirpath={directory / 'student'}",
            "--trainer.logger=false", "--trainer.enable_checkpointing=false"]
    args += [f"--{key}={cli_value(value)}"
             for key, value in {**(section.get("overrides") or {}), **(row.get("overrides") or {})}.items()]
    start = time.perf_counter()
    with (directory / "log.txt").open("w") as log:
        done = subprocess.run(args, stdout=log, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"{row['name']} seed {seed} failed (exit {done.returncode}); see {directory / 'log.txt'}")
    scores = evaluate_export(str(directory / "student"), *task_of(spec, section))
    return {"validation_accuracy": scores["validation"]["accuracy"], "test_accuracy": scores["test"]["accuracy"],
            "test_correct": scores["test"]["correct"], "fit_seconds": round(seconds, 1), "machine": machine(),
            "date": time.strftime("%Y-%m-%d")}


def load_results() -> dict:
    return json.loads(RESULTS.read_text()) if RESULTS.exists() else {}


def save_results(results: dict) -> None:
    text = json.dumps(results, indent=1, sort_keys=True, ensure_ascii=False) + "\n"
    write_atomically(RESULTS, lambda temporary: temporary.write_text(text))  # an interrupted write never loses runs


def pending(spec: dict, results: dict, rows: list[str] | None, seeds: list[int] | None) -> list[tuple[dict, dict, int]]:
    """``(row, section, seed)`` still to run, in board order."""
    return [(row, section, seed) for row, section in rows_of(spec) for seed in row.get("seeds", spec["seeds"])
            if (not rows or row["name"] in rows) and (not seeds or seed in seeds) and str(seed) not in results.get(row["name"], {})]


def run(spec: dict, rows: list[str] | None, seeds: list[int] | None) -> None:
    todo = pending(spec, load_results(), rows, seeds)
    for index, (row, section, seed) in enumerate(todo, 1):
        outcome = fit_and_score(spec, section, row, seed)
        results = load_results()
        results.setdefault(row["name"], {})[str(seed)] = outcome
        save_results(results)
        print(f"[{index}/{len(todo)}] {row['name']} seed {seed}: validation {100 * outcome['validation_accuracy']:.2f}, "
              f"test {100 * outcome['test_accuracy']:.2f}, {outcome['fit_seconds']:.0f} s", flush=True)


def table(section: dict, results: dict, seeds: list[int] | None = None) -> str:
    """A section as Markdown: accuracy over seeds and the paired Δ from the section's baseline row; a row with
    fewer runs than its ``seeds`` (the spec's, or the row's own) says so in its verdict."""
    baseline = next(row for row in section["rows"] if row.get("baseline"))
    base = {int(s): r["test_correct"] for s, r in results.get(baseline["name"], {}).items()}
    lines = ["| row | seeds | validation accuracy | test accuracy | Δ test vs baseline, points (95 % CI) | verdict | fit time |",
             "|---|---|---|---|---|---|---|"]
    for row in section["rows"]:
        runs = results.get(row["name"], {})
        if not runs:
            lines.append(f"| {row['name']} | 0 | — | — | — | not run | — |")
            continue
        val = summarize([100 * r["validation_accuracy"] for r in runs.values()])
        test = summarize([100 * r["test_accuracy"] for r in runs.values()])
        minutes = summarize([r["fit_seconds"] / 60 for r in runs.values()]).mean
        if row is baseline:
            delta, verdict = "—", "baseline"
        else:
            d = paired_difference({int(s): r["test_correct"] for s, r in runs.items()}, base)
            delta, verdict = f"{d.delta:+.2f} ({d.low:+.2f} … {d.high:+.2f})", d.verdict
        planned = len(row.get("seeds", seeds or []))
        if val.n < planned:
            verdict += f" ({val.n} of {planned} seeds so far)"
        lines.append(f"| {row['name']} | {val.n} | {spread(val)} | {spread(test)} | {delta} | {verdict} | {minutes:.1f} min |")
    return "\n".join(lines)


def forest_panel(section: dict, results: dict) -> Panel:
    """The section's compared rows as a forest-plot panel: Δ test accuracy from the baseline row, largest first."""
    baseline = next(row for row in section["rows"] if row.get("baseline"))
    base = {int(s): r["test_correct"] for s, r in results.get(baseline["name"], {}).items()}
    intervals = []
    for row in section["rows"]:
        runs = results.get(row["name"], {})
        if runs and base and row is not baseline:
            d = paired_difference({int(s): r["test_correct"] for s, r in runs.items()}, base)
            intervals.append(Interval(row["name"] + ("" if len(runs) > 1 else " (1 seed)"), d.delta, d.low, d.high, d.verdict))
    title = f"{section['title']}: Δ test accuracy from “{baseline['name']}”, paired by seed, 95 % interval"
    return Panel(title, "accuracy difference (points)", sorted(intervals, key=lambda i: -i.delta))


def spread(summary: Summary) -> str:
    """``mean ± sd`` over seeds, or the one value."""
    return f"{summary.mean:.2f} ± {summary.std:.2f}" if summary.n > 1 else f"{summary.mean:.2f}"


def report(spec: dict) -> None:
    results = load_results()
    machines = sorted({r["machine"] for runs in results.values() for r in runs.values()})
    image = PAGE.with_suffix(".png")
    panels = [forest_panel(section, results) for section in spec["sections"]]
    limit = max((max(abs(i.low), abs(i.high)) for panel in panels for i in panel.intervals), default=0.0) + 0.5
    draw([replace(panel, limit=limit) for panel in panels], image)  # one scale: the sections share their unit
    # The page opens with what to pick (the spec's ``pick``, written from the measured rows) and the picture.
    parts = [f"# {spec['title']}", "", spec.get("pick", "").strip(), "",
             f"![Δ test accuracy of every row from its section's baseline, with 95 % intervals]({image.name})", "",
             spec["preamble"].strip(), "",
             f"Measured on {'; '.join(machines) or '—'}; written by `python -m benchmarks.transfer_board report` from `{RESULTS}`."]
    for section in spec["sections"]:
        parts += ["", f"## {section['title']}", "", section.get("preamble", "").strip(), "", table(section, results, spec["seeds"])]
        if section.get("notes"):
            parts += ["", section["notes"].strip()]
    PAGE.write_text("\n".join(parts).replace("\n\n\n", "\n\n") + "\n")
    print(f"wrote {PAGE}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.transfer_board", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["plan", "run", "report"])
    parser.add_argument("--row", action="append", help="only this row (repeatable)")
    parser.add_argument("--seed", action="append", type=int, help="only this seed (repeatable)")
    options = parser.parse_args(argv)
    spec = yaml.safe_load(SPEC.read_text())
    if options.command == "plan":
        for row, _, seed in pending(spec, load_results(), options.row, options.seed):
            print(f"to run: {row['name']} seed {seed}")
    elif options.command == "run":
        run(spec, options.row, options.seed)
    else:
        report(spec)


if __name__ == "__main__":
    main()
