"""Vocabulary heads of the twelve families: copied heads reproduce the models' own LM logits, sources
without a head are refused, GLM's tied head and the embedding projection of factorised families."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from lightning_kd.models.embedding_projection import check_vocabulary_scoring, input_projection, states_in_embedding_space
from lightning_kd.models.vocab_head import check_tied_head, load_vocab_head, tied_head_problem
from tests.conftest import make_tiny_bert
from tests.families import DECODERS, ENCODERS, FAMILIES, family_config, make_family_model

FACTORISED = ("electra", "albert")  # 16-wide embeddings under a 32-wide encoder in tests/families.py


def make_lm(family: str, layers: int = 4, seed: int = 0, **overrides):
    """A tiny language model of ``family``: its ``…ForMaskedLM``, or ``…ForCausalLM`` for a decoder."""
    if family in DECODERS:
        torch.manual_seed(seed)
        return AutoModelForCausalLM.from_config(family_config(family, layers, **overrides))
    return make_family_model(family, "mlm", layers=layers, seed=seed, **overrides)


def _inputs(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 220, (2, 10), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def _classifier_on(lm, family: str):
    """A sequence classifier of ``family`` whose encoder/decoder body is ``lm``'s (only a pooler may be new)."""
    classifier = make_family_model(family, "classification", layers=lm.config.num_hidden_layers, seed=7).eval()
    missing, unexpected = classifier.base_model.load_state_dict(lm.base_model.state_dict(), strict=False)
    assert not unexpected and all("pooler" in key for key in missing), (missing, unexpected)
    return classifier


@pytest.mark.parametrize("family", list(FAMILIES))
def test_copied_head_on_a_classifier_reproduces_the_language_models_logits(family):
    """The head copied from the family's LM, applied to a classifier's last hidden state (same body),
    gives the LM's own vocabulary logits."""
    lm = make_lm(family, seed=1).eval()
    classifier = _classifier_on(lm, family)
    head = load_vocab_head(lm, "teacher 0", target=classifier)
    inputs = _inputs()
    with torch.no_grad():
        hidden = classifier(**inputs, output_hidden_states=True).hidden_states[-1]
        logits = head(hidden, classifier.get_input_embeddings().weight)
        torch.testing.assert_close(logits, lm(**inputs).logits, rtol=1e-5, atol=1e-5)
    assert not any(p.shape[0] == lm.config.vocab_size for p in (head.transform.parameters() if head.transform else []))
    if family in ("llama", "qwen2"):  # untied lm_head: the head carries its own decoder
        assert head.decoder is not None and head.bias is None
    else:
        assert head.decoder is None


def test_deberta_v2_new_head_is_supported_too():
    """``legacy=False`` DeBERTa-v2 multiplies by the input embeddings inside its head (no decoder module)."""
    lm = make_lm("deberta_v2", seed=1, legacy=False).eval()
    head = load_vocab_head(lm, "teacher 0")
    inputs = _inputs()
    with torch.no_grad():
        hidden = lm(**inputs, output_hidden_states=True).hidden_states[-1]
        torch.testing.assert_close(head(hidden, lm.get_input_embeddings().weight), lm(**inputs).logits, rtol=1e-5, atol=1e-5)
    assert head.bias is not None and head.decoder is None


def test_student_head_trains_every_parameter_it_holds():
    """No dead parameter (a decoder or a duplicate bias) is copied into the head."""
    for family in FAMILIES:
        lm = make_lm(family, layers=2, seed=2)
        head = load_vocab_head(lm, "student").requires_grad_(True)
        if not list(head.parameters()):
            assert family == "gpt2"  # GPT-2's LM head is its tied word embeddings, without a bias
            continue
        hidden = torch.randn(2, 3, 32)
        head(hidden, lm.get_input_embeddings().weight.detach()).square().mean().backward()
        assert all(p.grad is not None for p in head.parameters()), family


@pytest.mark.parametrize("family", list(FAMILIES))
def test_heads_load_from_checkpoints_and_classifier_checkpoints_are_refused(family, tmp_path):
    lm = make_lm(family, seed=1).eval()
    lm.save_pretrained(tmp_path / "lm")
    classifier = _classifier_on(lm, family)
    head = load_vocab_head(str(tmp_path / "lm"), "teacher 0", target=classifier)
    inputs = _inputs()
    with torch.no_grad():
        hidden = classifier(**inputs, output_hidden_states=True).hidden_states[-1]
        torch.testing.assert_close(head(hidden, classifier.get_input_embeddings().weight), lm(**inputs).logits, rtol=1e-5, atol=1e-5)
    classifier.save_pretrained(tmp_path / "classifier")
    if family == "gpt2":
        # GPT-2's LM head *is* its tied word embeddings (no bias): a classifier checkpoint stores it.
        assert load_vocab_head(str(tmp_path / "classifier"), "teacher 0").transform is None
        return
    with pytest.raises(ValueError, match="stores no|not a language model"):
        load_vocab_head(str(tmp_path / "classifier"), "teacher 0", target=classifier)


