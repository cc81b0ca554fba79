"""Fused LM-head losses (:mod:`lightning_kd.losses.fused_linear`) against the unfused computation:
full logits with autograd, the divergence written here with plain torch ops, the same per-row weights.

Covers every divergence × temperature × tied/untied head × bias/scale/soft-cap, the hard
cross-entropy and its combination with the soft term (separate upstream gradients), chunking,
skipped rows (never projected, NaN-proof), bf16 inputs with a teacher of another width and dtype,
:meth:`LinearHead.of` on tiny Hugging Face families, and the memory the fused path allocates
(measured with a dispatch mode that tracks the live tensor storages created inside it).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from lightning_kd.losses import fused_linear
from lightning_kd.losses.fused_linear import HardSpec, LinearHead, SoftSpec, default_chunk_rows, fused_linear_terms

KINDS = ["kl", "ce", "reverse_kl", "jsd", "skew_kl", "skew_reverse_kl", "tvd", "argmax_ce"]
R, V, D, D_T = 20, 60, 12, 20
BETA, ALPHA = 0.3, 0.2
#: Post-head transforms of the student: (bias, scale, softcap).
HEADS = {
    "plain": (False, 1.0, None),
    "bias": (True, 1.0, None),
    "scale": (False, 0.6, None),
    "softcap": (False, 1.0, 1.5),
    "all": (True, 1.7, 2.5),
}


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _reference_rows(kind: str, zs: torch.Tensor, zt: torch.Tensor, temperature: float) -> torch.Tensor:
    """Per-row divergence between ``p = softmax(zt/T)`` and ``q = softmax(zs/T)`` with plain torch ops."""
    log_q, log_p = F.log_softmax(zs / temperature, -1), F.log_softmax(zt / temperature, -1)
    q, p = log_q.exp(), log_p.exp()

    def kl(a, log_a, log_b):
        return (a * (log_a - log_b)).sum(-1)

    if kind == "kl":
        return kl(p, log_p, log_q)
    if kind == "ce":
        return -(p * log_q).sum(-1)
    if kind == "reverse_kl":
        return kl(q, log_q, log_p)
    if kind == "jsd":
        log_m = torch.log(BETA * p + (1 - BETA) * q)
        return BETA * kl(p, log_p, log_m) + (1 - BETA) * kl(q, log_q, log_m)
    if kind == "skew_kl":
        return kl(p, log_p, torch.log(ALPHA * p + (1 - ALPHA) * q))
    if kind == "skew_reverse_kl":
        return kl(q, log_q, torch.log((1 - ALPHA) * p + ALPHA * q))
    if kind == "argmax_ce":
        return F.cross_entropy(zs / temperature, zt.argmax(-1), reduction="none")
    return 0.5 * (p - q).abs().sum(-1)


def _reference(rows, head, teacher_rows, teacher_head, soft: SoftSpec | None, hard: HardSpec | None) -> dict:
    """The unfused terms: full logits with autograd, then the per-row values, then the weights."""
    z = head.project(rows)
    z = z if z.dtype == torch.float64 else z.float()
    out = {}
    if soft is not None:
        t = teacher_head.project(teacher_rows.detach()).detach().to(z.dtype)
        out["soft"] = (soft.weights * _reference_rows(soft.kind, z, t, soft.temperature)).sum()
    if hard is not None:
        ce = F.cross_entropy(z, hard.labels, ignore_index=hard.ignore_index, reduction="none")
        out["hard"] = (hard.weights * ce).sum()
    return out


class Student:
    """Student rows from an embedding and one layer, so a tied head's gradient also comes through the embedding."""

    def __init__(self, seed: int, tied: bool, bias: bool, scale: float, softcap: float | None, dtype=torch.float32):
        g = _gen(seed)
        self.embedding = torch.nn.Parameter(torch.randn(V, D, generator=g, dtype=dtype))
        self.layer = torch.nn.Parameter(torch.randn(D, D, generator=g, dtype=dtype) / D**0.5)
        self.ids = torch.randint(0, V, (R,), generator=g)
        weight = self.embedding if tied else torch.nn.Parameter(torch.randn(V, D, generator=g, dtype=dtype))
        b = torch.nn.Parameter(torch.randn(V, generator=g, dtype=dtype)) if bias else None
        self.head = LinearHead(weight, b, scale, softcap)

    def rows(self) -> torch.Tensor:
        return torch.tanh(self.embedding[self.ids] @ self.layer) * 3.0

    def params(self) -> list[torch.Tensor]:
        found = [self.embedding, self.layer, self.head.weight, self.head.bias]
        return list({id(p): p for p in found if p is not None}.values())

    def grads(self, loss: torch.Tensor) -> list[torch.Tensor]:
        return list(torch.autograd.grad(loss, self.params()))


