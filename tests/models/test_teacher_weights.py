"""A teacher is checked against the weights it loads, not only its config.json's ``architectures``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lightning_kd.methods import KD
from lightning_kd.models.loading import load_model
from tests.conftest import make_tiny_bert


def _claiming(directory: Path, architecture: str) -> Path:
    """Rewrite ``config.json`` so it claims ``architecture`` (what a hand-edited or copied config does)."""
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, "architectures": [architecture]}))
    return directory


@pytest.fixture
def encoder_only(tmp_path):
    """A BERT encoder saved without any head (what a sentence-embedding checkpoint holds)."""
    make_tiny_bert("classification", seed=3).bert.save_pretrained(tmp_path / "encoder")
    return tmp_path / "encoder"


def test_a_classification_config_without_classifier_weights_is_refused(encoder_only):
    teacher = _claiming(encoder_only, "BertForSequenceClassification")
    with pytest.raises(ValueError) as error:
        load_model(str(teacher), "sequence_classification", 2, role="teacher")
    message = str(error.value)
    assert "classifier.bias, classifier.weight" in message and "BertForSequenceClassification" in message
    assert "fine-tune it on the task first" in message


def test_an_mlm_config_without_mlm_head_weights_is_refused(encoder_only):
    teacher = _claiming(encoder_only, "BertForMaskedLM")
    with pytest.raises(ValueError, match=r"lacks trained weights for cls\.predictions\..*masked-LM head"):
        load_model(str(teacher), "masked_lm", role="teacher")


def test_a_method_refuses_the_teacher_before_training(encoder_only):
    teacher = _claiming(encoder_only, "BertForSequenceClassification")
    with pytest.raises(ValueError, match="classifier.weight"):
        KD(teacher=str(teacher), student_init="teacher_uniform", student_layers=1, num_labels=2)


def test_a_student_may_start_with_a_fresh_head(encoder_only):
    student = _claiming(encoder_only, "BertForSequenceClassification")
    model = load_model(str(student), "sequence_classification", 2, role="student")
    assert model.classifier.weight.shape == (2, model.config.hidden_size)


@pytest.mark.parametrize(("kind", "head"), [("classification", "sequence_classification"), ("mlm", "masked_lm")])
def test_complete_teachers_load_with_their_weights(tmp_path, kind, head):
    saved = make_tiny_bert(kind, seed=5)
    saved.save_pretrained(tmp_path)
    loaded = load_model(str(tmp_path), head, 2 if kind == "classification" else None, role="teacher")
    for name, value in saved.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], value, msg=name)
