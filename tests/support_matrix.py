"""The method × model-family support matrix: every cell either trains or is refused at construction.

A cell builds a method on tiny in-memory models of one family (a 4-layer teacher and a student made
of its layers 1 and 3, ``student_init: teacher_uniform``; :mod:`tests.families`) for one stage, then runs ``compute_losses`` + backward + one optimizer step.
Its outcome is ``ok`` (finite losses) or ``refused`` (a ``ValueError`` raised while constructing, whose
first sentence becomes the table's reason). Anything else — an exception at the step, a non-finite
loss, another exception type — is a failure of the test that runs the cell.

``python -m tests.support_matrix`` rewrites the README's support table from the cells' outcomes;
``tests/test_support_matrix.py`` runs every cell and checks that the README's table is the one the
cells produce, so the table cannot drift from the code.
"""

from __future__ import annotations

import re
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

import lightning_kd.methods as methods
import lightning_kd.methods.multi_teacher as mt
from tests.conftest import make_batch, write_tiny_tokenizer
from tests.families import DECODERS, FAMILIES, make_family_model
from tests.models.test_vocab_head import make_lm

STAGES = ("finetune", "pretrain")
README = Path(__file__).resolve().parents[1] / "README.md"
BEGIN, END = "<!-- support-matrix:begin -->", "<!-- support-matrix:end -->"


@dataclass(frozen=True)
class MethodSpec:
    """How a cell builds and prepares one method.

    Attributes:
        name: the class name in :mod:`lightning_kd.methods`.
        stages: the stages the method has (the README's methods table).
        knobs: constructor arguments suited to the tiny models, or a function ``(family, stage,
            directory) -> dict`` of them.
        prepare: sets the state a schedule callback would set during ``fit`` (stage, rate, …).
        teacher: whether the method takes a teacher.
        strategy: a multi-teacher strategy ``(family, stage) -> strategy``: the cell then distils
            ``name`` from two teachers of the family combined by it.
    """

    name: str
    stages: tuple[str, ...] = STAGES
    knobs: dict | Callable = field(default_factory=dict)
    prepare: Callable | None = None
    teacher: bool = True
    strategy: Callable | None = None
    label: str = ""

    @property
    def row(self) -> str:
        return self.label or self.name


def _set(**values) -> Callable:
    def prepare(method) -> None:
        for name, value in values.items():
            setattr(method, name, value)

    return prepare


def _rail(method) -> None:
    method.resample_teacher_layers()


def _logits_distil(family: str, stage: str, directory: Path) -> dict:
    if stage == "pretrain":
        return {}  # the masked-LM logits themselves
    # A classifier has no vocabulary head: each model's comes from its family's language model.
    return {"vocab_head": "mlm", "teacher_mlm_heads": [make_lm(family, 4, seed=1)], "student_mlm_head": make_lm(family, 2, seed=3)}


def _vocab_distil(family: str, stage: str, directory: Path) -> dict:
    return {**_logits_distil(family, stage, directory), "export_tokenizer": str(tokenizer_dir(directory)),
            "token_counts": _vocab_counts(directory), "size_multiple": 16}


