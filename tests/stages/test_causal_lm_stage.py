"""The causal-LM stage: labels shifted once, upstream, and every reader pairing position t with label t.

The checks are written against the models' own logits, position by position: the hard term is Hugging
Face's own causal-LM loss on the unshifted labels; a label changed at position t + 1 moves only row
t's share of the hard and soft terms; prompt and padding positions never count; compact heads and
whole logits agree; evaluation, per-example teacher weights and the export read the same positions.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lightning_kd.losses.prediction import PredictionLoss
from lightning_kd.methods import KD, StudentOnly, TinyBERT
from lightning_kd.methods.multi_teacher import MTBERT
from lightning_kd.methods.multi_teacher.mt_bert import teacher_gold_loss
from lightning_kd.stages import ALIGNED, STAGES, shift_labels, stage_of_class
from tests.conftest import make_batch
from tests.families import DECODERS, make_family_model

CAUSAL = STAGES["causal_lm"]


def _kd(family: str, **knobs) -> KD:
    # A student of its own weights: far enough from the teacher that the KL is not all rounding.
    teacher = make_family_model(family, "causal", layers=4, seed=1, initializer_range=0.5)
    student = make_family_model(family, "causal", layers=2, seed=3, initializer_range=0.5)
    return KD(teacher=teacher, student=student, **knobs).eval()


def _logits(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.double()


def test_prepare_shifts_once_and_is_idempotent():
    batch = make_batch("causal")
    prepared = CAUSAL.prepare(batch)
    assert prepared[ALIGNED] and torch.equal(prepared["labels"][:, :-1], batch["labels"][:, 1:])
    assert bool((prepared["labels"][:, -1] == -100).all())
    assert CAUSAL.prepare(prepared) is prepared  # a second prepare never shifts again
    assert torch.equal(batch["labels"], make_batch("causal")["labels"])  # the caller's batch is untouched
    assert torch.equal(shift_labels(torch.tensor([[5, 6, 7]])), torch.tensor([[6, 7, -100]]))
    with pytest.raises(ValueError, match=r"\(B, N\)"):
        CAUSAL.prepare({"input_ids": batch["input_ids"], "labels": torch.zeros(4, dtype=torch.long)})


@pytest.mark.parametrize("family", sorted(DECODERS))
def test_the_stage_is_told_by_the_head_class(family):
    assert stage_of_class(type(make_family_model(family, "causal", layers=2)).__name__) is CAUSAL


@pytest.mark.parametrize("family", sorted(DECODERS))
@pytest.mark.parametrize("compact", [True, False])
def test_hard_term_is_the_models_own_causal_lm_loss(family, compact):
    student = make_family_model(family, "causal", layers=2, seed=2).eval()
    method = StudentOnly(student=student).eval()
    method.compact_heads = compact
    batch = make_batch("causal")
    ours = method.compute_losses(batch)["hard"]
    with torch.no_grad():
        theirs = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss
    torch.testing.assert_close(ours.detach(), theirs, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("family", sorted(DECODERS))
def test_a_label_at_t_plus_1_moves_only_row_t_of_the_hard_term(family):
    method = StudentOnly(student=make_family_model(family, "causal", layers=2, seed=2)).eval()
    batch = make_batch("causal")
    row, t = 0, 5
    logits = _logits(method.student, batch)
    scored = batch["labels"][:, 1:].ne(-100)  # positions 0..N-2 whose next token is scored
    count = int(scored.sum())
    changed = {**batch, "labels": batch["labels"].clone()}
    old, new = int(batch["labels"][row, t + 1]), (int(batch["labels"][row, t + 1]) + 7) % 200 + 5
    changed["labels"][row, t + 1] = new
    log_p = F.log_softmax(logits[row, t], dim=-1)
    expected = (log_p[old] - log_p[new]) / count  # −log p(new) + log p(old), one of `count` rows
    delta = method.compute_losses(changed)["hard"] - method.compute_losses(batch)["hard"]
    torch.testing.assert_close(delta.detach().double(), expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("family", sorted(DECODERS))
@pytest.mark.parametrize("compact", [True, False])
def test_the_soft_term_reads_the_scored_positions_only(family, compact):
    method = _kd(family, prediction=PredictionLoss(temperature=2.0, hard_weight=0.0))
    method.compact_heads = compact
    batch = make_batch("causal")
    s, t = _logits(method.student, batch) / 2.0, _logits(method.teachers[0], batch) / 2.0
    p_t = t.softmax(-1)
    per_row = (p_t * (p_t.log() - s.log_softmax(-1))).sum(-1)  # (B, N) KL(p_T ‖ p_S)
    scored = torch.zeros_like(per_row, dtype=torch.bool)
    scored[:, :-1] = batch["labels"][:, 1:].ne(-100)  # prompt, padding and the last token never count
    expected = 4.0 * per_row[scored].mean()
    torch.testing.assert_close(method.compute_losses(batch)["soft"].detach().double(), expected, rtol=1e-4, atol=1e-7)
    # The ids at padding positions reach nothing the term reads.
    padded = {**batch, "input_ids": batch["input_ids"].masked_fill(~batch["attention_mask"].bool(), 17)}
    torch.testing.assert_close(method.compute_losses(padded)["soft"].detach().double(), expected, rtol=1e-4, atol=1e-7)


def test_dropping_the_label_at_t_plus_1_drops_row_t_from_the_soft_mean():
    method = _kd("llama", prediction=PredictionLoss(hard_weight=0.0))
    batch = make_batch("causal")
    s, t = _logits(method.student, batch), _logits(method.teachers[0], batch)
    p_t = t.softmax(-1)
    kl = (p_t * (p_t.log() - s.log_softmax(-1))).sum(-1)
    scored = torch.zeros_like(kl, dtype=torch.bool)
    scored[:, :-1] = batch["labels"][:, 1:].ne(-100)
    before = method.compute_losses(batch)["soft"].detach()
    dropped = {**batch, "labels": batch["labels"].clone()}
    dropped["labels"][0, 6] = -100  # row 0's position 5 loses its target
    scored_after = scored.clone()
    scored_after[0, 5] = False
    torch.testing.assert_close(before.double(), kl[scored].mean(), rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(method.compute_losses(dropped)["soft"].detach().double(), kl[scored_after].mean(), rtol=1e-4, atol=1e-7)


def test_intermediate_terms_read_the_scored_positions_unless_told_otherwise():
    teacher = make_family_model("llama", "causal", layers=4, seed=1)
    batch = make_batch("causal")
    values = {}
    for choice in ("auto", "scored", "all_tokens"):
        torch.manual_seed(0)  # the same fit layer each time
        method = TinyBERT(teacher=teacher, student_init="teacher_uniform", student_layers=2, terms=["hidden"],
                          intermediate_positions=choice).eval()
        assert method.intermediate_positions == ("scored" if choice == "auto" else choice)
        values[choice] = method.compute_losses(batch)["hidden"].detach()
        if choice == "scored":
            prepared = method.prepare_batch(batch)
            assert torch.equal(prepared["term_positions"], prepared["labels"].ne(-100))
    assert torch.equal(values["auto"], values["scored"])
    assert not torch.allclose(values["scored"], values["all_tokens"])  # the prompt rows count only with all_tokens


def test_scored_intermediate_positions_are_refused_outside_the_causal_stage():
    from tests.conftest import make_tiny_bert

    with pytest.raises(ValueError, match="intermediate_positions='scored' does not apply"):
        TinyBERT(teacher=make_tiny_bert("mlm", seed=1), student_init="teacher_uniform", student_layers=2, intermediate_positions="scored")


def test_mt_bert_weights_each_teacher_by_its_next_token_loss():
    teacher = make_family_model("qwen2", "causal", layers=4, seed=1).eval()
    batch = make_batch("causal")
    prepared = CAUSAL.prepare(batch)
    logits = _logits(teacher, batch)
    per_example = teacher_gold_loss(logits.float(), prepared["labels"])
    for row in range(batch["input_ids"].shape[0]):
        with torch.no_grad():
            own = teacher(input_ids=batch["input_ids"][row:row + 1], attention_mask=batch["attention_mask"][row:row + 1],
                          labels=batch["labels"][row:row + 1]).loss
        torch.testing.assert_close(per_example[row], own, rtol=1e-5, atol=1e-6)
    method = KD(teachers=[teacher, make_family_model("qwen2", "causal", layers=4, seed=4)], multi_teacher=MTBERT(),
                student_init="teacher_uniform", student_layers=2)
    assert torch.isfinite(method.compute_losses(batch)["loss"])


@pytest.mark.parametrize("compact", [True, False])
def test_evaluation_loss_and_metrics_use_the_shifted_labels(compact):
    student = make_family_model("gpt2", "causal", layers=2, seed=2).eval()
    method = StudentOnly(student=student).eval()
    method.compact_heads = compact
    batch = make_batch("causal")
    logged = {}
    method.log = lambda name, value, **_: logged.__setitem__(name, value)
    method.log_dict = lambda metrics, **_: logged.update(metrics.compute())
    metrics = CAUSAL.metrics(None, "val/")
    method._evaluate(batch, metrics, "val/")
    with torch.no_grad():
        own = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
    torch.testing.assert_close(logged["val/loss"], own.loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(logged["val/perplexity"], own.loss.exp(), rtol=1e-4, atol=1e-4)
    targets = batch["labels"][:, 1:]
    keep = targets.ne(-100)
    accuracy = (own.logits[:, :-1].argmax(-1).eq(targets) & keep).sum() / keep.sum()
    torch.testing.assert_close(logged["val/token_accuracy"], accuracy.float())
