"""Distillation step time on the real embedded models, against the physical floor.

For each method: median seconds of one distillation training step (forward, backward, optimizer
step) of a 3-layer student made from the real all-MiniLM-L6-v2 teacher's layers, divided by
(teacher forward + student-only training step) on the same batch. 1.0 is the floor: the method
adds nothing beyond running both models. ``KD + teacher cache`` reads the teacher's logits from a
filled :class:`~lightning_kd.cache.TeacherCache` instead of running the teacher; its figure of
merit is step ÷ student-only step (target ≤ 1.05).

Stages: ``--stage finetune`` (default) distils a 2-class sequence classifier; ``--stage causal``
runs :mod:`benchmarks.causal_step` (decoder LMs at large vocabularies, fused heads); ``--stage pretrain``
distils MLM heads on a batch with 15 % of its positions masked. There the floor is the *full-head*
floor: the teacher forward and the student-only step both with Hugging Face's own MLM heads, which
project every position onto the 30,522-word vocabulary. The methods run with compact heads (each
model projects only the rows its losses read: the masked positions for KD, StudentOnly and MLM
metrics, every real token for DistilBERT's soft term, none for TinyBERT's and MiniLM's intermediate
stages), and where only prediction losses read the logits (DistilBERT, DIITO, LogitsDistil's KL, KD),
fused heads: the rows entering the vocabulary projection, projected chunk by chunk inside the loss.
``KD (full heads)`` is KD with ``compact_heads = False``, the figure before compact heads
(``--full-heads`` adds that row for every method; ``--unfused`` adds ``<method> (unfused)``, compact
logit rows without fused heads, the figure before fused heads).
Each row also gives tokens per second (batch tokens, padding included, ÷ seconds).

CPU allocator: by default the benchmark keeps freed memory in the process exactly as the
``lightning-kd`` command does on CPU (:mod:`lightning_kd.cpu_allocator`); ``--allocator system``
measures glibc's defaults instead. The table says which.

Timing: all workloads are built in one process and timed in turn (A B C A B C …), so drift in the
machine's speed falls on all of them alike; seconds are medians over ``--repeats`` rounds, and a
ratio is the median over rounds of the step ÷ the baseline measured in the same round.
Peak memory: each workload runs two steps alone in a fresh process, so the figure is its own peak:
the maximum resident set on CPU (models, optimizer and activations included), or the CUDA
allocator's peak on a GPU. On CPU the same workload's peak varies by up to ~10 % from process to
process (glibc gives each thread its own arena, so how freed blocks are reused depends on which
thread allocated them): the table gives the median of ``--memory-repeats`` processes and their range.

    python benchmarks/step_time.py                          # all methods, batch 32 x 128, CPU
    python benchmarks/step_time.py --stage pretrain         # MLM-stage methods against the full-head floor
    python benchmarks/step_time.py --stage causal           # decoder KD at 49k-262k vocabularies (benchmarks/causal_step.py)
    python benchmarks/step_time.py --methods KD TinyBERT --batch-size 16 --seq-len 64 --output benchmarks/results.md
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import date

import torch

from lightning_kd.core.features import FeatureRequest, capture
from lightning_kd.cpu_allocator import keep_freed_memory
from lightning_kd.losses.prediction import PredictionLoss
from lightning_kd.methods import (
    CKD,
    DIITO,
    KD,
    MGSKD,
    PKD,
    ALPKD,
    DistilBERT,
    LogitsDistil,
    MiniLM,
    MiniLMv2,
    StudentOnly,
    TinyBERT,
    UniversalKD,
)

TEACHER = "embedded:all-MiniLM-L6-v2"
HEADS = {"finetune": "sequence_classification", "pretrain": "masked_lm"}


def load_teacher(stage: str = "finetune"):
    """The real MiniLM-L6 encoder with a 2-class head (fine-tuning) or an MLM head (pre-training).

    Heads the checkpoint lacks are randomly initialised: timing does not depend on their weights.
    """
    from transformers import AutoModelForMaskedLM, AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    from lightning_kd.data.sources import resolve_source

    hf_logging.set_verbosity_error()  # the "newly initialized head" report is expected here
    hf_logging.disable_progress_bar()
    if stage == "pretrain":
        return AutoModelForMaskedLM.from_pretrained(resolve_source(TEACHER))
    return AutoModelForSequenceClassification.from_pretrained(resolve_source(TEACHER), num_labels=2)

# Knobs that make each method run its full set of terms in one fine-tuning stage.
METHODS = {
    "KD": lambda **kw: KD(prediction=PredictionLoss(temperature=2.0), **kw),
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


def full_heads(method):
    """``method`` with compact heads off: every model projects every position, as before compact heads."""
    method.compact_heads = False
    return method


# Pre-training stage: MLM-stage methods (intermediate stages without a prediction loss, as run before
# fine-tuning), each with compact heads, and KD with full heads for the figure before them.
PRETRAIN_METHODS = {
    "KD": lambda **kw: KD(prediction=PredictionLoss(temperature=2.0), **kw),
    "StudentOnly": None,  # the student step with compact heads: built from KD's student in build_step
    "DistilBERT": lambda **kw: DistilBERT(**kw),
    "TinyBERT (MLM stage)": lambda **kw: TinyBERT(**kw),
    "MiniLM": lambda **kw: MiniLM(**kw),
    "DIITO": lambda **kw: DIITO(**kw),
    "LogitsDistil": lambda **kw: LogitsDistil(**kw),
}
STAGE_METHODS = {"finetune": METHODS, "pretrain": PRETRAIN_METHODS}
STAGE_TITLES = {"finetune": "fine-tuning stage (2-class head)", "pretrain": "pre-training stage (MLM heads, 15 % of positions masked)"}


def batch_of(size: int, length: int, vocab: int, device: torch.device, stage: str = "finetune") -> dict[str, torch.Tensor]:
    """A fixed random batch with some padding; class labels, or MLM labels at 15 % of the real tokens."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, vocab, (size, length), generator=g)
    ids[:, 0] = 101
    mask = torch.ones(size, length, dtype=torch.long)
    mask[size // 2 :, length * 3 // 4 :] = 0  # some padding, as real batches have
    if stage == "pretrain":
        masked = (torch.rand(size, length, generator=g) < 0.15) & mask.bool()
        labels = ids.masked_fill(~masked, -100)
        ids = ids.masked_fill(masked, 103)  # [MASK]
    else:
        labels = torch.randint(0, 2, (size,), generator=g)
    return {
        "input_ids": ids.to(device),
        "attention_mask": mask.to(device),
        "token_type_ids": torch.zeros_like(ids).to(device),
        "labels": labels.to(device),
        "example_index": torch.arange(size, device=device),  # row identity for the teacher cache
    }


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory of this process: the CUDA allocator's peak, or on CPU the resident set's high-water mark."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:  # VmHWM belongs to this process image; ru_maxrss would include the parent's peak before exec
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def training_step(method, batch, optimizer, autocast):
    def step():
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            loss = method.compute_losses(batch)["loss"]
        loss.backward()
        optimizer.step()

    return step


TEACHER_FORWARD, STUDENT_STEP, CACHED_KD, STUDENT_ONLY = "teacher forward", "student step", "KD + teacher cache", "StudentOnly"
FULL_HEADS = " (full heads)"  # a workload name ending so runs its method with compact heads off
UNFUSED = " (unfused)"  # … with compact heads but logits at the rows (no fused heads): the figure before them


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def build_step(workload: str, args: argparse.Namespace):
    """A zero-argument callable running one step of ``workload`` (teacher forward, student step, a method's step)."""
    device = torch.device(args.device)
    dtype = torch.bfloat16 if args.precision == "bf16" else None

    def autocast():
        return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)

    head = HEADS[args.stage]
    common = {"teacher": load_teacher(args.stage), "student_init": "teacher_uniform", "student_layers": 3, "task_head": head}
    if head == "sequence_classification":
        common["num_labels"] = 2
    if workload == CACHED_KD:
        common["teacher_cache"] = cache_for_benchmark(args)
    # The teacher-forward and student-step workloads (and StudentOnly) take their models from a KD instance.
    methods = STAGE_METHODS[args.stage]
    name = workload.removesuffix(FULL_HEADS).removesuffix(UNFUSED)
    build = methods.get(name) or methods["KD"]
    method = build(**common).to(device).train()
    if workload.endswith(FULL_HEADS):
        full_heads(method)
    if workload.endswith(UNFUSED):
        method.fused_heads = lambda: False  # compact logit rows, as before fused heads
    batch = batch_of(args.batch_size, args.seq_len, method.student.config.vocab_size, device, args.stage)
    if workload == TEACHER_FORWARD:

        def step():
            with torch.no_grad(), autocast():
                capture(method.teachers[0], batch, FeatureRequest())  # every row: the model's own head

        return step
    if workload in (STUDENT_STEP, STUDENT_ONLY, STUDENT_ONLY + FULL_HEADS):
        method = StudentOnly(student=method.student, task_head=head, num_labels=common.get("num_labels")).to(device).train()
        if workload != STUDENT_ONLY:
            full_heads(method)  # the floor runs HF's own head (a classifier's head is whole anyway)
    if workload == CACHED_KD:
        data = OneBatch(batch, f"benchmark batch {args.batch_size}x{args.seq_len} seed 0")
        method.teacher_cache.fill(method, data)  # the first pass: runs the teacher, stores its logits
        method.teacher_cache.open(method, data)  # later epochs: every row is cached
    optimizer = torch.optim.AdamW([p for _, p in method.trainable_named_parameters()], lr=1e-5)
    return training_step(method, batch, optimizer, autocast)