SPECS = [
    MethodSpec("KD"),
    MethodSpec("StudentOnly", teacher=False),
    MethodSpec("TinyBERT"),
    MethodSpec("MiniLM"),
    MethodSpec("MiniLMv2", knobs={"relation_heads": 4}),
    MethodSpec("DistilBERT"),
    MethodSpec("ERDistill"),
    MethodSpec("MixBaseline", knobs={"methods": ["TinyBERT", "MiniLM"]}),
    MethodSpec("PKD", stages=("finetune",)),
    MethodSpec("ALPKD", stages=("finetune",)),
    MethodSpec("UniversalKD", stages=("finetune",)),
    MethodSpec("CKD"),
    MethodSpec("MGSKD", knobs={"relation_heads": 4, "sample_level_from": 1}),
    MethodSpec("LogitsDistil", knobs=_logits_distil),
    MethodSpec("VocabDistil", knobs=_vocab_distil),
    MethodSpec("Theseus", stages=("finetune",), prepare=_set(replacing_rate=0.5)),
    MethodSpec("RAILKD", prepare=_rail),
    MethodSpec("SID", stages=("finetune",), prepare=_set(stage=1)),
    MethodSpec("AnnealingKD", prepare=_set(teacher_scale=0.5)),
    MethodSpec("ContinuationKD", prepare=_set(teacher_scale=0.5, margin=0.0, hard_mix=0.5)),
    MethodSpec("LRCBERT", stages=("finetune",)),
    MethodSpec("DIITO", stages=("pretrain",)),
    MethodSpec("MobileBERT", stages=("pretrain",), knobs={"progressive": False}),
]
def _rl_kd(family: str, stage: str):
    classes = 2 if stage == "finetune" else 220  # the vocabulary when pre-training (MLM or causal LM)
    return mt.RLKD(num_teachers=2, num_classes=classes, semantic_model=make_family_model(family, layers=2, seed=5))


STRATEGIES = {
    "TMKD": lambda family, stage: mt.TMKD(),
    "DGKD": lambda family, stage: mt.DGKD(survival_p=0.5),
    "MTBERT": lambda family, stage: mt.MTBERT(),
    "Uncertainty": lambda family, stage: mt.Uncertainty(),
    "RLKD": _rl_kd,
    "MixMT": lambda family, stage: mt.MixMT([mt.Average(), mt.Uncertainty()]),
}
SPECS += [MethodSpec("KD", strategy=factory, label=f"KD + {name}") for name, factory in STRATEGIES.items()]
SPEC = {spec.row: spec for spec in SPECS}

#: Refusal messages → the reason the table gives (the family-independent part of the sentence).
REASONS = [
    (r"outside transformers' attention interface", "attention is computed outside transformers' attention "
     "interface (DeBERTa's disentangled attention, MPNet's relative position bias), so attention terms cannot read it"),
    (r"MobileBERT distils into a MobileBERT student", "needs a MobileBERT (inverted-bottleneck) student"),
    (r"mixes layer_types", "a teacher block mixes global and sliding-window layers, which one student layer "
     "cannot stand in for"),
    (r"attend differently", "the compared student and teacher layers use different attention (causal or "
     "sliding-window)"),
]


@dataclass(frozen=True)
class Outcome:
    """``ok`` or ``refused`` (with the refusal's first sentence); ``n/a`` where the stage does not apply."""

    status: str
    reason: str = ""


def applies(spec: MethodSpec, family: str, stage: str) -> bool:
    """Whether the cell exists: the method has the stage (every family has a pre-training head)."""
    return stage in spec.stages


def kind_of(family: str, stage: str) -> str:
    """The head a cell's models carry: a classifier when fine-tuning; when pre-training, the MLM head of
    an encoder and the causal-LM head of a decoder (the causal-LM stage)."""
    if stage == "finetune":
        return "classification"
    return "causal" if family in DECODERS else "mlm"


def reason(message: str) -> str:
    """The table's reason for a refusal: a known family-independent reason, else the first sentence."""
    for pattern, text in REASONS:
        if re.search(pattern, message):
            return text
    return re.split(r"(?<=[.;])\s", message.strip(), maxsplit=1)[0]


def _vocab_counts(directory: Path) -> str:
    path = directory / "counts.txt"
    if not path.exists():
        path.write_text("\n".join(str(1000 - i) for i in range(220)))
    return str(path)


def tokenizer_dir(directory: Path) -> Path:
    """The tiny WordPiece tokenizer, written once under ``directory``."""
    path = directory / "tokenizer"
    return path if path.exists() else write_tiny_tokenizer(path)


