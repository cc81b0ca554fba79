"""Causal-LM report: teacher vs student as language models, quality, size, speed and sample generations.

``python -m lightning_kd.report`` dispatches here when the exported teacher is a decoder LM
(``…ForCausalLM``, ``…LMHeadModel``). Per model:

* **held-out perplexity**, token-weighted over all scored tokens (``exp(total NLL / tokens)``), and
  next-token accuracy, on the test rows of :class:`~lightning_kd.data.CausalLMDataModule`: a text
  file packed into ``block_size``-token blocks, or ``embedded:chitchat``: the conversations that
  training on it holds out by default (prompt/response pairs, response tokens scored, chat template
  applied when the tokenizer has one). Labels arrive unshifted (Hugging Face's
  convention), so the logits at ``t`` are scored against the label at ``t + 1``;
* parameters and layers;
* **generation speed**: greedy decoding of exactly ``max_new_tokens`` new tokens for every prompt
  (batch 1, the same prompts for both models), in new tokens per second, the median of ``repeats``
  passes after a warm-up;
* **greedy generations** for the prompts (stopping at EOS), printed side by side. With ``chat=True``
  a prompt is wrapped in the tokenizer's chat template as a user message, when it has one.

Each model is scored with its own tokenizer (``tokenizer`` overrides both); when the two differ the
perplexities count different tokens, and the report says so.
"""

from __future__ import annotations

import inspect
import statistics
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from lightning_kd.core.features import model_inputs
from lightning_kd.data.chitchat import CHITCHAT
from lightning_kd.metrics import build_lm_metrics
from lightning_kd.metrics.token_bytes import byte_rule, token_byte_lengths

#: Held-out prompts used when none are given (not drawn from any training corpus of lightning_kd).
DEFAULT_PROMPTS = (
    "The capital of France is",
    "Once upon a time, in a small village by the sea,",
    "The three primary colours are",
    "What is the best way to learn a new language?",
)
DEFAULT_TEXT = CHITCHAT
TEXT_BLOCK, EXAMPLE_BLOCK = 256, 1024


@dataclass
class LMScores:
    """One model's row of the report."""

    name: str
    layers: int | str
    parameters: int
    perplexity: float
    token_accuracy: float
    tokens: int
    bits_per_byte: float
    byte_rule: str  # how the tokenizer's bytes were counted (lightning_kd.metrics.token_bytes.byte_rule)
    tokens_per_second: float
    generations: list[str] = field(default_factory=list)


def perplexity(model, batches: Iterable[dict[str, Tensor]], token_bytes: Tensor) -> tuple[float, float, int, float]:
    """``(perplexity, next-token accuracy, scored tokens, bits per byte)`` of ``model`` on batches with
    unshifted labels (``token_bytes``: bytes of text per token id, for bits per byte).

    The logits at ``t`` are scored against ``labels[t + 1]`` (the last position predicts nothing),
    positions labelled -100 are left out, and every number is token-weighted over all batches.
    """
    metrics = build_lm_metrics(token_bytes=token_bytes)
    device = next(model.parameters()).device
    with torch.inference_mode():
        for batch in batches:
            batch = {key: value.to(device) if isinstance(value, Tensor) else value for key, value in batch.items()}
            logits = model(**model_inputs(batch), use_cache=False).logits
            metrics.update(logits[:, :-1], batch["labels"][:, 1:])
    tokens = int(metrics["perplexity"].count.item())
    out = metrics.compute()
    return float(out["perplexity"]), float(out["token_accuracy"]), tokens, float(out["bits_per_byte"])


def encode_prompts(tokenizer, prompts: Sequence[str], chat: bool) -> tuple[list[Tensor], bool]:
    """``(1, L)`` input ids per prompt, and whether the chat template was applied (``chat`` and the tokenizer has one)."""
    templated = chat and bool(getattr(tokenizer, "chat_template", None))
    encoded = []
    for prompt in prompts:
        if templated:
            text = tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
            )
            ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        else:
            ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
        encoded.append(ids)
    return encoded, templated


