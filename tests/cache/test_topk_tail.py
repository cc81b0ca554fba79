"""A causal-LM top-k teacher cache: per scored token the teacher's top-k log-probabilities, their ids and
the tail mass. With k = V a cached step equals a live one (values and gradients); with k < V it equals
the documented bucket divergence of the live teacher, with fused heads, compact rows or whole logits
alike; another temperature is a stale cache; a resumed run trains as an uninterrupted one."""

from __future__ import annotations

import json

import pytest
import torch

from lightning_kd.cache import StaleCacheError, TeacherCache
from lightning_kd.cache.layout import RecordLayout
from lightning_kd.data import CausalLMDataModule
from lightning_kd.losses.logits import soft_divergence
from lightning_kd.losses.prediction import PredictionLoss
from lightning_kd.losses.topk_teacher import TopKTeacher
from lightning_kd.methods import KD, LogitsDistil
from lightning_kd.stages import STAGES
from tests.cache import StubData, count_forwards, indexed_batches
from tests.cli_fixtures import fit_with_checkpoints, write_corpus
from tests.conftest import write_tiny_lm_tokenizer
from tests.families import make_family_model

TEMPERATURE = 2.0


def _kd(cache: TeacherCache | None, soft_loss: str = "jsd", family: str = "llama") -> KD:
    teacher = make_family_model(family, "causal", layers=3, seed=1, initializer_range=0.5)
    prediction = PredictionLoss(temperature=TEMPERATURE, soft_loss=soft_loss, hard_weight=0.7)
    return KD(teacher=teacher, student_init="teacher_first_last", student_layers=2, prediction=prediction, teacher_cache=cache).eval()


def _step(method, batch):
    terms = method.compute_losses(batch)
    terms["loss"].backward()
    grads = [p.grad.clone() for _, p in method.trainable_named_parameters() if p.grad is not None]
    method.zero_grad()
    return {k: v.detach() for k, v in terms.items()}, grads


def _filled(method, tmp_path, k):
    batches = indexed_batches("causal")
    method.teacher_cache = TeacherCache(path=str(tmp_path / f"k{k}"), top_k=k, dtype="float32", verify_batches=1)
    data = StubData(batches)
    method.teacher_cache.fill(method, data)
    method.teacher_cache.open(method, data)
    return batches


@pytest.mark.parametrize("paths", ["fused", "compact", "whole"])
def test_the_whole_vocabulary_cached_is_the_live_step(paths, tmp_path):
    method = _kd(None)
    method.compact_heads = paths != "whole"
    if paths == "compact":
        method.fused_heads = lambda: False  # compact logits with the tail cache (as a family without a verified head)
    batches = _filled(method, tmp_path, method.teachers[0].config.vocab_size - 1)  # a tail of one id
    with count_forwards(method.teachers[0]) as calls:
        cached = [_step(method, batch) for batch in batches]
    assert calls[0] == 1, "only the sample check runs the teacher"
    method.teacher_cache = None
    for (terms, grads), batch in zip(cached, batches):
        live_terms, live_grads = _step(method, batch)
        for name in live_terms:
            torch.testing.assert_close(terms[name], live_terms[name], rtol=1e-5, atol=1e-6, msg=name)
        for ours, theirs in zip(grads, live_grads, strict=True):
            torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("soft_loss", ["kl", "reverse_kl", "jsd", "skew_kl", "tvd", "argmax_ce"])
def test_a_small_k_is_the_bucket_divergence_of_the_live_teacher(soft_loss, tmp_path):
    method = _kd(None, soft_loss)
    k = 5
    batches = _filled(method, tmp_path, k)
    assert method.fused_heads(), "a tail cache serves the fused terms"
    for batch in batches:
        soft = method.compute_losses(batch)["soft"]
        prepared = STAGES["causal_lm"].prepare(batch)
        scored = prepared["labels"].ne(-100)
        with torch.no_grad():
            inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "use_cache": False}
            teacher, student = method.teachers[0](**inputs).logits[scored], method.student(**inputs).logits[scored]
        want = soft_divergence(student, TopKTeacher.of_logits(teacher, k, TEMPERATURE), soft_loss, TEMPERATURE, jsd_beta=0.5, skew_alpha=0.1)
        torch.testing.assert_close(soft, want, rtol=1e-5, atol=1e-6)
        if soft_loss == "argmax_ce":  # exact at any k: the top class is a kept id
            torch.testing.assert_close(soft, soft_divergence(student, teacher, soft_loss, TEMPERATURE), rtol=1e-5, atol=1e-6)


