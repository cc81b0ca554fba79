"""Which teachers read the text through a tokenizer of their own, and the batch keys of their encodings.

A teacher of another family (an MPNet teacher for a MiniLM student, a Gemma teacher for a SmolLM2
student) cannot read the student's token ids. The data module then encodes every example twice — once
with the student's tokenizer (``input_ids``, ``attention_mask``, …) and once with the teacher's, under
the teacher's prefix (``teacher_input_ids``, ``teacher_attention_mask``, …) — with the same examples,
labels and order. The method hands each teacher its own encoding (:meth:`TeacherTokenizers.inputs`);
the terms still see the student's batch.

``teacher_tokenizer`` is one name for every teacher (prefix ``teacher_``) or one entry per teacher
(prefix ``teacher{i}_``; ``None`` for a teacher that reads the student's ids). A name equal to the
student's tokenizer is no second encoding: such a teacher reads the student's ids, as without the knob.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor

#: The keys a second encoding carries, each under the teacher's prefix.
ENCODING_KEYS = ("input_ids", "attention_mask", "token_type_ids", "offset_mapping")
#: The batch keys every teacher reads as is, whatever its tokenizer (labels of a sequence-level task, row identity).
SHARED_KEYS = ("labels", "example_index")

TeacherTokenizer = str | list[str | None] | None


@dataclass(frozen=True)
class TeacherTokenizers:
    """The teachers' own tokenizers (normalised: names equal to the student's are dropped).

    Attributes:
        shared: one tokenizer every teacher reads (prefix ``teacher_``), or ``None``.
        per_teacher: per teacher index, its tokenizer or ``None`` (prefix ``teacher{i}_``); empty with ``shared``.
    """

    shared: str | None = None
    per_teacher: tuple[str | None, ...] = ()

    @classmethod
    def of(cls, value: TeacherTokenizer, student_tokenizer: str | None = None) -> "TeacherTokenizers":
        """Normalise a ``teacher_tokenizer`` argument; a name equal to ``student_tokenizer`` reads the student's ids.

        Raises:
            ValueError: an entry that is neither a name nor ``None``.
        """
        def own(name: str | None) -> str | None:
            if name is not None and (not isinstance(name, str) or not name.strip()):
                raise ValueError(f"teacher_tokenizer entries are tokenizer names or directories (or null), got {name!r}.")
            return None if name is None or name == student_tokenizer else name

        if value is None or isinstance(value, str):
            return cls(shared=own(value))
        names = tuple(own(name) for name in value)
        return cls(per_teacher=names) if any(names) else cls()

    def __bool__(self) -> bool:
        return self.shared is not None or any(self.per_teacher)

    @property
    def argument(self) -> TeacherTokenizer:
        """The normalised value as a ``teacher_tokenizer`` argument (what the CLI links to the method)."""
        if self.shared is not None:
            return self.shared
        return list(self.per_teacher) if any(self.per_teacher) else None

    def encodings(self) -> list[tuple[str, str]]:
        """``(prefix, tokenizer name)`` of each second encoding the data module writes."""
        if self.shared is not None:
            return [("teacher_", self.shared)]
        return [(f"teacher{index}_", name) for index, name in enumerate(self.per_teacher) if name is not None]

    def load(self) -> list[tuple[str, str, Any]]:
        """``(prefix, name, tokenizer)`` of each second encoding, each distinct tokenizer loaded once (several
        teachers may share one)."""
        from lightning_kd.data.sources import load_tokenizer  # the data table is read only here

        loaded: dict[str, Any] = {}
        for _, name in self.encodings():
            if name not in loaded:
                loaded[name] = load_tokenizer(name)
        return [(prefix, name, loaded[name]) for prefix, name in self.encodings()]

    def tokenizer_of(self, index: int) -> str | None:
        """Teacher ``index``'s own tokenizer, or ``None`` when it reads the student's ids."""
        if self.shared is not None:
            return self.shared
        return self.per_teacher[index] if index < len(self.per_teacher) else None

    def prefix_of(self, index: int) -> str | None:
        """The batch-key prefix of teacher ``index``'s encoding, or ``None`` when it reads the student's ids."""
        if self.tokenizer_of(index) is None:
            return None
        return "teacher_" if self.shared is not None else f"teacher{index}_"

    def check_teachers(self, count: int) -> None:
        """A per-teacher list names every teacher.

        Raises:
            ValueError: the list's length differs from the number of teachers.
        """
        if self.per_teacher and len(self.per_teacher) != count:
            raise ValueError(
                f"teacher_tokenizer lists {len(self.per_teacher)} tokenizers for {count} teachers: give one entry per "
                "teacher (null for a teacher that reads the student's tokens), or one name for all of them."
            )

    def inputs(self, batch: dict[str, Tensor], index: int) -> dict[str, Tensor]:
        """The batch as teacher ``index`` reads it: its own encoding's keys without the prefix, plus the
        shared keys (:data:`SHARED_KEYS`); the batch itself when the teacher reads the student's ids.

        The prefixed keys stay in the result, so reading a teacher's batch again gives the same batch (the
        teacher cache hands a batch it was given to the live forward on a miss).

        Raises:
            KeyError: the batch carries no encoding for this teacher (a data module without ``teacher_tokenizer``).
        """
        prefix = self.prefix_of(index)
        if prefix is None:
            return batch
        if prefix + "input_ids" not in batch:
            raise KeyError(
                f"Teacher {index} reads its own tokenizer ({self.tokenizer_of(index)}), but the batch has no "
                f"{prefix}input_ids. Give the data module the same teacher_tokenizer (the CLI links it from data "
                "to model), so every batch carries the teacher's encoding of the same text."
            )
        inputs = {key: value for key, value in batch.items() if key.startswith(prefix) or key in SHARED_KEYS}
        inputs.update({key: batch[prefix + key] for key in ENCODING_KEYS if prefix + key in batch})
        return inputs
