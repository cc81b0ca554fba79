"""LogitsDistil — GLMD word-prediction distillation. Tan et al. (2023), "Are Intermediate Layers and
Labels Really Necessary? A General Language Model Distillation Method" (Findings of ACL 2023).

The student matches the teacher's full-vocabulary distribution at every token position
(``T²·KL_T`` or MSE over ``(B, N, V)`` logits), with no intermediate layer and no hard label, in
both stages. Pre-training uses the models' MLM logits. Fine-tuning uses the same word-prediction
distribution, read from the last hidden state through an LM head kept beside the task head (see
``vocab_head``), and then — the seed's last step — plain soft-label KD on the task logits
(``vocabulary_weight: 0``, ``prediction: {soft_weight: 1}``).

The word-prediction term is not a :class:`~lightning_kd.losses.prediction.PredictionLoss`: it reads
the vocabulary logits (a classifier's through an extra LM head), at its own ``positions``, with a
top-n restriction, so its knobs (``temperature``, ``vocabulary_loss``, ``positions``, ``top_n``,
``reduction``) are the method's own arguments. The optional soft/hard terms on the model's own
logits are a plain prediction loss: the ``prediction:`` block every method shares (off by default),
with its own ``temperature`` and ``reduction``.

Design decision (fine-tuning): GLM ties its LM head to the input embeddings, so every GLM
classifier still has one. A ``…ForSequenceClassification`` model has none; ``vocab_head="mlm"``
(default) copies the family's own vocabulary head — the ``…ForMaskedLM`` head (transform, the
hidden → embedding map of factorised families, bias; decoder tied to the model's *current* word
embeddings), or a decoder LM's ``lm_head`` — from each model's own checkpoint, or from a checkpoint
named by ``teacher_mlm_heads`` / ``student_mlm_head`` (:mod:`lightning_kd.models.vocab_head`).
``vocab_head="tied"`` is GLM's head ``H·Eᵀ``; it is refused for factorised embeddings (ALBERT,
ELECTRA/DeBERTa-v2 with ``embedding_size != hidden_size``), whose rows are not in the hidden space.
The student's head is trained with it but is not part of the exported classifier.

Where we differ from the GKD reference:

* ``positions="tokens"`` (``logitsdistil_mask_pad``) is the default: padding carries no information.
* The default reduction divides by the kept positions; ``reduction="gkd"`` divides by all of them
  (the reference multiplies masked logits by 0 and averages over ``B·N``).
* The top-n hinge's 0/0 (NaN when no logit violates the bound) is 0.
* The "old method" (``--student_model=kd --distill_logits_parallel`` + ``distill_logit_*``) is this
  class too: it computes the same quantity without top-n/``mask_a`` (``configs/gkd/logits_distil/old_*``).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from lightning_kd.core.features import FeatureRequest, Features
from lightning_kd.core.logit_rows import LogitRows, widest
from lightning_kd.core.module import DistillationModule
from lightning_kd.losses.masking import Reduction, padding_mask, target_mask
from lightning_kd.losses.prediction import PredictionLoss
from lightning_kd.losses.vocabulary import (
    TopNMode,
    VocabularyLoss,
    top_n_count,
    word_prediction_loss,
)
from lightning_kd.models.loading import ModelSource
from lightning_kd.models.vocab_head import VocabularyHead, check_tied_head, load_vocab_head
from lightning_kd.stages.positions import term_positions

#: The name earlier releases exported (a head of any family now, not only BERT's).
load_mlm_head = load_vocab_head

Positions = Literal["all", "tokens", "targets"]
VocabHead = Literal["mlm", "tied"]


class LogitsDistil(DistillationModule):
    """Word-prediction distillation over full-vocabulary logits at every position (GLMD).

    Args:
        temperature: softmax temperature ``T`` of the vocabulary KL (``T²·KL_T``).
        vocabulary_weight: weight of the word-prediction term; 0 turns it off (the seed's last
            fine-tuning step, GKD ``--logitsdistil_wo_inter``).
        vocabulary_loss: ``"kl"`` or ``"mse"`` (raw logits; GKD ``--logitsdistil_mse``).
        positions: positions the term covers: ``"tokens"`` (non-padding; GKD ``--logitsdistil_mask_pad``),
            ``"all"`` (padding included; the reference's default) or ``"targets"`` (MLM target
            positions only, pre-training; GKD ``--logitsdistil_mask_a``).
        top_n: keep only the teacher's top ``n`` vocabulary columns (a count, or a fraction of the
            vocabulary in ``(0, 1)``); GKD ``--logitsdistil_top_n``. Experimental.
        top_n_mode: ``"restrict"`` (compare the top-n columns, plus a hinge on the others) or
            ``"teacher_min"`` (lower the teacher's other logits to its minimum; GKD ``--logitsdistil_teacher_min``).
        reduction: of the word-prediction term: ``"masked_mean"`` (divide by the covered positions)
            or ``"gkd"`` (by all positions).
        vocab_head: fine-tuning only: how a classifier yields vocabulary logits: ``"mlm"`` (default;
            the family's masked-LM head, or a decoder LM's ``lm_head``, from a checkpoint) or
            ``"tied"`` (``H·Eᵀ``, GLM's head; refused for factorised embeddings).
        student_mlm_head: where the student's head comes from (a directory, name, or a built
            ``…ForMaskedLM`` / ``…ForCausalLM`` model of the student's family); default: the student's
            own checkpoint, or the first teacher's head when the student copies teacher layers.
        teacher_mlm_heads: one head source per teacher; default: each teacher's own checkpoint.
        prediction: the prediction-level terms on the model's own logits (task logits when
            fine-tuning): ``soft_weight`` (GKD ``--distill_ft_soft``/``--distill_pt_soft``),
            ``hard_weight`` (GKD's GLMD uses none), ``temperature``, ``soft_loss``, ``t2_scale``,
            ``soft_positions``, ``reduction``; ``None`` (default): none. Its temperature is its own
            (the GKD presets repeat the vocabulary term's).
        **kwargs: teacher/student/optimizer arguments of :class:`DistillationModule`.
    """

    #: The prediction loss, hard loss, strategy and metrics read its logits, and so does the
    #: word-prediction term, whose rows :meth:`student_logit_rows` adds (pre-training).
    prediction_only_logits = True

    @property
    def reads_teacher_weights(self) -> bool:
        """In fine-tuning the teacher's vocabulary head reads its word embeddings at every step."""
        return getattr(self, "vocab_head", None) is not None

    def __init__(
        self,
        *,
        temperature: float = 15.0,
        vocabulary_weight: float = 1.0,
        vocabulary_loss: VocabularyLoss = "kl",
        positions: Positions = "tokens",
        top_n: float | None = None,
        top_n_mode: TopNMode = "restrict",
        reduction: Reduction = "masked_mean",
        vocab_head: VocabHead | None = None,
        student_mlm_head: ModelSource | None = None,
        teacher_mlm_heads: list[ModelSource] | None = None,
        prediction: PredictionLoss | None = None,
        **kwargs,
    ) -> None:
        super().__init__(prediction=prediction, **kwargs)
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}.")
        if vocabulary_weight < 0:
            raise ValueError(f"vocabulary_weight must be >= 0 (0 turns the word-prediction term off), got {vocabulary_weight}.")
        if vocabulary_weight == 0 and (prediction is None or prediction.soft_weight == prediction.hard_weight == 0):
            raise ValueError("Every term is off: set vocabulary_weight > 0, or give a `prediction` with soft_weight/hard_weight > 0.")
        self.temperature, self.vocabulary_weight, self.vocabulary_loss = temperature, vocabulary_weight, vocabulary_loss
        self.positions, self.top_n, self.top_n_mode, self.reduction = positions, top_n, top_n_mode, reduction
        pretraining = self.task_stage.token_level  # the model's own logits are vocabulary logits
        heads_given = vocab_head is not None or student_mlm_head is not None or teacher_mlm_heads is not None
        if vocabulary_weight == 0:
            changed = [name for name, value, default in (
                ("vocabulary_loss", vocabulary_loss, "kl"), ("positions", positions, "tokens"), ("top_n", top_n, None),
                ("top_n_mode", top_n_mode, "restrict")) if value != default] + (["vocab_head"] if heads_given else [])
            if changed:
                raise ValueError(f"{', '.join(changed)} only shape the word-prediction term, which vocabulary_weight=0 turns off; remove them.")
        if top_n is None and top_n_mode != "restrict":
            raise ValueError("top_n_mode only applies with top_n; set top_n (e.g. 20) or remove top_n_mode.")
        if top_n is not None:
            top_n_count(top_n, self.teachers[0].config.vocab_size)  # fail now, not in the first step
        if positions == "targets" and not pretraining:
            raise ValueError("positions='targets' needs token-level (MLM) targets; a classification batch has none. Use 'tokens'.")
        if pretraining and heads_given:
            raise ValueError(
                "vocab_head/student_mlm_head/teacher_mlm_heads choose a fine-tuning classifier's LM head; in pre-training "
                "the masked-LM logits are the vocabulary logits. Remove them."
            )
        self.vocab_head = (vocab_head or "mlm") if not pretraining and vocabulary_weight > 0 else None
        self.word_prediction = self._word_prediction_as_soft_term()
        self.student_vocab_head: VocabularyHead | None = None
        self.teacher_vocab_heads = nn.ModuleList()
        if self.vocab_head is not None:
            self._build_vocab_heads(kwargs, student_mlm_head, teacher_mlm_heads)

    def _word_prediction_as_soft_term(self) -> PredictionLoss | None:
        """The word-prediction term as a soft prediction loss, where it is one: ``T²·KL`` on the models'
        own token logits over all their columns (pre-training, ``kl``, no ``top_n``, this class's columns).
        Then it reads logits only through the prediction loss, and a causal or masked LM computes it from
        the rows entering its vocabulary projection (fused heads: no ``(rows, V)`` logits). ``mse`` and
        ``top_n`` read whole logit rows, and keep them."""
        expressible = (self.task_stage.token_level and self.vocabulary_weight > 0 and self.vocabulary_loss == "kl"
                       and self.top_n is None and type(self).compared_columns is LogitsDistil.compared_columns)
        if not expressible:
            return None
        positions = {"tokens": "all_tokens", "targets": "masked_tokens", "all": "all_positions"}[self.positions]
        return PredictionLoss(soft_weight=self.vocabulary_weight, hard_weight=0.0, temperature=self.temperature, soft_loss="kl",
                              soft_positions=positions, reduction=self.reduction)

    @property
    def fused_heads_ready(self) -> bool:
        """Its terms read token logits only through prediction losses when the word-prediction term is one."""
        return getattr(self, "word_prediction", None) is not None or self.vocabulary_weight == 0

    def prediction_losses(self) -> list[PredictionLoss]:
        return super().prediction_losses() + ([self.word_prediction] if self.word_prediction is not None else [])

    # ------------------------------------------------------------------ fine-tuning LM heads
    def _build_vocab_heads(self, kwargs: dict, student_source: ModelSource | None, teacher_sources: list[ModelSource] | None) -> None:
        """The LM heads beside the task heads; every family/option that cannot be computed is refused here."""
        if self.vocab_head == "tied":
            if student_source is not None or teacher_sources is not None:
                raise ValueError("student_mlm_head/teacher_mlm_heads only apply with vocab_head='mlm'.")
            for index, teacher in enumerate(self.teachers):
                check_tied_head(teacher, f"teacher {index}")
            check_tied_head(self.student, "student")
            self.student_vocab_head = VocabularyHead()
            self.teacher_vocab_heads = nn.ModuleList(VocabularyHead() for _ in self.teachers)
            return
        own = list(kwargs.get("teachers") or [kwargs.get("teacher")])
        teacher_sources = teacher_sources if teacher_sources is not None else own
        if len(teacher_sources) != len(self.teachers):
            raise ValueError(f"teacher_mlm_heads lists {len(teacher_sources)} sources for {len(self.teachers)} teachers; give one per teacher.")
        heads = [
            load_vocab_head(source, f"teacher {index}", target=self.teachers[index]) for index, source in enumerate(teacher_sources)
        ]
        vocab = self.teachers[0].config.vocab_size
        for index, head in enumerate(heads):
            if head.rows not in (None, vocab):
                raise ValueError(f"The teacher {index} head has {head.rows} vocabulary rows for a {vocab}-token vocabulary; give the teacher's own head.")
            head.requires_grad_(False).eval()
        self.teacher_vocab_heads = nn.ModuleList(heads)
        if student_source is None:
            student = kwargs.get("student")
            student_source = student if student is not None else teacher_sources[0]
        head = load_vocab_head(student_source, "student", target=self.student).requires_grad_(True)
        # The teacher's rows, or the student's own (VocabDistil gathers the former down to the latter).
        if head.rows not in (None, vocab, self.student.config.vocab_size):
            raise ValueError(f"The student head has {head.rows} vocabulary rows; the student has {self.student.config.vocab_size}.")
        self.student_vocab_head = head

    # ------------------------------------------------------------------ method hooks
    def uses_student_loss(self) -> bool:
        # The word-prediction term reads logits only: without a hard term, skip the HF model's own
        # loss (for an MLM head a softmax over every position's 30k-wide row that nothing would read).
        return self.prediction is not None and self.prediction.hard_weight > 0

    def student_request(self) -> FeatureRequest:
        return FeatureRequest(hidden_states=self.vocab_head is not None)

    def word_prediction_rows(self) -> LogitRows:
        """The MLM-logit rows the word-prediction term reads: those of ``positions`` (none when it is off)."""
        if self.vocabulary_weight == 0:
            return "none"
        return {"tokens": "tokens", "targets": "labelled", "all": "all"}[self.positions]  # type: ignore[return-value]

    def student_logit_rows(self) -> LogitRows:
        return widest(super().student_logit_rows(), self.word_prediction_rows())

    def teacher_logit_rows(self, teacher_index: int) -> LogitRows:
        return widest(super().teacher_logit_rows(teacher_index), self.word_prediction_rows())

    def teacher_request(self, teacher_index: int) -> FeatureRequest:
        return FeatureRequest(hidden_states=self.vocab_head is not None)

    def student_vocabulary_logits(self, student: Features) -> Tensor:
        """The student's ``(B, N, V)`` word-prediction logits: its MLM logits, or its LM head's."""
        if self.vocab_head is None:
            return student.logits
        return self.student_vocab_head(student.hidden_states[-1], self.student.get_input_embeddings().weight)

    def teacher_vocabulary_logits(self, teacher: Features, teacher_index: int) -> Tensor:
        """Teacher ``teacher_index``'s ``(B, N, V)`` word-prediction logits (no graph, float32)."""
        if self.vocab_head is None:
            return teacher.logits
        with torch.no_grad():
            embeddings = self.teachers[teacher_index].get_input_embeddings().weight.float()
            return self.teacher_vocab_heads[teacher_index](teacher.hidden_states[-1].float(), embeddings)

    def compared_columns(self, student_logits: Tensor, teacher_logits: Tensor) -> tuple[Tensor, Tensor]:
        """The vocabulary columns the loss compares (all of them; VocabDistil restricts them)."""
        return student_logits, teacher_logits

    def position_mask(self, batch: dict[str, Tensor]) -> Tensor | None:
        """Rows of the word-prediction term: per ``positions``."""
        if self.positions == "tokens":
            positions = term_positions(batch)
            return padding_mask(positions) if positions is not None else None
        if self.positions == "targets":
            return target_mask(batch["labels"])
        return None

    def teacher_terms(self, batch: dict[str, Tensor], student: Features, teacher: Features, teacher_index: int) -> dict[str, Tensor]:
        """The word-prediction term (``"vocabulary"``, plus ``"vocabulary_hinge"`` with top-n
        ``restrict``) and the prediction-level soft term."""
        terms = super().teacher_terms(batch, student, teacher, teacher_index)
        if self.word_prediction is not None:  # the same value, from logits or from head rows
            terms["vocabulary"] = self.word_prediction.soft_features(student, teacher, batch)
        elif self.vocabulary_weight > 0:
            student_logits = self.student_vocabulary_logits(student)
            teacher_logits = self.teacher_vocabulary_logits(teacher, teacher_index)
            mask, positions = self.position_mask(batch), None
            if self.vocab_head is None and (student.logit_rows is not None or teacher.logit_rows is not None):
                # Compact MLM rows: the term's positions, read from each model's rows.
                rows = student.logit_rows if student.logit_rows is not None else teacher.logit_rows
                positions = mask.bool() if mask is not None else torch.ones_like(rows)
                student_logits, teacher_logits, mask = student.logits_at(positions), teacher.logits_at(positions), None
            student_logits, teacher_logits = self.compared_columns(student_logits, teacher_logits)
            values = word_prediction_loss(
                student_logits,
                teacher_logits,
                temperature=self.temperature,
                loss=self.vocabulary_loss,
                top_n=self.top_n,
                top_n_mode=self.top_n_mode,
                mask=mask,
                reduction=self.reduction,
                positions=positions,
            )
            terms["vocabulary"] = self.vocabulary_weight * values["vocabulary"]
            if "hinge" in values:
                terms["vocabulary_hinge"] = self.vocabulary_weight * values["hinge"]
        return terms
