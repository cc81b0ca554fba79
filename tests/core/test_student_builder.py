"""The student builder on its own (no DistillationModule): each initialisation mode, activation
checkpointing, the vocabulary check and the head inference."""

from __future__ import annotations

import pytest
import torch

from lightning_kd.core.student_builder import build_student, check_vocabularies, infer_task_head
from lightning_kd.models.loading import is_activation_checkpointing
from tests.conftest import make_tiny_bert

HEAD = "sequence_classification"


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and torch.equal(a, b)


def test_pretrained_keeps_the_weights_and_random_draws_new_ones(tmp_path):
    saved = make_tiny_bert(seed=2, layers=2, hidden=16)
    saved.save_pretrained(tmp_path)
    weight = "bert.encoder.layer.0.output.dense.weight"
    pretrained = build_student(str(tmp_path), "pretrained", None, head=HEAD, num_labels=2)
    assert _same(pretrained.state_dict()[weight], saved.state_dict()[weight])
    torch.manual_seed(7)
    fresh = build_student(str(tmp_path), "random", None, head=HEAD, num_labels=2)
    assert not _same(fresh.state_dict()[weight], saved.state_dict()[weight])
    assert pretrained.training and fresh.training  # dropout on: from_pretrained returns eval mode


def test_a_built_student_is_returned_in_train_mode_with_activation_checkpointing_on_request():
    student = make_tiny_bert(seed=2, layers=2, hidden=16).eval()
    built = build_student(student, "pretrained", None, head=HEAD, activation_checkpointing=True)
    assert built is student and built.training and is_activation_checkpointing(built)
    assert not is_activation_checkpointing(build_student(make_tiny_bert(seed=2), "pretrained", None, head=HEAD))


@pytest.mark.parametrize("init,layers,chosen", [("teacher_first", 2, [0, 1]), ("teacher_uniform", 2, [1, 3]), ("teacher_layers", [3, 0], [3, 0])])
def test_teacher_layers_are_copied_without_a_student_source(init, layers, chosen):
    teacher = make_tiny_bert(seed=1, layers=4)
    student = build_student(None, init, layers, head=HEAD, teachers=[teacher])
    assert type(student) is type(teacher) and student.config.num_hidden_layers == len(chosen)
    ours, theirs = student.state_dict(), teacher.state_dict()
    for position, layer in enumerate(chosen):
        name = "attention.self.query.weight"
        assert _same(ours[f"bert.encoder.layer.{position}.{name}"], theirs[f"bert.encoder.layer.{layer}.{name}"])
    assert _same(ours["classifier.weight"], theirs["classifier.weight"])


def test_teacher_layers_fill_a_given_student_of_the_teachers_width(tmp_path):
    teacher = make_tiny_bert(seed=1, layers=4)
    make_tiny_bert(seed=2, layers=2).save_pretrained(tmp_path)  # the architecture; its weights are replaced
    student = build_student(str(tmp_path), "teacher_uniform", 2, head=HEAD, num_labels=2, teachers=[teacher])
    name = "attention.output.dense.weight"
    assert _same(student.state_dict()[f"bert.encoder.layer.1.{name}"], teacher.state_dict()[f"bert.encoder.layer.3.{name}"])
    make_tiny_bert(seed=2, layers=3).save_pretrained(tmp_path / "three")
    with pytest.raises(ValueError, match="config has 3 layers but 2 teacher layers"):
        build_student(str(tmp_path / "three"), "teacher_uniform", 2, head=HEAD, num_labels=2, teachers=[teacher])


def test_wrong_arguments_for_a_mode_are_refused():
    teacher, student = make_tiny_bert(seed=1), make_tiny_bert(seed=2, layers=2)
    with pytest.raises(ValueError, match="needs `student`"):
        build_student(None, "pretrained", None, head=HEAD)
    with pytest.raises(ValueError, match="student_layers only applies"):
        build_student(student, "pretrained", 2, head=HEAD)
    with pytest.raises(ValueError, match="copies layers of a teacher .* of `student`"):
        build_student(None, "teacher_first", 2, head=HEAD)
    with pytest.raises(ValueError, match="as a list"):
        build_student(None, "teacher_layers", 2, head=HEAD, teachers=[teacher])
    with pytest.raises(ValueError, match="as a layer count"):
        build_student(None, "teacher_uniform", [0, 1], head=HEAD, teachers=[teacher])
    with pytest.raises(ValueError, match="between 1 and 4"):
        build_student(None, "teacher_first", 9, head=HEAD, teachers=[teacher])


def test_vocabularies_must_agree():
    student = make_tiny_bert(seed=2, layers=2)
    check_vocabularies(student, [make_tiny_bert(seed=1)])
    with pytest.raises(ValueError, match="Teacher 1 has a vocabulary of 300 tokens but the student has 220"):
        check_vocabularies(student, [make_tiny_bert(seed=1), make_tiny_bert(seed=3, vocab_size=300)])


def test_the_head_comes_from_the_first_teacher_then_the_student(tmp_path):
    mlm, classifier = make_tiny_bert("mlm", seed=1), make_tiny_bert(seed=2)
    assert infer_task_head([mlm], classifier) == "masked_lm"
    assert infer_task_head([], classifier) == "sequence_classification"
    classifier.save_pretrained(tmp_path)
    assert infer_task_head([str(tmp_path)], None) == "sequence_classification"
    with pytest.raises(ValueError, match="set task_head"):
        infer_task_head([], None)


def test_without_a_teacher_the_layers_come_from_the_student_source():
    """The no-teacher baseline (StudentOnly) cuts its own source: the same weights a distilled student
    of those layers starts from."""
    from tests.families import make_family_model

    source = make_family_model("llama", "causal", layers=4, seed=1)
    alone = build_student(source, "teacher_first_last", 2, head="causal_lm")
    distilled = build_student(None, "teacher_first_last", 2, head="causal_lm", teachers=[source])
    assert alone.config.num_hidden_layers == 2
    for (name, ours), (_, theirs) in zip(alone.state_dict().items(), distilled.state_dict().items()):
        assert torch.equal(ours, theirs), name
    torch.testing.assert_close(alone.model.layers[1].mlp.up_proj.weight, source.model.layers[3].mlp.up_proj.weight)
