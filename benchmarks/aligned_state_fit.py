"""How much of a teacher's token states a linear map from the student's states can reproduce, across tokenizers.

TinyBERT's hidden-state terms ask a student layer, through one learnt ``d_s → d_t`` map, for the teacher's state at
each token. Where the student's states predict little of the teacher's token-to-token variation, the mean squared
error is lowest when every token is sent to the teacher's mean state — a pull towards one vector. This script
measures that before training: on one batch of training texts, with the teacher's states aligned to the student's
tokens by character spans (as the library's hidden-state terms do), per TinyBERT layer pair it fits the best affine
map from student to teacher states by least squares on half of the tokens and reports, on the other half, the
share of the teacher's variance around its mean that the map explains (R²), and the share of the teacher states'
squared norm in their common mean vector. Prints a Markdown table (board 2's TinyBERT note,
``benchmarks/transfer_board.yaml``).

    python -m benchmarks.aligned_state_fit --teacher outputs/cross_tokenizer/mpnet_teacher \
        --student embedded:all-MiniLM-L6-v2 [--task rotten_tomatoes --max-length 64 --examples 128]
"""

from __future__ import annotations

import argparse

import torch
from torch import Tensor


def held_out_r2(x: Tensor, y: Tensor, fit: Tensor) -> float:
    """R² on the rows outside ``fit`` of the least-squares affine map ``y ≈ x A + b`` fitted on the rows in ``fit``."""
    x = torch.cat([x.double(), x.new_ones(len(x), 1, dtype=torch.float64)], dim=1)
    y = y.double()
    solution = torch.linalg.lstsq(x[fit], y[fit]).solution
    residual = (y[~fit] - x[~fit] @ solution).square().sum()
    return float(1 - residual / (y[~fit] - y[fit].mean(0)).square().sum())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.aligned_state_fit", description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher", required=True, help="the teacher's directory (its own tokenizer inside)")
    parser.add_argument("--student", required=True)
    parser.add_argument("--task", default="rotten_tomatoes")
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--examples", type=int, default=128, help="training texts read (one batch)")
    args = parser.parse_args(argv)

    from transformers import AutoModel
    from transformers.utils import logging as transformers_logging

    from benchmarks.state_collapse import common_share
    from lightning_kd.cross_tokenizer.alignment import aligned_teacher_states, span_overlap
    from lightning_kd.data import GlueDataModule
    from lightning_kd.data.sources import resolve_source
    from lightning_kd.methods.tinybert import tinybert_pairs

    data = GlueDataModule(task=args.task, tokenizer=args.student, teacher_tokenizer=args.teacher, max_length=args.max_length,
                          batch_size=args.examples)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    transformers_logging.set_verbosity_error()  # the encoder of a classifier export: its head's weights go unused
    teacher = AutoModel.from_pretrained(resolve_source(args.teacher)).eval()
    student = AutoModel.from_pretrained(resolve_source(args.student)).eval()
    with torch.inference_mode():
        teacher_states = teacher(input_ids=batch["teacher_input_ids"], attention_mask=batch["teacher_attention_mask"],
                                 output_hidden_states=True).hidden_states
        student_states = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                 output_hidden_states=True).hidden_states
    overlap = span_overlap(batch["offset_mapping"], batch["teacher_offset_mapping"], batch["attention_mask"],
                           batch["teacher_attention_mask"])
    partner = overlap.any(dim=2)  # student tokens with a teacher counterpart: the ones the terms read
    fit = torch.rand(int(partner.sum()), generator=torch.Generator().manual_seed(0)) < 0.5
    pairs = tinybert_pairs(teacher.config.num_hidden_layers, student.config.num_hidden_layers)
    print(f"{int(partner.sum())} aligned tokens of {args.examples} texts; R² of the best affine map, fitted on half of them, on the other half\n")
    print("| student state → teacher state | held-out R² | teacher states' common-direction share |")
    print("|---|---|---|")
    for s, t in pairs["embedding"] + pairs["hidden"] + pairs["final"]:
        target = aligned_teacher_states(teacher_states[t], overlap)[0]
        r2 = held_out_r2(student_states[s][partner], target[partner], fit)
        print(f"| {s} → {t} | {r2:.2f} | {common_share(target, partner):.2f} |")


if __name__ == "__main__":
    main()
