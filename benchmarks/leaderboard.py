"""The method leaderboard: every fine-tuning method against the no-teacher student, on real data, over
several seeds. Resumable: finished (task, row, seed) results live in ``benchmarks/leaderboard_results.json``
and are skipped on the next run.

Usage (from the repository root)::

    python -m benchmarks.leaderboard plan                      # what would run, with the stored results
    python -m benchmarks.leaderboard run --commit              # the whole board (hours on a 2-core CPU)
    python -m benchmarks.leaderboard run --task rotten_tomatoes --row KD --row StudentOnly --seed 1
    python -m benchmarks.leaderboard run --smoke               # every row once on 64 examples (minutes)
    python -m benchmarks.leaderboard report                    # docs/leaderboard.md and docs/leaderboard.png

``run`` prints a line per finished run with an ETA, writes each run's logs under ``outputs/leaderboard/``
and, with ``--commit``, commits the results file after every run so an interrupted board loses nothing.
The rows, tasks, seeds and budget are in ``benchmarks/leaderboard.yaml``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from benchmarks.leaderboard_report import write_report
from benchmarks.leaderboard_results import Results
from benchmarks.leaderboard_runner import Runner
from benchmarks.leaderboard_spec import SpecError, load_spec

SPEC = "benchmarks/leaderboard.yaml"
RESULTS = "benchmarks/leaderboard_results.json"
PREAMBLE = "benchmarks/leaderboard_preamble.md"
COMMAND = "python -m benchmarks.leaderboard run --commit && python -m benchmarks.leaderboard report"
SMOKE_EXAMPLES = 64


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.leaderboard", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["plan", "run", "report"])
    parser.add_argument("--spec", default=SPEC, help=f"the board (default {SPEC})")
    parser.add_argument("--results", help=f"the results file (default {RESULTS}; smoke runs: outputs/leaderboard_smoke/results.json)")
    parser.add_argument("--task", action="append", help="only this task (repeatable)")
    parser.add_argument("--row", action="append", help="only this row (repeatable)")
    parser.add_argument("--seed", action="append", type=int, help="only this seed (repeatable)")
    parser.add_argument("--smoke", action="store_true", help=f"every row on {SMOKE_EXAMPLES} examples, one seed, tiny teachers, outputs/leaderboard_smoke")
    parser.add_argument("--commit", action="store_true", help="git-commit the results file after every run")
    parser.add_argument("--keep-exports", action="store_true", help="keep each run's exported students")
    parser.add_argument("--markdown", default="docs/leaderboard.md", help="report: the page to write")
    parser.add_argument("--image", default="docs/leaderboard.png", help="report: the plot to write")
    options = parser.parse_args(argv)
    try:
        spec = load_spec(options.spec)
        tasks = [spec.task(name) for name in options.task] if options.task else list(spec.tasks)
        for name in options.row or []:
            spec.row(name)
    except SpecError as error:
        parser.exit(2, f"error: {error}\n")
    if options.smoke:
        out = Path("outputs/leaderboard_smoke")
        tasks = [_smoke_task(task, out) for task in tasks]
        spec = spec.__class__(**{**spec.__dict__, "tasks": tuple(tasks)})
        results = Results(options.results or out / "results.json")
        runner = Runner(spec, results, out, train_examples=SMOKE_EXAMPLES, eval_samples=SMOKE_EXAMPLES)
        seeds = options.seed or list(spec.seeds[:1])
    else:
        results = Results(options.results or RESULTS)
        runner = Runner(spec, results, Path("outputs/leaderboard"), commit=options.commit, keep_exports=options.keep_exports)
        seeds = options.seed or list(spec.seeds)
    if options.command == "report":
        preamble = Path(PREAMBLE).read_text() if Path(PREAMBLE).exists() else "# Method leaderboard\n"
        write_report(spec, results, Path(options.markdown), Path(options.image), COMMAND, preamble)
        print(f"wrote {options.markdown} and {options.image}")
        return
    jobs = runner.pending(tasks, options.row, seeds)
    if options.command == "plan":
        for job in jobs:
            print(f"{job.task.name} | {job.row.name} | seed {job.seed} | stages: {', '.join(s.method() for s in job.row.stages)}")
        print(f"{len(jobs)} run(s) to go; {len(results.runs)} stored in {results.path}")
        return
    for task in tasks:
        runner.ensure_teacher(task)
    runner.run(jobs)


def _smoke_task(task, out: Path):
    """The task with its teacher made (on the smoke budget) under ``out`` instead of its real place."""
    return task.__class__(**{**task.__dict__, "teacher": str(out / task.name / "teacher_export")})


if __name__ == "__main__":
    sys.exit(main())
