"""The progress line reports the share of the time spent generating training batches, when the module counts it."""

from __future__ import annotations

import re

import pytorch_lightning as pl

from lightning_kd.callbacks import ProgressLog
from tests.callbacks.runs import RowsData
from tests.callbacks.test_progress_log import _Tiny


class _Generating(_Tiny):
    """Counts one second of "generation" per step, as a module with generated batches counts its own."""

    def __init__(self) -> None:
        super().__init__()
        self.generation_seconds = 0.0

    def training_step(self, batch, batch_idx):
        self.generation_seconds += 1.0
        return super().training_step(batch, batch_idx)


def test_the_progress_line_reports_the_share_spent_generating(tmp_path, capsys):
    trainer = pl.Trainer(accelerator="cpu", max_steps=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[ProgressLog(every_n_steps=1, when="always")], default_root_dir=tmp_path)
    trainer.fit(_Generating(), datamodule=RowsData(rows=16))
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[progress]")]
    assert len(lines) == 3 and all(re.search(r"\| generating \d+% \| elapsed", line) for line in lines), lines
    trainer = pl.Trainer(accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[ProgressLog(every_n_steps=1, when="always")], default_root_dir=tmp_path)
    trainer.fit(_Tiny(), datamodule=RowsData(rows=16))
    assert "generating" not in capsys.readouterr().out  # a module that generates nothing gets no such part
