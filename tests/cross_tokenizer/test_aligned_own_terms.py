"""Methods whose own terms compare positions or pooled vectors, with a teacher of another tokenizer.

LRC-BERT, CKD and MGSKD read the teacher aligned to the student's tokens (``MethodHooks.aligned_teacher``);
ALP-KD and SID with ``attention_weight: 0`` pool each model over its own tokens. Each trains a step on a real
WordPiece (student) / byte-level BPE (teacher) batch, with gradients reaching the student only; LRC-BERT's
aligned contrastive distance is checked against a loop over explicitly averaged teacher vectors on hand-made
offsets; the combinations that stay refused say why. (That each equals its same-tokenizer value when the
teacher's encoding is the student's own: ``test_every_method.py``.)
"""

from __future__ import annotations

import copy

import pytest
import torch

import lightning_kd.methods as methods
from lightning_kd.data import GlueDataModule
from tests.conftest import make_batch
from tests.cross_tokenizer.tokenizers import classification_assets, overlap_means
from tests.families import make_family_model


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """Student (WordPiece) and teacher (byte-level BPE) tokenizer directories and one batch carrying both encodings."""
    files = classification_assets(tmp_path_factory.mktemp("aligned_own_terms"))
    module = GlueDataModule("text-classification", files["student"], train_file=files["data"], validation_file=files["data"],
                            batch_size=6, teacher_tokenizer=files["teacher"])
    module.setup("fit")
    return {"student": files["student"], "teacher": files["teacher"], "batch": next(iter(module.val_dataloader())),
            "student_vocab": len(files["wordpiece"]), "teacher_vocab": len(files["bpe"])}


def _method(name: str, assets, **knobs):
    teacher = make_family_model("roberta", layers=4, seed=1, vocab_size=assets["teacher_vocab"])
    student = make_family_model("bert", layers=2, seed=2, vocab_size=assets["student_vocab"])
    method = getattr(methods, name)(student=student, teacher=teacher, teacher_tokenizer=assets["teacher"],
                                    export_tokenizer=assets["student"], **knobs)
    return method.train()


#: Each method with settings that run across tokenizers, and the terms of its own it must produce.
ACROSS = {
    "LRCBERT": ("LRCBERT", {}, {"contrastive"}),
    "LRCBERT perturbed": ("LRCBERT", {"gradient_perturbation": True, "forward_repeats": 1}, {"contrastive"}),
    "CKD": ("CKD", {}, {"word_distance", "word_angle", "layer_distance", "layer_angle"}),
    "MGSKD": ("MGSKD", {"relation_heads": 4, "sample_level_from": 2, "triplet_anchors": 3, "triplet_neighbours": 3},
              {"token", "span", "sample"}),
    "ALPKD": ("ALPKD", {}, {"alp"}),
    "SID": ("SID", {"attention_weight": 0.0}, {"cls_cosine"}),
}


@pytest.mark.parametrize("case", list(ACROSS))
def test_a_training_step_with_a_teacher_of_another_tokenizer_moves_the_student_only(case, assets):
    name, knobs, own_terms = ACROSS[case]
    method = _method(name, assets, **knobs)
    if name == "SID":
        method.stage = 2  # both student layers matched
    teachers = list(method.teachers)
    optimizer = torch.optim.SGD(method.parameters(), lr=0.1)
    before = [p.detach().clone() for p in method.student.parameters()]
    torch.manual_seed(0)
    terms = method.compute_losses(assets["batch"])
    assert own_terms <= set(terms)
    assert all(bool(torch.isfinite(value).all()) for value in terms.values())
    assert all(float(terms[name_].detach()) != 0 for name_ in own_terms)  # the teacher does reach every own term
    terms["loss"].backward()
    assert all(p.grad is None for teacher in teachers for p in teacher.parameters())
    grads = [p.grad for p in method.student.parameters() if p.grad is not None]
    assert grads and all(bool(torch.isfinite(grad).all()) for grad in grads)
    optimizer.step()
    moved = [not torch.equal(a, p.detach()) for a, p in zip(before, method.student.parameters())]
    assert any(moved)


def _hand_batch() -> dict[str, torch.Tensor]:
    """Two encodings of three texts with hand-made character spans.

    Row 0, "unhappy cats": student ``[CLS] un ##happy cats [SEP] [PAD]``, teacher ``unh appy Ġcats <pad> <pad>``
    (student "##happy" shares characters with two teacher tokens; the specials have none).
    Row 1, "a dog": student ``[CLS] a dog [SEP] [PAD] [PAD]``, teacher ``a Ġdog <pad> …``.
    Row 2, "warm mats": student ``[CLS] warm mat ##s [SEP] [PAD]``, teacher ``warm Ġmats <pad> …`` (two student
    tokens inside one teacher token).
    """
    student_spans = [
        [(0, 0), (0, 2), (2, 7), (8, 12), (0, 0), (0, 0)],
        [(0, 0), (0, 1), (2, 5), (0, 0), (0, 0), (0, 0)],
        [(0, 0), (0, 4), (5, 8), (8, 9), (0, 0), (0, 0)],
    ]
    student_mask = [[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 0]]
    teacher_spans = [
        [(0, 3), (3, 7), (7, 12), (0, 0), (0, 0)],
        [(0, 1), (1, 5), (0, 0), (0, 0), (0, 0)],
        [(0, 4), (4, 9), (0, 0), (0, 0), (0, 0)],
    ]
    teacher_mask = [[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 1, 0, 0, 0]]
    generator = torch.Generator().manual_seed(3)
    student_ids = torch.randint(5, 200, (3, 6), generator=generator)
    student_ids[:, 0] = 2
    return {
        "input_ids": student_ids, "attention_mask": torch.tensor(student_mask),
        "token_type_ids": torch.zeros(3, 6, dtype=torch.long), "offset_mapping": torch.tensor(student_spans),
        "labels": torch.tensor([0, 1, 0]),
        "teacher_input_ids": torch.randint(5, 200, (3, 5), generator=generator) * torch.tensor(teacher_mask),
        "teacher_attention_mask": torch.tensor(teacher_mask), "teacher_offset_mapping": torch.tensor(teacher_spans),
    }


