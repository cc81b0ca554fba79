"""Every method that reduces a sequence to one vector pools each model by its own rule (core.pooling).

Per family of ``tests/families.py``: with ``auto`` the pooled token depends on the input, so changing
the last real token of a row changes that row's pooled vector and the method's pooled loss term —
for decoder LMs too, whose position 0 never sees that token. Encoders keep the [CLS] numbers (the
formula tests of each method's own file pin them with ``[:, 0]``).
"""

from __future__ import annotations

import math

import pytest
import torch

from lightning_kd.core.features import FeatureRequest, capture
from lightning_kd.core.pooling import pool, real_token_index, resolve_pair
from lightning_kd.losses.prediction import PredictionLoss
from lightning_kd.methods import ALPKD, KD, MGSKD, PKD, RAILKD, SID, UniversalKD
from lightning_kd.methods.multi_teacher import RLKD
from tests.conftest import make_batch
from tests.families import DECODERS, FAMILIES, make_family_model

#: method → the loss term its pooling feeds.
TERMS = {"pkd": "patience", "alp_kd": "alp", "universal_kd": "intermediate", "sid": "cls_cosine", "rail_kd": "rail", "mgskd": "sample"}


def build(name: str, family: str, pooling: str = "auto", teacher_family: str | None = None, **knobs):
    """``name`` on a 4-layer teacher and a 2-layer student of ``family`` (teacher of ``teacher_family`` if given)."""
    teacher = make_family_model(teacher_family or family, layers=4, seed=1)
    common = {"teacher": teacher, "student": make_family_model(family, layers=2, seed=2), "task_head": "sequence_classification", "num_labels": 2}
    if name == "pkd":
        method = PKD(pooling=pooling, **common, **knobs)
    elif name == "alp_kd":
        method = ALPKD(pooling=pooling, prediction=None, **common)
    elif name == "universal_kd":
        method = UniversalKD(pooling=pooling, **common)
    elif name == "sid":
        method = SID(pooling=pooling, **common)
        method.stage = 2  # both student layers matched
    elif name == "rail_kd":
        method = RAILKD(pooling=pooling, layer_selection="uniform", **common)
    else:
        method = MGSKD(terms=["sample"], sample_pooling=pooling, sample_level_from=1, relation_heads=4, **common)
    return method.eval()


def family_batch(family: str, side: str = "right") -> dict:
    """The test batch (rows 1–3 padded); decoders get no token types; ``side="left"`` moves the padding first."""
    batch = make_batch()
    if family in DECODERS:
        del batch["token_type_ids"]
    if side == "left":
        for row in range(batch["input_ids"].shape[0]):
            shift = int((batch["attention_mask"][row] == 0).sum())
            for key in ("input_ids", "attention_mask", *(["token_type_ids"] if "token_type_ids" in batch else [])):
                batch[key][row] = batch[key][row].roll(shift)
    return batch


def change_last_real_token(batch: dict, row: int) -> dict:
    """A copy of ``batch`` whose ``row`` has another id at its last real position."""
    ids = batch["input_ids"].clone()
    last = int(real_token_index(batch["attention_mask"], *ids.shape, "last", ids.device)[row])
    ids[row, last] = 5 + (int(ids[row, last]) - 4) % 215
    return dict(batch, input_ids=ids)


def terms_or_skip(name: str, method, batch: dict, family: str) -> dict:
    try:
        return method.compute_losses(batch)
    except ValueError as error:  # SID's attention term refuses some families (not a pooling matter)
        if name == "sid" and "attention" in str(error):
            pytest.skip(f"SID's attention term does not run on {family}: {str(error)[:80]}")
        raise


def build_or_skip(name: str, family: str, **kwargs):
    try:
        return build(name, family, **kwargs)
    except ValueError as error:
        if name == "sid" and "attention" in str(error):
            pytest.skip(f"SID's attention term does not run on {family}: {str(error)[:80]}")
        raise


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("name", list(TERMS))
def test_auto_pools_a_token_that_sees_the_last_real_token(name, family, side):
    method, batch = build_or_skip(name, family), family_batch(family, side)
    changed = change_last_real_token(batch, row=1)
    s_mode, t_mode = resolve_pair(getattr(method, "sample_pooling", None) or method.pooling, method.student, method.teachers[0], 0)
    assert (s_mode, t_mode) == (("last", "last") if family in DECODERS else ("first", "first"))
    with torch.no_grad():
        before, after = (capture(method.student, b, FeatureRequest(hidden_states=True)).hidden_states[-1] for b in (batch, changed))
        pooled_before, pooled_after = pool(before, batch["attention_mask"], s_mode), pool(after, batch["attention_mask"], s_mode)
        assert not torch.allclose(pooled_before[1], pooled_after[1], atol=1e-6)
        torch.testing.assert_close(pooled_before[[0, 2, 3]], pooled_after[[0, 2, 3]])
        term_before = terms_or_skip(name, method, batch, family)[TERMS[name]].item()
        assert method.compute_losses(batch)[TERMS[name]].item() == term_before  # eval on CPU is deterministic
        term_after = method.compute_losses(changed)[TERMS[name]].item()
    assert term_after != term_before, f"{TERMS[name]} ignores the input"
    if family in DECODERS:  # the pooled token itself changed: far above float noise (encoders' [CLS] moves ~1e-5)
        assert abs(term_after - term_before) > 1e-4 * abs(term_before)


