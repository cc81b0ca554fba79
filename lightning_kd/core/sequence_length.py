"""Refuse, before training, a data length that a teacher or the student cannot read.

A model with learned position embeddings (BERT, GPT-2) fails with an index error at the first batch
longer than its table; a rotary model (Llama, Qwen2) runs on, beyond the positions it was trained for,
with a teacher whose predictions degrade silently. Both are the data's ``max_length`` / ``block_size``
outgrowing ``max_position_embeddings``, which the data module knows before any work starts.
"""

from __future__ import annotations

from typing import Any

# Config fields that bound a model's positions, by family (GPT-2 spells it n_positions).
_POSITION_FIELDS = ("max_position_embeddings", "n_positions")
# RoBERTa-style positions start after the padding index: their table holds padding_idx + 1 fewer tokens.
_OFFSET_FAMILIES = {"roberta": 2, "xlm-roberta": 2, "camembert": 2, "mpnet": 2}


def longest_input(config: Any) -> int | None:
    """The longest sequence a model with ``config`` reads, or ``None`` when its config does not bound it."""
    for field in _POSITION_FIELDS:
        value = getattr(config, field, None)
        if isinstance(value, int) and value > 0:
            return value - _OFFSET_FAMILIES.get(getattr(config, "model_type", ""), 0)
    return None


def data_length(datamodule: Any) -> tuple[str, int] | None:
    """The data module's sequence length and the name of its argument (``block_size`` or ``max_length``)."""
    for name in ("block_size", "max_length"):
        value = getattr(datamodule, name, None)
        if isinstance(value, int) and value > 0:
            return name, value
    return None


def check_sequence_length(module: Any, datamodule: Any) -> None:
    """Refuse a data length longer than any teacher or the student reads.

    Raises:
        ValueError: naming the model, its limit, the data argument and the fix.
    """
    found = data_length(datamodule)
    if found is None:
        return
    name, length = found
    models = [("the student", module.student)] + [(f"teacher {i}", t) for i, t in enumerate(module.teachers)]
    for role, model in models:
        limit = longest_input(model.config)
        if limit is not None and length > limit:
            raise ValueError(
                f"The data's {name} is {length} tokens but {role} ({type(model).__name__}) reads at most {limit} "
                f"(config max_position_embeddings); set data.init_args.{name} to at most {limit}."
            )
