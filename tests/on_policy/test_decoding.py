"""Seeded ``generate`` calls without side effects: the same seed samples the same tokens, another seed
others; the global RNG, every submodule's train/eval mode and the checkpoint's generation config are
as they were; greedy decoding of a left-padded batch is each prompt's own greedy continuation; the
special tokens come from the tokenizer."""

from __future__ import annotations

import pytest
import torch
from transformers import GenerationConfig

from lightning_kd.on_policy import Generation, SpecialTokens, continue_prompts, prompts_of, special_tokens
from lightning_kd.on_policy.settings import SequenceKD
from tests.on_policy.helpers import EOS, PAD, models, prompt_batch, tokenizer

TOKENS = SpecialTokens((EOS,), PAD)
CPU = torch.device("cpu")


def _sample(model, seed: int, **settings) -> torch.Tensor:
    generation = Generation(max_new_tokens=6, **settings)
    return continue_prompts(model, prompts_of(prompt_batch(), PAD), generation, TOKENS, seed=seed, device=CPU)


def test_sampling_is_a_function_of_the_seed_and_leaves_the_global_rng_alone():
    _, student = models()
    student.train()
    student.model.layers[0].eval()  # a submodule with a mode of its own gets it back
    state = torch.get_rng_state()
    first, again, other = _sample(student, 5), _sample(student, 5), _sample(student, 6)
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert torch.equal(torch.get_rng_state(), state)
    assert student.training and not student.model.layers[0].training and student.model.layers[1].training
    assert not torch.equal(_sample(student, 5, top_k=3), first) or not torch.equal(_sample(student, 5, temperature=0.3), first)


def test_greedy_decoding_of_a_padded_batch_is_each_prompts_own_and_ignores_the_checkpoints_config():
    _, student = models()
    student.eval()
    student.generation_config = GenerationConfig(repetition_penalty=5.0, do_sample=True, temperature=0.1, eos_token_id=11)
    batched = _sample(student, 0, do_sample=False)
    prompts = prompts_of(prompt_batch(), PAD)
    for row in range(len(prompts)):
        ids = prompts.prompt(row)[None]
        with torch.no_grad():
            alone = student.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=GenerationConfig(
                do_sample=False, max_new_tokens=6, eos_token_id=EOS, pad_token_id=PAD, repetition_penalty=1.0))
        produced = alone[0, ids.shape[1]:]
        assert torch.equal(batched[row, : produced.numel()], produced)
    assert student.generation_config.repetition_penalty == 5.0  # set aside for the call only


def test_special_tokens_come_from_the_tokenizer_else_the_generation_config(tmp_path):
    _, student = models()
    assert special_tokens(str(tokenizer(tmp_path)), student) == SpecialTokens((EOS,), PAD)
    student.generation_config = GenerationConfig(eos_token_id=[9, 10], pad_token_id=None)
    assert special_tokens(None, student) == SpecialTokens((9, 10), 9)
    student.generation_config = GenerationConfig()
    with pytest.raises(ValueError, match="EOS"):
        special_tokens(None, student)


def test_decoding_settings_are_checked():
    with pytest.raises(ValueError, match="do_sample"):
        Generation(do_sample=False, temperature=0.7)
    with pytest.raises(ValueError, match="top_p"):
        Generation(top_p=0.0)
    with pytest.raises(ValueError, match="max_new_tokens"):
        Generation(max_new_tokens=0)
    with pytest.raises(ValueError, match="probability"):
        SequenceKD(probability=0.0)
    with pytest.raises(ValueError, match="sequence_kd.top_k"):
        SequenceKD(top_k=4)  # greedy by default
    with pytest.raises(ValueError, match="path"):
        SequenceKD(cache=False, path="somewhere")
    assert SequenceKD(do_sample=True, top_k=4).generation == Generation(do_sample=True, top_k=4)
