"""One vector per sequence: the pooling every sequence-level method shares, and its per-model default.

A method that compares one vector per example (PKD's ``[CLS]`` patience, ALP-KD, Universal-KD, SID,
RAIL-KD, MGSKD's sample level, RL-KD's semantic state) takes a :data:`Pooling` knob and pools each
model with :func:`pool` under that model's own resolved mode (:func:`resolve_pooling`):

* ``"first"`` — the first real token of each row (``[CLS]`` on BERT-style encoders; our collators
  right-pad, so this is position 0, exactly what ``states[:, 0]`` gave);
* ``"last"`` — the last real token of each row, found from the attention mask, so right and left
  padding both work;
* ``"mean"`` — the mean over real tokens;
* ``"auto"`` — ``"last"`` for a causal LM, ``"first"`` otherwise.

Why ``"auto"`` cannot always be ``"first"``: in a causal LM (GPT-2, Llama, Qwen2, …) position 0
attends only to itself, so its hidden state depends on the first token alone — usually the same
BOS token — and a loss on it compares constants. The last real token is the one that has seen the
whole input (it is also what HF's ``…ForSequenceClassification`` heads of decoders read). For the
same reason an explicit ``"first"`` is refused on a causal LM.

When teacher and student differ in kind (a decoder teacher, an encoder student) each is pooled by
its *own* rule: ``auto`` gives the student's ``[CLS]`` and the teacher's last token — both are the
vector that model's own classification head reads.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, MODEL_FOR_MASKED_LM_MAPPING_NAMES

#: The knob methods expose: ``"auto"`` follows the model (see :func:`resolve_pooling`).
Pooling = Literal["auto", "first", "last", "mean"]
#: What :func:`pool` computes; ``"mean_with_padding"`` (every position, padding included) exists
#: only for GKD parity in the methods whose reference averaged padded positions.
PoolingMode = Literal["first", "last", "mean", "mean_with_padding"]
POOLING_MODES = ("first", "last", "mean", "mean_with_padding")


def is_causal_lm(model: nn.Module) -> bool:
    """Whether ``model`` attends causally (token ``i`` sees only tokens ``≤ i``).

    The rule, any of which suffices:

    1. ``config.is_decoder`` is true (a BERT-style encoder configured as a decoder);
    2. one of its modules carries ``is_causal = True`` — the flag HF attention layers hand to their
       attention kernel (GPT-2, Llama, Qwen2 and other decoders set it; encoders set it false or
       not at all);
    3. its ``model_type`` has a causal-LM class but no masked-LM class in ``transformers``' auto
       mappings (a decoder whose attention modules carry no flag).

    Encoders that can also be built as decoders (BERT, RoBERTa, ELECTRA, XLM-R) are in both
    mappings, so rule 3 never calls them causal; rule 1 or 2 does when they are configured so.
    """
    config = getattr(model, "config", None)
    if getattr(config, "is_decoder", False):
        return True
    if any(getattr(module, "is_causal", None) is True for module in model.modules()):
        return True
    model_type = getattr(config, "model_type", None)
    return model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES


def resolve_pooling(pooling: str, model: nn.Module, who: str = "the model") -> PoolingMode:
    """The concrete mode :func:`pool` uses for ``model``: ``"auto"`` becomes ``"last"`` for a causal
    LM and ``"first"`` otherwise; other modes pass through.

    Args:
        pooling: ``"auto"`` or one of :data:`POOLING_MODES`.
        model: the HF model whose hidden states will be pooled.
        who: how error messages name the model (``"the student"``, ``"teacher 1"``).

    Raises:
        ValueError: an unknown mode, or ``"first"`` on a causal LM (its first position has seen
            only the first token, so the pooled vector would not depend on the input).
    """
    if pooling != "auto" and pooling not in POOLING_MODES:
        raise ValueError(f"pooling must be 'auto' or one of {', '.join(map(repr, POOLING_MODES))}; got {pooling!r}.")
    causal = is_causal_lm(model)
    if pooling == "auto":
        return "last" if causal else "first"
    if pooling == "first" and causal:
        raise ValueError(
            f"pooling='first' on {who} ({type(model).__name__}), a causal LM: its first position attends only to "
            "itself, so the pooled vector would not depend on the rest of the input. Use 'auto' (the last real "
            "token for causal LMs), 'last' or 'mean'."
        )
    return pooling  # type: ignore[return-value]


def real_token_index(attention_mask: Tensor | None, rows: int, length: int, which: Literal["first", "last"],
                     device: torch.device) -> Tensor:
    """``(rows,)`` index of the first or last real token of each row.

    Read from the mask, so it holds for right and left padding; without a mask every position is
    real. A row without any real token gives 0.
    """
    if attention_mask is None:
        return torch.full((rows,), 0 if which == "first" else length - 1, dtype=torch.long, device=device)
    real = attention_mask.reshape(rows, length).bool().long()
    if which == "first":
        return real.argmax(dim=1)  # argmax returns the first maximal entry
    # The largest position holding a real token: 0 for a row with none.
    return (real * torch.arange(length, device=real.device)).argmax(dim=1)


def pool(states: Tensor, attention_mask: Tensor | None, mode: PoolingMode) -> Tensor:
    """``(B, N, D)`` token states → ``(B, D)``, one vector per row.

    Args:
        states: token states of one layer.
        attention_mask: ``(B, N)`` (or ``(…, N)`` flattening to ``B`` rows, e.g. multiple choice),
            1 at real tokens; ``None`` means no padding.
        mode: a resolved mode (``"auto"`` must go through :func:`resolve_pooling` first):
            ``"first"`` / ``"last"`` real token, ``"mean"`` over real tokens, or
            ``"mean_with_padding"`` over every position.

    Returns:
        ``(B, D)`` in ``states``' dtype (means accumulate in float32). A row without real tokens
        pools to position 0 (``first``/``last``) or to zeros (``mean``).
    """
    rows, length = states.shape[:2]
    if mode in ("first", "last"):
        index = real_token_index(attention_mask, rows, length, mode, states.device)
        return states[torch.arange(rows, device=states.device), index.to(states.device)]
    if mode == "mean_with_padding" or (mode == "mean" and attention_mask is None):
        return states.float().mean(dim=1).to(states.dtype)
    if mode == "mean":
        weights = attention_mask.reshape(rows, length).float()[:, :, None]
        return ((states.float() * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)).to(states.dtype)
    raise ValueError(f"pool() takes a resolved mode ({', '.join(map(repr, POOLING_MODES))}); got {mode!r}.")


def resolve_pair(pooling: str, student: nn.Module, teacher: nn.Module, teacher_index: int) -> tuple[PoolingMode, PoolingMode]:
    """:func:`resolve_pooling` for the student and for one teacher, each model by its own rule.

    Methods call it when they pool (it costs one walk over the modules of each model), so a
    ``pooling`` attribute changed after construction takes effect, and call :func:`check_pooling`
    in their constructor so a refused mode fails before training.
    """
    return resolve_pooling(pooling, student, "the student"), resolve_pooling(pooling, teacher, f"teacher {teacher_index}")


def check_pooling(pooling: str, student: nn.Module, teachers) -> None:
    """Resolve ``pooling`` for the student and every teacher, raising what :func:`resolve_pooling` raises."""
    resolve_pooling(pooling, student, "the student")
    for index, teacher in enumerate(teachers):
        resolve_pooling(pooling, teacher, f"teacher {index}")
