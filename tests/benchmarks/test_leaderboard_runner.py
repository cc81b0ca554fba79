"""The leaderboard runner without training: the fit commands it builds, resuming from the results file,
stale results, failures that fail one run only, and the progress lines (subprocesses faked)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import benchmarks.leaderboard_runner as runner_module
from benchmarks.leaderboard_results import Results, run_key
from benchmarks.leaderboard_runner import Job, Runner
from benchmarks.leaderboard_spec import SpecError, load_spec


def _arg(command: list[str], key: str) -> str | None:
    found = [a.split("=", 1)[1] for a in command if a.startswith(f"--{key}=")]
    return found[-1] if found else None


@pytest.fixture
def fake_subprocesses(monkeypatch):
    """Replace every subprocess: fits 'export' a directory, scoring writes an eval.json, inits a config.
    ``calls`` records the commands; a fit whose seed is in ``fail_seeds`` exits with status 1."""
    calls: list[list[str]] = []
    fail_seeds: set[str] = set()

    def fake_run(command, log, timeout_s):
        calls.append(command)
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text("fake log\nlast line\n")
        if "fit" in command:
            if _arg(command, "seed_everything") in fail_seeds:
                return 2.0, 1
            Path(_arg(command, "export.dirpath")).mkdir(parents=True, exist_ok=True)
            return 10.0, 0
        if "benchmarks.leaderboard_eval" in command:
            output = Path(command[command.index("--output") + 1])
            split = {"accuracy": 0.75, "f1": 0.7, "examples": 4, "predicted_classes": 2, "top_class_share": 0.5}
            scores = {"validation": split, "test": {**split, "correct": "1101"}}
            if "--train-examples" in command:
                scores["train"] = {**split, "examples": int(command[command.index("--train-examples") + 1])}
            output.write_text(json.dumps(scores))
            return 1.0, 0
        directory = Path(command[command.index("--output") + 1])
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "config.json").write_text("{}")
        return 1.0, 0

    monkeypatch.setattr(runner_module, "_run", fake_run)
    return calls, fail_seeds


def _runner(board, tmp_path, **kwargs):
    spec = load_spec(board())
    return Runner(spec, Results(tmp_path / "results.json"), tmp_path / "out", python="python", **kwargs)


def test_commands_of_a_baseline_a_method_and_a_second_stage(board, tmp_path):
    runner = _runner(board, tmp_path)
    spec, task = runner.spec, runner.spec.tasks[0]
    run_dir = tmp_path / "run"
    kd = runner.stage_command(Job(task, spec.row("KD"), 3), 0, run_dir, None)
    assert kd[:6] == ["python", "-m", "lightning_kd", "fit", "--config", "trainer.yaml"] and kd[6:8] == ["--config", "kd.yaml"]
    assert _arg(kd, "seed_everything") == "3" and _arg(kd, "model.init_args.teacher") == "teacher_dir"
    assert _arg(kd, "data.init_args.max_train_samples") == "100" and _arg(kd, "trainer.precision") == "32-true"
    assert _arg(kd, "trainer.limit_train_batches") is None and _arg(kd, "export.dirpath") == str(run_dir / "stage1")
    base = runner.stage_command(Job(task, spec.row("StudentOnly"), 1), 0, run_dir, "init_dir")
    assert _arg(base, "model.init_args.teacher") is None and _arg(base, "model.init_args.student") == "init_dir"
    assert _arg(base, "model.init_args.student_init") is None
    second = runner.stage_command(Job(task, spec.row("Two"), 1), 1, run_dir, str(run_dir / "stage1"))
    assert _arg(second, "model.init_args.student") == str(run_dir / "stage1")
    assert _arg(second, "model.init_args.student_init") == "pretrained" and _arg(second, "model.init_args.student_layers") == "null"
    assert _arg(second, "export.dirpath") == str(run_dir / "stage2")
    # The two stages train on the two halves of the 100-example subset, not twice on the same half.
    first = runner.stage_command(Job(task, spec.row("Two"), 1), 0, run_dir, None)
    slices = [(int(_arg(c, "data.init_args.skip_train_samples")), int(_arg(c, "data.init_args.max_train_samples"))) for c in (first, second)]
    assert slices == [(0, 50), (50, 50)] and _arg(second, "trainer.limit_train_batches") is None
    assert _arg(kd, "data.init_args.skip_train_samples") is None  # one-stage rows: the subset as it is


@pytest.mark.parametrize(("shares", "budget", "slices"), [
    ([0.5, 0.5], 4000, [(0, 2000), (2000, 2000)]),
    ([1 / 3, 1 / 3, 1 / 3], 100, [(0, 33), (33, 34), (67, 33)]),
    ([0.25, 0.75], 10, [(0, 2), (2, 8)]),
])
def test_stage_slices_are_disjoint_and_cover_the_subset(board, tmp_path, shares, budget, slices):
    stages = [{"config": "kd.yaml", "share": shares[0]}] + [{"config": "pred.yaml", "share": s} for s in shares[1:]]
    rows = [{"name": "StudentOnly", "init": [1, 3, 5], "baseline": True, "stages": [{"config": "base.yaml"}]},
            {"name": "Many", "init": [1, 3, 5], "stages": stages}]
    tasks = {"rotten_tomatoes": {"teacher": "t", "teacher_config": "teacher.yaml", "train_examples": budget}}
    spec = load_spec(board(rows=rows, tasks=tasks))
    runner = Runner(spec, Results(tmp_path / "results.json"), tmp_path / "out", python="python")
    job = Job(spec.tasks[0], spec.row("Many"), 1)
    assert [runner.stage_slice(job, k) for k in range(len(shares))] == slices


def test_run_stores_every_result_and_a_rerun_skips_them(board, tmp_path, fake_subprocesses, capsys):
    calls, _ = fake_subprocesses
    runner = _runner(board, tmp_path)
    jobs = runner.pending(list(runner.spec.tasks), None, [1, 2])
    assert [(j.row.name, j.seed) for j in jobs] == [("StudentOnly", 1), ("KD", 1), ("Two", 1), ("StudentOnly", 2), ("KD", 2), ("Two", 2)]
    runner.run(jobs)
    entry = Results(tmp_path / "results.json").runs[run_key("rotten_tomatoes", "Two", 2)]
    assert entry["status"] == "ok" and entry["wall_s"] == 20.0 and [s["share"] for s in entry["stages"]] == [0.5, 0.5]
    assert entry["test"]["correct"] == "1101" and entry["machine"]["precision"] == "32-true"
    assert not (tmp_path / "out/rotten_tomatoes/Two/seed2/stage1").exists()  # exports are deleted once scored
    out = capsys.readouterr().out
    assert "[6/6] Two seed 2: test accuracy 75.00" in out and "ETA" in out
    inits = [c for c in calls if "benchmarks.leaderboard_init" in c]
    assert len(inits) == 1 and inits[0][inits[0].index("--layers") + 1] == "1,3,5"  # written once, reused
    again = _runner(board, tmp_path)
    assert again.pending(list(again.spec.tasks), None, [1, 2]) == []
    with pytest.raises(SpecError, match="No row named 'Kd'"):
        again.pending(list(again.spec.tasks), ["StudentOnly", "Kd"], [1])


def test_a_changed_row_is_stale_and_a_failed_run_fails_alone(board, tmp_path, fake_subprocesses):
    calls, fail_seeds = fake_subprocesses
    runner = _runner(board, tmp_path)
    fail_seeds.add("2")
    runner.run(runner.pending(list(runner.spec.tasks), None, [1, 2]))
    results = Results(tmp_path / "results.json")
    assert results.runs[run_key("rotten_tomatoes", "KD", 1)]["status"] == "ok"
    failed = results.runs[run_key("rotten_tomatoes", "KD", 2)]
    assert failed["status"] == "failed" and "stage 1 exit status 1" in failed["error"] and "last line" in failed["error"]
    rerun = _runner(board, tmp_path)
    assert {(j.row.name, j.seed) for j in rerun.pending(list(rerun.spec.tasks), None, [1, 2])} == {
        ("StudentOnly", 2), ("KD", 2), ("Two", 2)
    }
    Path("kd.yaml").write_text(Path("kd.yaml").read_text() + "# a new temperature\n")
    stale = _runner(board, tmp_path)
    names = {(j.row.name, j.seed) for j in stale.pending(list(stale.spec.tasks), None, [1])}
    assert names == {("KD", 1), ("Two", 1)}  # both rows read kd.yaml; the baseline did not change


def test_a_real_subprocess_records_its_wall_and_cpu_seconds(tmp_path):
    import sys

    log = tmp_path / "run.log"
    wall, status = runner_module._run([sys.executable, "-c", "sum(range(3_000_000)); print('hello')"], log, 60)
    assert status == 0 and wall > 0 and "hello" in log.read_text()
    assert 0 < runner_module.cpu_seconds(log) < 60
    _, status = runner_module._run([sys.executable, "-c", "import time; time.sleep(5)"], tmp_path / "slow.log", 1)
    assert status is None  # timed out


def test_the_teacher_is_made_when_missing_and_scored_once(board, tmp_path, fake_subprocesses):
    calls, _ = fake_subprocesses
    runner = _runner(board, tmp_path)
    task = runner.spec.tasks[0]

    original = runner_module._run

    def make_teacher(command, log, timeout_s):
        if "fit" in command and "teacher.yaml" in command:
            Path(_arg(command, "export.dirpath")).mkdir(parents=True)
            (Path(_arg(command, "export.dirpath")) / "config.json").write_text("{}")
            calls.append(command)
            return 99.0, 0
        return original(command, log, timeout_s)

    runner_module._run = make_teacher
    try:
        runner.ensure_teacher(task)
        runner.ensure_teacher(task)
    finally:
        runner_module._run = original
    teacher = runner.results.runs[run_key("rotten_tomatoes", "Teacher", "-")]
    assert teacher["wall_s"] == 99.0 and teacher["test"]["accuracy"] == 0.75
    assert teacher["train"]["examples"] == 100  # scored on the subset every row trains on
    assert sum("benchmarks.leaderboard_eval" in c for c in calls) == 1


def test_a_stored_teacher_score_without_the_training_subset_is_made_again(board, tmp_path, fake_subprocesses):
    calls, _ = fake_subprocesses
    runner = _runner(board, tmp_path)
    task = runner.spec.tasks[0]
    Path("teacher_dir").mkdir()
    Path("teacher_dir/config.json").write_text("{}")
    split = {"accuracy": 0.75, "f1": 0.7, "examples": 4}
    runner.results.put(run_key(task.name, "Teacher", "-"), {"status": "ok", "wall_s": 50.0, "validation": split,
                                                           "test": {**split, "correct": "1101"}})
    runner.ensure_teacher(task)
    runner.ensure_teacher(task)
    teacher = runner.results.runs[run_key(task.name, "Teacher", "-")]
    assert teacher["train"]["examples"] == 100 and teacher["wall_s"] == 50.0  # the making time is kept
    assert sum("benchmarks.leaderboard_eval" in c for c in calls) == 1 and not any("fit" in c for c in calls)


@pytest.mark.parametrize("stored_answers", ["1101", "1111"])
def test_a_remade_teacher_must_answer_as_the_stored_one(board, tmp_path, fake_subprocesses, stored_answers):
    runner = _runner(board, tmp_path)
    task = runner.spec.tasks[0]
    split = {"accuracy": 0.75, "f1": 0.7, "examples": 4}
    runner.results.put(run_key(task.name, "Teacher", "-"), {"status": "ok", "wall_s": 50.0, "validation": split,
                                                           "test": {**split, "correct": stored_answers}})
    original = runner_module._run

    def make_teacher(command, log, timeout_s):
        if "fit" in command and "teacher.yaml" in command:
            Path(_arg(command, "export.dirpath")).mkdir(parents=True)
            (Path(_arg(command, "export.dirpath")) / "config.json").write_text("{}")
            return 99.0, 0
        return original(command, log, timeout_s)  # the remade teacher answers "1101"

    runner_module._run = make_teacher
    try:
        if stored_answers == "1101":
            runner.ensure_teacher(task)
            assert runner.results.runs[run_key(task.name, "Teacher", "-")]["wall_s"] == 99.0
        else:
            with pytest.raises(RuntimeError, match="answers 1 of 4 test examples differently"):
                runner.ensure_teacher(task)
    finally:
        runner_module._run = original
