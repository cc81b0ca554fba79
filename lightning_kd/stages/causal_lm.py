"""The causal-LM (next-token) stage: decoder LMs distilled on their next-token distributions.

Batches follow Hugging Face's causal-LM convention, so data collated by any tool works: ``labels``
are the input ids themselves (``labels[t]`` is the token *at* ``t``), ``-100`` where a token is not
scored (prompt, padding, a document's first token in separated packing), and the logits at ``t`` are
scored against ``labels[t + 1]``. :meth:`CausalLM.prepare` shifts the labels **once**, on the way
in, so the prepared batch's ``labels[t]`` is the target of the logits at ``t`` — the pairing every
reader of a token-level stage assumes (the soft term's positions, compact logit rows, the hard loss,
token accuracy, per-example teacher weights). A prepared batch carries :data:`ALIGNED`, which keeps a
second ``prepare`` from shifting again.

The model's own loss never sees prepared labels (it would shift them a second time): the hard loss is
the mean next-token cross-entropy computed from the logits (:meth:`~lightning_kd.stages.base.Stage.token_loss`),
the value of the model's own loss on the unshifted labels.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

from lightning_kd.stages.base import IGNORE_INDEX, Stage

#: Batch key set by :meth:`CausalLM.prepare`: the labels are already aligned with the logits.
ALIGNED = "labels_aligned"


def shift_labels(labels: Tensor) -> Tensor:
    """``(B, N)`` labels moved one position left: the target of position ``t`` is ``labels[t + 1]``,
    and the last position, which has no next token, is ``-100``."""
    shifted = torch.full_like(labels, IGNORE_INDEX)
    shifted[:, :-1] = labels[:, 1:]
    return shifted


class CausalLM(Stage):
    """Next-token logits ``(B, N, V)`` of a decoder LM (``…ForCausalLM``, GPT-2's ``…LMHeadModel``)."""

    name: ClassVar[str] = "causal_lm"
    token_level: ClassVar[bool] = True
    cache_tail: ClassVar[bool] = True
    aligns_across_tokenizers: ClassVar[bool] = True
    class_suffixes: ClassVar[tuple[str, ...]] = ("ForCausalLM", "LMHeadModel")
    labels_to_model: ClassVar[bool] = False
    # A distillation forward reads every position once: a KV cache would only hold memory, and
    # transformers detects packed documents (position ids restarting) only without one.
    forward_options: ClassVar[dict[str, object]] = {"use_cache": False}
    # Decoder attention always carries its causal key mask, so a query-row mask never changes the keys.
    intermediate_positions: ClassVar[tuple[str, ...]] = ("scored", "all_tokens")
    description: ClassVar[str] = "causal-LM (next-token) distillation"
    generative: ClassVar[bool] = True

    def auto_class(self):
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM

    def teacher_hint(self) -> str:
        return "use a decoder LM checkpoint saved with its LM head (e.g. from AutoModelForCausalLM.save_pretrained)"

    def head_entry(self, model: nn.Module) -> nn.Module | None:
        """The LM head itself (``get_output_embeddings()``): decoder LMs apply their final norm before it,
        and anything after it (e.g. Gemma's logit soft-capping) is elementwise, so it holds for any rows."""
        if not self.owns(type(model).__name__):
            return None
        head = model.get_output_embeddings()
        return head if isinstance(head, nn.Module) else None

    def prepare(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        if batch.get(ALIGNED):
            return batch
        prepared = {**batch, ALIGNED: True}
        labels = batch.get("labels")
        if labels is not None:
            if labels.dim() != 2:
                raise ValueError(
                    f"Causal-LM batches carry token labels of shape (B, N) (the input ids, -100 where not scored); "
                    f"got labels of shape {tuple(labels.shape)}."
                )
            prepared["labels"] = shift_labels(labels)
        return prepared

    def metrics(self, num_labels, prefix):
        from lightning_kd.metrics import build_lm_metrics

        return build_lm_metrics(prefix)
