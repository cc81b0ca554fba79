"""Every fine-tuning method and multi-teacher strategy, with a teacher that reads its own encoding of the text:
it trains and gives what the same teacher gives on the student's tokens, or it is refused when built, naming why.

The teacher's encoding here is the student's tokens with three more padding positions (a mask of zeros): the
same text, other positions. A method whose terms read the teacher through its own encoding and mask (pooled
vectors, task logits) or through the character-span alignment (hidden-state terms and relations, the default
step's or a method's own: here the identity) gives exactly the same-tokenizer value; one that read the student's
mask or positions for the teacher would fail or differ.
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path

import pytest
import torch

import lightning_kd.methods as methods
from tests.conftest import make_batch
from tests.families import make_family_model
from tests.support_matrix import SPECS, MethodSpec, _set

FINETUNE = [spec for spec in SPECS if "finetune" in spec.stages and spec.teacher]
#: Settings that lift a method's refusal, held to the same rule.
LIFTED = [MethodSpec("SID", stages=("finetune",), knobs={"attention_weight": 0.0}, prepare=_set(stage=2),
                     label="SID attention_weight 0")]
#: What a refusal says for the methods that compare the models position by position (or run teacher weights).
REFUSED = {
    "TinyBERT": "position by position",
    "MiniLM": "position by position",
    "MiniLMv2": "position by position",
    "ERDistill": "teacher's layers",
    "MixBaseline": "position by position",
    "LogitsDistil": "teacher's layers",
    "SID": "attention_weight: 0",  # its internal stages compare attention maps unless that term is off
    "VocabDistil": "vocabulary",
    "Theseus": "teacher's layers",
}
#: Methods whose same-tokenizer terms read padding positions too (LRC-BERT: every position, as its reference), which a
#: teacher of another tokenizer has no vector at: compared on rows without padding, where both read the same positions.
READS_PADDING = {"LRCBERT"}
EXTRA_PADDING = 3


def _teacher_encoding(batch: dict[str, torch.Tensor], prefix: str = "teacher_") -> dict[str, torch.Tensor]:
    """The batch plus a teacher encoding of the same rows: the student's tokens, then padding; every real token
    spells one character of its own (so aligning the two encodings by character spans is the identity)."""
    positions = torch.arange(batch["input_ids"].shape[1])
    spans = torch.stack([positions, positions + 1], dim=-1).expand(*batch["input_ids"].shape, 2)
    student = {**batch, "offset_mapping": spans * batch["attention_mask"].unsqueeze(-1)}
    padded = {}
    for key in ("input_ids", "attention_mask", "token_type_ids", "offset_mapping"):
        value = student[key]
        padded[prefix + key] = torch.cat([value, value.new_zeros(value.shape[0], EXTRA_PADDING, *value.shape[2:])], dim=1)
    return {**student, **padded}


def _build(spec, family: str, teacher_tokenizer: str | None, models: dict):
    directory = Path(tempfile.mkdtemp())
    knobs = spec.knobs(family, "finetune", directory) if callable(spec.knobs) else dict(spec.knobs)
    if spec.strategy is not None:
        knobs.update(teachers=copy.deepcopy(models["teachers"]), multi_teacher=spec.strategy(family, "finetune"))
    else:
        knobs["teacher"] = copy.deepcopy(models["teachers"][0])
    knobs.update(student_init="teacher_uniform", student_layers=2, teacher_tokenizer=teacher_tokenizer,
                 export_tokenizer="student-tokenizer")
    method = getattr(methods, spec.name)(**knobs)
    if spec.prepare is not None:
        spec.prepare(method)
    return method.train()


@pytest.mark.parametrize("spec", FINETUNE + LIFTED, ids=lambda spec: spec.row)
def test_a_teacher_of_its_own_encoding_gives_the_same_tokenizer_result_or_is_refused(spec):
    family = "bert"
    models = {"teachers": [make_family_model(family, "classification", layers=4, seed=s) for s in (1, 4)]}
    if spec.name in REFUSED and spec not in LIFTED:
        with pytest.raises(ValueError, match=REFUSED[spec.name]):
            _build(spec, family, "teacher-tokenizer", models)
        return
    across = _build(spec, family, "teacher-tokenizer", models)
    same = _build(spec, family, None, models)
    same.load_state_dict(across.state_dict())
    batch = make_batch("classification")
    if spec.name in READS_PADDING:
        batch["attention_mask"] = torch.ones_like(batch["attention_mask"])
    torch.manual_seed(0)
    got = across.compute_losses(_teacher_encoding(batch))
    torch.manual_seed(0)
    want = same.compute_losses(batch)
    assert set(got) == set(want)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-6, msg=f"{spec.row}: term {name}")
    got["loss"].backward()
    assert any(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in across.student.parameters())
