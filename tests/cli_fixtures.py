"""On-disk tiny models and data for CLI and config tests (what a user's directories look like)."""

from __future__ import annotations

import csv
import random
from pathlib import Path

import pytorch_lightning as pl

from tests.conftest import WORDS, make_tiny_bert, write_tiny_lm_tokenizer, write_tiny_tokenizer
from tests.families import make_family_model

# Widths divisible by the seed's 48 MiniLMv2 relation heads; 12 teacher layers so every seed layer choice is valid.
TEACHER_SHAPE = {"layers": 12, "hidden": 96, "heads": 12}
STUDENT_SHAPE = {"layers": 6, "hidden": 48, "heads": 12}


def write_models(root: Path) -> dict[str, Path]:
    """Tiny classification and MLM teachers/students, each saved with the tiny tokenizer."""
    paths = {}
    for kind in ("classification", "mlm"):
        for role, shape, seed in (("teacher", TEACHER_SHAPE, 1), ("student", STUDENT_SHAPE, 2)):
            directory = root / f"{role}_{kind}"
            model = make_tiny_bert(kind, seed=seed, **shape)
            model.config.max_position_embeddings = 64
            model.save_pretrained(directory)
            write_tiny_tokenizer(directory)
            paths[f"{role}_{kind}"] = directory
    # Without dropout a run is a pure function of data order and weights (Lightning does not checkpoint RNG state).
    deterministic = root / "teacher_classification_no_dropout"
    make_tiny_bert("classification", seed=1, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, **TEACHER_SHAPE).save_pretrained(deterministic)
    write_tiny_tokenizer(deterministic)
    paths["teacher_classification_no_dropout"] = deterministic
    return paths


#: The tiny decoders' shape: Llamas with grouped-query attention (12 heads, 4 key/value heads); the
#: teacher has 12 layers, so every layer choice of the causal-LM configs is valid; 64 positions.
LM_SHAPE = {"hidden_size": 96, "num_attention_heads": 12, "num_key_value_heads": 4, "intermediate_size": 192}


def write_causal_models(root: Path) -> dict[str, Path]:
    """A tiny Llama teacher and a 6-layer student with causal-LM heads, saved with the tiny LM tokenizer."""
    paths = {}
    for role, layers, seed in (("teacher", 12, 1), ("student", 6, 2)):
        directory = root / f"{role}_causal"
        model = make_family_model("llama", "causal", layers=layers, seed=seed, **LM_SHAPE)
        model.save_pretrained(directory)
        write_tiny_lm_tokenizer(directory)
        paths[f"{role}_causal"] = directory
    return paths


def fit_with_checkpoints(method, data, root: Path, *, stop_at: int | None = None, ckpt_path: str | None = None,
                         max_steps: int = 6) -> pl.Trainer:
    """``trainer.fit`` on CPU with a checkpoint every 3 steps under ``root/ckpt``, seeded, optionally
    interrupted after ``stop_at`` steps or resumed from ``ckpt_path`` (for resume-equals-uninterrupted tests)."""
    from pytorch_lightning.callbacks import ModelCheckpoint

    callbacks = [ModelCheckpoint(dirpath=root / "ckpt", every_n_train_steps=3, save_top_k=-1)]
    if stop_at is not None:
        callbacks.append(StopAtStep(stop_at))
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=max_steps, max_epochs=5, limit_val_batches=1, num_sanity_val_steps=0,
                         enable_progress_bar=False, enable_model_summary=False, logger=False, default_root_dir=root, callbacks=callbacks)
    pl.seed_everything(7)
    trainer.fit(method, datamodule=data, ckpt_path=ckpt_path)
    return trainer


class StopAtStep(pl.Callback):
    """Interrupt a run after ``step`` optimizer steps, as a crash would (the schedule still targets max_steps)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step >= self.step:
            trainer.should_stop = True


def _sentence(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 10)))


def write_classification_csvs(root: Path, rows: int = 24) -> dict[str, Path]:
    """train/validation/test CSVs with ``text`` and ``label`` (good/bad) columns."""
    rng = random.Random(0)
    paths = {}
    for split in ("train", "validation", "test"):
        path = root / f"{split}.csv"
        with path.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["text", "label"])
            for i in range(rows):
                writer.writerow([_sentence(rng), "good" if i % 2 else "bad"])
        paths[split] = path
    return paths


def write_corpus(root: Path, lines: int = 200) -> Path:
    """A plain-text corpus, one sentence per line."""
    rng = random.Random(1)
    path = root / "corpus.txt"
    path.write_text("\n".join(_sentence(rng) for _ in range(lines)) + "\n")
    return path


def classification_data_args(tokenizer: Path, files: dict[str, Path]) -> list[str]:
    return [
        "--data=lightning_kd.data.GlueDataModule",
        "--data.task=text-classification",
        f"--data.tokenizer={tokenizer}",
        f"--data.train_file={files['train']}",
        f"--data.validation_file={files['validation']}",
        f"--data.test_file={files['test']}",
        "--data.text_columns=[text]",
        "--data.label_column=label",
        "--data.batch_size=4",
        "--data.max_length=16",
    ]


def pretrain_data_args(tokenizer: Path, corpus: Path) -> list[str]:
    return [
        "--data=lightning_kd.data.PretrainDataModule",
        f"--data.tokenizer={tokenizer}",
        f"--data.train_files=[{corpus}]",
        "--data.block_size=16",
        "--data.batch_size=4",
        "--data.validation_fraction=0.1",
    ]


def causal_data_args(tokenizer: Path, corpus: Path) -> list[str]:
    return [
        "--data=lightning_kd.data.CausalLMDataModule",
        f"--data.tokenizer={tokenizer}",
        f"--data.train_files=[{corpus}]",
        "--data.block_size=16",
        "--data.batch_size=4",
        "--data.validation_fraction=0.1",
    ]


def quick_trainer_args(root: Path, steps: int = 2) -> list[str]:
    return [
        "--trainer.accelerator=cpu",
        "--trainer.devices=1",
        f"--trainer.max_steps={steps}",
        "--trainer.limit_val_batches=1",
        "--trainer.num_sanity_val_steps=0",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        "--trainer.logger=false",
        f"--trainer.default_root_dir={root}",
        f"--export.dirpath={root / 'student'}",
    ]


def quick_trainer_section(root: Path, callbacks: list | None = None, steps: int = 2) -> dict:
    """The ``trainer:`` block of a YAML config for a short CPU run (keeping the config's callbacks)."""
    section = {
        "accelerator": "cpu",
        "devices": 1,
        "max_steps": steps,
        "limit_val_batches": 1,
        "num_sanity_val_steps": 0,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "logger": False,
        "default_root_dir": str(root),
    }
    if callbacks:
        section["callbacks"] = callbacks
    return section


def write_cli_assets(root: Path) -> dict[str, Path]:
    """Tiny teachers/students, classification CSVs and an MLM corpus under ``root`` (what CLI tests run on)."""
    return {**write_models(root), **write_classification_csvs(root), "corpus": write_corpus(root)}
