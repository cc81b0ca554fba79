"""The hooks a distillation method overrides, with the defaults every method starts from.

:class:`~lightning_kd.core.module.DistillationModule` inherits them; a method overrides only what it
adds:

* :meth:`~MethodHooks.student_request` / :meth:`~MethodHooks.teacher_request` — which tensors it
  needs from each forward (hidden states, Q/K/V, attention scores);
* :meth:`~MethodHooks.teacher_terms` — its loss terms for one teacher (the soft prediction term and
  the :attr:`intermediate` module's terms by default), as typed
  :class:`~lightning_kd.core.terms.LossTerms` (a role and, for per-example strategies, per-example
  values: :attr:`~MethodHooks.per_example_terms`);
* :meth:`~MethodHooks.student_terms` — terms that need no teacher (the hard loss by default);
* the token-logit rows its terms read (:attr:`~MethodHooks.prediction_only_logits`,
  :meth:`~MethodHooks.student_logit_rows`), so compact heads compute only those rows.

The hooks read attributes the module's constructor sets: ``prediction``, ``multi_teacher``,
``intermediate`` and ``task_stage``.
"""

from __future__ import annotations

import dataclasses

from torch import Tensor

from lightning_kd.core.compact_head import compact_heads_default
from lightning_kd.core.fused_head import model_loss
from lightning_kd.core.multi_teacher import Average
from lightning_kd.core.features import FeatureRequest, Features
from lightning_kd.core.logit_rows import LogitRows, widest
from lightning_kd.core.terms import LossTerms
from lightning_kd.cross_tokenizer.aligned_features import aligned_to_student
from lightning_kd.cross_tokenizer.next_token import cross_vocabulary_soft
from lightning_kd.losses.cross_vocabulary import VocabularyMatch
from lightning_kd.losses.prediction import PredictionLoss


