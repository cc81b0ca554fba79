"""Generated batches in real fits on tiny Llamas and prompt/response data: λ = 1 generates on every step; a
run resumed mid-epoch chooses and samples exactly the tokens of the uninterrupted run and ends with its
weights; sequence-level KD trains on the teacher's exact generations and a second run reads them from the
response cache without decoding; data without prompts, and a cache written for other settings, are refused."""

from __future__ import annotations

import json

import pytest
import pytorch_lightning as pl
import torch
from transformers import GenerationConfig

from lightning_kd.fault import PeriodicCheckpoint
from lightning_kd.on_policy import Generation, SequenceKD, StaleResponsesError
from lightning_kd.on_policy.seeds import chosen
from tests.cli_fixtures import write_corpus
from tests.on_policy.helpers import EOS, PAD, Recorder, data, method, tokenizer, write_pairs


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("on_policy_training")
    return {"tokenizer": tokenizer(root), "pairs": write_pairs(root)}


def _trainer(root, steps: int, callbacks=()) -> pl.Trainer:
    return pl.Trainer(accelerator="cpu", devices=1, max_steps=steps, limit_val_batches=0, num_sanity_val_steps=0, logger=False,
                      enable_checkpointing=bool(callbacks), callbacks=list(callbacks), enable_progress_bar=False,
                      enable_model_summary=False, default_root_dir=root)


def _weights(module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.student.state_dict().items()}


def test_lambda_one_generates_on_every_step(assets, tmp_path):
    kd = method(assets["tokenizer"], on_policy=1.0, generation=Generation(max_new_tokens=4))
    recorder = Recorder(kd)
    trainer = _trainer(tmp_path, steps=3)
    trainer.fit(kd, datamodule=data(assets["tokenizer"], assets["pairs"]))
    assert [step for step, _, _ in recorder.written("student")] == [0, 1, 2] and len(recorder.batches) == 3
    assert kd.generation_seconds > 0 and "train/generation_seconds" in trainer.callback_metrics


def test_a_mid_epoch_resume_samples_the_same_tokens_and_reaches_the_same_weights(assets, tmp_path, monkeypatch):
    # A seed whose draws make steps 3-5 (after the resume point) a mix of on-policy and data batches.
    seed = next(s for s in range(100) if len({chosen(s, "on_policy", 0.5, step, step) for step in range(3, 6)}) == 2)
    runs = {}
    for name, steps, resume in (("straight", 6, None), ("resumed", 6, tmp_path / "straight" / "checkpoints" / "epoch=0-step=3.ckpt")):
        pl.seed_everything(seed)
        kd = method(assets["tokenizer"], on_policy=0.5, generation=Generation(max_new_tokens=4, top_k=20))
        recorder = Recorder(kd)
        _trainer(tmp_path / name, steps, [PeriodicCheckpoint(every_n_train_steps=3)]).fit(
            kd, datamodule=data(assets["tokenizer"], assets["pairs"]), ckpt_path=resume)
        runs[name] = (recorder, _weights(kd))
    straight, resumed = runs["straight"][0].batches, runs["resumed"][0].batches
    assert [step for step, _, _ in resumed] == [3, 4, 5]
    assert {entry[2].get("written_by") for entry in resumed} == {"student", None}
    for (_, _, ours), (_, _, theirs) in zip(straight[3:], resumed):
        assert ours.keys() == theirs.keys()
        assert all(torch.equal(ours[k], theirs[k]) for k in ours if isinstance(ours[k], torch.Tensor))
    for key, value in runs["straight"][1].items():
        torch.testing.assert_close(runs["resumed"][1][key], value, rtol=1e-5, atol=1e-6)
    # Without seed_everything the run seed is drawn once and travels in the checkpoint.
    checkpoint = torch.load(tmp_path / "straight" / "checkpoints" / "epoch=0-step=3.ckpt", weights_only=False)
    assert checkpoint["lightning_kd"]["generated_batches"] == {"run_seed": seed}
    monkeypatch.delenv("PL_GLOBAL_SEED", raising=False)
    kd = method(assets["tokenizer"], on_policy=0.5)
    kd.generated_batches.run_seed.bind()
    kd.on_load_checkpoint(checkpoint)
    assert kd.generated_batches.run_seed.value == seed