def test_lrc_berts_contrastive_term_equals_a_loop_over_the_partnered_tokens_of_hand_made_spans():
    teacher, student = make_family_model("roberta", layers=4, seed=1), make_family_model("bert", layers=2, seed=2)
    method = methods.LRCBERT(student=student, teacher=copy.deepcopy(teacher), teacher_tokenizer="teacher-tokenizer",
                             export_tokenizer="student-tokenizer", contrastive_weight=0.5).eval()
    batch = _hand_batch()
    got = method.compute_losses(batch)["contrastive"]
    with torch.no_grad():
        s_states = student.eval()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                  output_hidden_states=True).hidden_states
        t_states = teacher.eval()(input_ids=batch["teacher_input_ids"], attention_mask=batch["teacher_attention_mask"],
                                  output_hidden_states=True).hidden_states
        projection = method.projections[0]
        pairs = method.layer_pairs[0]
        layers, rows, length = len(pairs), *batch["input_ids"].shape
        student_layers = [projection(s_states[i]) for i, _ in pairs]
        teacher_layers, partner = [], None
        for _, j in pairs:
            aligned, partner = overlap_means(batch, t_states[j])
            teacher_layers.append(aligned)
        assert partner.tolist() == [[False, True, True, True, False, False], [False, True, True, False, False, False],
                                    [False, True, True, True, False, False]]
        distance = torch.zeros(rows, rows)
        for b in range(rows):
            for c in range(rows):
                total = 0.0
                for layer in range(layers):
                    for n in range(length):
                        if partner[b, n] and partner[c, n]:  # a partnerless token on either side adds a cosine of 0
                            u, v = student_layers[layer][b, n], teacher_layers[layer][c, n]
                            total += float(u @ v / (u.norm() * v.norm()))
                distance[b, c] = 1.0 - total / (layers * length)
        losses = [1.0 + 1.5 * distance[b, b] - (distance[b].sum() - distance[b, b]) / (2 * (rows - 1)) for b in range(rows)]
        want = 0.5 * layers * sum(losses) / rows
    torch.testing.assert_close(got.detach(), torch.as_tensor(float(want)), rtol=1e-5, atol=1e-6)


def test_sid_attention_weight_validates_and_turns_the_attention_term_and_its_request_off():
    def sid(**knobs):
        return methods.SID(student=make_family_model("bert", layers=2, seed=2), teacher=make_family_model("bert", layers=4, seed=1),
                           **knobs)

    with pytest.raises(ValueError, match="attention_weight must be >= 0"):
        sid(attention_weight=-1.0)
    with pytest.raises(ValueError, match="reduction only applies to the attention term"):
        sid(attention_weight=0.0, reduction="gkd")
    on, off = sid().eval(), sid(attention_weight=0.0).eval()
    off.load_state_dict(on.state_dict())
    on.stage = off.stage = 2
    assert off.student_request().score_layers == frozenset() and off.teacher_request(0).score_layers == frozenset()
    batch = make_batch("classification")
    full, cosine_only = on.compute_losses(batch), off.compute_losses(batch)
    assert "attention" in full and "attention" not in cosine_only
    torch.testing.assert_close(cosine_only["cls_cosine"], full["cls_cosine"])
    half = sid(attention_weight=0.5).eval()
    half.load_state_dict(on.state_dict())
    half.stage = 2
    torch.testing.assert_close(half.compute_losses(batch)["attention"], 0.5 * full["attention"])


@pytest.mark.parametrize(
    ("name", "knobs", "reason"),
    [
        ("SID", {}, "set attention_weight: 0"),
        ("SID", {"attention_weight": 0.3}, "set attention_weight: 0"),
        ("MGSKD", {"relation_heads": 4, "sample_level_from": 2, "span_pooling": "all_tokens"},
         "use span_pooling: valid_tokens"),
        ("CKD", {"reduction": "gkd"}, "use reduction: masked_mean"),
    ],
)
def test_settings_with_no_counterpart_across_tokenizers_are_refused_naming_the_fix(name, knobs, reason, assets):
    with pytest.raises(ValueError, match=reason):
        _method(name, assets, **knobs)


def test_ckd_with_the_reference_reduction_runs_without_the_word_angle_term(assets):
    method = _method("CKD", assets, reduction="gkd", word_angle_weight=0.0)
    terms = method.compute_losses(assets["batch"])
    assert "word_angle" not in terms and bool(torch.isfinite(terms["loss"]))
