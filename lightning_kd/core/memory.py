"""A memory estimate printed before fitting, and a clear refusal when it will not fit.

Per device the estimate adds: teachers placed there (divided across processes under ZeRO-3),
student and method weights, gradients and AdamW state (the parts ZeRO stage 1/2/3 partitions
divided by the number of processes, the parts DeepSpeed offloads counted on the host), and
activations. Activations follow Korthikanti et al. 2022 ("Reducing Activation Recomputation in
Large Transformer Models"): one encoder layer stores ``B·N·d·(34 + 5·h·N/d)`` bytes at 16-bit
(twice at fp32); with activation checkpointing a layer keeps only its input, ``2·B·N·d`` bytes,
plus one layer recomputed at a time. Output logits add ``R·V`` elements for masked-LM heads, ``R``
being the rows each model computes (compact heads, :mod:`lightning_kd.core.logit_rows`): ``B·N`` for
every row or every token, the data's masking share of it (``mlm_probability``, 15 % by default) for
the labelled rows, none when nothing reads the logits. The teacher runs without a graph: it holds
one layer at a time plus the features a method keeps.

It is an estimate (allocator fragmentation, CUDA context and kernels' workspaces are not in it),
good to a few tens of percent; ``memory_check: warn`` runs anyway.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn

from lightning_kd.core.features import FeatureRequest
from lightning_kd.core.placement import deepspeed_stage, resolve_placement
from lightning_kd.losses.fused_linear import default_chunk_rows
from lightning_kd.models.loading import is_activation_checkpointing

MemoryCheck = Literal["error", "warn", "off"]
GIB = 2**30
#: Share of positions an MLM batch labels when the data module does not say (BERT's 15 %).
DEFAULT_LABELLED_SHARE = 0.15
#: Logit-sized buffers a fused-head chunk holds at once (lightning_kd.losses.fused_linear).
FUSED_CHUNK_BUFFERS = 6


@dataclass
class MemoryEstimate:
    """Bytes needed per device (``"host"`` for CPU memory when training runs on an accelerator)."""

    lines: dict[str, list[tuple[str, float]]] = field(default_factory=dict)

    def add(self, device: str, what: str, size: float) -> None:
        if size > 0:
            self.lines.setdefault(device, []).append((what, size))

    def total(self, device: str) -> float:
        return sum(size for _, size in self.lines.get(device, []))

    def table(self) -> str:
        rows = []
        for device, items in self.lines.items():
            for what, size in items:
                rows.append(f"  {device:<8} {what:<48} {_size(size):>10}")
            rows.append(f"  {device:<8} {'total':<48} {_size(self.total(device)):>10}")
        return "\n".join(rows)


def _size(size: float) -> str:
    return f"{size / GIB:.2f} GiB" if size >= GIB / 10 else f"{size / 2**20:.1f} MiB"


def parameter_bytes(module: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


def estimate(module: Any, trainer: Any, batch_size: int | None, length: int | None) -> MemoryEstimate:
    """The estimate for ``module`` fitted by ``trainer`` on batches of ``batch_size`` × ``length`` tokens."""
    result = MemoryEstimate()
    device = str(trainer.strategy.root_device)
    host = "host" if not device.startswith("cpu") else device
    world = max(1, int(trainer.world_size))
    stage = deepspeed_stage(trainer)
    zero = ((getattr(trainer.strategy, "config", None) or {}).get("zero_optimization") or {}) if stage is not None else {}
    precision = str(trainer.precision)

    for index, teacher in enumerate(module.teachers):
        placement = resolve_placement(module.teacher_placement[index], trainer, type(module).__name__ if module.reads_teacher_weights else None)
        size = parameter_bytes(teacher)
        if placement == "zero3":
            where = host if "offload_param" in zero else device
            result.add(where, f"teacher {index} weights (ZeRO-3 shard of 1/{world})", size / world)
        else:
            where = device if placement == "student" else (host if placement == "cpu" else placement)
            result.add(where, f"teacher {index} weights", size)

    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in module.parameters() if not p.requires_grad)
    half = precision.split("-")[0] in ("16", "bf16")
    true_half = precision.endswith("-true") and half
    weight_bytes = 2 if (true_half or (stage is not None and half)) else 4
    # DeepSpeed mixed precision keeps an fp32 master copy inside the optimizer; AMP keeps fp32 weights.
    master = 4 if stage is not None and half else 0
    optimizer_bytes = (4 if true_half else 8) + master  # AdamW's two moments (+ master copy)
    shard = {"weights": world if stage == 3 else 1, "grads": world if stage in (2, 3) else 1, "optimizer": world if stage in (1, 2, 3) else 1}
    result.add(host if "offload_param" in zero else device, "student + method weights" + _of(shard["weights"]), (trainable + frozen) * weight_bytes / shard["weights"])
    result.add(device, "gradients" + _of(shard["grads"]), trainable * weight_bytes / shard["grads"])
    result.add(host if "offload_optimizer" in zero else device, "AdamW state" + _of(shard["optimizer"]), trainable * optimizer_bytes / shard["optimizer"])

    if batch_size and length:
        # The share of positions with a label: the data's masking rate for MLM, else the stage's own.
        share = float(getattr(getattr(trainer, "datamodule", None), "mlm_probability", None) or module.task_stage.labelled_share)
        student = student_activations(module, batch_size, length, 2 if half else 4, share)
        result.add(device, f"student activations (batch {batch_size} x {length})", student)
        teachers = [teacher_activations(module, i, batch_size, length, share) for i in range(len(module.teachers))]
        result.add(device, "teacher forward + captured features", max(teachers, default=0))
    return result


def _of(parts: int) -> str:
    return f" (1/{parts} shard)" if parts > 1 else ""


def layer_activations(config: Any, batch: int, length: int, element: int) -> float:
    """Bytes one encoder layer stores for its backward (Korthikanti et al. 2022; the formula is for 16-bit)."""
    d, h = config.hidden_size, config.num_attention_heads
    return batch * length * d * (34 + 5 * h * length / d) * element / 2


def student_activations(
    module: Any, batch: int, length: int, element: int, labelled_share: float = DEFAULT_LABELLED_SHARE
) -> float:
    config = module.student.config
    d, layers = config.hidden_size, config.num_hidden_layers
    per_layer = layer_activations(config, batch, length, element)
    if is_activation_checkpointing(module.student):
        stored = layers * 2 * batch * length * d * element / 2 + per_layer
    else:
        stored = layers * per_layer
    rows = _rows(lambda: module.student_features_request(), batch, length, labelled_share)
    return stored + _logits(module, config, batch, rows) * 4 * 3  # logits, log-softmax, gradient (float32 loss math)


def teacher_activations(
    module: Any, index: int, batch: int, length: int, labelled_share: float = DEFAULT_LABELLED_SHARE
) -> float:
    config = module.teachers[index].config
    d = config.hidden_size
    try:
        request = module.teacher_request(index)
    except RuntimeError:  # the request depends on state a callback sets later (e.g. a progressive stage)
        every = frozenset(range(config.num_hidden_layers))
        request = FeatureRequest(hidden_states=True, qkv_layers=every)
    one_layer = layer_activations(config, batch, length, 4)  # no graph: one fp32 layer's tensors at a time
    rows = _rows(lambda: module.teacher_features_request(index), batch, length, labelled_share)
    kept = _logits(module, config, batch, rows) * 4
    if request.hidden_states:
        kept += (config.num_hidden_layers + 1) * batch * length * d * 4
    kept += len(request.qkv_layers | request.score_layers | request.prob_layers) * 3 * batch * length * d * 4
    return one_layer + kept


def _rows(request: Any, batch: int, length: int, labelled_share: float) -> float:
    """Token-logit rows a model computes per step, from its features request (every row when unknown)."""
    try:
        kind = request().logit_rows
    except RuntimeError:  # the request depends on state a callback sets later (e.g. a progressive stage)
        kind = "all"
    return {"none": 0.0, "labelled": batch * length * labelled_share}.get(kind, float(batch * length))


def _logits(module: Any, config: Any, batch: int, rows: float) -> float:
    """Logit elements: ``rows × V`` for a vocabulary head (MLM, causal LM) — with fused heads no more than a
    chunk's buffers — one row of task logits per example otherwise."""
    if module.task_stage.token_level:
        elements = rows * config.vocab_size
        if not module.fused_heads():
            return elements
        return min(elements, FUSED_CHUNK_BUFFERS * default_chunk_rows(config.vocab_size) * config.vocab_size)
    return batch * max(1, module.num_labels or 2)


