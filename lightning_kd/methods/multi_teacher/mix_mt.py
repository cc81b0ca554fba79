"""MixMT — the GKD reference's "sum of strategies" (``--multi_teacher_model=mixmt --mixmt_model=A,B``).

No paper: the reference combines several multi-teacher strategies by summing their losses, each
strategy an independent instance with its own parameters. Its seed section is empty and it has no
reference hyper-parameters; ``configs/gkd/mix_mt/`` is an example.

Terms keep the strategy's name as a prefix (``"average.soft"``, ``"uncertainty.soft"``,
``"rlkd.agent"``) so each strategy's share is logged separately; the training loss is their sum.

Where we differ from the GKD reference, and why:

* **The hard loss is counted once.** The reference adds one hard term per strategy that adds one
  (MT-BERT, Uncertainty, RL-KD each do). Here no strategy ever adds the hard loss: it is the method's
  own term (``hard_weight``), added once outside the strategies. MixMT finds it by role
  (:attr:`~lightning_kd.core.terms.Role.HARD`), whatever its name: a method that puts a hard term
  in its per-teacher terms has it averaged over the teachers once, unprefixed, outside the children,
  and a child strategy that returns a term of that role is refused.
* **Order is the given order** (the reference iterates a Python set); the same strategy class twice is
  an error (the reference de-duplicates names).
* **Teacher selection composes**: the teachers that run are the union of every strategy's
  selection (e.g. a DGKD child's survivors), and each strategy combines only the teachers it chose.
* The reference's RL-KD semantic teacher would also enter the other strategies' losses; here the
  semantic encoder is not a teacher (see :class:`~lightning_kd.methods.multi_teacher.RLKD`).
* When any strategy needs per-example terms, every strategy receives them (strategies that do not
  weight examples average them).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import Tensor, nn

from lightning_kd.core.logit_rows import LogitRows, widest
from lightning_kd.core.multi_teacher import Average, MultiTeacherStrategy, TeacherStep
from lightning_kd.core.terms import LossTerms, Role, typed


class MixMT(MultiTeacherStrategy):
    """Sum of several strategies' terms (each prefixed with its strategy's name).

    Args:
        strategies: the strategies to combine, at least two, each class at most once.
    """

    def __init__(self, strategies: list[MultiTeacherStrategy]) -> None:
        super().__init__()
        if len(strategies) < 2:
            raise ValueError(f"MixMT sums several strategies; give at least two, got {len(strategies)}. For one, use it directly.")
        if any(isinstance(s, MixMT) for s in strategies):
            raise ValueError("MixMT strategies cannot themselves be MixMT; list their strategies directly.")
        names = [type(s).__name__.lower() for s in strategies]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"MixMT lists {repeated} more than once; each strategy may appear once.")
        self.strategies = nn.ModuleList(strategies)
        self.names = names
        self.per_sample = any(s.per_sample for s in strategies)
        self.needs_student_loss = any(s.needs_student_loss for s in strategies)  # RL-KD's reward
        self._selected: list[list[int]] | None = None  # each strategy's choice for the current step

    def student_logit_rows(self) -> LogitRows:
        return widest(*(s.student_logit_rows() for s in self.strategies))

    def teacher_logit_rows(self) -> LogitRows:
        return widest(*(s.teacher_logit_rows() for s in self.strategies))

    def select_teachers(self, num_teachers: int, step: int) -> list[int]:
        self._selected = [strategy.select_teachers(num_teachers, step) for strategy in self.strategies]
        return sorted(set().union(*self._selected))

    def combine(self, per_teacher: Sequence[Mapping[str, Tensor]], step: TeacherStep) -> LossTerms:
        per_teacher = typed(per_teacher)
        # A hard term among the teachers' terms (a method computing it per teacher) is counted once,
        # here, as the mean over the teachers that ran; the children never see it.
        out = Average().combine([terms.having(Role.HARD) for terms in per_teacher], step)
        per_teacher = [terms.without(Role.HARD) for terms in per_teacher]
        selected = self._selected
        if selected is None or set().union(*selected) != set(step.teacher_indices):
            # combine() without the matching select_teachers() (e.g. a hand-built step): every strategy sees every teacher.
            selected = [list(step.teacher_indices)] * len(self.strategies)
        position = {index: k for k, index in enumerate(step.teacher_indices)}
        for name, strategy, chosen in zip(self.names, self.strategies, selected):
            keep = [position[i] for i in chosen]
            sub_step = TeacherStep(step.batch, step.student, [step.teacher_logits[k] for k in keep], list(chosen), step.step,
                                   [step.teacher_rows(k) for k in keep])
            combined = LossTerms.wrap(strategy.combine([per_teacher[k] for k in keep], sub_step))
            for term_name, term in combined.typed_items():
                if term.role is Role.HARD:
                    raise ValueError(
                        f"Strategy {type(strategy).__name__} returned the hard term {term_name!r}; the hard loss is the "
                        "method's own term (hard_weight), added once, so a strategy must not add it."
                    )
                out.add(f"{name}.{term_name}", term.value, term.role)
        return out
