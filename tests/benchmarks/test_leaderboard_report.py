"""The leaderboard page: table rows with mean ± std, Δ against the baseline of the same init, rows
not run yet and failed runs listed, the machine line, notes, the opening "what to pick" lines and the
forest plot's data (Δ and interval per row, sorted, classified)."""

from __future__ import annotations

import random

from benchmarks.leaderboard_report import beyond_noise, collect, forest_points, pick_line, write_report
from benchmarks.leaderboard_results import Results, run_key
from benchmarks.leaderboard_spec import load_spec
from benchmarks.leaderboard_stats import paired_difference


def _entry(row: str, seed: int, accuracy: float, status: str = "ok") -> dict:
    rng = random.Random(f"{row}{seed}")
    correct = "".join("1" if rng.random() < accuracy else "0" for _ in range(400))
    split = {"accuracy": correct.count("1") / 400, "f1": 0.5, "examples": 400, "predicted_classes": 2, "top_class_share": 0.5}
    entry = {"task": "rotten_tomatoes", "row": row, "seed": seed, "status": status, "wall_s": 120.0, "finished": "2026-12-02T10:00:00Z",
             "machine": {"cpu": "Test CPU", "cores": 2, "precision": "32-true", "torch": "2"}}
    if status == "ok":
        entry.update(validation=split, test={**split, "correct": correct})
    else:
        entry["error"] = "stage 1 exit status 1: boom"
    return entry


def test_report_lists_every_row_with_its_state(board, tmp_path):
    tasks = {"rotten_tomatoes": {"teacher": "teacher_dir", "teacher_config": "teacher.yaml", "train_examples": 100,
                                 "row_notes": {"KD": "On this task, more.", "StudentOnly": "Only here."}}}
    spec = load_spec(board(tasks=tasks))
    results = Results(tmp_path / "results.json")
    for seed in (1, 2):
        results.put(run_key("rotten_tomatoes", "StudentOnly", seed), _entry("StudentOnly", seed, 0.70))
        results.put(run_key("rotten_tomatoes", "KD", seed), _entry("KD", seed, 0.90))
    results.put(run_key("rotten_tomatoes", "Two", 1), _entry("Two", 1, 0.0, status="failed"))
    teacher = _entry("Teacher", 0, 0.95)
    teacher["seed"] = "-"
    teacher["train"] = {**teacher["validation"], "examples": 100, "true_label_probability": 0.81, "top_probability": 0.85}
    teacher["test"].update(true_label_probability=0.77, top_probability=0.84)
    results.put(run_key("rotten_tomatoes", "Teacher", "-"), teacher)
    page, image = tmp_path / "board.md", tmp_path / "board.png"
    write_report(spec, results, page, image, "python -m benchmarks.leaderboard run", "# Board\n\nIntro.")
    text = page.read_text()
    assert text.startswith("# Board\n\n## What to pick\n") and "\n\nIntro.\n" in text
    assert text.index("## What to pick") < text.index("Intro.") < text.index("## rotten_tomatoes")
    assert "![Δ accuracy of every row from its own no-teacher student, per task](board.png)" in text
    assert "Machine: Test CPU, 2 cores, precision 32-true" in text
    assert "**Teacher**" in text and "test accuracy **" in text
    assert "On the 100 training examples" in text and "mean probability of 0.81 (top class 0.85)" in text and "and 0.77." in text
    lines = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| ") and "---" not in line}
    assert "(baseline)" in lines["**StudentOnly**"]
    assert "yes, better" in lines["KD"] and "| 2 |" in lines["KD"] and "2.0 min" in lines["KD"]
    assert "failed" in lines["Two"]
    assert "- **KD**: why On this task, more." in text and "- **StudentOnly**: Only here." in text
    assert "Two (0/2)" in text and "python -m benchmarks.leaderboard run" in text
    assert "Two seed 1: stage 1 exit status 1: boom" in text
    assert image.stat().st_size > 1000
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".board")) == []  # no temporary file left


