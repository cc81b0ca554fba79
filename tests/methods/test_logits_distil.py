"""LogitsDistil (GLMD): loss terms against written-out formulas, top-n options, LM heads, contract."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from lightning_kd.losses.prediction import PredictionLoss
from lightning_kd.losses.vocabulary import (
    teacher_min_tail,
    top_n_count,
    top_n_hinge,
    word_prediction_loss,
)
from lightning_kd.methods import KD, LogitsDistil
from lightning_kd.methods.logits_distil import VocabularyHead, load_mlm_head
from tests.conftest import make_batch, make_tiny_bert
from tests.methods.contract import check_contract

INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def _kl_rows(student, teacher, temperature):
    """Per-row T²·KL(softmax(t/T) ‖ softmax(s/T)) with plain Python loops, shape (rows,)."""
    out = []
    for s_row, t_row in zip(student.reshape(-1, student.shape[-1]).tolist(), teacher.reshape(-1, teacher.shape[-1]).tolist()):
        ps = [math.exp(v / temperature) for v in s_row]
        pt = [math.exp(v / temperature) for v in t_row]
        ps = [v / sum(ps) for v in ps]
        pt = [v / sum(pt) for v in pt]
        out.append(temperature**2 * sum(b * (math.log(b) - math.log(a)) for a, b in zip(ps, pt)))
    return torch.tensor(out, dtype=torch.float64)


@pytest.fixture
def logits():
    g = torch.Generator().manual_seed(0)
    return torch.randn(2, 3, 6, generator=g) * 3, torch.randn(2, 3, 6, generator=g) * 3


# ---------------------------------------------------------------------- the loss terms
def test_kl_over_all_positions_and_masked_reductions(logits):
    s, t = logits
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    rows = _kl_rows(s, t, 2.0).view(2, 3)
    assert word_prediction_loss(s, t, 2.0)["vocabulary"].item() == pytest.approx(rows.mean().item(), rel=1e-5)
    kept = rows[mask.bool()]
    masked = word_prediction_loss(s, t, 2.0, mask=mask)["vocabulary"]
    gkd = word_prediction_loss(s, t, 2.0, mask=mask, reduction="gkd")["vocabulary"]
    assert masked.item() == pytest.approx(kept.mean().item(), rel=1e-5)
    assert gkd.item() == pytest.approx(kept.sum().item() / 6, rel=1e-5)


def test_gkd_reduction_equals_the_reference_multiply_logits_by_the_mask(logits):
    """The reference zeroes masked rows' logits (uniform vs uniform: KL 0) and averages over all rows."""
    s, t = logits
    mask = torch.tensor([[1, 0, 1], [0, 1, 1]])
    reference = _kl_rows(s * mask[..., None], t * mask[..., None], 3.0).mean()
    ours = word_prediction_loss(s, t, 3.0, mask=mask, reduction="gkd")["vocabulary"]
    assert ours.item() == pytest.approx(reference.item(), rel=1e-5)


def test_mse_is_the_mean_over_all_elements(logits):
    s, t = logits
    expected = sum((a - b) ** 2 for a, b in zip(s.flatten().tolist(), t.flatten().tolist())) / s.numel()
    assert word_prediction_loss(s, t, 15.0, loss="mse")["vocabulary"].item() == pytest.approx(expected, rel=1e-5)


