"""VocabDistil (GLMD+vc): the compressed student, the compared columns, map building at fit start, export."""

from __future__ import annotations

import math

import pytest
import pytorch_lightning as pl
import torch
from transformers import (
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
)

from lightning_kd.data import PretrainDataModule
from lightning_kd.losses.prediction import PredictionLoss
from lightning_kd.methods import VocabDistil
from lightning_kd.models.vocab_map import MAP_FILE
from tests.cli_fixtures import write_corpus
from tests.conftest import make_batch, make_tiny_bert
from tests.methods.contract import check_contract

ROWS = 96  # 0.5 × the tiny tokenizer's 172 tokens, rounded up to a multiple of 16
INPUTS = ("input_ids", "attention_mask", "token_type_ids")


@pytest.fixture
def counts_file(tmp_path):
    g = torch.Generator().manual_seed(0)
    path = tmp_path / "counts.txt"
    path.write_text("\n".join(str(c) for c in torch.randint(0, 100, (220,), generator=g).tolist()))
    return str(path)


def _method(stage, tokenizer_dir, counts_file, **options):
    teacher = make_tiny_bert(stage, seed=1)
    student = make_tiny_bert(stage, seed=2, layers=2, hidden=16)
    if stage == "classification":
        options.setdefault("vocab_head", "tied")
    return VocabDistil(
        teacher=teacher, student=student, export_tokenizer=str(tokenizer_dir), token_counts=counts_file,
        size_multiple=16, temperature=2.0, **options,
    )


def _kl(student, teacher, temperature):
    ps, pt = (student / temperature).log_softmax(-1).double(), (teacher / temperature).log_softmax(-1).double()
    return temperature**2 * (pt.exp() * (pt - ps)).sum(-1)


@pytest.mark.parametrize("stage", ["classification", "mlm"])
def test_contract(stage, tiny_tokenizer_dir, counts_file, tmp_path):
    method = _method(stage, tiny_tokenizer_dir, counts_file)
    assert method.student.config.vocab_size == ROWS
    # Ids below the student's size, so the contract's raw-id export check can also run them.
    check_contract(method, make_batch(stage, vocab_size=ROWS), tmp_path)
    assert (tmp_path / "export" / MAP_FILE).is_file()


@pytest.mark.parametrize("columns", ["kept", "all"])
def test_loss_compares_the_chosen_columns(columns, tiny_tokenizer_dir, counts_file):
    method = _method("mlm", tiny_tokenizer_dir, counts_file, columns=columns).eval()
    batch, vmap = make_batch("mlm"), method.vocab_map
    inputs = {k: batch[k] for k in INPUTS}
    with torch.no_grad():
        zs = method.student(**{**inputs, "input_ids": vmap.student_row[batch["input_ids"]]}).logits  # (B, N, M)
        zt = method.teachers[0](**inputs).logits  # (B, N, V)
    if columns == "kept":
        s, t = zs, zt[..., vmap.row_token]
    else:
        s, t = zs[..., vmap.student_row], zt
    rows = _kl(s, t, 2.0)
    expected = rows[batch["attention_mask"].bool()].mean()
    assert method.compute_losses(batch)["vocabulary"].item() == pytest.approx(expected.item(), rel=1e-4)