def _teacher(seed: int, softcap: float | None = None, dtype=torch.float32):
    g = _gen(seed)
    rows = (torch.randn(R, D_T, generator=g) * 2).to(dtype).requires_grad_()
    head = LinearHead(torch.randn(V, D_T, generator=g).to(dtype).requires_grad_(), None, 1.0, softcap)
    return rows, head


def _mask(seed: int) -> torch.Tensor:
    keep = torch.rand(R, generator=_gen(seed)) > 0.3
    keep[0] = True
    return keep


def _labels(seed: int) -> torch.Tensor:
    labels = torch.randint(0, V, (R,), generator=_gen(seed))
    labels[::5] = -100
    return labels


#: Gradient tolerance of float32, relative to the largest entry: the divergences' gradients cancel
#: (``q ⊙ (g − Σ q g)``), so the unfused float32 reference itself is off float64 by up to ~1e-4 of the
#: largest entry for total variation and ~1e-5 for the KL family; float64 runs check 1e-10 elementwise.
FLOAT32_GRAD_ATOL = 3e-5
FLOAT32_GRAD_ATOL_TVD = 2e-4


def _close(actual, expected, rtol=1e-5):
    """float32 gradients: ``rtol`` elementwise, up to :data:`FLOAT32_GRAD_ATOL` of the largest entry."""
    for a, e in zip(actual, expected, strict=True):
        torch.testing.assert_close(a, e, rtol=rtol, atol=FLOAT32_GRAD_ATOL * float(e.abs().max()))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("head_kind", list(HEADS))
@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize("kind", KINDS)
def test_soft_matches_unfused(kind, temperature, tied, head_kind, dtype):
    student = Student(1, tied, *HEADS[head_kind], dtype=dtype)
    teacher_rows, teacher_head = _teacher(2, softcap=4.0 if head_kind == "all" else None, dtype=dtype)
    soft = SoftSpec.masked_mean(_mask(3), kind, temperature, jsd_beta=BETA, skew_alpha=ALPHA)

    fused = fused_linear_terms(student.rows(), student.head, teacher_rows, teacher_head, soft=soft, chunk_rows=7)
    reference = _reference(student.rows(), student.head, teacher_rows, teacher_head, soft, None)
    assert set(fused) == {"soft"} and fused["soft"].dtype == dtype
    exact = dtype == torch.float64
    torch.testing.assert_close(fused["soft"], reference["soft"], rtol=1e-12 if exact else 1e-5, atol=0)
    got, want = student.grads(fused["soft"]), student.grads(reference["soft"])
    for a, e in zip(got, want, strict=True):
        assert a.dtype == dtype
        scale = float(e.abs().max())
        loose = FLOAT32_GRAD_ATOL_TVD if kind == "tvd" else FLOAT32_GRAD_ATOL
        torch.testing.assert_close(a, e, rtol=1e-10 if exact else 1e-5, atol=scale * (1e-12 if exact else loose))

    again = fused_linear_terms(student.rows(), student.head, teacher_rows, teacher_head, soft=soft)
    again["soft"].backward()  # the teacher's rows and weight require grad, and get none
    assert teacher_rows.grad is None and teacher_head.weight.grad is None