@pytest.mark.parametrize("family", sorted(DECODERS))
@pytest.mark.parametrize("name", list(TERMS))
def test_each_method_trains_a_decoder_with_finite_losses(name, family):
    method, batch = build_or_skip(name, family), family_batch(family)
    method.train()
    terms = terms_or_skip(name, method, batch, family)
    assert all(torch.isfinite(value) for value in terms.values()), terms
    terms["loss"].backward()
    grads = [p.grad for p in method.student.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads) and any(g.abs().sum() > 0 for g in grads)
    assert all(p.grad is None for t in method.teachers for p in t.parameters())


@pytest.mark.parametrize("name", list(TERMS))
def test_first_is_refused_on_a_decoder(name):
    with pytest.raises(ValueError, match="attends only to itself"):
        build(name, "gpt2", pooling="first")


def test_a_decoder_teacher_and_an_encoder_student_each_use_their_own_token():
    """PKD's patience with a GPT-2 teacher and a BERT student: student [CLS] against teacher last real token."""
    # The distance summed over features, as the formula below writes it (the default averages them).
    method = build("pkd", "bert", teacher_family="gpt2", feature_reduction="sum", pair_reduction="sum")
    batch = family_batch("bert")
    assert resolve_pair(method.pooling, method.student, method.teachers[0], 0) == ("first", "last")
    with torch.no_grad():
        patience = method.compute_losses(batch)["patience"].item()
        hs = capture(method.student, batch, FeatureRequest(hidden_states=True)).hidden_states
        ht = capture(method.teachers[0], batch, FeatureRequest(hidden_states=True)).hidden_states
    last = batch["attention_mask"].sum(dim=1) - 1  # right padding
    expected = 0.0
    for b in range(4):  # 2 → 4 layers: student H_1 ↔ teacher H_2, [CLS] ↔ last real token, normalised, summed
        s_vec, t_vec = hs[1][b, 0].tolist(), ht[2][b, int(last[b])].tolist()
        ns, nt = math.sqrt(sum(v * v for v in s_vec)), math.sqrt(sum(v * v for v in t_vec))
        expected += sum((x / ns - y / nt) ** 2 for x, y in zip(s_vec, t_vec)) / 4
    assert patience == pytest.approx(method.beta * expected, rel=1e-5)


def test_pooling_knobs_that_would_never_pool_are_refused():
    with pytest.raises(ValueError, match="compares every token"):
        PKD(teacher=make_family_model("bert", seed=1), student=make_family_model("bert", layers=2), positions="all_tokens", pooling="last")
    with pytest.raises(ValueError, match="sample_pooling set, but no term"):
        MGSKD(teacher=make_family_model("bert", seed=1), student=make_family_model("bert", layers=2), terms=["token"],
              sample_pooling="last", relation_heads=4)
    with pytest.raises(ValueError, match="needs semantic_model"):
        RLKD(num_teachers=2, num_classes=2, semantic_pooling="mean")
    with pytest.raises(ValueError, match="do not apply"):
        RLKD(stage="average", semantic_pooling="last")
    with pytest.raises(ValueError, match="attends only to itself"):
        RLKD(num_teachers=2, num_classes=2, semantic_model=make_family_model("llama"), semantic_pooling="first")


def test_universal_kd_keeps_cls_as_the_gkd_name_of_first():
    batch = family_batch("bert")
    with torch.no_grad():
        cls, auto = (build("universal_kd", "bert", pooling=p).compute_losses(batch)["intermediate"] for p in ("cls", "auto"))
    assert torch.equal(cls, auto)
    with pytest.raises(ValueError, match="attends only to itself"):
        build("universal_kd", "qwen2", pooling="cls")


@pytest.mark.parametrize("family", list(FAMILIES))
def test_rl_kd_semantic_state_sees_the_last_real_token(family):
    encoder = make_family_model(family, layers=2, seed=5)
    strategy = RLKD(num_teachers=2, num_classes=2, semantic_model=encoder)
    batch = family_batch(family)
    changed = change_last_real_token(batch, row=1)
    with torch.no_grad():
        before, after = strategy.semantic_state(batch), strategy.semantic_state(changed)
    assert not torch.allclose(before[1], after[1], atol=1e-6)
    torch.testing.assert_close(before[[0, 2, 3]], after[[0, 2, 3]])


@pytest.mark.parametrize("family", sorted(DECODERS))
def test_rl_kd_trains_decoder_teachers_with_a_decoder_semantic_model(family):
    teachers = [make_family_model(family, layers=3, seed=1), make_family_model(family, layers=2, seed=3)]
    method = KD(teachers=teachers, student=make_family_model(family, layers=2, seed=2), prediction=PredictionLoss(temperature=2.0),
                multi_teacher=RLKD(num_teachers=2, num_classes=2, semantic_model=make_family_model(family, layers=2, seed=5)))
    batch = family_batch(family)
    for _ in range(2):  # the second step also trains the agent
        terms = method.compute_losses(batch)
        assert all(torch.isfinite(value) for value in terms.values()), terms
        terms["loss"].backward()
    assert method.multi_teacher.agent.state_layer.weight.grad is not None
