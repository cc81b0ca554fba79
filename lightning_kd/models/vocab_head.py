"""Vocabulary (LM) heads of the supported model families: find them, copy them, check them.

A fine-tuning classifier has no vocabulary head, yet word-prediction distillation needs
vocabulary logits from its last hidden state. :func:`load_vocab_head` takes the head of the
family's language model (``…ForMaskedLM`` for encoders, ``…ForCausalLM`` for decoder LMs) — a built
model, or a checkpoint loaded with the matching auto class — and returns a
:class:`VocabularyHead`: ``logits = transform(h) · Wᵀ + b``, where

* ``transform`` is a copy of the family's **own** head modules, called as they are (dense →
  activation → LayerNorm, including the hidden → embedding map of factorised families), up to the
  decoder's input; the decoder itself is left out so that
* ``W`` is the model's *current* word-embedding matrix at every call when the source ties its
  decoder to the input embeddings (every encoder family here, GPT-2), or the head's own copy of an
  untied decoder (Llama, Qwen2 by default);
* ``b`` is the decoder's vocabulary bias (none for the decoder LMs).

The decoder and its bias are found through ``get_output_embeddings()``. transformers has no API for
the modules *before* the decoder, so :mod:`lightning_kd.models.head_layouts` names them per family; it covers the twelve
families lightning_kd tests and refuses every other one. The copy is checked at construction: on a
short sample it must reproduce the source model's own logits, so a transformers version that lays a
head out differently is refused when the method is built, not in a training step.

Decoder LMs need no transform: ``hidden_states[-1]`` of GPT-2, Llama and Qwen2 already has the final
norm applied, and their ``lm_head`` is a plain (tied or untied) linear map.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, PreTrainedModel

from lightning_kd.data.sources import resolve_source
from lightning_kd.models.embedding_projection import describe, embedding_width, hidden_width, input_projection
from lightning_kd.models.head_layouts import HeadLayout, head_layout, known_families
from lightning_kd.models.loading import ModelSource, load_config

#: Architectures whose checkpoints carry a trained vocabulary head.
_LM_ARCHITECTURES = ("ForMaskedLM", "ForPreTraining", "ForCausalLM", "LMHeadModel")


class VocabularyHead(nn.Module):
    """Vocabulary logits ``transform(h)·Wᵀ + b`` from a last hidden state.

    ``W`` is the head's own ``decoder`` weight when it has one (an untied LM head), else the
    embedding matrix passed at call time (a tied head). With no transform and no bias this is GLM's
    tied LM head ``H·Eᵀ``.

    Args:
        transform: modules mapping ``(B, N, d)`` hidden states to the decoder's input ``(B, N, e)``.
        bias: the ``(V,)`` vocabulary bias (copied).
        decoder: an untied ``(V, e)`` decoder weight (copied).
    """

    def __init__(self, transform: nn.Module | None = None, bias: Tensor | None = None, decoder: Tensor | None = None) -> None:
        super().__init__()
        self.transform = transform
        self.bias = nn.Parameter(bias.detach().clone().float()) if bias is not None else None
        self.decoder = nn.Parameter(decoder.detach().clone().float()) if decoder is not None else None

    @property
    def rows(self) -> int | None:
        """The vocabulary rows the head itself fixes (bias or own decoder), ``None`` when it has neither."""
        own = self.bias if self.bias is not None else self.decoder
        return own.shape[0] if own is not None else None

    def keep_rows(self, rows: Tensor) -> None:
        """Keep only the vocabulary rows ``rows`` (in that order) of the bias and the own decoder."""
        for name in ("bias", "decoder"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, nn.Parameter(value.detach()[rows.to(value.device)].clone(), requires_grad=value.requires_grad))

    def forward(self, hidden: Tensor, embeddings: Tensor) -> Tensor:
        """``hidden`` ``(B, N, d)``, ``embeddings`` ``(V, e)`` (unused by an untied head) → ``(B, N, V)``."""
        if self.transform is not None:
            parameter = next(self.transform.parameters(), None)
            hidden = self.transform(hidden.to(parameter.dtype) if parameter is not None else hidden)
        weight = self.decoder if self.decoder is not None else embeddings
        bias = self.bias.to(hidden.dtype) if self.bias is not None else None
        return F.linear(hidden, weight.to(hidden.dtype), bias)


# ---------------------------------------------------------------------- building from an LM model
def _attribute(root: nn.Module, path: str):
    for name in path.split("."):
        root = getattr(root, name, None)
        if root is None:
            return None
    return root


def _head_parts(model: PreTrainedModel, layout: HeadLayout) -> tuple[list[nn.Module], Tensor | None, nn.Module | None]:
    """The transform modules, the bias and the decoder module of ``model``'s head (``[]`` modules when absent)."""
    modules = [_attribute(model, path) for path in layout.transform]
    if any(not isinstance(m, nn.Module) for m in modules):
        return [], None, None
    decoder = None if layout.decoder_is_input_embeddings else model.get_output_embeddings()
    bias = _attribute(model, layout.bias) if layout.bias else getattr(decoder, "bias", None)
    return modules, bias, decoder


