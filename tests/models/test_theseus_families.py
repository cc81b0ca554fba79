"""Theseus on every family: the hybrid calls teacher blocks exactly as the student's loop calls its own
layers (an all-teacher layout of a teacher-initialised student is the teacher, bit for bit; every
layout of a full-depth copy is the teacher), the training step and its gradients, low-precision
teachers, and the families and settings refused at construction."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForSequenceClassification
from transformers.cache_utils import DynamicCache

from lightning_kd.methods import Theseus
from lightning_kd.models.layer_stack import find_layer_stack
from lightning_kd.models.theseus import hybrid_layers
from lightning_kd.models.theseus_block import TeacherBlock
from tests.families import FAMILIES, family_config, make_family_model
from tests.models.family_inputs import family_batch

#: Teacher settings under which 4 → 2 blocks have one attention type each (the family defaults
#: of ModernBERT alternate full/sliding inside every block and are refused, see below).
TYPED = {
    "modernbert": {"layer_types": ["full_attention", "full_attention", "sliding_attention", "sliding_attention"]},
    "qwen2": {"use_sliding_window": True, "sliding_window": 4, "max_window_layers": 2},
}


def _with(family: str, layers: int, **attributes):
    """A tiny ``family`` classifier whose config has ``attributes`` set after it is built (the family
    builders pin some fields, e.g. the head count)."""
    config = family_config(family, layers)
    for name, value in attributes.items():
        setattr(config, name, value)
    config.num_labels = 2
    torch.manual_seed(3)
    return AutoModelForSequenceClassification.from_config(config)


def _albert_student(layers: int):
    """An ALBERT student with one group per layer (a shared group cannot be swapped per position)."""
    config = family_config("albert", layers)
    config.num_hidden_groups, config.num_labels = layers, 2
    torch.manual_seed(5)
    return AutoModelForSequenceClassification.from_config(config)


def _theseus(family: str, layers: int = 2, init: str = "teacher_uniform", **knobs) -> Theseus:
    teacher = make_family_model(family, **TYPED.get(family, {}))
    if family == "albert":
        knobs["student"] = _albert_student(layers)
    return Theseus(teacher=teacher, student_init=init, student_layers=layers, **knobs).eval()


def _hybrid_logits(method: Theseus, layout: list) -> torch.Tensor:
    batch = family_batch(method.student, labels=False)
    with torch.no_grad(), hybrid_layers(method.student, method.teachers, layout):
        return method.student(**batch).logits


def _teacher_logits(method: Theseus) -> torch.Tensor:
    with torch.no_grad():
        return method.teachers[0](**family_batch(method.student, labels=False)).logits


@pytest.mark.parametrize("family", FAMILIES)
def test_all_teacher_layout_of_a_teacher_initialised_student_is_the_teacher(family):
    method = _theseus(family)
    torch.testing.assert_close(_hybrid_logits(method, [0, 0]), _teacher_logits(method), rtol=0, atol=0)
    stack = find_layer_stack(method.student)
    assert stack.attribute not in stack.owner.__dict__, "the shadow list is gone after the call"


@pytest.mark.parametrize("family", FAMILIES)
def test_every_layout_of_a_full_depth_copy_is_the_teacher(family):
    """Blocks of one layer, student layers equal to the teacher's: mixed layouts interleave student
    layers (which write the student's cache slots on decoders) and teacher layers."""
    method = _theseus(family, layers=4, init="teacher_first")
    expected = _teacher_logits(method)
    for layout in ([0, None, 0, None], [None, 0, None, 0], [None, None, 0, 0]):
        torch.testing.assert_close(_hybrid_logits(method, layout), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("family", FAMILIES)
def test_training_step_on_a_mixed_layout_trains_the_student_only(family):
    method = _theseus(family)
    method.train()
    method.replacing_rate = 0.5
    method.draw_layout = lambda rate, generator=None: [None, 0]
    terms = method.compute_losses(family_batch(method.student))
    assert set(terms) == {"hard", "loss"} and torch.isfinite(terms["loss"])
    terms["loss"].backward()
    stack = find_layer_stack(method.student)
    assert any(p.grad is not None for p in stack.module_at(0).parameters()), "gradients flow through the teacher block"
    assert all(p.grad is None for p in stack.module_at(1).parameters()), "the replaced student layer is unused"
    assert all(p.grad is None and not p.requires_grad for p in method.teachers[0].parameters())
    assert not any("teacher" in name for name in method.student.state_dict())


@pytest.mark.parametrize("family", ["bert", "llama", "modernbert"])
def test_a_bfloat16_teacher_runs_in_its_own_precision(family):
    method = _theseus(family, teacher_precision="bfloat16")
    assert next(method.teachers[0].parameters()).dtype == torch.bfloat16
    hybrid = _hybrid_logits(method, [0, 0])
    assert hybrid.dtype == torch.float32
    torch.testing.assert_close(hybrid, _teacher_logits(method).float(), rtol=0.05, atol=0.05)


def test_teacher_blocks_answer_position_questions_as_the_student_layer():
    method = _theseus("modernbert")
    student_layers = method.student.model.layers
    block = TeacherBlock(list(method.teachers[0].model.layers[2:]), torch.float32, student_layers[1])
    assert block.attention_type == student_layers[1].attention_type == "sliding_attention"
    with pytest.raises(AttributeError, match="no attribute 'weight'"):
        block.weight


def test_a_cache_holding_earlier_tokens_is_refused():
    method = _theseus("llama")
    batch = family_batch(method.student, labels=False)
    cache = DynamicCache(config=method.student.config)
    with torch.no_grad():
        method.student(**batch, cache=cache, use_cache=True)
        with hybrid_layers(method.student, method.teachers, [0, 0]), pytest.raises(RuntimeError, match="already holds tokens"):
            method.student(input_ids=batch["input_ids"][:, :2], cache=cache, use_cache=True)


# ------------------------------------------------------------------ refusals at construction
def test_blocks_mixing_attention_types_are_refused():
    teacher = make_family_model("modernbert")  # full, sliding, full, sliding: every 4 → 2 block mixes both
    with pytest.raises(ValueError, match=r"ModernBERT: teacher 0's block for student position 0 \(teacher layers \[0, 1\]\) mixes layer_types"):
        Theseus(teacher=teacher, student_init="teacher_uniform", student_layers=2)
    Theseus(teacher=teacher, student_init="teacher_first", student_layers=4)  # one layer per block: fine


def test_a_position_whose_type_differs_from_its_block_is_refused():
    teacher = make_family_model("qwen2", **TYPED["qwen2"])  # full, full, sliding, sliding
    with pytest.raises(ValueError, match=r"Qwen2: student position 1 has layer_types 'full_attention'.*teacher_uniform"):
        Theseus(teacher=teacher, student_init="teacher_first", student_layers=2)


def test_a_shared_albert_student_is_refused():
    with pytest.raises(ValueError, match=r"ALBERT: the student's layers share modules.*num_hidden_groups = num_hidden_layers"):
        Theseus(teacher=make_family_model("albert"), student_init="teacher_uniform", student_layers=2)


def test_a_student_of_another_family_is_refused():
    student = make_family_model("roberta", layers=2, seed=3)
    with pytest.raises(ValueError, match=r"teacher 0 is BertForSequenceClassification \(bert\) and the student RobertaFor"):
        Theseus(teacher=make_family_model("bert"), student=student)


@pytest.mark.parametrize(
    ("family", "override", "field"),
    [
        ("llama", {"rope_parameters": {"rope_type": "default", "rope_theta": 500.0}}, "rope_parameters"),
        ("llama", {"head_dim": 4}, "head_dim"),
        ("mpnet", {"num_attention_heads": 2}, "num_attention_heads"),
        ("deberta_v2", {"position_buckets": 8}, "position_buckets"),
        ("modernbert", {"local_attention": 4}, "local_attention"),
    ],
)
def test_students_whose_loop_builds_other_layer_inputs_are_refused(family, override, field):
    single_type = {"layer_types": ["full_attention"] * 4} if family == "modernbert" else {}
    teacher = make_family_model(family, **single_type)
    student = _with(family, 2, **override, **({"layer_types": ["full_attention"] * 2} if single_type else {}))
    with pytest.raises(ValueError, match=rf"student's {field} is .* but teacher 0's is"):
        Theseus(teacher=teacher, student=student)


def test_deberta_convolution_is_refused():
    teacher = make_family_model("deberta_v2", conv_kernel_size=3)
    with pytest.raises(ValueError, match="conv_kernel_size"):
        Theseus(teacher=teacher, student_init="teacher_uniform", student_layers=2)
