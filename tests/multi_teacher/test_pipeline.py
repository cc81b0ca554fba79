"""The TAKD/DGKD chain runner: end to end on tiny on-disk models, and its up-front checks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from transformers import AutoConfig

from lightning_kd.pipeline import PipelineError, load_pipeline, main, run_pipeline
from tests.cli_fixtures import write_classification_csvs, write_models

ROOT = Path(__file__).resolve().parents[2]
TAKD_TA = str(ROOT / "configs/gkd/takd/1_finetune_ta.yaml")
TAKD_STUDENT = str(ROOT / "configs/gkd/takd/2_finetune_student.yaml")
DGKD_STUDENT = str(ROOT / "configs/gkd/dgkd/1_finetune.yaml")


def tiny_defaults(root: Path, teacher: Path, files: dict) -> dict:
    return {
        "overrides": {
            "data": "lightning_kd.data.GlueDataModule",
            "data.task": "text-classification",
            "data.tokenizer": str(teacher),
            "data.train_file": str(files["train"]),
            "data.validation_file": str(files["validation"]),
            "data.text_columns": ["text"],
            "data.label_column": "label",
            "data.batch_size": 4,
            "data.max_length": 16,
            "trainer.accelerator": "cpu",
            "trainer.max_steps": 2,
            "trainer.limit_val_batches": 1,
            "trainer.num_sanity_val_steps": 0,
            "trainer.enable_progress_bar": False,
            "trainer.enable_model_summary": False,
            "trainer.logger": False,
            "trainer.default_root_dir": str(root / "runs"),
        }
    }


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline_assets")
    return {**write_models(root), **write_classification_csvs(root)}


def write(path: Path, document: dict) -> Path:
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def test_takd_then_dgkd_chain_end_to_end(assets, tmp_path):
    teacher = assets["teacher_classification"]
    pipeline = write(tmp_path / "chain.yaml", {
        "output_dir": str(tmp_path / "out"),
        "defaults": tiny_defaults(tmp_path, teacher, assets),
        "stages": [
            {"name": "ta", "config": TAKD_TA, "overrides": {"model.init_args.teacher": str(teacher)}},
            {"name": "student", "config": [TAKD_STUDENT], "overrides": {"model.init_args.teacher": "${stages.ta.export}"}},
            {"name": "dense", "config": DGKD_STUDENT,
             "overrides": {"model.init_args.teachers": ["${stages.ta.export}", str(teacher)]}},
        ],
    })
    exports = run_pipeline(pipeline)
    assert exports == {name: tmp_path / "out" / name for name in ("ta", "student", "dense")}
    assert AutoConfig.from_pretrained(exports["ta"]).num_hidden_layers == 9  # the teacher's first 9 of 12 layers
    assert AutoConfig.from_pretrained(exports["student"]).num_hidden_layers == 6  # the TA's first 6
    assert json.loads((exports["student"] / "distillation.json").read_text())["teachers"] == [str(exports["ta"])]
    assert json.loads((exports["dense"] / "distillation.json").read_text())["teachers"] == [str(exports["ta"]), str(teacher)]


def test_shipped_pipelines_load(monkeypatch):
    monkeypatch.chdir(ROOT)  # their paths are relative to the repository root
    for name in ("takd", "dgkd"):
        stages = load_pipeline(f"configs/pipelines/{name}.yaml")
        assert [s.name for s in stages] == ["ta", "student"]
        assert "${stages.ta.export}" in json.dumps(stages[1].overrides)


def test_dry_run_prints_each_stage_with_exports_substituted(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    main(["configs/pipelines/dgkd.yaml", "--dry-run", "--", "--trainer.max_epochs=3"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and all(line.endswith("--trainer.max_epochs=3") for line in lines)
    assert '--model.init_args.teachers=["outputs/gkd/dgkd/ta/student", "outputs/gkd/teacher_finetuned"]' in lines[1]


@pytest.mark.parametrize(
    "stages, message",
    [
        ([{"name": "a", "config": "missing.yaml"}], "does not exist"),
        ([{"name": "a", "config": TAKD_TA, "overrides": {"model.init_args.teacher": "${stages.nope.export}"}}], "'nope', which does not exist"),
        (
            [
                {"name": "a", "config": TAKD_TA, "overrides": {"model.init_args.teacher": "${stages.b.export}"}},
                {"name": "b", "config": TAKD_TA},
            ],
            "runs later",
        ),
        ([{"name": "a", "config": TAKD_TA, "overrides": {"x": "${env.HOME}"}}], "unknown reference"),
        ([{"name": "a", "config": TAKD_TA, "override": {}}], "unknown key"),
        ([{"name": "a", "config": TAKD_TA}, {"name": "a", "config": TAKD_TA}], "used twice"),
        ([{"name": "a"}], "`config` is missing"),
    ],
)
def test_bad_pipelines_fail_before_anything_runs(stages, message, tmp_path, monkeypatch):
    import lightning_kd.cli

    monkeypatch.setattr(lightning_kd.cli, "run_cli", lambda *a, **k: pytest.fail("a stage ran"))
    pipeline = write(tmp_path / "bad.yaml", {"stages": stages})
    with pytest.raises(PipelineError, match=message):
        run_pipeline(pipeline)


def test_start_at_needs_the_earlier_exports(tmp_path):
    pipeline = write(tmp_path / "p.yaml", {
        "output_dir": str(tmp_path / "out"),
        "stages": [
            {"name": "ta", "config": TAKD_TA},
            {"name": "student", "config": TAKD_STUDENT, "overrides": {"model.init_args.teacher": "${stages.ta.export}"}},
        ],
    })
    with pytest.raises(PipelineError, match="run that stage first"):
        run_pipeline(pipeline, start_at="student")
    with pytest.raises(PipelineError, match="not a stage"):
        run_pipeline(pipeline, start_at="nope")
    with pytest.raises(PipelineError, match="every stage"):
        run_pipeline(pipeline, extra_args=["--export.dirpath=x"])


def test_an_interrupted_stage_stops_the_pipeline_with_its_exit_status(assets, tmp_path, monkeypatch, capsys):
    import lightning_kd.cli

    teacher = assets["teacher_classification"]
    pipeline = write(tmp_path / "chain.yaml", {
        "output_dir": str(tmp_path / "out"),
        "defaults": tiny_defaults(tmp_path, teacher, assets),
        "stages": [
            {"name": "ta", "config": TAKD_TA, "overrides": {
                "model.init_args.teacher": str(teacher),
                # Pre-empted after its first step: SIGTERM, which Lightning alone turns into exit status 0.
                "trainer.callbacks": [{"class_path": "tests.fault.helpers.SignalAfterStep", "init_args": {"step": 1}}],
            }},
            {"name": "student", "config": TAKD_STUDENT, "overrides": {"model.init_args.teacher": "${stages.ta.export}"}},
        ],
    })
    stages_run = []
    real_run_cli = lightning_kd.cli.run_cli
    monkeypatch.setattr(lightning_kd.cli, "run_cli", lambda args: stages_run.append(args) or real_run_cli(args))
    with pytest.raises(SystemExit) as exit_info:
        main([str(pipeline)])
    assert exit_info.value.code == 143
    assert "Stage 'ta' was interrupted by SIGTERM; the later stages did not run." in capsys.readouterr().err
    assert len(stages_run) == 1, "the student stage must not run"
    assert not (tmp_path / "out" / "ta").exists() and not (tmp_path / "out" / "student").exists()


def test_a_failing_stage_stops_the_pipeline_and_is_named(assets, tmp_path, capsys):
    teacher = assets["teacher_classification"]
    pipeline = write(tmp_path / "chain.yaml", {
        "output_dir": str(tmp_path / "out"),
        "defaults": tiny_defaults(tmp_path, teacher, assets),
        "stages": [
            {"name": "ta", "config": TAKD_TA, "overrides": {"model.init_args.teacher": str(tmp_path / "no_such_teacher")}},
            {"name": "student", "config": TAKD_STUDENT, "overrides": {"model.init_args.teacher": "${stages.ta.export}"}},
        ],
    })
    with pytest.raises(Exception) as error:  # the stage's own error, with its traceback: exit status 1
        main([str(pipeline)])
    assert "no_such_teacher" in str(error.value)
    assert "stage ta failed; the later stages did not run" in capsys.readouterr().err
    assert not (tmp_path / "out" / "student").exists()
