"""Where TinyBERT's hidden-state term comes from on a decoder LM, before training.

For the embedded SmolLM2-135M-Instruct teacher and the LM board's student (its first 7 and last 8 layers), on one
batch of packed Rotten Tomatoes blocks: per hidden-state pair of TinyBERT's uniform layer map, the mean squared
error, the share of it at the first position of each block (the attention sink) and in the two largest dimensions,
and each teacher layer's largest activation. Prints a Markdown table (docs/methods/tinybert.md, "Decoder LMs").

    python -m benchmarks.hidden_state_gaps [--batch-size 4] [--block-size 128]
"""

from __future__ import annotations

import argparse

import torch

TEACHER = "embedded:smollm2-135m-instruct"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.hidden_state_gaps", description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--block-size", type=int, default=128)
    args = parser.parse_args(argv)

    from lightning_kd.data import CausalLMDataModule
    from lightning_kd.methods import TinyBERT
    from lightning_kd.methods.tinybert import tinybert_pairs

    data = CausalLMDataModule(tokenizer=TEACHER, train_files=["embedded:rotten_tomatoes"], text_column="text",
                              block_size=args.block_size, batch_size=args.batch_size, validation_fraction=0.02, seed=0)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    method = TinyBERT(teacher=TEACHER, student_init="teacher_first_last", student_layers=15)
    teacher, student = method.teachers[0], method.student
    inputs = dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True)
    with torch.no_grad():
        teacher_states = teacher(**inputs).hidden_states
        student_states = student(**inputs).hidden_states
    pairs = tinybert_pairs(teacher.config.num_hidden_layers, student.config.num_hidden_layers)
    print("| student state | teacher state | teacher's largest activation (absolute) | MSE | share at position 0 | share in the top 2 dims |")
    print("|---|---|---|---|---|---|")
    for s, t in pairs["embedding"] + pairs["hidden"] + pairs["final"]:
        error = (student_states[s] - teacher_states[t]).pow(2)
        total = error.sum().item()
        shares = (f"{error[:, 0].sum().item() / total:.2f} | {error.sum((0, 1)).topk(2).values.sum().item() / total:.2f}"
                  if total else "— | —")  # the embedding pair: the student's embeddings are the teacher's
        print(f"| {s} | {t} | {teacher_states[t].abs().max().item():,.0f} | {error.mean().item():,.1f} | {shares} |")


if __name__ == "__main__":
    main()
