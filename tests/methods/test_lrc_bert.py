"""LRC-BERT: the contrastive loss against a loop formula, layer pairs, gradient perturbation, contract, errors."""

from __future__ import annotations

import pytest
import torch

from lightning_kd.core.layer_map import resolve_layer_map
from lightning_kd.losses.prediction import PredictionLoss
from lightning_kd.methods import LRCBERT
from tests.conftest import make_batch, make_tiny_bert
from tests.methods.contract import check_contract


def _loop_loss(s_layers, t_layers, coefficient):
    """ℓ_b from the spec, written with loops: G[b,b'] = 1 − mean over (layer, position) of cos."""
    L, B, N = len(s_layers), s_layers[0].shape[0], s_layers[0].shape[1]
    G = [[0.0] * B for _ in range(B)]
    for b in range(B):
        for c in range(B):
            total = 0.0
            for layer in range(L):
                for n in range(N):
                    u, v = s_layers[layer][b, n], t_layers[layer][c, n]
                    total += float((u @ v) / (u.norm() * v.norm()))
            G[b][c] = 1.0 - total / (L * N)
    losses = []
    for b in range(B):
        negatives = sum(G[b][c] for c in range(B) if c != b) / (2 * (B - 1))
        losses.append(1.0 + coefficient * G[b][b] - negatives)
    return L * sum(losses) / B


@pytest.mark.parametrize("positive_term,coefficient", [("reference", 1.5), ("paper", 1.0)])
def test_contrastive_term_matches_loop_formula(positive_term, coefficient):
    teacher, student = make_tiny_bert(seed=1), make_tiny_bert(seed=2, layers=2, hidden=16)
    method = LRCBERT(teacher=teacher, student=student, contrastive_weight=0.7, positive_term=positive_term).eval()
    batch = make_batch()
    terms = method.compute_losses(batch)
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    with torch.no_grad():
        hs = student(**inputs, output_hidden_states=True).hidden_states
        ht = teacher(**inputs, output_hidden_states=True).hidden_states
        W = method.projections[0].weight
        s_layers = [hs[1] @ W.T, hs[2] @ W.T]
        t_layers = [ht[2], ht[4]]  # uniform 4→2: teacher layers 2 and 4
    expected = 0.7 * _loop_loss(s_layers, t_layers, coefficient)
    assert set(terms) == {"contrastive", "loss"}
    assert terms["contrastive"].item() == pytest.approx(expected, rel=1e-5)


def test_reference_simplification_equals_code_form():
    g = torch.rand(5, 5)
    B = 5
    code = 1 - (g.sum(1) - B * g.diag()) / (2 * (B - 1)) + g.diag()
    from lightning_kd.losses.contrastive import contrastive_per_sample

    torch.testing.assert_close(contrastive_per_sample(g), code)


@pytest.mark.parametrize(
    "teacher_layers,student_layers,expected",
    [(12, 6, [2, 4, 6, 8, 10, 12]), (12, 4, [3, 6, 9, 12]), (6, 3, [2, 4, 6]), (12, 5, [3, 6, 9, 11, 12]), (12, 7, [2, 4, 6, 8, 10, 11, 12])],
)
def test_layer_pairs(teacher_layers, student_layers, expected):
    assert resolve_layer_map("uniform", teacher_layers, student_layers) == expected


def test_method_pairs_follow_each_teachers_depth():
    t1, t2 = make_tiny_bert(seed=1, layers=4), make_tiny_bert(seed=3, layers=2, hidden=24)
    method = LRCBERT(teachers=[t1, t2], student=make_tiny_bert(seed=2, layers=2, hidden=16))
    assert method.layer_pairs == [[(1, 2), (2, 4)], [(1, 1), (2, 2)]]
    assert [p.weight.shape for p in method.projections] == [(32, 16), (24, 16)]
    terms = method.compute_losses(make_batch())
    assert torch.isfinite(terms["loss"])