def _generation_config(tokenizer, max_new_tokens: int, exact: bool):
    from transformers import GenerationConfig

    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    # A fresh config: the checkpoint's own (sampling, temperature, …) must not change greedy decoding.
    return GenerationConfig(
        do_sample=False, num_beams=1, max_new_tokens=max_new_tokens,
        min_new_tokens=max_new_tokens if exact else None,
        eos_token_id=eos, pad_token_id=pad, bos_token_id=tokenizer.bos_token_id,
    )


def _generate(model, ids: Tensor, config) -> Tensor:
    ids = ids.to(next(model.parameters()).device)
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=config)
    return out[0, ids.shape[1]:]


def greedy_generations(model, tokenizer, encoded: Sequence[Tensor], max_new_tokens: int) -> list[str]:
    """The greedy continuation of each prompt, up to ``max_new_tokens`` or EOS, decoded without special tokens."""
    config = _generation_config(tokenizer, max_new_tokens, exact=False)
    return [tokenizer.decode(_generate(model, ids, config), skip_special_tokens=True).strip() for ids in encoded]


def generation_speed(model, tokenizer, encoded: Sequence[Tensor], max_new_tokens: int, repeats: int = 3) -> float:
    """New tokens per second of greedy decoding, exactly ``max_new_tokens`` per prompt (EOS does not stop it),
    batch 1; the median of ``repeats`` passes over all prompts after one untimed pass.

    The untimed pass matters on CPU: the first run of each new shape (every prompt length and cache
    length) is several times slower than the next ones.
    """
    config = _generation_config(tokenizer, max_new_tokens, exact=True)
    for ids in encoded:
        _generate(model, ids, config)
    timings = []
    for _ in range(repeats):
        _synchronize(model)
        start = time.perf_counter()
        generated = sum(_generate(model, ids, config).numel() for ids in encoded)
        _synchronize(model)
        timings.append(generated / (time.perf_counter() - start))
    return statistics.median(timings)


def _synchronize(model) -> None:
    device = next(model.parameters()).device
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def evaluation_batches(
    tokenizer: str, text: str, block_size: int, batch_size: int, max_samples: int | None = None,
    cache_dir: str | None = None,
) -> list:
    """The held-out batches of ``text`` (a file, or an embedded corpus) for the tokenizer ``tokenizer``."""
    from lightning_kd.data import CausalLMDataModule

    fields = {}
    if text == CHITCHAT:
        text, fields = str(_chitchat_validation_file(cache_dir)), dict(prompt_field="prompt", response_field="response")
    # The whole file is held out: it is the validation data, and the training data the module requires
    # (never read by the report; the file is small next to a training corpus).
    data = CausalLMDataModule(
        tokenizer=tokenizer, train_files=[text], validation_files=[text], block_size=block_size, batch_size=batch_size,
        max_eval_samples=max_samples, cache_dir=cache_dir, **fields,
    )
    data.setup("test")
    return list(data.test_dataloader())


def config_batches(config_file: str, tokenizer: str | None = None) -> list:
    """The test batches of the ``CausalLMDataModule`` that a training config's ``data:`` section describes
    (its ``test_files``/``test_fraction`` hold-out, else its validation rows), with ``tokenizer`` instead
    of the config's when given.

    Raises:
        ValueError: the config has no ``data:`` section for a ``CausalLMDataModule``.
    """
    import yaml

    from lightning_kd.data import CausalLMDataModule

    data = (yaml.safe_load(Path(config_file).read_text(encoding="utf-8")) or {}).get("data") or {}
    class_path = data.get("class_path", "CausalLMDataModule")
    if not class_path.endswith("CausalLMDataModule"):
        raise ValueError(f"{config_file}: data is a {class_path}, not a CausalLMDataModule; give --text instead")
    options = dict(data.get("init_args") or {})
    if tokenizer is not None:
        options["tokenizer"] = tokenizer
    module = CausalLMDataModule(**options)
    module.setup("test")
    return list(module.test_dataloader())


