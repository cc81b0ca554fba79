"""The leaderboard file: rows, stages, inits and baselines are checked before anything runs; the row
fingerprint changes with what shapes a result and not with notes."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.leaderboard_spec import SpecError, load_spec, row_hash


def test_a_valid_board_loads(board):
    spec = load_spec(board())
    task = spec.task("rotten_tomatoes")
    assert [r.name for r in spec.rows_of(task)] == ["StudentOnly", "KD", "Two"]
    assert spec.baseline_of(spec.row("KD"), task).name == "StudentOnly"
    assert spec.baseline_of(spec.row("StudentOnly"), task) is None
    two = spec.row("Two")
    assert [s.share for s in two.stages] == [0.5, 0.5] and two.stages[1].method() == "TinyBERT"
    assert spec.row("StudentOnly").stages[0].has_teacher() is False and two.stages[0].has_teacher()


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([{"name": "KD", "init": [1, 3, 5], "stages": [{"config": "kd.yaml"}]}], "runs no baseline"),
        ([{"name": "KD", "init": [0, 1, 2], "stages": [{"config": "kd.yaml"}]}], r"copies teacher layers \[1, 3, 5\]"),
        ([{"name": "P", "init": [1, 3, 5], "stages": [{"config": "first.yaml"}]}], r"copies teacher layers \[0, 1, 2\]"),
        ([{"name": "KD", "init": [1, 3, 5], "stages": [{"config": "kd.yaml", "share": 0.6}]}], "add up to 0.6"),
        ([{"name": "KD", "init": [1, 3, 5], "stages": [{"config": "missing.yaml"}]}], "does not exist"),
        ([{"name": "KD", "init": "1,3,5", "stages": [{"config": "kd.yaml"}]}], "0-based teacher layers"),
        ([{"name": "KD", "init": [1, 3, 5], "stage": []}], "unknown key"),
        ([{"name": "B", "init": [1, 3, 5], "baseline": True, "stages": [{"config": "base.yaml"}]}] * 2, "used twice"),
        ([{"name": "P", "init": [1, 3, 5], "stages": [{"config": "pred.yaml"}]}], "must copy teacher layers"),
    ],
)
def test_bad_boards_fail_before_running(board, rows, message):
    with pytest.raises(SpecError, match=message):
        load_spec(board(rows=rows))


def test_unknown_task_rows_and_missing_file(board, tmp_path):
    with pytest.raises(SpecError, match="not defined"):
        load_spec(board(tasks={"rotten_tomatoes": {"teacher": "t", "teacher_config": "teacher.yaml", "rows": ["Nope"]}}))
    with pytest.raises(SpecError, match="does not exist"):
        load_spec(tmp_path / "nothing.yaml")
    only_kd = {"teacher": "t", "teacher_config": "teacher.yaml", "rows": ["StudentOnly", "KD"]}
    with pytest.raises(SpecError, match=r"row_notes name rows \['Two'\] that this task does not run"):
        load_spec(board(tasks={"rotten_tomatoes": {**only_kd, "row_notes": {"Two": "n"}}}))
    with pytest.raises(SpecError, match="must map row names"):
        load_spec(board(tasks={"rotten_tomatoes": {**only_kd, "row_notes": ["KD"]}}))


def test_fingerprint_follows_configs_and_budget_but_not_notes(board):
    spec = load_spec(board())
    task, row = spec.tasks[0], spec.row("KD")
    before = row_hash(spec, task, row)
    rows = [dict(name="StudentOnly", init=[1, 3, 5], baseline=True, stages=[{"config": "base.yaml"}]),
            dict(name="KD", init=[1, 3, 5], stages=[{"config": "kd.yaml"}], note="another note")]
    noted = load_spec(board(rows=rows))
    assert row_hash(noted, noted.tasks[0], noted.row("KD")) == before
    Path("kd.yaml").write_text(Path("kd.yaml").read_text() + "# changed\n")
    assert row_hash(spec, task, row) != before
    budget = load_spec(board(tasks={"rotten_tomatoes": {"teacher": "t", "teacher_config": "teacher.yaml", "train_examples": 50}}))
    assert row_hash(budget, budget.tasks[0], budget.row("KD")) != row_hash(spec, task, row)
