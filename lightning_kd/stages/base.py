"""What a distillation stage decides, in one object the rest of the library asks.

A *stage* is the kind of head a distillation trains and what its labels mean: sequence
classification (fine-tuning), masked-LM pre-training, or causal-LM (next-token) distillation. It
decides which Hugging Face head class is loaded, how labels line up with logits (a causal stage
shifts them **once**, in :meth:`Stage.prepare`, so that every reader pairing position ``t`` with
``labels[t]`` is right), whether the model's own loss can read the labels, which module starts its
vocabulary head (where compact heads select rows), the fallback metrics, and the memory estimate's
share of scored rows.

The core, the teacher cache, the metrics and the export ask the stage instead of comparing strings;
adding a stage is one file in this package (:mod:`lightning_kd.stages`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import torch.nn.functional as F
from torch import Tensor, nn

if TYPE_CHECKING:
    from torchmetrics import MetricCollection

IGNORE_INDEX = -100


class Stage:
    """The decisions of one stage (subclasses are stateless; one instance each in :data:`~lightning_kd.stages.STAGES`).

    Attributes:
        name: the stage's name, as configs write it (``task_head: causal_lm``).
        token_level: the head predicts one distribution per position (MLM, causal LM), not one per example.
        class_suffixes: endings of the HF class names that carry this stage's head.
        labelled_share: the share of positions a training batch scores, for the memory estimate.
        intermediate_positions: the ``intermediate_positions`` choices this stage offers, its default
            first (:mod:`lightning_kd.stages.positions`).
        description: what the stage is, for messages.
        generative: the stage's models continue the prompts of its batches (decoder LMs), so a method
            may train on responses they write (:mod:`lightning_kd.on_policy`).
        cache_tail: a top-k teacher cache keeps the teacher's leftover probability as one tail bucket
            (language models: the top 64 of a 50k–260k vocabulary leave mass worth keeping); otherwise the
            top k are renormalised.
        aligns_across_tokenizers: a token-level stage whose predictions a teacher of another tokenizer can be
            compared with: next-token predictions where both encodings have read the same text
            (:mod:`lightning_kd.cross_tokenizer.next_token`). A masked LM's are not (its masks fall on one
            encoding's tokens). Sequence-level stages compare one prediction per example anyway.
    """

    name: ClassVar[str] = ""
    token_level: ClassVar[bool] = False
    class_suffixes: ClassVar[tuple[str, ...]] = ()
    labelled_share: ClassVar[float] = 1.0
    intermediate_positions: ClassVar[tuple[str, ...]] = ("all_tokens",)
    description: ClassVar[str] = ""
    generative: ClassVar[bool] = False
    cache_tail: ClassVar[bool] = False
    aligns_across_tokenizers: ClassVar[bool] = False

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    # ------------------------------------------------------------------ models
    def auto_class(self):
        """The ``transformers`` auto class that loads a model with this stage's head."""
        raise NotImplementedError

    def owns(self, class_name: str) -> bool:
        """Whether a model (or checkpoint architecture) named ``class_name`` carries this stage's head."""
        return class_name.endswith(self.class_suffixes)

    def teacher_hint(self) -> str:
        """How to obtain a teacher with this stage's head, for the error that refuses one without it."""
        raise NotImplementedError

    def head_entry(self, model: nn.Module) -> nn.Module | None:
        """The first module of ``model``'s vocabulary head (compact heads hand it only the rows a step
        reads), or ``None`` when its logits are computed whole."""
        return None

    # ------------------------------------------------------------------ batches and labels
    def prepare(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """The batch as every reader of this stage takes it: ``labels[t]`` is the target of the logits at ``t``.

        Idempotent: preparing a prepared batch returns it unchanged. Default: the batch itself.
        """
        return batch

    #: Whether the model's own forward may receive ``labels`` (its loss then equals the stage's hard loss).
    labels_to_model: ClassVar[bool] = True
    #: Extra keyword arguments of every forward :func:`~lightning_kd.core.features.capture` runs.
    forward_options: ClassVar[dict[str, object]] = {}

    def labels_reach_model(self, labels: Tensor) -> bool:
        """Whether the model's own forward computes the hard loss on ``labels`` (else :meth:`loss_from_logits`
        does, from the logits). Default: :attr:`labels_to_model`, whatever the labels."""
        return self.labels_to_model

    def loss_from_logits(self, logits: Tensor, labels: Tensor, rows: Tensor | None = None) -> Tensor:
        """The hard loss when the labels do not reach the model's forward. Default: :meth:`token_loss`."""
        return self.token_loss(logits, labels, rows)

    def labelled_rows_loss(self, logits: Tensor, labels: Tensor, rows: Tensor | None = None) -> Tensor:
        """The hard loss of a batch that marks its labelled rows (:mod:`lightning_kd.stages.labelled_rows`), from
        ``labels`` whose unlabelled rows are already ``-100``: :meth:`loss_from_logits`, i.e. the mean over the
        labelled rows' scored positions, and an exact 0 with a zero gradient when no position is labelled (a
        batch of unlabelled rows only), where a mean over nothing would be NaN.
        """
        if bool(labels.ne(IGNORE_INDEX).any()):
            return self.loss_from_logits(logits, labels, rows)
        # A sum over no logit at all: 0 and still in the graph, so backward runs and every gradient is 0.
        return logits[..., :0].float().sum()

    def token_loss(self, logits: Tensor, labels: Tensor, rows: Tensor | None = None) -> Tensor:
        """The mean cross-entropy over labelled positions, from whole ``(B, N, V)`` logits or compact
        ``(R, V)`` rows at ``rows`` (``(B, N)``), in float32 with ``-100`` ignored; NaN without any
        label, as Hugging Face's losses.

        Raises:
            ValueError: a labelled position lies outside ``rows``.
        """
        labels = labels.to(logits.device)
        if rows is None:
            return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), ignore_index=IGNORE_INDEX)
        rows = rows.to(labels.device)
        outside = labels.ne(IGNORE_INDEX) & ~rows
        if bool(outside.any()):
            raise ValueError(
                f"{int(outside.sum())} labelled positions lie outside the computed logit rows, so the loss cannot be "
                "computed from them; the student's rows must cover the labelled positions."
            )
        targets = labels[rows]
        keep = targets.ne(IGNORE_INDEX)
        if not bool(keep.all()):  # e.g. every real token's row: score the labelled ones only (no wasted softmax)
            logits, targets = logits[keep], targets[keep]
        return F.cross_entropy(logits.float(), targets)

    # ------------------------------------------------------------------ metrics
    def metrics(self, num_labels: int | None, prefix: str) -> MetricCollection | None:
        """Metrics when the data module provides none (e.g. plain dataloaders in a notebook)."""
        return None
