"""Fused heads in the causal-LM stage: the rows entering the decoders' LM heads are kept instead of their
logits, and the soft and next-token terms project them chunk by chunk. Values and gradients equal the
path with logits; the step holds no (rows × vocabulary) tensor; whatever reads logits keeps them."""

from __future__ import annotations

import pytest
import torch

from lightning_kd.core.features import FeatureRequest, capture
from lightning_kd.core.fused_head import model_loss
from lightning_kd.losses import fused_linear
from lightning_kd.losses.prediction import PredictionLoss
from lightning_kd.methods import DIITO, KD, DistilBERT, LogitsDistil, MixBaseline, StudentOnly, VocabDistil
from lightning_kd.methods.multi_teacher import MTBERT
from lightning_kd.stages import STAGES
from tests.conftest import make_batch
from tests.families import DECODERS, make_family_model


def _kd(family: str, **knobs) -> KD:
    teacher = make_family_model(family, "causal", layers=4, seed=1, initializer_range=0.5)
    return KD(teacher=teacher, student_init="teacher_first_last", student_layers=2, **knobs).eval()


def _step(method, batch) -> tuple[dict, list]:
    terms = method.compute_losses(batch)
    terms["loss"].backward()
    grads = [p.grad.clone() for _, p in method.trainable_named_parameters() if p.grad is not None]
    method.zero_grad()
    return {k: v.detach() for k, v in terms.items()}, grads


@pytest.mark.parametrize("family", sorted(DECODERS))
@pytest.mark.parametrize("kind", ["kl", "reverse_kl", "jsd", "tvd", "argmax_ce"])
def test_fused_heads_give_the_values_and_gradients_of_logits(family, kind):
    method = _kd(family, prediction=PredictionLoss(soft_loss=kind, temperature=2.0, hard_weight=0.7, soft_weight=1.3))
    batch = make_batch("causal")
    assert method.fused_heads()
    fused = _step(method, batch)
    method.compact_heads = False  # every logit row, from the models' own heads
    assert not method.fused_heads()
    plain = _step(method, batch)
    for name in plain[0]:
        torch.testing.assert_close(fused[0][name], plain[0][name], rtol=1e-5, atol=1e-6)
    for ours, theirs in zip(fused[1], plain[1], strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-6)