def test_student_reads_rows_and_teacher_reads_replacements(tiny_tokenizer_dir, counts_file):
    method = _method("mlm", tiny_tokenizer_dir, counts_file, teacher_inputs="replaced",
                     prediction=PredictionLoss(soft_weight=0.0, hard_weight=1.0, temperature=2.0))
    seen = {}

    def record(name):  # a forward hook sees the inputs the forward ran with (after any pre-hook)
        def hook(_module, args, kwargs, _output):
            seen[name] = {k: kwargs[k].clone() for k in ("input_ids", "labels") if kwargs.get(k) is not None}
        return hook

    handles = [method.student.register_forward_hook(record("student"), with_kwargs=True),
               method.teachers[0].register_forward_hook(record("teacher"), with_kwargs=True)]
    batch = make_batch("mlm")
    method.eval()
    method.compact_heads = False  # the model's own forward receives (and scores) the labels
    terms = method.compute_losses(batch)
    for handle in handles:
        handle.remove()
    vmap = method.vocab_map
    assert torch.equal(seen["student"]["input_ids"], vmap.student_row[batch["input_ids"]])
    assert torch.equal(seen["teacher"]["input_ids"], vmap.row_token[vmap.student_row[batch["input_ids"]]])
    labels = seen["student"]["labels"]
    assert torch.equal(labels.eq(-100), batch["labels"].eq(-100)) and labels.max() < ROWS
    assert torch.isfinite(terms["hard"])
    # Compact heads take the labels after the mapping hook: the hard loss is the same, on student rows.
    method.compact_heads = True
    torch.testing.assert_close(method.compute_losses(batch)["hard"], terms["hard"], rtol=1e-5, atol=1e-6)
    # Outside the step the student is a plain model again (no mapping hook left behind).
    assert not method.student._forward_pre_hooks


def test_compression_shrinks_the_parameters_and_starts_from_the_kept_rows(tiny_tokenizer_dir, counts_file):
    teacher = make_tiny_bert("mlm", seed=1)
    method = VocabDistil(
        teacher=teacher, student_init="teacher_first", student_layers=2, export_tokenizer=str(tiny_tokenizer_dir),
        size_multiple=16,
    )
    before = sum(p.numel() for p in method.student.parameters())
    method.build_vocabulary_map(torch.randint(0, 100, (220,)))
    after = sum(p.numel() for p in method.student.parameters())
    assert before - after == (220 - ROWS) * (32 + 1)  # embedding rows and the MLM decoder's bias
    rows = method.vocab_map.row_token
    torch.testing.assert_close(method.student.get_input_embeddings().weight, teacher.get_input_embeddings().weight[rows])
    with pytest.raises(RuntimeError, match="already built"):
        method.build_vocabulary_map(torch.zeros(220, dtype=torch.long))


def test_export_reloads_with_plain_transformers_and_matches_after_mapping(tiny_tokenizer_dir, tiny_tokenizer, counts_file, tmp_path):
    method = _method("mlm", tiny_tokenizer_dir, counts_file).eval()
    out = method.export_student(tmp_path / "student")
    model = AutoModelForMaskedLM.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    texts = ["the movie was good", "a terrible, boring film. zzz"]
    encoded = tokenizer(texts, padding=True, return_tensors="pt")
    original = tiny_tokenizer(texts, padding=True, return_tensors="pt")
    assert torch.equal(encoded["input_ids"], method.vocab_map.student_row[original["input_ids"]])
    with torch.no_grad():
        exported = model(**encoded).logits
        in_method = method.student(**{**original, "input_ids": method.vocab_map.student_row[original["input_ids"]]}).logits
    torch.testing.assert_close(exported, in_method)
    # The documented pure-Python mapping gives the same ids from the teacher's tokenizer.
    import json

    student_row = json.loads((out / MAP_FILE).read_text())["student_row"]
    assert [[student_row[i] for i in row] for row in original["input_ids"].tolist()] == encoded["input_ids"].tolist()