def test_top_n_teacher_min_lowers_the_tail_only_on_the_teacher():
    t = torch.tensor([[5.0, -1.0, 3.0, 0.5, 2.0]])
    assert teacher_min_tail(t, 2).tolist() == [[5.0, -1.0, 3.0, -1.0, -1.0]]
    s = torch.tensor([[0.3, 0.1, -0.2, 0.7, 1.0]])
    expected = _kl_rows(s, torch.tensor([[5.0, -1.0, 3.0, -1.0, -1.0]]), 1.0).mean()
    terms = word_prediction_loss(s, t, 1.0, top_n=2, top_n_mode="teacher_min")
    assert set(terms) == {"vocabulary"} and terms["vocabulary"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_top_n_restrict_compares_the_teachers_top_columns_and_adds_the_hinge():
    t = torch.tensor([[[5.0, -1.0, 3.0, 0.5, 2.0], [0.0, 4.0, 1.0, 3.0, -2.0]]])
    s = torch.tensor([[[1.0, 2.5, 0.0, 0.5, 3.0], [0.5, 1.0, 0.2, 2.0, 1.5]]])
    top = [[0, 2], [1, 3]]  # the teacher's top-2 columns per position
    kl = [_kl_rows(s[0, i, top[i]], t[0, i, top[i]], 2.0).item() for i in range(2)]
    # Hinge: Σ_{v∉N} relu(s_v − min s[N]) / #non-zero terms.
    violations = []
    for i in range(2):
        floor = min(s[0, i, k].item() for k in top[i])
        violations += [max(0.0, s[0, i, v].item() - floor) for v in range(5) if v not in top[i]]
    nonzero = [v for v in violations if v > 0]
    terms = word_prediction_loss(s, t, 2.0, top_n=2)
    assert terms["vocabulary"].item() == pytest.approx(sum(kl) / 2, rel=1e-5)
    assert terms["hinge"].item() == pytest.approx(sum(nonzero) / len(nonzero), rel=1e-5)


def test_top_n_hinge_is_zero_not_nan_without_violations():
    t = torch.randn(2, 4, 30)
    value = top_n_hinge(t.clone().requires_grad_(), t.topk(5, dim=-1).indices)
    assert value.item() == 0.0 and torch.isfinite(value)
    terms = word_prediction_loss(t.clone(), t, 15.0, top_n=5)
    assert all(torch.isfinite(v) for v in terms.values()) and terms["hinge"].item() == 0.0
    masked = top_n_hinge(torch.randn(2, 4, 30), t.topk(5, dim=-1).indices, torch.zeros(2, 4))
    assert masked.item() == 0.0


def test_top_n_count_takes_a_count_or_a_fraction():
    assert top_n_count(20, 100) == 20 and top_n_count(0.1, 100) == 10 and top_n_count(0.001, 100) == 1
    with pytest.raises(ValueError, match="fewer than all"):
        top_n_count(100, 100)
    with pytest.raises(ValueError, match=">= 1"):
        top_n_count(0, 100)


# ---------------------------------------------------------------------- the method
def test_pretraining_term_matches_formula_on_all_non_padding_positions():
    teacher, student = make_tiny_bert("mlm", seed=1), make_tiny_bert("mlm", seed=2, layers=2, hidden=16)
    batch = make_batch("mlm")
    method = LogitsDistil(teacher=teacher, student=student, temperature=3.0).eval()
    inputs = {k: batch[k] for k in INPUTS}
    with torch.no_grad():
        zs, zt = student(**inputs).logits, teacher(**inputs).logits
    rows = _kl_rows(zs, zt, 3.0).view(zs.shape[:2])
    expected = rows[batch["attention_mask"].bool()].mean()
    terms = method.compute_losses(batch)
    assert set(terms) == {"vocabulary", "loss"}  # no hard loss, no soft term by default
    assert terms["vocabulary"].item() == pytest.approx(expected.item(), rel=1e-4)


def test_old_method_pretraining_equals_kd_on_all_positions():
    """Seed old step 1 (KD, --distill_pt_soft --distill_wo_loss_mask, T=15) is LogitsDistil(positions='all')."""
    teacher, student = make_tiny_bert("mlm", seed=1), make_tiny_bert("mlm", seed=2, layers=2, hidden=16)
    batch = make_batch("mlm")
    ours = LogitsDistil(teacher=teacher, student=student, temperature=15.0, positions="all", reduction="gkd").eval()
    kd = KD(teacher=teacher, student=student, prediction=PredictionLoss(hard_weight=0.0, temperature=15.0, soft_positions="all_positions", reduction="gkd")).eval()
    torch.testing.assert_close(ours.compute_losses(batch)["vocabulary"], kd.compute_losses(batch)["soft"])


def test_targets_positions_cover_mlm_targets_only():
    teacher, student = make_tiny_bert("mlm", seed=1), make_tiny_bert("mlm", seed=2, layers=2, hidden=16)
    batch = make_batch("mlm")
    method = LogitsDistil(teacher=teacher, student=student, temperature=2.0, positions="targets").eval()
    inputs = {k: batch[k] for k in INPUTS}
    with torch.no_grad():
        rows = _kl_rows(student(**inputs).logits, teacher(**inputs).logits, 2.0).view(4, 12)
    expected = rows[batch["labels"].ne(-100)].mean()
    assert method.compute_losses(batch)["vocabulary"].item() == pytest.approx(expected.item(), rel=1e-4)


# Not with top_n_mode="teacher_min": it changes the teacher's distribution, not the student's.
@pytest.mark.parametrize("options", [{}, {"top_n": 20}, {"vocabulary_loss": "mse"}, {"positions": "all"}])
def test_zero_when_the_student_is_the_teacher(options):
    teacher = make_tiny_bert("mlm", seed=1)
    method = LogitsDistil(teacher=teacher, student=copy.deepcopy(teacher), **options).eval()
    for name, value in method.compute_losses(make_batch("mlm")).items():
        assert value.item() == pytest.approx(0.0, abs=1e-6), name


def test_padding_does_not_change_the_masked_term():
    teacher, student = make_tiny_bert("mlm", seed=1), make_tiny_bert("mlm", seed=2, layers=2, hidden=16)
    method = LogitsDistil(teacher=teacher, student=student, top_n=10).eval()
    batch = make_batch("mlm")
    other = {k: v.clone() for k, v in batch.items()}
    padded = other["attention_mask"].eq(0)
    other["input_ids"][padded] = 17
    first, second = method.compute_losses(batch), method.compute_losses(other)
    for name in first:
        torch.testing.assert_close(first[name], second[name])


def test_gradients_reach_the_student_and_its_head_never_a_teacher():
    teacher, student = make_tiny_bert(seed=1), make_tiny_bert(seed=2, layers=2, hidden=16)
    head_source = make_tiny_bert("mlm", seed=3)
    method = LogitsDistil(teacher=teacher, student=student, teacher_mlm_heads=[head_source], student_mlm_head=make_tiny_bert("mlm", seed=4, layers=2, hidden=16))
    method.compute_losses(make_batch())["loss"].backward()
    assert all(p.grad is None for p in method.teachers.parameters())
    assert all(p.grad is None and not p.requires_grad for p in method.teacher_vocab_heads.parameters())
    assert method.student.get_input_embeddings().weight.grad is not None
    assert all(p.grad is not None for p in method.student_vocab_head.parameters())
    names = [n for n, _ in method.trainable_named_parameters()]
    assert any(n.startswith("student_vocab_head.") for n in names) and not any(n.startswith("teacher_vocab_heads.") for n in names)


@pytest.mark.parametrize("stage", ["classification", "mlm"])
def test_contract(stage, tmp_path):
    teacher = make_tiny_bert(stage, seed=1)
    student = make_tiny_bert(stage, seed=2, layers=2, hidden=16)
    options = {"vocab_head": "tied"} if stage == "classification" else {}
    method = LogitsDistil(teacher=teacher, student=student, temperature=2.0, **options)
    check_contract(method, make_batch(stage), tmp_path)


def test_contract_finetuning_with_mlm_heads_from_checkpoints(tmp_path):
    mlm_teacher, mlm_student = make_tiny_bert("mlm", seed=1), make_tiny_bert("mlm", seed=2, layers=2, hidden=16)
    mlm_student.save_pretrained(tmp_path / "student_mlm")  # e.g. the pre-training stage's export
    mlm_teacher.save_pretrained(tmp_path / "teacher_mlm")
    classifier = make_tiny_bert(seed=1)
    classifier.bert.load_state_dict(mlm_teacher.bert.state_dict(), strict=False)
    classifier.save_pretrained(tmp_path / "teacher_cls")  # a fine-tuned classifier has no MLM head
    with pytest.raises(ValueError, match="teacher_mlm_heads|vocab_head: tied"):
        LogitsDistil(teacher=str(tmp_path / "teacher_cls"), student=str(tmp_path / "student_mlm"), num_labels=2)
    method = LogitsDistil(
        teacher=str(tmp_path / "teacher_cls"), student=str(tmp_path / "student_mlm"), num_labels=2,
        teacher_mlm_heads=[str(tmp_path / "teacher_mlm")], temperature=2.0, prediction=PredictionLoss(soft_weight=1.0, hard_weight=0.0, temperature=2.0),
    )
    assert torch.equal(method.student_vocab_head.bias.detach(), mlm_student.cls.predictions.bias.detach())
    result = check_contract(method, make_batch(), tmp_path)
    assert {"vocabulary", "soft"} <= set(result["first"])


def test_mlm_head_reproduces_the_masked_lm_logits():
    """The rebuilt head on a classifier's last hidden state gives BertForMaskedLM's logits."""
    mlm = make_tiny_bert("mlm", seed=1).eval()
    classifier = make_tiny_bert(seed=5).eval()
    classifier.bert.load_state_dict(mlm.bert.state_dict(), strict=False)
    head = load_mlm_head(mlm, "teacher")
    batch = make_batch()
    inputs = {k: batch[k] for k in INPUTS}
    with torch.no_grad():
        hidden = classifier(**inputs, output_hidden_states=True).hidden_states[-1]
        torch.testing.assert_close(head(hidden, classifier.get_input_embeddings().weight), mlm(**inputs).logits, rtol=1e-5, atol=1e-5)
        tied = VocabularyHead()(hidden, classifier.get_input_embeddings().weight)
        torch.testing.assert_close(tied, hidden @ classifier.get_input_embeddings().weight.T)


def test_last_finetuning_step_is_soft_ce_on_task_logits():
    teacher, student = make_tiny_bert(seed=1), make_tiny_bert(seed=2, layers=2, hidden=16)
    batch = make_batch()
    method = LogitsDistil(
        teacher=teacher, student=student, vocabulary_weight=0.0, prediction=PredictionLoss(soft_weight=1.0, hard_weight=0.0, temperature=1.0, soft_loss="ce", t2_scale=False), temperature=1.0
    ).eval()
    inputs = {k: batch[k] for k in INPUTS}
    with torch.no_grad():
        zs, zt = student(**inputs).logits, teacher(**inputs).logits
    expected = -(zt.softmax(-1) * zs.log_softmax(-1)).sum(-1).mean()
    terms = method.compute_losses(batch)
    assert set(terms) == {"soft", "loss"} and terms["soft"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert method.student_request().hidden_states is False


def test_two_teachers_of_different_depth_and_width():
    teachers = [make_tiny_bert("mlm", seed=1), make_tiny_bert("mlm", seed=3, layers=3, hidden=24)]
    method = LogitsDistil(teachers=teachers, student=make_tiny_bert("mlm", seed=2, layers=2, hidden=16), top_n=8)
    terms = method.compute_losses(make_batch("mlm"))
    assert torch.isfinite(terms["loss"]) and {"vocabulary", "vocabulary_hinge"} <= set(terms)
    heads = LogitsDistil(
        teachers=[make_tiny_bert(seed=1), make_tiny_bert(seed=3, layers=3, hidden=24)], student=make_tiny_bert(seed=2, layers=2, hidden=16),
        vocab_head="tied",
    )
    assert torch.isfinite(heads.compute_losses(make_batch())["loss"])


def test_bad_inputs_fail_fast():
    mlm_t, mlm_s = make_tiny_bert("mlm", seed=1), make_tiny_bert("mlm", seed=2, layers=2, hidden=16)
    cls_t, cls_s = make_tiny_bert(seed=1), make_tiny_bert(seed=2, layers=2, hidden=16)
    with pytest.raises(ValueError, match="Every term is off"):
        LogitsDistil(teacher=mlm_t, student=mlm_s, vocabulary_weight=0.0)
    with pytest.raises(ValueError, match="top_n only|only shape the word-prediction"):
        LogitsDistil(teacher=cls_t, student=cls_s, vocabulary_weight=0.0, prediction=PredictionLoss(soft_weight=1.0, hard_weight=0.0, temperature=15.0), top_n=20)
    with pytest.raises(ValueError, match="top_n_mode only applies"):
        LogitsDistil(teacher=mlm_t, student=mlm_s, top_n_mode="teacher_min")
    with pytest.raises(ValueError, match="fewer than all"):
        LogitsDistil(teacher=mlm_t, student=mlm_s, top_n=220)
    with pytest.raises(ValueError, match="token-level"):
        LogitsDistil(teacher=cls_t, student=cls_s, positions="targets", vocab_head="tied")
    with pytest.raises(ValueError, match="pre-training"):
        LogitsDistil(teacher=mlm_t, student=mlm_s, vocab_head="tied")
    with pytest.raises(ValueError, match="no BERT-style MLM head"):
        LogitsDistil(teacher=cls_t, student=cls_s)  # default vocab_head='mlm' and in-memory classifiers
    with pytest.raises(ValueError, match="only apply with vocab_head='mlm'"):
        LogitsDistil(teacher=cls_t, student=cls_s, vocab_head="tied", teacher_mlm_heads=[mlm_t])
    with pytest.raises(ValueError, match="one per teacher"):
        LogitsDistil(teacher=cls_t, student=cls_s, teacher_mlm_heads=[mlm_t, mlm_t], student_mlm_head=mlm_s)
    with pytest.raises(ValueError, match="temperature"):
        LogitsDistil(teacher=mlm_t, student=mlm_s, temperature=0)
    with pytest.raises(ValueError, match="vocabulary"):
        LogitsDistil(teacher=mlm_t, student=make_tiny_bert("mlm", seed=2, layers=2, vocab_size=300))


def test_student_loss_is_computed_only_when_a_term_reads_it(monkeypatch):
    """Without a hard term the student runs without labels (no full-vocabulary CE nobody reads);
    with one, or under RL-KD (its reward is the student's loss), labels are passed."""
    import lightning_kd.core.module as module_code
    import lightning_kd.core.teacher_pool as pool_code
    from lightning_kd.methods.multi_teacher import RLKD

    seen = []
    real_capture = module_code.capture

    def spy(model, batch, request, **kwargs):
        seen.append(kwargs.get("with_labels", False))
        return real_capture(model, batch, request, **kwargs)

    monkeypatch.setattr(module_code, "capture", spy)  # the student's forward
    monkeypatch.setattr(pool_code, "capture", spy)  # the teachers' forwards
    teacher, student = make_tiny_bert("mlm", seed=1), make_tiny_bert("mlm", seed=2, layers=2, hidden=16)
    batch = make_batch("mlm")
    LogitsDistil(teacher=teacher, student=copy.deepcopy(student)).compute_losses(batch)
    hard = LogitsDistil(teacher=teacher, student=copy.deepcopy(student), prediction=PredictionLoss(soft_weight=0.0, hard_weight=0.5)).compute_losses(batch)
    assert "hard" in hard and torch.isfinite(hard["hard"])
    student_calls = seen[::2]  # the student runs first in each step; its one teacher follows without labels
    assert student_calls == [False, True] and not any(seen[1::2])
    seen.clear()
    teachers = [teacher, copy.deepcopy(teacher)]
    LogitsDistil(teachers=teachers, student=copy.deepcopy(student), multi_teacher=RLKD(stage="average")).compute_losses(batch)
    assert seen[0] is True
    assert KD(teacher=teacher, student=copy.deepcopy(student)).uses_student_loss()
