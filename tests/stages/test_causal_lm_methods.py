"""The method contract in the causal-LM stage (finite terms, the loss falls when overfitting a batch,
teachers unchanged, the export reloads with AutoModelForCausalLM and gives the student's logits), on
tiny decoders of each family, for the methods whose terms differ most on a decoder."""

from __future__ import annotations

import pytest

from lightning_kd.losses.prediction import PredictionLoss
from lightning_kd.methods import CKD, KD, MiniLM, MiniLMv2, StudentOnly, TinyBERT
from tests.conftest import make_batch
from tests.families import DECODERS, make_family_model
from tests.methods.contract import check_contract

METHODS = {
    "KD (jsd)": lambda teacher: KD(teacher=teacher, prediction=PredictionLoss(soft_loss="jsd"), student_init="teacher_first_last", student_layers=2),
    "TinyBERT": lambda teacher: TinyBERT(teacher=teacher, student_init="teacher_uniform", student_layers=2, prediction=PredictionLoss()),
    "MiniLM": lambda teacher: MiniLM(teacher=teacher, student_init="teacher_uniform", student_layers=2, mask_padding=True),
    "MiniLMv2": lambda teacher: MiniLMv2(teacher=teacher, student_init="teacher_uniform", student_layers=2, relation_heads=4),
    "CKD": lambda teacher: CKD(teacher=teacher, student_init="teacher_uniform", student_layers=2),
}


@pytest.mark.parametrize("family", sorted(DECODERS))
@pytest.mark.parametrize("name", list(METHODS))
def test_method_contract_on_decoders(name, family, tmp_path):
    # A teacher of its own weights, so the intermediate terms have something to learn on the tiny models.
    teacher = make_family_model(family, "causal", layers=4, seed=1, initializer_range=0.2)
    method = METHODS[name](teacher)
    check_contract(method, make_batch("causal"), tmp_path, min_drop=0.05)


def test_student_only_contract_on_a_decoder(tmp_path):
    check_contract(StudentOnly(student=make_family_model("qwen2", "causal", layers=2, seed=2)), make_batch("causal"), tmp_path)
