"""Label encoding: names, ids, booleans, scores, and class inference for user data."""

from __future__ import annotations

import pytest

from lightning_kd.data.labels import LabelEncoder, infer_label_encoder


def test_names_ids_and_booleans() -> None:
    encoder = LabelEncoder(2, ("False", "True"))
    assert [encoder.encode(v) for v in ("True", "false", 1, "0", True, False, 1.0)] == [1, 0, 1, 0, 1, 0, 1]


@pytest.mark.parametrize("raw", ["maybe", 2, "-1", None, "", 0.5])
def test_bad_class_labels_are_rejected(raw) -> None:
    with pytest.raises(ValueError):
        LabelEncoder(2, ("no", "yes")).encode(raw)


def test_regression_scores() -> None:
    encoder = LabelEncoder(1)
    assert encoder.encode("3.25") == 3.25 and encoder.encode(4) == 4.0
    with pytest.raises(ValueError, match="not a number"):
        encoder.encode("high")


def test_inferred_string_classes_are_sorted() -> None:
    encoder = infer_label_encoder(["pos", "neg", "pos", "neutral"])
    assert encoder.names == ("neg", "neutral", "pos") and encoder.encode("pos") == 2


def test_inferred_integer_classes_are_ids() -> None:
    encoder = infer_label_encoder(["0", "2", 1])
    assert encoder.num_labels == 3 and encoder.names is None and encoder.encode("2") == 2


def test_given_names_fix_the_mapping_and_must_cover_the_labels() -> None:
    assert infer_label_encoder(["b", "a"], ["b", "a"]).encode("a") == 1
    with pytest.raises(ValueError, match="'c'"):
        infer_label_encoder(["a", "c"], ["a", "b"])


def test_mixed_or_single_labels_are_errors() -> None:
    with pytest.raises(ValueError, match="mix"):
        infer_label_encoder(["pos", "1"])
    with pytest.raises(ValueError, match="single label"):
        infer_label_encoder(["pos", "pos"])