def _chitchat_validation_file(cache_dir: str | None) -> Path:
    """The prompt/response file of the Chit-Chat conversations that training on ``embedded:chitchat`` holds out
    (drawn with the data module's default ``validation_fraction`` and ``seed``, in the cache it uses)."""
    import datasets

    from lightning_kd.data import CausalLMDataModule
    from lightning_kd.data.chitchat import write_chitchat_splits
    from lightning_kd.data.sources import locate_embedded

    defaults = inspect.signature(CausalLMDataModule).parameters
    cache = Path(cache_dir or datasets.config.HF_DATASETS_CACHE) / "lightning_kd"
    splits = write_chitchat_splits(
        locate_embedded(CHITCHAT), cache, defaults["validation_fraction"].default, defaults["seed"].default
    )
    return splits["validation"]


def _tokenizers(teacher_dir: str, student_dir: str, tokenizer: str | None) -> tuple[str, str]:
    """The tokenizer source of each model: ``tokenizer`` for both, else each model's own directory (the
    teacher's when the student's has none)."""
    if tokenizer:
        return tokenizer, tokenizer
    from lightning_kd.data.sources import load_tokenizer

    try:
        load_tokenizer(student_dir)
    except FileNotFoundError:
        return teacher_dir, teacher_dir
    return teacher_dir, student_dir


def _same_vocabulary(first: str, second: str) -> bool:
    from lightning_kd.data.sources import load_tokenizer

    return first == second or load_tokenizer(first).get_vocab() == load_tokenizer(second).get_vocab()


def _count(parameters: int) -> str:
    for scale, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if parameters >= scale:
            return f"{parameters / scale:.{2 if unit == 'B' else 1}f} {unit}"
    return str(parameters)


def _cell(text: str) -> str:
    """Text as one Markdown table cell."""
    text = text.replace("\\", "\\\\").replace("|", "\\|").replace("\r", "")
    return "<br>".join(text.split("\n")) if text else "*(empty)*"


def compare(
    teacher_dir: str,
    student_dir: str,
    *,
    text: str = DEFAULT_TEXT,
    tokenizer: str | None = None,
    block_size: int | None = None,
    batch_size: int = 8,
    max_samples: int | None = None,
    prompts: Sequence[str] = DEFAULT_PROMPTS,
    chat: bool = False,
    max_new_tokens: int = 32,
    repeats: int = 3,
    device: str = "cpu",
    cache_dir: str | None = None,
    data_config: str | None = None,
    baseline_dir: str | None = None,
) -> str:
    """The comparison as Markdown: the table of the models, then their greedy generations side by side.

    Args:
        teacher_dir: exported teacher directory (a causal LM).
        student_dir: exported student directory.
        text: held-out data for perplexity: a text file (one document per line, packed into blocks) or
            ``embedded:chitchat`` (its held-out conversations).
        tokenizer: tokenizer source for both models (default: each model's own directory).
        block_size: tokens per block of a text file (default 256); the most tokens an ``embedded:chitchat``
            example keeps (default 1024: some turns are long, and an example whose response is cut off
            entirely is refused by the data module).
        batch_size: blocks per forward pass.
        max_samples: score at most this many blocks/examples (a seeded subset); all by default.
        prompts: prompts for the generations and the speed measurement.
        chat: wrap each prompt in the tokenizer's chat template (as a user message), when it has one.
        max_new_tokens: tokens generated per prompt.
        repeats: timed passes over the prompts (the median counts).
        device: where the models run (``cpu``, ``cuda``, ``cuda:1``, …).
        cache_dir: the ``datasets`` cache for the tokenised held-out data (its default when ``None``).
        data_config: instead of ``text``, a training config (YAML) whose ``CausalLMDataModule`` test split is
            scored (e.g. the hold-out a ``test_fraction`` keeps from the training corpus); its block size,
            batch size and sample limit apply, and the tokenizer is each model's (or ``tokenizer``).
        baseline_dir: a third row, the same student trained without the teacher at the same budget (read
            with the student's tokenizer), so the report shows what the teacher added.
    """
    from transformers import AutoModelForCausalLM

    from lightning_kd.data.sources import load_tokenizer
    from lightning_kd.reports.block_bos import opened_with_bos

    if not prompts:
        raise ValueError("give at least one prompt (the generation speed is measured on them)")
    if block_size is None:
        block_size = EXAMPLE_BLOCK if text == CHITCHAT else TEXT_BLOCK
    sources = dict(zip(("teacher", "student"), _tokenizers(teacher_dir, student_dir, tokenizer)))
    same_tokens = _same_vocabulary(sources["teacher"], sources["student"])
    batches: dict[str, list] = {}
    rows, templated = [], False
    models = [("teacher", teacher_dir, "teacher"), ("student", student_dir, "student")]
    if baseline_dir:
        models.append(("no-teacher student", baseline_dir, "student"))
    for name, directory, reader in models:
        source = sources["teacher"] if same_tokens else sources[reader]
        if source not in batches:
            held_out = (
                config_batches(data_config, source) if data_config
                else evaluation_batches(source, text, block_size, batch_size, max_samples, cache_dir)
            )
            batches[source] = opened_with_bos(held_out, load_tokenizer(source))  # Gemma/Llama read text after a BOS
        model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).to(device).eval()
        tok = load_tokenizer(source)
        ppl, accuracy, tokens, bits = perplexity(model, batches[source], token_byte_lengths(tok))
        encoded, templated = encode_prompts(tok, prompts, chat)
        generations = greedy_generations(model, tok, encoded, max_new_tokens)
        speed = generation_speed(model, tok, encoded, max_new_tokens, repeats)
        config = model.config.get_text_config()
        rows.append(LMScores(
            name=name, layers=getattr(config, "num_hidden_layers", "?"),
            parameters=sum(p.numel() for p in model.parameters()), perplexity=ppl, token_accuracy=accuracy,
            tokens=tokens, bits_per_byte=bits, byte_rule=byte_rule(tok), tokens_per_second=speed, generations=generations,
        ))
        del model
    if data_config:
        described = f"the test split of the data in {data_config}"
    elif text == CHITCHAT:
        described = f"{text} (held-out conversations, examples of at most {block_size} tokens)"
    else:
        described = f"{text} (blocks of {block_size} tokens)"
    return render(rows, prompts, data=described, max_new_tokens=max_new_tokens, repeats=repeats,
                  device=device, chat_applied=templated, chat_asked=chat, same_tokens=same_tokens)


