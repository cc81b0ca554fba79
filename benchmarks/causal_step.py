"""The causal-LM KD step at large vocabularies: fused heads against full logits, and against the floor.

``python benchmarks/step_time.py --stage causal`` runs this (or ``python -m benchmarks.causal_step``).
For decoders shaped like SmolLM2 (V = 49,152, hidden 576), Qwen2.5-0.5B (V = 151,936, hidden 896)
and Gemma-3-270M (V = 262,144, hidden 640), with a few layers each so that the LM head dominates
(random weights: timing and memory do not depend on them), on one batch of next-token data:

* ``teacher forward``: the teacher with Hugging Face's own head on every position, no graph;
* ``student step``: the student's training step with Hugging Face's own head and loss (full logits);
* ``naive KD``: what a plain implementation does — both models' full logits, ``log_softmax`` KL
  (T = 1) plus Hugging Face's own next-token loss, backward, AdamW step;
* ``KD (compact rows)``: the library's KD with compact heads (logits at the scored rows only);
* ``KD (fused heads)``: the library's KD as it runs by default: no ``(rows, V)`` tensor at all.

The figure of merit is step ÷ (teacher forward + student step), the floor; ``vs naive`` is the step ÷
the naive KD step. Seconds are medians of interleaved rounds (A B C … A B C). Memory is each
workload's own, in a fresh process: ``peak MB`` is the resident set's high-water mark over its second
step (weights and optimizer state included); ``step MB`` is that peak above what lives between steps
(weights, optimizer state): the memory the step itself needs, which is what the logits decide.
"""

from __future__ import annotations

import argparse
import ctypes
import functools
import gc
import statistics
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
SHAPES = {
    # name: (vocabulary, hidden, heads, kv heads, intermediate, tied)
    "SmolLM2-shaped": (49152, 576, 9, 3, 1536, True),
    "Qwen2.5-shaped": (151936, 896, 14, 2, 4864, True),
    "Gemma-3-shaped": (262144, 640, 4, 1, 2048, True),
}
WORKLOADS = ["teacher forward", "student step", "naive KD", "KD (compact rows)", "KD (fused heads)"]


@functools.lru_cache(maxsize=1)
def models(shape: str, teacher_layers: int, student_layers: int):
    """A teacher and a student (a Llama of the shape) with random weights; one pair per shape, shared by the
    workloads timed together (each has its own optimizer), so a 262k vocabulary's tables exist once."""
    from transformers import LlamaConfig, LlamaForCausalLM

    vocab, hidden, heads, kv, inter, tied = SHAPES[shape]
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, num_attention_heads=heads, num_key_value_heads=kv,
                         intermediate_size=inter, num_hidden_layers=teacher_layers, tie_word_embeddings=tied,
                         max_position_embeddings=4096)
    torch.manual_seed(0)
    teacher = LlamaForCausalLM(config).eval()
    config.num_hidden_layers = student_layers
    student = LlamaForCausalLM(config)
    return teacher, student


def batch_of(size: int, length: int, vocab: int) -> dict[str, torch.Tensor]:
    """Packed text: every token scored (Hugging Face's convention, labels unshifted)."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (size, length), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}


def build(workload: str, args: argparse.Namespace):
    """A zero-argument callable running one step of ``workload``."""
    from lightning_kd.losses.prediction import PredictionLoss
    from lightning_kd.methods import KD

    teacher, student = models(args.shape, args.teacher_layers, args.student_layers)
    batch = batch_of(args.batch_size, args.seq_len, teacher.config.vocab_size)
    if workload == "teacher forward":

        def step():
            with torch.no_grad():
                teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)

        return step
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-5)
    if workload in ("student step", "naive KD"):

        def step():
            optimizer.zero_grad(set_to_none=True)
            out = student(**batch, use_cache=False)  # Hugging Face's head and loss on every position
            loss = out.loss
            if workload == "naive KD":
                with torch.no_grad():
                    t = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
                log_q = F.log_softmax(out.logits[:, :-1].float(), dim=-1)
                log_p = F.log_softmax(t[:, :-1].float(), dim=-1)
                loss = loss + F.kl_div(log_q.flatten(0, 1), log_p.flatten(0, 1), reduction="batchmean", log_target=True)
            loss.backward()
            optimizer.step()

        return step
    method = KD(teacher=teacher, student=student, prediction=PredictionLoss(temperature=1.0)).train()
    if workload == "KD (compact rows)":
        method.fused_heads_ready = False  # logits at the scored rows, the path before fused heads
    optimizer = torch.optim.AdamW([p for _, p in method.trainable_named_parameters()], lr=1e-5)

    def step():
        optimizer.zero_grad(set_to_none=True)
        method.compute_losses(batch)["loss"].backward()
        optimizer.step()

    return step


def peak_memory_mb() -> float:
    """This process's resident-set high-water mark (MB)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def resident_mb() -> float:
    """This process's resident set now (MB), after returning freed heap pages to the system."""
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def step_memory_mb(step) -> tuple[float, float]:
    """(peak, working) MB of a step: the process's high-water mark over two steps, and the second step's
    peak above what lives between steps (weights, gradients' buffers, optimizer state) — the memory the
    step itself needs, which is what fused heads change."""
    step()
    between = resident_mb()
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")  # reset the high-water mark to the present resident set (Linux >= 4.0)
    step()
    return peak_memory_mb(), peak_memory_mb() - between