def test_captured_features_hold_head_rows_not_logits():
    student = make_family_model("llama", "causal", layers=2, seed=2)
    batch = STAGES["causal_lm"].prepare(make_batch("causal"))
    features = capture(student, batch, FeatureRequest(logit_rows="labelled", head_rows=True), with_labels=True)
    rows = batch["labels"].ne(-100)
    assert features.logits is None and features.loss is None
    assert features.head_rows.rows.shape == (int(rows.sum()), student.config.hidden_size)
    with torch.no_grad():
        own = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
    torch.testing.assert_close(features.head_rows.head.project(features.head_rows.rows), own[rows], rtol=1e-5, atol=1e-6)
    expected = torch.nn.functional.cross_entropy(own[rows], batch["labels"][rows])
    torch.testing.assert_close(model_loss(features), expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(RuntimeError, match="head rows|not logits"):
        features.logits_at(rows)


def test_no_step_tensor_is_rows_by_vocabulary(monkeypatch):
    """With a vocabulary far wider than the chunk, no tensor of the step has rows × vocabulary elements."""
    monkeypatch.setattr(fused_linear, "CHUNK_ELEMENTS", 2 * 4000)  # two rows a chunk
    monkeypatch.setattr(fused_linear, "MIN_CHUNK_ROWS", 1)
    teacher = make_family_model("qwen2", "causal", layers=2, seed=1, vocab_size=4000)
    method = KD(teacher=teacher, student_init="teacher_first", student_layers=1).eval()
    batch = make_batch("causal", batch=8, length=24, vocab_size=4000)
    scored = int(STAGES["causal_lm"].prepare(batch)["labels"].ne(-100).sum())
    largest = []

    class Watch(torch.utils._python_dispatch.TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for tensor in torch.utils._pytree.tree_leaves(out):
                if isinstance(tensor, torch.Tensor):
                    largest.append(tensor.numel())
            return out

    with Watch():
        method.compute_losses(batch)["loss"].backward()
    assert max(largest) < scored * 4000 / 2, f"a step tensor of {max(largest)} elements; rows × V = {scored * 4000}"


def test_whatever_reads_logits_keeps_them():
    teacher = make_family_model("llama", "causal", layers=4, seed=1)
    vocabulary = LogitsDistil(teacher=teacher, student_init="teacher_uniform", student_layers=2, top_n=20)  # reads logits itself
    mixed = MixBaseline(teacher=teacher, student_init="teacher_uniform", student_layers=2, methods=["TinyBERT", "MiniLM"])
    per_example = KD(teachers=[teacher, make_family_model("llama", "causal", layers=4, seed=4)], multi_teacher=MTBERT(),
                     student_init="teacher_uniform", student_layers=2)
    mse = _kd("llama", prediction=PredictionLoss(soft_loss="mse"))
    assert not any(m.fused_heads() for m in (vocabulary, mixed, per_example, mse))
    assert torch.isfinite(vocabulary.compute_losses(make_batch("causal"))["loss"])
    assert torch.isfinite(per_example.compute_losses(make_batch("causal"))["loss"])
    alone = StudentOnly(student=make_family_model("gpt2", "causal", layers=2, seed=2)).eval()
    assert alone.fused_heads()  # the next-token loss from the rows alone
    batch = make_batch("causal")
    with torch.no_grad():
        own = alone.student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss
    torch.testing.assert_close(alone.compute_losses(batch)["hard"], own, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------- masked LMs

_MLM_METHODS = {
    "DistilBERT": lambda teacher: DistilBERT(teacher=teacher, student_init="teacher_first_last", student_layers=2),
    "DIITO": lambda teacher: DIITO(teacher=teacher, student_init="teacher_first_last", student_layers=2, alignment="late"),
    "LogitsDistil": lambda teacher: LogitsDistil(teacher=teacher, student_init="teacher_first_last", student_layers=2),
    "LogitsDistil (all positions, gkd)": lambda teacher: LogitsDistil(
        teacher=teacher, student_init="teacher_first_last", student_layers=2, positions="all", reduction="gkd"),
    "KD": lambda teacher: KD(teacher=teacher, student_init="teacher_first_last", student_layers=2),
}


@pytest.mark.parametrize("family", ["bert", "roberta", "distilbert", "albert", "electra", "modernbert"])
@pytest.mark.parametrize("name", sorted(_MLM_METHODS))
def test_masked_lm_heads_fuse_after_their_transform(family, name):
    """An MLM head's vocabulary projection reads the transform's output at the compact rows: the methods that
    read every token's logits (DistilBERT's soft term, DIITO's two passes, LogitsDistil's KL) keep those rows."""
    teacher = make_family_model(family, "mlm", layers=4, seed=1, initializer_range=0.5)
    method = _MLM_METHODS[name](teacher).eval()
    assert method.fused_heads()
    batch = make_batch("mlm")
    torch.manual_seed(0)
    fused = _step(method, batch)
    method.compact_heads = False
    torch.manual_seed(0)
    plain = _step(method, batch)
    assert fused[0].keys() == plain[0].keys()
    for name_ in plain[0]:
        torch.testing.assert_close(fused[0][name_], plain[0][name_], rtol=1e-5, atol=1e-6, msg=name_)
    for ours, theirs in zip(fused[1], plain[1], strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-6)


def test_masked_lm_features_hold_the_transforms_output_rows():
    student = make_family_model("bert", "mlm", layers=2, seed=2).eval()
    batch = make_batch("mlm")
    features = capture(student, batch, FeatureRequest(logit_rows="tokens", head_rows=True))
    rows = batch["attention_mask"].bool()
    assert features.logits is None and features.head_rows.rows.shape == (int(rows.sum()), student.config.hidden_size)
    with torch.no_grad():
        own = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    torch.testing.assert_close(features.head_rows.head.project(features.head_rows.rows), own[rows], rtol=1e-5, atol=1e-6)


def test_logits_distil_variants_that_read_whole_rows_keep_logits():
    teacher = make_family_model("bert", "mlm", layers=4, seed=1)
    built = {
        "mse": LogitsDistil(teacher=teacher, student_init="teacher_first_last", student_layers=2, vocabulary_loss="mse"),
        "top_n": LogitsDistil(teacher=teacher, student_init="teacher_first_last", student_layers=2, top_n=20),
        "VocabDistil": VocabDistil(teacher=teacher, student_init="teacher_first_last", student_layers=2, compressed_size=0.5),
    }
    for name, method in built.items():
        assert method.word_prediction is None and not method.fused_heads(), name
