"""Fit the tiny KD problem of tests/core/test_ddp.py under DeepSpeed on CPU processes and save the student.

Run as a script (DeepSpeed's launcher re-executes this file once per extra process, which it
cannot do for a pytest command line):

    python -m tests.scale.deepspeed_run --stage 2 --devices 2 --out /tmp/student.pt

Rank 0 writes ``{"student": state_dict, "teacher_shard": [elements held per rank], ...}``.
"""

from __future__ import annotations

import argparse

import pytorch_lightning as pl
import torch

from tests.core.test_ddp import _Data, _method
from pytorch_lightning.strategies import DeepSpeedStrategy

from tests.scale.deepspeed_cpu import CPUDeepSpeedStrategy


class ResumableRows(pl.LightningDataModule):
    """The same rows in an order fixed by (seed, epoch), resumable mid-epoch (as the library's data modules)."""

    def train_dataloader(self):
        from lightning_kd.data.sampling import EpochShuffleSampler, ResumableDataLoader, fit_position
        from tests.core.test_ddp import _Rows

        rows = _Rows()
        return ResumableDataLoader(rows, batch_size=8, sampler=EpochShuffleSampler(rows, 0), position=lambda: fit_position(self.trainer))


def fit(
    stage: int,
    devices: int,
    precision: str,
    steps: int,
    activation_checkpointing: bool = False,
    datamodule=None,
    ckpt_path=None,
    callbacks=(),
    accelerator: str = "cpu",
):
    """One fit of the tiny KD problem; the global batch is 8 rows whatever ``devices`` is.

    ``accelerator="gpu"`` uses the stock ``DeepSpeedStrategy`` (NCCL between GPUs)."""
    method = _method()
    if activation_checkpointing:
        from lightning_kd.models.loading import enable_activation_checkpointing

        enable_activation_checkpointing(method.student)
    trainer = pl.Trainer(
        accelerator=accelerator,
        devices=devices,
        strategy=CPUDeepSpeedStrategy(stage=stage) if accelerator == "cpu" else DeepSpeedStrategy(stage=stage),
        precision=precision,
        max_steps=steps,
        logger=False,
        enable_checkpointing=bool(callbacks),
        callbacks=list(callbacks),
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,
    )
    trainer.fit(method, datamodule=datamodule or _Data(8 // devices), ckpt_path=ckpt_path)
    return method, trainer


def gathered_student(method) -> dict[str, torch.Tensor]:
    """The full student weights (ZeRO-3 holds only a shard of each parameter per process)."""
    import deepspeed

    with deepspeed.zero.GatheredParameters(list(method.student.parameters())):
        return {k: v.detach().float().cpu().clone() for k, v in method.student.state_dict().items()}


def teacher_elements_held(method) -> int:
    """Teacher parameter elements this process stores (a ZeRO-3 shard, or everything)."""
    return sum(p.ds_tensor.numel() if hasattr(p, "ds_tensor") else p.numel() for p in method.teachers.parameters())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--stage", type=int, required=True)
    parser.add_argument("--devices", type=int, default=2)
    parser.add_argument("--precision", default="32-true")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--out", required=True)
    parser.add_argument("--accelerator", choices=["cpu", "gpu"], default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(1)
    method, trainer = fit(args.stage, args.devices, args.precision, args.steps, accelerator=args.accelerator)
    student = gathered_student(method)
    held = torch.tensor([teacher_elements_held(method)], device=method.device)  # NCCL gathers device tensors
    shards = [torch.zeros_like(held) for _ in range(trainer.world_size)]
    torch.distributed.all_gather(shards, held)
    if trainer.is_global_zero:
        torch.save(
            {
                "student": student,
                "teacher_shard": [int(s) for s in shards],
                "teacher_total": sum(p.ds_numel if hasattr(p, "ds_numel") else p.numel() for p in method.teachers.parameters()),
                "world_size": trainer.world_size,
            },
            args.out,
        )


if __name__ == "__main__":
    main()
