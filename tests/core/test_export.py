"""Student export: plain HF directory, atomic replacement, nothing half-written on failure."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from lightning_kd.core.export import export_model
from lightning_kd.methods import KD
from lightning_kd.models.student_init import copy_teacher_weights, truncated_copy
from tests.conftest import make_batch, make_tiny_bert


def test_export_writes_loadable_model_and_tokenizer(tmp_path, tiny_tokenizer_dir, tiny_teacher, tiny_student):
    method = KD(teacher=tiny_teacher, student=tiny_student, export_tokenizer=str(tiny_tokenizer_dir))
    target = method.export_student(tmp_path / "student")
    assert (target / "config.json").exists() and (target / "model.safetensors").exists()
    assert AutoTokenizer.from_pretrained(target).vocab_size == AutoTokenizer.from_pretrained(tiny_tokenizer_dir).vocab_size
    reloaded = AutoModelForSequenceClassification.from_pretrained(target)
    assert reloaded.config.num_hidden_layers == 2


def test_export_replaces_atomically_and_keeps_old_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "student"
    first = make_tiny_bert(seed=1, layers=2)
    export_model(first, target)
    before = (target / "model.safetensors").read_bytes()

    second = make_tiny_bert(seed=2, layers=2)

    def broken_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(second, "save_pretrained", broken_save)
    with pytest.raises(OSError, match="disk full"):
        export_model(second, target)
    assert (target / "model.safetensors").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["student"], "no staging directory may be left behind"

    export_model(make_tiny_bert(seed=3, layers=2), target)
    assert (target / "model.safetensors").read_bytes() != before
    assert [p.name for p in tmp_path.iterdir()] == ["student"]


def test_truncated_copy_takes_the_chosen_teacher_layers():
    teacher = make_tiny_bert(seed=1)
    student = truncated_copy(teacher, [1, 3])
    t_layers, s_layers = teacher.bert.encoder.layer, student.bert.encoder.layer
    torch.testing.assert_close(s_layers[0].output.dense.weight, t_layers[1].output.dense.weight)
    torch.testing.assert_close(s_layers[1].attention.self.query.weight, t_layers[3].attention.self.query.weight)
    torch.testing.assert_close(student.classifier.weight, teacher.classifier.weight)
    torch.testing.assert_close(student.bert.embeddings.word_embeddings.weight, teacher.bert.embeddings.word_embeddings.weight)


def test_width_mismatch_needs_explicit_truncation():
    teacher, student = make_tiny_bert(seed=1), make_tiny_bert(seed=2, layers=2, hidden=16)
    with pytest.raises(ValueError, match="allow_width_truncation"):
        copy_teacher_weights(teacher, student, [0, 1])
    copy_teacher_weights(teacher, student, [0, 1], allow_width_truncation=True)
    torch.testing.assert_close(
        student.bert.encoder.layer[1].attention.self.query.weight, teacher.bert.encoder.layer[1].attention.self.query.weight[:16, :16]
    )
    assert torch.isfinite(student(**{k: v for k, v in make_batch().items() if k != "labels"}).logits).all()
