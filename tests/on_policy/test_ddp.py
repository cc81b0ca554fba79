"""On-policy training under DDP over two CPU processes (gloo): each process generates for its own batch, and
with greedy decoding two processes of 4 rows reach the weights of one process of the same 8 rows.

The rows are such that no greedy response ends before ``max_new_tokens`` (checked): every process then
scores as many tokens, so the mean of the two processes' means (DDP averages gradients) is the single
process's mean over all tokens."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from lightning_kd.on_policy import Generation
from tests.on_policy.helpers import Recorder, method, tokenizer


class _Rows(Dataset):
    """Eight prompt/response rows of 10 tokens, prompts of 3 to 6 tokens."""

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(5)
        self.ids = torch.randint(8, 200, (8, 10), generator=g)
        self.prompt = [3 + row % 4 for row in range(8)]

    def __len__(self) -> int:
        return 8

    def __getitem__(self, index: int) -> dict:
        labels = self.ids[index].clone()
        labels[: self.prompt[index]] = -100
        return {"input_ids": self.ids[index], "attention_mask": torch.ones(10, dtype=torch.long), "labels": labels}


class _Data(pl.LightningDataModule):
    def __init__(self, per_device_batch: int) -> None:
        super().__init__()
        self.per_device_batch = per_device_batch

    def train_dataloader(self) -> DataLoader:
        rows = _Rows()
        sampler = DistributedSampler(rows, shuffle=False) if torch.distributed.is_initialized() else None
        return DataLoader(rows, batch_size=self.per_device_batch, sampler=sampler, shuffle=False)


def _fit(tok, devices: int) -> dict[str, torch.Tensor]:
    # adam_epsilon=1: steps proportional to gradients, so float rounding differences between runs stay tiny.
    kd = method(tok, on_policy=1.0, generation=Generation(max_new_tokens=4, do_sample=False), learning_rate=0.5,
                adam_epsilon=1.0, lr_schedule="constant")
    recorder = Recorder(kd) if devices == 1 else None
    trainer = pl.Trainer(accelerator="cpu", devices=devices, strategy="ddp_spawn" if devices > 1 else "auto", max_steps=2,
                         logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=0, use_distributed_sampler=False)
    trainer.fit(kd, datamodule=_Data(8 // devices))
    if recorder is not None:
        assert [batch["labels"].ne(-100).sum(1).tolist() for _, _, batch in recorder.batches] == [[4] * 8] * 2
    return {k: v.detach().clone() for k, v in kd.student.state_dict().items()}


@pytest.mark.slow
def test_two_processes_generate_their_own_batches_and_match_one_process(tmp_path):
    tok = tokenizer(tmp_path)
    single, double = _fit(tok, 1), _fit(tok, 2)
    initial = method(tok).student.state_dict()
    assert any(not torch.equal(single[k], initial[k]) for k in single), "training did not change the student"
    for key in single:
        torch.testing.assert_close(double[key], single[key], rtol=1e-4, atol=1e-5, msg=f"{key} differs")