def build_vocab_head(model: PreTrainedModel, layout: HeadLayout) -> VocabularyHead:
    """A float32 :class:`VocabularyHead` copied from a language model of ``layout``'s family."""
    modules, bias, decoder = _head_parts(model, layout)
    # A module that contains the decoder (and the bias tied to it) is copied with the decoder swapped
    # for the identity and the bias left out: calling the copy runs the family's own code up to the
    # decoder's input, and the bias lives in the VocabularyHead once.
    replaced: dict[int, object] = {}
    if decoder is not None:
        replaced[id(decoder)] = nn.Identity()
    if bias is not None:
        replaced[id(bias)] = None
    copies = [copy.deepcopy(module, memo=dict(replaced)).float() for module in modules]
    transform = None if not copies else copies[0] if len(copies) == 1 else nn.Sequential(*copies)
    tied = decoder is None or decoder.weight is model.get_input_embeddings().weight
    return VocabularyHead(transform, bias, None if tied else decoder.weight)


def verify_vocab_head(head: VocabularyHead, model: PreTrainedModel, where: str) -> None:
    """Refuse ``head`` unless, on a short sample, it reproduces ``model``'s own vocabulary logits.

    Raises:
        ValueError: the logits differ, or the model's own forward fails on the sample.
    """
    embeddings = model.get_input_embeddings().weight
    ids = torch.arange(min(int(model.config.vocab_size), 8), device=embeddings.device).unsqueeze(0)
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            output = model(input_ids=ids, output_hidden_states=True, return_dict=True)
            expected = output.logits.float()
            got = head.to(embeddings.device)(output.hidden_states[-1].float(), embeddings.float())
    except (RuntimeError, TypeError, ValueError) as error:
        raise ValueError(f"{where}: its own forward fails on a sample ({error}); use vocab_head: tied.") from error
    finally:
        model.train(training)
    scale = max(1.0, expected.abs().max().item())
    tolerance = 1e-4 if embeddings.dtype == torch.float32 else 3e-2
    if got.shape != expected.shape or not torch.allclose(got, expected, rtol=tolerance, atol=tolerance * scale):
        difference = (got - expected).abs().max().item() if got.shape == expected.shape else f"shape {tuple(got.shape)}"
        raise ValueError(
            f"{where}: the head lightning_kd copies from it does not reproduce its own logits (max difference "
            f"{difference}); this transformers version lays the head out differently. Use vocab_head: tied."
        )


# ---------------------------------------------------------------------- loading for a method
def _name(source: ModelSource) -> str:
    return repr(source) if isinstance(source, str) else f"<{type(source).__name__}>"


def _fix(role: str, target: PreTrainedModel | None) -> str:
    knob = "student_mlm_head" if role == "student" else "teacher_mlm_heads"
    fix = f"give a checkpoint that has one (e.g. the one it was fine-tuned from) as `{knob}`"
    if target is None or tied_head_problem(target) is None:
        fix += ", or set vocab_head: tied (H·Eᵀ, GLM's head)"
    return fix


def _tensors_missing(model: PreTrainedModel, head: list[Tensor], missing: set[str]) -> list[str]:
    """Names of the head's tensors the checkpoint did not store (a tied tensor counts when stored under any name)."""
    names: dict[int, list[str]] = {}
    for name, parameter in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(parameter), []).append(name)
    absent = []
    for tensor in head:
        aliases = names.get(id(tensor), [])
        if aliases and all(alias in missing for alias in aliases):
            absent.append(sorted(aliases)[0])
    return sorted(absent)


def _head_tensors(model: PreTrainedModel, layout: HeadLayout) -> list[Tensor]:
    """The tensors a copied head takes from ``model`` (not the tied decoder: that is the embeddings)."""
    modules, bias, decoder = _head_parts(model, layout)
    skip = {id(decoder.weight)} if decoder is not None else set()
    if bias is not None:
        skip.add(id(bias))
    tensors = [p for module in modules for p in module.parameters() if id(p) not in skip]
    if bias is not None:
        tensors.append(bias)
    if decoder is not None and decoder.weight is not model.get_input_embeddings().weight:
        tensors.append(decoder.weight)
    return tensors