def run_cell(row: str, family: str, stage: str, directory: Path | None = None) -> Outcome:
    """Build the method of table row ``row`` on tiny ``family`` models for ``stage`` and take one optimizer step.

    Raises:
        AssertionError: a loss is not finite.
        Exception: anything raised after construction, or a non-``ValueError`` at construction.
    """
    spec = SPEC[row]
    name = spec.name
    if not applies(spec, family, stage):
        return Outcome("n/a")
    kind = kind_of(family, stage)
    directory = directory or Path(tempfile.mkdtemp())
    knobs = spec.knobs(family, stage, directory) if callable(spec.knobs) else dict(spec.knobs)
    if spec.strategy is not None:
        teachers = [make_family_model(family, kind, layers=4, seed=1), make_family_model(family, kind, layers=4, seed=4)]
        knobs.update(teachers=teachers, multi_teacher=spec.strategy(family, stage), student_init="teacher_uniform",
                     student_layers=2)
    elif spec.teacher:
        knobs.update(teacher=make_family_model(family, kind, layers=4, seed=1), student_init="teacher_uniform", student_layers=2)
    else:
        knobs["student"] = make_family_model(family, kind, layers=2, seed=2)
    try:
        method = getattr(methods, name)(**knobs)
    except ValueError as error:
        return Outcome("refused", reason(str(error)))
    if spec.prepare is not None:
        spec.prepare(method)
    method.train()
    batch = make_batch(kind)
    terms = method.compute_losses(batch)
    for term, value in terms.items():
        assert torch.isfinite(value).all(), f"{name} on {family} ({stage}): term {term} is {value}"
    optimizer = torch.optim.SGD([p for _, p in method.trainable_named_parameters()], lr=1e-3)
    terms["loss"].backward()
    optimizer.step()
    return Outcome("ok")


def cells() -> list[tuple[str, str, str]]:
    """Every ``(method, family, stage)`` of the matrix, applicable or not."""
    return [(spec.row, family, stage) for spec in SPECS for family in FAMILIES for stage in STAGES]


def table(outcomes: dict[tuple[str, str, str], Outcome]) -> str:
    """The README's support table: one row per method, one column per family; a cell shows the
    fine-tuning then the pre-training outcome — masked-LM for encoders, causal-LM (next-token) for
    decoders — (✅ trains, ❌ⁿ refused for reason n, – no such stage)."""
    reasons: list[str] = []

    def mark(outcome: Outcome) -> str:
        if outcome.status == "ok":
            return "✅"
        if outcome.status == "n/a":
            return "–"
        if outcome.reason not in reasons:
            reasons.append(outcome.reason)
        return f"❌{reasons.index(outcome.reason) + 1}"

    families = list(FAMILIES)
    lines = ["| method | " + " | ".join(families) + " |", "|---|" + "---|" * len(families)]
    for spec in SPECS:
        row = [" ".join(mark(outcomes[(spec.row, f, s)]) for s in STAGES) for f in families]
        lines.append(f"| {spec.row} | " + " | ".join(row) + " |")
    lines.append("")
    lines += [f"{i}. {reason}" for i, reason in enumerate(reasons, start=1)]
    return "\n".join(lines)


def readme_table(text: str | None = None) -> str:
    """The table currently between the README's markers."""
    text = README.read_text() if text is None else text
    return text.split(BEGIN, 1)[1].split(END, 1)[0].strip()


def write_readme(rendered: str) -> None:
    text = README.read_text()
    before, rest = text.split(BEGIN, 1)
    after = rest.split(END, 1)[1]
    README.write_text(f"{before}{BEGIN}\n{rendered}\n{END}{after}")


if __name__ == "__main__":
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        results = {}
        for cell in cells():
            try:
                results[cell] = run_cell(*cell, Path(tmp))
            except Exception as error:  # noqa: BLE001 - reported, the table is not written
                print(f"FAILED {cell}: {type(error).__name__}: {error}", file=sys.stderr)
                results[cell] = None
    if any(v is None for v in results.values()):
        sys.exit(1)
    write_readme(table(results))
    print(table(results))