def test_rows_gradient_and_float64():
    """The gradient wrt the rows themselves, in float64 (computed in float64) to 1e-12."""
    g = _gen(5)
    rows = torch.randn(R, D, generator=g, dtype=torch.float64, requires_grad=True)
    head = LinearHead(torch.randn(V, D, generator=g, dtype=torch.float64, requires_grad=True),
                      torch.randn(V, generator=g, dtype=torch.float64, requires_grad=True), 0.8, 2.0)
    teacher_rows, teacher_head = _teacher(6, softcap=3.0, dtype=torch.float64)
    soft = SoftSpec(torch.rand(R, generator=g, dtype=torch.float64), "jsd", 2.0, jsd_beta=BETA)
    hard = HardSpec(_labels(7), torch.rand(R, generator=g, dtype=torch.float64))
    fused = fused_linear_terms(rows, head, teacher_rows, teacher_head, soft=soft, hard=hard, chunk_rows=4)
    assert fused["soft"].dtype == torch.float64
    reference = _reference(rows, head, teacher_rows, teacher_head, soft, hard)
    params = [rows, head.weight, head.bias]
    for term in ("soft", "hard"):
        torch.testing.assert_close(fused[term], reference[term], rtol=1e-12, atol=0)
        got = torch.autograd.grad(fused[term], params, retain_graph=True)
        want = torch.autograd.grad(reference[term], params, retain_graph=True)
        for a, e in zip(got, want):
            torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("head_kind", ["plain", "all"])
def test_hard_alone_is_cross_entropy(head_kind):
    student = Student(8, False, *HEADS[head_kind])
    labels = _labels(9)
    fused = fused_linear_terms(student.rows(), student.head, hard=HardSpec.mean(labels), chunk_rows=6)
    assert set(fused) == {"hard"}
    expected = F.cross_entropy(student.head.project(student.rows()), labels)  # mean over non-ignored labels
    torch.testing.assert_close(fused["hard"], expected, rtol=1e-5, atol=0)
    _close(student.grads(fused["hard"]), student.grads(expected))


def test_soft_and_hard_together_with_separate_upstream_gradients():
    student = Student(10, True, *HEADS["all"])
    teacher_rows, teacher_head = _teacher(11)
    soft = SoftSpec.masked_mean(_mask(12), "reverse_kl", 2.0)
    hard = HardSpec.mean(_labels(13))
    both = fused_linear_terms(student.rows(), student.head, teacher_rows, teacher_head, soft=soft, hard=hard, chunk_rows=3)
    alone = {
        "soft": fused_linear_terms(student.rows(), student.head, teacher_rows, teacher_head, soft=soft)["soft"],
        "hard": fused_linear_terms(student.rows(), student.head, hard=hard)["hard"],
    }
    reference = _reference(student.rows(), student.head, teacher_rows, teacher_head, soft, hard)
    for term in ("soft", "hard"):
        torch.testing.assert_close(both[term], alone[term], rtol=1e-6, atol=0)
        torch.testing.assert_close(both[term], reference[term], rtol=1e-5, atol=0)
    _close(student.grads(2 * both["soft"] + 3 * both["hard"]), student.grads(2 * reference["soft"] + 3 * reference["hard"]))
    # Only one of the two outputs used: the other's gradient is left out.
    both = fused_linear_terms(student.rows(), student.head, teacher_rows, teacher_head, soft=soft, hard=hard)
    reference = _reference(student.rows(), student.head, teacher_rows, teacher_head, soft, hard)
    _close(student.grads(-0.5 * both["hard"]), student.grads(-0.5 * reference["hard"]))


@pytest.mark.parametrize("ratio", [1.0, 0.7])
def test_a_declared_upstream_ratio_shares_one_set_of_accumulators(ratio):
    """With ``hard_ratio`` the two terms' gradients are summed per chunk (fewer products): the same values
    and gradients when backward brings that ratio, and an error when it does not."""
    student = Student(10, False, *HEADS["all"])
    teacher_rows, teacher_head = _teacher(11)
    soft = SoftSpec.masked_mean(_mask(12), "jsd", 2.0, jsd_beta=BETA)
    hard = HardSpec.mean(_labels(13))
    combined = fused_linear_terms(student.rows(), student.head, teacher_rows, teacher_head, soft=soft, hard=hard,
                                  chunk_rows=3, hard_ratio=ratio)
    reference = _reference(student.rows(), student.head, teacher_rows, teacher_head, soft, hard)
    for term in ("soft", "hard"):
        torch.testing.assert_close(combined[term], reference[term], rtol=1e-5, atol=0)
    _close(student.grads(2 * combined["soft"] + 2 * ratio * combined["hard"]),
           student.grads(2 * reference["soft"] + 2 * ratio * reference["hard"]))
    broken = fused_linear_terms(student.rows(), student.head, teacher_rows, teacher_head, soft=soft, hard=hard,
                                hard_ratio=ratio)
    with pytest.raises(RuntimeError, match="upstream ratio"):
        (broken["soft"] + (ratio + 1.0) * broken["hard"]).backward()


