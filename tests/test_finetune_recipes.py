"""The shipped fine-tuning recipes and the leaderboard that measures them: every fine-tuning method of
the README is a leaderboard row, and the two recipes that used to collapse to one class now start and
scale as their diagnosis requires (docs/methods/theseus.md, docs/methods/pkd.md)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import yaml

from benchmarks.leaderboard_spec import load_spec
from lightning_kd.models.student_init import select_teacher_layers
from lightning_kd.models.theseus import teacher_blocks

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def at_root(monkeypatch):
    monkeypatch.chdir(ROOT)  # the board's paths are relative to the repository root


def _model_args(path: str) -> dict:
    return yaml.safe_load((ROOT / path).read_text())["model"]["init_args"]


def _readme_fine_tuning_classes() -> list[str]:
    blocks = (ROOT / "README.md").read_text().split("## Methods", 1)[1].split("\n\n")
    table = next(block for block in blocks if block.startswith("| method | class |"))
    classes = []
    for line in table.splitlines()[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        if "fine-tune" in cells[2] or cells[2] == "both":
            classes.append(re.findall(r"`([A-Za-z0-9]+)`", cells[1])[-1 if "then" in cells[1] else 0])
    return classes


def test_every_fine_tuning_method_of_the_readme_is_on_the_leaderboard(at_root):
    spec = load_spec("benchmarks/leaderboard.yaml")
    on_board = {stage.method() for row in spec.rows for stage in row.stages}
    expected = _readme_fine_tuning_classes()
    assert len(expected) >= 20
    assert [name for name in expected if name not in on_board] == []
    for task in spec.tasks:  # every method row has a no-teacher student of its init (load_spec checks), and a teacher
        assert any(row.baseline for row in spec.rows_of(task)) and task.teacher_config


def test_theseus_recipe_starts_each_successor_from_the_last_layer_of_its_block():
    """The first-layers student put teacher layer 2 under the head and answered one class for every review."""
    args = _model_args("configs/finetune/theseus/minilm_l3_from_minilm_l6.yaml")
    assert args["student_init"] == "teacher_uniform"
    copied = select_teacher_layers("uniform", args["student_layers"], 6)
    assert copied == [block[-1] for block in teacher_blocks(6, args["student_layers"])] == [1, 3, 5]


def test_pkd_recipe_uses_the_authors_scale():
    """beta = 100 was tuned on the mean over features and pairs; the summed form made the patience term
    768 times stronger here and the student never left the one-class answer."""
    args = _model_args("configs/finetune/pkd/minilm_l3_from_minilm_l6.yaml")
    from lightning_kd.methods import PKD
    import inspect

    defaults = {k: v.default for k, v in inspect.signature(PKD.__init__).parameters.items()}
    scale = {k: args.get(k, defaults[k]) for k in ("feature_reduction", "pair_reduction")}
    assert scale == {"feature_reduction": "mean", "pair_reduction": "mean"} and args["beta"] == 100.0


@pytest.mark.skipif(not os.path.exists(ROOT / "benchmarks/leaderboard_results.json"), reason="no results yet")
def test_stored_results_belong_to_rows_of_the_board(at_root):
    from benchmarks.leaderboard_results import Results

    spec = load_spec("benchmarks/leaderboard.yaml")
    names = {row.name for row in spec.rows} | {"Teacher"}
    results = Results("benchmarks/leaderboard_results.json")
    assert {entry["row"] for entry in results.runs.values()} <= names
