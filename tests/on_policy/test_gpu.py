"""On-policy generation on a GPU (skipped without CUDA): the CUDA generator is seeded per step and restored,
sampling under bf16 autocast is deterministic, and a fit with bf16-mixed precision trains on student samples.

The CPU suite covers the rest (DDP over gloo, ZeRO-3 with synced generation over two CPU processes); NCCL
multi-GPU runs follow the same code path (``generate(synced_gpus=True)`` when the writer is partitioned)."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch

from lightning_kd.on_policy import Generation, SpecialTokens, continue_prompts, prompts_of
from tests.on_policy.helpers import EOS, PAD, Recorder, data, method, models, prompt_batch, tokenizer, write_pairs

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def test_cuda_sampling_is_seeded_and_leaves_the_cuda_generator_alone():
    device = torch.device("cuda")
    _, student = models()
    student.to(device)
    prompts = prompts_of(prompt_batch(), PAD)
    state = torch.cuda.get_rng_state(device)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        first = continue_prompts(student, prompts, Generation(max_new_tokens=8), SpecialTokens((EOS,), PAD), seed=3, device=device)
        again = continue_prompts(student, prompts, Generation(max_new_tokens=8), SpecialTokens((EOS,), PAD), seed=3, device=device)
    assert torch.equal(first, again) and first.device.type == "cuda"
    assert torch.equal(torch.cuda.get_rng_state(device), state)


def test_a_bf16_fit_on_a_gpu_trains_on_student_samples(tmp_path):
    tok, pairs = tokenizer(tmp_path), write_pairs(tmp_path)
    kd = method(tok, on_policy=1.0, generation=Generation(max_new_tokens=4))
    recorder = Recorder(kd)
    trainer = pl.Trainer(accelerator="gpu", devices=1, precision="bf16-mixed", max_steps=2, limit_val_batches=0, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(kd, datamodule=data(tok, pairs))
    assert len(recorder.written("student")) == 2
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
