"""ERDistill: contract in both stages, relation terms against loops, layer pairs, properties, errors, two teachers."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from lightning_kd.losses.prediction import PredictionLoss
from lightning_kd.methods import ERDistill
from lightning_kd.methods.erdistill import erdistill_pairs
from tests.conftest import make_batch, make_tiny_bert
from tests.methods.contract import check_contract

INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def _hidden(model, batch):
    model.eval()
    with torch.no_grad():
        return model(**{k: batch[k] for k in INPUTS}, output_hidden_states=True).hidden_states


@pytest.mark.parametrize(
    ("stage", "variant"),
    [
        ("classification", {}),  # all pairs, local + global MSE
        ("mlm", {}),
        ("classification", {"relation_loss": "kl", "layers": "last_two"}),
        ("mlm", {"terms": ["local"], "layers": "final_plus_previous", "positions": "all_positions"}),
    ],
)
def test_erdistill_contract(stage, variant, tmp_path):
    teacher, student = make_tiny_bert(stage, seed=1), make_tiny_bert(stage, seed=2, layers=2, hidden=16)
    check_contract(ERDistill(teacher=teacher, student=student, **variant), make_batch(stage), tmp_path)


def test_plain_kd_variant_has_no_relation_terms(tmp_path):
    method = ERDistill(teacher=make_tiny_bert(seed=1), student=make_tiny_bert(seed=2, layers=2, hidden=16), layers="none")
    assert not method.student_request().hidden_states
    result = check_contract(method, make_batch(), tmp_path)
    assert set(result["first"]) == {"soft", "hard", "loss"}


@pytest.mark.parametrize(
    ("teacher_depth", "student_depth", "all_teacher"),
    [
        (12, 6, [0, 2, 4, 6, 8, 10, 12]),
        (12, 4, [0, 3, 6, 9, 12]),
        (6, 3, [0, 2, 4, 6]),
        (12, 5, [0, 3, 6, 9, 11, 12]),  # the shared GKD segmentation, not the reference's zipped stride
        (12, 7, [0, 2, 4, 6, 8, 10, 11, 12]),
    ],
)
def test_layer_pairs(teacher_depth, student_depth, all_teacher):
    S, T = student_depth, teacher_depth
    assert erdistill_pairs("all", T, S) == [(j, t, 1.0) for j, t in enumerate(all_teacher)]
    assert erdistill_pairs("last_two", T, S) == [(S - 1, all_teacher[S - 1], 1.0), (S, T, 1.0)]
    assert erdistill_pairs("final", T, S) == [(S, T, 1.0)]
    assert erdistill_pairs("final_plus_previous", T, S) == [(S - 1, T, 0.1), (S, T, 1.0)]
    assert erdistill_pairs("none", T, S) == []


def _loops(hs, ht, es, et, mask, pairs, loss):
    """Local and global terms written out per example and position (masked, real lengths)."""
    local = glob = 0.0
    batch = hs[0].shape[0]
    for s_i, t_i, w in pairs:
        l_sum = l_count = g_sum = g_count = 0.0
        for b in range(batch):
            keep = [n for n in range(hs[0].shape[1]) if mask[b, n]]
            n_b = len(keep)
            xs, xt = hs[s_i][b, keep].double(), ht[t_i][b, keep].double()
            gs, gt = xs @ xs.T, xt @ xt.T
            if loss == "mse":
                l_sum += float(((gs / n_b - gt / n_b) ** 2).sum())
                l_count += n_b * n_b
            else:
                for r in range(n_b):
                    p, log_q = (gt[r] / math.sqrt(n_b)).softmax(0), (gs[r] / math.sqrt(n_b)).log_softmax(0)
                    l_sum += float((p * (p.log() - log_q)).sum())
                l_count += n_b
            ps, pt = xs @ es.double().T, xt @ et.double().T
            for r in range(n_b):
                if loss == "mse":
                    g_sum += float(((ps[r] - pt[r]) ** 2).mean())
                else:
                    p, log_q = pt[r].softmax(0), ps[r].log_softmax(0)
                    g_sum += float((p * (p.log() - log_q)).sum())
                g_count += 1
        local += w * l_sum / l_count
        glob += w * g_sum / g_count
    return local, glob


@pytest.mark.parametrize("loss", ["mse", "kl"])
@pytest.mark.parametrize("layers", ["all", "final_plus_previous"])
def test_relation_terms_match_loops(loss, layers):
    teacher, student = make_tiny_bert(seed=1), make_tiny_bert(seed=2, layers=2, hidden=16)
    batch = make_batch()
    method = ERDistill(teacher=teacher, student=student, layers=layers, relation_loss=loss, prediction=None).eval()
    terms = method.compute_losses(batch)
    local, glob = _loops(
        _hidden(student, batch),
        _hidden(teacher, batch),
        student.get_input_embeddings().weight.detach(),
        teacher.get_input_embeddings().weight.detach(),
        batch["attention_mask"],
        erdistill_pairs(layers, 4, 2),
        loss,
    )
    assert terms["local"].item() == pytest.approx(local, rel=1e-4)
    assert terms["global"].item() == pytest.approx(glob, rel=1e-4)


def test_reference_positions_use_padded_length_and_all_positions():
    teacher, student = make_tiny_bert(seed=1), make_tiny_bert(seed=2, layers=2, hidden=16)
    batch = make_batch()
    method = ERDistill(teacher=teacher, student=student, layers="final", positions="all_positions", prediction=None).eval()
    terms = method.compute_losses(batch)
    xs, xt = _hidden(student, batch)[2], _hidden(teacher, batch)[4]
    n = xs.shape[1]
    expected_local = ((xs @ xs.transpose(1, 2) / n - xt @ xt.transpose(1, 2) / n) ** 2).mean()
    es, et = student.get_input_embeddings().weight.detach(), teacher.get_input_embeddings().weight.detach()
    expected_global = ((xs @ es.T - xt @ et.T) ** 2).mean()
    assert terms["local"].item() == pytest.approx(expected_local.item(), rel=1e-4)
    assert terms["global"].item() == pytest.approx(expected_global.item(), rel=1e-4)


def test_gkd_pretraining_variant_prediction_terms():
    teacher, student = make_tiny_bert("mlm", seed=1), make_tiny_bert("mlm", seed=2, layers=2, hidden=16)
    batch = make_batch("mlm")
    prediction = PredictionLoss(temperature=10.0, reduction="gkd")
    method = ERDistill(teacher=teacher, student=student, terms=["local"], prediction=prediction).eval()
    terms = method.compute_losses(batch)
    assert set(terms) == {"hard", "soft", "local", "loss"}
    inputs = {k: batch[k] for k in INPUTS}
    with torch.no_grad():
        zs, zt = student(**inputs).logits, teacher(**inputs).logits
    kl = (zt.div(10).softmax(-1) * (zt.div(10).log_softmax(-1) - zs.div(10).log_softmax(-1))).sum(-1)
    keep = batch["labels"].ne(-100)
    expected = 100.0 * (kl * keep).sum() / keep.numel()  # GKD: masked rows stay in the denominator
    assert terms["soft"].item() == pytest.approx(expected.item(), rel=1e-4)


def test_zero_relations_for_an_exact_copy():
    teacher = make_tiny_bert("mlm", seed=1)
    method = ERDistill(teacher=teacher, student=copy.deepcopy(teacher), relation_loss="kl").eval()
    terms = method.compute_losses(make_batch("mlm"))
    assert terms["local"].item() == pytest.approx(0.0, abs=1e-6)
    assert terms["global"].item() == pytest.approx(0.0, abs=1e-6)


def test_padding_invariance():
    teacher, student = make_tiny_bert(seed=1), make_tiny_bert(seed=2, layers=2, hidden=16)
    batch = make_batch()
    changed = {k: v.clone() for k, v in batch.items()}
    changed["input_ids"][batch["attention_mask"] == 0] = 13
    for loss in ("mse", "kl"):
        method = ERDistill(teacher=teacher, student=student, relation_loss=loss, prediction=None).eval()
        a, b = method.compute_losses(batch), method.compute_losses(changed)
        torch.testing.assert_close(a["local"], b["local"])
        torch.testing.assert_close(a["global"], b["global"])


def test_gradients_reach_the_student_and_its_embeddings_only():
    teacher, student = make_tiny_bert(seed=1), make_tiny_bert(seed=2, layers=2, hidden=16)
    method = ERDistill(teacher=teacher, student=student, layers="final", terms=["global"], prediction=None)
    method.compute_losses(make_batch())["loss"].backward()
    assert all(p.grad is None for p in method.teachers.parameters())
    assert student.get_input_embeddings().weight.grad is not None
    assert not any(name.startswith("teachers.") for name, _ in method.trainable_named_parameters())


def test_two_teachers_of_different_depth_and_width():
    t1, t2 = make_tiny_bert(seed=1), make_tiny_bert(seed=3, layers=6, hidden=48)
    method = ERDistill(teachers=[t1, t2], student=make_tiny_bert(seed=2, layers=2, hidden=16))
    assert [[t for _, t, _ in pairs] for pairs in method.layer_pairs] == [[0, 2, 4], [0, 3, 6]]
    assert torch.isfinite(method.compute_losses(make_batch())["loss"])


def test_bad_inputs_fail_fast(tiny_teacher, tiny_student):
    with pytest.raises(ValueError, match="layers='none'"):
        ERDistill(teacher=tiny_teacher, student=tiny_student, terms=[])
    with pytest.raises(ValueError, match="do not apply"):
        ERDistill(teacher=tiny_teacher, student=tiny_student, layers="none", relation_loss="kl")
    with pytest.raises(ValueError, match="leaves no loss term"):
        ERDistill(teacher=tiny_teacher, student=tiny_student, layers="none", prediction=None)
    with pytest.raises(ValueError, match="'local' and 'global'"):
        ERDistill(teacher=tiny_teacher, student=tiny_student, terms=["local", "attention"])
    with pytest.raises(ValueError, match="between 1 and the teacher"):
        ERDistill(teacher=tiny_teacher, student=make_tiny_bert(seed=2, layers=6, hidden=16))


@pytest.mark.parametrize("family", ["electra", "albert"])
@pytest.mark.parametrize("stage", ["classification", "mlm"])
def test_factorised_global_term_scores_states_against_rows_projected_into_the_hidden_space(family, stage):
    """ELECTRA/ALBERT: 16-wide rows under 32-wide states. The global term is P = X (E Wᵀ)ᵀ with W each
    model's own embedding → hidden projection (bias left out), written out here from the rows' side."""
    from lightning_kd.models.embedding_projection import input_projection
    from tests.families import make_family_model

    teacher = make_family_model(family, stage, layers=4, seed=1)
    student = make_family_model(family, stage, layers=2, seed=2)
    batch = make_batch(stage)
    method = ERDistill(teacher=teacher, student=student, layers="final", terms=["global"], prediction=None).eval()
    terms = method.compute_losses(batch)

    def rows(model):  # (V, 32): every embedding row as the encoder receives it, before the bias
        return model.get_input_embeddings().weight.detach() @ input_projection(model).weight.detach().T

    xs, xt = _hidden(student, batch)[2], _hidden(teacher, batch)[4]
    keep = batch["attention_mask"].bool()
    expected = ((xs @ rows(student).T - xt @ rows(teacher).T) ** 2).mean(-1)[keep].mean()
    assert terms["global"].item() == pytest.approx(expected.item(), rel=1e-4)
    method.train().compute_losses(batch)["loss"].backward()
    assert input_projection(student).weight.grad is not None and student.get_input_embeddings().weight.grad is not None
