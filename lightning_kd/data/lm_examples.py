"""Causal-LM rows: plain text packed into blocks, prompt/response examples with response-only labels, and their batches.

Everything here follows Hugging Face's causal-LM convention: ``labels`` are **unshifted**
(``labels[t]`` is the token at ``t``; the model at ``t`` predicts ``labels[t + 1]``, and the shift
happens once, in the loss), and ``-100`` marks a token that is not predicted.

* :class:`PackDocuments` (``Dataset.map``): documents → ``[BOS] doc [EOS] [BOS] doc [EOS] ...``
  cut into blocks of exactly ``block_size`` tokens; with ``document_starts`` per block when
  documents must not attend to each other.
* :class:`TokenizeExamples` (``Dataset.map``): prompt/response pairs or chat ``messages`` →
  ``input_ids`` and ``labels`` that keep only the response (assistant) tokens.
* :class:`CausalLMCollator`: rows → a batch (``input_ids``, ``attention_mask`` or ``position_ids``,
  ``labels``, ``example_index`` and, with unlabelled transfer rows, ``labelled``; offsets and each
  teacher's own encoding when the blocks carry them).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from lightning_kd.data.collators import pad_rows, pad_spans, row_identity

IGNORE_INDEX = -100
#: Batch key of the per-block offsets where a document starts (only with ``separate_documents``).
DOCUMENT_STARTS = "document_starts"
#: Batch key of each token's ``(start, end)`` character span (only with a teacher's own encoding).
OFFSET_MAPPING = "offset_mapping"


def template_adds_bos(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether the tokenizer's own template puts BOS in front of a text (Llama, Gemma: yes; GPT-2, Qwen: no).

    Probed rather than read from ``add_bos_token``, which not every tokenizer class has: the
    tokenizer encodes a word with and without special tokens, and BOS counts when only the former starts with it.
    """
    bos = tokenizer.bos_token_id
    if bos is None:
        return False
    with_special = tokenizer("a", add_special_tokens=True)["input_ids"]
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    return with_special[:1] == [bos] and plain[:1] != [bos]


