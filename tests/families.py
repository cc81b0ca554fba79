"""Tiny in-memory models of every Hugging Face family lightning_kd supports or refuses.

Each family has a config builder with the same small shape (vocabulary 220 — the tiny WordPiece
tokenizer of ``conftest.py`` — width 32, 4 heads) so teachers (4 layers) and students (2 layers)
of one family pair up. The families cover what users bring: BERT-shaped encoders, factorised
embeddings (ELECTRA, ALBERT), shared layers (ALBERT), other attention maths (DeBERTa-v2's
disentangled attention, MPNet's relative bias), alternating sliding-window attention with rotary
embeddings (ModernBERT) and decoder LMs (GPT-2, Llama with rotary embeddings, Qwen2 with
grouped-query attention).

Nothing is downloaded; building a model takes milliseconds.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, AutoModelForSequenceClassification, PretrainedConfig

VOCAB = 220
WIDTH = 32
HEADS = 4
PAD = 0


def _bert(layers: int, **kw):
    from transformers import BertConfig

    return BertConfig(**{**dict(vocab_size=VOCAB, hidden_size=WIDTH, num_hidden_layers=layers, num_attention_heads=HEADS,
                      intermediate_size=2 * WIDTH, max_position_embeddings=64), **kw})


def _roberta(layers: int, **kw):
    from transformers import RobertaConfig

    # RoBERTa positions start after the padding index: 64 usable positions need 64 + pad + 1.
    return RobertaConfig(**{**dict(vocab_size=VOCAB, hidden_size=WIDTH, num_hidden_layers=layers, num_attention_heads=HEADS,
                         intermediate_size=2 * WIDTH, max_position_embeddings=66, pad_token_id=PAD), **kw})


def _xlm_roberta(layers: int, **kw):
    from transformers import XLMRobertaConfig

    return XLMRobertaConfig(**{**dict(vocab_size=VOCAB, hidden_size=WIDTH, num_hidden_layers=layers, num_attention_heads=HEADS,
                            intermediate_size=2 * WIDTH, max_position_embeddings=66, pad_token_id=PAD), **kw})


def _distilbert(layers: int, **kw):
    from transformers import DistilBertConfig

    return DistilBertConfig(**{**dict(vocab_size=VOCAB, dim=WIDTH, n_layers=layers, n_heads=HEADS, hidden_dim=2 * WIDTH,
                            max_position_embeddings=64, pad_token_id=PAD), **kw})


def _electra(layers: int, **kw):
    from transformers import ElectraConfig

    # Factorised embeddings: 16-wide token embeddings projected up to the 32-wide encoder.
    return ElectraConfig(**{**dict(vocab_size=VOCAB, embedding_size=16, hidden_size=WIDTH, num_hidden_layers=layers,
                         num_attention_heads=HEADS, intermediate_size=2 * WIDTH, max_position_embeddings=64), **kw})


def _albert(layers: int, **kw):
    from transformers import AlbertConfig

    # One shared layer applied `layers` times, on factorised 16-wide embeddings.
    return AlbertConfig(**{**dict(vocab_size=VOCAB, embedding_size=16, hidden_size=WIDTH, num_hidden_layers=layers,
                        num_attention_heads=HEADS, intermediate_size=2 * WIDTH, max_position_embeddings=64,
                        num_hidden_groups=1, inner_group_num=1, pad_token_id=PAD), **kw})


def _deberta_v2(layers: int, **kw):
    from transformers import DebertaV2Config

    return DebertaV2Config(**{**dict(vocab_size=VOCAB, hidden_size=WIDTH, num_hidden_layers=layers, num_attention_heads=HEADS,
                           intermediate_size=2 * WIDTH, max_position_embeddings=64, relative_attention=True,
                           position_buckets=16, max_relative_positions=64, pos_att_type=["p2c", "c2p"],
                           pad_token_id=PAD), **kw})


def _mpnet(layers: int, **kw):
    from transformers import MPNetConfig

    return MPNetConfig(**{**dict(vocab_size=VOCAB, hidden_size=WIDTH, num_hidden_layers=layers, num_attention_heads=HEADS,
                       intermediate_size=2 * WIDTH, max_position_embeddings=66, pad_token_id=PAD), **kw})


def _modernbert(layers: int, **kw):
    from transformers import ModernBertConfig

    # Every second layer is global; the others see a window of 8 tokens, so a 12-token batch
    # exercises the sliding-window mask.
    return ModernBertConfig(**{**dict(vocab_size=VOCAB, hidden_size=WIDTH, num_hidden_layers=layers, num_attention_heads=HEADS,
                            intermediate_size=2 * WIDTH, max_position_embeddings=64, global_attn_every_n_layers=2,
                            local_attention=8, pad_token_id=PAD, bos_token_id=2, eos_token_id=3, cls_token_id=2,
                            sep_token_id=3), **kw})


def _gpt2(layers: int, **kw):
    from transformers import GPT2Config

    return GPT2Config(**{**dict(vocab_size=VOCAB, n_embd=WIDTH, n_layer=layers, n_head=HEADS, n_inner=2 * WIDTH, n_positions=64,
                      pad_token_id=PAD, bos_token_id=2, eos_token_id=3), **kw})


def _llama(layers: int, **kw):
    from transformers import LlamaConfig

    return LlamaConfig(**{**dict(vocab_size=VOCAB, hidden_size=WIDTH, num_hidden_layers=layers, num_attention_heads=HEADS,
                       num_key_value_heads=HEADS, intermediate_size=2 * WIDTH, max_position_embeddings=64,
                       pad_token_id=PAD, bos_token_id=2, eos_token_id=3), **kw})


def _qwen2(layers: int, **kw):
    from transformers import Qwen2Config

    # Grouped-query attention: 4 query heads share 2 key/value heads.
    return Qwen2Config(**{**dict(vocab_size=VOCAB, hidden_size=WIDTH, num_hidden_layers=layers, num_attention_heads=HEADS,
                       num_key_value_heads=2, intermediate_size=2 * WIDTH, max_position_embeddings=64,
                       pad_token_id=PAD, bos_token_id=2, eos_token_id=3), **kw})


#: family name → config builder ``(layers, **overrides) -> PretrainedConfig``.
FAMILIES: dict[str, Callable[..., PretrainedConfig]] = {
    "bert": _bert,
    "roberta": _roberta,
    "distilbert": _distilbert,
    "electra": _electra,
    "albert": _albert,
    "deberta_v2": _deberta_v2,
    "mpnet": _mpnet,
    "xlm_roberta": _xlm_roberta,
    "modernbert": _modernbert,
    "gpt2": _gpt2,
    "llama": _llama,
    "qwen2": _qwen2,
}
#: Decoder LMs: causal attention, no masked-LM head (the pre-training stage does not apply).
DECODERS = frozenset({"gpt2", "llama", "qwen2"})
ENCODERS = tuple(name for name in FAMILIES if name not in DECODERS)


def family_config(family: str, layers: int = 4, attn: str = "eager", **overrides) -> PretrainedConfig:
    """A tiny config of ``family`` with ``layers`` layers and the given attention implementation."""
    config = FAMILIES[family](layers, **overrides)
    config._attn_implementation = attn
    return config


def make_family_model(family: str, kind: str = "classification", layers: int = 4, seed: int = 0, num_labels: int = 2,
                      attn: str = "eager", **overrides):
    """A tiny ``family`` model with a sequence-classification (``kind="classification"``), MLM
    (``"mlm"``) or causal-LM (``"causal"``) head.

    Raises:
        ValueError: ``kind="mlm"`` for a decoder family (no masked-LM head exists), ``"causal"`` for an encoder.
    """
    if kind == "mlm" and family in DECODERS:
        raise ValueError(f"{family} is a decoder LM: it has no masked-LM head.")
    if kind == "causal" and family not in DECODERS:
        raise ValueError(f"{family} is an encoder: it has no causal-LM head.")
    config = family_config(family, layers, attn, **overrides)
    if kind == "classification":
        config.num_labels = num_labels
    torch.manual_seed(seed)
    auto = {"classification": AutoModelForSequenceClassification, "mlm": AutoModelForMaskedLM, "causal": AutoModelForCausalLM}[kind]
    return auto.from_config(config)
