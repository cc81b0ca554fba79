"""Every method of the causal-LM stage trains on its student's samples (finite terms, a gradient step), intermediate
terms and multi-teacher strategies included, or is refused when built, naming why (the support matrix's cells,
on tiny Llamas, with ``on_policy``)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import torch

import lightning_kd.methods as methods
from lightning_kd.on_policy import Generation
from tests.families import make_family_model
from tests.on_policy.helpers import prompt_batch, tokenizer
from tests.support_matrix import SPECS

CAUSAL_SPECS = [spec for spec in SPECS if "pretrain" in spec.stages]
#: Methods refused with on_policy, and the words of the reason.
REFUSED = {
    "StudentOnly": "needs a teacher",
    "VocabDistil": "compressed vocabulary",
    "ContinuationKD": "hard term",
    "MobileBERT": "MobileBERT",  # refused on decoders whatever the knobs (needs its own student)
}


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return tokenizer(tmp_path_factory.mktemp("every_method"))


@pytest.mark.parametrize("spec", CAUSAL_SPECS, ids=lambda spec: spec.row)
def test_the_method_trains_on_student_samples_or_is_refused(spec, tok):
    directory = Path(tempfile.mkdtemp())
    knobs = spec.knobs("llama", "pretrain", directory) if callable(spec.knobs) else dict(spec.knobs)
    knobs.setdefault("export_tokenizer", str(tok))
    knobs.update(on_policy=0.5, generation=Generation(max_new_tokens=3))
    if spec.strategy is not None:
        knobs.update(teachers=[make_family_model("llama", "causal", layers=4, seed=s) for s in (1, 4)],
                     multi_teacher=spec.strategy("llama", "pretrain"))
    elif spec.teacher:
        knobs["teacher"] = make_family_model("llama", "causal", layers=4, seed=1)
    else:
        knobs["student"] = make_family_model("llama", "causal", layers=2, seed=2)
    if spec.teacher or spec.strategy is not None:
        knobs.update(student_init="teacher_uniform", student_layers=2)
    if spec.name in REFUSED:
        with pytest.raises(ValueError, match=REFUSED[spec.name]):
            getattr(methods, spec.name)(**knobs)
        return
    method = getattr(methods, spec.name)(**knobs)
    if spec.prepare is not None:
        spec.prepare(method)
    method.train()
    written = method.generated_batches.student_batch(method, prompt_batch(), seed=0)
    terms = method.compute_losses(written)
    assert "hard" not in terms
    for name, value in terms.items():
        assert torch.isfinite(value).all(), f"{spec.row}: {name} is {value}"
    terms["loss"].backward()
    assert any(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in method.student.parameters())