def test_finetuning_stage_reads_the_map_exported_with_the_student(tiny_tokenizer_dir, counts_file, tmp_path):
    pretrain = _method("mlm", tiny_tokenizer_dir, counts_file)
    out = pretrain.export_student(tmp_path / "pretrained")
    with pytest.raises(ValueError, match="emits student rows"):  # the export's tokenizer is not the data's
        VocabDistil(teacher=make_tiny_bert(seed=1), student=str(out), num_labels=2, vocab_head="tied", size_multiple=16)
    method = VocabDistil(
        teacher=make_tiny_bert(seed=1), student=str(out), num_labels=2, export_tokenizer=str(tiny_tokenizer_dir), size_multiple=16,
        vocab_head="mlm", teacher_mlm_heads=[make_tiny_bert("mlm", seed=1)],
    )
    assert method.vocab_map.is_built and torch.equal(method.vocab_map.student_row, pretrain.vocab_map.student_row)
    assert method.student.config.vocab_size == ROWS and method.student_vocab_head.bias.numel() == ROWS
    terms = method.compute_losses(make_batch())
    assert torch.isfinite(terms["loss"])
    last = VocabDistil(
        teacher=make_tiny_bert(seed=1), student=str(out), num_labels=2, export_tokenizer=str(tiny_tokenizer_dir), size_multiple=16,
        vocabulary_weight=0.0, prediction=PredictionLoss(soft_weight=1.0, hard_weight=0.0, temperature=15.0, soft_loss="ce", t2_scale=False),
    )
    with pytest.raises(ValueError, match="compressed_size=0.25 gives"):
        VocabDistil(teacher=make_tiny_bert(seed=1), student=str(out), num_labels=2, export_tokenizer=str(tiny_tokenizer_dir), size_multiple=16, vocab_head="tied", compressed_size=0.25)
    with pytest.raises(ValueError, match="similarity only shape a new"):
        VocabDistil(teacher=make_tiny_bert(seed=1), student=str(out), num_labels=2, export_tokenizer=str(tiny_tokenizer_dir), size_multiple=16, vocab_head="tied", similarity="cosine")
    assert set(last.compute_losses(make_batch())) == {"soft", "loss"}
    exported = last.export_student(tmp_path / "finetuned")
    assert AutoModelForSequenceClassification.from_pretrained(exported).config.vocab_size == ROWS


def test_map_is_built_at_fit_start_from_the_training_data_and_checkpointed(tiny_tokenizer_dir, tmp_path):
    corpus = write_corpus(tmp_path)
    data = PretrainDataModule(tokenizer=str(tiny_tokenizer_dir), train_files=[str(corpus)], block_size=16, batch_size=4, validation_fraction=0.1)
    method = VocabDistil(
        teacher=make_tiny_bert("mlm", seed=1), student=make_tiny_bert("mlm", seed=2, layers=2, hidden=16),
        export_tokenizer=str(tiny_tokenizer_dir), size_multiple=16, protected_words=["movie"],
    )
    assert not method.vocab_map.is_built
    with pytest.raises(RuntimeError, match="fitting starts"):
        method.compute_losses(make_batch("mlm"))
    trainer = pl.Trainer(
        accelerator="cpu", max_steps=3, limit_val_batches=1, num_sanity_val_steps=0, logger=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
    )
    trainer.fit(method, datamodule=data)
    vmap = method.vocab_map
    assert vmap.is_built and method.student.config.vocab_size == ROWS
    tokenizer = data.tokenizer
    frequent = tokenizer.convert_tokens_to_ids(["the", "movie", "[MASK]", "[PAD]"])
    assert vmap.kept[frequent].all()
    checkpoint = torch.load(trainer.checkpoint_callback.best_model_path or next((tmp_path).rglob("*.ckpt")), weights_only=False)
    assert "vocab_map.student_row" in checkpoint["state_dict"]
    fresh = VocabDistil(
        teacher=make_tiny_bert("mlm", seed=1), student=make_tiny_bert("mlm", seed=2, layers=2, hidden=16),
        export_tokenizer=str(tiny_tokenizer_dir), size_multiple=16,
    )
    fresh.on_load_checkpoint(checkpoint)
    fresh.load_state_dict(checkpoint["state_dict"], strict=True)
    assert torch.equal(fresh.vocab_map.student_row, vmap.student_row)
    torch.testing.assert_close(fresh.student.get_input_embeddings().weight, method.student.get_input_embeddings().weight)


def test_two_teachers(tiny_tokenizer_dir, counts_file):
    method = VocabDistil(
        teachers=[make_tiny_bert("mlm", seed=1), make_tiny_bert("mlm", seed=3, layers=3, hidden=24)],
        student=make_tiny_bert("mlm", seed=2, layers=2, hidden=16), export_tokenizer=str(tiny_tokenizer_dir),
        token_counts=counts_file, size_multiple=16, similarity_teacher=1, top_n=10,
    )
    assert torch.isfinite(method.compute_losses(make_batch("mlm"))["loss"])


