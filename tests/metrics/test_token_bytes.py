"""Bits per byte: the bytes each token spells, for byte-level BPE and SentencePiece-style tokenizers
(built offline from a small corpus), summed over an encoding, are the text's UTF-8 bytes; the metric is
the summed NLL in bits over those bytes, by hand."""

from __future__ import annotations

import math

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from lightning_kd.metrics import build_lm_metrics
from lightning_kd.metrics.token_bytes import byte_rule, token_byte_lengths

CORPUS = [
    "The film was a quiet triumph, über-stylish and naïve — a café of ideas.",
    "Plot: two friends drive to the coast; 東京 is never mentioned. Emoji 🎬 at the end!",
    "Reviews disagree\twildly, but the score (4/5) holds.\nNew lines too.",
] * 20
TEXTS = ["A naïve café review — 4/5 🎬\nsecond line", "東京 and über, tab\there", "plain words only"]


def _byte_level() -> PreTrainedTokenizerFast:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(CORPUS, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|endoftext|>")


def _sentencepiece_style() -> PreTrainedTokenizerFast:
    tokenizer = Tokenizer(models.BPE(byte_fallback=True, unk_token=None))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="never")
    tokenizer.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()])
    bytes_ = [f"<0x{value:02X}>" for value in range(256)]
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["</s>", *bytes_], initial_alphabet=[])
    tokenizer.train_from_iterator([text for text in CORPUS if "東" not in text], trainer)  # 東京 only as byte fallbacks
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="</s>")


@pytest.mark.parametrize(("build", "rule"), [(_byte_level, "byte_level"), (_sentencepiece_style, "sentencepiece")])
def test_the_tokens_of_a_text_spell_its_bytes(build, rule):
    tokenizer = build()
    assert byte_rule(tokenizer) == rule
    lengths = token_byte_lengths(tokenizer)
    assert lengths.shape == (len(tokenizer),)
    assert lengths[tokenizer.eos_token_id] == 0, "special tokens spell no text"
    for text in TEXTS:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert tokenizer.decode(ids) == text
        assert int(lengths[ids].sum()) == len(text.encode("utf-8")), text
    if rule == "sentencepiece":
        assert any(token.startswith("<0x") for token in tokenizer.convert_ids_to_tokens(tokenizer("東京")["input_ids"]))


def test_bits_per_byte_is_the_nll_in_bits_over_the_scored_bytes():
    g = torch.Generator().manual_seed(0)
    vocab = 12
    token_bytes = torch.tensor([0, 1, 2, 3, 1, 4, 2, 1, 5, 3, 1, 2])
    logits = torch.randn(2, 5, vocab, generator=g)
    labels = torch.randint(0, vocab, (2, 5), generator=g)
    labels[0, :2] = -100
    metrics = build_lm_metrics("val/", token_bytes)
    metrics.update(logits[:1], labels[:1])
    metrics.update(logits[1:], labels[1:])
    out = metrics.compute()
    nll = bytes_ = 0.0
    for b in range(2):
        for t in range(5):
            label = int(labels[b, t])
            if label == -100:
                continue
            nll -= float(torch.log_softmax(logits[b, t].double(), -1)[label])
            bytes_ += int(token_bytes[label])
    assert out["val/bits_per_byte"].item() == pytest.approx(nll / (math.log(2) * bytes_), rel=1e-5)
    assert out["val/perplexity"].item() == pytest.approx(math.exp(nll / 8), rel=1e-5)
