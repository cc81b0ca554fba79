"""Every shipped YAML parses with the CLI, and every method config trains a few steps on tiny models.

The smoke run keeps each config's method and knobs and swaps only what cannot exist in a test:
teacher/student checkpoints (tiny on-disk BERTs with the stage's head), the data (tiny generated
files) and the trainer (2 CPU steps). A few seed values that need BERT-size widths are scaled down
in ``TINY_OVERRIDES``, each with the reason.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from lightning_kd.cli import run_cli
from tests.cli_fixtures import (
    STUDENT_SHAPE,
    TEACHER_SHAPE,
    quick_trainer_section,
    write_causal_models,
    write_classification_csvs,
    write_corpus,
    write_models,
)
from tests.conftest import make_tiny_bert, write_tiny_tokenizer

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted(p.relative_to(ROOT) for p in (ROOT / "configs").rglob("*.yaml"))
METHOD_CONFIGS = [p for p in CONFIGS if "model" in (yaml.safe_load((ROOT / p).read_text()) or {})]

# Seed values that assume BERT-size models, scaled to the tiny ones (widths 96/48, 12 heads).
TINY_OVERRIDES = {
    "mgskd": {"relation_heads": 12},  # 64 relation heads need a width divisible by 64
}
# Configs whose method needs a student as wide as the teacher (e.g. DistilBERT's cosine term).
SAME_WIDTH_STUDENT = {
    "configs/gkd/distilbert/1_pretrain.yaml",
    "configs/gkd/distilbert/1_pretrain_ce_mask_padding.yaml",
    "configs/gkd/sid/2_finetune.yaml",  # SID compares [CLS] vectors and attention maps directly
}
# Method arguments under which the models continue the data's prompts (docs/on_policy.md): such configs train
# on tiny prompt/response pairs, and their decoding blocks write few tokens (the tiny models read 64 positions).
GENERATES = ("on_policy", "sequence_kd")
# Configs whose method needs MobileBERT-shaped models; tests/methods/test_mobilebert.py runs them on tiny MobileBERTs.
NEEDS_MOBILEBERT = {
    "configs/pretrain/mobilebert/mobilebert_from_ib_bert.yaml",
    "configs/gkd/mobilebert/2_pretrain.yaml",
}


def test_there_are_configs_for_every_method():
    import lightning_kd.methods as methods

    covered = {yaml.safe_load((ROOT / p).read_text())["model"]["class_path"].rsplit(".", 1)[-1] for p in METHOD_CONFIGS}
    missing = set(methods.__all__) - covered - {"MultiTeacherStrategy"}
    assert not missing, f"methods without a config: {sorted(missing)}"


@pytest.mark.parametrize("config", CONFIGS, ids=str)
def test_config_parses(config, capsys, monkeypatch):
    if config.parts[1] == "pipelines":  # a stage list for `python -m lightning_kd.pipeline`, not a fit config
        from lightning_kd.pipeline import load_pipeline

        monkeypatch.chdir(ROOT)
        assert load_pipeline(ROOT / config)
        return
    args = ["fit", "--config", str(ROOT / config), "--print_config"]
    if config.parts[1] == "trainer":
        args[1:1] = ["--model=lightning_kd.methods.StudentOnly"]
    with pytest.raises(SystemExit) as exit_info:
        run_cli(args)
    assert exit_info.value.code == 0, capsys.readouterr().err


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("config_assets")
    assets = {**write_models(root), **write_causal_models(root), **write_classification_csvs(root), "corpus": write_corpus(root)}
    from tests.on_policy.helpers import write_pairs

    assets["pairs"] = write_pairs(root)
    wide = root / "student_mlm_wide"
    make_tiny_bert("mlm", seed=3, layers=STUDENT_SHAPE["layers"], hidden=TEACHER_SHAPE["hidden"], heads=12).save_pretrained(wide)
    write_tiny_tokenizer(wide)
    assets["student_mlm_wide"] = wide
    return assets


def _stage(config: Path, document: dict) -> str:
    data_class = (document.get("data") or {}).get("class_path", "")
    if data_class:
        return {"PretrainDataModule": "mlm", "CausalLMDataModule": "causal"}.get(data_class.rsplit(".", 1)[-1], "classification")
    return "mlm" if "pretrain" in config.name else "classification"


def _tiny_data(stage: str, assets: dict, examples: bool = False) -> dict:
    tokenizer = str(assets[f"teacher_{stage}"])
    if stage == "causal" and examples:
        return {
            "class_path": "lightning_kd.data.CausalLMDataModule",
            "init_args": {"tokenizer": tokenizer, "train_files": [str(assets["pairs"])], "prompt_field": "prompt",
                          "response_field": "response", "block_size": 24, "batch_size": 4, "validation_fraction": 0.1},
        }
    if stage == "causal":
        return {
            "class_path": "lightning_kd.data.CausalLMDataModule",
            "init_args": {"tokenizer": tokenizer, "train_files": [str(assets["corpus"])], "block_size": 16, "batch_size": 4, "validation_fraction": 0.1},
        }
    if stage == "mlm":
        return {
            "class_path": "lightning_kd.data.PretrainDataModule",
            "init_args": {"tokenizer": tokenizer, "train_files": [str(assets["corpus"])], "block_size": 16, "batch_size": 4, "validation_fraction": 0.1},
        }
    return {
        "class_path": "lightning_kd.data.GlueDataModule",
        "init_args": {
            "task": "text-classification",
            "tokenizer": tokenizer,
            "train_file": str(assets["train"]),
            "validation_file": str(assets["validation"]),
            "text_columns": ["text"],
            "label_column": "label",
            "batch_size": 4,
            "max_length": 16,
        },
    }


@pytest.mark.parametrize("config", METHOD_CONFIGS, ids=str)
def test_method_config_trains_on_tiny_models(config, tiny, tmp_path):
    if str(config) in NEEDS_MOBILEBERT:
        pytest.skip("needs MobileBERT-shaped models; run by tests/methods/test_mobilebert.py")
    document = yaml.safe_load((ROOT / config).read_text())
    stage = _stage(config, document)
    init = document["model"].setdefault("init_args", {})
    if init.get("teacher"):
        init["teacher"] = str(tiny[f"teacher_{stage}"])
    if init.get("teachers"):
        init["teachers"] = [str(tiny[f"teacher_{stage}"])] * len(init["teachers"])
    if isinstance(init.get("student"), str):
        wide = str(config) in SAME_WIDTH_STUDENT
        init["student"] = str(tiny["student_mlm_wide"] if wide else tiny[f"student_{stage}"])
    if stage == "causal" and isinstance(init.get("student_layers"), int):  # 15 of SmolLM2's 30 layers: 4 of the tiny 12
        init["student_layers"] = min(init["student_layers"], 4)
    for method, overrides in TINY_OVERRIDES.items():
        if config.parts[-2] == method:
            init.update({k: v for k, v in overrides.items() if k in init})
    generates = any(init.get(name) for name in GENERATES)
    for block in ("generation", "sequence_kd") if generates else ():
        if isinstance(init.get(block), dict):
            init[block]["max_new_tokens"] = 4
    document["data"] = _tiny_data(stage, tiny, examples=generates)
    callbacks = (document.get("trainer") or {}).get("callbacks")  # schedules the method needs stay
    document["trainer"] = quick_trainer_section(tmp_path, callbacks)
    document["export"] = {"dirpath": str(tmp_path / "student")}
    patched = tmp_path / "config.yaml"
    patched.write_text(yaml.safe_dump(document))
    cli = run_cli(["fit", "--config", str(patched)])
    assert cli.trainer.global_step == 2
    assert (tmp_path / "student" / "config.json").exists()
