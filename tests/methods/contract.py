"""The contract every method must keep (DESIGN.md, contracts 2–4), as reusable checks.

A method's test file builds the method on tiny models and calls :func:`check_contract`.
"""

from __future__ import annotations

import copy

import torch


def check_contract(method, batch: dict, tmp_path, steps: int = 25, lr: float = 3e-3, min_drop: float = 0.1) -> dict:
    """Finite terms summing to ``loss``; the loss falls when overfitting one batch; teachers unchanged and
    gradient-free; the export loads with plain transformers and reproduces the student's logits.

    Returns the first and last loss dicts for extra assertions.
    """
    teacher_before = [copy.deepcopy(t.state_dict()) for t in method.teachers]
    method.train()
    assert all(not t.training for t in method.teachers), "teachers must stay in eval mode"
    first = method.compute_losses(batch)
    assert "loss" in first
    for name, value in first.items():
        assert value.dim() == 0 and torch.isfinite(value), f"term {name} is not a finite scalar: {value}"
    parts = sum(v for k, v in first.items() if k != "loss")
    torch.testing.assert_close(first["loss"], parts.float(), rtol=1e-5, atol=1e-6)

    params = [p for _, p in method.trainable_named_parameters()]
    optimizer = torch.optim.Adam(params, lr=lr)
    # Dropout off for a deterministic overfit; the eval lock must still hold for teachers.
    method.eval()
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = method.compute_losses(batch)["loss"]
        loss.backward()
        for teacher in method.teachers:
            assert all(p.grad is None for p in teacher.parameters()), "a gradient reached a teacher"
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] * (1 - min_drop), f"loss did not fall when overfitting: {losses[0]:.4f} -> {losses[-1]:.4f}"

    for before, teacher in zip(teacher_before, method.teachers):
        for key, value in teacher.state_dict().items():
            assert torch.equal(value, before[key]), f"teacher weight {key} changed"
        assert not any(p.requires_grad for p in teacher.parameters())
    assert not any(n.startswith("teachers.") for n, _ in method.trainable_named_parameters())

    out = method.export_student(tmp_path / "export")
    reloaded = method.task_stage.auto_class().from_pretrained(out).eval()
    student = method.student.eval()
    inputs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**inputs).logits, student(**inputs).logits, rtol=1e-4, atol=1e-4)
    exported = set(reloaded.state_dict())
    assert not any(k.startswith(("teachers", "multi_teacher")) for k in exported)
    return {"first": first, "losses": losses}
