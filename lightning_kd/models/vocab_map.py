"""Vocabulary compression for VocabDistil (GLMD+vc; Tan et al. 2023, §"vocabulary compression").

A compressed student keeps ``M ≪ V`` rows of its word-embedding table. Which tokens keep a row, and
which row every other token reads, is a :class:`VocabularyMap`:

* **ranking** — protected tokens (the tokenizer's special tokens and any verbalizer words) first,
  then every other token, each group by descending corpus frequency (ties: lower id first); ids past
  the tokenizer's end rank last;
* **kept set** ``K`` — the first ``M`` tokens of the ranking; row ``j`` of the student holds token
  ``row_token[j]``, the token of rank ``j``;
* **replacement** ``rep(v)`` — ``v`` itself when kept, otherwise the kept token most similar to ``v``
  under a teacher's input embeddings (``decoder``: dot product, ``cosine``, ``euclidean``: minus the
  squared distance), or ``[UNK]`` when no teacher is used;
* **student row** ``student_row[v] = rank(rep(v))`` — the row token ``v`` reads (the reference's π);
  a *pinned* id (the token RoBERTa, XLM-R and MPNet count position ids from, :func:`pinned_token_ids`)
  is kept and swapped into its own row.

The student itself stays a plain HF model whose vocabulary *is* the ``M`` rows
(:func:`compress_model_vocabulary`); its tokenizer is the teacher's with every id sent through
``student_row`` (:func:`remap_tokenizer_files`), and the map travels with it as ``vocab_map.json``.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor, nn
from transformers import PreTrainedModel

Similarity = Literal["decoder", "cosine", "euclidean"]
MAP_FILE = "vocab_map.json"
_FORMAT = "lightning_kd.vocab_map/1"
_IGNORE_INDEX = -100
_CONFIG_TOKEN_IDS = ("pad_token_id", "bos_token_id", "eos_token_id", "sep_token_id", "cls_token_id", "mask_token_id", "unk_token_id")


def compressed_vocab_size(size: float, tokenizer_size: int, multiple: int = 128) -> int:
    """``M``: ``size`` rows (``>= 1``) or that fraction of ``tokenizer_size`` (``(0, 1)``), rounded up to a
    multiple of ``multiple`` (the reference's ``make_vocab_size_divisible_by``).

    Raises:
        ValueError: a non-positive size, or ``M`` not below ``tokenizer_size`` (nothing to compress).
    """
    if size <= 0 or multiple < 1:
        raise ValueError(f"The compressed vocabulary size must be > 0 (a fraction in (0, 1) or a row count), got {size}.")
    rows = size * tokenizer_size if size < 1 else size
    rows = math.ceil(rows / multiple) * multiple
    if rows >= tokenizer_size:
        raise ValueError(
            f"A compressed vocabulary of {rows} rows (size={size}, rounded up to a multiple of {multiple}) does not "
            f"compress a tokenizer of {tokenizer_size} tokens; choose a smaller size or a smaller multiple."
        )
    return rows


def protected_token_ids(tokenizer, words: Sequence[str] = ()) -> list[int]:
    """The tokenizer's special ids, plus each of ``words`` (and its lower-case form) that is one token."""
    ids = set(tokenizer.all_special_ids)
    for word in words:
        for form in {word, word.lower()}:
            pieces = tokenizer(form, add_special_tokens=False)["input_ids"]
            if len(pieces) == 1:
                ids.add(pieces[0])
    return sorted(ids)


def count_token_ids(sequences: Iterable, vocab_size: int, limit: int | None = None) -> Tensor:
    """Occurrences of every id in ``[0, vocab_size)`` over ``sequences``, shape ``(vocab_size,)`` int64.

    Args:
        sequences: id sequences, or a ``datasets`` (iterable) dataset with an ``input_ids`` column,
            read in batches.
        limit: read at most this many sequences (``None``: all).
    """
    counts = np.zeros(vocab_size, dtype=np.int64)
    seen = 0
    if hasattr(sequences, "iter") and "input_ids" in (getattr(sequences, "column_names", None) or ["input_ids"]):
        batches = (batch["input_ids"] for batch in sequences.iter(batch_size=1024))
    else:
        batches = ([row] for row in sequences)
    for batch in batches:
        if limit is not None:
            batch = batch[: limit - seen]
        if len(batch):
            flat = np.concatenate([np.asarray(row, dtype=np.int64).reshape(-1) for row in batch])
            counts += np.bincount(flat[(flat >= 0) & (flat < vocab_size)], minlength=vocab_size)
        seen += len(batch)
        if limit is not None and seen >= limit:
            break
    return torch.from_numpy(counts)


def rank_tokens(counts: Tensor, protected: Iterable[int], tokenizer_size: int) -> Tensor:
    """Token ids in rank order, shape ``(V,)`` with ``V = len(counts)`` (see the module docstring)."""
    vocab_size = counts.numel()
    key = counts.double().clone()
    key[tokenizer_size:] = -1.0  # ids past the tokenizer rank after every real token
    offset = key.max().clamp_min(0) + 2
    protected = [i for i in set(protected) if 0 <= i < vocab_size]
    key[protected] += offset  # every protected token ranks above every other
    return torch.sort(-key, stable=True).indices


def replacement_ids(
    embeddings: Tensor, kept: Tensor, similarity: Similarity = "decoder", chunk_size: int = 2048
) -> Tensor:
    """``rep(v)`` for every id: ``v`` when kept, else the kept id maximising ``sim(e_v, e_k)``.

    Args:
        embeddings: a teacher's input embeddings ``(V, d)``.
        kept: boolean ``(V,)``.
        similarity: ``"decoder"`` (``e_v·e_k``), ``"cosine"`` or ``"euclidean"`` (``−‖e_v−e_k‖²``).
        chunk_size: dropped ids compared at once (bounds memory at ``chunk_size × |K|`` floats).
    """
    table = embeddings.detach().float()
    kept_ids = kept.nonzero().squeeze(-1)
    candidates = table[kept_ids]
    if similarity == "cosine":
        table = nn.functional.normalize(table, dim=-1)
        candidates = nn.functional.normalize(candidates, dim=-1)
    elif similarity not in ("decoder", "euclidean"):
        raise ValueError(f"Unknown similarity {similarity!r}; use 'decoder', 'cosine' or 'euclidean'.")
    result = torch.arange(kept.numel())
    dropped = (~kept).nonzero().squeeze(-1)
    for start in range(0, dropped.numel(), chunk_size):
        ids = dropped[start : start + chunk_size]
        scores = table[ids] @ candidates.T
        if similarity == "euclidean":  # −‖a−b‖² = 2a·b − ‖a‖² − ‖b‖²; ‖a‖² is constant per row
            scores = 2 * scores - candidates.pow(2).sum(-1)
        result[ids] = kept_ids[scores.argmax(dim=-1)].cpu()
    return result


class VocabularyMap(nn.Module):
    """The map between a teacher's vocabulary (``V`` ids) and a compressed student's ``M`` rows.

    Persistent buffers (saved in Lightning checkpoints): ``student_row`` (``(V,)``, the row each id
    reads, π), ``row_token`` (``(M,)``, the id each row holds, ρ) and ``built``. Built with
    :meth:`build` or :meth:`load`; before that it only knows its sizes.
    """

    def __init__(self, teacher_vocab_size: int, student_vocab_size: int) -> None:
        super().__init__()
        self.register_buffer("student_row", torch.zeros(teacher_vocab_size, dtype=torch.long))
        self.register_buffer("row_token", torch.arange(student_vocab_size, dtype=torch.long))
        self.register_buffer("built", torch.tensor(False))

    @property
    def teacher_vocab_size(self) -> int:
        return self.student_row.numel()

    @property
    def student_vocab_size(self) -> int:
        return self.row_token.numel()

    @property
    def is_built(self) -> bool:
        return bool(self.built)

    @property
    def kept(self) -> Tensor:
        """Boolean ``(V,)``: the ids that own a student row."""
        kept = torch.zeros(self.teacher_vocab_size, dtype=torch.bool, device=self.row_token.device)
        kept[self.row_token] = True
        return kept

    # ------------------------------------------------------------------ building
    def build(
        self,
        counts: Tensor,
        protected: Iterable[int],
        tokenizer_size: int,
        embeddings: Tensor | None = None,
        similarity: Similarity = "decoder",
        unk_id: int | None = None,
        pinned: Iterable[int] = (),
    ) -> VocabularyMap:
        """Fill the map from corpus counts (see the module docstring).

        Args:
            counts: ``(V,)`` occurrences of each id in the corpus.
            protected: ids always kept (special tokens, verbalizer words).
            tokenizer_size: ids from here on are padding rows of the embedding and always dropped.
            embeddings: a teacher's input embeddings ``(V, d)`` for similarity replacement; ``None``
                replaces every dropped token by ``unk_id``.
            similarity: ``"decoder"``, ``"cosine"`` or ``"euclidean"``.
            unk_id: the ``[UNK]`` id (needed when ``embeddings`` is ``None``).
            pinned: ids that must be kept *at their own row* (see :func:`pinned_token_ids`); they are
                protected, and swapped into that row after ranking (the kept set does not change).

        Raises:
            ValueError: sizes disagree, the protected tokens do not fit in ``M`` rows, a pinned id is
                not below ``M``, or no ``unk_id``.
        """
        vocab_size, rows = self.teacher_vocab_size, self.student_vocab_size
        if counts.numel() != vocab_size:
            raise ValueError(f"counts cover {counts.numel()} ids but the vocabulary has {vocab_size}.")
        if rows > tokenizer_size:
            raise ValueError(f"{rows} student rows exceed the tokenizer's {tokenizer_size} tokens.")
        pinned = sorted(set(pinned))
        if any(not 0 <= i < rows for i in pinned):
            raise ValueError(f"Token ids {pinned} must keep their own row, but the student has {rows} rows; compress less.")
        protected = sorted({i for i in protected if 0 <= i < vocab_size} | set(pinned))
        if len(protected) > rows:
            raise ValueError(f"{len(protected)} protected tokens do not fit in {rows} student rows; compress less.")
        order = rank_tokens(counts.cpu(), protected, tokenizer_size)
        for token in pinned:  # both positions are below M: the swap reorders rows, the kept set stays
            at = int((order == token).nonzero())
            order[[at, token]] = order[[token, at]]
        rank = torch.empty_like(order)
        rank[order] = torch.arange(vocab_size)
        kept = rank < rows
        if embeddings is not None:
            if embeddings.shape[0] != vocab_size:
                raise ValueError(f"The similarity embeddings have {embeddings.shape[0]} rows for {vocab_size} ids.")
            replacement = replacement_ids(embeddings.cpu(), kept, similarity)
        else:
            if unk_id is None:
                raise ValueError("Replacing dropped tokens by [UNK] needs the tokenizer's unk id.")
            if not kept[unk_id]:
                raise ValueError(f"[UNK] (id {unk_id}) must be a kept token to replace dropped ones; protect it.")
            replacement = torch.where(kept, torch.arange(vocab_size), torch.full((vocab_size,), unk_id))
        self._set(rank[replacement], order[:rows])
        return self

    def _set(self, student_row: Tensor, row_token: Tensor) -> None:
        if student_row.shape != self.student_row.shape or row_token.shape != self.row_token.shape:
            raise ValueError(
                f"A map of {student_row.numel()} ids → {row_token.numel()} rows does not fit this one "
                f"({self.teacher_vocab_size} ids → {self.student_vocab_size} rows)."
            )
        if not torch.equal(student_row[row_token].cpu(), torch.arange(row_token.numel())):
            raise ValueError("Inconsistent vocabulary map: a kept token does not read its own row.")
        self.student_row.copy_(student_row)
        self.row_token.copy_(row_token)
        self.built.fill_(True)

    # ------------------------------------------------------------------ applying
    def _check_built(self) -> None:
        if not self.is_built:
            raise RuntimeError("The vocabulary map is not built yet (VocabDistil builds it when fitting starts).")

    def student_ids(self, input_ids: Tensor) -> Tensor:
        """Teacher ids → student rows (π), same shape."""
        self._check_built()
        return self.student_row[input_ids]

    def student_labels(self, labels: Tensor) -> Tensor:
        """Token-level labels → student rows, leaving ``-100`` (ignored) positions alone."""
        self._check_built()
        ignored = labels.eq(_IGNORE_INDEX)
        return torch.where(ignored, labels, self.student_row[labels.masked_fill(ignored, 0)])

    def replaced_ids(self, input_ids: Tensor) -> Tensor:
        """Each id replaced by the kept token whose row it reads (``rep(v)``), in teacher ids."""
        return self.row_token[self.student_ids(input_ids)]

    def kept_teacher_logits(self, teacher_logits: Tensor) -> Tensor:
        """Teacher logits ``(..., V)`` at the kept ids, in student-row order: ``(..., M)``."""
        self._check_built()
        return teacher_logits.index_select(-1, self.row_token)

    def full_student_logits(self, student_logits: Tensor) -> Tensor:
        """Student row logits ``(..., M)`` spread to every teacher id (dropped ids repeat their row's): ``(..., V)``."""
        self._check_built()
        return student_logits.index_select(-1, self.student_row)

    # ------------------------------------------------------------------ files
    def to_dict(self) -> dict:
        self._check_built()
        return {
            "format": _FORMAT,
            "teacher_vocab_size": self.teacher_vocab_size,
            "student_vocab_size": self.student_vocab_size,
            "student_row": self.student_row.tolist(),
            "row_token": self.row_token.tolist(),
        }

    def save(self, path: str | Path) -> Path:
        """Write the map as JSON (``student_row``: id → row; ``row_token``: row → id)."""
        path = Path(path)
        path.write_text(json.dumps(self.to_dict()))
        return path

    def load(self, path: str | Path) -> VocabularyMap:
        """Read a map written by :meth:`save` (a file, or a directory holding ``vocab_map.json``)."""
        data = read_map_file(path)
        self._set(torch.tensor(data["student_row"]), torch.tensor(data["row_token"]))
        return self

    def load_tensors(self, student_row: Tensor, row_token: Tensor) -> VocabularyMap:
        """Fill the map from its two tensors (e.g. a checkpoint's buffers)."""
        self._set(student_row.to(self.student_row.device), row_token.to(self.row_token.device))
        return self


def map_file(source: str | Path) -> Path:
    """``source`` itself, or ``source/vocab_map.json`` when ``source`` is a directory."""
    path = Path(source)
    return path / MAP_FILE if path.is_dir() else path


def read_map_file(source: str | Path) -> dict:
    """The JSON of a vocabulary map file (or of a directory's ``vocab_map.json``)."""
    path = map_file(source)
    if not path.is_file():
        raise FileNotFoundError(f"No vocabulary map at {path}; VocabDistil writes {MAP_FILE} next to the student it exports.")
    data = json.loads(path.read_text())
    if data.get("format") != _FORMAT:
        raise ValueError(f"{path} is not a lightning_kd vocabulary map (format {data.get('format')!r}).")
    return data


# ---------------------------------------------------------------------- the student model
def pinned_token_ids(model: nn.Module) -> list[int]:
    """Token ids a compressed ``model`` must keep at their own row.

    RoBERTa and XLM-R (``config.pad_token_id``) and MPNet (always id 1) derive position ids from the
    input ids: positions count from ``padding_idx + 1`` and skip every token equal to ``padding_idx``,
    one number that the embeddings module keeps, its position table is indexed from, and a saved
    config restores. That number must then stay the same token's row in the compressed vocabulary.
    Found as an embeddings module whose ``position_embeddings`` table pads at its own ``padding_idx``.
    """
    pinned = set()
    for module in model.modules():
        index, positions = getattr(module, "padding_idx", None), getattr(module, "position_embeddings", None)
        if isinstance(index, int) and isinstance(positions, nn.Embedding) and positions.padding_idx == index:
            pinned.add(index)
    return sorted(pinned)


def compress_model_vocabulary(model: PreTrainedModel, row_token: Tensor, student_row: Tensor) -> PreTrainedModel:
    """Shrink ``model``'s vocabulary in place to the rows ``row_token`` (``(M,)`` original ids).

    Input embeddings, an output decoder and its bias (tied or not) keep the rows of the kept tokens
    in row order, so a student copied from a teacher starts with the teacher's rows ``E_t[ρ[j]]``.
    ``config.vocab_size`` becomes ``M`` and special-token ids in the config (and a decoder's
    generation config) are sent through ``student_row``; the result saves and loads as an ordinary HF
    model of that vocabulary.
    """
    rows = row_token.to(model.get_input_embeddings().weight.device)
    old_in = model.get_input_embeddings()
    old_out = model.get_output_embeddings()
    tied = old_out is not None and old_out.weight is old_in.weight
    padding = getattr(old_in, "padding_idx", None)
    new_in = nn.Embedding(rows.numel(), old_in.embedding_dim, padding_idx=int(student_row[padding]) if padding is not None else None)
    new_in = new_in.to(device=old_in.weight.device, dtype=old_in.weight.dtype)
    with torch.no_grad():
        new_in.weight.copy_(old_in.weight[rows])
    model.set_input_embeddings(new_in)
    if old_out is not None:
        new_out = nn.Linear(old_out.in_features, rows.numel(), bias=old_out.bias is not None)
        new_out = new_out.to(device=old_out.weight.device, dtype=old_out.weight.dtype)
        with torch.no_grad():
            if tied:
                new_out.weight = new_in.weight
            else:
                new_out.weight.copy_(old_out.weight[rows])
            if old_out.bias is not None:
                new_out.bias.copy_(old_out.bias[rows])
        model.set_output_embeddings(new_out)
        stale = {id(old_in.weight): new_in.weight, id(old_out.weight): new_out.weight}
        if old_out.bias is not None:
            stale[id(old_out.bias)] = new_out.bias
        _repoint_parameters(model, stale)
    model.config.vocab_size = rows.numel()
    # A decoder's generation config names its EOS/pad/BOS too (EOS may be a list): a compressed student
    # must stop and pad on its own rows, or generate() would compare against the teacher's ids.
    for settings in (model.config, getattr(model, "generation_config", None)):
        for name in _CONFIG_TOKEN_IDS if settings is not None else ():
            value = getattr(settings, name, None)
            if isinstance(value, int) and 0 <= value < student_row.numel():
                setattr(settings, name, int(student_row[value]))
            elif isinstance(value, list) and all(isinstance(v, int) and 0 <= v < student_row.numel() for v in value):
                setattr(settings, name, [int(student_row[v]) for v in value])
    return model


def _repoint_parameters(model: nn.Module, replacements: dict[int, nn.Parameter]) -> None:
    """Point every module attribute still holding a replaced parameter at its replacement.

    ``set_output_embeddings`` swaps the decoder but some families keep a second reference to its
    bias (RoBERTa's and XLM-R's ``lm_head.bias``, tied to ``lm_head.decoder.bias`` on load); left at
    the old size, the saved model would not load again.
    """
    for module in model.modules():
        for name, parameter in list(module._parameters.items()):
            if parameter is not None and id(parameter) in replacements and replacements[id(parameter)] is not parameter:
                module._parameters[name] = replacements[id(parameter)]


# ---------------------------------------------------------------------- the tokenizer
def remap_tokenizer_spec(spec: dict, student_row: Sequence[int]) -> dict:
    """A ``tokenizer.json`` document whose every id is sent through ``student_row``.

    Dropped tokens keep their strings but share their replacement's id, so encoding text gives
    exactly ``student_row[original ids]``. Decoding a shared id may show any of its tokens.

    Raises:
        TypeError: the model's vocabulary is not a token → id table (e.g. Unigram).
    """
    spec = json.loads(json.dumps(spec))
    vocab = spec.get("model", {}).get("vocab")
    if not isinstance(vocab, dict):
        raise TypeError(f"A {spec.get('model', {}).get('type')} tokenizer has no token → id table to remap.")

    def row(i: int) -> int:
        return int(student_row[i]) if 0 <= i < len(student_row) else i

    spec["model"]["vocab"] = {token: row(i) for token, i in vocab.items()}
    for token in spec.get("added_tokens") or []:
        token["id"] = row(token["id"])
    if isinstance(spec.get("padding"), dict) and isinstance(spec["padding"].get("pad_id"), int):
        spec["padding"]["pad_id"] = row(spec["padding"]["pad_id"])
    spec["post_processor"] = _remap_processor(spec.get("post_processor"), row)
    return spec


def _remap_processor(node, row):
    """Remap special-token ids inside a post-processor (TemplateProcessing, Bert/RobertaProcessing, Sequence)."""
    if isinstance(node, list):
        return [_remap_processor(item, row) for item in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for key, value in node.items():
        if key == "ids" and isinstance(value, list) and all(isinstance(i, int) for i in value):
            out[key] = [row(i) for i in value]
        elif key in ("sep", "cls") and isinstance(value, list) and len(value) == 2 and isinstance(value[1], int):
            out[key] = [value[0], row(value[1])]
        else:
            out[key] = _remap_processor(value, row)
    return out


def remap_tokenizer_files(directory: str | Path, student_row: Sequence[int]) -> bool:
    """Rewrite a saved tokenizer in ``directory`` so it produces student rows (see :func:`remap_tokenizer_spec`).

    Returns ``False`` when ``directory`` holds no ``tokenizer.json``, or one whose vocabulary cannot be
    remapped; the latter is moved to ``directory/teacher_tokenizer`` (ids are then mapped with
    ``vocab_map.json``) so the student directory never holds a tokenizer that emits the wrong ids.
    """
    directory = Path(directory)
    path = directory / "tokenizer.json"
    if not path.is_file():
        return False
    try:
        spec = remap_tokenizer_spec(json.loads(path.read_text()), student_row)
    except TypeError as error:
        aside = directory / "teacher_tokenizer"
        aside.mkdir(exist_ok=True)
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "added_tokens.json"):
            if (directory / name).is_file():
                (directory / name).replace(aside / name)
        warnings.warn(f"{error} Moved it to {aside}; map its ids with {MAP_FILE}.", stacklevel=2)
        return False
    path.write_text(json.dumps(spec, ensure_ascii=False))
    config_path = directory / "tokenizer_config.json"
    if config_path.is_file():
        config = json.loads(config_path.read_text())
        decoder = config.get("added_tokens_decoder")
        if isinstance(decoder, dict):
            config["added_tokens_decoder"] = {str(int(student_row[int(k)])): v for k, v in decoder.items()}
            config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False))
    return True
