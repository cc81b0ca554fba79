"""Two tiny fast tokenizers of different families, trained offline on one in-memory corpus.

:func:`wordpiece_and_bpe` gives a BERT-style WordPiece tokenizer (lowercasing, ``[CLS]``/``[SEP]``,
whitespace dropped from the offsets) and a GPT-2-style byte-level BPE (``Ġ`` spaces inside tokens,
offsets covering them). Their token boundaries differ inside words, so tests of cross-tokenizer
alignment and vocabulary matching have real disagreements to handle. :func:`metaspace_bpe` adds a
SentencePiece-style (``▁``) BPE over the same corpus. Training takes milliseconds. :func:`overlap_means`
is the tests' independent reference for aligned teacher states (a loop over Python sets of characters).
"""

from __future__ import annotations

import csv
from pathlib import Path

import torch

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

CORPUS = [
    "the unhappy cats sat on the warm mat",
    "a happy dog chased the unhappy cats around the garden",
    "unhappiness is not the same as sadness",
    "the cat and the dog became friends after a long winter",
    "caterpillars turn into butterflies in the warm spring",
    "she read the story about the happy caterpillar twice",
    "rainy days make some people unhappy and others happy",
    "the teacher explained distillation to the student",
    "students learn from teachers and teachers learn from students",
    "a small model can imitate a large model surprisingly well",
    "tokenizers split words into pieces in different ways",
    "the quick brown fox jumps over the lazy dog",
    "happy birthday to the cats and the dogs",
    "the garden was full of flowers and butterflies",
    "distilling knowledge needs a teacher and a student",
    "winter evenings are long and the nights are cold",
    "the student model reads the same text as the teacher",
    "some words are rare and some words are common",
    "the mat was warm because the sun was shining",
    "every cat in the village was happy that day",
    "the dog barked at the caterpillar on the leaf",
    "people who read stories are rarely unhappy",
    "pieces of text become tokens and tokens become ids",
    "the friends walked home through the cold garden",
    "large teachers and small students share one text",
    "she explained the story to her friends twice",
    "a lazy afternoon in the warm sun is pleasant",
    "the fox and the cat met in the village square",
    "butterflies and caterpillars live in the garden",
    "learning to read takes many days and many stories",
]


def _wordpiece() -> Tokenizer:
    """A lowercasing WordPiece with BERT's pre-tokenizer and ``[CLS] … [SEP]`` around each text."""
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokenizer.train_from_iterator(CORPUS, trainers.WordPieceTrainer(vocab_size=250, special_tokens=specials))
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", tokenizer.token_to_id("[CLS]")), ("[SEP]", tokenizer.token_to_id("[SEP]"))],
    )
    return tokenizer


def _byte_level_bpe() -> Tokenizer:
    """A GPT-2-style byte-level BPE: the full 256-byte alphabet plus merges, offsets keeping spaces."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=["<|endoftext|>"]
    )
    tokenizer.train_from_iterator(CORPUS, trainer)
    return tokenizer


def _metaspace_bpe() -> Tokenizer:
    """A SentencePiece-style BPE: spaces become ``▁`` at the start of the next word."""
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    tokenizer.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=180, special_tokens=["<pad>", "<unk>", "<s>", "</s>"]))
    return tokenizer


def _saved(tokenizer: Tokenizer, directory: Path, **special_tokens: str) -> PreTrainedTokenizerFast:
    """Write ``tokenizer.json`` into ``directory`` and load it back as a transformers tokenizer."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "tokenizer.json"
    tokenizer.save(str(path))
    return PreTrainedTokenizerFast(tokenizer_file=str(path), **special_tokens)


def wordpiece_and_bpe(tmp_dir: Path) -> tuple[PreTrainedTokenizerFast, PreTrainedTokenizerFast]:
    """``(wordpiece, byte_level_bpe)`` trained on :data:`CORPUS`, saved under ``tmp_dir``."""
    tmp_dir = Path(tmp_dir)
    wordpiece = _saved(
        _wordpiece(), tmp_dir / "wordpiece",
        pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]",
    )
    bpe = _saved(_byte_level_bpe(), tmp_dir / "bpe", pad_token="<|endoftext|>", eos_token="<|endoftext|>", bos_token="<|endoftext|>")
    return wordpiece, bpe


def metaspace_bpe(tmp_dir: Path) -> PreTrainedTokenizerFast:
    """A SentencePiece-style (``▁``) BPE trained on :data:`CORPUS`, saved under ``tmp_dir``."""
    return _saved(
        _metaspace_bpe(), Path(tmp_dir) / "metaspace", pad_token="<pad>", unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )


def classification_assets(root: Path) -> dict:
    """A WordPiece (student) and a byte-level BPE (teacher) tokenizer saved under ``root``, and a labelled CSV of
    :data:`CORPUS` (``text``, ``label`` alternating ``neg``/``pos``): ``student``/``teacher`` directories, ``data``,
    and the two tokenizers as ``wordpiece``/``bpe``."""
    root = Path(root)
    wordpiece, bpe = wordpiece_and_bpe(root / "built")
    wordpiece.save_pretrained(root / "student_tokenizer")
    bpe.save_pretrained(root / "teacher_tokenizer")
    data = root / "train.csv"
    with data.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        writer.writerows([(text, "pos" if index % 2 else "neg") for index, text in enumerate(CORPUS)])
    return {"student": str(root / "student_tokenizer"), "teacher": str(root / "teacher_tokenizer"), "data": str(data),
            "bpe": bpe, "wordpiece": wordpiece}


def overlap_means(batch, teacher_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per student token, the mean of the teacher states whose character spans share a character with it
    (Python sets of characters, token by token); and which student tokens have such a partner."""
    rows, length = batch["input_ids"].shape
    means = torch.zeros(rows, length, teacher_states.shape[-1])
    partner = torch.zeros(rows, length, dtype=torch.bool)
    for row in range(rows):
        teacher_chars = [set(range(s, e)) if m else set() for (s, e), m in
                         zip(batch["teacher_offset_mapping"][row].tolist(), batch["teacher_attention_mask"][row].tolist())]
        for i, ((s, e), m) in enumerate(zip(batch["offset_mapping"][row].tolist(), batch["attention_mask"][row].tolist())):
            chosen = [j for j, chars in enumerate(teacher_chars) if m and chars & set(range(s, e))]
            if chosen:
                means[row, i], partner[row, i] = teacher_states[row, chosen].mean(0), True
    return means, partner
