"""Tiny decoders, prompt/response batches and data for the on-policy and sequence-level KD tests."""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch

from lightning_kd.losses.prediction import PredictionLoss
from lightning_kd.methods import KD
from tests.cli_fixtures import LM_SHAPE
from tests.conftest import WORDS, write_tiny_lm_tokenizer
from tests.families import make_family_model

EOS, PAD = 3, 0  # the tiny LM tokenizer's </s> and <pad>


def models(teacher_layers: int = 4, student_layers: int = 2):
    """A tiny Llama teacher and student (different weights, no dropout), initialised wide enough that their
    distributions differ and greedy decoding does not repeat one token."""
    teacher = make_family_model("llama", "causal", layers=teacher_layers, seed=1, initializer_range=0.5, **LM_SHAPE)
    student = make_family_model("llama", "causal", layers=student_layers, seed=2, initializer_range=0.5, **LM_SHAPE)
    return teacher, student


def method(tokenizer: Path, *, hard_weight: float = 0.0, **knobs) -> KD:
    """KD with GKD's divergence (JSD β 0.5) between the tiny models, EOS/pad from the tiny tokenizer."""
    teacher, student = models()
    knobs.setdefault("prediction", PredictionLoss(soft_loss="jsd", hard_weight=hard_weight))
    knobs.setdefault("learning_rate", 1e-3)
    return KD(teacher=teacher, student=student, export_tokenizer=str(tokenizer), **knobs)


def prompt_batch(seed: int = 0) -> dict[str, torch.Tensor]:
    """Three prompt/response rows in the HF convention: prompts of 4, 6 and 3 tokens, the last row right-padded."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(8, 200, (3, 10), generator=g)
    labels = ids.clone()
    labels[0, :4] = labels[1, :6] = labels[2, :3] = -100
    mask = torch.ones_like(ids)
    mask[2, 7:] = 0
    ids[2, 7:] = PAD
    labels[2, 7:] = -100
    return {"input_ids": ids, "attention_mask": mask, "labels": labels, "example_index": torch.tensor([5, 1, 7])}


def tokenizer(root: Path) -> Path:
    return write_tiny_lm_tokenizer(root / "tokenizer")


def write_pairs(root: Path, rows: int = 32) -> Path:
    """``rows`` prompt/response pairs of tiny-vocabulary words (JSONL)."""
    rng = random.Random(0)
    path = root / "pairs.jsonl"
    sentence = lambda low, high: " ".join(rng.choice(WORDS) for _ in range(rng.randint(low, high)))  # noqa: E731
    path.write_text("".join(json.dumps({"prompt": sentence(2, 6), "response": sentence(2, 5)}) + "\n" for _ in range(rows)))
    return path


def data(tokenizer_dir: Path, pairs: Path, batch_size: int = 4, **options):
    from lightning_kd.data import CausalLMDataModule

    return CausalLMDataModule(tokenizer=str(tokenizer_dir), train_files=[str(pairs)], prompt_field="prompt", response_field="response",
                              block_size=24, batch_size=batch_size, validation_fraction=0.125, **options)


class Recorder:
    """Keeps every training batch a method's generated_batches hands its step, with the step it was for."""

    def __init__(self, method) -> None:
        self.batches: list[tuple[int, int, dict]] = []
        self.original = method.generated_batches.training_batch

        def spy(module, batch, batch_idx):
            out = self.original(module, batch, batch_idx)
            self.batches.append((module.global_step, batch_idx, {k: v.detach().clone() if isinstance(v, torch.Tensor) else v
                                                                 for k, v in out.items()}))
            return out

        method.generated_batches.training_batch = spy

    def written(self, writer: str) -> list[tuple[int, int, dict]]:
        return [entry for entry in self.batches if entry[2].get("written_by") == writer]
