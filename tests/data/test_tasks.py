"""The task table: names, aliases, errors, and internal consistency."""

from __future__ import annotations

import pytest

from lightning_kd.data import TASKS, TaskSpec, get_task
from lightning_kd.data.tasks import METRIC_NAMES


@pytest.mark.parametrize(
    ("alias", "name"),
    [
        ("SST-2", "sst2"), ("sst2", "sst2"), ("sst_2", "sst2"), ("STS-B", "stsb"), ("stsb", "stsb"),
        ("MNLI-MM", "mnli-mm"), ("mnli_mismatched", "mnli-mm"), ("mnli-m", "mnli"), ("CoLA", "cola"),
        ("BoolQ", "boolq"), ("MultiRC", "multirc"), ("superglue_rte", "superglue-rte"), ("RTE", "rte"),
        ("rotten-tomatoes", "rotten_tomatoes"), ("custom", "text-classification"), ("regression", "text-regression"),
    ],
)
def test_aliases_resolve_case_insensitively(alias: str, name: str) -> None:
    assert get_task(alias).name == name


def test_unknown_task_lists_every_valid_name() -> None:
    with pytest.raises(ValueError, match="Unknown task 'sst3'") as error:
        get_task("sst3")
    for name in TASKS:
        assert name in str(error.value)


def test_record_is_refused_with_a_reason() -> None:
    with pytest.raises(ValueError, match="ReCoRD is not supported"):
        get_task("ReCoRD")


@pytest.mark.parametrize("spec", TASKS.values(), ids=list(TASKS))
def test_specs_are_consistent(spec: TaskSpec) -> None:
    assert set(spec.metrics) <= set(METRIC_NAMES) and spec.main_metric in spec.metrics
    assert spec.text_fields in (("text_a",), ("text_a", "text_b"))
    if spec.label_names is not None:
        assert len(spec.label_names) == spec.num_labels
    if spec.is_regression:
        assert spec.label_names is None and set(spec.metrics) <= {"pearson", "spearman"}
    if spec.benchmark in ("glue", "superglue"):
        assert spec.directory and spec.files and spec.layout is not None and spec.texts is not None
        assert spec.files.test == spec.files.validation, "GLUE/SuperGLUE test labels are hidden: test reads dev"


def test_metric_choices_follow_the_benchmarks() -> None:
    assert get_task("cola").main_metric == "matthews"
    assert get_task("stsb").metrics == ("pearson", "spearman") and get_task("stsb").num_labels == 1
    assert "f1" in get_task("mrpc").metrics and "f1" in get_task("cb").metrics
    assert get_task("mnli-mm").files.validation == "dev_mismatched.tsv"
    assert get_task("mnli").files.validation == "dev_matched.tsv"