def test_perturbation_shifts_embeddings_by_normalised_gradient():
    teacher, student = make_tiny_bert(seed=1), make_tiny_bert(seed=2, layers=2, hidden=16)
    eps = 0.5
    method = LRCBERT(
        teacher=teacher, student=student, gradient_perturbation=True, perturbation_scale=eps, forward_repeats=1,
        prediction=PredictionLoss(soft_weight=1.0, hard_weight=3.0, temperature=1.1),
    ).eval()
    batch = make_batch()
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    # Hand computation of pass 0: e, loss0, g, e' = e + ε g / ‖g‖ per token.
    store = {}
    handle = student.bert.embeddings.register_forward_hook(lambda m, i, o: store.__setitem__("e", o))
    out_s = student(**inputs, labels=batch["labels"], output_hidden_states=True)
    handle.remove()
    with torch.no_grad():
        out_t = teacher(**inputs, output_hidden_states=True)
    T = 1.1
    soft = T * T * torch.nn.functional.kl_div(
        (out_s.logits / T).log_softmax(-1), (out_t.logits / T).softmax(-1), reduction="batchmean"
    )
    W = method.projections[0].weight
    s_layers = [out_s.hidden_states[1] @ W.T, out_s.hidden_states[2] @ W.T]
    t_layers = [out_t.hidden_states[2], out_t.hidden_states[4]]
    loss0 = soft + 3.0 * out_s.loss + _contrastive_torch(s_layers, t_layers)
    (g,) = torch.autograd.grad(loss0, store["e"])
    expected = store["e"].detach() + eps * g / g.norm(dim=-1, keepdim=True)
    # The method's pass 1 must feed exactly e' into the encoder.
    seen = []
    hook = student.bert.encoder.register_forward_pre_hook(
        lambda m, args, kwargs: seen.append(args[0] if args else kwargs["hidden_states"]), with_kwargs=True
    )
    terms = method.compute_losses(batch)
    hook.remove()
    assert len(seen) == 2
    torch.testing.assert_close(seen[0], store["e"].detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(seen[1], expected, rtol=1e-4, atol=1e-5)
    # Only pass 1's terms are returned: recompute them with the perturbation added by hand.
    shift = student.bert.embeddings.register_forward_hook(lambda m, i, o: expected)
    with torch.no_grad():
        hard1 = student(**inputs, labels=batch["labels"]).loss
    shift.remove()
    assert terms["hard"].item() == pytest.approx(3.0 * hard1.item(), rel=1e-4)
    assert set(terms) == {"hard", "soft", "contrastive", "loss"}
    assert all(p.grad is None for p in student.parameters())  # autograd.grad touched no parameter gradient


def _contrastive_torch(s_layers, t_layers):
    s = torch.nn.functional.normalize(torch.stack(s_layers), dim=-1)
    t = torch.nn.functional.normalize(torch.stack(t_layers), dim=-1)
    L, B, N, _ = s.shape
    G = 1 - torch.einsum("lbnd,lcnd->bc", s, t) / (L * N)
    neg = (G.sum(1) - G.diag()) / (2 * (B - 1))
    return L * (1 + 1.5 * G.diag() - neg).mean()


def test_without_perturbation_repeats_sum_both_passes():
    teacher, student = make_tiny_bert(seed=1), make_tiny_bert(seed=2, layers=2, hidden=16)
    one = LRCBERT(teacher=teacher, student=student).eval()
    two = LRCBERT(teacher=teacher, student=student, forward_repeats=1).eval()
    two.projections.load_state_dict(one.projections.state_dict())
    batch = make_batch()
    # Reference semantics without --ignore_first_backward_gard: both (identical, dropout off) passes are summed.
    assert two.compute_losses(batch)["loss"].item() == pytest.approx(2 * one.compute_losses(batch)["loss"].item(), rel=1e-5)


def test_gather_negatives_single_process_is_noop():
    teacher, student = make_tiny_bert(seed=1), make_tiny_bert(seed=2, layers=2, hidden=16)
    a = LRCBERT(teacher=teacher, student=student).eval()
    b = LRCBERT(teacher=teacher, student=student, gather_negatives=True).eval()
    b.projections.load_state_dict(a.projections.state_dict())
    batch = make_batch()
    assert a.compute_losses(batch)["contrastive"].item() == pytest.approx(b.compute_losses(batch)["contrastive"].item())


def test_gradients_reach_student_and_projection_only():
    teacher, student = make_tiny_bert(seed=1), make_tiny_bert(seed=2, layers=2, hidden=16)
    method = LRCBERT(teacher=teacher, student=student, gradient_perturbation=True, forward_repeats=1)
    method.compute_losses(make_batch())["loss"].backward()
    assert method.projections[0].weight.grad is not None
    assert any(p.grad is not None for p in student.parameters())
    assert all(p.grad is None for p in teacher.parameters())


@pytest.mark.parametrize("perturb", [False, True])
def test_contract(perturb, tmp_path):
    method = LRCBERT(
        teacher=make_tiny_bert(seed=1), student=make_tiny_bert(seed=2, layers=2, hidden=16),
        gradient_perturbation=perturb, forward_repeats=int(perturb),
        prediction=PredictionLoss(soft_weight=1.0, hard_weight=3.0, temperature=1.1),
    )
    check_contract(method, make_batch(), tmp_path)


def test_bad_inputs(tiny_teacher, tiny_student):
    with pytest.raises(ValueError, match="forward_repeats=1"):
        LRCBERT(teacher=tiny_teacher, student=tiny_student, gradient_perturbation=True)
    with pytest.raises(ValueError, match="only apply with gradient_perturbation"):
        LRCBERT(teacher=tiny_teacher, student=tiny_student, perturbation_scale=2.0)
    with pytest.raises(ValueError, match="contrastive_weight must be >= 0"):
        LRCBERT(teacher=tiny_teacher, student=tiny_student, contrastive_weight=-1)
    with pytest.raises(ValueError, match="nothing to train"):
        LRCBERT(teacher=tiny_teacher, student=tiny_student, contrastive_weight=0)
    with pytest.raises(ValueError, match="layer_map lists"):
        LRCBERT(teacher=tiny_teacher, student=tiny_student, layer_map=[1, 2, 3])
    method = LRCBERT(teacher=tiny_teacher, student=tiny_student)
    one = {k: v[:1] for k, v in make_batch().items()}
    with pytest.raises(ValueError, match="at least 2 examples"):
        method.compute_losses(one)


def test_gathered_negatives_equal_the_global_batch_rows(monkeypatch):
    """Simulated 2-process run: rank 1 holds examples 4..7 and sees rank 0's teacher states as negatives;
    its loss equals the reference's global-batch ℓ_b averaged over its own rows."""
    from types import SimpleNamespace

    teacher, student = make_tiny_bert(seed=1), make_tiny_bert(seed=2, layers=2, hidden=16)
    method = LRCBERT(teacher=teacher, student=student, gather_negatives=True).eval()
    full = make_batch(batch=8)
    local = {k: v[4:] for k, v in full.items()}
    inputs = {k: full[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    with torch.no_grad():
        hs = student(**inputs, output_hidden_states=True).hidden_states
        ht = teacher(**inputs, output_hidden_states=True).hidden_states
    t_global = torch.stack([ht[2], ht[4]])  # (L, 8, N, D)
    method._trainer = SimpleNamespace(world_size=2, global_rank=1, global_step=0)
    monkeypatch.setattr(method, "all_gather", lambda t: torch.stack([t_global[:, :4], t]))
    value = method.compute_losses(local)["contrastive"].item()
    method._trainer = None
    W = method.projections[0].weight.detach()
    s = [hs[1] @ W.T, hs[2] @ W.T]
    L, B, N = 2, 8, hs[1].shape[1]
    expected = []
    for b in range(4, 8):
        G = []
        for c in range(B):
            cos = sum(float(torch.nn.functional.cosine_similarity(s[l][b], t_global[l, c], dim=-1).sum()) for l in range(L))
            G.append(1 - cos / (L * N))
        expected.append(1 + 1.5 * G[b] - (sum(G) - G[b]) / (2 * (B - 1)))
    assert value == pytest.approx(L * sum(expected) / 4, rel=1e-5)


def test_perturbation_under_autocast_is_finite():
    teacher, student = make_tiny_bert(seed=1), make_tiny_bert(seed=2, layers=2, hidden=16)
    method = LRCBERT(teacher=teacher, student=student, gradient_perturbation=True, forward_repeats=1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        terms = method.compute_losses(make_batch())
    assert torch.isfinite(terms["loss"])
