"""A small leaderboard in a temporary directory: configs, a trainer config and a spec file."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

KD_CONFIG = {
    "model": {"class_path": "lightning_kd.methods.KD", "init_args": {"teacher": "t", "student_init": "teacher_layers", "student_layers": [1, 3, 5]}},
}
FIRST_CONFIG = {
    "model": {"class_path": "lightning_kd.methods.PKD", "init_args": {"teacher": "t", "student_init": "teacher_first", "student_layers": 3}},
}
BASELINE_CONFIG = {"model": {"class_path": "lightning_kd.methods.StudentOnly", "init_args": {"learning_rate": 1e-4}}}
PREDICTION_CONFIG = {"model": {"class_path": "lightning_kd.methods.TinyBERT", "init_args": {"teacher": "t", "terms": []}}}


@pytest.fixture
def board(tmp_path, monkeypatch):
    """Write a board with a baseline, a one-stage and a two-stage row; return a function that writes
    the spec file with overrides and returns its path (cwd is the temporary directory)."""
    monkeypatch.chdir(tmp_path)
    for name, document in {"kd.yaml": KD_CONFIG, "first.yaml": FIRST_CONFIG, "base.yaml": BASELINE_CONFIG, "pred.yaml": PREDICTION_CONFIG}.items():
        Path(name).write_text(yaml.safe_dump(document))
    Path("trainer.yaml").write_text("trainer: {max_epochs: 1}\n")
    Path("teacher.yaml").write_text("model: {class_path: lightning_kd.methods.StudentOnly}\n")

    def write(**changes) -> Path:
        document = {
            "seeds": [1, 2],
            "precision": "32-true",
            "trainer_config": "trainer.yaml",
            "tasks": {"rotten_tomatoes": {"teacher": "teacher_dir", "teacher_config": "teacher.yaml", "train_examples": 100}},
            "rows": [
                {"name": "StudentOnly", "init": [1, 3, 5], "baseline": True, "stages": [{"config": "base.yaml"}]},
                {"name": "KD", "init": [1, 3, 5], "stages": [{"config": "kd.yaml"}], "note": "why"},
                {"name": "Two", "init": [1, 3, 5], "stages": [{"config": "kd.yaml", "share": 0.5}, {"config": "pred.yaml", "share": 0.5}]},
            ],
        }
        document.update(changes)
        path = Path("board.yaml")
        path.write_text(yaml.safe_dump(document, sort_keys=False))
        return path

    return write
