"""Typed loss terms: what a method's term hooks return and what multi-teacher strategies read.

A method's :meth:`~lightning_kd.core.method_hooks.MethodHooks.teacher_terms` (one teacher) and
:meth:`~lightning_kd.core.method_hooks.MethodHooks.student_terms` return :class:`LossTerms`: named
tensors, each with a :class:`Role` and a shape that says whether it is one value per example,
``(B,)``, or a scalar. The *name* is for people (``train/<name>`` in the logs, the error messages);
the *role* and the *shape* are for code: a strategy finds the hard loss by its role and weights
every per-example term, whatever they are called, and never looks a term up by name.

:class:`LossTerms` is a ``MutableMapping[str, Tensor]``, so code that only reads values
(``terms["soft"]``, ``terms.items()``, logging, the total) works as with a dict. A method says a
role with one short call::

    terms = LossTerms()
    terms.soft("soft", prediction_term)          # the student's prediction against the teacher's
    terms.intermediate("patience", beta * distance)
    terms.hard("hard", hard_weight * student.loss)

A plain dict a method returns (or a value assigned with ``terms[name] = value``) gets a default role
from its name: the base class's own names ``"soft"`` and ``"hard"`` keep those roles, any other
name is :attr:`Role.INTERMEDIATE` for a teacher's terms (:attr:`Role.HARD` for the student's own
terms, which need no teacher). A method whose term is a prediction term under another name says so
with :meth:`LossTerms.soft`.

**Per example.** When the strategy weights examples (``MultiTeacherStrategy.per_sample``), the
module asks the method for per-example values (``DistillationModule.per_example_terms``): the
soft prediction term must then arrive as ``(B,)``; any other term may too, and is then weighted per
example like the soft one. A term that cannot be computed per example stays a scalar and is
combined unweighted (summed or averaged over teachers as the strategy does for every term).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableMapping, Sequence
from dataclasses import dataclass

from torch import Tensor

__all__ = ["LossTerms", "Role", "Term", "default_role", "typed", "weighted_mean", "weighted_sum"]


class Role(enum.Enum):
    """What a loss term is, as strategies read it."""

    #: The prediction-level soft term: the student's prediction against the teacher's (a
    #: :class:`~lightning_kd.losses.prediction.PredictionLoss`'s soft part, or a method's own such
    #: term). Under a per-example strategy it must arrive per example.
    SOFT = "soft"
    #: The student's own task/MLM loss (needs no teacher). Added once, never once per teacher.
    HARD = "hard"
    #: Any other comparison with a teacher: hidden states, attention, relations, a method's extra
    #: logit terms. Per example when the method can compute it so, else a scalar.
    INTERMEDIATE = "intermediate"
    #: A strategy's own objective (RL-KD's agent); produced by ``combine``, never by a method.
    STRATEGY = "strategy"


@dataclass(frozen=True)
class Term:
    """One loss term: its value (a scalar, or ``(B,)`` per example) and its :class:`Role`."""

    value: Tensor
    role: Role

    @property
    def per_example(self) -> bool:
        """Whether the value holds one entry per example (shape ``(B,)``) rather than a scalar."""
        return self.value.dim() == 1


def default_role(name: str, default: Role = Role.INTERMEDIATE) -> Role:
    """The role a term named ``name`` gets when its method gave none: the base class's own names
    ``"soft"`` and ``"hard"`` keep theirs, any other name gets ``default``."""
    return {"soft": Role.SOFT, "hard": Role.HARD}.get(name, default)


def _checked(name: str, value: Tensor) -> Tensor:
    if not isinstance(value, Tensor):
        raise TypeError(f"Loss term {name!r} must be a tensor, got {type(value).__name__}.")
    if value.dim() > 1:
        raise ValueError(
            f"Loss term {name!r} has shape {tuple(value.shape)}; a loss term is a scalar or one value per "
            "example, shape (B,). Reduce it over positions/layers first."
        )
    return value


class LossTerms(MutableMapping[str, Tensor]):
    """Named, typed loss terms (a ``MutableMapping[str, Tensor]`` with a :class:`Role` per term).

    Args:
        terms: initial terms: another :class:`LossTerms` (roles copied) or a mapping of tensors
            (roles from :func:`default_role`).
        default: the role :func:`default_role` gives names other than ``"soft"``/``"hard"``, here
            and for later ``terms[name] = value`` assignments of new names.

    Raises:
        ValueError: a value is neither a scalar nor ``(B,)``.
    """

    def __init__(self, terms: Mapping[str, Tensor] | None = None, *, default: Role = Role.INTERMEDIATE) -> None:
        self._terms: dict[str, Term] = {}
        self.default = default
        if terms is not None:
            self.update(terms)

    @classmethod
    def wrap(cls, terms: Mapping[str, Tensor], default: Role = Role.INTERMEDIATE) -> LossTerms:
        """``terms`` itself when it is already :class:`LossTerms`, else typed by :func:`default_role`."""
        return terms if isinstance(terms, LossTerms) else cls(terms, default=default)

    # ------------------------------------------------------------------ adding terms
    def add(self, name: str, value: Tensor, role: Role) -> LossTerms:
        """Set term ``name`` to ``value`` with ``role`` (replacing any term of that name); returns ``self``."""
        self._terms[name] = Term(_checked(name, value), role)
        return self

    def soft(self, name: str, value: Tensor) -> LossTerms:
        """Add a :attr:`Role.SOFT` term (the student's prediction against the teacher's); returns ``self``."""
        return self.add(name, value, Role.SOFT)

    def hard(self, name: str, value: Tensor) -> LossTerms:
        """Add a :attr:`Role.HARD` term (the student's own task/MLM loss); returns ``self``."""
        return self.add(name, value, Role.HARD)

    def intermediate(self, name: str, value: Tensor) -> LossTerms:
        """Add a :attr:`Role.INTERMEDIATE` term (any other comparison with the teacher); returns ``self``."""
        return self.add(name, value, Role.INTERMEDIATE)

    def accumulate(self, name: str, value: Tensor, role: Role) -> LossTerms:
        """Add ``value`` to term ``name`` (or create it): how strategies sum a term over teachers.

        Raises:
            ValueError: the term exists with another role (two teachers disagree on what it is).
        """
        current = self._terms.get(name)
        if current is None:
            return self.add(name, value, role)
        if current.role is not role:
            raise ValueError(f"Loss term {name!r} arrived as {current.role.name} and as {role.name}; one name must keep one role.")
        return self.add(name, current.value + value, role)

    # ------------------------------------------------------------------ reading roles
    def term(self, name: str) -> Term:
        """Term ``name`` with its role."""
        return self._terms[name]

    def role(self, name: str) -> Role:
        """The role of term ``name``."""
        return self._terms[name].role

    def typed_items(self) -> Iterator[tuple[str, Term]]:
        """``(name, Term)`` pairs in insertion order: what a strategy iterates."""
        return iter(list(self._terms.items()))

    def having(self, *roles: Role) -> LossTerms:
        """A new :class:`LossTerms` with only the terms whose role is one of ``roles``."""
        return self._select(lambda term: term.role in roles)

    def without(self, *roles: Role) -> LossTerms:
        """A new :class:`LossTerms` without the terms whose role is one of ``roles``."""
        return self._select(lambda term: term.role not in roles)

    def check_per_example(self, batch_size: int, strategy: str) -> LossTerms:
        """Check the shapes a per-example strategy relies on; returns ``self``.

        Every :attr:`Role.SOFT` term must be per example, and every per-example term must hold
        ``batch_size`` values (other terms may be scalars: they are combined unweighted).

        Raises:
            ValueError: naming the term, its shape and the fix.
        """
        for name, term in self._terms.items():
            if term.role is Role.SOFT and not term.per_example:
                raise ValueError(
                    f"{strategy} weights the soft prediction term per example, but {name!r} arrived with shape "
                    f"{tuple(term.value.shape)} instead of ({batch_size},). The method must compute it with "
                    "per_sample=True when DistillationModule.per_example_terms is set (the base teacher_terms does; "
                    "a method building its own soft term must too)."
                )
            if term.per_example and term.value.shape[0] != batch_size:
                raise ValueError(
                    f"{strategy} weights per-example terms, but {name!r} ({term.role.name}) has {term.value.shape[0]} "
                    f"values for a batch of {batch_size} examples; a per-example term has shape (B,)."
                )
        return self

    def _select(self, keep: Callable[[Term], bool]) -> LossTerms:
        out = LossTerms(default=self.default)
        out._terms = {name: term for name, term in self._terms.items() if keep(term)}
        return out

    # ------------------------------------------------------------------ the mapping
    def __getitem__(self, name: str) -> Tensor:
        return self._terms[name].value

    def __setitem__(self, name: str, value: Tensor) -> None:
        # A name already present keeps its role (``terms["soft"] = 2 * terms["soft"]`` stays SOFT).
        current = self._terms.get(name)
        self.add(name, value, current.role if current is not None else default_role(name, self.default))

    def __delitem__(self, name: str) -> None:
        del self._terms[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._terms)

    def __len__(self) -> int:
        return len(self._terms)

    def update(self, other=(), /, **kwargs: Tensor) -> None:  # type: ignore[override]
        """As ``dict.update``; the terms of another :class:`LossTerms` keep their roles."""
        if isinstance(other, LossTerms):
            for name, term in other._terms.items():
                self.add(name, term.value, term.role)
            other = ()
        super().update(other, **kwargs)

    def __or__(self, other: Mapping[str, Tensor]) -> LossTerms:
        """Both sets of terms (``other`` wins a shared name), roles kept, as ``dict | dict``."""
        out = LossTerms(self, default=self.default)
        out.update(LossTerms.wrap(other, self.default))
        return out

    def __repr__(self) -> str:
        inner = ", ".join(
            f"{name!r}: {term.role.name}{' (B,)' if term.per_example else ''}" for name, term in self._terms.items()
        )
        return f"LossTerms({{{inner}}})"


def typed(per_teacher: Iterable[Mapping[str, Tensor]]) -> list[LossTerms]:
    """Each teacher's terms as :class:`LossTerms` (a hand-built plain dict typed by :func:`default_role`)."""
    return [LossTerms.wrap(terms) for terms in per_teacher]


def weighted_mean(term: Term, weights: Tensor) -> Tensor:
    """``mean_b(weights_b · value_b)`` for a per-example term; a scalar term unweighted, as it is.

    This is the rule of per-example strategies (MT-BERT, Uncertainty): a method that can compute a
    term per example gets it weighted; one that cannot passes a scalar, combined unweighted.
    """
    return (weights * term.value).mean() if term.per_example else term.value


def weighted_sum(
    per_teacher: Sequence[Mapping[str, Tensor]],
    weights: Sequence[Tensor] | None = None,
    *,
    divisor: int = 1,
    strategy: str = "",
) -> LossTerms:
    """Each term summed over teachers, roles kept: ``Σ_k mean_b(w_{k,b}·term_{k,b}) / divisor``.

    The combination every averaging or per-example strategy shares. Without ``weights`` each term
    is its batch mean (Average, DGKD); with ``weights[k]`` (shape ``(B,)``) teacher ``k``'s terms
    are first checked for per-example strategies (``strategy`` names the error) and weighted by
    :func:`weighted_mean` (MT-BERT, Uncertainty).
    """
    out = LossTerms()
    for k, terms in enumerate(typed(per_teacher)):
        if weights is not None:
            terms.check_per_example(weights[k].shape[0], strategy)
        for name, term in terms.typed_items():
            value = term.value.mean() if weights is None else weighted_mean(term, weights[k])
            out.accumulate(name, value if divisor == 1 else value / divisor, term.role)
    return out