@pytest.mark.parametrize("chunk_rows", [1, 3, R, 5 * R, None])
def test_chunk_size_does_not_change_results(chunk_rows):
    student = Student(14, False, *HEADS["all"])
    teacher_rows, teacher_head = _teacher(15, softcap=3.0)
    soft = SoftSpec.masked_mean(_mask(16), "skew_kl", 2.0, skew_alpha=ALPHA)
    hard = HardSpec.mean(_labels(17))
    reference = _reference(student.rows(), student.head, teacher_rows, teacher_head, soft, hard)
    fused = fused_linear_terms(student.rows(), student.head, teacher_rows, teacher_head, soft=soft, hard=hard, chunk_rows=chunk_rows)
    for term in ("soft", "hard"):
        torch.testing.assert_close(fused[term], reference[term], rtol=1e-5, atol=0)
    _close(student.grads(fused["soft"] + fused["hard"]), student.grads(reference["soft"] + reference["hard"]))


class Probe(TorchDispatchMode):
    """Records every op run inside it: the rows of each ``(·, V)`` product (projections), the largest
    tensor created, and the peak bytes of live tensor storages created inside the mode (views and
    in-place results of pre-existing tensors do not count)."""

    def __init__(self, vocab: int):
        super().__init__()
        self.vocab = vocab
        self.projected_rows = 0
        self.largest_projection = 0  # rows
        self.largest = 0
        self.peak = 0
        self._live: dict[int, tuple[StorageWeakRef, int]] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage().data_ptr() for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        for t in tree_leaves(out):
            if not isinstance(t, torch.Tensor):
                continue
            storage = t.untyped_storage()
            if storage.data_ptr() in inputs or storage.nbytes() == 0:
                continue
            self._live[storage.data_ptr()] = (StorageWeakRef(storage), storage.nbytes())
            self.largest = max(self.largest, t.numel())
            if func in (torch.ops.aten.mm.default, torch.ops.aten.addmm.default) and t.dim() == 2 and t.shape[1] == self.vocab:
                self.projected_rows += t.shape[0]
                self.largest_projection = max(self.largest_projection, t.shape[0])
        self._live = {k: v for k, v in self._live.items() if not v[0].expired()}
        self.peak = max(self.peak, sum(n for _, n in self._live.values()))
        return out


def test_zero_weight_rows_are_never_projected_and_nan_proof():
    student = Student(18, False, *HEADS["all"])
    teacher_rows, teacher_head = _teacher(19)
    soft_mask, labels = _mask(20), _labels(21)
    soft_mask[3:6] = False
    labels[3:6] = -100  # rows 3..5: no term at all
    labels[soft_mask.nonzero()[:2].squeeze(1)] = -100  # soft only
    hard_only = (~soft_mask) & (labels != -100)
    rows = student.rows().detach().clone()
    teacher = teacher_rows.detach().clone()
    rows[3:6] = float("nan")
    teacher[3:6] = float("nan")
    teacher[hard_only] = float("nan")  # a teacher row the soft term does not use
    rows.requires_grad_()
    soft, hard = SoftSpec.masked_mean(soft_mask, "kl", 2.0), HardSpec.mean(labels)
    with Probe(V) as probe:
        fused = fused_linear_terms(rows, student.head, teacher, teacher_head, soft=soft, hard=hard, chunk_rows=4)
    used = soft_mask | (labels != -100)
    assert probe.projected_rows == int(used.sum()) + int(soft_mask.sum())  # student rows + teacher rows
    (fused["soft"] + fused["hard"]).backward()
    assert torch.isfinite(fused["soft"]) and torch.isfinite(fused["hard"])
    assert torch.equal(rows.grad[3:6], torch.zeros(3, D)) and torch.isfinite(rows.grad).all()
    assert torch.isfinite(student.head.weight.grad).all() and torch.isfinite(student.head.bias.grad).all()
    clean = student.rows().detach()
    reference = _reference(clean, student.head, teacher_rows, teacher_head, soft, hard)
    for term in ("soft", "hard"):
        torch.testing.assert_close(fused[term], reference[term], rtol=1e-5, atol=0)


