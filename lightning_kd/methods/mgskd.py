"""MGSKD — Liu, Tao, Feng and Zhao (2022), "Multi-Granularity Structural Knowledge Distillation for
Language Model Compression", ACL.

The student matches the teacher's *structure* at three granularities, each computed inside one
model (so widths may differ; each must be divisible by ``relation_heads``):

* ``token``: per-head scaled dot-product relations between tokens (MSE over real pairs) plus the
  angles at the teacher's ``k1`` most attended tokens between their ``k2`` strongest neighbours
  (smooth-L1);
* ``span``: the same loss on span vectors — the sequence is cut into random consecutive spans
  (the reference's stand-in for phrases) and each span is mean-pooled;
* ``sample``: per-head angles between every triplet of pooled sequences of the batch (mean over
  real tokens by default, as in the paper; ``sample_pooling``, :mod:`lightning_kd.core.pooling`).

Student hidden state ``i = 0…L_S`` (0 = embeddings) is paired with teacher hidden state ``g(i)``
(uniform map; ``g(i) = i·L_T/L_S`` when divisible). Pairs with ``i < sample_level_from`` get the
token and span losses, the others the sample loss; each level's losses are summed over its pairs.
The loss math lives in :mod:`lightning_kd.losses.structure`.

The seed's recipe: TinyBERT general distillation, then MGSKD's structural terms alone, then
prediction-level KL alone (``terms: [prediction]``, the reference's ``--mgskd_wo_inter``).

Randomness: spans are drawn once per teacher per step from torch's global CPU generator, which
``seed_everything`` (the CLI's ``seed_everything`` key) seeds, so runs are reproducible under a
seed. Anchors and neighbours are a deterministic top-k on the teacher's relations.

Where we differ from the GKD reference, and why:

* **Layer map for non-divisible depths.** The reference pairs student ``i`` with teacher ``i·⌊L_T/L_S⌋``,
  which silently skips the teacher's last layers when ``L_T`` is not a multiple of ``L_S``; we use
  the library's uniform boundaries (identical when divisible, ending at the teacher's last layer
  otherwise) or the explicit ``layer_map``.
* **Span pooling.** By default a span averages its real tokens only, so padding never changes the
  loss; ``span_pooling="all_tokens"`` averages every position as the reference does.
* **Crash cases.** Spans are lengthened on the last ``d`` spans only (the reference adds to all of
  them when ``d = 0`` and crashes); a sequence too short for any span gives a zero span term; an
  all-padding row is left out of the sample-level triplets (the reference divides by zero); ``k1``
  and ``k2`` are capped at the sequence length.
* **Phrases.** The paper uses chunker phrases; like the reference we draw random spans, and there
  is no input for user-supplied phrase boundaries yet.

Across tokenizers (``teacher_tokenizer``), every level runs:

* ``token`` and ``span`` read the teacher aligned to the student's tokens by character spans
  (:meth:`~lightning_kd.core.method_hooks.MethodHooks.aligned_teacher`: per student token, the mean of the
  teacher vectors sharing a character with it). Relations are between the *student's* tokens — the student's
  from its own vectors, the teacher's from its aligned vectors — over the real student tokens that have a
  teacher partner (``[CLS]``, ``[SEP]`` and whitespace-only tokens leave the pairs, the anchors and the spans).
  Two student tokens inside one teacher token get the same teacher vector, so the teacher relates them as
  one unit: their teacher relation is that vector's with itself, and an angle between them is 0 on the
  teacher's side (as a zero difference gives). Spans are the student's, averaged over their partnered
  tokens; ``span_pooling: all_tokens`` (padding and special positions included, where the teacher has no
  vector) is refused.
* ``sample`` pools each model over its **own** tokens: the student with its batch's mask, the teacher its own
  hidden states with its own encoding's mask. Pooling is per example, so nothing needs aligning, and the
  one-token modes (``auto``, ``first``, ``last``) read each model's own [CLS] / last token — an aligned teacher
  has no vector at the student's [CLS]. A row takes part when both models have a real token in it.

A teacher that reads the student's ids is used as is: nothing above changes for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from lightning_kd.core.features import FeatureRequest, Features
from lightning_kd.core.layer_map import LayerMap, resolve_layer_map
from lightning_kd.core.module import DistillationModule
from lightning_kd.core.pooling import Pooling, check_pooling, pool, resolve_pair
from lightning_kd.losses.masking import zero_like_loss
from lightning_kd.losses.prediction import PredictionLoss
from lightning_kd.losses.structure import pooled_sample_structure_loss, random_span_lengths, span_pool, token_structure_loss
from lightning_kd.stages.positions import term_positions

Term = Literal["sample", "token", "span", "prediction"]
SpanPooling = Literal["valid_tokens", "all_tokens"]
LEVELS = ("sample", "token", "span")

#: The seed's values (``configs/gkd/mgskd/2_finetune.yaml``); used to spot knobs set for an absent term.
DEFAULTS = {
    "sample_weight": 4.0,
    "token_weight": 1.0,
    "span_weight": 1.0,
    "sample_level_from": 3,
    "triplet_anchors": 20,
    "triplet_neighbours": 20,
    "relation_heads": 64,
    "span_rate": 0.4,
    "span_pooling": "valid_tokens",
    "sample_pooling": "mean",
    "layer_map": "uniform",
}


@dataclass
class MGSKDPrediction(PredictionLoss):
    """MGSKD's prediction-level term with its defaults: the soft KL at ``T = 1`` only (``hard_weight``
    0); every other field is :class:`~lightning_kd.losses.prediction.PredictionLoss`'s. The type of
    ``MGSKD.prediction``, so a YAML ``prediction:`` block that sets some keys keeps these defaults for
    the others."""

    hard_weight: float = 0.0


class MGSKD(DistillationModule):
    """Multi-granularity structural distillation: token, span and sample relations (both stages).

    Args:
        terms: which losses to use: ``"sample"``, ``"token"``, ``"span"`` (the structural terms)
            and ``"prediction"`` (the soft/hard prediction loss). The seed's step 2 uses the three
            structural terms; its step 3 (``--mgskd_wo_inter``) is ``[prediction]``.
        sample_weight: weight of the sample-level loss (GKD ``--mgskd_weight_sample``).
        token_weight: weight of the token-level loss (``--mgskd_weight_token``).
        span_weight: weight of the span-level loss (``--mgskd_weight_span``).
        sample_level_from: first layer-pair index (0 = embeddings) that uses the sample-level loss;
            lower pairs use the token and span losses (``--mgskd_sample_level_m``).
        triplet_anchors: ``k1``, anchor tokens per sequence (``--mgskd_triplet_k1``); capped at the length.
        triplet_neighbours: ``k2``, neighbours per anchor (``--mgskd_triplet_k2``); capped at the length.
        relation_heads: heads ``R`` of the pair and sample relations; every hidden size must be
            divisible by it (``--mgskd_multi_heads``).
        span_rate: number of random spans per position, in ``(0, 1]`` (``--mgskd_span_max_rate``).
        span_pooling: ``"valid_tokens"`` (a span averages its real tokens) or ``"all_tokens"``
            (padding included, as the reference).
        sample_pooling: how the sample level reduces each sequence to one vector, per model:
            ``"mean"`` over real tokens (the paper and the reference), or one token: ``"auto"`` (the
            first on encoders, the last real one on causal LMs), ``"first"`` or ``"last"``. See
            :mod:`lightning_kd.core.pooling`.
        layer_map: teacher hidden states paired with student layers ``1…L_S`` (embeddings are
            always paired): ``"uniform"``, ``"first"``, ``"last"`` or a list of 1-based teacher indices.
        prediction: settings of the ``"prediction"`` term; default when ``"prediction"`` is in
            ``terms``: soft KL at T=1, no hard loss (the seed's step 3).
        **kwargs: teacher/student/optimizer arguments of :class:`DistillationModule`.
    """

    #: Its logits are read only by the prediction loss, the hard loss, the strategy and the metrics,
    #: so compact heads compute only the rows those read (DistillationModule.student_logit_rows).
    prediction_only_logits = True
    fused_heads_ready = True  # its terms read logits only through the prediction loss

    def __init__(
        self,
        *,
        terms: list[Term] = ["sample", "token", "span"],  # noqa: B006 - never mutated; shown in --help
        sample_weight: float = DEFAULTS["sample_weight"],
        token_weight: float = DEFAULTS["token_weight"],
        span_weight: float = DEFAULTS["span_weight"],
        sample_level_from: int = DEFAULTS["sample_level_from"],
        triplet_anchors: int = DEFAULTS["triplet_anchors"],
        triplet_neighbours: int = DEFAULTS["triplet_neighbours"],
        relation_heads: int = DEFAULTS["relation_heads"],
        span_rate: float = DEFAULTS["span_rate"],
        span_pooling: SpanPooling = DEFAULTS["span_pooling"],
        sample_pooling: Pooling = DEFAULTS["sample_pooling"],
        layer_map: LayerMap = DEFAULTS["layer_map"],
        prediction: MGSKDPrediction | None = None,
        **kwargs,
    ) -> None:
        chosen = list(dict.fromkeys(terms))
        unknown = [t for t in chosen if t not in (*LEVELS, "prediction")]
        if unknown or not chosen or len(chosen) != len(terms):
            raise ValueError(
                f"terms must be a non-empty list of distinct names from 'sample', 'token', 'span', 'prediction'; got {terms}."
            )
        if prediction is not None and "prediction" not in chosen:
            raise ValueError("`prediction` is set but 'prediction' is not in terms; add it to terms or drop prediction.")
        if "prediction" in chosen and prediction is None:
            prediction = MGSKDPrediction()
        super().__init__(prediction=prediction, **kwargs)
        self.levels = [t for t in LEVELS if t in chosen]
        self.weights = {"sample": sample_weight, "token": token_weight, "span": span_weight}
        self.sample_level_from = sample_level_from
        self.triplet_anchors, self.triplet_neighbours = triplet_anchors, triplet_neighbours
        self.relation_heads, self.span_rate, self.span_pooling = relation_heads, span_rate, span_pooling
        self.sample_pooling = sample_pooling
        self._check_unused(locals())
        self._validate()
        depth = self.student.config.num_hidden_layers
        #: Per teacher: the teacher hidden-state index paired with student hidden state 0…L_S.
        self.teacher_layers = (
            [[0, *resolve_layer_map(layer_map, t.config.num_hidden_layers, depth)] for t in self.teachers]
            if self.levels
            else [[] for _ in self.teachers]
        )

    # ------------------------------------------------------------------ validation
    def _check_unused(self, given: dict) -> None:
        """A knob set away from its default for a term that is not used is an error, not a no-op."""
        levels = set(self.levels)
        applies = {
            "sample_weight": "sample" in levels,
            "token_weight": "token" in levels,
            "span_weight": "span" in levels,
            "sample_level_from": bool(levels),
            "triplet_anchors": bool(levels & {"token", "span"}),
            "triplet_neighbours": bool(levels & {"token", "span"}),
            "relation_heads": bool(levels),
            "span_rate": "span" in levels,
            "span_pooling": "span" in levels,
            "sample_pooling": "sample" in levels,
            "layer_map": bool(levels),
        }
        unused = [name for name, used in applies.items() if not used and given[name] != DEFAULTS[name]]
        if unused:
            used_terms = self.levels + (["prediction"] if self.prediction is not None else [])
            raise ValueError(
                f"{', '.join(unused)} set, but no term in terms={used_terms} uses it; add the term it belongs to "
                "or drop the setting."
            )

    def _validate(self) -> None:
        depth = self.student.config.num_hidden_layers
        for name in self.levels:
            if self.weights[name] <= 0:
                raise ValueError(f"{name}_weight must be > 0; leave {name!r} out of terms to disable it.")
        if self.triplet_anchors < 1 or self.triplet_neighbours < 1:
            raise ValueError("triplet_anchors and triplet_neighbours must be >= 1.")
        if not 0 < self.span_rate <= 1:
            raise ValueError(f"span_rate must be in (0, 1] (spans per position), got {self.span_rate}.")
        if not 0 <= self.sample_level_from <= depth + 1:
            raise ValueError(
                f"sample_level_from must be in 0..{depth + 1} (layer pairs 0..{depth}), got {self.sample_level_from}."
            )
        if "sample" in self.levels and self.sample_level_from > depth:
            raise ValueError(
                f"sample_level_from={self.sample_level_from} leaves no layer pair for the sample loss (the student has "
                f"pairs 0..{depth}); lower it or remove 'sample' from terms."
            )
        if {"token", "span"} & set(self.levels) and self.sample_level_from < 1:
            raise ValueError(
                "sample_level_from=0 leaves no layer pair for the token/span losses; raise it or remove them from terms."
            )
        if "sample" in self.levels:
            check_pooling(self.sample_pooling, self.student, self.teachers)
        if self.levels:
            if self.relation_heads < 1:
                raise ValueError(f"relation_heads must be >= 1, got {self.relation_heads}.")
            models = [("student", self.student)] + [(f"teacher {i}", t) for i, t in enumerate(self.teachers)]
            for name, model in models:
                width = model.config.hidden_size
                if width % self.relation_heads:
                    raise ValueError(
                        f"The {name}'s hidden size {width} is not divisible by relation_heads={self.relation_heads}; "
                        "choose relation_heads dividing every model's hidden size."
                    )

    # ------------------------------------------------------------------ features and terms
    def student_request(self) -> FeatureRequest:
        return FeatureRequest(hidden_states=bool(self.levels))

    def teacher_request(self, teacher_index: int) -> FeatureRequest:
        return FeatureRequest(hidden_states=bool(self.levels))

    #: Its token and span levels read a teacher of another tokenizer aligned to the student's tokens (module docstring).
    aligns_own_hidden_states = True

    def cross_tokenizer_refusal(self) -> str | None:
        """As the base; also ``span_pooling: all_tokens``, which averages positions an aligned teacher has no vector at."""
        reason = super().cross_tokenizer_refusal()
        if reason is None and "span" in self.levels and self.span_pooling == "all_tokens":
            return ("span_pooling: all_tokens averages padding and special positions, where a teacher of another "
                    "tokenizer has no aligned vector; use span_pooling: valid_tokens")
        return reason

    def teacher_terms(
        self, batch: dict[str, Tensor], student: Features, teacher: Features, teacher_index: int
    ) -> dict[str, Tensor]:
        terms = super().teacher_terms(batch, student, teacher, teacher_index)
        if not self.levels:
            return terms
        # Token and span relations compare the student's token positions: a teacher of another tokenizer is
        # aligned to them (and the term positions restricted to partnered tokens); the sample level needs no alignment.
        positional = bool({"token", "span"} & set(self.levels))
        terms_batch, aligned = self.aligned_teacher(batch, teacher, teacher_index) if positional else (batch, teacher)
        hs, ht = student.hidden_states, aligned.hidden_states
        batch_size, length = hs[0].shape[:2]
        everything = torch.ones(batch_size, length, dtype=torch.bool, device=hs[0].device)
        real, tokens = batch.get("attention_mask"), term_positions(terms_batch)
        # Pooling reads the real tokens (a decoder pools its last one); token and span terms the term positions.
        real = everything if real is None else real.bool()
        mask = everything if tokens is None else tokens.bool()
        spans = random_span_lengths(length, self.span_rate) if "span" in self.levels else []
        sums = {name: zero_like_loss(hs[0]) for name in self.levels}
        if "sample" in sums:
            s_mode, t_mode = resolve_pair(self.sample_pooling, self.student, self.teachers[teacher_index], teacher_index)
            t_real = self._own_tokens(teacher, teacher_index, real)
            rows = real.any(dim=1) & t_real.any(dim=1)
        for i, t_index in enumerate(self.teacher_layers[teacher_index]):
            s_x, t_x = hs[i], ht[t_index]
            if i >= self.sample_level_from:
                if "sample" in sums:  # each model pooled over its own tokens (the teacher's own states, not aligned ones)
                    t_own = teacher.hidden_states[t_index]
                    s_vec, t_vec = pool(s_x.float(), real, s_mode), pool(t_own.float(), t_real, t_mode)
                    sums["sample"] = sums["sample"] + pooled_sample_structure_loss(s_vec, t_vec, rows, self.relation_heads)
                continue
            if "token" in sums:
                sums["token"] = sums["token"] + sum(self._token_level(s_x, t_x, mask))
            if "span" in sums and spans:
                include = self.span_pooling == "all_tokens"
                s_span, span_mask = span_pool(s_x, mask, spans, include)
                t_span, _ = span_pool(t_x, mask, spans, include)
                sums["span"] = sums["span"] + sum(self._token_level(s_span, t_span, span_mask))
        terms.update({name: self.weights[name] * value for name, value in sums.items()})
        return terms

    def _own_tokens(self, teacher: Features, teacher_index: int, real: Tensor) -> Tensor:
        """``(B, Lt)`` bool: the real tokens of the teacher's own encoding (another tokenizer's), else ``real``."""
        if not self.reads_other_tokenizer(teacher_index):
            return real
        if teacher.attention_mask is None:
            return torch.ones(teacher.hidden_states[0].shape[:2], dtype=torch.bool, device=real.device)
        return teacher.attention_mask.bool()

    def _token_level(self, s_x: Tensor, t_x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        return token_structure_loss(s_x, t_x, mask, self.relation_heads, self.triplet_anchors, self.triplet_neighbours)
