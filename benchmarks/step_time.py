"""Distillation step time on the real embedded models, against the physical floor.

For each method: median seconds of one distillation training step (forward, backward, optimizer
step) of a 3-layer student made from the real all-MiniLM-L6-v2 teacher's layers, divided by
(teacher forward + student-only training step) on the same batch. 1.0 is the floor: the method
adds nothing beyond running both models. ``KD + teacher cache`` reads the teacher's logits from a
filled :class:`~lightning_kd.cache.TeacherCache` instead of running the teacher; its figure of
merit is step ÷ student-only step (target ≤ 1.05).

Every workload runs in a fresh process, so "peak memory" is that workload's own peak: the maximum
resident set of the process on CPU (models, optimizer and activations included), or the CUDA
allocator's peak on a GPU.

    python benchmarks/step_time.py                          # all methods, batch 32 x 128, CPU
    python benchmarks/step_time.py --methods KD TinyBERT --batch-size 16 --seq-len 64 --output benchmarks/results.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
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
        "example_index": torch.arange(size, device=device),  # row identity for the teacher cache
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


TEACHER_FORWARD, STUDENT_STEP, CACHED_KD = "teacher forward", "student step", "KD + teacher cache"


def measure(workload: str, args: argparse.Namespace) -> dict[str, float]:
    """Seconds per call (median) and peak memory of one workload, in this process."""
    device = torch.device(args.device)
    dtype = torch.bfloat16 if args.precision == "bf16" else None

    def autocast():
        return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)

    common = {"teacher": load_teacher(), "student_init": "teacher_uniform", "student_layers": 3, "task_head": "sequence_classification", "num_labels": 2}
    if workload == CACHED_KD:
        common["teacher_cache"] = cache_for_benchmark(args)
    # The teacher-forward and student-step workloads take their models from a KD instance.
    method = (METHODS[workload] if workload in METHODS else METHODS["KD"])(**common).to(device).train()
    batch = batch_of(args.batch_size, args.seq_len, method.student.config.vocab_size, device)
    if workload == TEACHER_FORWARD:

        def step():
            with torch.no_grad(), autocast():
                capture(method.teachers[0], batch, FeatureRequest())

    else:
        if workload == STUDENT_STEP:
            method = StudentOnly(student=method.student, task_head="sequence_classification", num_labels=2).to(device).train()
        if workload == CACHED_KD:
            data = OneBatch(batch, f"benchmark batch {args.batch_size}x{args.seq_len} seed 0")
            method.teacher_cache.fill(method, data)  # the first pass: runs the teacher, stores its logits
            method.teacher_cache.open(method, data)  # later epochs: every row is cached
        optimizer = torch.optim.AdamW([p for _, p in method.trainable_named_parameters()], lr=1e-5)
        step = training_step(method, batch, optimizer, autocast)
    seconds = median_seconds(step, args.repeats, device)
    return {"seconds": seconds, "peak_mb": peak_memory_mb(device)}


class OneBatch:
    """The benchmark batch as the data a teacher cache binds to (its rows carry ``example_index``)."""

    tokenizer = None

    def __init__(self, batch: dict[str, torch.Tensor], fingerprint: str) -> None:
        self.batch, self.fingerprint = batch, fingerprint

    def train_dataloader(self) -> list[dict[str, torch.Tensor]]:
        return [self.batch]


def cache_for_benchmark(args: argparse.Namespace):
    """A teacher cache in a fresh temporary directory (filled by :func:`measure` before timing)."""
    import tempfile

    from lightning_kd.cache import TeacherCache

    return TeacherCache(path=tempfile.mkdtemp(prefix="lkd-bench-cache-"), verify_batches=0)


def in_fresh_process(workload: str, args: argparse.Namespace) -> dict[str, float]:
    """Run :func:`measure` for ``workload`` in a new Python process (own peak memory, no warm caches)."""
    command = [sys.executable, __file__, "--workload", workload, "--batch-size", str(args.batch_size), "--seq-len", str(args.seq_len)]
    command += ["--repeats", str(args.repeats), "--precision", args.precision, "--device", args.device]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"benchmark of {workload!r} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", nargs="+", default=[*METHODS, CACHED_KD], choices=[*METHODS, CACHED_KD])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--output", help="also write the table to this Markdown file")
    parser.add_argument("--workload", help=argparse.SUPPRESS)  # internal: measure one workload, print JSON
    args = parser.parse_args()
    if args.workload:
        print(json.dumps(measure(args.workload, args)))
        return

    teacher = in_fresh_process(TEACHER_FORWARD, args)
    student = in_fresh_process(STUDENT_STEP, args)
    floor = teacher["seconds"] + student["seconds"]
    rows = []
    for name in args.methods:
        result = in_fresh_process(name, args)
        ratio = result["seconds"] / (student["seconds"] if name == CACHED_KD else floor)
        rows.append((name, result["seconds"], ratio, result["peak_mb"]))
        print(f"{name}: {result['seconds']:.3f} s ({ratio:.2f})", file=sys.stderr)

    device = torch.device(args.device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    lines = [
        f"Measured {date.today()} on {where} ({os.cpu_count()} logical CPUs); torch {torch.__version__}; {args.precision}; "
        f"batch {args.batch_size} × {args.seq_len} tokens; median of {args.repeats} steps after a warm-up; each row in a fresh process.",
        "",
        f"| workload | seconds | ratio | peak memory (MB) |",
        "|---|---|---|---|",
        f"| teacher (MiniLM-L6) forward | {teacher['seconds']:.3f} | – | {teacher['peak_mb']:.0f} |",
        f"| student (3 layers) training step | {student['seconds']:.3f} | – | {student['peak_mb']:.0f} |",
    ]
    for name, seconds, ratio, memory in rows:
        of = "student step" if name == CACHED_KD else "teacher fwd + student step"
        lines.append(f"| {name} | {seconds:.3f} | {ratio:.2f} × ({of}) | {memory:.0f} |")
    table = "\n".join(lines)
    print(table)
    if args.output:
        with open(args.output, "w") as handle:
            handle.write(table + "\n")


if __name__ == "__main__":
    main()
