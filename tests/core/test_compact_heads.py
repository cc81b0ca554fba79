"""Compact heads: each family's own MLM head run on some rows only gives the full head's logits, loss
and gradients at those rows; the row kinds, the row reader and the fallbacks."""

from __future__ import annotations

import pytest
import torch
from transformers import DebertaV2ForMaskedLM

from lightning_kd.stages import STAGES
from lightning_kd.core.features import FeatureRequest, capture
from lightning_kd.core.logit_rows import mean_per_example, row_mask, rows_at, sum_per_example, widest
from tests.conftest import make_batch, make_tiny_bert
from tests.families import ENCODERS, family_config, make_family_model
from tests.methods.test_mobilebert import tiny_mobilebert

NO_TOKEN_TYPES = {"distilbert", "roberta", "xlm_roberta", "mpnet", "modernbert"}


def _batch(family: str = "bert") -> dict:
    batch = make_batch("mlm")
    if family in NO_TOKEN_TYPES:
        batch.pop("token_type_ids")
    return batch


def _models():
    """Every encoder family's MLM model, DeBERTa-v2's new head and MobileBERT (eval: no dropout)."""
    models = {family: make_family_model(family, "mlm", seed=1) for family in ENCODERS}
    torch.manual_seed(1)
    models["deberta_v2_new_head"] = DebertaV2ForMaskedLM(family_config("deberta_v2", legacy=False))
    models["mobilebert"] = tiny_mobilebert(dropout=0.0)
    return {name: model.eval() for name, model in models.items()}


MODELS = _models()


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("kind", ["labelled", "tokens"])
def test_compact_rows_are_the_full_heads_rows_and_the_loss_is_hfs(name, kind):
    model, batch = MODELS[name], _batch(name.split("_new")[0])
    full = capture(model, batch, FeatureRequest(), with_labels=True)
    compact = capture(model, batch, FeatureRequest(logit_rows=kind), with_labels=True)
    rows = row_mask(batch, kind)
    assert torch.equal(compact.logit_rows, rows) and compact.logits.shape == (int(rows.sum()), model.config.vocab_size)
    torch.testing.assert_close(compact.logits, full.logits[rows], rtol=1e-5, atol=1e-5)
    # HF's own loss (mean cross-entropy over labelled positions), from the compact rows.
    torch.testing.assert_close(compact.loss, full.loss, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", list(MODELS))
def test_no_rows_and_low_precision_run_on_every_family(name):
    model, batch = MODELS[name], _batch(name.split("_new")[0])
    none = capture(model, batch, FeatureRequest(logit_rows="none"))
    assert none.logits.shape == (0, model.config.vocab_size)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        full = capture(model, batch, FeatureRequest(), with_labels=True)
        compact = capture(model, batch, FeatureRequest(logit_rows="labelled"), with_labels=True)
    rows = compact.logit_rows
    torch.testing.assert_close(compact.logits.float(), full.logits[rows].float(), rtol=0.02, atol=0.05)
    torch.testing.assert_close(compact.loss, full.loss.float(), rtol=0.01, atol=0.01)


@pytest.mark.parametrize("name", ["bert", "albert", "electra", "roberta"])
def test_gradients_reach_the_students_own_head_and_tied_embeddings(name):
    model = make_family_model(name, "mlm", seed=3).eval()
    batch = _batch(name)
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight, "tied decoder"

    def grads(kind):
        model.zero_grad(set_to_none=True)
        capture(model, batch, FeatureRequest(logit_rows=kind), with_labels=True).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    full, compact = grads("all"), grads("labelled")
    assert set(full) == set(compact)
    head = [n for n in compact if n.startswith(("cls.", "lm_head", "predictions", "generator_"))]
    assert head and any("embeddings.word_embeddings" in n for n in compact), "head and tied embeddings get gradients"
    for key in full:
        torch.testing.assert_close(compact[key], full[key], rtol=1e-4, atol=1e-6, msg=key)


def test_no_rows_means_no_vocabulary_projection():
    model = make_tiny_bert("mlm", seed=1).eval()
    seen = []
    handle = model.get_output_embeddings().register_forward_hook(lambda _m, args, _o: seen.append(args[0].shape[0]))
    features = capture(model, make_batch("mlm"), FeatureRequest(hidden_states=True, logit_rows="none"))
    handle.remove()
    assert seen == [0] and features.logits.shape == (0, 220) and not features.logit_rows.any()
    assert features.hidden_states is not None, "the encoder's outputs are untouched"


def test_models_without_a_known_mlm_head_return_whole_logits():
    classifier = make_tiny_bert("classification")
    features = capture(classifier, make_batch(), FeatureRequest(logit_rows="labelled"))
    assert features.logit_rows is None and features.logits.shape == (4, 2)
    assert STAGES["masked_lm"].head_entry(classifier) is None and STAGES["masked_lm"].head_entry(make_tiny_bert("mlm")) is not None


def test_a_student_whose_hard_labels_differ_takes_the_rows_it_is_given():
    model, batch = make_tiny_bert("mlm", seed=1).eval(), make_batch("mlm")
    hard = {**batch, "labels": batch["labels"].clone()}
    hard["labels"][2:] = -100  # e.g. the random half of random_inputs' dual mode
    rows = row_mask(batch, "labelled")
    features = capture(model, hard, FeatureRequest(logit_rows="labelled"), with_labels=True, rows=rows)
    full = capture(model, hard, FeatureRequest(), with_labels=True)
    assert torch.equal(features.logit_rows, rows)
    torch.testing.assert_close(features.loss, full.loss, rtol=1e-5, atol=1e-6)


def test_row_kinds_and_their_order():
    batch = make_batch("mlm")
    labelled, real = batch["labels"].ne(-100), batch["attention_mask"].bool()
    assert torch.equal(row_mask(batch, "labelled"), labelled) and torch.equal(row_mask(batch, "tokens"), real | labelled)
    assert row_mask(batch, "all") is None and not row_mask(batch, "none").any()
    unlabelled = {k: v for k, v in batch.items() if k != "labels"}
    assert torch.equal(row_mask(unlabelled, "labelled"), real), "the loss masks' fallback: every real token"
    assert widest("labelled", "none") == "labelled" and widest("tokens", "all") == "all" and widest() == "none"
    merged = FeatureRequest(logit_rows="labelled").merge(FeatureRequest(logit_rows="tokens"))
    assert merged.logit_rows == "tokens"
    with pytest.raises(ValueError, match="Unknown logit rows"):
        widest("masked")


def test_reading_rows_that_were_not_computed_is_an_error_naming_the_switch():
    batch = make_batch("mlm")
    rows = row_mask(batch, "labelled")
    logits = torch.randn(int(rows.sum()), 7)
    assert rows_at(logits, rows, rows) is logits, "the same rows are read without a copy"
    subset = rows.clone()
    subset[0] = False
    torch.testing.assert_close(rows_at(logits, rows, subset), logits[subset[rows]])
    with pytest.raises(ValueError, match="compact_heads = False"):
        rows_at(logits, rows, batch["attention_mask"].bool())


def test_per_example_reductions():
    positions = torch.tensor([[True, False, True], [False, False, False], [False, True, False]])
    values = torch.tensor([1.0, 3.0, 5.0])
    assert sum_per_example(values, positions).tolist() == [4.0, 0.0, 5.0]
    assert mean_per_example(values, positions).tolist() == [2.0, 0.0, 5.0]
