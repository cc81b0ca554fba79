"""Board 2's runner: the spec resolves, pending runs are the missing (row, seed) cells, the table pairs each row
with its section's baseline."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import yaml

from benchmarks import transfer_board


def _spec() -> dict:
    return yaml.safe_load(transfer_board.SPEC.read_text())


def test_the_spec_names_existing_configs_and_one_baseline_per_section():
    spec = _spec()
    for section in spec["sections"]:
        assert sum(bool(row.get("baseline")) for row in section["rows"]) == 1
        for row in section["rows"]:
            assert Path(row["config"]).is_file(), row["config"]
    unlabelled = next(row for row, _ in transfer_board.rows_of(spec) if "unlabelled" in row["name"])
    assert unlabelled["overrides"]["data.init_args.labelled_examples"] == 500
    five_hundred = next(row for row, _ in transfer_board.rows_of(spec) if row["name"] == "KD from MPNet (500 labels)")
    assert five_hundred["overrides"]["data.init_args.max_train_samples"] == 500  # the YAML merge key carried the budget


def test_pending_skips_finished_cells():
    spec = _spec()
    first = spec["sections"][0]["rows"][0]["name"]
    todo = transfer_board.pending(spec, {first: {"1": {}}}, [first], None)
    assert [seed for _, _, seed in todo] == [2, 3]


def test_the_table_pairs_rows_with_their_baseline():
    section = {"rows": [{"name": "base", "baseline": True}, {"name": "better"}, {"name": "missing"}]}
    run = lambda correct: {"validation_accuracy": 0.5, "test_accuracy": correct.count("1") / len(correct),  # noqa: E731
                           "test_correct": correct, "fit_seconds": 60.0}
    results = {"base": {str(s): run("1" * 50 + "0" * 50) for s in (1, 2, 3)},
               "better": {str(s): run("1" * 80 + "0" * 20) for s in (1, 2, 3)}}
    lines = transfer_board.table(section, results).splitlines()
    assert "| base | 3 | 50.00 ± 0.00 | 50.00 ± 0.00 | — | baseline | 1.0 min |" in lines
    better = next(line for line in lines if line.startswith("| better"))
    assert "+30.00" in better and "| better |" in better and "| better | 3 |" in better and "better | 1.0 min" in better
    assert "| missing | 0 | — | — | — | not run | — |" in lines
    partial = {**results, "better": {"1": results["better"]["1"]}}
    one_seed = next(line for line in transfer_board.table(section, partial, [1, 2, 3]).splitlines() if line.startswith("| better"))
    assert "| better (1 of 3 seeds so far) |" in one_seed


def test_the_forest_panel_holds_each_compared_row_best_first():
    section = {"title": "t", "rows": [{"name": "base", "baseline": True}, {"name": "worse"}, {"name": "better"}, {"name": "missing"}]}
    run = lambda correct: {"test_correct": correct}  # noqa: E731
    results = {"base": {str(s): run("1" * 50 + "0" * 50) for s in (1, 2, 3)},
               "better": {str(s): run("1" * 80 + "0" * 20) for s in (1, 2, 3)},
               "worse": {"1": run("1" * 20 + "0" * 80)}}
    panel = transfer_board.forest_panel(section, results)
    assert [(i.label, i.verdict) for i in panel.intervals] == [("better", "better"), ("worse (1 seed)", "worse")]
    assert panel.intervals[0].delta == 30.0 and panel.intervals[1].delta == -30.0


def test_a_section_sets_the_task_data_and_overrides_of_its_rows(tmp_path, monkeypatch):
    spec = {"task": "rotten_tomatoes", "data": {"max_length": 64}, "seeds": [1]}
    section = {"task": "twenty_newsgroups", "data": {"max_length": 128, "max_eval_samples": 2000},
               "overrides": {"data.init_args.task": "twenty_newsgroups", "data.init_args.max_length": 128}}
    row = {"name": "row", "config": "c.yaml", "overrides": {"data.init_args.max_length": 256}}
    commands, scored = [], []
    monkeypatch.setattr(transfer_board, "OUTPUTS", tmp_path)
    monkeypatch.setattr(transfer_board, "machine", lambda: "test machine")
    monkeypatch.setattr(transfer_board.subprocess, "run", lambda args, **_: commands.append(args) or SimpleNamespace(returncode=0))
    monkeypatch.setattr(transfer_board, "evaluate_export", lambda path, task, data: scored.append((task, data)) or
                        {"validation": {"accuracy": 0.5}, "test": {"accuracy": 0.5, "correct": "10"}})
    transfer_board.fit_and_score(spec, section, row, 1)
    assert "--data.init_args.task=twenty_newsgroups" in commands[0]
    assert "--data.init_args.max_length=256" in commands[0]  # the row's own override wins over its section's
    assert "--data.init_args.max_length=128" not in commands[0]
    assert scored == [("twenty_newsgroups", {"max_length": 128, "max_eval_samples": 2000})]
    assert transfer_board.task_of(spec, {}) == ("rotten_tomatoes", {"max_length": 64})