def load_vocab_head(source: ModelSource, role: str, target: PreTrainedModel | None = None) -> VocabularyHead:
    """A copy of the vocabulary head of ``source``, checked against ``source``'s own logits.

    Args:
        source: a built ``…ForMaskedLM`` / ``…ForCausalLM`` model, or a checkpoint (directory,
            ``embedded:`` or hub name) loaded with the family's LM auto class.
        role: ``"student"`` or ``"teacher <i>"``, for messages.
        target: the model the head will read hidden states from; it must be of the same family and
            widths as ``source``.

    Raises:
        ValueError: an unknown family, a source without the head (a classifier, a bare encoder, a
            checkpoint that does not store it), a head that does not reproduce the source's logits,
            or a source that does not fit ``target``.
    """
    fix = _fix(role, target)
    if isinstance(source, PreTrainedModel):
        config, model, missing, architectures = source.config, source, set(), None
    else:
        config = load_config(source)
        model = missing = None
        architectures = list(getattr(config, "architectures", None) or [])
    layout = head_layout(config)
    if layout is None:
        raise ValueError(
            f"The {role} head source {_name(source)} is a {getattr(config, 'model_type', None)!r} model; lightning_kd knows "
            f"the vocabulary heads of {known_families()}. Use vocab_head: tied, or add the family to lightning_kd/models/vocab_head.py."
        )
    paths = ", ".join(layout.transform) or "lm_head"
    style = f"{layout.name}-style {'MLM' if layout.kind == 'masked_lm' else 'LM'} head ({paths})"
    if model is None:
        auto = AutoModelForMaskedLM if layout.kind == "masked_lm" else AutoModelForCausalLM
        model, info = auto.from_pretrained(resolve_source(source), output_loading_info=True)
        missing = set(info.get("missing_keys", []))
    modules, _, decoder = _head_parts(model, layout)
    if (layout.transform and not modules) or (decoder is None and not layout.decoder_is_input_embeddings):
        raise ValueError(f"The {role} head source {_name(source)} has no {style}; {fix}.")
    tensors = _head_tensors(model, layout)
    absent = _tensors_missing(model, tensors, missing)
    if absent:
        raise ValueError(f"The {role} checkpoint {_name(source)} stores no {style} ({', '.join(absent[:3])} missing); {fix}.")
    if tensors and architectures and not any(name.endswith(_LM_ARCHITECTURES) for name in architectures):
        # e.g. a ModernBERT classifier's pooling `head` has the MLM head's parameter names.
        raise ValueError(f"The {role} checkpoint {_name(source)} is a {architectures[0]}, not a language model: it stores no {style}; {fix}.")
    head = build_vocab_head(model, layout)
    verify_vocab_head(head, model, f"The {role} head source {_name(source)} ({describe(model)})")
    if target is not None:
        _check_fits(head, model, target, role, source)
    return head


def _check_fits(head: VocabularyHead, source: PreTrainedModel, target: PreTrainedModel, role: str, given: ModelSource) -> None:
    """The head reads ``target``'s hidden states (and, when tied, its embeddings): same family and widths."""
    if source.config.model_type != target.config.model_type:
        raise ValueError(
            f"The {role} head source {_name(given)} is {describe(source)} but the {role} is {describe(target)}; a head "
            "only reads hidden states of its own family. Give a head of the same family."
        )
    if hidden_width(source) != hidden_width(target) or (head.decoder is None and embedding_width(source) != embedding_width(target)):
        raise ValueError(
            f"The {role} head source {_name(given)} reads {hidden_width(source)}-wide hidden states and "
            f"{embedding_width(source)}-wide embeddings; the {role} has {hidden_width(target)} and {embedding_width(target)}. "
            "Give a head trained with a model of the same widths."
        )


# ---------------------------------------------------------------------- GLM's tied head
def tied_head_problem(model: PreTrainedModel) -> str | None:
    """Why ``H·Eᵀ`` is not a vocabulary head of ``model`` (``None`` when it is one).

    ``H·Eᵀ`` scores a hidden state against the word-embedding rows, which is only meaningful when
    the rows live in the hidden space. Factorised families (ALBERT; ELECTRA and DeBERTa-v2 with
    ``embedding_size != hidden_size``) map narrower rows into it with a learned projection, and
    come back out only through their masked-LM head's own hidden → embedding map, which a classifier
    does not have.
    """
    projection = input_projection(model)
    if projection is None and embedding_width(model) == hidden_width(model):
        return None
    how = "a learned projection" if projection is not None else "no projection lightning_kd knows"
    return (
        f"{describe(model)} maps its {embedding_width(model)}-wide word embeddings into its {hidden_width(model)}-wide "
        f"hidden space with {how}, so H·Eᵀ scores vectors of two different spaces; only its masked-LM head maps "
        "hidden states back (hidden → embedding, then the tied decoder)"
    )


def check_tied_head(model: PreTrainedModel, role: str) -> None:
    """Refuse ``vocab_head='tied'`` for a model whose embedding rows are not in its hidden space.

    Raises:
        ValueError: naming the family, the reason and the fix (its masked-LM head via ``vocab_head: mlm``).
    """
    problem = tied_head_problem(model)
    if problem is not None:
        knob = "student_mlm_head" if role == "student" else "teacher_mlm_heads"
        raise ValueError(
            f"vocab_head='tied' does not apply to the {role}: {problem}. Use vocab_head: mlm with the family's "
            f"…ForMaskedLM checkpoint (its own, or one given as {knob})."
        )