def test_no_rows_at_all():
    student = Student(22, False, *HEADS["bias"])
    rows = student.rows()
    fused = fused_linear_terms(rows, student.head, hard=HardSpec.mean(torch.full((R,), -100)))
    assert fused["hard"].item() == 0.0
    assert all(float(g.abs().max()) == 0.0 for g in student.grads(fused["hard"]))


def test_bf16_student_and_teacher_of_another_width_and_dtype():
    student = Student(23, True, *HEADS["all"], dtype=torch.bfloat16)
    g = _gen(24)
    teacher_rows = (torch.randn(R, D_T, generator=g) * 2).to(torch.bfloat16)
    teacher_head = LinearHead(torch.randn(V, D_T, generator=g, dtype=torch.float64), None, 1.0, 5.0)
    soft = SoftSpec.masked_mean(_mask(25), "kl", 2.0)
    hard = HardSpec.mean(_labels(26))
    fused = fused_linear_terms(student.rows(), student.head, teacher_rows, teacher_head, soft=soft, hard=hard, chunk_rows=6)
    assert fused["soft"].dtype == torch.float32 and fused["hard"].dtype == torch.float32
    got = student.grads(fused["soft"] + 2 * fused["hard"])
    assert all(t.dtype == torch.bfloat16 for t in got)

    # Reference: the same bf16 values, up-cast, in float32 — the head's and the rows' graph rebuilt in float32.
    weight = student.embedding.detach().float().requires_grad_()
    layer = student.layer.detach().float().requires_grad_()
    bias = student.head.bias.detach().float().requires_grad_()
    rows_bf16 = student.rows().detach()  # the exact bf16 rows the fused call saw
    rows32 = rows_bf16.float().requires_grad_()
    head32 = LinearHead(weight, bias, student.head.scale, student.head.softcap)
    teacher32 = LinearHead(teacher_head.weight.float(), None, 1.0, 5.0)
    reference = _reference(rows32, head32, teacher_rows.float(), teacher32, soft, hard)
    for term in ("soft", "hard"):
        torch.testing.assert_close(fused[term], reference[term], rtol=1e-5, atol=0)
    # Gradients of the head's weight (here also the embedding) and bias, against float32 ones rounded to bf16.
    direct = fused_linear_terms(rows_bf16.requires_grad_(), student.head, teacher_rows, teacher_head, soft=soft, hard=hard)
    got = torch.autograd.grad(direct["soft"] + 2 * direct["hard"], [rows_bf16, student.head.weight, student.head.bias])
    want = torch.autograd.grad(reference["soft"] + 2 * reference["hard"], [rows32, weight, bias])
    for a, e in zip(got, want):
        assert a.dtype == torch.bfloat16
        torch.testing.assert_close(a.float(), e.to(torch.bfloat16).float(), rtol=1e-2, atol=1e-2 * float(e.abs().max()))


def test_no_grad_computes_values_only():
    student = Student(27, False, *HEADS["softcap"])
    teacher_rows, teacher_head = _teacher(28)
    soft = SoftSpec.masked_mean(_mask(29), "tvd", 1.0)
    with torch.no_grad():
        rows = student.rows()
    with torch.no_grad(), Probe(V) as probe:
        fused = fused_linear_terms(rows, student.head, teacher_rows, teacher_head, soft=soft, chunk_rows=2)
    reference = _reference(student.rows(), student.head, teacher_rows, teacher_head, soft, None)
    torch.testing.assert_close(fused["soft"], reference["soft"].detach(), rtol=1e-5, atol=0)
    assert probe.largest <= 2 * V < V * D  # two rows of logits, and no (V, d) gradient accumulator


