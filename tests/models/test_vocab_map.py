"""The vocabulary map of VocabDistil: kept set, replacements, id round trips, compressed models and tokenizers."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForMaskedLM, AutoTokenizer

from lightning_kd.models.vocab_map import (
    VocabularyMap,
    compress_model_vocabulary,
    compressed_vocab_size,
    count_token_ids,
    pinned_token_ids,
    protected_token_ids,
    rank_tokens,
    remap_tokenizer_files,
    replacement_ids,
)
from tests.conftest import make_tiny_bert

TEXTS = ["the movie was good", "a terrible, boring film.", "zebra quixotic xylophone", "is it fun? yes"]


def test_compressed_size_rounds_up_to_the_multiple():
    assert compressed_vocab_size(0.5, 30522) == 15360  # bert-base: the spec's ≈15,360
    assert compressed_vocab_size(1000, 30522) == 1024
    assert compressed_vocab_size(0.5, 172, multiple=16) == 96
    with pytest.raises(ValueError, match="does not compress"):
        compressed_vocab_size(0.9, 172)  # 155 rows → 256 ≥ 172
    assert compressed_vocab_size(0.5, 172) == 128
    with pytest.raises(ValueError, match="> 0"):
        compressed_vocab_size(0, 100)


def test_ranking_puts_protected_tokens_first_then_frequency_ties_by_id():
    counts = torch.tensor([0, 5, 9, 5, 1, 7, 3, 50])  # id 7 is past the tokenizer's end (size 7)
    order = rank_tokens(counts, protected=[0, 4], tokenizer_size=7)
    # protected by count (4: 1, 0: 0), then 2 (9), 5 (7), 1 and 3 (5, tie → id order), 6 (3), then id 7 last
    assert order.tolist() == [4, 0, 2, 5, 1, 3, 6, 7]


def _tiny_map(embeddings=None, similarity="decoder", unk_id=None):
    counts = torch.tensor([0, 0, 10, 9, 8, 1, 7, 2, 6, 0])
    vmap = VocabularyMap(10, 5).build(counts, [0, 1], tokenizer_size=9, embeddings=embeddings, similarity=similarity, unk_id=unk_id)
    return vmap


def test_kept_set_and_unk_replacement_on_a_tiny_corpus():
    vmap = _tiny_map(unk_id=1)
    # ranks: protected 0, 1; then 2 (10), 3 (9), 4 (8) → M = 5 rows
    assert vmap.row_token.tolist() == [0, 1, 2, 3, 4]
    assert vmap.kept.tolist() == [True] * 5 + [False] * 5
    assert vmap.student_row.tolist() == [0, 1, 2, 3, 4, 1, 1, 1, 1, 1]  # every dropped id reads [UNK]'s row
    with pytest.raises(ValueError, match="unk"):
        _tiny_map()


@pytest.mark.parametrize("similarity", ["decoder", "cosine", "euclidean"])
def test_dropped_ids_read_their_most_similar_kept_token(similarity):
    g = torch.Generator().manual_seed(0)
    embeddings = torch.randn(10, 4, generator=g) * torch.rand(10, 1, generator=g) * 3
    vmap = _tiny_map(embeddings, similarity)
    kept = vmap.row_token.tolist()

    def score(a, b):
        ea, eb = embeddings[a].tolist(), embeddings[b].tolist()
        dot = sum(x * y for x, y in zip(ea, eb))
        if similarity == "decoder":
            return dot
        if similarity == "cosine":
            return dot / (sum(x * x for x in ea) ** 0.5 * sum(y * y for y in eb) ** 0.5)
        return -sum((x - y) ** 2 for x, y in zip(ea, eb))

    for v in range(10):
        expected = v if v in kept else max(kept, key=lambda k: score(v, k))
        assert vmap.row_token[vmap.student_row[v]].item() == expected, v
    assert torch.equal(vmap.replaced_ids(torch.arange(10)), vmap.row_token[vmap.student_row])


def test_replacement_ids_chunks_agree():
    embeddings = torch.randn(50, 8)
    kept = torch.zeros(50, dtype=torch.bool)
    kept[::3] = True
    torch.testing.assert_close(replacement_ids(embeddings, kept, chunk_size=4), replacement_ids(embeddings, kept, chunk_size=1000))


def test_ids_labels_and_logit_columns_round_trip():
    vmap = _tiny_map(torch.randn(10, 4))
    ids = torch.tensor([[0, 2, 7, 9], [4, 4, 1, 3]])
    rows = vmap.student_ids(ids)
    assert rows.max() < 5
    kept_ids = torch.tensor([0, 2, 4, 1, 3])
    assert torch.equal(vmap.row_token[vmap.student_ids(kept_ids)], kept_ids)  # kept ids survive the round trip
    labels = torch.tensor([[-100, 2, -100, 9]])
    mapped = vmap.student_labels(labels)
    assert mapped[0, 0] == -100 and mapped[0, 2] == -100 and mapped[0, 1] == vmap.student_row[2] and mapped[0, 3] == vmap.student_row[9]
    teacher = torch.arange(10.0).expand(2, 10)
    assert torch.equal(vmap.kept_teacher_logits(teacher)[0], vmap.row_token.float())
    student = torch.arange(5.0).expand(2, 5)
    assert torch.equal(vmap.full_student_logits(student)[0], vmap.student_row.float())


def test_save_and_load(tmp_path):
    vmap = _tiny_map(torch.randn(10, 4))
    vmap.save(tmp_path / "vocab_map.json")
    other = VocabularyMap(10, 5).load(tmp_path)
    assert torch.equal(other.student_row, vmap.student_row) and torch.equal(other.row_token, vmap.row_token) and other.is_built
    with pytest.raises(ValueError, match="does not fit"):
        VocabularyMap(10, 6).load(tmp_path)
    with pytest.raises(RuntimeError, match="not built"):
        VocabularyMap(10, 5).student_ids(torch.tensor([1]))


def test_count_token_ids_reads_lists_and_datasets():
    from datasets import Dataset

    rows = [[1, 2, 2], [3], [2, 9, 11]]
    assert count_token_ids(rows, 10).tolist() == [0, 1, 3, 1, 0, 0, 0, 0, 0, 1]
    assert count_token_ids(rows, 10, limit=1).tolist() == [0, 1, 2, 0, 0, 0, 0, 0, 0, 0]
    assert count_token_ids(Dataset.from_dict({"input_ids": rows}), 10).tolist() == count_token_ids(rows, 10).tolist()


def test_compressed_model_keeps_the_kept_rows_and_reloads_with_plain_transformers(tmp_path):
    model = make_tiny_bert("mlm", seed=1).eval()
    vmap = VocabularyMap(220, 64).build(torch.randint(0, 50, (220,)), [0, 1, 2, 3, 4], tokenizer_size=200, embeddings=model.get_input_embeddings().weight)
    ids = torch.tensor([[2, 7, 30, 4, 3, 0]])
    kept_ids = vmap.row_token[torch.tensor([[0, 5, 9, 20, 3, 1]])]  # ids that own a row
    with torch.no_grad():
        before = model(input_ids=kept_ids).logits
    compress_model_vocabulary(model, vmap.row_token, vmap.student_row)
    assert model.config.vocab_size == 64 and model.get_input_embeddings().weight.shape == (64, 32)
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    assert model.config.pad_token_id == vmap.student_row[0].item()
    with torch.no_grad():
        after = model(input_ids=vmap.student_ids(kept_ids)).logits
    torch.testing.assert_close(after, before[..., vmap.row_token])  # same model, restricted to the kept columns
    model.save_pretrained(tmp_path / "compressed")
    reloaded = AutoModelForMaskedLM.from_pretrained(tmp_path / "compressed").eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=vmap.student_ids(ids)).logits, model(input_ids=vmap.student_ids(ids)).logits)


def test_remapped_tokenizer_emits_student_rows(tiny_tokenizer, tmp_path):
    vocab = len(tiny_tokenizer)
    counts = count_token_ids(tiny_tokenizer(TEXTS * 3, add_special_tokens=False)["input_ids"], vocab)
    protected = protected_token_ids(tiny_tokenizer, ["Good", "terrible"])
    assert set(tiny_tokenizer.all_special_ids) <= set(protected)
    assert tiny_tokenizer.convert_tokens_to_ids("good") in protected
    vmap = VocabularyMap(vocab, 48).build(counts, protected, vocab, embeddings=torch.randn(vocab, 8))
    tiny_tokenizer.save_pretrained(tmp_path)
    assert remap_tokenizer_files(tmp_path, vmap.student_row.tolist())
    remapped = AutoTokenizer.from_pretrained(tmp_path)
    original = tiny_tokenizer(TEXTS, ["a pair", "of texts", "with", "type ids"], padding=True)
    mapped = remapped(TEXTS, ["a pair", "of texts", "with", "type ids"], padding=True)
    assert mapped["input_ids"] == vmap.student_ids(torch.tensor(original["input_ids"])).tolist()
    assert mapped["attention_mask"] == original["attention_mask"] and mapped["token_type_ids"] == original["token_type_ids"]
    assert remapped.pad_token_id == vmap.student_row[tiny_tokenizer.pad_token_id]
    assert max(max(row) for row in mapped["input_ids"]) < 48
    assert not remap_tokenizer_files(tmp_path / "nothing_here", vmap.student_row.tolist())


def test_a_tokenizer_without_an_id_table_is_moved_aside(tmp_path):
    import json

    (tmp_path / "tokenizer.json").write_text(json.dumps({"model": {"type": "Unigram", "vocab": [["a", 0.0]]}}))
    (tmp_path / "tokenizer_config.json").write_text("{}")
    with pytest.warns(UserWarning, match="teacher_tokenizer"):
        assert not remap_tokenizer_files(tmp_path, [0])
    assert not (tmp_path / "tokenizer.json").exists() and (tmp_path / "teacher_tokenizer" / "tokenizer.json").is_file()


@pytest.mark.parametrize("family", ["bert", "roberta", "distilbert", "electra", "albert", "deberta_v2", "mpnet", "xlm_roberta", "modernbert", "gpt2", "llama", "qwen2"])
def test_every_family_compresses_and_reloads(family, tmp_path):
    """Each family's LM keeps its kept columns and reloads with the same logits: RoBERTa/XLM-R keep a
    second reference to the decoder bias (``lm_head.bias``) that must shrink with it, and RoBERTa/XLM-R/
    MPNet count positions from one token id, which must keep its own row."""
    from transformers import AutoModelForCausalLM

    from tests.families import DECODERS
    from tests.models.test_vocab_head import make_lm

    model = make_lm(family, layers=2, seed=1).eval()
    pinned = pinned_token_ids(model)
    assert pinned == {"roberta": [0], "xlm_roberta": [0], "mpnet": [1]}.get(family, [])  # pad id 0; MPNet's is always 1
    counts = torch.randint(0, 50, (220,), generator=torch.Generator().manual_seed(3))
    vmap = VocabularyMap(220, 64).build(counts, [2, 3, 4], tokenizer_size=200, unk_id=1, pinned=pinned)
    assert all(vmap.student_row[i] == i for i in pinned)
    kept_ids = vmap.row_token[torch.tensor([[2, 5, 9, 20, 3, 7]])]
    with torch.no_grad():
        before = model(input_ids=kept_ids).logits
    compress_model_vocabulary(model, vmap.row_token, vmap.student_row)
    sizes = {name: p.shape[0] for name, p in model.named_parameters(remove_duplicate=False) if p.dim() == 1 and p.shape[0] in (64, 220)}
    assert set(sizes.values()) <= {64}, sizes  # no vocabulary-sized parameter left at the old size
    with torch.no_grad():
        after = model(input_ids=vmap.student_ids(kept_ids)).logits
    torch.testing.assert_close(after, before[..., vmap.row_token])
    model.save_pretrained(tmp_path)
    auto = AutoModelForCausalLM if family in DECODERS else AutoModelForMaskedLM
    reloaded = auto.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=vmap.student_ids(kept_ids)).logits, after)


def test_pinned_ids_keep_their_own_row_and_the_kept_set():
    counts = torch.tensor([0, 0, 10, 9, 8, 1, 7, 2, 6, 0])
    free = VocabularyMap(10, 5).build(counts, [0, 1], tokenizer_size=9, unk_id=1)
    pinned = VocabularyMap(10, 5).build(counts, [0, 1], tokenizer_size=9, unk_id=1, pinned=[3])
    assert pinned.row_token[3] == 3 and pinned.student_row[3] == 3
    assert torch.equal(pinned.kept, free.kept)
    low = VocabularyMap(10, 6).build(counts, [0, 1], tokenizer_size=9, unk_id=1, pinned=[5])  # a rare id is kept for it
    assert low.student_row[5] == 5 and low.kept[5] and not low.kept[6]
    with pytest.raises(ValueError, match="own row"):
        VocabularyMap(10, 5).build(counts, [0, 1], tokenizer_size=9, unk_id=1, pinned=[7])


def test_a_compressed_decoder_generates_with_its_own_special_rows():
    from tests.families import make_family_model

    model = make_family_model("llama", "causal", layers=2, seed=1)
    model.generation_config.eos_token_id = [3, 7]
    model.generation_config.pad_token_id = 0
    row_token = torch.tensor([0, 1, 2, 3, 7] + list(range(10, 40)))
    student_row = torch.zeros(220, dtype=torch.long)
    student_row[row_token] = torch.arange(row_token.numel())
    compress_model_vocabulary(model, row_token, student_row)
    assert model.config.eos_token_id == 3 and model.generation_config.eos_token_id == [3, 4]
    assert model.generation_config.pad_token_id == 0 and model.config.vocab_size == 35
    out = model.generate(torch.tensor([[2, 10, 11]]), max_new_tokens=3, do_sample=False)
    assert out.shape[1] <= 6 and int(out.max()) < 35
