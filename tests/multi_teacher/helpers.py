"""Hand-built TeacherSteps for strategy formula tests."""

from __future__ import annotations

import torch

from lightning_kd.core.features import Features
from lightning_kd.core.multi_teacher import TeacherStep


def make_step(student_logits, teacher_logits, labels, *, student_loss=None, attention_mask=None, indices=None, step=0):
    batch = {"labels": labels}
    if attention_mask is not None:
        batch["attention_mask"] = attention_mask
    student = Features(logits=student_logits, loss=student_loss)
    indices = list(range(len(teacher_logits))) if indices is None else indices
    return TeacherStep(batch, student, list(teacher_logits), indices, step)


def fixed(*values):
    return torch.tensor(values, dtype=torch.float32)