def _preview(value: Any, width: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


# ----------------------------------------------------------------------------- plain text
class PackDocuments:
    """``Dataset.map(batched=True)`` function: documents (rows of ``text_column``) → ``block_size`` token blocks.

    Each non-blank document is tokenised without special tokens, preceded by ``bos_id`` (when not
    ``None``) and followed by ``eos_id``; the documents of one ``map`` batch (1,000 rows by
    default) are concatenated and cut into blocks of exactly ``block_size`` tokens, and the tail
    that does not fill a block is dropped (on average half a block per 1,000 documents).

    Args:
        tokenizer: a Hugging Face tokenizer.
        text_column: the column holding the documents.
        block_size: tokens per block.
        eos_id: the token closing every document.
        bos_id: the token opening every document, or ``None``.
        document_starts: also return, per block, the offsets at which a document starts.
    """

    def __init__(
        self, tokenizer: PreTrainedTokenizerBase, text_column: str, block_size: int, eos_id: int,
        bos_id: int | None = None, document_starts: bool = False,
    ) -> None:
        self.tokenizer, self.text_column, self.block_size = tokenizer, text_column, block_size
        self.eos_id, self.bos_id, self.document_starts = eos_id, bos_id, document_starts

    def __call__(self, batch: dict[str, list[Any]]) -> dict[str, list[list[int]]]:
        """Tokenise and pack a batch of documents; the batch may yield more or fewer rows than it got."""
        texts = self.documents(batch)
        ids = self.tokenizer(
            texts, add_special_tokens=False, return_attention_mask=False, return_token_type_ids=False, verbose=False
        )["input_ids"] if texts else []
        stream, starts = self.concatenate(ids)
        size = self.block_size
        count = len(stream) // size
        out: dict[str, list[list[int]]] = {"input_ids": [stream[i * size : (i + 1) * size] for i in range(count)]}
        if self.document_starts:
            out[DOCUMENT_STARTS] = [
                [start - i * size for start in starts[bisect_left(starts, i * size) : bisect_left(starts, (i + 1) * size)]]
                for i in range(count)
            ]
        return out

    def documents(self, batch: dict[str, list[Any]]) -> list[str]:
        """The batch's non-blank documents, in order (blank or non-text rows are skipped)."""
        return [text for text in batch[self.text_column] if isinstance(text, str) and text.strip()]

    def concatenate(self, ids: Sequence[Sequence[int]]) -> tuple[list[int], list[int]]:
        """The stream ``[BOS] doc [EOS] [BOS] doc [EOS] ...`` and where each document starts in it (its BOS if any).

        One place builds the stream, so the blocks that also carry a teacher's encoding
        (:mod:`lightning_kd.data.teacher_blocks`) hold the very same student ids.
        """
        opening = [] if self.bos_id is None else [self.bos_id]
        stream: list[int] = []
        starts: list[int] = []
        for document in ids:
            starts.append(len(stream))
            stream.extend(opening)
            stream.extend(document)
            stream.append(self.eos_id)
        return stream, starts


# ----------------------------------------------------------------------------- prompt/response examples
class TokenizeExamples:
    """``Dataset.map(batched=True, with_indices=True)`` function: examples → ``input_ids`` and response-only ``labels``.

    An example is a ``prompt_field``/``response_field`` pair (a user turn and the assistant's answer)
    or a ``messages_field`` list of ``{"role": ..., "content": ...}`` chat messages. Labels are the
    token ids on the response (every ``assistant`` message) and ``-100`` everywhere else.

    With a chat template (``tokenizer.chat_template``) the conversation is rendered by
    ``apply_chat_template``; an assistant turn's tokens are those between the conversation up to
    it with the generation prompt and the conversation including it (so the turn's closing tokens,
    e.g. ``<|im_end|>``, are learnt too). Each shorter rendering must be a prefix of the longer
    ones; a template for which that fails is reported with the example.

    Without a chat template the texts are tokenised one by one (no special tokens) and
    concatenated: ``[BOS] prompt response [EOS]`` (BOS when ``bos_id`` is set); for ``messages``,
    every message's content in order, each assistant message followed by EOS. Nothing is inserted
    between prompt and response: put a separator (a newline, ``"Answer:"``) in the prompt text.

    Examples longer than ``block_size`` tokens are cut to their first ``block_size`` tokens; one
    with no response token left is dropped (``drop_overlong``, the data module counts them) or refused.

    Args:
        tokenizer: a Hugging Face tokenizer.
        block_size: the most tokens an example keeps.
        prompt_field: the prompt column (with ``response_field``).
        response_field: the response column.
        messages_field: the chat-messages column (instead of the two above).
        eos_id: closes responses when there is no chat template.
        bos_id: opens examples when there is no chat template, or ``None``.
        split: the split's name, for error messages.
        drop_overlong: drop an example whose response starts after ``block_size`` tokens instead of refusing it.

    Raises:
        ValueError: (when called) an example that is not a string pair / message list, has no
            assistant message, loses its whole response to truncation, or whose chat template
            renders a turn that is not a prefix of the conversation.
    """

    def __init__(
        self, tokenizer: PreTrainedTokenizerBase, block_size: int, prompt_field: str | None = None,
        response_field: str | None = None, messages_field: str | None = None, eos_id: int | None = None,
        bos_id: int | None = None, split: str = "train", drop_overlong: bool = False,
    ) -> None:
        self.tokenizer, self.block_size, self.drop_overlong = tokenizer, block_size, drop_overlong
        self.prompt_field, self.response_field, self.messages_field = prompt_field, response_field, messages_field
        self.eos_id, self.bos_id, self.split = eos_id, bos_id, split
        self.use_template = bool(getattr(tokenizer, "chat_template", None))
        if not self.use_template and eos_id is None:
            raise ValueError(
                "without a chat template each response is closed with the EOS token, and this tokenizer has none; "
                "use a tokenizer with an EOS token or a chat template"
            )

    def __call__(self, batch: dict[str, list[Any]], indices: list[int]) -> dict[str, list[list[int]]]:
        """Tokenise a batch of examples (``indices`` name them in errors)."""
        all_ids, all_labels = [], []
        for row, index in enumerate(indices):
            where = f"example {index} of the {self.split} data"
            messages = self._messages(batch, row, where)
            ids, labels = self._encode_template(messages, where) if self.use_template else self._encode_plain(messages)
            if not any(label != IGNORE_INDEX for label in labels):
                raise ValueError(f"{where} has no response token to learn from ({_preview(messages)}); "
                                 "give it a non-empty response / assistant message")
            ids, labels = ids[: self.block_size], labels[: self.block_size]
            if not any(label != IGNORE_INDEX for label in labels):
                if self.drop_overlong:
                    continue
                raise ValueError(
                    f"{where} has no response token within its first block_size={self.block_size} tokens "
                    f"({_preview(messages)}); raise block_size, shorten its prompt, or drop it"
                )
            all_ids.append(ids)
            all_labels.append(labels)
        return {"input_ids": all_ids, "labels": all_labels}

    def _messages(self, batch: dict[str, list[Any]], row: int, where: str) -> list[dict[str, str]]:
        if self.messages_field is None:
            prompt, response = batch[self.prompt_field][row], batch[self.response_field][row]
            if not isinstance(prompt, str) or not isinstance(response, str):
                raise ValueError(
                    f"{where}: {self.prompt_field!r} and {self.response_field!r} must both be strings, "
                    f"got {_preview(prompt)} and {_preview(response)}"
                )
            return [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
        messages = batch[self.messages_field][row]
        if not isinstance(messages, Sequence) or isinstance(messages, str) or not all(
            isinstance(m, Mapping) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in messages
        ):
            raise ValueError(
                f"{where}: {self.messages_field!r} must be a list of {{'role': str, 'content': str}} messages, "
                f"got {_preview(messages)}"
            )
        if not any(m["role"] == "assistant" for m in messages):
            roles = [m["role"] for m in messages]
            raise ValueError(f"{where} has no 'assistant' message to learn from (roles {roles})")
        return [{"role": m["role"], "content": m["content"]} for m in messages]

    def _render(self, messages: list[dict[str, str]], generation_prompt: bool) -> list[int]:
        ids = self.tokenizer.apply_chat_template(
            messages, tokenize=True, add_generation_prompt=generation_prompt, return_dict=False
        )
        if isinstance(ids, Mapping):  # older/newer transformers may still hand back an encoding
            ids = ids["input_ids"]
        return list(ids)

    def _encode_template(self, messages: list[dict[str, str]], where: str) -> tuple[list[int], list[int]]:
        ids = self._render(messages, False)
        labels = [IGNORE_INDEX] * len(ids)
        for turn, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            before = self._render(messages[:turn], True) if turn else self._generation_prompt_alone()
            through = self._render(messages[: turn + 1], False)
            if through[: len(before)] != before or ids[: len(through)] != through:
                raise ValueError(
                    f"{where} ({_preview(messages)}): the chat template does not render assistant message {turn} as a "
                    "continuation of the conversation before it (the token prefixes differ), so its response tokens "
                    "cannot be located. "
                    "Use a tokenizer whose template only appends turns, or give prompt/response text without "
                    "a chat template."
                )
            labels[len(before) : len(through)] = ids[len(before) : len(through)]
        return ids, labels

    def _generation_prompt_alone(self) -> list[int]:
        # A conversation that opens with the assistant: the template rendered for no messages at all.
        try:
            return self._render([], True)
        except Exception:  # noqa: BLE001 - templates may reject an empty conversation; then nothing precedes the turn
            return []

    def _encode_plain(self, messages: list[dict[str, str]]) -> tuple[list[int], list[int]]:
        ids: list[int] = [] if self.bos_id is None else [self.bos_id]
        labels: list[int] = [IGNORE_INDEX] * len(ids)
        pieces = self.tokenizer(
            [m["content"] for m in messages], add_special_tokens=False, return_attention_mask=False,
            return_token_type_ids=False, verbose=False,
        )["input_ids"]
        for message, piece in zip(messages, pieces):
            if message["role"] == "assistant":
                piece = [*piece, self.eos_id]
                labels.extend(piece)
            else:
                labels.extend([IGNORE_INDEX] * len(piece))
            ids.extend(piece)
        return ids, labels


# ----------------------------------------------------------------------------- batches
class CausalLMCollator:
    """Rows → a causal-LM batch with unshifted ``labels``.

    * Packed text blocks (rows without ``labels``): ``labels`` equal ``input_ids``. Without
      ``separate_documents`` the batch has ``attention_mask`` (all ones). With it, the batch has
      ``position_ids`` that restart at 0 at each document start (and at the block's first token)
      and **no** ``attention_mask``: transformers then builds a block-diagonal causal mask from
      the position ids (``masking_utils.find_packed_sequence_indices``), and each document's first
      token gets label ``-100`` (it would be predicted from the previous document).
    * Examples (rows with ``labels``): right-padded with ``pad_token_id``; ``attention_mask`` is 0
      and ``labels`` are ``-100`` on the padding.
    * Blocks that also carry teachers' own encodings (:mod:`lightning_kd.data.teacher_blocks`): the
      student's ``offset_mapping`` ``(B, N, 2)``, and per teacher prefix ``<prefix>input_ids`` right-padded
      with that teacher's pad id, ``<prefix>attention_mask`` (1 on its real tokens, specials included)
      and ``<prefix>offset_mapping`` padded with the empty span ``(0, 0)``. Teacher rows differ in length.

    ``example_index`` (int64, ``(B,)``) and ``labelled`` (bool, ``(B,)``: rows of unlabelled transfer data are
    ``False``; :mod:`lightning_kd.stages.labelled_rows`) are passed on when the rows carry them.

    Args:
        pad_token_id: fills padded positions of ``input_ids`` (EOS for a tokenizer without a pad token).
        separate_documents: blocks carry ``document_starts``; emit ``position_ids`` instead of ``attention_mask``.
        teacher_pad_ids: per prefix of a teacher's own encoding (``"teacher_"``), the id that pads it
            (its pad token, else its EOS).
    """

    def __init__(
        self, pad_token_id: int, separate_documents: bool = False, teacher_pad_ids: Mapping[str, int] | None = None
    ) -> None:
        self.pad_token_id, self.separate_documents = pad_token_id, separate_documents
        self.teacher_pad_ids = dict(teacher_pad_ids or {})

    def __call__(self, rows: Sequence[dict[str, Any]]) -> dict[str, Tensor]:
        """Build the batch (see the class docstring for its keys)."""
        sequences = [row["input_ids"] for row in rows]
        input_ids = pad_rows(sequences, self.pad_token_id)
        if "labels" in rows[0]:
            lengths = torch.tensor([len(sequence) for sequence in sequences])
            batch = {
                "input_ids": input_ids,
                "attention_mask": (torch.arange(input_ids.shape[1]) < lengths[:, None]).long(),
                "labels": pad_rows([row["labels"] for row in rows], IGNORE_INDEX),
            }
        elif self.separate_documents:
            starts = torch.zeros_like(input_ids, dtype=torch.bool)
            for row, example in enumerate(rows):
                starts[row, list(example[DOCUMENT_STARTS])] = True
            labels = input_ids.masked_fill(starts, IGNORE_INDEX)
            starts[:, 0] = True  # a block that opens mid-document restarts its positions too
            positions = torch.arange(input_ids.shape[1]).expand_as(input_ids)
            last_start = torch.where(starts, positions, 0).cummax(dim=1).values
            batch = {"input_ids": input_ids, "position_ids": positions - last_start, "labels": labels}
        else:
            batch = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": input_ids.clone()}
        if self.teacher_pad_ids:
            batch.update(self._teacher_columns(rows))
        batch.update(row_identity(rows))
        return batch

    def _teacher_columns(self, rows: Sequence[dict[str, Any]]) -> dict[str, Tensor]:
        """The student's offsets and each teacher's encoding, padded on the right (see the class docstring)."""
        columns = {OFFSET_MAPPING: pad_spans([row[OFFSET_MAPPING] for row in rows])}
        for prefix, pad_id in self.teacher_pad_ids.items():
            sequences = [row[prefix + "input_ids"] for row in rows]
            ids = pad_rows(sequences, pad_id)
            lengths = torch.tensor([len(sequence) for sequence in sequences])
            columns[prefix + "input_ids"] = ids
            columns[prefix + "attention_mask"] = (torch.arange(ids.shape[1]) < lengths[:, None]).long()
            columns[prefix + OFFSET_MAPPING] = pad_spans([row[prefix + OFFSET_MAPPING] for row in rows])
        return columns