def test_modernbert_classifier_checkpoint_without_decoder_bias_is_refused(tmp_path):
    """A ModernBERT classifier's pooling ``head`` has the MLM head's parameter names: only the architecture tells."""
    classifier = make_family_model("modernbert", "classification", decoder_bias=False)
    classifier.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="ModernBertForSequenceClassification, not a language model"):
        load_vocab_head(str(tmp_path), "teacher 0")


@pytest.mark.parametrize("family", list(FAMILIES))
def test_in_memory_classifiers_are_refused_with_the_family_and_the_fix(family):
    classifier = make_family_model(family, "classification")
    with pytest.raises(ValueError, match=r"has no .*-style (MLM|LM) head .*teacher_mlm_heads") as error:
        load_vocab_head(classifier, "teacher 0", target=classifier)
    # The tied head is only offered as a fix where it applies.
    assert ("vocab_head: tied" in str(error.value)) == (family not in FACTORISED)


def test_unknown_families_and_mismatched_heads_are_refused():
    from transformers import CamembertConfig, CamembertForMaskedLM

    unknown = CamembertForMaskedLM(CamembertConfig(vocab_size=220, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64))
    with pytest.raises(ValueError, match="'camembert' model; lightning_kd knows the vocabulary heads of BERT, RoBERTa"):
        load_vocab_head(unknown, "teacher 0")
    with pytest.raises(ValueError, match="only reads hidden states of its own family"):
        load_vocab_head(make_lm("bert"), "student", target=make_family_model("roberta", "classification"))
    with pytest.raises(ValueError, match="same widths"):
        load_vocab_head(make_lm("bert"), "student", target=make_tiny_bert(hidden=64))


# ---------------------------------------------------------------------- tied head and embedding projection
def _classifier_with(family: str, **changes):
    """A tiny classifier of ``family`` with config fields that tests/families.py fixes changed."""
    config = family_config(family)
    for name, value in changes.items():
        setattr(config, name, value)
    config.num_labels = 2
    return AutoModelForSequenceClassification.from_config(config)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_tied_head_is_refused_exactly_for_factorised_embeddings(family):
    model = make_family_model(family, "classification")
    if family in FACTORISED:
        with pytest.raises(ValueError, match=rf"\({family}\) maps its 16-wide word embeddings into its 32-wide hidden space.*vocab_head: mlm"):
            check_tied_head(model, "student")
    else:
        check_tied_head(model, "student")


def test_electra_without_factorisation_has_a_tied_head_but_albert_never_does():
    """ELECTRA only projects when embedding_size != hidden_size; ALBERT always maps its rows in."""
    electra = _classifier_with("electra", embedding_size=32)
    assert input_projection(electra) is None and tied_head_problem(electra) is None
    albert = _classifier_with("albert", embedding_size=32)
    assert input_projection(albert) is not None and tied_head_problem(albert) is not None


@pytest.mark.parametrize("family", list(ENCODERS))
def test_states_in_embedding_space_score_rows_as_the_encoder_receives_them(family):
    """(X W)·e_v = X·(W e_v): the mapped states scored against E equal the states scored against the
    rows projected into the hidden space; without a projection the states are unchanged."""
    model = make_family_model(family, "classification", seed=3)
    states = torch.randn(2, 5, 32)
    rows = model.get_input_embeddings().weight.detach()
    projection = input_projection(model)
    mapped = states_in_embedding_space(model, states)
    if family in FACTORISED:
        assert projection is not None and mapped.shape == (2, 5, 16)
        rows_in_hidden_space = rows @ projection.weight.detach().T  # W e_v for every row, (V, 32)
        torch.testing.assert_close(mapped @ rows.T, states @ rows_in_hidden_space.T, rtol=1e-5, atol=1e-5)
    else:
        assert projection is None and mapped is states


def test_a_factorised_family_without_a_known_projection_is_refused():
    from transformers import MobileBertConfig, MobileBertForSequenceClassification

    config = MobileBertConfig(vocab_size=220, hidden_size=32, embedding_size=16, num_hidden_layers=1, num_attention_heads=4,
                              intermediate_size=64, intra_bottleneck_size=16, true_hidden_size=16)
    model = MobileBertForSequenceClassification(config)
    with pytest.raises(ValueError, match=r"\(mobilebert\) has 16-wide word embeddings but 32-wide hidden states"):
        check_vocabulary_scoring(model, "student", "ERDistill's global term")
    with pytest.raises(ValueError, match="vocab_head='tied' does not apply"):
        check_tied_head(model, "student")
    with pytest.raises(ValueError, match="'mobilebert' model"):
        load_vocab_head(model, "student")

