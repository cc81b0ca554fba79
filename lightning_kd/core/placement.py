"""Where each frozen teacher lives: the student's device, the host, its own device, or ZeRO-3 shards.

Teachers are deliberately *not* submodules of the method (see ``DistillationModule``): the
training strategy (DDP, DeepSpeed) therefore never wraps, casts, partitions or checkpoints them by
accident — the root of Lightning issue #17319 ("DeepSpeed stage 3 crashing with student + teacher").
Placement is then an explicit policy, one string per teacher:

* ``"auto"`` — ZeRO-3 shards when the trainer runs DeepSpeed stage 3, else the student's device;
* ``"student"`` — the student's device, replicated in every process;
* ``"cpu"`` — host memory (offloaded): inputs go to the CPU and features come back;
* ``"cuda:1"`` (any ``torch.device`` string) — a device of its own;
* ``"zero3"`` — parameters partitioned across the DeepSpeed processes by an inference-only ZeRO-3
  engine (gathered layer by layer during the forward, released after), honouring the strategy's
  parameter offload. Needs ``DeepSpeedStrategy``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

SPECIAL_PLACEMENTS = ("auto", "student", "zero3")


def check_placements(value: str | list[str], count: int) -> list[str]:
    """One validated placement per teacher.

    Raises:
        ValueError: a wrong count, or a string that is neither a policy nor a torch device.
    """
    placements = value if isinstance(value, list) else [value] * count
    if len(placements) != count:
        raise ValueError(
            f"teacher_placement lists {len(placements)} placements for {count} teachers; give one per teacher or a single value."
        )
    for placement in placements:
        if placement in SPECIAL_PLACEMENTS:
            continue
        try:
            torch.device(placement)
        except (RuntimeError, TypeError) as error:
            raise ValueError(
                f"teacher_placement {placement!r} is not one of {SPECIAL_PLACEMENTS} nor a device such as 'cpu' or 'cuda:1' ({error})."
            ) from None
    return placements


def deepspeed_stage(trainer: Any) -> int | None:
    """The ZeRO stage of ``trainer``'s DeepSpeed strategy, or ``None`` without DeepSpeed."""
    strategy = getattr(trainer, "strategy", None)
    config = getattr(strategy, "config", None)
    if strategy is None or not type(strategy).__name__.endswith("DeepSpeedStrategy"):
        return None
    if not isinstance(config, dict):
        return 0
    return int((config.get("zero_optimization") or {}).get("stage", 0))


def resolve_placement(placement: str, trainer: Any, reads_teacher_weights: str | None = None) -> str:
    """``"auto"`` → ``"zero3"`` under DeepSpeed ZeRO-3, else ``"student"``; other values unchanged.

    Args:
        reads_teacher_weights: set (to the method's name) when the method uses teacher modules or
            weights inside its own step (Theseus's hybrid stack, DIITO's interventions, tied
            vocabulary heads): its teachers must then sit whole on the student's device.

    Raises:
        ValueError: ``"zero3"`` without a DeepSpeed strategy, or a placement a method cannot use.
    """
    if reads_teacher_weights is not None:
        if placement not in ("auto", "student"):
            raise ValueError(
                f"{reads_teacher_weights} uses the teacher's modules or weights inside its own step, so its teachers must sit "
                f"whole on the student's device; teacher_placement {placement!r} is not possible: use 'auto' or 'student'."
            )
        return "student"
    stage = deepspeed_stage(trainer)
    if placement == "auto":
        return "zero3" if stage == 3 else "student"
    if placement == "zero3" and stage is None:
        raise ValueError(
            "teacher_placement='zero3' partitions the teacher across DeepSpeed processes, but the trainer's strategy "
            "is not DeepSpeed. Use a DeepSpeed preset (configs/trainer/deepspeed/zero3.yaml) or teacher_placement='auto'."
        )
    return placement


def partition_teacher(teacher: nn.Module, trainer: Any) -> Any:
    """Hand ``teacher`` to an inference-only DeepSpeed ZeRO-3 engine and return the engine.

    The teacher module itself keeps working (``teacher(**inputs)``): ZeRO-3 registers hooks that
    gather each submodule's parameters just before it runs and free them after. The engine is
    built with the training strategy's parameter-offload settings and no optimizer; the teacher's
    own dtype is kept (no precision section), so ``teacher_precision`` stays independent of the
    student's precision.
    """
    import deepspeed

    zero = dict((trainer.strategy.config or {}).get("zero_optimization") or {})
    config = {
        "train_micro_batch_size_per_gpu": 1,  # required by DeepSpeed, unused without training
        "zero_optimization": {"stage": 3, **({"offload_param": zero["offload_param"]} if "offload_param" in zero else {})},
    }
    dtype = next(teacher.parameters()).dtype
    if dtype == torch.bfloat16:
        config["bf16"] = {"enabled": True}
    elif dtype == torch.float16:
        config["fp16"] = {"enabled": True}
    engine, *_ = deepspeed.initialize(model=teacher, config=config, dist_init_required=False)
    engine.eval()
    return engine


def teacher_device(teacher: nn.Module) -> torch.device:
    """The device of ``teacher``'s parameters (CPU for a parameter-less module)."""
    parameter = next(teacher.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")
