"""On-policy and sequence-level KD under DeepSpeed ZeRO-3 on CPU processes (gloo), as a script.

    python -m tests.on_policy.zero3_run --devices 2 --out /tmp/zero3.json

Lightning's launcher re-executes this command once per extra process. The student is partitioned by the
training engine, the teacher by its inference engine (placement ``auto`` under stage 3). Half the
batches are the student's samples, the others the teacher's cached responses. Many token ids count as
EOS here, so responses end after a token or a few, at different steps on each process: a process whose
rows have all ended must keep running forward passes (``generate(synced_gpus=True)``), or the other
one's parameter gathers would wait for it forever. Rank 0 writes what each process generated.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import pytorch_lightning as pl
import torch

from lightning_kd.on_policy import Generation, SequenceKD, SpecialTokens
from tests.on_policy.helpers import PAD, Recorder, data, method, tokenizer, write_pairs
from tests.scale.deepspeed_cpu import CPUDeepSpeedStrategy


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--devices", type=int, default=2)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--root", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    root = Path(args.root)
    root.mkdir(parents=True, exist_ok=True)
    tok, pairs = tokenizer(root), write_pairs(root)
    pl.seed_everything(2)
    kd = method(tok, on_policy=0.5, generation=Generation(max_new_tokens=6),
                sequence_kd=SequenceKD(path=str(root / "responses"), max_new_tokens=6))
    kd.generated_batches.tokens = SpecialTokens(tuple(range(8, 120)), PAD)  # responses end early, at varying steps
    recorder = Recorder(kd)
    trainer = pl.Trainer(accelerator="cpu", devices=args.devices, strategy=CPUDeepSpeedStrategy(stage=3), precision="32-true",
                         max_steps=args.steps, limit_val_batches=0, num_sanity_val_steps=0, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         default_root_dir=tempfile.mkdtemp())
    trainer.fit(kd, datamodule=data(tok, pairs, batch_size=2))
    lengths = [[int(v) for v in batch["labels"].ne(-100).sum(1)] for _, _, batch in recorder.batches]
    writers = [batch.get("written_by") for _, _, batch in recorder.batches]
    gathered = [None] * trainer.world_size
    torch.distributed.all_gather_object(gathered, {"lengths": lengths, "writers": writers,
                                                   "teacher_partitioned": all(hasattr(p, "ds_id") for p in kd.teachers.parameters()),
                                                   "student_partitioned": all(hasattr(p, "ds_id") for p in kd.student.parameters())})
    if trainer.is_global_zero:
        Path(args.out).write_text(json.dumps({"ranks": gathered, "steps": trainer.global_step}))


if __name__ == "__main__":
    main()
