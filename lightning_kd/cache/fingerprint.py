"""The parts of a teacher cache's key that describe the teacher, the tokenizer and the request.

Each function returns plain JSON values, so a manifest can store them and a stale cache can be
explained component by component. The data module describes its own data (``fingerprint``
property of :class:`~lightning_kd.data.GlueDataModule` and :class:`~lightning_kd.data.PretrainDataModule`).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import torch
from torch import nn

from lightning_kd.core.features import FeatureRequest

# Config entries that name where or how a model was loaded, not what it computes.
_VOLATILE_CONFIG_KEYS = ("_name_or_path", "transformers_version", "_attn_implementation", "_attn_implementation_internal",
                         "attn_implementation", "torch_dtype", "dtype", "_commit_hash")
_CHUNK = 1 << 24  # hash large tensors 16 MiB at a time, so no full host copy of a GPU teacher is made


def weights_digest(model: nn.Module) -> str:
    """SHA-256 of every parameter and buffer: names, dtypes, shapes and bytes, in name order.

    Raises:
        ValueError: the weights are partitioned (DeepSpeed ZeRO-3), so their bytes are not all here.
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict(keep_vars=True).items()):
        if hasattr(tensor, "ds_id") or (tensor.numel() == 0 and tensor.dim() > 0):
            raise ValueError(
                f"Teacher weight {name!r} is partitioned (DeepSpeed ZeRO-3), so the teacher cache cannot fingerprint "
                "the teacher; give the teacher another teacher_placement (e.g. 'student' or 'cpu') when using the cache."
            )
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}\n".encode())
        flat = tensor.detach().contiguous().view(-1)
        step = max(1, _CHUNK // max(1, flat.element_size()))
        for start in range(0, flat.numel(), step):
            digest.update(flat[start : start + step].cpu().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def config_digest(model: nn.Module) -> str:
    """SHA-256 of the model class and its config, without entries that only say where it was loaded from."""
    config = getattr(model, "config", None)
    described = config.to_dict() if config is not None else {}
    for key in _VOLATILE_CONFIG_KEYS:
        described.pop(key, None)
    text = json.dumps({"class": type(model).__name__, "config": described}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def precision_of(model: nn.Module) -> str:
    """The dtype the teacher's floating-point weights run in, e.g. ``"torch.bfloat16"``."""
    dtypes = sorted({str(p.dtype) for p in model.parameters() if p.is_floating_point()})
    return ",".join(dtypes) or "none"


def tokenizer_digest(tokenizer: Any) -> str:
    """SHA-256 of what turns text into ids: the fast tokenizer's full definition (normaliser,
    pre-tokeniser, vocabulary, post-processor), or else its vocabulary and special tokens.

    Truncation and padding settings are left out: they change with every call and never change an id.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        definition = json.loads(backend.to_str())
        definition.pop("truncation", None)
        definition.pop("padding", None)
    else:
        definition = {"vocab": sorted(tokenizer.get_vocab().items())}
    definition["class"] = type(tokenizer).__name__
    definition["special_tokens"] = sorted(map(str, getattr(tokenizer, "all_special_tokens", [])))
    definition["do_lower_case"] = getattr(tokenizer, "do_lower_case", None)
    return hashlib.sha256(json.dumps(definition, sort_keys=True, default=str).encode()).hexdigest()


def describe_request(request: FeatureRequest) -> dict[str, Any]:
    """A :class:`FeatureRequest` as JSON (layer sets as sorted lists)."""
    return {
        "hidden_states": bool(request.hidden_states),
        "qkv_layers": sorted(request.qkv_layers),
        "score_layers": sorted(request.score_layers),
        "prob_layers": sorted(request.prob_layers),
        "logit_rows": request.logit_rows,
    }


def request_from_description(described: dict[str, Any]) -> FeatureRequest:
    """Inverse of :func:`describe_request`."""
    return FeatureRequest(
        hidden_states=described["hidden_states"],
        qkv_layers=frozenset(described["qkv_layers"]),
        score_layers=frozenset(described["score_layers"]),
        prob_layers=frozenset(described["prob_layers"]),
        logit_rows=described["logit_rows"],
    )


def covers(stored: FeatureRequest, wanted: FeatureRequest) -> list[str]:
    """What ``wanted`` asks for that a cache storing ``stored`` lacks (empty when it is covered).

    Scores and probabilities are rebuilt from Q and K, so any stored Q/K layer serves them. Token
    logits are stored for exactly the rows the cache was filled with, so the rows must be the same.
    """
    missing = []
    if wanted.hidden_states and not stored.hidden_states:
        missing.append("hidden states")
    qk_stored = stored.hooked_layers
    if not (wanted.score_layers | wanted.prob_layers | wanted.qkv_layers) <= qk_stored:
        missing.append(f"Q/K of layers {sorted((wanted.score_layers | wanted.prob_layers | wanted.qkv_layers) - qk_stored)}")
    if not wanted.qkv_layers <= stored.qkv_layers:
        missing.append(f"V of layers {sorted(wanted.qkv_layers - stored.qkv_layers)}")
    if wanted.logit_rows != stored.logit_rows:
        missing.append(f"logit rows {wanted.logit_rows!r} (it stores {stored.logit_rows!r})")
    return missing
