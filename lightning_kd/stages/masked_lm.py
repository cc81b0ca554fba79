"""The masked-LM pre-training stage: vocabulary logits per position, scored at the masked positions."""

from __future__ import annotations

from typing import ClassVar

from torch import nn

from lightning_kd.stages.base import Stage

#: model_type → the head's first module, for MLM families whose head vocab_head.py cannot copy (so it
#: has no layout there) but whose forward calls it on the encoder's output: MobileBERT's decoder
#: multiplies by its embeddings and an extra dense weight, side by side.
_ENTRIES = {"mobilebert": "cls.predictions.transform"}


class MaskedLM(Stage):
    """MLM logits ``(B, N, V)`` against ``labels`` that are ``-100`` off the masked positions (about
    15 %); labels already pair with the logits at their own position."""

    name: ClassVar[str] = "masked_lm"
    token_level: ClassVar[bool] = True
    class_suffixes: ClassVar[tuple[str, ...]] = ("ForMaskedLM", "ForPreTraining")
    labelled_share: ClassVar[float] = 0.15
    description: ClassVar[str] = "masked-LM pre-training"

    def auto_class(self):
        from transformers import AutoModelForMaskedLM

        return AutoModelForMaskedLM

    def teacher_hint(self) -> str:
        return "use a checkpoint saved with its masked-LM head (e.g. from AutoModelForMaskedLM.save_pretrained)"

    def head_entry(self, model: nn.Module) -> nn.Module | None:
        """The first module of the family's MLM transform (found by :func:`~lightning_kd.models.vocab_head.head_layout`).

        ``…ForPreTraining`` models (other outputs beside the MLM logits) and families lightning_kd
        does not know compute every row through their own forward (same values, no saving).
        """
        if not type(model).__name__.endswith("ForMaskedLM"):
            return None
        from lightning_kd.models.head_layouts import head_layout

        config = getattr(model, "config", None)
        layout = head_layout(config)
        if layout is not None and layout.kind == "masked_lm" and layout.transform:
            path = layout.transform[0]
        else:
            path = _ENTRIES.get(getattr(config, "model_type", None))
        if path is None:
            return None
        try:
            return model.get_submodule(path)
        except AttributeError:
            return None

    def metrics(self, num_labels, prefix):
        from lightning_kd.metrics import build_mlm_metrics

        return build_mlm_metrics(prefix)