def memory_of(workload: str, args: argparse.Namespace) -> tuple[float, float]:
    command = [sys.executable, "-m", "benchmarks.causal_step", "--memory-of", workload, "--shape", args.shape,
               "--batch-size", str(args.batch_size), "--seq-len", str(args.seq_len),
               "--teacher-layers", str(args.teacher_layers), "--student-layers", str(args.student_layers)]
    done = subprocess.run(command, capture_output=True, text=True, check=False, cwd=ROOT)
    if done.returncode != 0:
        raise RuntimeError(f"memory of {workload!r} failed:\n{done.stderr[-2000:]}")
    peak, working = done.stdout.strip().splitlines()[-1].split()
    return float(peak), float(working)


def measure(args: argparse.Namespace) -> list[str]:
    """The table rows of one shape."""
    memory = {name: memory_of(name, args) for name in WORKLOADS}
    steps = {name: build(name, args) for name in WORKLOADS}
    for step in steps.values():
        step()  # warm-up
    rounds: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.repeats):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            rounds[name].append(time.perf_counter() - start)
    floor = [t + s for t, s in zip(rounds["teacher forward"], rounds["student step"])]
    tokens = args.batch_size * args.seq_len
    vocab = SHAPES[args.shape][0]
    rows = []
    for name in WORKLOADS:
        seconds = statistics.median(rounds[name])
        over_floor = statistics.median(a / b for a, b in zip(rounds[name], floor)) if "KD" in name else None
        vs_naive = statistics.median(a / b for a, b in zip(rounds[name], rounds["naive KD"])) if "KD" in name else None
        peak, working = memory[name]
        vs_naive_memory = working / memory["naive KD"][1] if "KD" in name else None
        rows.append(
            f"| {args.shape} (V {vocab:,}) | {name} | {seconds:.2f} | {tokens / seconds:,.0f} | "
            f"{'' if over_floor is None else f'{over_floor:.2f}'} | {'' if vs_naive is None else f'{vs_naive:.2f}'} | "
            f"{peak:,.0f} | {working:,.0f} | {'' if vs_naive_memory is None else f'{vs_naive_memory:.2f}'} |"
        )
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", nargs="+", choices=list(SHAPES), default=list(SHAPES))
    parser.add_argument("--shape", choices=list(SHAPES), help=argparse.SUPPRESS)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--teacher-layers", type=int, default=2)
    parser.add_argument("--student-layers", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", help="also write the table to this Markdown file")
    parser.add_argument("--memory-of", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_of:
        print(*step_memory_mb(build(args.memory_of, args)))
        return
    from benchmarks.step_time import cpu_model

    lines = [
        f"Causal-LM KD step, batch {args.batch_size} × {args.seq_len} (every token scored), teacher {args.teacher_layers} "
        f"layers, student {args.student_layers}, fp32, {cpu_model()}, {torch.get_num_threads()} threads, {date.today()}; "
        f"medians of {args.repeats} interleaved rounds, peak memory of each workload alone.",
        "",
        "| model | workload | seconds | tokens / s | ÷ floor | ÷ naive time | peak MB | step MB | ÷ naive step MB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for shape in args.shapes:
        args.shape = shape
        lines += measure(args)
    table = "\n".join(lines)
    print(table)
    if args.output:
        with open(args.output, "w") as handle:
            handle.write(table + "\n")


if __name__ == "__main__":
    main()
