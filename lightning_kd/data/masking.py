"""BERT's masked-language-model corruption as pure tensor functions.

Of the maskable tokens (not special, not padding), each is *chosen* with probability
``probability`` (BERT: 0.15). A chosen token is replaced by ``[MASK]`` 80% of the time, by a
random non-special token 10% of the time, and left unchanged 10% of the time; its label is the
original id. Every other position has label -100, which the loss ignores.

Whole-word masking (``word_ids``) draws once per word: all pieces of a word are chosen together,
so the model cannot recover ``##ing`` from an unmasked ``walk``. The 80/10/10 choice is then made
per piece, as in the original BERT code.
"""

from __future__ import annotations

import torch
from torch import Tensor
from transformers import PreTrainedTokenizerBase

IGNORE_INDEX = -100


def continuation_table(tokenizer: PreTrainedTokenizerBase) -> Tensor:
    """Boolean ``(vocab,)`` table: ``True`` for WordPiece continuation pieces (``##...``).

    Raises:
        ValueError: the vocabulary has no ``##`` pieces (not WordPiece), so words cannot be found.
    """
    tokens = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    table = torch.tensor([token is not None and token.startswith("##") for token in tokens])
    if not table.any():
        raise ValueError(
            "whole_word_mask needs a WordPiece vocabulary (pieces marked '##'); this tokenizer has none. "
            "Set whole_word_mask=False."
        )
    return table


def word_ids_from_continuations(input_ids: Tensor, is_continuation: Tensor) -> Tensor:
    """``(B, L)`` word index of every token: a continuation piece shares the index of its head."""
    return (~is_continuation[input_ids]).long().cumsum(dim=-1)


def mask_tokens(
    input_ids: Tensor,
    special_tokens_mask: Tensor,
    mask_token_id: int,
    random_token_ids: Tensor,
    probability: float = 0.15,
    generator: torch.Generator | None = None,
    word_ids: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Corrupt a batch for masked-language modelling.

    Args:
        input_ids: ``(B, L)`` token ids.
        special_tokens_mask: ``(B, L)``, nonzero where a token must never be chosen ([CLS], [SEP],
            [PAD], ...).
        mask_token_id: the ``[MASK]`` id.
        random_token_ids: 1-D pool that random replacements are drawn from (BERT: the vocabulary;
            here normally the non-special ids).
        probability: chance that a maskable token (or word) is chosen.
        generator: random source; ``None`` uses torch's global generator (seeded per DataLoader
            worker by Lightning, so workers do not repeat each other's masks).
        word_ids: optional ``(B, L)`` word index; tokens of one word must be adjacent and share it.

    Returns:
        ``(masked_input_ids, labels)``, both ``(B, L)``; ``labels`` is the original id at chosen
        positions and -100 elsewhere. If no token of the whole batch was chosen, one maskable word
        is chosen anyway, so the loss is never an empty mean.
    """
    batch, length = input_ids.shape
    device = input_ids.device
    maskable = ~special_tokens_mask.bool()
    positions = torch.arange(length, device=device).expand(batch, length)
    if word_ids is None:
        word_ids = positions
    # Each token reads the draw of its word's first piece, so a word is chosen as a whole.
    starts = torch.ones_like(maskable)
    starts[:, 1:] = word_ids[:, 1:] != word_ids[:, :-1]
    head = torch.where(starts, positions, 0).cummax(dim=-1).values
    draw = torch.rand(batch, length, generator=generator, device=device)
    chosen = (draw.gather(1, head) < probability) & maskable
    if not chosen.any() and maskable.any():
        flat = torch.rand(batch * length, generator=generator, device=device).masked_fill(~maskable.flatten(), -1)
        row, col = divmod(int(flat.argmax()), length)
        chosen[row] = maskable[row] & (word_ids[row] == word_ids[row, col])

    action = torch.rand(batch, length, generator=generator, device=device)
    to_mask = chosen & (action < 0.8)
    to_random = chosen & (action >= 0.8) & (action < 0.9)
    masked = input_ids.masked_fill(to_mask, mask_token_id)
    picks = torch.randint(len(random_token_ids), (int(to_random.sum()),), generator=generator, device=device)
    masked[to_random] = random_token_ids.to(device)[picks]
    labels = input_ids.masked_fill(~chosen, IGNORE_INDEX)
    return masked, labels
