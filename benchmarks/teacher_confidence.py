"""How sharp a classifier teacher's soft targets are at given temperatures, on the texts a student learns from.

On one batch of the seeded training subset (the examples distillation reads), per temperature ``T``: the mean
probability of the teacher's top class and of the true label under ``softmax(z/T)``, and the mean entropy as a
share of the uniform distribution's (1: the soft targets say nothing). A teacher that is often right but gives
every class nearly the same probability hands KD almost uniform targets on unlabelled text. Prints a Markdown table.

    python -m benchmarks.teacher_confidence outputs/transfer_board/twenty_newsgroups/teacher --task twenty_newsgroups \
        --max-length 128 --max-train-samples 3200 --temperatures 0.5 1 2
"""

from __future__ import annotations

import argparse
import math

import torch
from torch import Tensor


def soft_target_summary(logits: Tensor, labels: Tensor, temperature: float) -> dict[str, float]:
    """Mean top-class probability, true-label probability and entropy ÷ log(classes) of ``softmax(logits/T)``."""
    log_p = torch.log_softmax(logits.double() / temperature, dim=-1)
    p = log_p.exp()
    return {"top": float(p.max(-1).values.mean()), "true": float(p.gather(1, labels[:, None]).mean()),
            "entropy": float(-(p * log_p).sum(-1).mean() / math.log(logits.shape[-1]))}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.teacher_confidence", description=__doc__.split("\n\n")[0])
    parser.add_argument("teacher", help="an exported sequence classifier (its tokenizer inside)")
    parser.add_argument("--task", default="rotten_tomatoes")
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--max-train-samples", type=int, help="the seeded training subset the students read")
    parser.add_argument("--examples", type=int, default=128, help="training examples read (one batch)")
    parser.add_argument("--temperatures", type=float, nargs="+", default=[1.0, 2.0])
    args = parser.parse_args(argv)

    from transformers import AutoModelForSequenceClassification

    from lightning_kd.core.features import model_inputs
    from lightning_kd.data import GlueDataModule

    data = GlueDataModule(task=args.task, tokenizer=args.teacher, max_length=args.max_length,
                          max_train_samples=args.max_train_samples, batch_size=args.examples)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    model = AutoModelForSequenceClassification.from_pretrained(args.teacher).eval()
    with torch.inference_mode():
        logits = model(**model_inputs(batch)).logits.float()
    right = float((logits.argmax(-1) == batch["labels"]).float().mean())
    print(f"{args.teacher} on {len(logits)} training examples of {args.task}: argmax right on {100 * right:.1f} %, "
          f"{logits.shape[-1]} classes (uniform top-class probability {1 / logits.shape[-1]:.2f})\n")
    print("| T | top-class probability | true-label probability | entropy ÷ uniform's |")
    print("|---|---|---|---|")
    for temperature in args.temperatures:
        summary = soft_target_summary(logits, batch["labels"], temperature)
        print(f"| {temperature:g} | {summary['top']:.3f} | {summary['true']:.3f} | {summary['entropy']:.3f} |")


if __name__ == "__main__":
    main()
