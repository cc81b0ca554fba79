"""Where a model's word embeddings meet its hidden space (factorised embeddings).

Most families feed the word-embedding rows ``E`` (``V × d``) straight into a ``d``-wide encoder, so
a hidden state ``h`` and a row ``e_v`` live in one space and ``h·e_v`` scores token ``v``. Factorised
families store narrower rows (``V × e``, ``e < d``) and map them up with a learned linear layer
before the first layer:

=============  ==========================================================  =========================
family          embedding → hidden projection (in the base model)           present
=============  ==========================================================  =========================
ALBERT          ``encoder.embedding_hidden_mapping_in``                     always (even when e = d)
ELECTRA         ``embeddings_project``                                      when ``embedding_size != hidden_size``
DeBERTa-v2      ``embeddings.embed_proj`` (no bias)                         when ``embedding_size != hidden_size``
=============  ==========================================================  =========================

transformers has no API for this projection, hence the table; a model whose rows are narrower than
its hidden states and whose family is not in it is refused by :func:`check_vocabulary_scoring`.
"""

from __future__ import annotations

from torch import Tensor, nn
from transformers import PreTrainedModel

#: model_type → attribute path, from the base model, of the linear map embedding rows → hidden space.
_INPUT_PROJECTIONS = {
    "albert": "encoder.embedding_hidden_mapping_in",
    "electra": "embeddings_project",
    "deberta-v2": "embeddings.embed_proj",
}


def describe(model: PreTrainedModel) -> str:
    """``"ClassName (model_type)"``: how messages name a model and its family."""
    return f"{type(model).__name__} ({getattr(model.config, 'model_type', None) or 'unknown family'})"


def hidden_width(model: PreTrainedModel) -> int:
    """The width ``d`` of the model's hidden states (``config.hidden_size``; DistilBERT's ``dim``, GPT-2's ``n_embd``)."""
    return int(model.config.hidden_size)


def embedding_width(model: PreTrainedModel) -> int:
    """The width ``e`` of the model's word-embedding rows."""
    return int(model.get_input_embeddings().weight.shape[1])


def input_projection(model: PreTrainedModel) -> nn.Linear | None:
    """The model's own linear map from embedding rows to its hidden space, or ``None`` when it has none."""
    path = _INPUT_PROJECTIONS.get(getattr(model.config, "model_type", None))
    if path is None:
        return None
    module = model.base_model
    for name in path.split("."):
        module = getattr(module, name, None)
    # ELECTRA and DeBERTa-v2 only build theirs when the widths differ (DeBERTa-v2 stores None otherwise).
    return module if isinstance(module, nn.Linear) else None


def check_vocabulary_scoring(model: PreTrainedModel, role: str, method: str) -> None:
    """Refuse a model whose hidden states cannot be scored against its embedding rows.

    Raises:
        ValueError: the rows are narrower (or wider) than the hidden states and the family has no
            known embedding → hidden projection.
    """
    if input_projection(model) is None and embedding_width(model) != hidden_width(model):
        raise ValueError(
            f"{method}: the {role} {describe(model)} has {embedding_width(model)}-wide word embeddings but "
            f"{hidden_width(model)}-wide hidden states, and lightning_kd knows no embedding→hidden projection for this "
            f"family (it knows ALBERT, ELECTRA and DeBERTa-v2). Use a model whose embeddings are as wide as its hidden "
            "states, or add the family's projection to lightning_kd/models/embedding_projection.py."
        )


def states_in_embedding_space(model: PreTrainedModel, states: Tensor) -> Tensor:
    """Hidden states ``(…, d)`` expressed against the embedding rows: ``X`` itself, or ``X·W`` with ``W``
    (``d × e``) the weight of the model's own embedding → hidden projection ``e ↦ W e + b``.

    ``(X W)·e_v = X·(W e_v)``: scoring the mapped states against ``E`` is scoring ``X`` against each row
    as the encoder receives it in its hidden space. The projection's bias is left out: it adds the
    same ``X·b`` to every vocabulary column of a row, which says nothing about any token (and cancels
    in a softmax). Float32; differentiable in ``X`` and ``W``.
    """
    projection = input_projection(model)
    if projection is None:
        return states
    return states.float() @ projection.weight.float()