class MethodHooks:
    """What a method declares and overrides (mixed into ``DistillationModule``)."""

    #: Methods whose every term compares with a teacher set this so a teacher-less run fails early.
    requires_teacher: bool = True
    #: Methods that use teacher modules or weights inside their step (not only through
    #: ``run_teacher``) set this: their teachers then always sit whole on the student's device.
    reads_teacher_weights: bool = False
    #: Set by methods whose token (MLM) logits are read only by their :class:`PredictionLoss` terms
    #: (:meth:`prediction_losses`), the hard loss, the multi-teacher strategy and the metrics: each model
    #: then computes only the logit rows those read (:meth:`student_logit_rows`). ``False`` (default):
    #: the method's own terms may read any row, so every row is computed.
    prediction_only_logits: bool = False
    #: Set by methods whose terms read token logits and the student's own loss only through the
    #: prediction loss (``prediction.soft_features``) and the default :meth:`student_terms`: their
    #: token-level steps may then keep the rows entering the vocabulary projections instead of logits
    #: (:meth:`fused_heads`). A property where a knob decides (LogitsDistil).
    fused_heads_ready: bool = False
    #: Set by methods whose every teacher term compares one vector per example of each model, each computed
    #: from that model's own tokens and mask (task logits, pooled hidden states or relations, read through
    #: ``teacher.attention_mask`` for the teacher): a teacher that reads another tokenizer then works
    #: (``teacher_tokenizer``). A property where a knob decides (PKD's ``positions``).
    per_example_teacher_terms: bool = False
    #: Set by methods whose own :meth:`teacher_terms` compare hidden states position by position (or relations
    #: between positions) and read the teacher through :meth:`aligned_teacher`: a teacher of another tokenizer is
    #: then seen at the student's token positions, and only student tokens with a teacher partner enter those
    #: terms. Attention and Q/K/V requests stay refused (:meth:`cross_tokenizer_refusal`). A property where a knob decides.
    aligns_own_hidden_states: bool = False

    @property
    def compact_heads(self) -> bool:
        """Compact heads: each model projects only the token-logit rows a step reads
        (:mod:`lightning_kd.core.compact_head`). ``method.compact_heads = False`` computes every row
        through each model's own forward, as HF does (same values; for parity checks and debugging);
        unset, ``LIGHTNING_KD_COMPACT_HEADS`` decides (``0`` off, ``1`` or unset on)."""
        explicit = self.__dict__.get("_compact_heads")
        return compact_heads_default() if explicit is None else explicit

    @compact_heads.setter
    def compact_heads(self, value: bool) -> None:
        self.__dict__["_compact_heads"] = bool(value)

    # ------------------------------------------------------------------ requests
    def student_request(self) -> FeatureRequest:
        """Tensors the method needs from the student's forward (logits are always captured; their rows
        come from :meth:`student_logit_rows`)."""
        return self.intermediate.student_request() if self.intermediate is not None else FeatureRequest()

    def teacher_request(self, teacher_index: int) -> FeatureRequest:
        """Tensors the method needs from teacher ``teacher_index``'s forward (logit rows: :meth:`teacher_logit_rows`)."""
        return self.intermediate.teacher_request(teacher_index) if self.intermediate is not None else FeatureRequest()

    def prediction_losses(self) -> list[PredictionLoss]:
        """The :class:`PredictionLoss` terms of a step (their soft positions name the logit rows read)."""
        return [self.prediction] if self.prediction is not None else []

    def student_logit_rows(self) -> LogitRows:
        """The student's token-logit rows a training step reads: ``"all"`` unless
        :attr:`prediction_only_logits`; then the soft terms' positions, the labelled rows when the
        student's own loss is read, and what the multi-teacher strategy reads."""
        if not self.prediction_only_logits:
            return "all"
        kinds = [loss.logit_rows() for loss in self.prediction_losses()]
        if self.uses_student_loss() or self.multi_teacher.needs_student_loss:
            kinds.append("labelled")
        return widest(*kinds, self.multi_teacher.student_logit_rows())

    def teacher_logit_rows(self, teacher_index: int) -> LogitRows:
        """Teacher ``teacher_index``'s token-logit rows a training step reads (as :meth:`student_logit_rows`);
        every row for a teacher of another tokenizer, whose positions are not the student's."""
        if self.reads_own_vocabulary(teacher_index) or not self.prediction_only_logits:
            return "all"
        return widest(*(loss.logit_rows() for loss in self.prediction_losses()), self.multi_teacher.teacher_logit_rows())

    def student_features_request(self) -> FeatureRequest:
        """What the student's training forward captures: :meth:`student_request` with its logit rows
        (every row for sequence-level heads or with :attr:`compact_heads` off; token-level stages —
        MLM and causal LM — compute only the rows a step reads), as head rows with :meth:`fused_heads`."""
        rows = self.student_logit_rows() if self.compact_heads and self.task_stage.token_level else "all"
        return dataclasses.replace(self.student_request(), logit_rows=rows, head_rows=self.fused_heads())

    def teacher_features_request(self, teacher_index: int) -> FeatureRequest:
        """What teacher ``teacher_index``'s forward captures (and a teacher cache stores): its request with its logit rows."""
        rows = self.teacher_logit_rows(teacher_index) if self.compact_heads and self.task_stage.token_level else "all"
        return dataclasses.replace(self.teacher_request(teacher_index), logit_rows=rows, head_rows=self.fused_heads())

    def fused_heads(self) -> bool:
        """Whether the training step keeps the rows entering the models' vocabulary projections instead of their logits
        (:mod:`lightning_kd.core.fused_head`): the soft and next-token terms then project them a chunk at
        a time, so no ``(rows, vocabulary)`` tensor exists.

        It holds when nothing but the prediction loss reads the token logits: compact heads on, a
        token-level stage, :attr:`prediction_only_logits` and :attr:`fused_heads_ready`, a divergence soft term (not ``mse``), a
        multi-teacher strategy that reads no logits, the student's loss or per-example terms, no teacher
        cache unless it keeps a tail (:meth:`cache_tail_temperature`), no random inputs, and every model's head whole on the student's device (not partitioned
        by ZeRO-3, no teacher placed elsewhere). Otherwise logits are computed as before (same values).
        """
        from lightning_kd.core.placement import deepspeed_stage

        if not (self.compact_heads and self.task_stage.token_level and self.prediction_only_logits and self.fused_heads_ready):
            return False
        if self.teacher_tokenizers:  # another vocabulary: its logits are read at aligned positions, not projected with ours
            return False
        if self.prediction is not None and self.prediction.soft_loss == "mse":
            return False
        strategy = self.multi_teacher
        if strategy.needs_student_loss or strategy.per_sample or "none" != widest(strategy.student_logit_rows(), strategy.teacher_logit_rows()):
            return False
        if self.random_inputs is not None or (self.teacher_cache is not None and self.cache_tail_temperature() is None):
            return False  # a top-k cache with a tail serves the fused terms; other cached logits are whole rows
        context = self._teacher_context()
        if deepspeed_stage(context["trainer"]) == 3:
            return False
        return all(self.teacher_pool.placement(index, **context) == "student" for index in range(len(self.teachers)))

    def cache_tail_temperature(self) -> float | None:
        """The temperature at which a top-k teacher cache stores the teacher's top log-probabilities and the
        rest of its mass as one tail bucket (:mod:`lightning_kd.losses.topk_teacher`), or ``None``: the
        cache stores raw top-k logits, read back renormalised.

        A tail is kept where the stage asks for it (:attr:`~lightning_kd.stages.base.Stage.cache_tail`:
        the causal-LM stage) and nothing but one prediction loss's divergence reads the teacher's token
        logits (:attr:`fused_heads_ready`, no ``mse``, a multi-teacher strategy that reads no teacher logits).
        """
        if not (self.task_stage.cache_tail and self.prediction_only_logits and self.fused_heads_ready) or self.teacher_tokenizers:
            return None
        losses = self.prediction_losses()
        if len(losses) != 1 or losses[0].soft_loss == "mse" or self.multi_teacher.teacher_logit_rows() != "none":
            return None
        return float(losses[0].temperature)

    # ------------------------------------------------------------------ terms
    def uses_student_loss(self) -> bool:
        """Whether a training step reads the student's own task/MLM loss (``Features.loss``).

        The student then runs with labels and its loss is computed (for an MLM head a softmax over
        every labelled row). By default: when the prediction loss has a hard term, which is what
        :meth:`student_terms` reads; a method that reads the loss elsewhere says so (MixBaseline).
        """
        return self.prediction is not None and self.prediction.hard_weight > 0

    @property
    def per_example_terms(self) -> bool:
        """Whether :meth:`teacher_terms` should give per-example values, shape ``(B,)``: set when the
        multi-teacher strategy weights examples (``per_sample``). The soft prediction term must then
        be per example; any other term may be (it is then weighted per example too) or stay a scalar
        when it cannot be computed per example (it is then combined unweighted)."""
        return self.multi_teacher.per_sample

    def student_inputs(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """The batch as the student reads it (default: unchanged).

        Every student forward of the library reads it: a training pass's, evaluation's and
        prediction's. A method whose student reads other ids than its teachers maps them here
        (VocabDistil: token ids and MLM labels to the rows of its compressed vocabulary); the terms
        still see the original batch, whose positions are the same.
        """
        return batch

    def teacher_inputs(self, batch: dict[str, Tensor], teacher_index: int) -> dict[str, Tensor]:
        """The batch as teacher ``teacher_index`` reads it: its own tokenizer's encoding of the same text
        for a teacher of another tokenizer (``teacher_tokenizer``; the data module writes it under the
        teacher's prefix), else the batch unchanged. Every teacher forward reads it, live or through the
        teacher cache (:meth:`~lightning_kd.core.module.DistillationModule.teacher_forward`, ``run_teacher``)."""
        return self.teacher_tokenizers.inputs(batch, teacher_index)

    def reads_other_tokenizer(self, teacher_index: int) -> bool:
        """Whether teacher ``teacher_index`` reads its own tokenizer's encoding (``teacher_tokenizer``), whose
        positions are not the student's."""
        return self.teacher_tokenizers.prefix_of(teacher_index) is not None

    def aligned_teacher(
        self, batch: dict[str, Tensor], teacher: Features, teacher_index: int
    ) -> tuple[dict[str, Tensor], Features]:
        """``(terms_batch, teacher)`` for terms that compare hidden states at the student's token positions.

        For a teacher of another tokenizer: its hidden states rewritten to the student's positions (per student
        token, the mean of the teacher vectors sharing a character with it) and ``term_positions`` restricted to
        student tokens with such a partner; the aligned teacher's ``attention_mask`` marks those tokens
        (:func:`~lightning_kd.cross_tokenizer.aligned_features.aligned_to_student`). For a teacher that reads the
        student's ids: ``batch`` and ``teacher`` themselves, so same-tokenizer terms are unchanged. Methods that
        read it set :attr:`aligns_own_hidden_states`.

        Raises:
            KeyError: a batch without both encodings' character offsets.
            ValueError: a batch of text pairs.
        """
        if not self.reads_other_tokenizer(teacher_index):
            return batch, teacher
        return aligned_to_student(batch, self.teacher_inputs(batch, teacher_index), teacher)

    def reads_own_vocabulary(self, teacher_index: int) -> bool:
        """Whether teacher ``teacher_index`` predicts tokens of its own vocabulary at its own positions: a teacher
        of another tokenizer in a token-level stage (its soft term is :mod:`lightning_kd.cross_tokenizer.next_token`'s)."""
        return self.task_stage.token_level and self.teacher_tokenizers.prefix_of(teacher_index) is not None

    def vocabulary_match(self, teacher_index: int) -> VocabularyMatch | None:
        """The tokens that spell the same text in the student's and teacher ``teacher_index``'s vocabularies, built
        once from the two tokenizers; ``None`` where the soft term needs none (``cross_vocabulary: uld``)."""
        if self.prediction is None or self.prediction.cross_vocabulary == "uld":
            return None
        matches = self.__dict__.setdefault("_vocabulary_matches", {})  # not a submodule, not in checkpoints
        if teacher_index not in matches:
            from lightning_kd.data.sources import load_tokenizer  # the data table is read only here

            student, teacher = load_tokenizer(self.tokenizer_source), load_tokenizer(self.teacher_tokenizers.tokenizer_of(teacher_index))
            matches[teacher_index] = VocabularyMatch.between(student, teacher)
        return matches[teacher_index]

    def cross_tokenizer_refusal(self) -> str | None:
        """Why this method cannot learn from a teacher that reads another tokenizer, or ``None`` when it can.

        Two tokenizations of one text have different positions. What still compares: one vector per example
        (task logits, what :attr:`per_example_teacher_terms` methods pool from each model's own tokens); hidden
        states aligned to the student's tokens by character spans (:mod:`lightning_kd.cross_tokenizer.aligned_features`),
        which the default step's intermediate terms read and a method's own ``teacher_terms`` read through
        :meth:`aligned_teacher` when it sets :attr:`aligns_own_hidden_states`; and, in the causal-LM stage,
        next-token distributions where both encodings have read the same text (the prediction term).
        Refused: the MLM stage, attention or Q/K/V terms, hidden-state terms of a method's own ``teacher_terms``
        that does not align them, teacher weights inside the student's step, random token ids, and in the
        causal-LM stage a method's own terms, multi-teacher strategies that read token logits, the teacher cache
        and generated batches. A method refusing one of its own settings overrides this and adds its reason.
        """
        if self.task_stage.token_level and not self.task_stage.aligns_across_tokenizers:
            return f"the {self.task_stage.name} stage compares the two models' predictions token by token"
        if self.reads_teacher_weights:
            return "it runs the teacher's layers or weights on the student's tokens"
        if self.random_inputs is not None:
            return "random_inputs draws token ids from one vocabulary for both models"
        own_terms = type(self).teacher_terms is not MethodHooks.teacher_terms
        if not self.per_example_teacher_terms:
            requests = [self.teacher_request(index) for index in range(len(self.teachers))]
            if any(request.hooked_layers for request in requests):
                return ("its terms compare the teacher's and the student's attention or Q/K/V position by position, which "
                        "has no counterpart across tokenizations (hidden-state terms are aligned by character spans)")
            # The default step's intermediate terms read the teacher aligned to our tokens (aligned_to_student), and
            # so do own terms that declare it (aligned_teacher); other own terms would read the teacher's positions as ours.
            own_unaligned = (own_terms or self.intermediate is None) and not self.aligns_own_hidden_states
            if any(request.hidden_states for request in requests) and own_unaligned:
                return "its terms compare the teacher's and the student's hidden states position by position"
        if self.task_stage.token_level:  # next-token positions align through the prediction term
            if own_terms and self.aligns_own_hidden_states:
                return ("its own aligned hidden-state terms run across tokenizers in sequence-level fine-tuning only; in "
                        f"the {self.task_stage.name} stage only the prediction term and the default step's hidden-state "
                        "terms align positions")
            if own_terms:
                return ("its own terms read the teacher's token positions as the student's; across vocabularies only the "
                        "prediction term aligns positions")
            if self.multi_teacher.teacher_logit_rows() != "none":
                return f"the {type(self.multi_teacher).__name__} strategy reads the teachers' token logits at the student's positions"
            if self.teacher_cache is not None:
                return "the teacher cache stores rows at the student's positions; run the teacher live"
            if self.generated_batches is not None:
                return "student- or teacher-written batches carry one encoding only"
        return None

    def student_terms(self, batch: dict[str, Tensor], student: Features) -> LossTerms:
        """Terms that need no teacher; default: the weighted hard (task or MLM) loss (role ``HARD``).

        A plain dict returned by an override is typed by the step: every term is ``HARD`` unless
        named ``"soft"`` (:func:`~lightning_kd.core.terms.default_role`).
        """
        terms = LossTerms()
        loss = model_loss(student)  # from the head rows when fused (unless the soft term computed it already)
        if self.prediction is not None and self.prediction.hard_weight > 0 and loss is not None:
            terms.hard("hard", self.prediction.hard_weight * loss)
        return terms

    def teacher_terms(self, batch: dict[str, Tensor], student: Features, teacher: Features, teacher_index: int) -> LossTerms:
        """Weighted terms comparing the student with one teacher: the soft prediction term (role
        ``SOFT``, per example when :attr:`per_example_terms`) and the :attr:`intermediate` module's
        terms (role ``INTERMEDIATE``).

        An override adds its terms with their role (``terms.intermediate("alp", value)``); a plain
        dict it returns, or ``terms[name] = value``, is typed by name: ``"soft"`` / ``"hard"`` keep
        those roles, any other name is ``INTERMEDIATE`` (:func:`~lightning_kd.core.terms.default_role`).
        """
        terms = LossTerms()
        # A teacher of another tokenizer: its own encoding, whose offsets align its positions with ours.
        own = self.teacher_inputs(batch, teacher_index) if self.teacher_tokenizers.prefix_of(teacher_index) is not None else None
        if self.prediction is not None and self.prediction.soft_weight > 0 and own is not None and self.task_stage.token_level:
            # A causal-LM teacher of another vocabulary: next-token distributions compared where both read the same text.
            terms.soft("soft", cross_vocabulary_soft(self.prediction, student, teacher, batch, own,
                                                     self.vocabulary_match(teacher_index), per_sample=self.per_example_terms))
        elif self.prediction is not None and self.prediction.soft_weight > 0:
            # One teacher passed through unchanged: the next-token loss can share the soft term's projection.
            alone = len(self.teachers) == 1 and type(self.multi_teacher) is Average
            terms.soft("soft", self.prediction.soft_features(student, teacher, batch, per_sample=self.per_example_terms,
                                                             with_hard=alone and self.uses_student_loss()))
        if self.intermediate is not None:
            if own is not None:  # its hidden states at our token positions
                batch, teacher = aligned_to_student(batch, own, teacher)
            for name, value in self.intermediate(batch, student, teacher, teacher_index).items():
                terms.intermediate(name, value)
        return terms