def test_refuses_bad_inputs():
    student = Student(30, False, *HEADS["plain"])
    teacher_rows, teacher_head = _teacher(31)
    rows = student.rows()
    with pytest.raises(ValueError, match="soft or a hard"):
        fused_linear_terms(rows, student.head)
    with pytest.raises(ValueError, match="needs teacher_rows"):
        fused_linear_terms(rows, student.head, soft=SoftSpec(torch.ones(R)))
    with pytest.raises(ValueError, match="must not require grad"):
        fused_linear_terms(rows, student.head, teacher_rows, teacher_head, soft=SoftSpec(torch.ones(R, requires_grad=True)))
    with pytest.raises(ValueError, match="one entry per row"):
        fused_linear_terms(rows, student.head, hard=HardSpec(torch.zeros(R - 1, dtype=torch.long), torch.ones(R - 1)))
    with pytest.raises(ValueError, match=r"Labels must be in \[0, 60\)"):
        fused_linear_terms(rows, student.head, hard=HardSpec(torch.full((R,), V), torch.ones(R)))
    with pytest.raises(ValueError, match="Unknown soft divergence"):
        fused_linear_terms(rows, student.head, teacher_rows, teacher_head, soft=SoftSpec(torch.ones(R), "hellinger"))
    with pytest.raises(ValueError, match="width"):
        fused_linear_terms(rows[:, :-1], student.head, hard=HardSpec.mean(_labels(0)))


def test_leading_shape_is_flattened():
    student = Student(32, False, *HEADS["scale"])
    labels = _labels(33)
    flat = fused_linear_terms(student.rows(), student.head, hard=HardSpec.mean(labels))["hard"]
    batched = fused_linear_terms(student.rows().view(4, 5, D), student.head, hard=HardSpec.mean(labels.view(4, 5)))["hard"]
    torch.testing.assert_close(batched, flat, rtol=1e-6, atol=0)


# --- memory ------------------------------------------------------------------------------------------


def test_probe_sees_full_logits_of_the_unfused_path():
    """The probe can fail: the unfused computation allocates whole (R, V) logits and it says so."""
    rows, vocab = 64, 1000
    g = _gen(34)
    x = torch.randn(rows, 8, generator=g, requires_grad=True)
    head = LinearHead(torch.randn(vocab, 8, generator=g, requires_grad=True))
    t_rows, t_head = torch.randn(rows, 8, generator=g), LinearHead(torch.randn(vocab, 8, generator=g))
    labels = torch.randint(0, vocab, (rows,), generator=g)
    with Probe(vocab) as probe:
        reference = _reference(x, head, t_rows, t_head, SoftSpec.masked_mean(torch.ones(rows), "kl"), HardSpec.mean(labels))
        (reference["soft"] + reference["hard"]).backward()
    assert probe.largest >= rows * vocab
    assert probe.peak >= 4 * rows * vocab * 4


def test_fused_memory_is_bounded_by_the_chunk():
    rows, vocab, width, chunk = 512, 32000, 16, 16
    g = _gen(35)
    x = torch.randn(rows, width, generator=g, requires_grad=True)
    head = LinearHead((torch.randn(vocab, width, generator=g) * 0.1).requires_grad_())
    t_rows, t_head = torch.randn(rows, 24, generator=g), LinearHead(torch.randn(vocab, 24, generator=g) * 0.1)
    soft = SoftSpec.masked_mean(torch.ones(rows), "kl", 2.0)
    hard = HardSpec.mean(torch.randint(0, vocab, (rows,), generator=g))
    with Probe(vocab) as probe:
        fused = fused_linear_terms(x, head, t_rows, t_head, soft=soft, hard=hard, chunk_rows=chunk)
        (fused["soft"] + fused["hard"]).backward()
    assert probe.projected_rows == 2 * rows and probe.largest_projection == chunk
    assert probe.largest <= max(chunk * vocab, vocab * width)
    # Two (V, d) + (R, d) accumulator sets (backward scales them in place: .grad is one of them), and a
    # handful of chunk-sized buffers (the divergence's temporaries): measured 2 + 6 buffers of 2 MB.
    bound = 2 * (vocab * width + rows * width + vocab) * 4 + 7 * chunk * vocab * 4
    assert probe.peak <= bound, (probe.peak, bound)
    assert probe.peak < rows * vocab * 4 / 3  # a third of ONE float32 (R, V) logits tensor

    x.grad = head.weight.grad = None
    with Probe(vocab) as unfused:
        reference = _reference(x, head, t_rows, t_head, soft, hard)
        (reference["soft"] + reference["hard"]).backward()
    assert probe.peak * 10 < unfused.peak, (probe.peak, unfused.peak)


