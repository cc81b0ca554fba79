"""Shared fixtures: a tiny WordPiece tokenizer on disk and tiny in-memory BERT teachers/students.

Everything here is built offline in milliseconds; no test downloads anything.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tiny tensors run fastest on one thread, and CI's two cores are then not oversubscribed.
torch.set_num_threads(1)

WORDS = (
    "the a an and or but not is was are were be been this that it its of to in on for with as by at "
    "movie film story plot actor actors acting director scene scenes good bad great terrible boring "
    "funny fun sad love hate best worst fresh rotten review reviews watch watched time times "
    "very really quite too so more most less least no yes one two three is isn't don't can't "
    "question answer sentence premise hypothesis entail contradict neutral true false because"
).split()
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def write_tiny_tokenizer(directory: Path) -> Path:
    """Write a BERT WordPiece tokenizer with a ~200-token vocabulary into ``directory``."""
    from transformers import BertTokenizer

    directory.mkdir(parents=True, exist_ok=True)
    chars = [chr(c) for c in range(ord("a"), ord("z") + 1)] + list("0123456789.,!?'-")
    pieces = [f"##{c}" for c in chars]
    vocab = list(dict.fromkeys(SPECIALS + WORDS + chars + pieces))
    # transformers 5 takes the vocabulary itself (``vocab_file=`` is silently ignored there).
    tokenizer = BertTokenizer(vocab={token: index for index, token in enumerate(vocab)}, do_lower_case=True)
    tokenizer.save_pretrained(directory)
    return directory


#: Special tokens of the tiny decoder-LM tokenizer (no [CLS]/[SEP]; EOS ends documents and turns).
LM_SPECIALS = ["<pad>", "<unk>", "<s>", "</s>", "<|user|>", "<|assistant|>", "<|end|>"]
LM_CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} <|end|> {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|> {% endif %}"
)


def write_tiny_lm_tokenizer(directory: Path, pad: bool = True) -> Path:
    """Write a word-level decoder-LM tokenizer (BOS/EOS, a chat template; a pad token unless ``pad=False``)
    over :data:`WORDS` into ``directory``: ids fit the tiny models' 220-token vocabulary."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    directory.mkdir(parents=True, exist_ok=True)
    vocab = {token: index for index, token in enumerate(dict.fromkeys(LM_SPECIALS + WORDS))}
    model = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    model.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    specials = {"unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>", **({"pad_token": "<pad>"} if pad else {})}
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=model, extra_special_tokens=LM_SPECIALS[4:], **specials)
    tokenizer.chat_template = LM_CHAT_TEMPLATE
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory) -> Path:
    """Directory holding a tiny WordPiece tokenizer (loadable with ``AutoTokenizer``)."""
    return write_tiny_tokenizer(tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_tokenizer_dir)


def tiny_bert_config(vocab_size: int = 220, layers: int = 4, hidden: int = 32, heads: int = 4, **overrides):
    """A tiny ``BertConfig`` with eager attention (so attentions can be captured)."""
    from transformers import BertConfig

    config = BertConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=hidden * 2,
        max_position_embeddings=64,
        type_vocab_size=2,
        **overrides,
    )
    config._attn_implementation = "eager"
    return config


def make_tiny_bert(kind: str = "classification", seed: int = 0, vocab_size: int = 220, **config_kwargs):
    """Build a tiny BERT with a sequence-classification (``kind="classification"``) or MLM head."""
    from transformers import BertForMaskedLM, BertForSequenceClassification

    torch.manual_seed(seed)
    config = tiny_bert_config(vocab_size=vocab_size, **config_kwargs)
    cls = BertForSequenceClassification if kind == "classification" else BertForMaskedLM
    return cls(config)


def make_batch(kind: str = "classification", batch: int = 4, length: int = 12, vocab_size: int = 220, seed: int = 0):
    """A padded batch shaped like the data modules produce (the last rows carry padding).

    ``kind``: ``"classification"`` (one label per row), ``"mlm"`` (masked tokens with their labels) or
    ``"causal"`` (Hugging Face's causal-LM convention: labels are the input ids, unshifted, ``-100`` on
    padding and on a prompt of 3 tokens in odd rows; no token type ids).
    """
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(5, vocab_size, (batch, length), generator=g)
    attention_mask = torch.ones(batch, length, dtype=torch.long)
    for row in range(batch):
        pad = (row * 3) % (length // 2)
        if pad:
            attention_mask[row, -pad:] = 0
            input_ids[row, -pad:] = 0
    input_ids[:, 0] = 2  # [CLS]
    out = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": torch.zeros_like(input_ids)}
    if kind == "classification":
        out["labels"] = torch.randint(0, 2, (batch,), generator=g)
    elif kind == "causal":
        labels = input_ids.masked_fill(~attention_mask.bool(), -100)
        labels[1::2, :3] = -100  # a prompt: not scored
        out = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
    else:
        labels = torch.full_like(input_ids, -100)
        chosen = (torch.rand(batch, length, generator=g) < 0.3) & attention_mask.bool()
        chosen[:, 1] = True
        labels[chosen] = input_ids[chosen]
        out["input_ids"] = input_ids.masked_fill(chosen, 4)
        out["labels"] = labels
    return out


@pytest.fixture
def tiny_teacher():
    return make_tiny_bert("classification", seed=1)


@pytest.fixture
def tiny_student():
    return make_tiny_bert("classification", seed=2, layers=2, hidden=16)
