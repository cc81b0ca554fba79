"""The data modules inside a real Trainer, and as LightningCLI sees their signatures."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from jsonargparse import ArgumentParser
from pytorch_lightning import LightningDataModule, LightningModule, Trainer

from lightning_kd.data import GlueDataModule, PretrainDataModule
from tests.conftest import make_tiny_bert
from tests.data.layouts import write_glue


class _Tiny(LightningModule):
    """The smallest module that trains on a batch dict and logs the data module's metrics."""

    def __init__(self, kind: str, num_labels: int = 2) -> None:
        super().__init__()
        extra = {"num_labels": num_labels} if kind == "classification" else {}
        self.model = make_tiny_bert(kind, **extra)

    def setup(self, stage: str) -> None:
        self.val_metrics = self.trainer.datamodule.build_metrics("val/")

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self.model(**batch).loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        output = self.model(**batch)
        self.val_metrics.update(output.logits, batch["labels"])
        self.log_dict(self.val_metrics, batch_size=len(batch["labels"]))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _fit(module: LightningModule, data: LightningDataModule) -> dict[str, torch.Tensor]:
    trainer = Trainer(max_epochs=1, limit_train_batches=1, limit_val_batches=1, num_sanity_val_steps=0,
                      accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False)
    trainer.fit(module, datamodule=data)
    return trainer.callback_metrics


def test_glue_module_trains_and_validates(tmp_path: Path, tiny_tokenizer_dir: Path, cache_dir: str) -> None:
    write_glue(tmp_path, "stsb")
    data = GlueDataModule("stsb", str(tiny_tokenizer_dir), data_dir=str(tmp_path), batch_size=2, cache_dir=cache_dir)
    metrics = _fit(_Tiny("classification", num_labels=data.num_labels), data)
    assert {"val/pearson", "val/spearman"} <= set(metrics)


def test_pretrain_module_trains_and_validates(tmp_path: Path, tiny_tokenizer_dir: Path, cache_dir: str) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the movie was good and the actors were great fun\n" * 40)
    data = PretrainDataModule(str(tiny_tokenizer_dir), train_files=[str(corpus)], block_size=16, batch_size=4,
                              validation_fraction=0.25, whole_word_mask=True, cache_dir=cache_dir)
    metrics = _fit(_Tiny("mlm"), data)
    assert "val/mlm_accuracy" in metrics


@pytest.mark.parametrize("cls", [GlueDataModule, PretrainDataModule])
def test_signatures_parse_with_documented_arguments(cls: type) -> None:
    parser = ArgumentParser()
    parser.add_class_arguments(cls, "data")
    help_text = parser.format_help()
    assert "model name, local directory or ``embedded:<name>``" in help_text, "Args docstrings reach --help"
    config = parser.parse_args(["--data.tokenizer=tok", "--data.batch_size=8"]
                               + (["--data.task=sst2", "--data.data_dir=glue"] if cls is GlueDataModule
                                  else ["--data.train_files=[a.txt]"]))
    built = cls(**vars(config.data))
    assert built.batch_size == 8


class _Recorder(LightningModule):
    """Records a fingerprint of every training batch; trains one scalar so checkpoints work."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.seen: list[list[int]] = []

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        self.seen.append(batch["input_ids"][:, 1].tolist())
        return (self.weight - 1).pow(2).sum()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_resuming_mid_epoch_replays_the_same_batches(
    tmp_path: Path, tiny_tokenizer_dir: Path, cache_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pytorch_lightning import seed_everything

    monkeypatch.setenv("PL_GLOBAL_SEED", "0")  # seed_everything sets it; restored after the test
    from pytorch_lightning.callbacks import ModelCheckpoint

    words = "the a movie film story plot actor scene good bad great fun sad love hate best".split()
    train = tmp_path / "train.csv"
    train.write_text("text,label\n" + "\n".join(f"{words[i % 16]} film,{i % 2}" for i in range(24)) + "\n")

    def run(steps: int, ckpt_path: str | None = None, save: bool = False) -> list[list[int]]:
        seed_everything(7)
        data = GlueDataModule("custom", str(tiny_tokenizer_dir), train_file=str(train), batch_size=4,
                              cache_dir=cache_dir)
        checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=3, save_top_k=-1)
        module = _Recorder()
        Trainer(max_steps=steps, max_epochs=5, logger=False, enable_progress_bar=False, enable_model_summary=False,
                enable_checkpointing=save, callbacks=[checkpoint] if save else [],
                default_root_dir=tmp_path).fit(module, datamodule=data, ckpt_path=ckpt_path)
        return module.seen

    uninterrupted = run(9)  # one and a half epochs of 6 batches
    first = run(3, save=True)
    resumed = run(9, ckpt_path=str(next((tmp_path / "ckpt").glob("*step=3*.ckpt"))))
    assert first + resumed == uninterrupted
    assert uninterrupted[:6] != uninterrupted[6:] + uninterrupted[:3], "each epoch has its own order"