def test_the_cache_stores_top_k_log_probabilities_ids_and_the_tail_of_each_scored_token(tmp_path):
    method = _kd(None, "kl")
    batches = _filled(method, tmp_path, 8)
    manifest = json.loads((tmp_path / "k8" / "teacher0" / "manifest.json").read_text())
    layout = RecordLayout.from_description(manifest["layout"])
    assert manifest["key"]["tail_temperature"] == TEMPERATURE and layout.tail_temperature == TEMPERATURE
    assert [f.name for f in layout.row_fields] == ["row_token", "topk_values", "topk_indices", "tail"]
    assert layout.row_dtype.itemsize == 4 + 8 * 4 + 8 * 4 + 4
    rows = sum(p.stat().st_size for p in (tmp_path / "k8" / "teacher0").glob("rank0/*.rows.bin")) // layout.row_dtype.itemsize
    assert rows == sum(int(STAGES["causal_lm"].prepare(b)["labels"].ne(-100).sum()) for b in batches)


def test_another_temperature_is_a_stale_cache(tmp_path):
    method = _kd(None, "kl")
    batches = _filled(method, tmp_path, 8)
    method.teacher_cache.close()
    method.prediction.temperature = 1.0
    cache = TeacherCache(path=str(tmp_path / "k8"), top_k=8, dtype="float32", verify_batches=0)
    method.teacher_cache = cache
    cache.open(method, StubData(batches))
    with pytest.raises(StaleCacheError, match="tail_temperature"):
        method.compute_losses(batches[0])


def test_a_method_whose_terms_read_teacher_logits_gets_them_renormalised(tmp_path):
    teacher = make_family_model("llama", "causal", layers=3, seed=1)
    assert LogitsDistil(teacher=teacher, student_init="teacher_first_last", student_layers=2).cache_tail_temperature() == 15.0
    method = LogitsDistil(teacher=teacher, student_init="teacher_first_last", student_layers=2, top_n=20).eval()  # whole rows
    assert method.cache_tail_temperature() is None
    batches = _filled(method, tmp_path, 8)
    layout = json.loads((tmp_path / "k8" / "teacher0" / "manifest.json").read_text())["layout"]
    assert layout["tail_temperature"] is None and "tail" not in [name for name, *_ in layout["fields"]]
    assert torch.isfinite(method.compute_losses(batches[0])["loss"])


# ---------------------------------------------------------------------------- resume


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    root = tmp_path_factory.mktemp("topk_resume")
    make_family_model("llama", "causal", layers=3, seed=1, initializer_range=0.5).save_pretrained(root / "teacher")
    write_tiny_lm_tokenizer(root / "teacher")
    return {"teacher": root / "teacher", "corpus": write_corpus(root)}


def _fit(lm, root, cache, *, stop_at=None, ckpt_path=None):
    data = CausalLMDataModule(tokenizer=str(lm["teacher"]), train_files=[str(lm["corpus"])], block_size=16, batch_size=4,
                              validation_fraction=0.1)
    method = KD(teacher=str(lm["teacher"]), student_init="teacher_first_last", student_layers=2,
                prediction=PredictionLoss(temperature=TEMPERATURE, hard_weight=0.5),
                teacher_cache=TeacherCache(path=str(cache), top_k=8, verify_batches=1))
    trainer = fit_with_checkpoints(method, data, root, stop_at=stop_at, ckpt_path=ckpt_path)
    return method, trainer


def test_a_run_resumed_with_the_cache_ends_where_an_uninterrupted_one_does(lm, tmp_path):
    whole, _ = _fit(lm, tmp_path / "whole", tmp_path / "cache_whole")
    _fit(lm, tmp_path / "first", tmp_path / "cache", stop_at=3)
    checkpoint = next((tmp_path / "first" / "ckpt").glob("*step=3*.ckpt"))
    resumed, trainer = _fit(lm, tmp_path / "resumed", tmp_path / "cache", ckpt_path=str(checkpoint))
    assert trainer.global_step == 6
    for key, value in whole.student.state_dict().items():
        torch.testing.assert_close(resumed.student.state_dict()[key], value, rtol=1e-4, atol=1e-6, msg=key)
