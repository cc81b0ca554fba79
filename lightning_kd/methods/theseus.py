"""Theseus — Xu et al. (2020), "BERT-of-Theseus: Compressing BERT by Progressive Module Replacing" (EMNLP).

There is no distillation loss. The teacher's layers are cut into one block per student layer
(:func:`~lightning_kd.models.theseus.teacher_blocks`, the GKD segmentation), and at every training
forward each student layer ("successor") runs in place of its teacher block ("predecessor") with
probability ``p``, the replacing rate; the rest of the stack runs the frozen teacher blocks. The
embeddings, pooler and head are always the student's. The loss is the student's task loss on the
hybrid's output, times ``hard_weight``. Gradients flow through the frozen teacher blocks into the
student layers and embeddings below them. ``p`` comes from the
:class:`~lightning_kd.callbacks.TheseusReplacingRate` callback (the paper's constant rate or linear
curriculum), which the method attaches itself; once ``p = 1`` the pure student trains ("successor
fine-tuning"). Validation, test, prediction and export use the pure student.

The teacher's own forward never runs (GKD ``--mt_disable_operation=1``). With several teachers (all
of the student's width), each replaced position takes its block from a teacher chosen uniformly at
random, each teacher's blocks following its own depth.

Where we differ from the GKD reference, and why:

* The "at least one student layer" guard works: layouts are drawn conditioned on one student
  position at least (``layout_guard="at_least_one_student"``). The reference's resampling never
  resets its list and keeps the first draw, so about ``0.7^6 ≈ 12 %`` of early 6-layer steps are
  all-teacher; ``layout_guard="reference"`` reproduces that.
* Layouts are drawn from a generator keyed on (seed, global step, batch index), so every DDP rank
  uses the same layout and a resumed run repeats the uninterrupted run's layouts.

Initialisation. The student's last layer sits under the head, so it must start from a layer whose
output the head can read. ``student_init: teacher_first`` (the GKD seed's) puts teacher layer
``L_S − 1`` there; on the fine-tuned all-MiniLM-L6-v2 teacher its [CLS] vector is the same for every
review (std 0.001 across a batch, against 0.37 after layer 5: the model was trained with mean pooling),
so the pure student answers one class. A no-teacher student from those layers escapes within an epoch,
because every step trains the routing into [CLS]; Theseus trains the last student layer only in the
steps that draw it and otherwise feeds the head the teacher's last block, and it stayed at the
majority class (61.4 % test accuracy). ``student_init: teacher_uniform`` starts each student layer
as the last layer of the block it replaces (6→3: layers 1, 3, 5), whose output the next block and the
head already read. Training warns when the first batch shows a pure student that answers alike.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

import pytorch_lightning as pl
from pytorch_lightning.utilities import rank_zero_warn

from lightning_kd.callbacks.compatibility import keyed_generator, run_seed
from lightning_kd.callbacks.defaults import unless_configured
from lightning_kd.callbacks.theseus_replacing_rate import TheseusReplacingRate
from lightning_kd.core.features import FeatureRequest, capture
from lightning_kd.core.module import DistillationModule
from lightning_kd.losses.prediction import PredictionLoss
from lightning_kd.models.theseus import Layout, LayoutGuard, check_hybrid_compatible, hybrid_layers, sample_student_positions


class Theseus(DistillationModule):
    """Progressive module replacing: student layers stand in for frozen teacher blocks at rate ``p``.

    :attr:`replacing_rate` is set before every training batch by
    :class:`~lightning_kd.callbacks.TheseusReplacingRate`: ``fit`` attaches one with the paper's linear
    curriculum (:meth:`default_callbacks`) unless the trainer's callbacks hold one (then that one
    drives the run). When calling :meth:`compute_losses` directly, set :attr:`replacing_rate` yourself.

    Args:
        hard_weight: weight of the task loss on the hybrid's output (GKD ``--distill_hard_rate``
            with ``--distill_ft_hard``; the only term).
        layout_guard: ``"at_least_one_student"`` (every training layout runs at least one student
            layer; the intended GKD behaviour) or ``"reference"`` (independent draws, an all-teacher
            layout is possible; GKD parity).
        **kwargs: teacher/student/optimizer arguments of :class:`DistillationModule`. The seed
            initialises the student from the teacher's first layers (``student_init: teacher_first``).
            ``multi_teacher``, ``forward_repeats`` and ``random_inputs`` do not apply.

    Raises:
        ValueError: at construction, when a teacher's blocks cannot run in the student's encoder loop
            as the teacher's own layers would: another width, depth or attention implementation,
            another family, different rotary/relative-position settings, a block whose layers'
            attention types differ from its position's, a shared-layer (ALBERT) student, or a family
            whose loop has not been checked (``docs/methods/theseus.md`` lists them).
    """

    unlabelled_refused: ClassVar[str | None] = (
        "it trains on the task loss of the hybrid alone (no term compares the student with a teacher), and that loss "
        "skips unlabelled rows"
    )

    #: The hybrid stack runs teacher layers inside the student forward.
    reads_teacher_weights = True
    #: Why a teacher cache cannot serve Theseus (read by :mod:`lightning_kd.cache.compatibility`).
    teacher_inputs_vary: ClassVar[str | None] = (
        "its teacher never runs a forward of its own (teacher blocks run inside the hybrid student)"
    )

    def __init__(self, *, hard_weight: float = 1.0, layout_guard: LayoutGuard = "at_least_one_student", **kwargs) -> None:
        if kwargs.get("multi_teacher") is not None:
            raise ValueError(
                "Theseus mixes teacher *modules* into the student and combines no teacher losses, so multi_teacher "
                "does not apply; remove it (each replaced block comes from a teacher chosen uniformly at random)."
            )
        if kwargs.get("forward_repeats") or kwargs.get("random_inputs") is not None:
            raise ValueError(
                "Theseus runs one hybrid forward per step on the real batch; forward_repeats and random_inputs do not apply."
            )
        if hard_weight <= 0:
            raise ValueError(f"hard_weight weighs Theseus's only loss (the task loss) and must be > 0, got {hard_weight}.")
        if layout_guard not in ("at_least_one_student", "reference"):
            raise ValueError(f"layout_guard must be 'at_least_one_student' or 'reference', got {layout_guard!r}.")
        super().__init__(prediction=PredictionLoss(soft_weight=0.0, hard_weight=hard_weight), **kwargs)
        check_hybrid_compatible(self.student, self.teachers)
        self.layout_guard = layout_guard
        #: Probability that a position runs its student layer; set by TheseusReplacingRate each batch.
        self.replacing_rate: float | None = None
        #: The layout of the latest training forward (``None`` = student layer, ``t`` = teacher ``t``'s block).
        self.last_layout: Layout | None = None
        # Layouts are drawn from generators keyed on (seed, step, batch index, draw); only the key is
        # stored, so the module pickles cleanly (ddp_spawn) and holds no RNG state to checkpoint.
        self._layout_key: tuple = ("direct",)
        self._draws = 0

    # ------------------------------------------------------------------ the hybrid step
    def draw_layout(self, rate: float, generator: torch.Generator | None = None) -> Layout:
        """One training layout at replacing rate ``rate``: per position ``None`` (student) or a teacher index."""
        if generator is None:
            generator = keyed_generator(run_seed(), "theseus", *self._layout_key, self._draws)
            self._draws += 1
        depth = self.student.config.num_hidden_layers
        students = sample_student_positions(rate, depth, generator, self.layout_guard)
        count = len(self.teachers)
        return [None if is_student else int(torch.randint(count, (1,), generator=generator)) for is_student in students]

    def compute_losses(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """The weighted task loss of the hybrid stack drawn at :attr:`replacing_rate`, plus ``"loss"``."""
        if self.replacing_rate is None:
            raise RuntimeError(
                "Theseus has no replacing rate: a Trainer fit sets it (TheseusReplacingRate, attached by default); "
                "set `method.replacing_rate = p` before calling compute_losses directly."
            )
        layout = self.draw_layout(self.replacing_rate)
        with hybrid_layers(self.student, self.teachers, layout):
            features = capture(self.student, batch, FeatureRequest(), with_labels=True)
        self.last_layout = layout
        terms = self.student_terms(batch, features)
        if not terms:
            raise RuntimeError("Theseus trains on the task loss, but the batch has no labels.")
        terms["loss"] = torch.stack([v.float() for v in terms.values()]).sum()
        return terms

    def student_answers_alike(self, batch: dict[str, Tensor], tolerance: float = 1e-3) -> float | None:
        """The largest spread (std over the batch) of the pure student's logits when it is below
        ``tolerance`` (the student gives every example of ``batch`` the same answer), else ``None``.
        Runs the student in eval mode without a graph, so no dropout draw is consumed."""
        if batch["input_ids"].shape[0] < 2:
            return None
        was_training = self.student.training
        self.student.eval()
        try:
            with torch.no_grad():
                logits = capture(self.student, batch, FeatureRequest()).logits.float()
        finally:
            self.student.train(was_training)
        spread = float(logits.std(dim=0).max())
        return spread if spread < tolerance else None

    def on_train_batch_start(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        if self.global_step == 0 and batch_idx == 0:
            spread = self.student_answers_alike(batch)
            if spread is not None:
                rank_zero_warn(
                    f"Theseus: the pure student gives every example of the first batch the same logits (spread {spread:.1e}): "
                    "its last layer's output does not depend on the input under this head. Theseus trains that layer only "
                    "in the steps that draw it and feeds the head the teacher's last block otherwise, so the student may "
                    "never leave one answer. Start each student layer from the last layer of the block it replaces: "
                    "student_init: teacher_uniform (see docs/methods/theseus.md)."
                )

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        # Same layout on every rank, and the same again when a run resumes at this step.
        self._layout_key, self._draws = (self.global_step, batch_idx), 0
        loss = super().training_step(batch, batch_idx)
        student_layers = sum(choice is None for choice in self.last_layout or [])
        self.log("train/student_layers", float(student_layers), batch_size=batch["input_ids"].shape[0])
        return loss

    # ------------------------------------------------------------------ schedule
    def default_callbacks(self) -> list[pl.Callback]:
        """The replacing-rate schedule ``fit`` attaches when the trainer has none: the linear curriculum
        from ``r0 = 0.3`` to 1 at 66 % of the steps (GKD ``--theseus_replacing_rate=0.3
        --theseus_not_replaced_steps=0.66``), then the pure student."""
        return [TheseusReplacingRate(replacing_rate=0.3, not_replaced_steps=0.66, schedule="linear")]

    def configure_callbacks(self) -> list[pl.Callback]:
        return [*super().configure_callbacks(), *unless_configured(self, self.default_callbacks())]