def interleaved_timings(steps: dict[str, Callable[[], None]], repeats: int, device: torch.device) -> dict[str, list[float]]:
    """Seconds of ``repeats`` rounds per workload, timing them in turn (A B C A B C …) so that drift
    in the machine's speed (other load, frequency scaling) falls on every workload of a round alike."""
    for step in steps.values():
        step()  # warm-up (allocations, kernels, autotuning)
    timings: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            timings[name].append(time.perf_counter() - start)
    return timings


def peak_memory_of(workload: str, args: argparse.Namespace) -> list[float]:
    """Peak memory (MB) of ``workload`` alone: two steps in a fresh Python process, once per ``--memory-repeats``."""
    return [_one_peak_memory(workload, args) for _ in range(args.memory_repeats)]


def _one_peak_memory(workload: str, args: argparse.Namespace) -> float:
    command = [sys.executable, __file__, "--memory-of", workload, "--batch-size", str(args.batch_size), "--seq-len", str(args.seq_len)]
    command += ["--precision", args.precision, "--device", args.device, "--stage", args.stage, "--allocator", args.allocator]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"memory measurement of {workload!r} failed:\n{result.stderr[-3000:]}")
    return float(result.stdout.strip().splitlines()[-1])


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


def main() -> None:
    argv = sys.argv[1:]
    if "--stage" in argv and argv[argv.index("--stage") + 1 : argv.index("--stage") + 2] == ["causal"]:
        sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run as a script from anywhere
        from benchmarks.causal_step import main as causal_main  # its own models, batch and workloads

        at = argv.index("--stage")
        return causal_main(argv[:at] + argv[at + 2 :])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stage", choices=list(STAGE_METHODS), default="finetune", help="fine-tuning (classifier) or pre-training (MLM) heads")
    parser.add_argument("--methods", nargs="+", help="default: every method of the stage (and KD + teacher cache when fine-tuning)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--memory-repeats", type=int, default=3, help="fresh processes per workload's peak memory (median and range)")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--output", help="also write the table to this Markdown file")
    parser.add_argument(
        "--allocator", choices=["tuned", "system"], default="tuned", help="CPU: keep freed memory as lightning-kd does (tuned) or glibc defaults"
    )
    parser.add_argument(
        "--full-heads", action="store_true",
        help="pre-training: also time every method with compact heads off ('<method> (full heads)', the figures before them)",
    )
    parser.add_argument(
        "--unfused", action="store_true",
        help="pre-training: also time every method with compact logit rows but no fused heads ('<method> (unfused)')",
    )
    parser.add_argument("--memory-of", help=argparse.SUPPRESS)  # internal: print one workload's peak memory
    args = parser.parse_args()
    if args.memory_repeats < 1:
        parser.error("--memory-repeats must be at least 1")
    stage_methods = [*STAGE_METHODS[args.stage], *([CACHED_KD] if args.stage == "finetune" else [])]
    if args.stage == "pretrain":
        stage_methods += [name + suffix for suffix in (FULL_HEADS, UNFUSED) for name in STAGE_METHODS["pretrain"]]
    default = [name for name in stage_methods if not name.endswith((FULL_HEADS, UNFUSED))]
    if args.stage == "pretrain":
        default.append("KD" + FULL_HEADS)  # the figure before compact heads
    args.methods = args.methods or default
    if args.full_heads:
        if args.stage != "pretrain":
            parser.error("--full-heads compares compact and full MLM heads: use it with --stage pretrain")
        args.methods = list(dict.fromkeys([*args.methods, *(m + FULL_HEADS for m in args.methods if not m.endswith((FULL_HEADS, UNFUSED)))]))
    if args.unfused:
        if args.stage != "pretrain":
            parser.error("--unfused compares fused and unfused MLM heads: use it with --stage pretrain")
        args.methods = list(dict.fromkeys([*args.methods, *(m + UNFUSED for m in args.methods if not m.endswith((FULL_HEADS, UNFUSED)))]))
    unknown = [name for name in args.methods if name not in stage_methods]
    if unknown:
        parser.error(f"unknown method(s) for --stage {args.stage}: {', '.join(unknown)}; choose from {', '.join(stage_methods)}")
    device = torch.device(args.device)
    tuned = device.type == "cpu" and args.allocator == "tuned" and keep_freed_memory()
    if args.memory_of:
        step = build_step(args.memory_of, args)
        step(), step()
        print(peak_memory_mb(device))
        return

    workloads = [TEACHER_FORWARD, STUDENT_STEP, *args.methods]
    memory = {name: peak_memory_of(name, args) for name in workloads}
    steps = {name: build_step(name, args) for name in workloads}
    rounds = interleaved_timings(steps, args.repeats, device)
    seconds = {name: statistics.median(values) for name, values in rounds.items()}
    teacher, student = seconds[TEACHER_FORWARD], seconds[STUDENT_STEP]

    def ratios(name: str) -> list[float]:
        """Each round's step ÷ its baseline measured in the same round."""
        bases = rounds[STUDENT_STEP] if name == CACHED_KD else [t + s for t, s in zip(rounds[TEACHER_FORWARD], rounds[STUDENT_STEP])]
        return [step / base for step, base in zip(rounds[name], bases)]

    def spread(values: list[float], digits: int) -> str:
        return f"{min(values):.{digits}f}–{max(values):.{digits}f}"

    def peak(name: str) -> str:
        values = memory[name]
        return f"{statistics.median(values):.0f}" + (f" ({spread(values, 0)})" if len(values) > 1 else "")

    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{cpu_model()}, {torch.get_num_threads()} threads"
    tokens = args.batch_size * args.seq_len
    pretrain = args.stage == "pretrain"
    floor = "full-head floor" if pretrain else "teacher fwd + student step"
    head = " (HF head, every position)" if pretrain else ""
    lines = [
        f"Command: `python benchmarks/step_time.py {' '.join(sys.argv[1:])}`",
        "",
        f"Measured {date.today()} on {where} ({os.cpu_count()} logical CPUs); torch {torch.__version__}; {args.precision}; "
        f"{STAGE_TITLES[args.stage]}; "
        + ("glibc malloc keeps freed memory, as `lightning-kd` does on CPU; " if tuned else "system allocator settings; " if device.type == "cpu" else "")
        + f"batch {args.batch_size} × {args.seq_len} tokens; workloads built in one process and timed in turn for {args.repeats} rounds "
        "after a warm-up: seconds and ratios are medians with their min–max over the rounds, a ratio being a round's step ÷ that round's baseline; "
        f"peak memory of each workload alone in a fresh process, median (min–max) of {args.memory_repeats}; tokens per second = batch tokens ÷ median seconds."
        + (" Full-head floor = teacher forward + student-only step, both with Hugging Face's own MLM heads (every position "
           "projected onto the vocabulary); the methods use compact heads (only the rows their losses read) and, where only "
           "prediction losses read the logits, fused heads (the rows entering the vocabulary projection, projected chunk by "
           "chunk inside the loss: no rows × vocabulary tensor); rows marked `(unfused)` compute logits at the compact rows "
           "(the figures before fused heads), rows marked `(full heads)` at every position (before compact heads)." if pretrain else ""),
        "",
        "| workload | seconds (median) | seconds (min–max) | tokens / s | ratio (median) | ratio (min–max) | peak memory (MB) |",
        "|---|---|---|---|---|---|---|",
        f"| teacher (MiniLM-L6) forward{head} | {teacher:.3f} | {spread(rounds[TEACHER_FORWARD], 3)} | {tokens / teacher:.0f} | – | – "
        f"| {peak(TEACHER_FORWARD)} |",
        f"| student (3 layers) training step{head} | {student:.3f} | {spread(rounds[STUDENT_STEP], 3)} | {tokens / student:.0f} | – | – "
        f"| {peak(STUDENT_STEP)} |",
    ]
    for name in args.methods:
        of = "student step" if name == CACHED_KD else floor
        per_round = ratios(name)
        lines.append(
            f"| {name} | {seconds[name]:.3f} | {spread(rounds[name], 3)} | {tokens / seconds[name]:.0f} "
            f"| {statistics.median(per_round):.2f} × ({of}) | {spread(per_round, 2)} | {peak(name)} |"
        )
    table = "\n".join(lines)
    print(table)
    if args.output:
        with open(args.output, "w") as handle:
            handle.write(table + "\n")


if __name__ == "__main__":
    main()
