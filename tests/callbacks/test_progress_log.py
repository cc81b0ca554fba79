"""ProgressLog prints plain progress lines when stdout is not a terminal (a log file)."""

from __future__ import annotations

import re
import sys

import pytest
import pytorch_lightning as pl
import torch

from lightning_kd.callbacks import ProgressLog
from lightning_kd.cli import run_cli
from tests.callbacks.runs import RowsData
from tests.cli_fixtures import classification_data_args, quick_trainer_args, write_classification_csvs
from tests.conftest import make_tiny_bert, write_tiny_tokenizer

LINE = re.compile(
    r"^\[progress\] step (?P<step>\d+)/(?P<total>\d+) \(\d+\.\d%\) epoch \d+ \| loss (?P<loss>\d+\.\d{4}) \| "
    r"(?P<examples>[\d.]+) examples/s, (?P<tokens>\d+) tokens/s \| elapsed \d+s(?P<eta>, ETA \d+s)?$"
)


class _Tiny(pl.LightningModule):
    """One embedding scalar per token id: a model small enough that the run itself is the test."""

    def __init__(self) -> None:
        super().__init__()
        self.weights = torch.nn.Embedding(220, 1)

    def training_step(self, batch, batch_idx):
        return (self.weights(batch["input_ids"]).squeeze(-1) * batch["attention_mask"]).mean() ** 2 + 1.0

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _fit(tmp_path, callback: ProgressLog, steps: int, accumulate: int = 1) -> None:
    trainer = pl.Trainer(
        accelerator="cpu", max_steps=steps, accumulate_grad_batches=accumulate, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[callback], default_root_dir=tmp_path,
    )
    trainer.fit(_Tiny(), datamodule=RowsData(rows=16))


def _lines(capsys) -> list[re.Match]:
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[progress]")]
    matches = [LINE.match(line) for line in printed]
    assert all(matches), printed
    return matches


def test_lines_every_n_steps_with_loss_throughput_and_eta(tmp_path, capsys):
    _fit(tmp_path, ProgressLog(every_n_steps=2), steps=5)
    lines = _lines(capsys)
    assert [int(m["step"]) for m in lines] == [1, 2, 4, 5]  # the first step, every 2nd, the last
    assert {int(m["total"]) for m in lines} == {5}
    assert all(m["eta"] for m in lines[:-1]) and lines[-1]["eta"] is None
    assert all(float(m["loss"]) >= 1.0 for m in lines)  # the loss is ≥ 1 by construction
    # Every example has 10 positions, some of them padding: tokens/s lies between 5 and 10 × examples/s.
    assert all(5 * float(m["examples"]) <= int(m["tokens"]) + 1 <= 10 * float(m["examples"]) + 1 for m in lines)


def test_steps_count_optimizer_steps_under_gradient_accumulation(tmp_path, capsys):
    _fit(tmp_path, ProgressLog(every_n_steps=1), steps=3, accumulate=2)
    assert [int(m["step"]) for m in _lines(capsys)] == [1, 2, 3]


@pytest.mark.parametrize(("when", "terminal", "prints"), [
    ("not_tty", True, False), ("always", True, True), ("never", False, False), ("not_tty", False, True),
])
def test_when_to_print(tmp_path, capsys, monkeypatch, when, terminal, prints):
    monkeypatch.setattr(sys.stdout, "isatty", lambda: terminal)
    _fit(tmp_path, ProgressLog(every_n_steps=1, when=when), steps=2)
    assert bool(_lines(capsys)) is prints


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="every_n_steps must be >= 1"):
        ProgressLog(every_n_steps=0)
    with pytest.raises(ValueError, match="'not_tty', 'always' or 'never'"):
        ProgressLog(when="sometimes")  # type: ignore[arg-type]


def test_the_cli_adds_it_under_its_own_key(tmp_path):
    student = write_tiny_tokenizer(tmp_path / "student")
    make_tiny_bert("classification").save_pretrained(student)
    base = ["--model=lightning_kd.methods.StudentOnly", f"--model.student={student}",
            *classification_data_args(student, write_classification_csvs(tmp_path)), *quick_trainer_args(tmp_path)]
    (default,) = [c for c in run_cli(base, run=False).trainer.callbacks if isinstance(c, ProgressLog)]
    assert default.every_n_steps == 50 and default.when == "not_tty"
    chosen = run_cli([*base, "--progress.every_n_steps=7", "--progress.when=never"], run=False)
    (progress,) = [c for c in chosen.trainer.callbacks if isinstance(c, ProgressLog)]
    assert progress.every_n_steps == 7 and progress.when == "never"
