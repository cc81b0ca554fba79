"""Student export: plain HF directory, atomic replacement, nothing half-written on failure, and it replaces
nothing but an earlier export (never a user's files, never the run's own directories)."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from lightning_kd.core.export import export_model
from lightning_kd.core.export_target import ExportTargetError, check_export_target, check_writable
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


# ---------------------------------------------------------------------- what an export may replace


def _user_directory(path):
    """A directory a user filled by hand: a saved model plus their own notes and a folder."""
    make_tiny_bert(seed=4, layers=2).save_pretrained(path)
    (path / "NOTES.txt").write_text("my notes")
    (path / "sub").mkdir()
    (path / "sub" / "data.csv").write_text("a,b\n")
    return sorted(p.relative_to(path).as_posix() for p in path.rglob("*"))


def test_export_refuses_a_directory_it_did_not_write_and_deletes_nothing(tmp_path):
    target = tmp_path / "mine"
    before = _user_directory(target)
    with pytest.raises(ExportTargetError, match=r"did not write \(NOTES.txt, config.json, model.safetensors, sub/\).*new or empty"):
        export_model(make_tiny_bert(seed=1, layers=2), target)
    assert sorted(p.relative_to(target).as_posix() for p in target.rglob("*")) == before
    assert [p.name for p in tmp_path.iterdir()] == ["mine"], "nothing staged either: the check comes first"


def test_an_earlier_export_is_replaced_but_not_once_a_user_added_files(tmp_path):
    target = tmp_path / "student"
    export_model(make_tiny_bert(seed=1, layers=2), target, metadata={"method": "KD"})
    marker = json.loads((target / "distillation.json").read_text())
    assert marker["library"] == "lightning_kd" and marker["method"] == "KD"
    assert marker["files"] == sorted(p.name for p in target.iterdir() if p.name != "distillation.json")
    export_model(make_tiny_bert(seed=2, layers=2), target)  # its own earlier export: replaced
    (target / "NOTES.txt").write_text("mine")
    with pytest.raises(ExportTargetError, match=r"\(NOTES.txt\)"):
        export_model(make_tiny_bert(seed=3, layers=2), target)
    assert (target / "NOTES.txt").read_text() == "mine"


def test_an_empty_directory_and_an_export_from_before_the_file_list_are_replaced(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    export_model(make_tiny_bert(seed=1, layers=2), empty)
    legacy = tmp_path / "legacy"
    make_tiny_bert(seed=1, layers=2).save_pretrained(legacy)
    (legacy / "distillation.json").write_text(json.dumps({"method": "KD", "library": "lightning_kd"}))
    export_model(make_tiny_bert(seed=2, layers=2), legacy)
    assert "files" in json.loads((legacy / "distillation.json").read_text())
    foreign_marker = tmp_path / "foreign"
    make_tiny_bert(seed=1, layers=2).save_pretrained(foreign_marker)
    (foreign_marker / "distillation.json").write_text(json.dumps({"library": "other"}))
    with pytest.raises(ExportTargetError, match="did not write"):
        export_model(make_tiny_bert(seed=2, layers=2), foreign_marker)


def test_a_run_directory_or_one_above_it_is_refused_one_inside_is_not(tmp_path):
    checkpoints = tmp_path / "run" / "checkpoints"
    run = [("checkpoint directory", checkpoints)]
    with pytest.raises(ExportTargetError, match=r"is this run's checkpoint directory .*e\.g\. .*checkpoints/student"):
        check_export_target(checkpoints, run)
    with pytest.raises(ExportTargetError, match=r"run holds this run's checkpoint directory"):
        check_export_target(tmp_path / "run", run)
    with pytest.raises(ExportTargetError, match="holds this run's"):
        check_export_target(tmp_path, run)
    assert check_export_target(tmp_path / "run" / "student", run) == (tmp_path / "run" / "student").resolve()


def test_an_unwritable_place_is_reported_before_anything_is_written(tmp_path, monkeypatch):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(ExportTargetError, match="is a file, not a directory"):
        check_writable(blocker / "deeper" / "student")
    check_writable(tmp_path / "new" / "deeper" / "student")  # missing parents are created at export time
    assert [p.name for p in tmp_path.iterdir()] == ["a_file"], "the probe creates nothing that stays"

    import lightning_kd.core.export_target as export_target

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(export_target.tempfile, "mkstemp", refuse)
    with pytest.raises(ExportTargetError, match=r"is not writable \(Permission denied\)"):
        check_writable(tmp_path / "student")


def test_a_read_only_export_directory_is_refused_not_replaced(tmp_path):
    target = tmp_path / "student"
    target.mkdir()
    target.chmod(0o555)
    try:
        with pytest.raises(ExportTargetError, match=r"the directory is read-only \(mode 555\)"):
            check_writable(target)
        assert oct(target.stat().st_mode & 0o777) == "0o555"
    finally:
        target.chmod(0o755)
    check_writable(target)  # writable again: accepted
