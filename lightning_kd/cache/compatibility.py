"""Where a teacher cache cannot be right, refused before any work.

A cache stores the teacher's outputs for an example once and serves them again, which is only
correct when the teacher's inputs are a fixed function of the example: never of the step, the
student or fresh random draws.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from lightning_kd.data.collators import EXAMPLE_INDEX


def check_method(module: Any) -> None:
    """Refuse methods and knobs whose teacher inputs or requests change from step to step.

    A method says so itself with ``teacher_inputs_vary`` (a class attribute, or a property where a knob
    decides): ``None`` when a cache can serve it, else the reason, quoted in the error. The cache never
    imports method classes (they import the core, which imports the cache).

    Raises:
        ValueError: naming the method or knob and what to do instead.
    """
    if getattr(module, "random_inputs", None) is not None:
        raise ValueError(
            "teacher_cache cannot be combined with random_inputs: the teacher then reads fresh random token ids "
            "every step, so there is nothing to reuse. Remove random_inputs or the cache."
        )
    reason = getattr(module, "teacher_inputs_vary", None)
    if reason:  # a configuration error, reported as ValueError like every other one
        raise ValueError(f"{type(module).__name__} cannot use a teacher cache: {reason}. Remove teacher_cache.")
    _check_attention(module)


def _check_attention(module: Any) -> None:
    """Cached Q/K rebuild attention with the padding mask and ``d_h^-½``: refuse teachers that do more."""
    from lightning_kd.core.attention_capture import attention_layout, family_name

    for index, teacher in enumerate(module.teachers):
        layers = module.teacher_request(index).hooked_layers
        if layers and not all(attention_layout(teacher).plain(layer) for layer in layers):
            raise ValueError(
                f"Teacher {index} ({family_name(teacher)}) uses causal, sliding-window or layer-scaled attention, which "
                "the teacher cache does not store (it keeps Q/K and rebuilds plain padded attention). Remove teacher_cache."
            )


def check_data(data: Any) -> None:
    """Refuse data whose teacher inputs differ between epochs (dynamic MLM masks).

    Raises:
        ValueError: the data module masks dynamically, naming ``masking_seed`` as the fix.
    """
    if hasattr(data, "masking_seed") and data.masking_seed is None:
        raise ValueError(
            f"{type(data).__name__} masks tokens afresh every epoch (masking_seed is None), so the teacher's "
            "outputs change every epoch and cannot be cached. Set data.init_args.masking_seed (e.g. 0) for static "
            "masks, a deterministic function of (masking_seed, example_index), or remove teacher_cache."
        )
    if not hasattr(data, "fingerprint"):
        raise ValueError(
            f"The teacher cache keys cached rows by the training data, but {type(data).__name__} has no `fingerprint`; "
            "use GlueDataModule or PretrainDataModule (or give your data module a `fingerprint` property and an "
            f"int64 `{EXAMPLE_INDEX}` batch key)."
        )


def example_indices(batch: dict[str, Tensor]) -> Tensor:
    """The batch's ``example_index`` column, checked.

    Raises:
        ValueError: the batch has no ``example_index``, or it is not one integer per row.
    """
    indices = batch.get(EXAMPLE_INDEX)
    if indices is None:
        raise ValueError(
            f"The teacher cache needs each training batch to carry `{EXAMPLE_INDEX}` (the position of every row in "
            "the training split); the data module must emit example_index; GlueDataModule and PretrainDataModule do."
        )
    rows = batch["input_ids"].shape[0]
    if indices.dim() != 1 or indices.shape[0] != rows or indices.is_floating_point():
        raise ValueError(f"`{EXAMPLE_INDEX}` must be one integer per row, shape ({rows},); got {tuple(indices.shape)} {indices.dtype}.")
    return indices
