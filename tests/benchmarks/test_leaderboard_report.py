"""The leaderboard page: table rows with mean ± std, Δ against the baseline of the same init, rows
not run yet and failed runs listed, the machine line, notes, and the plot written."""

from __future__ import annotations

import random

from benchmarks.leaderboard_report import write_report
from benchmarks.leaderboard_results import Results, run_key
from benchmarks.leaderboard_spec import load_spec


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
    assert text.startswith("# Board\n\nIntro.") and "Machine: Test CPU, 2 cores, precision 32-true" in text
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