def test_bad_inputs_fail_fast(tiny_tokenizer_dir, counts_file, tmp_path):
    teacher, student = make_tiny_bert("mlm", seed=1), make_tiny_bert("mlm", seed=2, layers=2, hidden=16)
    common = {"teacher": teacher, "student": student, "export_tokenizer": str(tiny_tokenizer_dir)}
    with pytest.raises(ValueError, match="does not compress"):
        VocabDistil(compressed_size=0.9, **common)
    with pytest.raises(ValueError, match="similarity_teacher"):
        VocabDistil(similarity_teacher=1, **common)
    pretrain = _method("mlm", tiny_tokenizer_dir, counts_file)
    map_path = pretrain.vocab_map.save(tmp_path / MAP_FILE)
    with pytest.raises(ValueError, match="not both"):
        VocabDistil(vocab_map=str(map_path), token_counts=counts_file, **common)
    with pytest.raises(ValueError, match="no vocabulary map"):
        VocabDistil(teacher=teacher, student=pretrain.student, export_tokenizer=str(tiny_tokenizer_dir), size_multiple=16)
    with pytest.raises(ValueError, match="student has 300"):
        VocabDistil(teacher=teacher, student=make_tiny_bert("mlm", seed=2, layers=2, vocab_size=300), export_tokenizer=str(tiny_tokenizer_dir))
    with pytest.raises(ValueError, match="share one vocabulary"):
        VocabDistil(teachers=[teacher, make_tiny_bert("mlm", seed=3, vocab_size=300)], student=student)
    with pytest.raises(ValueError, match="fewer than all"):
        VocabDistil(top_n=128, size_multiple=16, **common)
    with pytest.raises(ValueError, match="tokenizer"):
        VocabDistil(teacher=teacher, student=student, size_multiple=16, token_counts=counts_file)
    assert math.isfinite(VocabDistil(vocab_map=str(map_path), size_multiple=16, **common).compute_losses(make_batch("mlm"))["loss"].item())


def test_the_token_position_ids_count_from_keeps_its_row_or_the_student_is_refused(tiny_tokenizer_dir, counts_file, tmp_path):
    """RoBERTa counts positions from its pad id: the map keeps that token at its own row; a map that moves
    it, or a vocabulary too small to hold it there, is refused at construction."""
    from transformers import AutoModelForMaskedLM

    from lightning_kd.models.vocab_map import VocabularyMap
    from tests.families import family_config

    def roberta(layers, seed, **changes):
        config = family_config("roberta", layers)
        for name, value in changes.items():
            setattr(config, name, value)
        torch.manual_seed(seed)
        return AutoModelForMaskedLM.from_config(config)

    common = {"export_tokenizer": str(tiny_tokenizer_dir), "size_multiple": 16}
    method = VocabDistil(teacher=roberta(4, 1), student=roberta(2, 2), token_counts=counts_file, **common)
    assert method.pinned_ids == [0] and method.vocab_map.student_row[0] == 0
    counts = torch.arange(220, 0, -1)
    counts[0] = 0  # [PAD] ranks last among the special tokens: row 4 when nothing pins it
    moved = VocabularyMap(220, ROWS).build(counts, [0, 1, 2, 3, 4], tokenizer_size=172, unk_id=1)
    assert moved.student_row[0] == 4
    moved.save(tmp_path / MAP_FILE)
    with pytest.raises(ValueError, match=r"moves token 0 to row 4, but RobertaForMaskedLM \(roberta\) derives position ids"):
        VocabDistil(teacher=roberta(4, 1), student=roberta(2, 2), vocab_map=str(tmp_path / MAP_FILE), **common)
    with pytest.raises(ValueError, match=r"\(roberta\) derives position ids from token id \[150\].*larger compressed_size"):
        VocabDistil(teacher=roberta(4, 1), student=roberta(2, 2, pad_token_id=150, max_position_embeddings=216), token_counts=counts_file, **common)
    assert VocabDistil(
        teacher=make_tiny_bert("mlm", seed=1), student=make_tiny_bert("mlm", seed=2, layers=2), token_counts=counts_file, **common
    ).pinned_ids == []
