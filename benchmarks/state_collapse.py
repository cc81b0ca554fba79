"""Whether exported classifiers' token states have collapsed onto one direction (board 2's TinyBERT row).

For each exported model, on the first ``--examples`` validation examples of the task: per layer, the share of the
token states' mean squared norm that lies in their common mean vector (0 for states spread evenly around the origin,
1 when every token's state is the same vector); the mean cosine between the final layer's first-token ([CLS])
vectors of different examples; and what the head makes of them (share of the most predicted class, spread of the
logits). A student whose states have collapsed answers one class for every example. Prints a Markdown table.

    python -m benchmarks.state_collapse --task rotten_tomatoes --max-length 64 EXPORT [EXPORT ...]
"""

from __future__ import annotations

import argparse

import torch
from torch import Tensor


def common_share(states: Tensor, mask: Tensor) -> float:
    """``‖mean‖² / mean ‖x‖²`` over the real tokens' state vectors ``x``: the part all tokens share."""
    tokens = states[mask]
    return float(tokens.mean(0).square().sum() / tokens.square().sum(-1).mean())


def mean_cosine(vectors: Tensor) -> float:
    """Mean cosine similarity between different rows of ``vectors``."""
    unit = torch.nn.functional.normalize(vectors, dim=-1)
    similarity = unit @ unit.T
    return float(similarity[~torch.eye(len(unit), dtype=torch.bool)].mean())


def describe(path: str, task: str, max_length: int, examples: int) -> list[str]:
    """The table cells of one export."""
    from transformers import AutoModelForSequenceClassification

    from lightning_kd.core.features import model_inputs
    from lightning_kd.data import GlueDataModule

    data = GlueDataModule(task=task, tokenizer=path, max_length=max_length, eval_batch_size=examples)
    data.setup("validate")
    batch = next(iter(data.val_dataloader()))
    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    with torch.inference_mode():
        output = model(**model_inputs(batch), output_hidden_states=True)
    mask = batch["attention_mask"].bool()
    shares = " ".join(f"{common_share(states, mask):.2f}" for states in output.hidden_states)
    predictions = output.logits.argmax(-1)
    top_share = predictions.bincount().max().item() / len(predictions)
    return [path, shares, f"{mean_cosine(output.hidden_states[-1][:, 0]):.3f}", f"{top_share:.2f}",
            f"{output.logits.float().std(0).mean():.3f}"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.state_collapse", description=__doc__.split("\n\n")[0])
    parser.add_argument("exports", nargs="+", help="directories of exported sequence classifiers")
    parser.add_argument("--task", default="rotten_tomatoes")
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--examples", type=int, default=128, help="validation examples read (one batch)")
    args = parser.parse_args(argv)
    print("| export | common-direction share of token states, embeddings → last layer | mean cosine of final [CLS] "
          "vectors | share of the most predicted class | logit sd across examples |")
    print("|---|---|---|---|---|")
    for path in args.exports:
        print("| " + " | ".join(describe(path, args.task, args.max_length, args.examples)) + " |", flush=True)


if __name__ == "__main__":
    main()
