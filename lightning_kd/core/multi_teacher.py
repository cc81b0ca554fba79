"""The contract of a multi-teacher strategy, and the default :class:`Average`.

More strategies live in :mod:`lightning_kd.methods.multi_teacher`, one per file. A strategy reads
each teacher's terms as :class:`~lightning_kd.core.terms.LossTerms`: by role and shape (per example
or scalar), never by name; names only pass through to the combined terms for logging.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from torch import Tensor, nn

from lightning_kd.core.features import Features
from lightning_kd.core.logit_rows import LogitRows, rows_at
from lightning_kd.core.terms import LossTerms, weighted_sum


@dataclass
class TeacherStep:
    """What a strategy sees of one training step besides the per-teacher terms.

    Attributes:
        batch: the training batch (labels for strategies that score teachers on gold labels).
        student: the student's captured features (its logits, e.g. for uncertainty weights).
        teacher_logits: float32 logits of each teacher that ran, in the order of ``teacher_indices``:
            whole, or compact token rows ``(R, V)`` (MLM; see ``teacher_logit_rows``).
        teacher_indices: which teachers ran this step (see :meth:`MultiTeacherStrategy.select_teachers`).
        step: the trainer's global step (seed for per-step random draws, identical on every rank).
        teacher_logit_rows: per teacher, the ``(B, N)`` positions of its compact logits, ``None`` for
            whole logits (also when the list itself is ``None``).
    """

    batch: dict[str, Tensor]
    student: Features
    teacher_logits: list[Tensor]
    teacher_indices: list[int]
    step: int
    teacher_logit_rows: list[Tensor | None] | None = None

    def teacher_rows(self, k: int) -> Tensor | None:
        """The ``(B, N)`` positions of ``teacher_logits[k]`` when compact, else ``None``."""
        return self.teacher_logit_rows[k] if self.teacher_logit_rows is not None else None

    def token_level(self, k: int) -> bool:
        """Whether ``teacher_logits[k]`` are per position (MLM), whole or compact."""
        return self.teacher_rows(k) is not None or self.teacher_logits[k].dim() == 3

    def teacher_logits_at(self, k: int, mask: Tensor | None) -> Tensor:
        """``(R', V)`` token logits of ``teacher_logits[k]`` at the ``(B, N)`` positions of ``mask`` (``None``: all)."""
        return rows_at(self.teacher_logits[k], self.teacher_rows(k), mask)


class MultiTeacherStrategy(nn.Module):
    """Combines the per-teacher loss terms of one training step into one set of scalar terms.

    A strategy is an ``nn.Module`` so it may own learnable parts (optimised and checkpointed with
    the method, never exported with the student). Subclasses implement :meth:`combine` and may
    override :meth:`select_teachers`.

    Each teacher's terms are :class:`~lightning_kd.core.terms.LossTerms`: a strategy iterates
    ``terms.typed_items()`` and reads each term's ``role`` (``SOFT``, ``HARD``, ``INTERMEDIATE``) and
    ``per_example`` (shape ``(B,)``) — never a name, so a method may call its terms anything.

    Attributes:
        per_sample: when ``True`` the method gives per-example values, shape ``(B,)``: always for
            the soft prediction term, and for any other term it can compute per example; a term it
            cannot stays a scalar and is combined unweighted. The strategy can then weight examples
            (MT-BERT, Uncertainty, RL-KD); :meth:`LossTerms.check_per_example
            <lightning_kd.core.terms.LossTerms.check_per_example>` checks the shapes.
        needs_student_loss: the strategy reads the student's own task/MLM loss (RL-KD's reward), so
            the student runs with labels even when the method has no hard term.

    A strategy that reads token (MLM) logits itself names their rows in :meth:`student_logit_rows`
    and :meth:`teacher_logit_rows`, so compact heads compute them.
    """

    per_sample: bool = False
    needs_student_loss: bool = False

    def student_logit_rows(self) -> LogitRows:
        """Token-logit rows of the student this strategy reads (default: none)."""
        return "none"

    def teacher_logit_rows(self) -> LogitRows:
        """Token-logit rows of each teacher this strategy reads (default: none)."""
        return "none"

    def unlabelled_refusal(self) -> str | None:
        """Why this strategy cannot combine terms on batches with unlabelled rows (class id -100), or ``None``
        when it can (default: it reads no gold label; see :mod:`lightning_kd.core.unlabelled`)."""
        return None

    def select_teachers(self, num_teachers: int, step: int) -> list[int]:
        """Indices of the teachers to run this step (default: all). Teachers not listed never run."""
        return list(range(num_teachers))

    def combine(self, per_teacher: Sequence[Mapping[str, Tensor]], step: TeacherStep) -> LossTerms:
        """Merge ``per_teacher[k]`` (the weighted terms of teacher ``step.teacher_indices[k]``) into scalar terms.

        ``per_teacher[k]`` is :class:`~lightning_kd.core.terms.LossTerms` in a training step; a
        hand-built plain dict is typed by name (``typed(per_teacher)``). Return the combined terms
        with their roles (a plain dict is typed by name too).
        """
        raise NotImplementedError


class Average(MultiTeacherStrategy):
    """Mean over teachers of each loss term (GKD ``AvgTeacher``), per-example terms first averaged
    over the batch; one teacher's terms pass through unchanged. A term missing for some teacher
    counts as 0 for it."""

    def combine(self, per_teacher: Sequence[Mapping[str, Tensor]], step: TeacherStep) -> LossTerms:
        return weighted_sum(per_teacher, divisor=len(per_teacher))
