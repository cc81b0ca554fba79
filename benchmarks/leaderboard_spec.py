"""What the method leaderboard runs: tasks, rows (methods, multi-stage recipes, no-teacher baselines) and
seeds, read from ``benchmarks/leaderboard.yaml`` and checked before anything runs.

A *row* is one recipe: one or more ``lightning-kd fit`` stages, each a method config with a share of
the task's example budget (a two-stage recipe trains each stage on its own half of the training
subset, so every row sees every example of the subset once). The first stage starts from
``init``, a list of the teacher's 0-based layers: a method config copies them itself (its
``student_init``/``student_layers`` must name the same layers, which is checked); a config without a
teacher (``StudentOnly``, the baseline) is handed a directory holding that truncated copy of the
teacher. Later stages start from the previous stage's export. A *baseline* row is the no-teacher
student of one ``init``; every other row is compared with the baseline of its ``init``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lightning_kd.config_keys import mapping_key_problem

#: Keys a spec file, a task and a row may have.
_SPEC_KEYS = {"seeds", "precision", "trainer_config", "stage_timeout_s", "tasks", "rows"}
_TASK_KEYS = {"title", "teacher", "teacher_config", "data", "train_examples", "rows", "note", "row_notes"}
_ROW_KEYS = {"name", "init", "baseline", "stages", "note", "group"}
_STAGE_KEYS = {"config", "share", "args"}


class SpecError(ValueError):
    """A leaderboard file that cannot run; the message names the task or row and the fix."""


@dataclass(frozen=True)
class Stage:
    """One ``fit`` of a row.

    Attributes:
        configs: method config files, in order (after the leaderboard's trainer config).
        share: the fraction of the task's training subset this stage trains on (one pass over its own
            slice; the stages' slices are disjoint and, in order, cover the subset).
        args: extra ``--key=value`` arguments for this stage.
    """

    configs: tuple[str, ...]
    share: float = 1.0
    args: tuple[tuple[str, Any], ...] = ()

    def model_args(self) -> dict[str, Any]:
        """``model.init_args`` merged over the config files (later files win), plus ``args`` overrides."""
        merged: dict[str, Any] = {}
        for config in self.configs:
            document = yaml.safe_load(Path(config).read_text()) or {}
            merged.update(((document.get("model") or {}).get("init_args")) or {})
        for key, value in self.args:
            if key.startswith("model.init_args."):
                merged[key.removeprefix("model.init_args.")] = value
        return merged

    def method(self) -> str:
        """The method's class name (the last ``model.class_path`` of the configs)."""
        found = ""
        for config in self.configs:
            document = yaml.safe_load(Path(config).read_text()) or {}
            found = str((document.get("model") or {}).get("class_path", found))
        return found.rsplit(".", 1)[-1]

    def has_teacher(self) -> bool:
        """Whether the method distils from a teacher (its config names one)."""
        args = self.model_args()
        return "teacher" in args or "teachers" in args


@dataclass(frozen=True)
class Row:
    """One recipe of the board (see the module docstring).

    Attributes:
        name: the row's label, unique.
        init: the teacher's 0-based layers the student starts from.
        stages: the ``fit`` stages, in order.
        baseline: whether this row is the no-teacher student of its ``init``.
        note: what the board says under the row (why it does or does not beat its baseline).
        group: a heading the report groups rows under (e.g. ``"pre-training methods"``).
    """

    name: str
    init: tuple[int, ...]
    stages: tuple[Stage, ...]
    baseline: bool = False
    note: str = ""
    group: str = ""

    @property
    def init_label(self) -> str:
        """``"1,3,5"``: the init as the report prints it."""
        return ",".join(map(str, self.init))


@dataclass(frozen=True)
class Task:
    """One dataset of the board.

    Attributes:
        name: the ``GlueDataModule`` task name.
        title: what the report calls it.
        teacher: the exported teacher directory every row distils from.
        teacher_config: the config that makes the teacher when ``teacher`` does not exist yet.
        data: ``data.init_args`` overrides for every stage (besides ``task`` and ``max_train_samples``).
        train_examples: the training subset every row trains on (``max_train_samples``).
        rows: the row names this task runs (all rows by default).
        note: a paragraph the report prints for this task.
        row_notes: what this task's numbers say about a row, printed after the row's own ``note`` (which
            holds what is true of the method on every task).
    """

    name: str
    title: str
    teacher: str
    teacher_config: str
    data: dict[str, Any] = field(default_factory=dict)
    train_examples: int = 4000
    rows: tuple[str, ...] = ()
    note: str = ""
    row_notes: dict[str, str] = field(default_factory=dict)

    def note_of(self, row: Row) -> str:
        """The row's note on this task: its general ``note``, then this task's ``row_notes`` entry."""
        return " ".join(part for part in (row.note, self.row_notes.get(row.name, "")) if part)


@dataclass(frozen=True)
class Spec:
    """The whole board: tasks, rows and the settings every fit shares."""

    seeds: tuple[int, ...]
    precision: str
    trainer_config: str
    stage_timeout_s: int
    tasks: tuple[Task, ...]
    rows: tuple[Row, ...]

    def row(self, name: str) -> Row:
        """The row called ``name``."""
        for row in self.rows:
            if row.name == name:
                return row
        raise SpecError(f"No row named {name!r}; rows: {[r.name for r in self.rows]}.")

    def task(self, name: str) -> Task:
        """The task called ``name``."""
        for task in self.tasks:
            if task.name == name:
                return task
        raise SpecError(f"No task named {name!r}; tasks: {[t.name for t in self.tasks]}.")

    def rows_of(self, task: Task) -> list[Row]:
        """The rows ``task`` runs, in the file's order."""
        return [row for row in self.rows if not task.rows or row.name in task.rows]

    def baseline_of(self, row: Row, task: Task) -> Row | None:
        """The no-teacher row with ``row``'s init that ``task`` runs (``None`` for a baseline itself)."""
        if row.baseline:
            return None
        return next((r for r in self.rows_of(task) if r.baseline and r.init == row.init), None)


def row_hash(spec: Spec, task: Task, row: Row) -> str:
    """A fingerprint of everything that shapes a row's result on ``task``: its stages (config file
    contents, shares, arguments), init, the task's data settings and budget, precision and trainer
    config. A stored result whose fingerprint differs is stale and runs again; notes do not count."""
    parts = {
        "init": list(row.init),
        "stages": [
            {"configs": [Path(c).read_text() for c in stage.configs], "share": stage.share, "args": [list(a) for a in stage.args]}
            for stage in row.stages
        ],
        "task": {"name": task.name, "data": task.data, "train_examples": task.train_examples, "teacher": task.teacher},
        "precision": spec.precision,
        "trainer": Path(spec.trainer_config).read_text(),
    }
    if len(row.stages) > 1:
        # Stages train on disjoint slices of the subset (results made when every stage took the first
        # share of one shuffled epoch — the same examples twice — are stale).
        parts["stage_data"] = "disjoint slices"
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def load_spec(path: str | Path) -> Spec:
    """Read and check a leaderboard file (keys, config files, shares, inits, baselines).

    Raises:
        SpecError: naming the task or row and the problem, before anything runs.
    """
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"Leaderboard file {str(path)!r} does not exist.")
    document = yaml.safe_load(path.read_text()) or {}
    _check_keys(document, _SPEC_KEYS, str(path))
    rows = tuple(_row(entry, number) for number, entry in enumerate(document.get("rows") or [], start=1))
    if not rows:
        raise SpecError(f"{path}: `rows` must list at least one row.")
    names = [row.name for row in rows]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise SpecError(f"{path}: row names {duplicates} are used twice; names must be unique.")
    tasks = tuple(_task(name, entry or {}, names) for name, entry in (document.get("tasks") or {}).items())
    if not tasks:
        raise SpecError(f"{path}: `tasks` must name at least one task.")
    seeds = tuple(int(s) for s in document.get("seeds") or (1, 2, 3))
    trainer_config = str(document.get("trainer_config") or "")
    if not Path(trainer_config).is_file():
        raise SpecError(f"{path}: trainer_config {trainer_config!r} does not exist.")
    spec = Spec(
        seeds=seeds,
        precision=str(document.get("precision") or "auto"),
        trainer_config=trainer_config,
        stage_timeout_s=int(document.get("stage_timeout_s") or 3600),
        tasks=tasks,
        rows=rows,
    )
    for task in tasks:
        for row in spec.rows_of(task):
            if not row.baseline and spec.baseline_of(row, task) is None:
                raise SpecError(
                    f"Row {row.name!r} starts from teacher layers {row.init_label} but task {task.name!r} runs no baseline "
                    "(a row with baseline: true) from that init; add one, so its Δ has a reference."
                )
    return spec


