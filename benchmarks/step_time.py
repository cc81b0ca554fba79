"""Distillation step time on the real embedded models, against the physical floor.

For each method: median seconds of one distillation training step (forward, backward, optimizer
step) of a 3-layer student made from the real all-MiniLM-L6-v2 teacher's layers, divided by
(teacher forward + student-only training step) on the same batch. 1.0 is the floor: the method
adds nothing beyond running both models. Peak memory is the process's resident set after each
measurement on CPU, or the CUDA allocator's peak on a GPU.

    python benchmarks/step_time.py                          # all methods, batch 32 x 128, CPU
    python benchmarks/step_time.py --methods KD TinyBERT --batch-size 16 --seq-len 64 --output benchmarks/results.md
"""

from __future__ import annotations

import argparse
import platform
import resource
import statistics
import time
from datetime import date

import torch

from lightning_kd.core.features import FeatureRequest, capture
from lightning_kd.losses.prediction import PredictionLoss
from lightning_kd.methods import CKD, KD, MGSKD, PKD, ALPKD, DistilBERT, MiniLM, MiniLMv2, StudentOnly, TinyBERT, UniversalKD

TEACHER = "embedded:all-MiniLM-L6-v2"


def load_teacher():
    """The real MiniLM-L6 encoder with a (randomly initialised) 2-class head: timing does not depend on its weights."""
    from transformers import AutoModelForSequenceClassification

    from lightning_kd.data.sources import resolve_source

    return AutoModelForSequenceClassification.from_pretrained(resolve_source(TEACHER), num_labels=2)

# Knobs that make each method run its full set of terms in one fine-tuning stage.
METHODS = {
    "KD": lambda **kw: KD(temperature=2.0, **kw),
    "TinyBERT": lambda **kw: TinyBERT(prediction=PredictionLoss(), **kw),
    "MiniLM": lambda **kw: MiniLM(prediction=PredictionLoss(), **kw),
    "MiniLMv2": lambda **kw: MiniLMv2(relation_heads=12, prediction=PredictionLoss(), **kw),
    "DistilBERT": lambda **kw: DistilBERT(**kw),
    "PKD": lambda **kw: PKD(**kw),
    "ALPKD": lambda **kw: ALPKD(**kw),
    "UniversalKD": lambda **kw: UniversalKD(**kw),
    "CKD": lambda **kw: CKD(**kw),
    "MGSKD": lambda **kw: MGSKD(relation_heads=12, prediction=PredictionLoss(), terms=["sample", "token", "span", "prediction"], **kw),
}


def batch_of(size: int, length: int, vocab: int, device: torch.device) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, vocab, (size, length), generator=g)
    ids[:, 0] = 101
    mask = torch.ones(size, length, dtype=torch.long)
    mask[size // 2 :, length * 3 // 4 :] = 0  # some padding, as real batches have
    return {
        "input_ids": ids.to(device),
        "attention_mask": mask.to(device),
        "token_type_ids": torch.zeros_like(ids).to(device),
        "labels": torch.randint(0, 2, (size,), generator=g).to(device),
    }


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def median_seconds(fn, repeats: int, device: torch.device) -> float:
    fn()  # warm-up (allocations, kernels, autotuning)
    timings = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        timings.append(time.perf_counter() - start)
    return statistics.median(timings)


def training_step(method, batch, optimizer, autocast):
    def step():
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            loss = method.compute_losses(batch)["loss"]
        loss.backward()
        optimizer.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--output", help="also write the table to this Markdown file")
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = torch.bfloat16 if args.precision == "bf16" else None

    def autocast():
        return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)

    common = {"teacher": load_teacher(), "student_init": "teacher_uniform", "student_layers": 3, "task_head": "sequence_classification", "num_labels": 2}
    reference = KD(**common).to(device).train()
    batch = batch_of(args.batch_size, args.seq_len, reference.student.config.vocab_size, device)

    def teacher_forward():
        with torch.no_grad(), autocast():
            capture(reference.teachers[0], batch, FeatureRequest())

    student_only = StudentOnly(student=reference.student, task_head="sequence_classification", num_labels=2).to(device).train()
    student_optimizer = torch.optim.AdamW(student_only.parameters(), lr=1e-5)
    t_teacher = median_seconds(teacher_forward, args.repeats, device)
    t_student = median_seconds(training_step(student_only, batch, student_optimizer, autocast), args.repeats, device)
    floor = t_teacher + t_student

    rows = []
    for name in args.methods:
        method = METHODS[name](**common).to(device).train()
        optimizer = torch.optim.AdamW([p for _, p in method.trainable_named_parameters()], lr=1e-5)
        seconds = median_seconds(training_step(method, batch, optimizer, autocast), args.repeats, device)
        rows.append((name, seconds, seconds / floor, peak_memory_mb(device)))
        del method, optimizer

    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    lines = [
        f"Measured {date.today()} on {where}; torch {torch.__version__}; {args.precision}; batch {args.batch_size} × {args.seq_len} tokens; "
        f"median of {args.repeats} steps after a warm-up.",
        "",
        f"Teacher (MiniLM-L6) forward: {t_teacher:.3f} s · student (3 layers) training step: {t_student:.3f} s · floor: {floor:.3f} s",
        "",
        "| method | step (s) | step ÷ (teacher fwd + student step) | peak memory (MB) |",
        "|---|---|---|---|",
    ]
    lines += [f"| {name} | {seconds:.3f} | {ratio:.2f} | {memory:.0f} |" for name, seconds, ratio, memory in rows]
    table = "\n".join(lines)
    print(table)
    if args.output:
        with open(args.output, "w") as handle:
            handle.write(table + "\n")


if __name__ == "__main__":
    main()
