"""What distilling across vocabularies costs: a causal-LM step with a teacher of another tokenizer.

On the embedded Gemma-3-270M teacher (262,144-token SentencePiece vocabulary) and the embedded SmolLM2-135M-Instruct
student (49,152-token byte-level BPE; ``make install-cross``), for the same packed Rotten Tomatoes blocks (each with
the teacher's encoding of its text), the median seconds of:

* ``floor``: the teacher's forward on its encoding plus the student's own step (next-token loss, backward, AdamW);
* ``no teacher``: the student's step alone;
* the KD step (next-token loss + the soft term at the positions where both encodings have read the same text)
  with each ``prediction.cross_vocabulary``: ``uld`` exact, ``uld`` cut to the top 1,024 sorted entries (also
  over merged spans, ``merge_spans``), ``matched`` (KL over exactly matching tokens + one bucket per side) and ``hybrid``.

``× floor`` is the figure that matters: the distillation step over what the teacher's forward and the student's
step cost anyway. Rounds interleave the workloads batch by batch; the AdamW step runs with learning rate 0, so
every workload sees the same weights.

    python -m benchmarks.cross_vocabulary_step [--batches 3] [--rounds 2] [--batch-size 4] [--block-size 128] [--output FILE]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from datetime import date
from itertools import islice

import torch

from benchmarks.interleaved import emit, interleaved, step_parser

TEACHER, STUDENT = "embedded:gemma-3-270m", "embedded:smollm2-135m-instruct"
WORKLOADS = ("no teacher", "floor", "uld (exact)", "uld (top 1,024)", "uld (top 1,024, merged spans)", "matched",
             "hybrid (top 1,024)")
SETTINGS = {
    "uld (exact)": dict(cross_vocabulary="uld", uld_top=None),
    "uld (top 1,024)": dict(cross_vocabulary="uld", uld_top=1024),
    "uld (top 1,024, merged spans)": dict(cross_vocabulary="uld", uld_top=1024, merge_spans=True),
    "matched": dict(cross_vocabulary="matched"),
    "hybrid (top 1,024)": dict(cross_vocabulary="hybrid", uld_top=1024),
}


def build(args: argparse.Namespace):
    """One KD method per soft-term setting (sharing the teacher and the student), and a list of training batches."""
    from lightning_kd.data import CausalLMDataModule
    from lightning_kd.losses.prediction import PredictionLoss
    from lightning_kd.methods import KD

    data = CausalLMDataModule(tokenizer=STUDENT, teacher_tokenizer=TEACHER, train_files=["embedded:rotten_tomatoes"],
                              block_size=args.block_size, batch_size=args.batch_size, validation_fraction=0.02, seed=0)
    data.setup("fit")
    batches = list(islice(data.train_dataloader(), args.batches))
    first = KD(teacher=TEACHER, student=STUDENT, teacher_tokenizer=TEACHER, export_tokenizer=STUDENT,
               prediction=PredictionLoss(**SETTINGS["uld (exact)"]))
    methods = {"uld (exact)": first}
    for name, setting in SETTINGS.items():
        if name not in methods:
            methods[name] = KD(teacher=first.teachers[0], student=first.student, teacher_tokenizer=TEACHER,
                               export_tokenizer=STUDENT, prediction=PredictionLoss(**setting))
    return methods, batches


def step(methods: dict, optimizer, batch: dict, workload: str) -> float:
    """Seconds of one ``workload`` step on ``batch``."""
    method = methods["uld (exact)"]
    start = time.perf_counter()
    if workload in ("no teacher", "floor"):
        if workload == "floor":
            with torch.no_grad():
                method.teachers[0](input_ids=batch["teacher_input_ids"], attention_mask=batch["teacher_attention_mask"])
        loss = method.student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss
    else:
        loss = methods[workload].compute_losses(batch)["loss"]
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def measure(args: argparse.Namespace) -> list[dict]:
    methods, batches = build(args)
    for method in methods.values():
        method.train()
    optimizer = torch.optim.AdamW(methods["uld (exact)"].student.parameters(), lr=0.0)
    step(methods, optimizer, batches[0], "uld (top 1,024)")  # warm-up: allocator, the vocabulary match
    step(methods, optimizer, batches[0], "matched")
    seconds = interleaved(WORKLOADS, batches, args.rounds, lambda workload, batch, _: step(methods, optimizer, batch, workload))
    floor = statistics.median(seconds["floor"])
    return [{"workload": w, "median": statistics.median(s), "min": min(s), "max": max(s), "x_floor": statistics.median(s) / floor}
            for w, s in seconds.items()]


def render(rows: list[dict], args: argparse.Namespace) -> str:
    lines = [
        f"Command: `python -m benchmarks.cross_vocabulary_step --batches {args.batches} --rounds {args.rounds} "
        f"--batch-size {args.batch_size} --block-size {args.block_size}`",
        "",
        f"Measured {date.today().isoformat()} on {platform.machine()}, {torch.get_num_threads()} threads; torch "
        f"{torch.__version__}; fp32; Gemma-3-270M teacher (262,144 tokens) → SmolLM2-135M-Instruct student (49,152 tokens), "
        f"{args.batches} packed Rotten Tomatoes blocks of {args.batch_size} × {args.block_size} student tokens with the "
        f"teacher's encoding of the same text, {args.rounds} rounds.",
        "",
        "| workload | seconds (median) | seconds (min–max) | × floor |",
        "|---|---|---|---|",
    ]
    lines += [f"| {r['workload']} | {r['median']:.2f} | {r['min']:.2f}–{r['max']:.2f} | {r['x_floor']:.2f} |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = step_parser(__doc__.splitlines()[0], batches=3, block_size=128).parse_args(argv)
    emit(render(measure(args), args), args.output)


if __name__ == "__main__":
    main()