def render(
    rows: Sequence[LMScores], prompts: Sequence[str], *, data: str, max_new_tokens: int, repeats: int,
    device: str, chat_applied: bool, chat_asked: bool, same_tokens: bool,
) -> str:
    """The Markdown report of ``rows`` (teacher first)."""
    lines = [
        "| model | layers | parameters | perplexity | bits per byte | next-token accuracy | generation tokens / s | speed-up |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row.name} | {row.layers} | {_count(row.parameters)} | {row.perplexity:.2f} | {row.bits_per_byte:.3f} | "
            f"{100 * row.token_accuracy:.2f} | {row.tokens_per_second:.1f} | "
            f"{row.tokens_per_second / rows[0].tokens_per_second:.2f}× |"
        )
    threads = f", {torch.get_num_threads()} CPU threads" if device == "cpu" else ""
    lines += [
        "",
        f"Perplexity, bits per byte and accuracy over {rows[0].tokens} held-out tokens of {data} (bits per byte: "
        "the summed NLL in bits over the UTF-8 bytes the scored tokens spell, comparable across tokenizers); "
        f"speed: greedy decoding of {max_new_tokens} new tokens for each of {len(prompts)} prompts, batch 1, median of "
        f"{repeats} passes, {device}{threads}.",
    ]
    if any(row.byte_rule == "approximate" for row in rows):
        lines.append("Bits per byte are approximate here: a tokenizer without byte-level or SentencePiece tokens is "
                     "counted as its tokens' text plus one joining space each.")
    if not same_tokens:
        lines.append(
            f"The models have different tokenizers: each is scored on its own tokens ({rows[-1].tokens} for the "
            "student), so the perplexities are not directly comparable."
        )
    if chat_asked and not chat_applied:
        lines.append("--chat was given, but the tokenizer has no chat template: the prompts were used as they are.")
    lines += ["", "### Greedy generations" + (" (chat template applied)" if chat_applied else ""), ""]
    lines.append("| prompt | " + " | ".join(row.name for row in rows) + " |")
    lines.append("|---|" + "---|" * len(rows))
    for index, prompt in enumerate(prompts):
        lines.append(f"| {_cell(prompt)} | " + " | ".join(_cell(row.generations[index]) for row in rows) + " |")
    return "\n".join(lines)
