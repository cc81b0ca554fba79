"""Next-token metrics for causal LMs: perplexity, token accuracy and bits per byte.

``build_lm_metrics(prefix)`` is called as ``metrics.update(logits, labels)`` with labels **already
aligned** to the logits (``labels[t]`` is the target of ``logits[t]``: the causal-LM stage shifts
Hugging Face's unshifted labels once, upstream) and ``-100`` where nothing is scored. Both layouts
the library produces are accepted: full logits ``(B, N, V)`` with labels ``(B, N)``, and compact
rows ``(R, V)`` with labels ``(R,)``.

Perplexity is token-weighted over everything accumulated (an epoch, across ranks): ``exp(total
NLL / total scored tokens)``, not a mean of per-batch perplexities. It keeps torchmetrics'
:class:`~torchmetrics.text.Perplexity` states (``total_log_probs``, ``count``, summed across
processes) and ``compute``, with its own ``update``: torchmetrics takes ``log(softmax(x))`` in the
logits' dtype, which is ``-inf`` (an infinite perplexity) once a target's probability underflows
(below ~6e-8 for float16 logits: a logit gap of 17, common for a trained LM), rounds to bfloat16's
8-bit mantissa, and materialises a probability tensor as large as the logits. Here the NLL is
``cross_entropy`` in float32 over the scored rows only, in chunks, so the extra memory stays
bounded whatever the vocabulary.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import MetricCollection
from torchmetrics.text import Perplexity

from lightning_kd.metrics.defaults import MaskedTokenAccuracy

IGNORE_INDEX = -100


def scored_rows(logits: Tensor, labels: Tensor, ignore_index: int = IGNORE_INDEX) -> tuple[Tensor, Tensor]:
    """The ``(K, V)`` logits and ``(K,)`` labels of the positions whose label is not ``ignore_index``.

    Raises:
        ValueError: the labels do not have the logits' shape without the vocabulary dimension.
    """
    if logits.dim() < 2 or tuple(labels.shape) != tuple(logits.shape[:-1]):
        raise ValueError(
            "LM metrics take logits (B, N, V) with labels (B, N), or compact rows (R, V) with labels (R,); "
            f"got logits {tuple(logits.shape)} and labels {tuple(labels.shape)}."
        )
    labels = labels.reshape(-1)
    keep = labels.ne(ignore_index)
    return logits.reshape(-1, logits.shape[-1])[keep], labels[keep].long()


class TokenPerplexity(Perplexity):
    """torchmetrics' ``Perplexity`` with a float32 cross-entropy ``update`` that takes either logits layout.

    Args:
        ignore_index: label of positions that are not scored.
        chunk_rows: rows upcast to float32 at a time (bounds the extra memory to ``chunk_rows × V × 4`` bytes, twice).
    """

    def __init__(self, ignore_index: int = IGNORE_INDEX, chunk_rows: int = 2048, **kwargs) -> None:
        super().__init__(ignore_index=ignore_index, **kwargs)
        self.chunk_rows = chunk_rows

    def update(self, preds: Tensor, target: Tensor) -> None:
        """Add the summed next-token NLL and the number of scored tokens of one batch."""
        rows, labels = scored_rows(preds, target, self.ignore_index)
        total = torch.zeros((), dtype=torch.float32, device=rows.device)
        for start in range(0, rows.shape[0], self.chunk_rows):
            chunk = rows[start : start + self.chunk_rows].float()
            total += F.cross_entropy(chunk, labels[start : start + self.chunk_rows], reduction="sum")
        self.total_log_probs += total.detach()
        self.count += labels.numel()


class BitsPerByte(TokenPerplexity):
    """The summed next-token NLL in bits over the UTF-8 bytes of text the scored tokens spell:
    ``total NLL / (ln 2 · total bytes)``, comparable across tokenizers (perplexity is not).

    Args:
        token_bytes: ``(V,)`` bytes of text per token id (:func:`~lightning_kd.metrics.token_bytes.token_byte_lengths`).
        ignore_index: label of positions that are not scored.
    """

    def __init__(self, token_bytes: Tensor, ignore_index: int = IGNORE_INDEX, **kwargs) -> None:
        super().__init__(ignore_index=ignore_index, **kwargs)
        self.register_buffer("token_bytes", token_bytes.long(), persistent=False)
        self.add_state("bytes", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: Tensor, target: Tensor) -> None:
        super().update(preds, target)
        labels = target.reshape(-1)
        self.bytes += self.token_bytes.to(labels.device)[labels[labels.ne(self.ignore_index)].long()].sum()

    def compute(self) -> Tensor:
        return self.total_log_probs / (math.log(2) * self.bytes.clamp_min(1).to(self.total_log_probs.dtype))


def build_lm_metrics(prefix: str = "", token_bytes: Tensor | None = None) -> MetricCollection:
    """``<prefix>perplexity`` and ``<prefix>token_accuracy`` (argmax accuracy) over positions not labelled -100,
    and ``<prefix>bits_per_byte`` when ``token_bytes`` (bytes of text per token id) is given.

    Call as ``metrics.update(logits, labels)`` with aligned labels, ``(B, N, V)``/``(B, N)`` or
    ``(R, V)``/``(R,)``. All are sums of per-token statistics, so they are token-weighted over all
    updates and correct under DDP (states reduced by sum).
    """
    metrics = {"perplexity": TokenPerplexity(ignore_index=IGNORE_INDEX),
               "token_accuracy": MaskedTokenAccuracy(ignore_index=IGNORE_INDEX)}
    if token_bytes is not None:
        metrics["bits_per_byte"] = BitsPerByte(token_bytes, ignore_index=IGNORE_INDEX)
    # compute_groups=False: the two metrics share no state, so grouping would only add checks.
    return MetricCollection(metrics, prefix=prefix, compute_groups=False)
