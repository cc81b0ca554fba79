"""Held-out blocks for a tokenizer whose template opens every text with BOS: BOS in front, the same tokens scored."""

from __future__ import annotations

import torch
from tokenizers import processors

from lightning_kd.reports.block_bos import opened_with_bos
from lightning_kd.reports.causal_lm import perplexity
from tests.cross_tokenizer.tokenizers import metaspace_bpe, wordpiece_and_bpe
from tests.families import make_family_model


def _bos_tokenizer(tmp_path):
    """A SentencePiece-style tokenizer whose template puts ``<s>`` in front of every text (as Llama's and Gemma's)."""
    tokenizer = metaspace_bpe(tmp_path)
    bos = tokenizer.bos_token_id
    tokenizer._tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", bos)])
    return tokenizer


def _blocks(bos: int) -> dict[str, torch.Tensor]:
    """Two packed rows: one cut mid-document (no BOS, one padding position), one opening a document with BOS."""
    ids = torch.tensor([[7, 8, 9, 0], [bos, 5, 6, 10]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    return {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}


def test_rows_without_bos_open_with_it_and_rows_with_it_are_kept(tmp_path):
    tokenizer = _bos_tokenizer(tmp_path)
    bos = tokenizer.bos_token_id
    (batch,) = opened_with_bos([_blocks(bos)], tokenizer)
    assert batch["input_ids"].tolist() == [[bos, 7, 8, 9, 0], [bos, 5, 6, 10, bos]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 0], [1, 1, 1, 1, 0]]
    # BOS and the block's first token stay unscored (as without BOS); the document's own BOS row is unchanged.
    assert batch["labels"].tolist() == [[-100, -100, 8, 9, -100], [bos, 5, 6, 10, -100]]


def test_the_same_tokens_are_scored_with_bos_as_context(tmp_path):
    tokenizer = _bos_tokenizer(tmp_path)
    model = make_family_model("llama", "causal", layers=1, seed=0, vocab_size=len(tokenizer)).eval()
    raw = _blocks(tokenizer.bos_token_id)
    token_bytes = torch.ones(len(tokenizer))
    *_, plain_tokens, _ = perplexity(model, [raw], token_bytes)
    *_, opened_tokens, _ = perplexity(model, opened_with_bos([raw], tokenizer), token_bytes)
    assert opened_tokens == plain_tokens == 5  # 8, 9 of the first row; 5, 6, 10 of the second
    with torch.no_grad():  # the first row's tokens are now predicted after BOS: its scores change
        before = model(input_ids=raw["input_ids"][:1, :3]).logits[0, 0]
        after = model(input_ids=torch.tensor([[tokenizer.bos_token_id, 7, 8, 9]])).logits[0, 1]
    assert not torch.allclose(before, after)


def test_tokenizers_without_a_bos_template_and_document_positions_are_left_alone(tmp_path):
    _, byte_level = wordpiece_and_bpe(tmp_path)  # GPT-2 style: BOS exists but the template adds none
    batch = _blocks(byte_level.bos_token_id)
    assert opened_with_bos([batch], byte_level)[0] is batch
    with_positions = {**_blocks(_bos_tokenizer(tmp_path).bos_token_id), "position_ids": torch.arange(4).repeat(2, 1)}
    assert opened_with_bos([with_positions], _bos_tokenizer(tmp_path))[0] is with_positions
