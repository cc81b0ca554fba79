"""Continuing prompts with a model's own ``generate``, seeded and without side effects on the step.

``transformers``' ``generate`` does the decoding (KV cache, sampling, beams, stopping at EOS, and
``synced_gpus`` under ZeRO-3); around it this module pins down what a training step needs:

* the model's distribution shaped by our settings only: the checkpoint's own generation config
  (repetition penalties, suppressed tokens, a default temperature, …) is set aside for the call;
* no dropout: the model decodes in eval mode, and every submodule gets its own mode back after;
* no gradient, and the random draws come from a generator seeded for this step, inside
  ``torch.random.fork_rng``: the global RNG state after the call is what it was before, so the
  dropout masks of the step that follows are those of a step without generation, and a resumed run
  (whose step seeds are the same) samples the same tokens;
* the stopping tokens and the padding are the model's tokenizer's (:class:`SpecialTokens`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lightning_kd.on_policy.prompts import Prompts
from lightning_kd.on_policy.settings import Generation


@dataclass(frozen=True)
class SpecialTokens:
    """The tokens that end a response, and the one that pads.

    Attributes:
        eos_ids: the EOS ids (the first one met ends a response; it is kept and scored).
        pad_id: the padding id (the tokenizer's pad token, else its EOS).
    """

    eos_ids: tuple[int, ...]
    pad_id: int


def special_tokens(tokenizer_source: str | None, model: nn.Module) -> SpecialTokens:
    """The EOS and pad ids a model's responses use: its tokenizer's (``tokenizer_source``), else its
    generation config's.

    Raises:
        ValueError: neither names an EOS token.
    """
    eos, pad = None, None
    if tokenizer_source is not None:
        from lightning_kd.core.export import load_tokenizer

        tokenizer = load_tokenizer(tokenizer_source)  # None when the source holds no tokenizer
        if tokenizer is not None:
            eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    if eos is None:
        config = getattr(model, "generation_config", None)
        eos = getattr(config, "eos_token_id", None)
        pad = pad if pad is not None else getattr(config, "pad_token_id", None)
    eos_ids = tuple(int(i) for i in (eos if isinstance(eos, (list, tuple)) else [eos]) if i is not None)
    if not eos_ids:
        raise ValueError(
            "Generated responses end at the tokenizer's EOS token, and neither the tokenizer nor the student's generation "
            "config names one: give export_tokenizer (the CLI links the data's tokenizer) or a model whose "
            "generation_config has eos_token_id."
        )
    return SpecialTokens(eos_ids, int(pad) if pad is not None else eos_ids[0])


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """``model`` in eval mode while the block runs; each submodule gets its own mode back after."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


@contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Random draws on the CPU and ``device`` seeded with ``seed`` inside the block; the global RNG
    states are restored after it."""
    cuda = device.type == "cuda"
    with torch.random.fork_rng(devices=[device] if cuda else [], device_type="cuda" if cuda else "cpu"):
        torch.default_generator.manual_seed(seed)
        if cuda:
            with torch.cuda.device(device):
                torch.cuda.manual_seed(seed)
        yield


@contextmanager
def own_generation_config(model: nn.Module) -> Iterator[None]:
    """Set the checkpoint's generation config aside while the block runs (``generate`` fills every setting
    we leave unset from it)."""
    from transformers import GenerationConfig

    saved = getattr(model, "generation_config", None)
    model.generation_config = GenerationConfig()
    try:
        yield
    finally:
        model.generation_config = saved


def continue_prompts(
    model: nn.Module, prompts: Prompts, generation: Generation, tokens: SpecialTokens, *, seed: int,
    device: torch.device, synced: bool = False,
) -> Tensor:
    """``model``'s continuations of ``prompts``: ``(B, T)`` token ids, ``T <= max_new_tokens``.

    Rows that stopped early are padded by ``generate`` after their EOS (with ``tokens.pad_id``); the
    caller keeps each row up to its first EOS (:func:`~lightning_kd.on_policy.written.written_batch`).

    Args:
        model: a causal LM on ``device`` (or partitioned by ZeRO-3, with ``synced``).
        prompts: left-padded prompts.
        generation: the decoding settings.
        tokens: the EOS and pad ids.
        seed: seeds the sampling (see :func:`seeded`).
        device: where the model runs.
        synced: keep every process stepping until all are done (``generate``'s ``synced_gpus``): needed when
            the model's parameters are partitioned across processes (ZeRO-3), which gather them at each
            forward together.
    """
    from transformers import GenerationConfig

    sampling = {"temperature": generation.temperature, "top_p": generation.top_p, "top_k": generation.top_k} if generation.do_sample else {}
    config = GenerationConfig(
        max_new_tokens=generation.max_new_tokens, do_sample=generation.do_sample, num_beams=generation.num_beams,
        eos_token_id=list(tokens.eos_ids), pad_token_id=tokens.pad_id, use_cache=True, **sampling,
    )
    ids, mask = prompts.ids.to(device), prompts.mask.to(device)
    with torch.no_grad(), seeded(seed, device), eval_mode(model), own_generation_config(model):
        out = model.generate(input_ids=ids, attention_mask=mask, generation_config=config, synced_gpus=synced)
    return out[:, ids.shape[1] :]
