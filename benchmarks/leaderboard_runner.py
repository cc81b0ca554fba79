"""Runs the leaderboard: every (task, row, seed) not yet in the results file, one ``lightning-kd fit``
subprocess per stage (so a crash or a leak costs one row, never the board), then a scoring subprocess
on the last stage's export. Each run is timed, stored at once (resumable) and optionally committed.

Every stage gets the leaderboard's trainer config first, then the row's configs, then::

    --seed_everything=<seed> --trainer.precision=<precision>
    --data.init_args.task=<task> --data.init_args.max_train_samples=<budget> [task data overrides]
    --model.init_args.teacher=<task teacher>          (methods with a teacher)
    --model.init_args.student=<previous export or the init copy> --model.init_args.student_init=pretrained
    --trainer.default_root_dir=<run dir> --export.dirpath=<run dir>/stage<k>

The data module's own ``seed`` (the training subset and the movie split) stays fixed, so every row and
seed sees the same examples; ``seed_everything`` changes the order, dropout and new parameters. The
stages of a multi-stage row split that subset into disjoint slices, in order, by their shares
(``--data.init_args.skip_train_samples=<examples before it>`` and ``max_train_samples=<its slice>``):
together they see every example of the subset once, as a one-stage row does.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from benchmarks.leaderboard_results import Results, run_key
from benchmarks.leaderboard_spec import Row, Spec, Task, row_hash

TEACHER_ROW = "Teacher"


@dataclass
class Job:
    """One run of the board."""

    task: Task
    row: Row
    seed: int

    @property
    def key(self) -> str:
        return run_key(self.task.name, self.row.name, self.seed)


@dataclass
class Runner:
    """Runs jobs of ``spec`` and stores them in ``results``.

    Attributes:
        spec: the board.
        results: the results file.
        out_dir: where runs write their logs, exports and the init copies.
        train_examples: overrides every task's budget (smoke runs).
        eval_samples: score a seeded subset of validation and test (smoke runs).
        keep_exports: keep each run's exported students (they are deleted once scored).
        commit: ``git commit`` the results file after every run.
        python: the interpreter the subprocesses run.
    """

    spec: Spec
    results: Results
    out_dir: Path
    train_examples: int | None = None
    eval_samples: int | None = None
    keep_exports: bool = False
    commit: bool = False
    python: str = sys.executable
    _walls: list[float] = field(default_factory=list)

    # ------------------------------------------------------------------ planning
    def pending(self, tasks: list[Task], rows: list[str] | None, seeds: list[int]) -> list[Job]:
        """The jobs of these tasks/rows/seeds that have no current result, task by task, seed by seed.

        Raises:
            SpecError: a name in ``rows`` is no row of the board (a typo would otherwise run nothing).
        """
        for name in rows or ():
            self.spec.row(name)
        jobs = []
        for task in tasks:
            task_rows = [r for r in self.spec.rows_of(task) if rows is None or r.name in rows]
            for seed in seeds:
                for row in task_rows:
                    job = Job(task, row, seed)
                    if not self.results.done(job.key, self.fingerprint(task, row)):
                        jobs.append(job)
        return jobs

    def fingerprint(self, task: Task, row: Row) -> str:
        return row_hash(self.spec, task, row) + (f"-smoke{self.train_examples}" if self.train_examples else "")

    def budget(self, task: Task) -> int:
        return self.train_examples or task.train_examples

    # ------------------------------------------------------------------ commands
    def stage_command(self, job: Job, index: int, run_dir: Path, student_dir: str | None) -> list[str]:
        """The ``fit`` command of stage ``index`` (0-based) of ``job``."""
        stage, task = job.row.stages[index], job.task
        args = [self.python, "-m", "lightning_kd", "fit", "--config", self.spec.trainer_config]
        for config in stage.configs:
            args += ["--config", config]
        overrides: dict[str, Any] = {
            "seed_everything": job.seed,
            "trainer.precision": self.spec.precision,
            "trainer.default_root_dir": str(run_dir),
            "data.init_args.task": task.name,
            "data.init_args.max_train_samples": self.budget(task),
            **{f"data.init_args.{k}": v for k, v in task.data.items()},
        }
        if self.eval_samples:
            overrides["data.init_args.max_eval_samples"] = self.eval_samples
        if len(job.row.stages) > 1:
            skip, size = self.stage_slice(job, index)
            overrides["data.init_args.skip_train_samples"] = skip
            overrides["data.init_args.max_train_samples"] = size
        if stage.has_teacher():
            overrides["model.init_args.teacher"] = task.teacher
        if student_dir is not None:
            overrides["model.init_args.student"] = student_dir
            if stage.has_teacher():
                overrides["model.init_args.student_init"] = "pretrained"
                overrides["model.init_args.student_layers"] = None
        overrides.update(dict(stage.args))
        overrides["export.dirpath"] = str(run_dir / f"stage{index + 1}")
        return args + [f"--{k}={cli_value(v)}" for k, v in overrides.items()]

    def stage_slice(self, job: Job, index: int) -> tuple[int, int]:
        """``(skip, size)``: the part of the training subset stage ``index`` trains on. The shares cut
        the subset into consecutive slices; the last takes what rounding left, so they add up to it."""
        budget, shares = self.budget(job.task), [stage.share for stage in job.row.stages]
        edges = [round(budget * sum(shares[:k])) for k in range(len(shares))] + [budget]
        return edges[index], edges[index + 1] - edges[index]

    def eval_command(self, task: Task, model_dir: Path, output: Path, train_split: bool = False) -> list[str]:
        """The scoring command; ``train_split`` also scores the training subset the rows train on (the teacher)."""
        args = [self.python, "-m", "benchmarks.leaderboard_eval", "--model", str(model_dir), "--task", task.name, "--output", str(output)]
        for key, value in task.data.items():
            args += ["--data", f"{key}={cli_value(value)}"]
        if self.eval_samples:
            args += ["--max-eval-samples", str(self.eval_samples)]
        if train_split:
            args += ["--train-examples", str(self.budget(task))]
        return args

    # ------------------------------------------------------------------ running
    def ensure_teacher(self, task: Task) -> None:
        """Make the task's teacher when its directory does not exist, then score it once (row ``Teacher``),
        on the training subset too; a stored score without the training subset is made again."""
        key = run_key(task.name, TEACHER_ROW, "-")
        teacher = Path(task.teacher)
        wall = None
        if not (teacher / "config.json").is_file():
            run_dir = self.out_dir / task.name / TEACHER_ROW
            run_dir.mkdir(parents=True, exist_ok=True)
            command = [self.python, "-m", "lightning_kd", "fit", "--config", task.teacher_config,
                       f"--trainer.precision={self.spec.precision}", f"--trainer.default_root_dir={run_dir}",
                       f"--export.dirpath={teacher}", f"--data.init_args.task={task.name}"]
            command += [f"--data.init_args.{k}={cli_value(v)}" for k, v in task.data.items()]
            if self.train_examples:
                command += [f"--data.init_args.max_train_samples={self.train_examples}", f"--data.init_args.max_eval_samples={self.eval_samples or 64}"]
            print(f"[leaderboard] {task.name}: making the teacher: {shlex.join(command)}", flush=True)
            wall, status = _run(command, run_dir / "fit.log", self.spec.stage_timeout_s * 3)
            if status != 0:
                raise RuntimeError(f"Making the {task.name} teacher failed (exit status {status}); see {run_dir / 'fit.log'}.")
        stored = self.results.runs.get(key)
        scored = stored is not None and stored.get("status") == "ok" and "train" in stored
        if scored and (wall is None or stored.get("wall_s") == wall):
            return
        run_dir = self.out_dir / task.name / TEACHER_ROW
        run_dir.mkdir(parents=True, exist_ok=True)
        scores = self._score(task, teacher, run_dir, train_split=True)
        if stored is not None and stored.get("status") == "ok":
            check_same_teacher(task.name, stored, scores, self.results.path)
        entry = {"task": task.name, "row": TEACHER_ROW, "seed": "-", "status": "ok", "wall_s": wall,
                 "teacher_config": task.teacher_config, "finished": _now(), "machine": machine(self.spec.precision), **scores}
        if stored is not None and wall is None:
            entry["wall_s"] = stored.get("wall_s")
        self.results.put(key, entry)
        self._commit(f"leaderboard: {task.name} teacher scored")

    def run(self, jobs: list[Job]) -> None:
        """Run ``jobs`` in order, printing progress and an ETA, storing (and committing) each result."""
        total = len(jobs)
        print(f"[leaderboard] {total} run(s) to go", flush=True)
        for number, job in enumerate(jobs, start=1):
            print(f"[leaderboard] [{number}/{total}] {job.task.name} | {job.row.name} | seed {job.seed} ...", flush=True)
            entry = self.run_job(job)
            self.results.put(job.key, entry)
            self._commit(f"leaderboard: {job.task.name} {job.row.name} seed {job.seed} ({entry['status']})")
            if entry["status"] == "ok":
                self._walls.append(entry["wall_s"] + entry.get("eval_wall_s", 0.0))
                done = f"test accuracy {100 * entry['test']['accuracy']:.2f}, {entry['wall_s']:.0f} s"
            else:
                done = f"FAILED ({entry['error']})"
            left = total - number
            eta = f", ETA {_duration(left * sum(self._walls) / len(self._walls))} for {left} more" if self._walls and left else ""
            print(f"[leaderboard] [{number}/{total}] {job.row.name} seed {job.seed}: {done}{eta}", flush=True)

    def run_job(self, job: Job) -> dict[str, Any]:
        """Every stage of ``job``, then its score; the results entry (``status`` ``ok`` or ``failed``)."""
        run_dir = self.out_dir / job.task.name / _slug(job.row.name) / f"seed{job.seed}"
        if run_dir.exists():
            shutil.rmtree(run_dir)  # a stale or interrupted attempt
        run_dir.mkdir(parents=True)
        entry: dict[str, Any] = {
            "task": job.task.name, "row": job.row.name, "seed": job.seed, "init": list(job.row.init),
            "fingerprint": self.fingerprint(job.task, job.row), "machine": machine(self.spec.precision), "stages": [],
        }
        try:
            student_dir = None if job.row.stages[0].has_teacher() else str(self.init_dir(job.task, job.row))
            self._check_uniform_init(job)
        except (RuntimeError, ValueError) as error:
            return {**entry, "status": "failed", "error": str(error), "finished": _now()}
        for index, stage in enumerate(job.row.stages):
            command = self.stage_command(job, index, run_dir, student_dir)
            log = run_dir / f"stage{index + 1}.log"
            wall, status = _run(command, log, self.spec.stage_timeout_s)
            entry["stages"].append({"method": stage.method(), "configs": list(stage.configs), "share": stage.share,
                                    "wall_s": wall, "cpu_s": cpu_seconds(log), "command": shlex.join(command[1:])})
            if status != 0:
                reason = "timed out" if status is None else f"exit status {status}"
                return {**entry, "status": "failed", "error": f"stage {index + 1} {reason}: {_tail(log)}", "finished": _now()}
            student_dir = str(run_dir / f"stage{index + 1}")
        entry["wall_s"] = round(sum(s["wall_s"] for s in entry["stages"]), 1)
        if all(s["cpu_s"] is not None for s in entry["stages"]):
            entry["cpu_s"] = round(sum(s["cpu_s"] for s in entry["stages"]), 1)
        start = time.perf_counter()
        try:
            entry.update(self._score(job.task, Path(student_dir), run_dir))
        except RuntimeError as error:
            return {**entry, "status": "failed", "error": str(error), "finished": _now()}
        entry["eval_wall_s"] = round(time.perf_counter() - start, 1)
        if not self.keep_exports:
            for index in range(len(job.row.stages)):
                shutil.rmtree(run_dir / f"stage{index + 1}", ignore_errors=True)
        return {**entry, "status": "ok", "finished": _now()}

    def init_dir(self, task: Task, row: Row) -> Path:
        """The truncated teacher copy a no-teacher first stage starts from (written once per task and init)."""
        directory = self.out_dir / task.name / f"init_{'-'.join(map(str, row.init))}"
        if not (directory / "config.json").is_file():
            command = [self.python, "-m", "benchmarks.leaderboard_init", "--teacher", task.teacher,
                       "--layers", row.init_label, "--output", str(directory)]
            _, status = _run(command, directory.with_suffix(".log"), 600)
            if status != 0:
                raise RuntimeError(f"writing the init copy {row.init_label} failed; see {directory.with_suffix('.log')}")
        return directory

    def _check_uniform_init(self, job: Job) -> None:
        """A ``teacher_uniform`` first stage must copy exactly ``row.init`` of this teacher."""
        args = job.row.stages[0].model_args()
        if args.get("student_init") != "teacher_uniform":
            return
        from lightning_kd.models.student_init import select_teacher_layers

        depth = json.loads((Path(job.task.teacher) / "config.json").read_text())["num_hidden_layers"]
        copied = select_teacher_layers("uniform", int(args["student_layers"]), depth)
        if tuple(copied) != job.row.init:
            raise ValueError(f"row {job.row.name!r}: init {list(job.row.init)} but teacher_uniform copies {copied} of {depth} layers")

    def _score(self, task: Task, model_dir: Path, run_dir: Path, train_split: bool = False) -> dict[str, Any]:
        output = run_dir / "eval.json"
        _, status = _run(self.eval_command(task, model_dir, output, train_split), run_dir / "eval.log", 1800)
        if status != 0:
            raise RuntimeError(f"scoring failed (exit status {status}): {_tail(run_dir / 'eval.log')}")
        return json.loads(output.read_text())

    def _commit(self, message: str) -> None:
        if not self.commit:
            return
        path = str(self.results.path)
        for attempt in range(20):  # another process may hold the index lock for a moment
            if subprocess.run(["git", "ls-files", "--error-unmatch", path], capture_output=True).returncode != 0:
                subprocess.run(["git", "add", path], capture_output=True)
            done = subprocess.run(["git", "commit", "-q", "-m", message, "--", path], capture_output=True, text=True)
            if done.returncode == 0 or "nothing to commit" in done.stdout + done.stderr or "no changes added" in done.stdout:
                return
            time.sleep(3)
        print(f"[leaderboard] could not commit {path}: {done.stderr.strip()}", flush=True)


def machine(precision: str) -> dict[str, Any]:
    """CPU model, core count, precision and library versions of this run."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "precision": precision, "torch": torch.__version__, "python": platform.python_version()}