def test_default_chunk_keeps_chunk_logits_bounded(monkeypatch):
    assert [default_chunk_rows(vocab) for vocab in (30522, 32000, 49152, 151936, 262144, 400000, 10**7)] == [137, 131, 85, 55, 32, 20, 1]
    for vocab in (30522, 32000, 49152, 65536):
        assert default_chunk_rows(vocab) * vocab * 4 <= 16 * 2**20  # 16 MiB of float32 logits a chunk
    for vocab in (131072, 151936, 262144, 400000):  # more rows than 16 MiB holds, never more than 32 MiB
        assert default_chunk_rows(vocab) * vocab * 4 <= 32 * 2**20
    monkeypatch.setattr(fused_linear, "CHUNK_ELEMENTS", 7 * V)  # seven rows a chunk, a short last chunk
    monkeypatch.setattr(fused_linear, "MIN_CHUNK_ROWS", 1)
    student = Student(36, False, *HEADS["plain"])
    labels = _labels(37)
    with Probe(V) as probe:
        fused = fused_linear_terms(student.rows(), student.head, hard=HardSpec.mean(labels))
    assert probe.largest_projection == 7 and probe.projected_rows == int((labels != -100).sum())
    expected = F.cross_entropy(student.head.project(student.rows()), labels)
    torch.testing.assert_close(fused["hard"], expected, rtol=1e-5, atol=0)


# --- LinearHead.of -----------------------------------------------------------------------------------

TINY = dict(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
            num_key_value_heads=1, max_position_embeddings=32, pad_token_id=0, bos_token_id=1, eos_token_id=2)


def _tiny(family: str):
    import transformers as tf

    configs = {
        "llama": lambda: tf.LlamaForCausalLM(tf.LlamaConfig(**TINY)),
        "mistral": lambda: tf.MistralForCausalLM(tf.MistralConfig(**TINY)),
        "qwen2": lambda: tf.Qwen2ForCausalLM(tf.Qwen2Config(**TINY)),
        "qwen3": lambda: tf.Qwen3ForCausalLM(tf.Qwen3Config(**TINY, head_dim=8)),
        "gemma": lambda: tf.GemmaForCausalLM(tf.GemmaConfig(**TINY, head_dim=8)),
        "gemma2": lambda: tf.Gemma2ForCausalLM(tf.Gemma2Config(**TINY, head_dim=8, final_logit_softcapping=0.5)),
        "gemma3": lambda: tf.Gemma3ForCausalLM(tf.Gemma3TextConfig(**TINY, head_dim=8, final_logit_softcapping=0.5)),
        "cohere": lambda: tf.CohereForCausalLM(tf.CohereConfig(**TINY, logit_scale=0.3)),
        "granite": lambda: tf.GraniteForCausalLM(tf.GraniteConfig(**TINY, logits_scaling=4.0)),
        "gpt2": lambda: tf.GPT2LMHeadModel(tf.GPT2Config(vocab_size=64, n_embd=16, n_layer=1, n_head=2, n_positions=32)),
        "gpt_neox": lambda: tf.GPTNeoXForCausalLM(tf.GPTNeoXConfig(**{**TINY, "num_key_value_heads": 2})),
    }
    torch.manual_seed(0)
    return configs[family]().eval()


