"""The sample check: on the first batches of a run, the method's loss terms computed with the
cache's teacher features must equal those computed with the live teacher.

Three comparisons, each naming the term that fails:

1. **Padding**: the live features, and the same with zeros at padded positions (which is all a
   cache can return there), must give the same terms to float32 round-off. A method or knob that
   reads teacher values at padding (e.g. ``reduction: gkd`` over all positions, LRC-BERT's
   unmasked contrastive states) fails here, whatever the storage dtype.
2. **Storage**: those zero-padded live features and the features read back from the cache must give
   the same terms within the storage dtype's tolerance (:data:`TOLERANCES`).
3. **Top-k** (vocabulary-level logits with ``top_k``): comparisons 1 and 2 use the live logits cut
   to their top-k (renormalised, or with the tail bucket), the cache's documented approximation; the gap to the full logits is logged, and a
   term that the cut changes by orders of magnitude (a logit MSE against the ``-1e9`` fill) is refused.

The student is run once, without a graph and with the random state restored afterwards, so the
check changes neither the training step nor the random numbers a run draws.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager

import torch
from torch import Tensor

from lightning_kd.cache.layout import (
    RecordLayout,
    real_tokens,
    topk_logits,
    zero_padding,
)
from lightning_kd.core.features import Features, capture
from lightning_kd.core.fused_head import with_logits

log = logging.getLogger(__name__)

#: ``(rtol, atol)`` between terms from zero-padded live features and from the cache, per storage dtype.
TOLERANCES = {"float32": (1e-4, 1e-6), "float16": (2e-2, 1e-3), "bfloat16": (1e-1, 1e-2)}
_PADDING_TOLERANCE = (1e-5, 1e-7)  # same inputs at every real position: only float32 round-off may differ
_ABSURD_TOPK_GAP = 1e6


class CacheMismatchError(ValueError):
    """Loss terms computed from cached teacher features differ from the live teacher's."""


def check_sample(module, index: int, batch: dict[str, Tensor], teacher_batch: dict[str, Tensor], live: Features,
                 cached: Features, layout: RecordLayout, dtype: str) -> None:
    """Compare the method's terms for teacher ``index`` with ``live`` and ``cached`` features (module docstring).

    ``batch`` is what the student and the terms read; ``teacher_batch`` what the teacher read (its own encoding
    for a teacher of another tokenizer, else the same batch).

    Raises:
        CacheMismatchError: a term differs; the message names it and the reason.
    """
    with _frozen_random_state(module.device), torch.no_grad():
        with_labels = module.uses_student_loss() or module.multi_teacher.needs_student_loss  # as the step runs it
        student = capture(module.student, batch, module.student_features_request(), with_labels=with_labels)

        def terms(teacher: Features) -> dict[str, Tensor]:
            with _frozen_random_state(module.device):
                return {k: torch.as_tensor(v).detach().float() for k, v in module.teacher_terms(batch, student, teacher, index).items()}

        shaped = live
        if layout.tail_temperature is not None:
            shaped = layout.tail_view(live, teacher_batch)
        elif layout.top_k is not None:
            shaped = Features(**{**vars(live), "logits": topk_logits(with_logits(live).logits, layout.top_k), "head_rows": None})
        zeroed = zero_padding(shaped, real_tokens(teacher_batch).to(module.device))
        reference = terms(zeroed)
        _compare(terms(shaped), reference, _PADDING_TOLERANCE, index, lambda name: (
            f"term {name!r} reads the teacher's values at padded positions, which the cache does not store "
            "(it keeps real tokens only). Use the default masked reductions for this method (e.g. not "
            "reduction: gkd / all_positions), or train without the teacher cache."
        ))
        _compare(reference, terms(cached), TOLERANCES[dtype], index, lambda name: (
            f"term {name!r} computed from the cached teacher outputs differs from the live teacher's beyond the "
            f"{dtype} storage tolerance. The cache may be corrupt or the teacher nondeterministic: delete the cache "
            "directory, or store with dtype: float32."
        ))
        if layout.top_k is not None:
            _check_topk_gap(terms(live), reference, layout.top_k, index)


def _compare(expected: dict[str, Tensor], actual: dict[str, Tensor], tolerance: tuple[float, float], index: int, why) -> None:
    rtol, atol = tolerance
    for name, value in expected.items():
        other = actual.get(name)
        if other is None or other.shape != value.shape or not torch.allclose(other, value, rtol=rtol, atol=atol, equal_nan=True):
            got = "missing" if other is None else f"{other.flatten()[:4].tolist()}"
            raise CacheMismatchError(
                f"Teacher cache check failed for teacher {index}: {why(name)} "
                f"(live: {value.flatten()[:4].tolist()}, cached: {got})"
            )


def _check_topk_gap(full: dict[str, Tensor], cut: dict[str, Tensor], k: int, index: int) -> None:
    for name, value in full.items():
        gap = (cut[name] - value).abs().max().item()
        scale = 1.0 + value.abs().max().item()
        if gap > _ABSURD_TOPK_GAP * scale:
            raise CacheMismatchError(
                f"Teacher cache check failed for teacher {index}: term {name!r} changes from {value.flatten()[:4].tolist()} "
                f"to {cut[name].flatten()[:4].tolist()} when the teacher's logits are cut to their top {k}: it compares "
                "raw logits (e.g. a logit MSE), which a top-k cache cannot provide. Set the cache's top_k: null."
            )
        if gap > 0:
            log.info("Teacher cache: top-%d logits change term %r by %.3g (relative %.2g) on the first batch.",
                     k, name, gap, gap / scale)


@contextmanager
def _frozen_random_state(device: torch.device):
    """Run the block with the current random state and restore it afterwards (CPU and ``device``)."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        yield
