"""Which model families a Theseus hybrid can swap layers in, and what each needs of teacher and student.

A teacher block runs inside the *student's* encoder loop, on what that loop builds for its own
layers: masks, rotary tables, relative-position inputs, all from the student's config and
encoder-level modules (like the embeddings, those are the student's and train through the hybrid;
they start as the teacher's copies when the student is initialised from the teacher). The block
computes the teacher's function only when the teacher's layers expect exactly those inputs, so:

* teacher and student are of one family (the loop calls layers with its family's signature);
* the config fields that shape those inputs agree (:data:`HYBRID_FAMILIES` lists them per family:
  rotary parameters and head size, sliding window, DeBERTa's relative-position buckets, MPNet's
  per-head relative bias, …);
* every teacher layer of the block at a position has that position's per-layer type
  (``layer_types``: the loop hands the position the mask and rotary table of its own type);
* each student position owns its layer (ALBERT's shared groups are refused: one group stands at
  every position, so a block cannot replace one position);
* DeBERTa-v2's optional convolution (``conv_kernel_size``) runs after the module at position 0,
  which a block of several teacher layers would shift; it is refused.

Families not listed are refused: their loops have not been checked.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from transformers import PreTrainedModel

from lightning_kd.models.layer_config import layer_fields_at
from lightning_kd.models.layer_stack import LayerStack, family_of

_FIX_METHOD = "or distil with a method that does not swap layers (KD, TinyBERT, MiniLM, …)"


@dataclass(frozen=True)
class HybridFamily:
    """A family Theseus supports.

    Attributes:
        label: the family's name in messages.
        interface: config fields that shape what the student's encoder hands every layer; teacher and
            student must agree on them.
    """

    label: str
    interface: tuple[str, ...] = ()


_ROTARY = ("head_dim", "rope_parameters")

#: ``model_type`` → what Theseus needs of it.
HYBRID_FAMILIES: dict[str, HybridFamily] = {
    "bert": HybridFamily("BERT"),
    "roberta": HybridFamily("RoBERTa"),
    "xlm-roberta": HybridFamily("XLM-RoBERTa"),
    "electra": HybridFamily("ELECTRA"),
    "distilbert": HybridFamily("DistilBERT"),
    "albert": HybridFamily("ALBERT"),
    "deberta-v2": HybridFamily(  # conv_kernel_size > 0 is refused separately
        "DeBERTa-v2",
        ("relative_attention", "position_buckets", "max_relative_positions", "max_position_embeddings", "pos_att_type",
         "norm_rel_ebd", "share_att_key"),
    ),
    "mpnet": HybridFamily("MPNet", ("num_attention_heads", "relative_attention_num_buckets")),
    "modernbert": HybridFamily("ModernBERT", _ROTARY + ("local_attention",)),
    "gpt2": HybridFamily("GPT-2"),
    "llama": HybridFamily("Llama", _ROTARY),
    "qwen2": HybridFamily("Qwen2", _ROTARY + ("sliding_window",)),
}
#: Fields every family's loop depends on (causal or bidirectional masks, cross-attention inputs).
_COMMON = ("is_decoder", "add_cross_attention")


def _field(config, name: str):
    if name == "head_dim":
        return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return getattr(config, name, None)


def check_family(
    student: PreTrainedModel,
    teacher: PreTrainedModel,
    index: int,
    student_stack: LayerStack,
    blocks: Sequence[Sequence[int]],
) -> None:
    """Raise ``ValueError`` unless teacher ``index``'s ``blocks`` (one per student position) can run
    in ``student``'s encoder loop as the teacher's own layers would."""
    s_type, t_type = student.config.model_type, teacher.config.model_type
    if s_type != t_type:
        raise ValueError(
            f"Theseus runs teacher layers inside the student's encoder loop, which calls them with its own family's "
            f"arguments, but teacher {index} is {family_of(teacher)} and the student {family_of(student)}. Use a student "
            "of the teacher's family (student_init: teacher_first or teacher_uniform builds one)."
        )
    family = HYBRID_FAMILIES.get(s_type)
    if family is None:
        supported = ", ".join(f.label for f in HYBRID_FAMILIES.values())
        raise ValueError(
            f"Theseus has not been checked on {family_of(student)}: how its encoder loop calls its layers is unknown "
            f"here, so a swapped layer could run on the wrong inputs. Supported families: {supported}; {_FIX_METHOD}."
        )
    for name in _COMMON + family.interface:
        mine, theirs = _field(student.config, name), _field(teacher.config, name)
        if mine != theirs:
            raise ValueError(
                f"{family.label}: the student's {name} is {mine!r} but teacher {index}'s is {theirs!r}; the student's "
                f"encoder builds every layer's inputs from its own {name}, so teacher layers would run on the wrong ones. "
                f"Initialise the student from the teacher (student_init: teacher_uniform) or give both the same {name}."
            )
    if any(getattr(model.config, "conv_kernel_size", 0) for model in (student, teacher)):
        raise ValueError(
            "DeBERTa-v2 with conv_kernel_size > 0 runs the encoder's convolution after the module at position 0, so a "
            "teacher block of several layers there would get it after its last layer instead of after teacher layer 0. "
            f"Use a DeBERTa-v2 without the convolution (conv_kernel_size: 0), {_FIX_METHOD}."
        )
    if student_stack.shared:
        raise ValueError(
            f"{family.label}: the student's layers share modules ({student.config.num_hidden_layers} layers run "
            f"{len(student_stack.modules)} group(s)), so a teacher block cannot replace one position without replacing "
            "every position that shares it. Use a student with one group per layer (num_hidden_groups = "
            f"num_hidden_layers; copy the teacher into it with student_init: teacher_uniform and `student`), {_FIX_METHOD}."
        )
    for position, block in enumerate(blocks):
        wanted = layer_fields_at(student.config, position)
        for layer in block:
            got = layer_fields_at(teacher.config, layer)
            for name in wanted.keys() | got.keys():
                if wanted.get(name) == got.get(name):
                    continue
                kinds = sorted({str(layer_fields_at(teacher.config, j).get(name)) for j in block})
                if len(kinds) > 1:
                    raise ValueError(
                        f"{family.label}: teacher {index}'s block for student position {position} (teacher layers "
                        f"{list(block)}) mixes {name} {kinds}, but the student's encoder hands each position the inputs "
                        "of one type, so no student can run that block correctly. Pick a teacher/student depth whose "
                        f"blocks each have one type, a teacher whose {name} allows it, {_FIX_METHOD}."
                    )
                raise ValueError(
                    f"{family.label}: student position {position} has {name} {wanted.get(name)!r} but teacher {index}'s "
                    f"block there (teacher layers {list(block)}) has {got.get(name)!r}, so the block would run with the "
                    "wrong attention mask. Initialise the student with student_init: teacher_uniform (each position "
                    f"copies the last layer of its block, with its type) or give the student matching {name}."
                )