# A board with two initial layer sets: rows from 1,3,5 against "StudentOnly", "P" (layers 0,1,2) against "Base012".
ROWS = [
    {"name": "StudentOnly", "init": [1, 3, 5], "baseline": True, "stages": [{"config": "base.yaml"}]},
    {"name": "Base012", "init": [0, 1, 2], "baseline": True, "stages": [{"config": "base.yaml"}]},
    {"name": "KD", "init": [1, 3, 5], "stages": [{"config": "kd.yaml"}]},
    {"name": "Same", "init": [1, 3, 5], "stages": [{"config": "kd.yaml"}]},
    {"name": "Two", "init": [1, 3, 5], "stages": [{"config": "kd.yaml", "share": 0.5}, {"config": "pred.yaml", "share": 0.5}]},
    {"name": "P", "init": [0, 1, 2], "stages": [{"config": "first.yaml"}]},
]
BASE = "1" * 280 + "0" * 120  # StudentOnly: 70 %
CORRECT = {
    "StudentOnly": BASE,
    "Base012": "1" * 200 + "0" * 200,  # 50 %
    "KD": "1" * 360 + "0" * 40,  # +20 points on StudentOnly's examples: better
    "Same": "0" + BASE[1:300] + "1" + BASE[301:],  # one answer lost, one won: Δ 0, within noise
    "Two": "1" * 200 + "0" * 200,  # −20 points: worse
    "P": "1" * 240 + "0" * 160,  # +10 points on Base012 (60 %, below StudentOnly's 70 %): better against its own baseline
}


def _synthetic(board, tmp_path) -> tuple:
    """The two-init board with every row run on seeds 1 and 2 (the correctness strings above)."""
    spec = load_spec(board(rows=ROWS))
    results = Results(tmp_path / "results.json")
    for row, correct in CORRECT.items():
        for seed in (1, 2):
            entry = _entry(row, seed, 0.5)
            entry["test"] = {**entry["test"], "correct": correct, "accuracy": correct.count("1") / len(correct)}
            results.put(run_key("rotten_tomatoes", row, seed), entry)
    return spec, results, spec.task("rotten_tomatoes")


def test_forest_points_pair_each_row_with_its_own_baseline_sorted_and_classified(board, tmp_path):
    spec, results, task = _synthetic(board, tmp_path)
    points = forest_points(spec, task, collect(spec, results, task))
    assert [p.row for p in points] == ["KD", "P", "Same", "Two"]  # baselines left out, largest Δ first
    assert {p.row: p.baseline for p in points} == {"KD": "StudentOnly", "Same": "StudentOnly", "Two": "StudentOnly", "P": "Base012"}
    for point in points:
        expected = paired_difference({s: CORRECT[point.row] for s in (1, 2)}, {s: CORRECT[point.baseline] for s in (1, 2)})
        assert (point.delta, point.low, point.high) == (expected.delta, expected.low, expected.high)
    by_name = {p.row: p for p in points}
    assert by_name["KD"].delta == 20.0 and by_name["P"].delta == 10.0 and by_name["Same"].delta == 0.0 and by_name["Two"].delta == -20.0
    assert by_name["P"].init == "0,1,2" and by_name["P"].accuracy == 60.0
    assert {p.row: p.verdict for p in points} == {"KD": "better", "P": "better", "Same": "within noise", "Two": "worse"}
    better, worse = beyond_noise(points)
    assert [p.row for p in better] == ["KD", "P"] and [p.row for p in worse] == ["Two"]


def test_pick_line_lists_exactly_the_rows_whose_interval_excludes_zero(board, tmp_path):
    spec, results, task = _synthetic(board, tmp_path)
    line = pick_line(spec, task, collect(spec, results, task))
    assert line.startswith("- **rotten_tomatoes**: ")
    assert "Starting from teacher layers 1,3,5, pick KD, beyond noise above the no-teacher student from those layers (70.00)" in line
    assert "Starting from teacher layers 0,1,2, pick P, beyond noise above the no-teacher student from those layers (50.00)" in line
    assert "Avoid Two, beyond noise below their no-teacher student: test accuracy 50.00, Δ -20.00 (95 % CI" in line
    assert "Same" not in line and "1 of the 4 rows compared is within noise." in line


def test_pick_line_without_winners_picks_the_no_teacher_student(board, tmp_path):
    spec, results, task = _synthetic(board, tmp_path)
    rows = [r for r in collect(spec, results, task) if r.row.name in ("StudentOnly", "Base012", "Same")]
    line = pick_line(spec, task, rows)
    assert "Starting from teacher layers 1,3,5 or 0,1,2, pick the no-teacher student (labels alone; test accuracy 70.00 and 50.00 respectively)" in line
    assert "No row is beyond noise below its no-teacher student. 1 of the 1 rows compared is within noise." in line