def _row(entry: Any, number: int) -> Row:
    where = f"row {number}"
    if not isinstance(entry, dict):
        raise SpecError(f"{where} must be a mapping with name, init and stages.")
    _check_keys(entry, _ROW_KEYS, where)
    name = entry.get("name")
    if not isinstance(name, str) or not name.strip():
        raise SpecError(f"{where}: `name` must be a non-empty string.")
    where = f"row {name!r}"
    init = entry.get("init")
    if not isinstance(init, list) or not init or not all(isinstance(i, int) and i >= 0 for i in init):
        raise SpecError(f"{where}: `init` must be a non-empty list of 0-based teacher layers, e.g. [1, 3, 5]; got {init!r}.")
    stages = tuple(_stage(s, f"{where} stage {k}") for k, s in enumerate(entry.get("stages") or [], start=1))
    if not stages:
        raise SpecError(f"{where}: `stages` must list at least one stage.")
    total = sum(stage.share for stage in stages)
    if abs(total - 1.0) > 1e-6:
        raise SpecError(f"{where}: the stages' shares add up to {total:g}; they split one epoch, so they must add up to 1.")
    row = Row(name, tuple(init), stages, bool(entry.get("baseline", False)), str(entry.get("note") or "").strip(), str(entry.get("group") or ""))
    _check_init(row)
    return row


