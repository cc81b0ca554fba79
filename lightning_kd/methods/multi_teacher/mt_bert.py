"""MT-BERT — Wu, Wu and Huang (2021), "One Teacher is Enough? Pre-trained Language Model Distillation
from Multiple Teachers" (Findings of ACL-IJCNLP 2021).

Each teacher's soft prediction term is weighted per example by how well that teacher itself does on
the gold label, ``w_{i,b} = 1 / (1 + CE_b(z^T_i, y))`` (detached), and the weighted terms are
**summed** over teachers, as are the intermediate (PKD patience) terms:

    L = Σ_i [ mean_b(w_{i,b} · soft_{i,b}) + Σ_terms inter_i ] + hard_weight · L_hard

Terms are read by role and shape (:mod:`lightning_kd.core.terms`): *every* per-example term, whatever
its name, is weighted by ``w_{i,b}``; a scalar term (one the method cannot compute per example, such
as PKD's patience, which the paper leaves unweighted) is summed as it is.

The hard loss is the method's own student term (added once, outside the strategy). MT-BERT is
written on top of PKD in the GKD reference; its "fit teacher" width alignment is PKD's
``projection`` knob: ``PKD(projection="teacher_to_student", multi_teacher=MTBERT())`` projects each
teacher's states into the student width (``--mt_bert_fit_teacher``), ``"student_to_teacher"`` maps
the student into each teacher's width, ``"none"`` needs equal widths (``--mt_bert_wo_convert_layer``).

Where we differ from the GKD reference (``--multi_teacher_model=mt_bert``), and why:

* The hard loss is not a strategy switch (``--mt_bert_wo_hard``): it is the method's ``hard_weight``
  (0 turns it off). With PKD, whose ``alpha`` mixes ``(1-alpha)·hard + alpha·soft``, the seed's
  "soft 1 + hard 1" is ``alpha: 0.5`` with ``prediction.soft_weight = hard_weight = 2``
  (``configs/gkd/mt_bert/1_finetune.yaml``).
* ``--mt_bert_fix_layernorm`` (extra LayerNorms around the projected states) is not implemented.
* The paper's co-fine-tuning of the teachers is not implemented (nor is it in the reference).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_kd.core.logit_rows import IGNORE_INDEX, LogitRows, sum_per_example
from lightning_kd.core.multi_teacher import MultiTeacherStrategy, TeacherStep
from lightning_kd.core.terms import LossTerms, weighted_sum
from lightning_kd.stages.classification import unlabelled_rows
from lightning_kd.stages.labelled_rows import LABELLED

#: Why strategies that read each example's gold loss refuse unlabelled rows.
NEEDS_GOLD_LABELS = "it weights each teacher per example by that teacher's loss on the example's gold label, which an unlabelled row lacks"


def teacher_gold_loss(logits: Tensor, labels: Tensor, rows: Tensor | None = None, labelled: Tensor | None = None) -> Tensor:
    """A teacher's own per-example loss against the gold labels (GKD ``mt_has_loss``), shape ``(B,)``.

    Args:
        logits: ``(B, C)`` task logits (``C = 1``: regression, squared error), or ``(B, N, V)``
            token logits (MLM; cross-entropy averaged over the positions whose label is not -100,
            0 for an example without any), or compact ``(R, V)`` token rows at ``rows``.
        labels: ``(B,)`` class ids or regression targets, or ``(B, N)`` token ids with -100 ignored.
        rows: the ``(B, N)`` positions of compact token logits (they must cover every labelled one).
        labelled: the batch's ``(B,)`` row marks (:mod:`lightning_kd.stages.labelled_rows`), when it has them.

    Raises:
        ValueError: an example without a label (class id -100, or a row marked unlabelled), whose gold loss
            does not exist.
    """
    if (labels.dim() == 1 and bool(unlabelled_rows(labels).any())) or (labelled is not None and not bool(labelled.all())):
        raise ValueError(
            f"The batch has unlabelled rows (class id -100 or {LABELLED!r} False), but a teacher's gold loss (MT-BERT's weights, RL-KD's agent "
            "state) needs a label on every example; train these strategies on labelled data only."
        )
    logits = logits.float()
    if rows is not None:
        if bool((labels.ne(IGNORE_INDEX) & ~rows).any()):
            raise ValueError("The teacher's gold loss needs its logits at every labelled position; its compact rows miss some.")
        per_row = F.cross_entropy(logits, labels[rows], ignore_index=IGNORE_INDEX, reduction="none")
        return sum_per_example(per_row, rows) / labels.ne(IGNORE_INDEX).sum(dim=1).clamp_min(1)
    if logits.dim() == 3:
        per_token = F.cross_entropy(logits.transpose(1, 2), labels, ignore_index=-100, reduction="none")
        counts = labels.ne(-100).sum(dim=1).clamp_min(1)
        return per_token.sum(dim=1) / counts
    if logits.shape[-1] == 1:
        return (logits.squeeze(-1) - labels.float()) ** 2
    return F.cross_entropy(logits, labels.long(), reduction="none")


class MTBERT(MultiTeacherStrategy):
    """Sum over teachers, each teacher's per-example terms weighted per example by ``1/(1 + its gold loss)``.

    Needs a gold label on every example of the batch (unlabelled rows are refused). Combine with PKD (the
    reference) or any method: the soft prediction term is always per example; any other per-example term
    is weighted the same way, and scalar terms are summed over teachers unweighted.
    """

    per_sample = True

    def unlabelled_refusal(self) -> str | None:
        return NEEDS_GOLD_LABELS

    def teacher_logit_rows(self) -> LogitRows:
        return "labelled"  # each teacher's gold loss (MLM: at the labelled positions)

    def combine(self, per_teacher: Sequence[Mapping[str, Tensor]], step: TeacherStep) -> LossTerms:
        if "labels" not in step.batch:
            raise ValueError("MT-BERT weights each teacher by its loss on the gold labels; the batch has no 'labels'.")
        labels = step.batch["labels"]
        with torch.no_grad():
            marks = step.batch.get(LABELLED)
            weights = [1.0 / (1.0 + teacher_gold_loss(logits, labels, step.teacher_rows(k), marks)) for k, logits in enumerate(step.teacher_logits)]
        return weighted_sum(per_teacher, weights, strategy="MT-BERT")
