"""Student initialisation from teacher layers on every family: through KD's public API, the copied
weights and per-layer types, layer indices, export → plain-transformers reload, ALBERT's shared
groups, and the refusals (other family, mismatched layer types, index-scaled GPT-2 attention)."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForMaskedLM, AutoModelForSequenceClassification

from lightning_kd.methods import KD
from lightning_kd.models.layer_stack import LayerStackNotFound, find_layer_stack
from lightning_kd.models.student_init import copy_teacher_weights, truncated_copy
from tests.families import DECODERS, FAMILIES, family_config, make_family_model
from tests.models.family_inputs import family_batch

HEADS = [(f, "classification") for f in FAMILIES] + [(f, "mlm") for f in FAMILIES if f not in DECODERS]


def _kd(teacher, **knobs):
    return KD(teacher=teacher, student_init="teacher_uniform", student_layers=2, **knobs)


def _layer_state(model, slot: int) -> dict[str, torch.Tensor]:
    stack = find_layer_stack(model)
    return {name: t for name, t in stack.modules[slot].state_dict().items()}


@pytest.mark.parametrize("family", FAMILIES)
def test_teacher_uniform_copies_the_chosen_layers_with_their_types(family):
    teacher = make_family_model(family)
    student = _kd(teacher).student
    t_stack, s_stack = find_layer_stack(teacher), find_layer_stack(student)
    assert student.config.num_hidden_layers == 2 and type(student) is type(teacher)
    for position, layer in enumerate([1, 3]):  # uniform 4 → 2: the last layer of each half
        theirs = t_stack.module_at(layer).state_dict()
        for name, tensor in s_stack.module_at(position).state_dict().items():
            torch.testing.assert_close(tensor, theirs[name], rtol=0, atol=0)
    if family == "modernbert":  # layers 1 and 3 are the sliding-window ones
        assert student.config.layer_types == ["sliding_attention"] * 2
        assert [layer.attention_type for layer in student.model.layers] == ["sliding_attention"] * 2
    for position, layer in enumerate(s_stack.modules):
        indices = {m.layer_idx for m in layer.modules() if getattr(m, "layer_idx", None) is not None}
        assert indices <= {position}, "layers are built at their new positions (cache slots 0…L_S−1)"


@pytest.mark.parametrize(("family", "kind"), HEADS)
def test_layer_copied_students_export_and_reload_with_plain_transformers(family, kind, tmp_path):
    method = _kd(make_family_model(family, kind))
    target = method.export_student(tmp_path / "student")
    auto = AutoModelForMaskedLM if kind == "mlm" else AutoModelForSequenceClassification
    reloaded = auto.from_pretrained(target).eval()
    student = method.student.eval()
    assert reloaded.config.num_hidden_layers == 2
    batch = family_batch(student, kind, labels=False)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**batch).logits, student(**batch).logits, rtol=1e-5, atol=1e-5)


def test_layer_types_follow_the_copied_layers_through_export(tmp_path):
    teacher = make_family_model("qwen2", use_sliding_window=True, sliding_window=4, max_window_layers=2)
    method = KD(teacher=teacher, student_init="teacher_layers", student_layers=[1, 2, 3])
    assert method.student.config.layer_types == ["full_attention", "sliding_attention", "sliding_attention"]
    reloaded = AutoModelForSequenceClassification.from_pretrained(method.export_student(tmp_path / "s"))
    assert reloaded.config.layer_types == ["full_attention", "sliding_attention", "sliding_attention"]


def test_albert_shared_group_is_copied_once_and_applied_fewer_times():
    teacher = make_family_model("albert")
    student = _kd(teacher).student
    assert (student.config.num_hidden_layers, student.config.num_hidden_groups) == (2, 1)
    for name, tensor in _layer_state(student, 0).items():
        torch.testing.assert_close(tensor, _layer_state(teacher, 0)[name], rtol=0, atol=0)


def _albert(layers: int, groups: int, seed: int = 0):
    config = family_config("albert", layers)
    config.num_hidden_groups, config.num_labels = groups, 2
    torch.manual_seed(seed)
    return AutoModelForSequenceClassification.from_config(config)


def test_albert_groups_are_copied_group_by_group():
    teacher = _albert(4, 2)  # layers 0,1 run group 0; layers 2,3 group 1
    student = truncated_copy(teacher, [1, 3])
    assert student.config.num_hidden_groups == 2
    for slot in (0, 1):
        for name, tensor in _layer_state(student, slot).items():
            torch.testing.assert_close(tensor, _layer_state(teacher, slot)[name], rtol=0, atol=0)
    assert truncated_copy(teacher, [0, 1]).config.num_hidden_groups == 1
    # a student with a group per layer takes the shared teacher group at both
    unshared = _albert(2, 2, seed=3)
    copy_teacher_weights(make_family_model("albert"), unshared, [1, 3])
    torch.testing.assert_close(_layer_state(unshared, 0)["albert_layers.0.ffn.weight"], _layer_state(unshared, 1)["albert_layers.0.ffn.weight"])


def test_albert_groups_that_no_student_can_hold_are_refused():
    with pytest.raises(ValueError, match=r"run groups \[0, 1, 1\].*equal runs"):
        truncated_copy(_albert(4, 2), [0, 2, 3])
    with pytest.raises(ValueError, match=r"group 0 is shared.*different teacher groups \[0, 1\]"):
        copy_teacher_weights(_albert(4, 2), _albert(2, 1, seed=2), [1, 3])


@pytest.mark.parametrize(
    ("teacher_family", "student_family", "matched"),
    [("bert", "distilbert", "0 of 36"), ("roberta", "distilbert", "0 of 36"), ("mpnet", "bert", "12 of 39"),
     ("bert", "roberta", "32 of 37"), ("llama", "qwen2", "20 of 26")],
)
def test_copies_across_families_are_refused_with_the_match_count(teacher_family, student_family, matched):
    teacher, student = make_family_model(teacher_family), make_family_model(student_family, layers=2, seed=4)
    with pytest.raises(ValueError, match=rf"matched {matched} student tensors.*student of the teacher's family.*pretrained or random"):
        KD(teacher=teacher, student=student, student_init="teacher_uniform", student_layers=2)


def test_a_student_whose_layer_types_differ_from_the_copied_layers_is_refused():
    teacher = make_family_model("modernbert")  # full, sliding, full, sliding
    student = make_family_model("modernbert", layers=2, seed=4)  # full, sliding
    with pytest.raises(ValueError, match=r"student layer 0 has layer_types 'full_attention'.*teacher layer it copies \(1\)"):
        KD(teacher=teacher, student=student, student_init="teacher_uniform", student_layers=2)
    KD(teacher=teacher, student=student, student_init="teacher_first", student_layers=2)  # types 0, 1 match


def test_gpt2_index_scaled_attention_keeps_layer_indices():
    teacher = make_family_model("gpt2", scale_attn_by_inverse_layer_idx=True)
    with pytest.raises(ValueError, match="scale_attn_by_inverse_layer_idx.*teacher_first"):
        _kd(teacher)
    assert KD(teacher=teacher, student_init="teacher_first", student_layers=2).student.config.num_hidden_layers == 2


def test_a_model_without_a_findable_layer_list_names_the_fix(monkeypatch):
    teacher = make_family_model("bert")
    monkeypatch.setattr(teacher.bert.encoder, "layer", torch.nn.ModuleList(list(teacher.bert.encoder.layer)[:3]))
    with pytest.raises(LayerStackNotFound, match=r"BertForSequenceClassification \(bert\).*student_init: pretrained or random"):
        _kd(teacher)