def free_bytes(device: str) -> int | None:
    """Free memory of ``device`` (``"host"``/``"cpu"``: the OS's available memory), or ``None`` if unknown."""
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.mem_get_info(torch.device(device))[0]
    if device in ("host", "cpu") or device.startswith("cpu"):
        try:
            with open("/proc/meminfo") as info:
                for line in info:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        try:
            return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return None
    return None


def resident_bytes(module: Any, device: str) -> int:
    """Bytes of the method's and its teachers' parameters already on ``device`` (``"host"`` = the CPU)."""
    wanted = torch.device("cpu") if device == "host" else torch.device(device)
    tensors = list(module.parameters()) + [p for teacher in module.teachers for p in teacher.parameters()]
    return sum(t.numel() * t.element_size() for t in tensors if t.device.type == wanted.type and (wanted.index is None or t.device.index in (None, wanted.index)))


def batch_shape(trainer: Any) -> tuple[int | None, int | None]:
    """Batch size and maximum sequence length from the data module, when it declares them."""
    data = getattr(trainer, "datamodule", None)
    size = getattr(data, "batch_size", None)
    length = getattr(data, "max_length", None) or getattr(data, "block_size", None)
    return (int(size) if size else None, int(length) if length else None)


def check_memory(module: Any, trainer: Any, mode: MemoryCheck) -> MemoryEstimate:
    """Print the estimate on rank 0 and refuse (``mode="error"``) or warn when a device lacks room.

    Raises:
        MemoryError: a device's estimated need exceeds its free memory and ``mode`` is ``"error"``.
    """
    size, length = batch_shape(trainer)
    result = estimate(module, trainer, size, length)
    note = "" if size and length else " (activations not included: the data module declares no batch_size/max_length)"
    rank_zero_info(f"lightning_kd memory estimate per process{note}:\n{result.table()}")
    for device in result.lines:
        available = free_bytes(device)
        if available is not None:
            available += resident_bytes(module, device)  # weights already loaded there are in the estimate too
        need = result.total(device)
        if available is not None and need > available:
            message = (
                f"{type(module).__name__} needs about {need / GIB:.1f} GiB on {device} but {available / GIB:.1f} GiB is free "
                f"(estimate above). Lower the batch size or sequence length, set activation_checkpointing: true, put the "
                f"teacher in bfloat16 (teacher_precision) or elsewhere (teacher_placement: cpu / another device / zero3), "
                f"or use a DeepSpeed ZeRO preset (configs/trainer/deepspeed/). memory_check: warn runs anyway."
            )
            if mode == "error":
                raise MemoryError(message)
            rank_zero_warn(message)
    return result
