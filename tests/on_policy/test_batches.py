"""Prompts and generated batches, position by position: left-padded prompts for ``generate``; the written
batch in Hugging Face's convention (labels on the generated tokens up to and including the first EOS,
-100 on the prompt and after it); the stage's shift then pairs the prompt's last logits with the first
generated token."""

from __future__ import annotations

import pytest
import torch

from lightning_kd.on_policy import continuation_lengths, prompts_of, student_written, written_batch
from lightning_kd.stages import STAGES
from tests.on_policy.helpers import EOS, PAD, prompt_batch


def test_prompts_are_the_tokens_before_the_first_scored_one_moved_to_the_right_edge():
    batch = prompt_batch()
    prompts = prompts_of(batch, PAD)
    assert prompts.lengths.tolist() == [4, 6, 3]
    ids = batch["input_ids"]
    assert torch.equal(prompts.ids[0], torch.cat([torch.full((2,), PAD), ids[0, :4]]))
    assert torch.equal(prompts.ids[1], ids[1, :6])
    assert torch.equal(prompts.ids[2], torch.cat([torch.full((3,), PAD), ids[2, :3]]))
    assert prompts.mask.tolist() == [[0, 0, 1, 1, 1, 1], [1] * 6, [0, 0, 0, 1, 1, 1]]
    chosen = prompts.select(torch.tensor([2, 0]))  # the padding is trimmed to the longest selected prompt
    assert chosen.ids.shape == (2, 4) and torch.equal(chosen.prompt(0), ids[2, :3]) and torch.equal(chosen.prompt(1), ids[0, :4])


def test_prompts_are_refused_where_a_batch_has_none():
    batch = prompt_batch()
    packed = {**batch, "labels": batch["input_ids"].clone()}  # plain text: every token scored
    with pytest.raises(ValueError, match="no prompt to continue"):
        prompts_of(packed, PAD)
    unscored = {**batch, "labels": torch.full_like(batch["labels"], -100)}
    with pytest.raises(ValueError, match="no scored"):
        prompts_of(unscored, PAD)
    with pytest.raises(ValueError, match="attention_mask"):
        prompts_of({"input_ids": batch["input_ids"], "labels": batch["labels"]}, PAD)
    with pytest.raises(ValueError, match="prepared"):
        prompts_of(STAGES["causal_lm"].prepare(batch), PAD)


def test_a_response_ends_at_its_first_eos_which_is_kept():
    continuations = torch.tensor([[9, 9, EOS, 11, EOS], [8, 8, 8, 8, 8], [EOS, PAD, PAD, PAD, PAD]])
    assert continuation_lengths(continuations, [EOS]).tolist() == [3, 5, 1]
    assert continuation_lengths(continuations, [EOS, 11]).tolist() == [3, 5, 1]
    assert continuation_lengths(torch.tensor([[9, 11, EOS]]), [EOS, 11]).tolist() == [2]


def test_the_written_batch_position_by_position():
    batch = prompt_batch()
    prompts = prompts_of(batch, PAD)
    continuations = torch.tensor([[21, 22, EOS, PAD], [31, 32, 33, 34], [41, EOS, PAD, PAD]])
    written = written_batch(prompts, continuations, continuation_lengths(continuations, [EOS]), PAD, writer="student",
                            extra={"example_index": batch["example_index"]})
    ids, mask, labels = written["input_ids"], written["attention_mask"], written["labels"]
    prompt = batch["input_ids"]
    assert ids.shape == (3, 10)  # the longest row: a 6-token prompt and 4 generated tokens (no EOS)
    assert ids[0, :7].tolist() == [*prompt[0, :4].tolist(), 21, 22, EOS] and mask[0].tolist() == [1] * 7 + [0] * 3
    assert labels[0].tolist() == [-100] * 4 + [21, 22, EOS] + [-100] * 3
    assert labels[1].tolist() == [-100] * 6 + [31, 32, 33, 34] and mask[1].sum() == 10
    assert ids[2, :5].tolist() == [*prompt[2, :3].tolist(), 41, EOS] and labels[2].tolist() == [-100] * 3 + [41, EOS] + [-100] * 5
    assert bool((ids[~mask.bool()] == PAD).all())
    assert student_written(written) and torch.equal(written["example_index"], batch["example_index"])
    # The stage's shift: the logits at the prompt's last token score the first generated token, the EOS is
    # scored from the token before it, and nothing after the EOS is.
    shifted = STAGES["causal_lm"].prepare(written)["labels"]
    assert shifted[0].tolist() == [-100] * 3 + [21, 22, EOS] + [-100] * 4
    assert shifted[2].tolist() == [-100] * 2 + [41, EOS] + [-100] * 6


def test_what_follows_the_eos_and_the_datas_responses_never_reach_the_batch():
    batch = prompt_batch()
    continuations = torch.tensor([[21, EOS, PAD, PAD], [31, 32, 33, EOS], [41, 42, EOS, PAD]])
    after_eos = continuations.clone()
    after_eos[0, 2:] = torch.tensor([77, 78])
    after_eos[2, 3] = 99
    other_responses = {**batch, "input_ids": batch["input_ids"].clone()}
    other_responses["input_ids"][0, 4:] = 123  # the data's response tokens of row 0
    written = [
        written_batch(prompts_of(b, PAD), c, continuation_lengths(c, [EOS]), PAD, writer="student")
        for b, c in ((batch, continuations), (batch, after_eos), (other_responses, continuations))
    ]
    for other in written[1:]:
        for key in ("input_ids", "attention_mask", "labels"):
            assert torch.equal(other[key], written[0][key])