def _teacher_greedy(teacher, prompt: torch.Tensor, max_new_tokens: int) -> list[int]:
    config = GenerationConfig(do_sample=False, max_new_tokens=max_new_tokens, eos_token_id=EOS, pad_token_id=PAD)
    with torch.no_grad():
        out = teacher.generate(input_ids=prompt[None], attention_mask=torch.ones_like(prompt)[None], generation_config=config)[0, prompt.numel():]
    ends = (out == EOS).nonzero()
    return out[: int(ends[0]) + 1].tolist() if len(ends) else out.tolist()


def test_sequence_level_kd_trains_on_the_teachers_exact_generations_and_reuses_them(assets, tmp_path):
    cache = tmp_path / "responses"
    settings = SequenceKD(path=str(cache), max_new_tokens=5)
    first = method(assets["tokenizer"], hard_weight=1.0, sequence_kd=settings)
    recorder = Recorder(first)
    pl.seed_everything(0)
    _trainer(tmp_path / "first", steps=3).fit(first, datamodule=data(assets["tokenizer"], assets["pairs"]))
    written = recorder.written("teacher")
    assert len(written) == 3
    teacher = first.teachers[0]
    for _, _, batch in written:
        for row in range(batch["input_ids"].shape[0]):
            scored = batch["labels"][row].ne(-100).nonzero().flatten()
            prompt = batch["input_ids"][row, : int(scored[0])]
            response = batch["input_ids"][row, scored].tolist()
            assert response == _teacher_greedy(teacher, prompt, 5)  # the hard and soft terms read the teacher's own tokens
    stored = [json.loads(part.read_text())["rows"] for part in sorted(cache.glob("rank0/part-*.json"))]
    assert sum(len(rows) for rows in stored) == 12 and (cache / "manifest.json").is_file()

    second = method(assets["tokenizer"], hard_weight=1.0, sequence_kd=settings)
    calls = []
    second.teachers[0].generate = lambda *args, **kwargs: calls.append(1)  # any decoding would fail the test
    again = Recorder(second)
    pl.seed_everything(0)
    _trainer(tmp_path / "second", steps=3).fit(second, datamodule=data(assets["tokenizer"], assets["pairs"]))
    assert not calls
    for (_, _, ours), (_, _, theirs) in zip(written, again.written("teacher")):
        assert torch.equal(ours["input_ids"], theirs["input_ids"]) and torch.equal(ours["labels"], theirs["labels"])

    stale = method(assets["tokenizer"], sequence_kd=SequenceKD(path=str(cache), max_new_tokens=6))
    with pytest.raises(StaleResponsesError, match="max_new_tokens"):
        _trainer(tmp_path / "stale", steps=1).fit(stale, datamodule=data(assets["tokenizer"], assets["pairs"]))


def test_live_sequence_level_kd_writes_a_share_of_the_batches(assets, tmp_path):
    kd = method(assets["tokenizer"], hard_weight=1.0, sequence_kd=SequenceKD(cache=False, probability=0.5, do_sample=True, max_new_tokens=3))
    recorder = Recorder(kd)
    pl.seed_everything(1)
    _trainer(tmp_path, steps=4).fit(kd, datamodule=data(assets["tokenizer"], assets["pairs"]))
    writers = [batch.get("written_by") for _, _, batch in recorder.batches]
    assert writers == ["teacher" if chosen(1, "sequence_kd", 0.5, step, step) else None for step in range(4)]
    assert not (tmp_path / "teacher_responses").exists()


def test_data_without_prompts_is_refused_before_training(assets, tmp_path):
    from lightning_kd.data import CausalLMDataModule

    corpus = write_corpus(tmp_path)
    text = CausalLMDataModule(tokenizer=str(assets["tokenizer"]), train_files=[str(corpus)], block_size=16, batch_size=4)
    kd = method(assets["tokenizer"], on_policy=0.5)
    with pytest.raises(ValueError, match="packed plain text"):
        _trainer(tmp_path, steps=1).fit(kd, datamodule=text)
    long_prompts = method(assets["tokenizer"], on_policy=0.5, generation=Generation(max_new_tokens=60))
    with pytest.raises(ValueError, match="plus 60 new tokens is longer than the student reads"):
        _trainer(tmp_path, steps=1).fit(long_prompts, datamodule=data(assets["tokenizer"], assets["pairs"]))
