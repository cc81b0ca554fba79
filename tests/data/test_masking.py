"""MLM masking: rates, the 80/10/10 split, what is never masked, and whole words."""

from __future__ import annotations

import torch

from lightning_kd.data.collators import MaskingCollator
from lightning_kd.data.masking import continuation_table, mask_tokens, word_ids_from_continuations

MASK, PAD, CLS, SEP = 4, 0, 2, 3
SPECIAL_IDS = torch.tensor([0, 1, 2, 3, 4])
POOL = torch.arange(5, 200)


def _random_batch(rows: int = 256, length: int = 128, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 200, (rows, length), generator=g)
    ids[:, 0], ids[:, -1] = CLS, SEP
    pads = torch.randint(0, length // 4, (rows,), generator=g)
    for row, pad in enumerate(pads.tolist()):
        if pad:
            ids[row, -pad:] = PAD
    return ids, torch.isin(ids, SPECIAL_IDS)


def test_masking_statistics() -> None:
    ids, special = _random_batch()
    masked, labels = mask_tokens(ids, special, MASK, POOL, 0.15, generator=torch.Generator().manual_seed(1))
    chosen = labels != -100
    maskable = ~special
    assert abs(chosen.sum() / maskable.sum() - 0.15) < 0.01
    assert not (chosen & special).any(), "specials and padding are never chosen"
    assert torch.equal(labels[chosen], ids[chosen]) and (labels[~chosen] == -100).all()
    assert torch.equal(masked[~chosen], ids[~chosen]), "unchosen tokens are untouched"
    as_mask = (masked[chosen] == MASK).float().mean()
    kept = (masked[chosen] == ids[chosen]).float().mean()
    randomised = 1 - as_mask - kept
    assert abs(as_mask - 0.8) < 0.02 and abs(kept - 0.1) < 0.015 and abs(randomised - 0.1) < 0.015
    replaced = masked[chosen & (masked != MASK) & (masked != ids)]
    assert torch.isin(replaced, POOL).all(), "random replacements come from the pool (no specials)"


def test_generator_makes_masks_reproducible() -> None:
    ids, special = _random_batch(8, 32)
    first = mask_tokens(ids, special, MASK, POOL, generator=torch.Generator().manual_seed(3))
    second = mask_tokens(ids, special, MASK, POOL, generator=torch.Generator().manual_seed(3))
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))


def test_at_least_one_token_is_chosen_per_batch() -> None:
    ids = torch.tensor([[CLS, 10, 11, SEP]])
    for seed in range(20):
        _, labels = mask_tokens(ids, torch.isin(ids, SPECIAL_IDS), MASK, POOL, 0.01,
                                generator=torch.Generator().manual_seed(seed))
        assert (labels != -100).sum() >= 1 and (labels[0, [0, 3]] == -100).all()


def test_whole_words_are_chosen_together() -> None:
    ids, special = _random_batch(64, 66)
    word_ids = torch.arange(66).div(3, rounding_mode="floor").expand(64, 66)  # words of three pieces
    _, labels = mask_tokens(ids, special, MASK, POOL, 0.15, generator=torch.Generator().manual_seed(0),
                            word_ids=word_ids)
    chosen = (labels != -100).view(64, 22, 3).sum(-1)
    maskable = (~special).view(64, 22, 3).sum(-1)
    assert ((chosen == 0) | (chosen == maskable)).all(), "a word's maskable pieces are chosen all or none"
    assert abs((labels != -100).sum() / (~special).sum() - 0.15) < 0.02


def test_word_ids_follow_wordpiece(tiny_tokenizer) -> None:
    table = continuation_table(tiny_tokenizer)
    ids = torch.tensor([tiny_tokenizer.convert_tokens_to_ids(["[CLS]", "film", "##s", "##y", "good", "[SEP]"])])
    assert word_ids_from_continuations(ids, table).tolist() == [[1, 2, 2, 2, 3, 4]]


def test_collator_with_whole_word_masking(tiny_tokenizer) -> None:
    text = "the filmy plotless actorish review was xyzzy and qwerty " * 6
    pieces = tiny_tokenizer(text, add_special_tokens=False)["input_ids"]
    cls, sep = tiny_tokenizer.cls_token_id, tiny_tokenizer.sep_token_id
    rows = [{"input_ids": [cls, *pieces[i : i + 30], sep]} for i in range(0, 60, 5)]
    rows[-1]["input_ids"] = rows[-1]["input_ids"][:10]  # a short row gets padded
    table = continuation_table(tiny_tokenizer)
    collate = MaskingCollator(tiny_tokenizer, probability=0.3, whole_word_mask=True, eval_seed=0)
    batch = collate(rows)
    assert set(batch) == {"input_ids", "attention_mask", "token_type_ids", "labels"}
    assert batch["attention_mask"][-1].sum() == 10 and (batch["labels"][-1, 10:] == -100).all()
    original = torch.where(batch["labels"] != -100, batch["labels"], batch["input_ids"])
    words = word_ids_from_continuations(original, table)
    chosen = batch["labels"] != -100
    maskable = batch["attention_mask"].bool() & ~torch.isin(original, torch.tensor(tiny_tokenizer.all_special_ids))
    assert chosen.any() and not (chosen & ~maskable).any()
    for row in range(len(rows)):
        for word in words[row][chosen[row]].unique():
            assert chosen[row][(words[row] == word) & maskable[row]].all(), "every piece of a chosen word is chosen"
    assert torch.equal(collate(rows)["input_ids"], batch["input_ids"]), "evaluation masks repeat"