def _stage(entry: Any, where: str) -> Stage:
    if not isinstance(entry, dict):
        raise SpecError(f"{where} must be a mapping with config (and optionally share, args).")
    _check_keys(entry, _STAGE_KEYS, where)
    configs = entry.get("config")
    configs = [configs] if isinstance(configs, str) else list(configs or [])
    if not configs:
        raise SpecError(f"{where}: `config` is missing.")
    for config in configs:
        if not Path(config).is_file():
            raise SpecError(f"{where}: config file {config!r} does not exist (paths are relative to the repository root).")
    share = float(entry.get("share", 1.0))
    if not 0.0 < share <= 1.0:
        raise SpecError(f"{where}: `share` is a fraction of one epoch in (0, 1], got {share}.")
    args = entry.get("args") or {}
    if not isinstance(args, dict):
        raise SpecError(f"{where}: `args` must map dotted keys to values, e.g. model.init_args.temperature: 4.")
    return Stage(tuple(str(c) for c in configs), share, tuple((str(k), v) for k, v in args.items()))


def _check_init(row: Row) -> None:
    """A first stage that copies teacher layers itself must copy ``row.init``; one that cannot
    (no teacher) gets the copy as its student (replacing any ``student`` its config names)."""
    first = row.stages[0]
    args = first.model_args()
    if not first.has_teacher():
        return
    kind, layers = args.get("student_init", "pretrained"), args.get("student_layers")
    if kind == "teacher_layers":
        copied = tuple(layers or ())
    elif kind == "teacher_first" and isinstance(layers, int):
        copied = tuple(range(layers))
    elif kind == "teacher_uniform" and isinstance(layers, int):
        copied = None  # depends on the teacher's depth; checked against the teacher when the row runs
    else:
        raise SpecError(
            f"Row {row.name!r}: its first stage must copy teacher layers (student_init teacher_first, teacher_uniform "
            f"or teacher_layers) so the row's init is known; it has student_init {kind!r}."
        )
    if copied is not None and copied != row.init:
        raise SpecError(f"Row {row.name!r}: init {list(row.init)} but its first config copies teacher layers {list(copied)}.")
    if kind == "teacher_uniform" and layers != len(row.init):
        raise SpecError(f"Row {row.name!r}: init has {len(row.init)} layers but its first config copies {layers}.")


def _task(name: str, entry: dict, row_names: list[str]) -> Task:
    where = f"task {name!r}"
    _check_keys(entry, _TASK_KEYS, where)
    for key in ("teacher", "teacher_config"):
        if not entry.get(key):
            raise SpecError(f"{where}: `{key}` is missing.")
    if not Path(entry["teacher_config"]).is_file():
        raise SpecError(f"{where}: teacher_config {entry['teacher_config']!r} does not exist.")
    rows = tuple(entry.get("rows") or ())
    unknown = [r for r in rows if r not in row_names]
    if unknown:
        raise SpecError(f"{where}: rows {unknown} are not defined under `rows`.")
    data = entry.get("data") or {}
    if not isinstance(data, dict):
        raise SpecError(f"{where}: `data` must map data.init_args keys to values.")
    row_notes = entry.get("row_notes") or {}
    if not isinstance(row_notes, dict):
        raise SpecError(f"{where}: `row_notes` must map row names to notes.")
    runs = set(rows or row_names)
    strays = [r for r in row_notes if r not in runs]
    if strays:
        raise SpecError(f"{where}: row_notes name rows {strays} that this task does not run.")
    return Task(
        name=name,
        title=str(entry.get("title") or name),
        teacher=str(entry["teacher"]),
        teacher_config=str(entry["teacher_config"]),
        data=dict(data),
        train_examples=int(entry.get("train_examples") or 4000),
        rows=rows,
        note=str(entry.get("note") or "").strip(),
        row_notes={str(k): " ".join(str(v).split()) for k, v in row_notes.items()},
    )


def _check_keys(mapping: Any, allowed: set[str], where: str) -> None:
    problem = mapping_key_problem(mapping, allowed, where)
    if problem is not None:
        raise SpecError(problem)
