"""What generated batches cost: the share of a causal-LM distillation step spent generating.

On the embedded SmolLM2-135M-Instruct teacher and the 15-layer student of its first 7 and last 8 layers,
on real conversation prompts (``embedded:chitchat``, chat template), for the same training batches:

* ``off-policy step``: KD (JSD β 0.5) on the data's responses — teacher forward, student forward and
  backward, AdamW step;
* ``on-policy step``: the student first samples a continuation of each prompt (temperature 1, up to
  ``--max-new-tokens``, KV cache), then the same step on the generated batch;
* ``sequence-level KD step (live)``: the teacher first writes each response (greedy), then the step.
  With ``sequence_kd.cache`` this generation happens once per training example, not per step.

Seconds are medians over the batches and rounds (interleaved: batch 1 of each workload, then batch 2, …);
``generating`` is the median generation time and its share of that workload's median step. The AdamW
step runs with learning rate 0, so every workload sees the same weights and the same samples each round.

    python -m benchmarks.on_policy_step [--batches 6] [--rounds 2] [--max-new-tokens 48] [--output FILE]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from datetime import date
from itertools import islice
from pathlib import Path

import torch

from benchmarks.interleaved import emit, interleaved, step_parser

ROOT = Path(__file__).resolve().parents[1]
TEACHER = "embedded:smollm2-135m-instruct"
WORKLOADS = ("off-policy step", "on-policy step", "sequence-level KD step (live)")


def build(args: argparse.Namespace):
    """The method (generation on) and a list of training batches."""
    from lightning_kd.data import CausalLMDataModule
    from lightning_kd.losses.prediction import PredictionLoss
    from lightning_kd.methods import KD
    from lightning_kd.on_policy import Generation, SequenceKD

    data = CausalLMDataModule(tokenizer=TEACHER, train_files=["embedded:chitchat"], block_size=args.block_size,
                              batch_size=args.batch_size, validation_fraction=0.02, seed=0)
    data.setup("fit")
    batches = list(islice(data.train_dataloader(), args.batches))
    method = KD(teacher=TEACHER, student_init="teacher_first_last", student_layers=15, export_tokenizer=TEACHER,
                prediction=PredictionLoss(soft_loss="jsd", jsd_beta=0.5, hard_weight=0.0), on_policy=0.5,
                generation=Generation(max_new_tokens=args.max_new_tokens),
                sequence_kd=SequenceKD(cache=False, max_new_tokens=args.max_new_tokens))
    method.generated_batches.run_seed.value = 0
    return method, batches


def step(method, optimizer, batch, workload: str, index: int) -> tuple[float, float, int]:
    """One step of ``workload`` on ``batch``: ``(seconds, generation seconds, generated tokens)``."""
    generated = method.generated_batches
    start = time.perf_counter()
    generated.step_seconds = 0.0
    if workload == "on-policy step":
        batch = generated.student_batch(method, batch, seed=index)
    elif workload.startswith("sequence-level"):
        batch = generated.teacher_batch(method, batch, seed=index)
    new_tokens = int(batch["labels"].ne(-100).sum()) if "written_by" in batch else 0
    loss = method.compute_losses(batch)["loss"]
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start, generated.step_seconds, new_tokens


def measure(args: argparse.Namespace) -> list[dict]:
    torch.manual_seed(0)
    method, batches = build(args)
    method.train()
    optimizer = torch.optim.AdamW(method.student.parameters(), lr=0.0)
    step(method, optimizer, batches[0], "on-policy step", 0)  # warm-up: first shapes, allocator
    results = interleaved(WORKLOADS, batches, args.rounds, lambda workload, batch, index: step(method, optimizer, batch, workload, index))
    times = {w: dict(zip(("step", "generation", "tokens"), map(list, zip(*rows)))) for w, rows in results.items()}
    off = statistics.median(times["off-policy step"]["step"])
    rows = []
    for workload in WORKLOADS:
        seconds = statistics.median(times[workload]["step"])
        generating = statistics.median(times[workload]["generation"])
        tokens = statistics.mean(times[workload]["tokens"]) / args.batch_size
        rows.append({"workload": workload, "seconds": seconds, "min": min(times[workload]["step"]),
                     "max": max(times[workload]["step"]), "generating": generating, "share": generating / seconds,
                     "vs_off": seconds / off, "new_tokens": tokens})
    return rows


def render(rows: list[dict], args: argparse.Namespace) -> str:
    lines = [
        f"Command: `python -m benchmarks.on_policy_step --batches {args.batches} --rounds {args.rounds} --max-new-tokens "
        f"{args.max_new_tokens}`",
        "",
        f"Measured {date.today().isoformat()} on {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads; "
        f"torch {torch.__version__}; fp32; SmolLM2-135M-Instruct teacher (30 layers) and its 15-layer student; "
        f"{args.batches} Chit-Chat training batches of {args.batch_size} prompt/response examples (chat template), "
        f"{args.rounds} rounds; the student samples at temperature 1 and the teacher decodes greedily, up to "
        f"{args.max_new_tokens} new tokens each.",
        "",
        "| workload | seconds (median) | seconds (min–max) | generating (median s) | share generating | × off-policy step | response tokens / row |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        tokens = f"{row['new_tokens']:.1f}" if row["new_tokens"] else "data's"
        lines.append(f"| {row['workload']} | {row['seconds']:.2f} | {row['min']:.2f}–{row['max']:.2f} | {row['generating']:.2f} | "
                     f"{100 * row['share']:.0f} % | {row['vs_off']:.2f} | {tokens} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = step_parser(__doc__.split("\n\n")[0], batches=6, block_size=192)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    args = parser.parse_args(argv)
    emit(render(measure(args), args), args.output)


if __name__ == "__main__":
    main()
