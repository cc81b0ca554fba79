"""MobileBERT: loss terms against plain re-derivations, layer maps, stage weights, freezing, contract, configs."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
import yaml
from transformers import MobileBertConfig, MobileBertForMaskedLM, MobileBertForSequenceClassification

from lightning_kd.core.attention_capture import attention_layout
from lightning_kd.core.features import FeatureRequest, capture
from lightning_kd.methods import MobileBERT
from tests.cli_fixtures import quick_trainer_section, write_corpus
from tests.conftest import make_batch, make_tiny_bert, write_tiny_tokenizer
from tests.methods.contract import check_contract

ROOT = Path(__file__).resolve().parents[2]


def tiny_mobilebert(kind="mlm", layers=2, intra=16, ffn=2, seed=0, hidden=32, heads=4, dropout=0.1):
    """A tiny MobileBERT; the teacher shape is IB-BERT-like (wide intra block, 1 FFN)."""
    torch.manual_seed(seed)
    config = MobileBertConfig(
        vocab_size=220,
        hidden_size=hidden,
        embedding_size=16,
        intra_bottleneck_size=intra,
        true_hidden_size=intra,
        num_attention_heads=heads,
        num_hidden_layers=layers,
        num_feedforward_networks=ffn,
        intermediate_size=32,
        max_position_embeddings=64,
        initializer_range=0.2,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
        num_labels=2,
    )
    cls = MobileBertForMaskedLM if kind == "mlm" else MobileBertForSequenceClassification
    return cls(config)


def teacher(kind="mlm", layers=4, seed=1, **shape):
    return tiny_mobilebert(kind, layers=layers, intra=32, ffn=1, seed=seed, **shape)


def method(kind="mlm", t_layers=4, s_layers=2, **knobs):
    knobs.setdefault("progressive", False)
    return MobileBERT(teacher=teacher(kind, t_layers), student=tiny_mobilebert(kind, s_layers, seed=2), student_init="random", **knobs)


# ----------------------------------------------------------------- features and loss formulas
def test_attention_projections_find_mobilebert_qkv_and_match_eager_attention():
    model = tiny_mobilebert(layers=2, dropout=0.0).eval()
    model.config._attn_implementation = "eager"
    assert attention_layout(model).calls == 2
    batch = make_batch("mlm")
    features = capture(model, batch, FeatureRequest(prob_layers=frozenset({0, 1})))
    with torch.no_grad():
        reference = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_attentions=True).attentions
    for layer in (0, 1):
        real = batch["attention_mask"].bool()[:, None, :, None].expand_as(reference[layer])
        torch.testing.assert_close(features.attention_probs(layer)[real], reference[layer][real], rtol=1e-4, atol=1e-5)


def _plain_attention_kl(q_s, k_s, q_t, k_t, mask, heads):
    """Per example, head and real query row: Σ_real keys p_t (log p_t − log p_s); mean over real rows."""
    total, rows = 0.0, 0
    for b in range(q_s.shape[0]):
        real = [i for i in range(q_s.shape[1]) if mask[b, i]]
        for h in range(heads):
            def probs(q, k, b=b, real=real, h=h):
                d = q.shape[-1] // heads
                qh, kh = q[b, real, h * d : (h + 1) * d], k[b, real, h * d : (h + 1) * d]
                return torch.softmax(qh @ kh.T / math.sqrt(d), dim=-1)

            p_s, p_t = probs(q_s, k_s), probs(q_t, k_t)
            for i in range(len(real)):
                terms = [float(p_t[i, j] * (p_t[i, j].log() - p_s[i, j].log())) for j in range(len(real)) if p_t[i, j] > 0]
                total += sum(terms)
                rows += 1
    return total / rows


def _plain_mse(h_s, h_t, mask):
    values = [float(((h_s[b, i] - h_t[b, i]) ** 2).mean()) for b in range(h_s.shape[0]) for i in range(h_s.shape[1]) if mask[b, i]]
    return sum(values) / len(values)


def test_terms_match_plain_formulas():
    m = method(t_layers=4, s_layers=2).eval()
    batch = make_batch("mlm")
    mask = batch["attention_mask"]
    with torch.no_grad():
        s = capture(m.student, batch, FeatureRequest(hidden_states=True, qkv_layers=frozenset({0, 1})))
        t = capture(m.teachers[0], batch, FeatureRequest(hidden_states=True, qkv_layers=frozenset({0, 1, 2, 3})))
        terms = m.compute_losses(batch)
    # 4 → 2: g = [0, 2, 4]; attention 0↔1, 1↔3; hidden 0↔0, 1↔2, 2↔4
    attention = sum(_plain_attention_kl(s.queries[k], s.keys[k], t.queries[j], t.keys[j], mask, 4) for k, j in [(0, 1), (1, 3)])
    hidden = sum(_plain_mse(s.hidden_states[k], t.hidden_states[j], mask) for k, j in [(0, 0), (1, 2), (2, 4)])
    assert terms["attention"].item() == pytest.approx(0.5 * attention, rel=1e-4, abs=1e-7)
    assert terms["hidden"].item() == pytest.approx(0.5 * hidden, rel=1e-4)
    assert terms["hidden"].item() > 0 and terms["attention"].item() > 0
    assert set(terms) == {"attention", "hidden", "hard", "loss"}


def test_progressive_stage_weights_match_the_spec():
    m = method(t_layers=4, s_layers=2, progressive=True)
    expected = {  # stage: (attention weights, hidden weights)
        1: ({0: 1.0}, {0: 0.1, 1: 1.0}),
        2: ({0: 0.1, 1: 1.0}, {0: 0.1, 1: 0.1, 2: 1.0}),
        3: ({0: 1.0, 1: 1.0}, {0: 1.0, 1: 1.0, 2: 1.0}),
    }
    batch = make_batch("mlm")
    for stage, (attention, hidden) in expected.items():
        m.stage = stage
        assert m.attention_layer_weights() == attention
        assert m.hidden_index_weights() == hidden
        assert ("hard" in m.compute_losses(batch)) == (stage == 3)
    frozen = method(t_layers=4, s_layers=2, progressive=True, lower_layers="freeze")
    for stage, (attention, hidden, below) in {1: ({0: 1.0}, {0: 1.0, 1: 1.0}, 0), 2: ({1: 1.0}, {2: 1.0}, 1), 3: (expected[3][0], expected[3][1], 0)}.items():
        frozen.stage = stage
        assert (frozen.attention_layer_weights(), frozen.hidden_index_weights(), frozen.frozen_below()) == (attention, hidden, below)


def test_down_weighted_stage_sums_the_weighted_terms():
    m = method(t_layers=4, s_layers=2, progressive=True, lower_layer_weight=0.25).eval()
    batch = make_batch("mlm")
    with torch.no_grad():
        m.stage = 3
        full = capture(m.student, batch, FeatureRequest(hidden_states=True))
        teacher_h = capture(m.teachers[0], batch, FeatureRequest(hidden_states=True)).hidden_states
        m.stage = 2
        terms = m.compute_losses(batch)
    mask = batch["attention_mask"]
    hidden = 0.25 * _plain_mse(full.hidden_states[0], teacher_h[0], mask) + 0.25 * _plain_mse(
        full.hidden_states[1], teacher_h[2], mask
    ) + _plain_mse(full.hidden_states[2], teacher_h[4], mask)
    assert terms["hidden"].item() == pytest.approx(0.5 * hidden, rel=1e-4)


@pytest.mark.parametrize(
    ("t_layers", "s_layers", "attention", "hidden"),
    [
        (12, 6, [1, 3, 5, 7, 9, 11], [0, 2, 4, 6, 8, 10, 12]),
        (12, 4, [2, 5, 8, 11], [0, 3, 6, 9, 12]),
        (6, 3, [1, 3, 5], [0, 2, 4, 6]),
        (12, 5, [2, 5, 8, 10, 11], [0, 3, 6, 9, 11, 12]),  # front-loaded blocks 3,3,3,2,1
    ],
)
def test_layer_pairs(t_layers, s_layers, attention, hidden):
    m = MobileBERT(
        teacher=teacher(layers=t_layers), student=tiny_mobilebert(layers=s_layers), student_init="random", progressive=False
    )
    g = m.boundaries[0]
    assert [g[k + 1] - 1 for k in range(s_layers)] == attention
    assert [g[k] for k in range(s_layers + 1)] == hidden
    assert m.teacher_request(0).score_layers == frozenset(attention)


# ----------------------------------------------------------------- properties
def test_zero_when_the_student_copies_the_teacher():
    t = teacher(layers=3)
    m = MobileBERT(teacher=t, student=copy.deepcopy(t), student_init="pretrained", progressive=True).eval()
    for stage in (1, 2, 4):
        m.stage = stage
        terms = m.compute_losses(make_batch("mlm"))
        assert terms["attention"].abs().item() < 1e-6 and terms["hidden"].abs().item() < 1e-10


def test_padding_invariance():
    # MobileBERT's trigram embeddings let a padded token id reach its real neighbour, so the masking is
    # checked on the features: padded rows of hidden states, queries and keys do not change the terms.
    m = method().eval()
    batch = make_batch("mlm")
    pad = batch["attention_mask"] == 0
    assert pad.any()
    with torch.no_grad():
        s = capture(m.student, batch, m.student_request())
        t = capture(m.teachers[0], batch, m.teacher_request(0), upcast=True)
        a = m.teacher_terms(batch, s, t, 0)
        for features in (s, t):
            features.hidden_states = tuple(h.masked_fill(pad[..., None], 123.0) for h in features.hidden_states)
            for store in (features.queries, features.keys):
                for layer in store:
                    store[layer] = store[layer].masked_fill(pad[..., None], -7.0)
        b = m.teacher_terms(batch, s, t, 0)
    for name in ("attention", "hidden"):
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-7)


def _grads(m, stage):
    m.zero_grad(set_to_none=True)
    m.stage = stage
    m.compute_losses(make_batch("mlm"))["loss"].backward()
    layers = m.student.base_model.encoder.layer
    return (
        [p.grad for p in m.student.base_model.embeddings.parameters()],
        [[p.grad for p in layer.parameters()] for layer in layers],
    )


def test_freeze_mode_stops_gradients_below_the_stage():
    m = method(t_layers=4, s_layers=3, progressive=True, lower_layers="freeze").eval()
    embeddings, layers = _grads(m, 3)  # stage 3 trains student layer 2 only
    assert all(g is None for g in embeddings)
    assert all(g is None for g in layers[0] + layers[1])
    assert any(g is not None and g.abs().sum() > 0 for g in layers[2])
    assert all(p.grad is None for t in m.teachers for p in t.parameters())
    embeddings, layers = _grads(m, 4)  # the last stage trains everything
    assert any(g is not None and g.abs().sum() > 0 for g in embeddings)
    assert all(any(g is not None for g in layer) for layer in layers)
    # the reference's down-weighting keeps lower layers trainable
    down = method(t_layers=4, s_layers=3, progressive=True).eval()
    embeddings, layers = _grads(down, 3)
    assert any(g is not None and g.abs().sum() > 0 for g in embeddings)
    assert any(g is not None and g.abs().sum() > 0 for g in layers[0])


@pytest.mark.parametrize("kind", ["mlm", "classification"])
def test_contract(kind, tmp_path):
    check_contract(method(kind), make_batch(kind), tmp_path)


def test_contract_in_a_progressive_stage(tmp_path):
    m = method(progressive=True, lower_layers="freeze")
    m.stage = 2
    result = check_contract(m, make_batch("mlm"), tmp_path)
    assert "hard" not in result["first"]


def test_two_teachers_of_different_depth():
    m = MobileBERT(
        teachers=[teacher(layers=4), teacher(layers=3, seed=5)],
        student=tiny_mobilebert(layers=2, seed=2),
        student_init="random",
        progressive=False,
    )
    assert m.boundaries == [[0, 2, 4], [0, 2, 3]]
    loss = m.compute_losses(make_batch("mlm"))["loss"]
    assert torch.isfinite(loss)


# ----------------------------------------------------------------- bad input
def test_bad_input():
    student = tiny_mobilebert(layers=2)
    with pytest.raises(ValueError, match="MobileBERT student"):
        MobileBERT(teacher=teacher(), student=make_tiny_bert("mlm"), student_init="random")
    with pytest.raises(ValueError, match="IB-BERT"):
        MobileBERT(teacher=make_tiny_bert("mlm"), student=student, student_init="random")
    with pytest.raises(ValueError, match="hidden_size"):
        MobileBERT(teacher=teacher(hidden=48), student=student, student_init="random")
    with pytest.raises(ValueError, match="num_attention_heads"):
        MobileBERT(teacher=teacher(heads=2), student=student, student_init="random")
    with pytest.raises(ValueError, match="deeper"):
        MobileBERT(teacher=teacher(layers=1), student=student, student_init="random")
    with pytest.raises(ValueError, match="only applies with lower_layers='down_weight'"):
        MobileBERT(teacher=teacher(), student=student, lower_layers="freeze", lower_layer_weight=0.1)
    with pytest.raises(ValueError, match="only apply with progressive=True"):
        MobileBERT(teacher=teacher(), student=student, progressive=False, lower_layers="freeze")
    with pytest.raises(ValueError, match="terms"):
        MobileBERT(teacher=teacher(), student=student, terms=[])
    m = method(progressive=True)
    with pytest.raises(RuntimeError, match="MobileBERTStages"):
        m.compute_losses(make_batch("mlm"))
    m.stage = 9
    with pytest.raises(ValueError, match="1..3"):
        m.compute_losses(make_batch("mlm"))


def test_progressive_fit_attaches_the_stages_callback(tmp_path):
    from lightning_kd.callbacks import MobileBERTStages
    from tests.callbacks.runs import fit

    progressive = method("classification", progressive=True)
    trainer = fit(progressive, [], tmp_path / "progressive", max_steps=1)
    (stages,) = [c for c in trainer.callbacks if isinstance(c, MobileBERTStages)]
    assert (stages.steps_per_stage, stages.total_steps, progressive.stage) == (None, None, 1)
    trainer = fit(method("classification", progressive=False), [], tmp_path / "joint", max_steps=1)
    assert not any(isinstance(c, MobileBERTStages) for c in trainer.callbacks)


# ----------------------------------------------------------------- configs on tiny MobileBERTs
CONFIGS = ["configs/pretrain/mobilebert/mobilebert_from_ib_bert.yaml", "configs/gkd/mobilebert/2_pretrain.yaml"]


def test_configs_are_in_the_smoke_test_skip_set():
    from tests.test_configs import NEEDS_MOBILEBERT

    assert NEEDS_MOBILEBERT == set(CONFIGS)


@pytest.mark.parametrize("config", CONFIGS)
def test_config_trains_on_tiny_mobilebert(config, tmp_path):
    from lightning_kd.cli import run_cli

    paths = {}
    for role, model in (("teacher", teacher(layers=4)), ("student", tiny_mobilebert(layers=2, seed=2))):
        model.save_pretrained(tmp_path / role)
        write_tiny_tokenizer(tmp_path / role)
        paths[role] = str(tmp_path / role)
    document = yaml.safe_load((ROOT / config).read_text())
    init = document["model"]["init_args"]
    init["teacher"], init["student"] = paths["teacher"], paths["student"]
    document["data"] = {
        "class_path": "lightning_kd.data.PretrainDataModule",
        "init_args": {"tokenizer": paths["teacher"], "train_files": [str(write_corpus(tmp_path))], "block_size": 16, "batch_size": 4, "validation_fraction": 0.1},
    }
    callbacks = (document.get("trainer") or {}).get("callbacks")  # the stages need none: the method attaches them
    document["trainer"] = quick_trainer_section(tmp_path, callbacks)
    document["export"] = {"dirpath": str(tmp_path / "export")}
    patched = tmp_path / "config.yaml"
    patched.write_text(yaml.safe_dump(document))
    cli = run_cli(["fit", "--config", str(patched)])
    assert cli.trainer.global_step == 2
    assert cli.model.stage == 2  # 3 equal phases over 2 steps: steps 0, 1 → stages 1, 2
    assert (tmp_path / "export" / "config.json").exists()
