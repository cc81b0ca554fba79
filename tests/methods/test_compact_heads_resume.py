"""A pre-training run with compact heads trains the student exactly as the full heads do, and a run
stopped mid-epoch and resumed from its checkpoint ends where the uninterrupted run ends."""

from __future__ import annotations

import pytest
import torch

from lightning_kd.data import PretrainDataModule
from lightning_kd.losses.prediction import PredictionLoss
from lightning_kd.methods import KD
from tests.cli_fixtures import fit_with_checkpoints, write_corpus
from tests.conftest import make_tiny_bert, write_tiny_tokenizer


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("compact_resume")
    teacher = root / "teacher"
    # No dropout: a run is then a pure function of the data order and the weights.
    make_tiny_bert("mlm", seed=1, layers=4, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0).save_pretrained(teacher)
    write_tiny_tokenizer(teacher)
    return {"teacher": teacher, "corpus": write_corpus(root)}


def _fit(assets, root, *, compact=True, stop_at=None, ckpt_path=None):
    data = PretrainDataModule(tokenizer=str(assets["teacher"]), train_files=[str(assets["corpus"])], block_size=16, batch_size=4,
                              validation_fraction=0.1, masking_seed=0)
    method = KD(teacher=str(assets["teacher"]), student_init="teacher_uniform", student_layers=2, prediction=PredictionLoss(hard_weight=0.5, temperature=2.0))
    method.compact_heads = compact
    trainer = fit_with_checkpoints(method, data, root, stop_at=stop_at, ckpt_path=ckpt_path)
    return method, trainer


def _same_student(a, b):
    for key, value in a.student.state_dict().items():
        torch.testing.assert_close(b.student.state_dict()[key], value, rtol=1e-4, atol=1e-6, msg=key)


def test_compact_full_and_resumed_runs_end_with_the_same_student(assets, tmp_path):
    compact, _ = _fit(assets, tmp_path / "compact")
    full, _ = _fit(assets, tmp_path / "full", compact=False)
    _same_student(full, compact)
    _fit(assets, tmp_path / "first", stop_at=3)
    checkpoint = next((tmp_path / "first" / "ckpt").glob("*step=3*.ckpt"))
    resumed, trainer = _fit(assets, tmp_path / "resumed", ckpt_path=str(checkpoint))
    assert trainer.global_step == 6
    _same_student(compact, resumed)
