"""The prediction-level distillation loss shared by every method (the reference's ``pre_loss``).

A :class:`PredictionLoss` holds the knobs of the soft (teacher-output) and hard (label) terms. KD is
made of it alone; intermediate-layer methods add it for their prediction stage.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, get_args

import torch
from torch import Tensor

from lightning_kd.losses.fused_linear import HardSpec, SoftSpec, fused_linear_terms
from lightning_kd.losses.logits import check_divergence_weights, logits_mse, soft_divergence
from lightning_kd.losses.masking import Reduction, padding_mask, target_mask
from lightning_kd.stages.positions import term_positions

if TYPE_CHECKING:
    from lightning_kd.core.features import Features
    from lightning_kd.core.logit_rows import LogitRows

#: The soft divergences of :func:`~lightning_kd.losses.logits.soft_divergence`, and ``"mse"`` between raw logits.
SoftLoss = Literal["kl", "ce", "reverse_kl", "jsd", "skew_kl", "skew_reverse_kl", "tvd", "argmax_ce", "mse"]
SoftPositions = Literal["masked_tokens", "all_tokens", "all_positions"]
#: How a causal-LM teacher of another vocabulary is compared (:mod:`lightning_kd.cross_tokenizer.next_token`).
CrossVocabularyLoss = Literal["uld", "matched", "hybrid"]
#: The token-logit rows (:data:`~lightning_kd.core.logit_rows.LogitRows`) each ``soft_positions`` reads.
_ROWS: dict[str, str] = {"masked_tokens": "labelled", "all_tokens": "tokens", "all_positions": "all"}


@dataclass
class PredictionLoss:
    """Soft and hard prediction-level terms.

    Attributes:
        soft_weight: weight of the soft term (0 disables it). GKD: ``--distill_soft_rate``.
        hard_weight: weight of the student's own task/MLM loss (0 disables it). GKD: ``--distill_hard_rate``.
        temperature: softmax temperature ``T`` of the soft term: the teacher's ``p = softmax(z_t/T)``
            and the student's ``q = softmax(z_s/T)`` (ignored by ``mse``).
        soft_loss: per row, summed over the classes:

            * ``"kl"``: ``KL(p ‖ q) = Σ p (log p − log q)`` (Hinton et al.);
            * ``"ce"``: ``−Σ p log q`` (soft cross-entropy, the GKD fine-tuning default);
            * ``"reverse_kl"``: ``KL(q ‖ p) = Σ q (log q − log p)``;
            * ``"jsd"``: ``β KL(p ‖ m) + (1−β) KL(q ‖ m)``, ``m = β p + (1−β) q``, ``β = jsd_beta``
              (generalized JSD of on-policy GKD, Agarwal et al.);
            * ``"skew_kl"``: ``KL(p ‖ α p + (1−α) q)``, ``α = skew_alpha`` (DistiLLM);
            * ``"skew_reverse_kl"``: ``KL(q ‖ (1−α) p + α q)``;
            * ``"tvd"``: total variation ``½ Σ |p − q|``;
            * ``"argmax_ce"``: ``−log q_y``, ``y = argmax p``: the teacher's top class as a hard label
              (hard-label distillation; pseudo-labels on unlabelled rows). Use ``temperature: 1``;
            * ``"mse"``: mean squared error between raw logits (no ``T``).
        t2_scale: multiply the KL-family terms (every ``soft_loss`` but ``tvd`` and ``mse``) by ``T²``
            so the soft gradient does not shrink with ``T``. Total variation is never scaled (its
            gradient shrinks as ``1/T``, not ``1/T²``), nor is ``mse``, whatever this flag says.
            The library default is ``True``; GKD's fine-tuning presets use ``ce`` without it.
        jsd_beta: ``β`` of ``jsd``, in ``[0, 1]``; ``0.5`` is the symmetric Jensen–Shannon divergence.
            The ends, where the formula is 0, are defined as ``KL(p ‖ q)`` (``β = 0``) and ``KL(q ‖ p)``
            (``β = 1``), TRL's GKD convention. Read by ``jsd`` only.
        skew_alpha: ``α`` of ``skew_kl``/``skew_reverse_kl``, in ``(0, 1]``; DistiLLM uses ``0.1``.
            Read by those two only.
        soft_positions: for token-level (MLM) logits, which positions the soft term covers:
            ``"masked_tokens"`` (positions with an MLM label; GKD default), ``"all_tokens"`` (every
            non-padding token; GKD ``--distill_only_mask_pad``) or ``"all_positions"`` (padding
            included; GKD ``--distill_wo_loss_mask``). Sequence-level (task) logits have one row
            per example, so this knob does not apply to them.
        reduction: ``"masked_mean"`` (default) or ``"gkd"`` (divide by all positions; parity).
        mse_teacher_scale: multiplier on teacher logits in the ``mse`` variant (GKD ``mse_t_w``).
        cross_vocabulary: causal-LM stage, a teacher that reads another tokenizer: how its next-token
            distributions are compared with the student's at the positions where both have read the same
            text (:mod:`lightning_kd.cross_tokenizer.next_token`): ``"uld"`` (default; sorted probabilities,
            L1, no token correspondence), ``"matched"`` (``soft_loss`` over the tokens both vocabularies spell
            alike, the rest in one bucket per side) or ``"hybrid"`` (both). Read only in that setting.
        uld_top: cut ULD's sorted vectors to their first ``m`` entries plus the rest's mass (``None``: exact;
            a lower bound otherwise, much cheaper on a 262k vocabulary). Read by ``uld``/``hybrid`` only.
        merge_spans: with ``cross_vocabulary: uld``, scale each side's row by the probability its model gives
            the rest of the text up to the next position both have read (GOLD's span merging,
            :mod:`lightning_kd.cross_tokenizer.merged_spans`), so both rows describe the same piece of text.
        class_mean: divide a KL-family soft term by the class count ``C`` (the last logit
            dimension), i.e. average the per-class summands instead of summing them, as the original
            authors' code does: TinyBERT's ``(−p_T·log p_S).mean()`` and PKD's
            ``KLDivLoss(reduction="mean")``. Parity only (``False`` keeps the usual per-example sum);
            ``mse`` already averages over classes and refuses it, as do ``tvd`` and ``argmax_ce``.
    """

    soft_weight: float = 1.0
    hard_weight: float = 1.0
    temperature: float = 1.0
    soft_loss: SoftLoss = "kl"
    t2_scale: bool = True
    soft_positions: SoftPositions = "masked_tokens"
    reduction: Reduction = "masked_mean"
    mse_teacher_scale: float = 1.0
    class_mean: bool = False
    jsd_beta: float = 0.5
    skew_alpha: float = 0.1
    cross_vocabulary: CrossVocabularyLoss = "uld"
    uld_top: int | None = None
    merge_spans: bool = False

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}.")
        if self.soft_weight < 0 or self.hard_weight < 0:
            raise ValueError(
                f"soft_weight and hard_weight must be >= 0 (0 disables a term), got {self.soft_weight} and {self.hard_weight}."
            )
        if self.soft_loss not in get_args(SoftLoss):
            raise ValueError(f"soft_loss must be one of {', '.join(get_args(SoftLoss))}; got {self.soft_loss!r}.")
        check_divergence_weights(self.jsd_beta, self.skew_alpha)
        if self.cross_vocabulary not in get_args(CrossVocabularyLoss):
            raise ValueError(f"cross_vocabulary must be one of {', '.join(get_args(CrossVocabularyLoss))}; got {self.cross_vocabulary!r}.")
        if self.uld_top is not None and self.uld_top < 1:
            raise ValueError(f"uld_top must be a positive number of sorted entries (or null for exact), got {self.uld_top}.")
        if self.merge_spans and self.cross_vocabulary != "uld":
            raise ValueError(
                f"merge_spans turns rows into unnormalised vectors, which only ULD's sorted distance compares (not "
                f"{self.cross_vocabulary!r}): use cross_vocabulary: uld with merge_spans, or drop merge_spans."
            )
        if self.class_mean and self.soft_loss == "mse":
            raise ValueError("class_mean averages the kl/ce summands over classes; soft_loss 'mse' already does: remove class_mean.")
        if self.class_mean and self.soft_loss in ("tvd", "argmax_ce"):
            raise ValueError(
                f"class_mean is the original codes' mean of KL summands over classes; soft_loss {self.soft_loss!r} has no such "
                "parity: remove class_mean."
            )

    def soft_mask(self, batch: dict[str, Tensor], student_logits: Tensor) -> Tensor | None:
        """The mask of rows the soft term averages over (``None`` = every row)."""
        return self.token_mask(batch) if student_logits.dim() >= 3 else None

    def token_mask(self, batch: dict[str, Tensor]) -> Tensor | None:
        """The ``(B, N)`` positions the soft term averages over for token-level logits (``None`` = all)."""
        if self.soft_positions == "all_positions":
            return None
        if self.soft_positions == "all_tokens" and term_positions(batch) is not None:
            # The tokens the step's terms read: every real token, or the causal-LM stage's scored ones.
            return padding_mask(term_positions(batch))
        if self.soft_positions == "masked_tokens" and "labels" in batch and batch["labels"].dim() == 2:
            return target_mask(batch["labels"])
        return padding_mask(batch["attention_mask"]) if "attention_mask" in batch else None

    def logit_rows(self) -> LogitRows:
        """The token-logit rows the soft term reads (``"none"`` when it is off); the hard term reads
        the labelled rows, which the method adds when it uses the student's own loss."""
        return _ROWS[self.soft_positions] if self.soft_weight > 0 else "none"  # type: ignore[return-value]

    def soft(self, student_logits: Tensor, teacher_logits: Tensor, batch: dict[str, Tensor], per_sample: bool = False) -> Tensor:
        """The weighted soft term between student and teacher logits."""
        return self._soft(student_logits, teacher_logits, self.soft_mask(batch, student_logits), None, per_sample)

    def soft_features(
        self, student: Features, teacher: Features, batch: dict[str, Tensor], per_sample: bool = False, with_hard: bool = False
    ) -> Tensor:
        """The weighted soft term between two models' captured logits, whole or compact (``(R, V)``
        rows with their ``(B, N)`` positions), or their LM heads' input rows (fused heads): the same value
        every way.

        Args:
            with_hard: when the student holds head rows with labels and no loss yet, compute its
                next-token loss in the same pass (one projection of the student's rows for both; the caller
                adds the soft term once and the loss times ``hard_weight``).

        Raises:
            ValueError: the term reads token rows that one of the models did not compute.
        """
        if teacher.logit_topk is not None:  # a top-k teacher cache: top ids and a tail bucket per row
            if self.soft_loss == "mse":
                raise ValueError("soft_loss 'mse' compares raw logits, which a top-k teacher cache does not keep: set its top_k: null.")
            if student.head_rows is not None:
                return self._fused_soft(student, teacher, batch, per_sample, with_hard)
            mask = self.token_mask(batch)
            positions = teacher.logit_rows.bool() if mask is None else mask.bool().to(teacher.logit_rows.device)
            top = teacher.logit_topk.rows(_rows_among(teacher.logit_rows, positions, "teacher"))
            return self._soft(student.logits_at(positions), top, None, positions, per_sample)
        if student.head_rows is not None and teacher.head_rows is not None:
            return self._fused_soft(student, teacher, batch, per_sample, with_hard)
        if student.head_rows is not None or teacher.head_rows is not None:  # one family kept its logits
            from lightning_kd.core.fused_head import with_logits  # the core imports the losses, not the reverse

            student, teacher = with_logits(student), with_logits(teacher)
        if student.logit_rows is None and teacher.logit_rows is None:
            return self.soft(student.logits, teacher.logits, batch, per_sample)
        rows = student.logit_rows if student.logit_rows is not None else teacher.logit_rows
        mask = self.token_mask(batch)
        positions = mask.bool() if mask is not None else torch.ones_like(rows)
        return self._soft(student.logits_at(positions), teacher.logits_at(positions), None, positions, per_sample)

    def _fused_soft(self, student: Features, teacher: Features, batch: dict[str, Tensor], per_sample: bool, with_hard: bool) -> Tensor:
        """The soft term from the student's head rows and the teacher's (or its top-k rows), chunk by chunk
        (:mod:`lightning_kd.losses.fused_linear`), with the reduction, ``T²``, ``class_mean`` and
        ``soft_weight`` folded into per-row weights."""
        if teacher.logit_topk is None and not torch.equal(student.logit_rows, teacher.logit_rows):
            raise ValueError("Fused heads need the head rows of both models at the same positions; set `method.compact_heads = False`.")
        if per_sample or self.soft_loss == "mse":
            raise ValueError("Fused heads compute batch-level divergences; per-example terms and soft_loss 'mse' read logits.")
        rows = student.logit_rows.bool()
        mask = self.token_mask(batch)
        positions = rows if mask is None else mask.bool().to(rows.device)
        if bool((positions & ~rows).any()):
            raise ValueError("The soft term reads positions whose head rows were not kept; the method must name them in its logit rows.")
        kept = positions[rows].float()  # (R,) the compact rows the term averages over
        divisor = positions.numel() if self.reduction == "gkd" else kept.sum().clamp_min(1.0)
        weights = kept * (self.soft_weight / divisor)
        if self.t2_scale and self.soft_loss != "tvd":
            weights = weights * self.temperature**2
        if self.class_mean:
            weights = weights / student.head_rows.head.vocab_size
        spec = SoftSpec(weights, self.soft_loss, self.temperature, self.jsd_beta, self.skew_alpha)
        ours, theirs = student.head_rows, teacher.head_rows
        hard = None
        if with_hard and student.loss is None and ours.labels is not None:
            hard = HardSpec.mean(ours.labels)
        if teacher.logit_topk is not None:  # the teacher's top-k row of each student row the term reads
            at = _rows_among(teacher.logit_rows, rows & positions, "teacher")
            top = teacher.logit_topk.rows(torch.zeros(int(rows.sum()), dtype=torch.long, device=at.device).masked_scatter(positions[rows], at))
            teacher_terms = {"teacher_topk": top}
        else:
            teacher_terms = {"teacher_rows": theirs.rows, "teacher_head": theirs.head}
        terms = fused_linear_terms(ours.rows, ours.head, **teacher_terms, soft=spec, hard=hard,
                                   hard_ratio=self.hard_weight if hard is not None else None)
        if hard is not None:
            student.loss = terms["hard"]  # the student's own loss, read by its hard term (times hard_weight)
        return terms["soft"]

    def _soft(self, student_logits: Tensor, teacher_logits: Tensor, mask: Tensor | None, positions: Tensor | None, per_sample: bool) -> Tensor:
        if self.soft_loss == "mse":
            value = logits_mse(student_logits, teacher_logits, mask, self.reduction, self.mse_teacher_scale, per_sample, positions)
        else:
            value = soft_divergence(
                student_logits, teacher_logits, self.soft_loss, self.temperature, mask, self.reduction, self.t2_scale,
                per_sample, positions, jsd_beta=self.jsd_beta, skew_alpha=self.skew_alpha,
            )
        if self.class_mean:  # mse and tvd refuse it
            value = value / student_logits.shape[-1]  # the original codes' mean over the C class summands
        return self.soft_weight * value


def _rows_among(rows: Tensor, positions: Tensor, whose: str) -> Tensor:
    """The index, among the compact rows at the ``(B, N)`` mask ``rows``, of each position of ``positions``
    (row-major order).

    Raises:
        ValueError: a position has no row.
    """
    rows = rows.bool()
    if bool((positions & ~rows).any()):
        raise ValueError(f"The soft term reads positions the {whose}'s rows do not hold; the method must name them in its logit rows.")
    return (rows.reshape(-1).long().cumsum(0) - 1)[positions.reshape(-1)]