def _run(command: list[str], log: Path, timeout_s: int) -> tuple[float, int | None]:
    """Run ``command`` with its output in ``log``; ``(wall seconds, exit status or None on timeout)``.
    The CPU seconds it used (user + system, all threads) are appended to the log's last line, so a run
    slowed or paused by other jobs on the machine can be told apart (see :func:`cpu_seconds`)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    start, before = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    with log.open("w") as handle:
        handle.write(shlex.join(command) + "\n")
        handle.flush()
        try:
            status = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, env=environment, timeout=timeout_s).returncode
        except subprocess.TimeoutExpired:
            status = None
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        used = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        handle.write(f"\n[leaderboard] cpu seconds: {used:.1f}\n")
    return round(time.perf_counter() - start, 1), status


def cpu_seconds(log: Path) -> float | None:
    """The CPU seconds :func:`_run` recorded at the end of ``log`` (``None`` if absent)."""
    try:
        last = [line for line in log.read_text(errors="replace").splitlines() if line.startswith("[leaderboard] cpu seconds:")]
    except OSError:
        return None
    return float(last[-1].rsplit(":", 1)[1]) if last else None


def _tail(log: Path, lines: int = 3) -> str:
    try:
        text = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "(no log)"
    text = [line for line in text if not line.startswith("[leaderboard] cpu seconds:")]
    return " | ".join(text[-lines:])[-600:]


def cli_value(value: Any) -> str:
    """A ``--key=value`` command-line value: strings as they are, anything else (numbers, null, lists, dicts) as JSON."""
    return value if isinstance(value, str) else json.dumps(value)


def _slug(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name)


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _duration(seconds: float) -> str:
    minutes = int(seconds // 60)
    return f"{minutes // 60}h{minutes % 60:02d}m" if minutes >= 60 else f"{minutes}m{int(seconds % 60):02d}s"


def check_same_teacher(task: str, stored: dict[str, Any], scores: dict[str, Any], results: Path) -> None:
    """Refuse a remade teacher that answers the test split differently from the stored one.

    The stored rows of ``task`` were trained against the stored teacher; a teacher remade later (its
    directory lost, another machine) is the same only if it gives the same answers. A single
    different answer means the board would silently mix two teachers.

    Raises:
        RuntimeError: naming how many answers differ and what to do.
    """
    before, after = stored.get("test", {}).get("correct"), scores.get("test", {}).get("correct")
    if before is None or after is None or before == after:
        return
    changed = sum(a != b for a, b in zip(before, after)) + abs(len(before) - len(after))
    raise RuntimeError(
        f"The {task} teacher was remade and answers {changed} of {len(after)} test examples differently from the "
        f"teacher the stored {task} rows were trained against, so new rows would not be comparable with them. "
        f"Rerun the whole task: move its entries out of {results} (or restore the original teacher directory)."
    )