def _rows_and_logits(model, ids):
    """The rows entering ``model``'s vocabulary projection on ``ids``, and the model's own logits."""
    captured = []
    hook = model.get_output_embeddings().register_forward_pre_hook(lambda module, args: captured.append(args[0]))
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    hook.remove()
    return captured[0], logits


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3", "cohere", "granite", "gpt2"])
def test_linear_head_of_reproduces_the_models_logits(family):
    model = _tiny(family)
    head_module = model.get_output_embeddings()
    for p in head_module.parameters():  # larger logits, so a dropped scale or cap shows
        torch.nn.init.normal_(p, std=2.0)
    rows, logits = _rows_and_logits(model, torch.randint(3, 64, (2, 7), generator=_gen(38)))
    captured = [rows]
    head = LinearHead.of(model)
    assert head.weight is head_module.weight
    if model.config.tie_word_embeddings:
        assert head.weight is model.get_input_embeddings().weight
    with torch.no_grad():
        projected = head.project(captured[0])
        plain = head_module(captured[0])
    torch.testing.assert_close(projected, logits)
    if head.softcap is not None or head.scale != 1.0:
        assert not torch.allclose(plain, logits, atol=1e-3)  # the post-transform matters here
    assert family != "gemma2" or head.softcap == 0.5
    assert family != "cohere" or head.scale == 0.3


@pytest.mark.parametrize("family", ["bert", "roberta", "xlm_roberta", "distilbert", "albert", "electra", "mpnet", "modernbert"])
def test_linear_head_of_reproduces_a_masked_lms_logits(family):
    from tests.families import make_family_model

    model = make_family_model(family, "mlm", layers=1, seed=0).eval()
    rows, logits = _rows_and_logits(model, torch.randint(5, 200, (2, 7), generator=_gen(41)))
    head = LinearHead.of(model)
    assert head.weight is model.get_output_embeddings().weight and head.bias is model.get_output_embeddings().bias is not None
    with torch.no_grad():
        torch.testing.assert_close(head.project(rows), logits)


def test_linear_head_of_refuses_an_unverified_family():
    with pytest.raises(ValueError, match="GPTNeoXForCausalLM is not a verified family"):
        LinearHead.of(_tiny("gpt_neox"))


def test_tied_head_of_a_model_gets_the_embedding_gradient():
    model = _tiny("gpt2")
    head = LinearHead.of(model)
    rows = torch.randn(R, 16, generator=_gen(39))
    labels = torch.randint(0, 64, (R,), generator=_gen(40))
    fused_linear_terms(rows, head, hard=HardSpec.mean(labels))["hard"].backward()
    assert model.get_input_embeddings().weight.grad is not None
    assert float(model.get_input_embeddings().weight.grad.abs().sum()) > 0


def test_backward_reuses_the_accumulators_unless_the_graph_is_kept():
    """The last backward scales the (V, d) accumulators in place and autograd adopts them as ``.grad``;
    ``retain_graph=True`` leaves them intact for another backward, and a second backward without it fails."""
    student = Student(41, False, *HEADS["bias"])
    teacher_rows, teacher_head = _teacher(42)
    soft, hard = SoftSpec.masked_mean(_mask(43), "kl", 2.0), HardSpec.mean(_labels(44))
    weight = student.head.weight
    rows = student.rows().detach().requires_grad_()  # a leaf: the embedding's own (V, d) gradient stays out

    def terms():
        return fused_linear_terms(rows, student.head, teacher_rows, teacher_head, soft=soft, hard=hard)

    fused = terms()
    with Probe(V) as probe:
        (2 * fused["soft"] + 3 * fused["hard"]).backward()
    assert probe.largest < V * D  # no (V, d) buffer: neither a combination nor a copy for .grad
    once = weight.grad.clone()
    reference = _reference(rows, student.head, teacher_rows, teacher_head, soft, hard)
    _close([once], torch.autograd.grad(2 * reference["soft"] + 3 * reference["hard"], [weight]))
    with pytest.raises(RuntimeError, match="second time"):
        (fused["soft"] + fused["hard"]).backward()

    weight.grad = None
    fused = terms()
    loss = 2 * fused["soft"] + 3 * fused["hard"]
    loss.backward(retain_graph=True)
    loss.backward()
    torch.testing.assert_close(weight.grad, 2 * once, rtol=1e-6, atol=0)
