"""The pieces of a forward pass that a method may change, and what a pass returns.

A training step runs one or more *passes* over its batch (``forward_repeats``, or a method's own
extra passes such as LRC-BERT's perturbed one and DIITO's intervened one). Each pass runs the
student once and then every selected teacher; :meth:`DistillationModule.run_pass
<lightning_kd.core.module.DistillationModule.run_pass>` is the one way to run one, and it takes a
method's *interventions* as context managers that are active while a model runs:

* :func:`forward_hook` / :func:`forward_pre_hook` — read or replace a submodule's output or inputs
  (LRC-BERT keeps, then shifts, the embedding output; DIITO swaps layer outputs between examples);
* any other context manager (a patched module, a temporarily changed setting) works the same way.

This module also holds the checks of ``forward_repeats`` / ``random_inputs`` and the sum of a
step's terms.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from lightning_kd.core.features import Features
from lightning_kd.core.multi_teacher import TeacherStep
from lightning_kd.core.random_inputs import RandomInputs
from lightning_kd.core.terms import LossTerms
from lightning_kd.losses.prediction import PredictionLoss

#: Context managers active while one model's forward runs (see :func:`forward_hook`).
Hooks = Sequence[AbstractContextManager]
#: For a teacher index, the hooks active while that teacher runs (built when it is its turn).
TeacherHooks = Callable[[int], Hooks]
#: ``(batch, student, teacher, teacher_index) -> terms``: one teacher's weighted terms in a pass
#: (:class:`~lightning_kd.core.terms.LossTerms`; a plain dict is typed by name).
TeacherTerms = Callable[[dict[str, Tensor], Features, Features, int], Mapping[str, Tensor]]


@dataclass
class PassResult:
    """What one pass produced.

    Attributes:
        terms: the student's own terms, plus the strategy's combination of the teachers' terms
            (when the pass combined them), typed (:class:`~lightning_kd.core.terms.LossTerms`).
        student: the student's features (with their graph).
        per_teacher: each teacher's typed terms, in the order of ``step.teacher_indices`` (merge two
            passes' with ``first | second``, which keeps the roles).
        step: what the multi-teacher strategy sees of this pass (``None`` without teachers); a
            method that combines several passes' terms at once passes it to ``combine`` itself.
    """

    terms: LossTerms
    student: Features
    per_teacher: list[LossTerms] = field(default_factory=list)
    step: TeacherStep | None = None


@contextmanager
def forward_hook(module: nn.Module, hook: Callable, *, with_kwargs: bool = False) -> Iterator[None]:
    """``hook(module, inputs, output)`` runs after each forward of ``module`` while active; a value it
    returns replaces the output (see ``nn.Module.register_forward_hook``)."""
    with _removed_on_exit(module.register_forward_hook(hook, with_kwargs=with_kwargs)):
        yield


@contextmanager
def forward_pre_hook(module: nn.Module, hook: Callable, *, with_kwargs: bool = False) -> Iterator[None]:
    """``hook(module, inputs)`` runs before each forward of ``module`` while active; a value it
    returns replaces the inputs (see ``nn.Module.register_forward_pre_hook``)."""
    with _removed_on_exit(module.register_forward_pre_hook(hook, with_kwargs=with_kwargs)):
        yield


@contextmanager
def _removed_on_exit(handle) -> Iterator[None]:
    """Keep a registered hook while the block runs; remove it however the block ends."""
    try:
        yield
    finally:
        handle.remove()


def entered(hooks: Hooks) -> AbstractContextManager:
    """One context manager that enters every hook of ``hooks`` and leaves them in reverse order."""
    return _all_of(hooks) if hooks else nullcontext()  # the common case (no intervention) sets nothing up


@contextmanager
def _all_of(hooks: Hooks) -> Iterator[None]:
    with ExitStack() as stack:
        for hook in hooks:
            stack.enter_context(hook)
        yield


def merge_combined(student_terms: LossTerms, combined: Mapping[str, Tensor], strategy: object) -> LossTerms:
    """A pass's terms: the student's own terms and ``strategy``'s combination of the teachers' terms.

    Raises:
        ValueError: a combined term has the name of a student term; one would silently replace the other
            (e.g. a strategy returning the hard loss, which the student's own terms already hold).
    """
    combined = LossTerms.wrap(combined)
    clash = [name for name in combined if name in student_terms]
    if clash:
        raise ValueError(
            f"{type(strategy).__name__} returned the terms {clash}, which the student's own terms already hold; "
            "a strategy combines teacher terms only (the hard loss is the method's, added once)."
        )
    return student_terms | combined


def total_loss(terms: dict[str, Tensor], method: str) -> dict[str, Tensor]:
    """``terms`` with ``"loss"``, their float32 sum, added.

    Raises:
        RuntimeError: there is no term at all.
    """
    if not terms:
        raise RuntimeError(
            f"{method} produced no loss term: every weight is 0 or the batch has no labels for the hard loss."
        )
    terms["loss"] = torch.stack([v.float() for v in terms.values()]).sum()
    return terms


def check_repeats(repeats: int, random_inputs: RandomInputs | None, prediction: PredictionLoss | None) -> None:
    """Validate ``forward_repeats`` and ``random_inputs`` together (see the method's constructor).

    Raises:
        ValueError: negative repeats, a randomised pass the step never runs, or random ids scored
            against the original labels.
    """
    if repeats < 0:
        raise ValueError(f"forward_repeats must be >= 0 (extra passes per step), got {repeats}.")
    if random_inputs is None:
        return
    if max(random_inputs.passes) > repeats:
        raise ValueError(
            f"random_inputs.passes lists pass {max(random_inputs.passes)} but the step runs passes 0..{repeats}; "
            f"set forward_repeats >= {max(random_inputs.passes)}."
        )
    if random_inputs.mode == "replace" and prediction is not None and prediction.hard_weight > 0:
        raise ValueError(
            "random_inputs mode 'replace' would score random tokens against the original labels: set the hard "
            "loss weight to 0 (hard_weight=0) or use mode 'dual', whose original half alone feeds the hard loss."
        )
