"""``TeacherPool``: the frozen teachers of a distillation and everything about running them.

One object owns the teachers: loading them in their own precision and freezing them
(:mod:`lightning_kd.core.teachers`), where each one runs (:mod:`lightning_kd.core.placement`:
the student's device, the host, a device of its own, or ZeRO-3 shards), following the student when
it moves, routing a teacher's features through a :class:`~lightning_kd.cache.TeacherCache`, and the
live, gradient-free forward itself.

The pool is deliberately *not* an ``nn.Module`` and holds its teachers outside any module tree, so
a method that keeps one (``DistillationModule.teacher_pool``) never registers them as submodules:
they stay out of ``parameters()``, ``state_dict()``, checkpoints, the optimizer, and every
strategy's or precision plugin's reach (wrapping, casting, partitioning). It works on its own, too::

    pool = TeacherPool(["outputs/teacher"], head="sequence_classification", placement="cpu")
    features = pool.forward(0, batch, FeatureRequest(hidden_states=True), device=torch.device("cuda"))

What runs where depends on the trainer (DeepSpeed stage 3 turns ``"auto"`` into ZeRO-3 shards) and
on whether the method uses teacher modules inside its own step (they must then sit whole with the
student): both arrive as arguments, because the trainer changes between ``fit`` and ``test`` and a
method's answer may depend on state it sets after construction.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from lightning_kd.core.features import FeatureRequest, Features, capture
from lightning_kd.core.placement import check_placements, partition_teacher, resolve_placement, teacher_device
from lightning_kd.core.teachers import describe_source, load_teachers
from lightning_kd.models.loading import ModelSource, Precision
from lightning_kd.stages import Stage, TaskHead, stage_named

if TYPE_CHECKING:  # annotations only: the pool runs any object with ``teacher_features`` and needs no cache import
    from lightning_kd.cache import TeacherCache


class TeacherPool:
    """Frozen teachers: loaded, placed, partitioned, moved and run.

    Args:
        sources: the teachers: built HF models, local directories, ``embedded:<name>`` or hub names.
        head: the stage (or its name); every teacher must carry its head (a fine-tuned classifier, an
            MLM head, a causal-LM head).
        num_labels: the task's label count, checked against each classifier teacher.
        precision: the teachers' weight dtype, one for all or one per teacher (captured tensors are
            upcast to float32 for the loss math).
        placement: where each teacher runs, one for all or one per teacher (see
            :mod:`lightning_kd.core.placement`).
        cache: a teacher-output cache that serves :meth:`run` instead of a live forward when it holds
            every row of a batch.

    Raises:
        ValueError: a placement that is neither a policy nor a device, a precision or placement
            list of the wrong length, or a teacher without the stage's head.
    """

    def __init__(
        self,
        sources: list[ModelSource],
        head: TaskHead | Stage,
        num_labels: int | None = None,
        precision: Precision | list[Precision] = "float32",
        placement: str | list[str] = "auto",
        cache: TeacherCache | None = None,
    ) -> None:
        # Placements are checked before any weights load: a typo fails in milliseconds.
        self.placements: list[str] = check_placements(placement, len(sources))
        #: What a checkpoint records about where each teacher came from (their weights are never saved).
        self.sources: list[str] = [describe_source(source) for source in sources]
        #: The frozen teachers (eval mode, no gradients), each in its own precision.
        self.models: nn.ModuleList = load_teachers(sources, stage_named(head), num_labels, precision)
        self.cache = cache
        # Inference-only ZeRO-3 engines; they keep the partitioned teachers' hooks alive.
        self._engines: list[Any] = []

    def __len__(self) -> int:
        return len(self.models)

    # ------------------------------------------------------------------ placement
    def placement(self, index: int, trainer: Any = None, reads_weights: str | None = None) -> str:
        """Teacher ``index``'s placement under ``trainer``: ``"student"``, ``"zero3"`` or a device string.

        Args:
            index: the teacher.
            trainer: the trainer the method is attached to (``None``: no trainer, so no DeepSpeed).
            reads_weights: the method's name when it uses teacher modules or weights inside its own
                step; its teachers must then sit whole on the student's device.

        Raises:
            ValueError: ``"zero3"`` without DeepSpeed, or a placement the method cannot use.
        """
        return resolve_placement(self.placements[index], trainer, reads_weights)

    def check(self, trainer: Any = None, reads_weights: str | None = None) -> list[str]:
        """Every teacher's placement under ``trainer``, so a wrong one fails before any work."""
        return [self.placement(index, trainer, reads_weights) for index in range(len(self))]

    def follow(self, device: torch.device, trainer: Any = None, reads_weights: str | None = None) -> None:
        """Move the teachers placed with the student to ``device`` (its new device); never cast them."""
        for index, teacher in enumerate(self.models):
            if self.placement(index, trainer, reads_weights) == "student":
                teacher.to(device)

    def eval(self) -> None:
        """Put every teacher back in eval mode (a module's ``train()`` reaches only its submodules)."""
        for teacher in self.models:
            teacher.eval()

    def place(
        self, index: int, device: torch.device, trainer: Any = None, reads_weights: str | None = None
    ) -> tuple[nn.Module, torch.device]:
        """Teacher ``index`` and the device its forward runs on, moving or partitioning it the first time.

        Args:
            device: the student's device (where ``"student"`` and ``"zero3"`` teachers run).
        """
        teacher = self.models[index]
        placement = self.placement(index, trainer, reads_weights)
        if placement == "zero3":
            if not self._engines:
                self._partition(trainer, reads_weights)
            return teacher, device
        target = device if placement == "student" else torch.device(placement)
        if teacher_device(teacher) != target:
            teacher.to(target)
        return teacher, target

    def _partition(self, trainer: Any, reads_weights: str | None) -> None:
        for index, teacher in enumerate(self.models):
            if self.placement(index, trainer, reads_weights) == "zero3":
                self._engines.append(partition_teacher(teacher, trainer))

    # ------------------------------------------------------------------ forwards
    def forward(
        self,
        index: int,
        batch: dict[str, Tensor],
        request: FeatureRequest,
        *,
        device: torch.device,
        trainer: Any = None,
        reads_weights: str | None = None,
    ) -> Features:
        """Run teacher ``index`` live on ``batch`` where its placement puts it.

        Args:
            request: what to capture (its logit rows included).
            device: the student's device: inputs are sent from it and the features come back to it.
            trainer / reads_weights: as for :meth:`placement`.

        Returns:
            The features on ``device``, upcast to float32, without a graph.
        """
        teacher, where = self.place(index, device, trainer, reads_weights)
        if where != device:
            batch = {k: v.to(where, non_blocking=True) if isinstance(v, Tensor) else v for k, v in batch.items()}
        with torch.no_grad():
            features = capture(teacher, batch, request, upcast=True)
        return features if where == device else features.to(device)

    def run(self, index: int, batch: dict[str, Tensor], method: Any) -> Features:
        """Teacher ``index``'s features on ``batch``: from :attr:`cache` when one is set, else live.

        Args:
            method: the method the features are for; the cache reads its requests and checks its
                loss terms, and both paths run a live forward through its ``teacher_forward``.
        """
        if self.cache is not None:
            return self.cache.teacher_features(method, index, batch)
        return method.teacher_forward(index, batch)
