"""Where each supported family's vocabulary (LM) head lives: a table, and nothing that loads a model.

:mod:`lightning_kd.models.vocab_head` copies and checks heads from it; the masked-LM stage finds the
module its compact heads start at (:mod:`lightning_kd.stages.masked_lm`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from transformers import PretrainedConfig

HeadKind = Literal["masked_lm", "causal_lm"]


@dataclass(frozen=True)
class HeadLayout:
    """Where one family's vocabulary head lives in its language-model class.

    Attributes:
        name: the family as messages name it.
        kind: the auto class that carries the head (``AutoModelForMaskedLM`` or ``…ForCausalLM``).
        transform: attribute paths of the modules called in order on the last hidden state up to
            the decoder's input. A module that contains the decoder (RoBERTa's ``lm_head``) is called
            with the decoder replaced by the identity.
        bias: path of the vocabulary bias when it is not the decoder's own (DeBERTa-v2's new head).
        decoder_is_input_embeddings: the head multiplies by the input embeddings itself and has no
            decoder module (DeBERTa-v2's new head, whose ``get_output_embeddings()`` returns its dense).
    """

    name: str
    kind: HeadKind
    transform: tuple[str, ...]
    bias: str | None = None
    decoder_is_input_embeddings: bool = False


#: model_type → head layout (transformers 5). ``deberta-v2`` is the legacy head (the default,
#: ``config.legacy=True``); the new one is :data:`_DEBERTA_V2_NEW_HEAD`.
_LAYOUTS: dict[str, HeadLayout] = {
    "bert": HeadLayout("BERT", "masked_lm", ("cls.predictions.transform",)),
    "roberta": HeadLayout("RoBERTa", "masked_lm", ("lm_head",)),
    "xlm-roberta": HeadLayout("XLM-RoBERTa", "masked_lm", ("lm_head",)),
    "mpnet": HeadLayout("MPNet", "masked_lm", ("lm_head",)),
    "distilbert": HeadLayout("DistilBERT", "masked_lm", ("vocab_transform", "activation", "vocab_layer_norm")),
    "electra": HeadLayout("ELECTRA", "masked_lm", ("generator_predictions",)),  # the generator's head
    "albert": HeadLayout("ALBERT", "masked_lm", ("predictions",)),
    "deberta-v2": HeadLayout("DeBERTa-v2", "masked_lm", ("cls.predictions.transform",)),
    "modernbert": HeadLayout("ModernBERT", "masked_lm", ("head",)),
    "gpt2": HeadLayout("GPT-2", "causal_lm", ()),
    "llama": HeadLayout("Llama", "causal_lm", ()),
    "qwen2": HeadLayout("Qwen2", "causal_lm", ()),
}
_DEBERTA_V2_NEW_HEAD = HeadLayout(
    "DeBERTa-v2",
    "masked_lm",
    ("lm_predictions.lm_head.dense", "lm_predictions.lm_head.transform_act_fn", "lm_predictions.lm_head.LayerNorm"),
    bias="lm_predictions.lm_head.bias",
    decoder_is_input_embeddings=True,
)


def head_layout(config: PretrainedConfig) -> HeadLayout | None:
    """The vocabulary-head layout of ``config``'s family, or ``None`` for a family lightning_kd does not know."""
    model_type = getattr(config, "model_type", None)
    if model_type == "deberta-v2" and not getattr(config, "legacy", True):
        return _DEBERTA_V2_NEW_HEAD
    return _LAYOUTS.get(model_type)


def known_families() -> str:
    """The families with a known head, for messages."""
    return ", ".join(layout.name for layout in _LAYOUTS.values())
