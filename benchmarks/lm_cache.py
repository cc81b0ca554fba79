"""The causal-LM top-k teacher cache on real text: bytes per scored token, and how the divergence over the
top k and one tail bucket compares with the full one.

``python benchmarks/lm_cache.py [--batches 8] [--ks 16 64 256] [--output FILE]``

The embedded SmolLM2-135M-Instruct teacher (V = 49,152) and the LM quickstart's student (its first 7 and
last 8 layers, untrained: a student early in distillation, far from the teacher) on Rotten Tomatoes text
in blocks of 128 tokens. For each ``k``, a cache is filled over the first ``--batches`` training batches
(``TeacherCache.fill``) and the table gives:

* ``bytes / scored token``: the cache directory's size (records, index and manifest) over the tokens the
  step scores;
* ``tail mass``: the teacher's mean probability outside its top k (T = 1);
* the KL(p ‖ q) soft term on the same batches, three ways: with the full teacher distribution, with the
  cache's top k and tail bucket (what a cached step computes: a lower bound of the full one), and with
  the top k renormalised (what a cache without the tail would give).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from datetime import date
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODEL = "embedded:smollm2-135m-instruct"


def directory_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main(argv: list[str] | None = None) -> None:
    from benchmarks.step_time import cpu_model
    from lightning_kd.cache import TeacherCache
    from lightning_kd.cache.layout import topk_logits
    from lightning_kd.data import CausalLMDataModule
    from lightning_kd.losses.logits import soft_divergence
    from lightning_kd.losses.prediction import PredictionLoss
    from lightning_kd.losses.topk_teacher import TopKTeacher
    from lightning_kd.methods import KD

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--ks", type=int, nargs="+", default=[16, 64, 256])
    parser.add_argument("--output", help="also write the table to this Markdown file")
    args = parser.parse_args(argv)

    data = CausalLMDataModule(tokenizer=MODEL, train_files=["embedded:rotten_tomatoes"], text_column="text", block_size=128,
                              batch_size=4, validation_fraction=0.02, test_fraction=0.02)
    data.prepare_data()
    data.setup("fit")
    method = KD(teacher=MODEL, student_init="teacher_first_last", student_layers=15, prediction=PredictionLoss(temperature=1.0)).eval()
    batches = [method.prepare_batch(batch) for _, batch in zip(range(args.batches), data.train_dataloader())]
    scored_tokens = sum(int(batch["labels"].ne(-100).sum()) for batch in batches)

    teacher_rows, student_rows = [], []
    with torch.no_grad():
        for batch in batches:
            scored = batch["labels"].ne(-100)
            inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "use_cache": False}
            teacher_rows.append(method.teachers[0](**inputs).logits[scored])
            student_rows.append(method.student(**inputs).logits[scored])
    full = statistics.fmean(float(soft_divergence(s, t, "kl")) for s, t in zip(student_rows, teacher_rows))

    lines = [
        f"Causal-LM top-k teacher cache, SmolLM2-135M-Instruct teacher (V 49,152) and an untrained student of its first 7 "
        f"and last 8 layers, Rotten Tomatoes text, {args.batches} batches of 4 × 128 ({scored_tokens:,} scored tokens), "
        f"T = 1, {cpu_model()}, {date.today()}. KL(p ‖ q) with the full teacher distribution: {full:.4f}.",
        "",
        "| k | bytes / scored token | teacher's tail mass | KL, top k + tail (cached) | KL, top k renormalised |",
        "|---|---|---|---|---|",
    ]
    for k in args.ks:
        with tempfile.TemporaryDirectory() as scratch:
            cache = TeacherCache(path=scratch, top_k=k, verify_batches=0)
            method.teacher_cache = cache
            cache.fill(method, _Batches(data, batches))
            size = directory_bytes(Path(scratch))
        method.teacher_cache = None
        tops = [TopKTeacher.of_logits(t, k, 1.0) for t in teacher_rows]
        tail = statistics.fmean(float(top.tail.exp().mean()) for top in tops)
        bucket = statistics.fmean(float(soft_divergence(s, top, "kl")) for s, top in zip(student_rows, tops))
        renormalised = statistics.fmean(float(soft_divergence(s, topk_logits(t, k), "kl")) for s, t in zip(student_rows, teacher_rows))
        lines.append(f"| {k} | {size / scored_tokens:,.0f} | {tail:.4f} | {bucket:.4f} ({bucket / full:.1%} of full) | "
                     f"{renormalised:.4f} ({renormalised / full:.1%} of full) |")
    table = "\n".join(lines)
    print(table)
    if args.output:
        Path(args.output).write_text(table + "\n")


class _Batches:
    """The benchmark's batches as a data module for ``TeacherCache.fill`` (its fingerprint and tokenizer)."""

    def __init__(self, data, batches) -> None:
        self.fingerprint, self.tokenizer, self.batches = data.fingerprint, data.tokenizer, batches

    def train_dataloader(self):
        return self.batches


if __name__ == "__main__":
    main()
