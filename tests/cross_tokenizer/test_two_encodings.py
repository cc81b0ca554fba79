"""Two encodings of the same text: the classification data module writes a teacher's own encoding next to the
student's, the CLI links it to the method, the teacher reads it (live and through the teacher cache)."""

from __future__ import annotations

import copy

import pytest
import torch
import yaml

import lightning_kd.methods as methods
from lightning_kd.cross_tokenizer.teacher_tokenizers import TeacherTokenizers
from lightning_kd.data import GlueDataModule
from tests.cross_tokenizer.tokenizers import CORPUS, classification_assets, overlap_means
from tests.families import make_family_model


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """A WordPiece (student) and a byte-level BPE (teacher) tokenizer directory, and a labelled CSV of the corpus."""
    return classification_assets(tmp_path_factory.mktemp("two_encodings"))


def _data(assets, teacher_tokenizer, **options) -> GlueDataModule:
    data = GlueDataModule("text-classification", assets["student"], train_file=assets["data"], validation_file=assets["data"],
                          batch_size=8, teacher_tokenizer=teacher_tokenizer, **options)
    data.setup("fit")
    return data


def _text_of(offsets: torch.Tensor, text: str) -> str:
    """The characters a row's tokens cover, in order (spans may leave spaces out)."""
    return "".join(text[start:end] for start, end in offsets.tolist() if end > start).replace(" ", "")


def test_each_batch_carries_the_teachers_encoding_of_the_same_text_with_the_same_labels_and_order(assets):
    batch = next(iter(_data(assets, assets["teacher"]).val_dataloader()))
    plain = next(iter(_data(assets, None).val_dataloader()))
    for key in ("input_ids", "attention_mask", "labels"):
        assert torch.equal(batch[key], plain[key])  # the student's side is today's
    assert {"teacher_input_ids", "teacher_attention_mask", "teacher_offset_mapping", "offset_mapping"} <= set(batch)
    differs = False
    for row, text in enumerate(CORPUS[:8]):
        real = batch["teacher_attention_mask"][row].bool()
        ids = batch["teacher_input_ids"][row][real].tolist()
        assert assets["bpe"].decode(ids) == text  # the teacher's ids are the row's text
        assert _text_of(batch["teacher_offset_mapping"][row][real], text) == _text_of(batch["offset_mapping"][row], text) == text.replace(" ", "")
        differs |= len(ids) != int(batch["attention_mask"][row].sum()) - 2
    assert differs  # the two tokenizers do cut the text differently
    pad = assets["bpe"].pad_token_id
    assert bool((batch["teacher_input_ids"][~batch["teacher_attention_mask"].bool()] == pad).all())


def test_the_students_own_tokenizer_as_the_teachers_is_no_second_encoding(assets):
    data = _data(assets, assets["student"])
    assert data.teacher_encodings is None
    assert not any(key.startswith("teacher") or key == "offset_mapping" for key in next(iter(data.val_dataloader())))


def test_a_list_gives_each_teacher_its_prefix_and_the_cache_key_names_the_teachers_tokenizer(assets):
    data = _data(assets, [None, assets["teacher"]])
    assert data.teacher_encodings == [None, assets["teacher"]]
    assert "teacher1_input_ids" in next(iter(data.val_dataloader()))
    assert data.fingerprint["teacher_tokenizer"] == [None, assets["teacher"]]
    assert "teacher_tokenizer" not in _data(assets, None).fingerprint  # caches of same-tokenizer runs keep their keys


def test_teacher_inputs_are_its_own_keys_and_reading_them_twice_changes_nothing():
    tokenizers = TeacherTokenizers.of(["other", None])
    batch = {"input_ids": torch.ones(2, 3), "labels": torch.zeros(2), "teacher0_input_ids": torch.zeros(2, 5),
             "teacher0_attention_mask": torch.ones(2, 5)}
    inputs = tokenizers.inputs(batch, 0)
    assert torch.equal(inputs["input_ids"], batch["teacher0_input_ids"]) and "labels" in inputs
    assert tokenizers.inputs(inputs, 0).keys() == inputs.keys()
    assert tokenizers.inputs(batch, 1) is batch  # the second teacher reads the student's ids
    with pytest.raises(KeyError, match="teacher_tokenizer"):
        tokenizers.inputs({"input_ids": torch.ones(2, 3)}, 0)
    with pytest.raises(ValueError, match="one entry per teacher"):
        methods.KD(student=make_family_model("bert", layers=1), teacher=make_family_model("bert", layers=2),
                   teacher_tokenizer=["a", "b"])


def _models(assets):
    teacher = make_family_model("roberta", layers=2, seed=1, vocab_size=len(assets["bpe"]))
    student = make_family_model("bert", layers=2, seed=2, vocab_size=len(assets["wordpiece"]))
    return teacher, student


def test_kd_reads_the_teachers_logits_on_its_own_encoding(assets):
    teacher, student = _models(assets)
    method = methods.KD(student=student, teacher=copy.deepcopy(teacher), teacher_tokenizer=assets["teacher"],
                        export_tokenizer=assets["student"]).eval()
    batch = next(iter(_data(assets, assets["teacher"]).val_dataloader()))
    terms = method.compute_losses(batch)
    with torch.no_grad():
        want_teacher = teacher.eval()(input_ids=batch["teacher_input_ids"], attention_mask=batch["teacher_attention_mask"]).logits
        want_student = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    t = method.prediction.temperature
    soft = torch.nn.functional.kl_div((want_student / t).log_softmax(-1), (want_teacher / t).log_softmax(-1),
                                      log_target=True, reduction="batchmean") * t * t
    torch.testing.assert_close(terms["soft"].detach(), method.prediction.soft_weight * soft, rtol=1e-5, atol=1e-7)


def test_a_teacher_of_another_vocabulary_without_its_tokenizer_is_refused_naming_the_knob(assets):
    teacher, student = _models(assets)
    with pytest.raises(ValueError, match="teacher_tokenizer"):
        methods.KD(student=student, teacher=teacher)


def test_token_level_stages_are_refused_across_tokenizers():
    with pytest.raises(ValueError, match="masked_lm stage compares the two models' predictions token by token"):
        methods.KD(student=make_family_model("bert", "mlm", layers=1), teacher=make_family_model("bert", "mlm", layers=2),
                   teacher_tokenizer="other")


def test_the_cli_links_the_data_modules_teacher_tokenizer_and_the_teacher_cache_serves_its_rows(assets, tmp_path):
    from lightning_kd.distillation_cli import run_cli

    teacher, student = _models(assets)
    teacher.save_pretrained(tmp_path / "teacher")
    student.save_pretrained(tmp_path / "student")
    config = {
        "seed_everything": 0,
        "trainer": {"max_epochs": 2, "accelerator": "cpu", "logger": False, "enable_checkpointing": False,
                    "default_root_dir": str(tmp_path / "run"), "enable_progress_bar": False},
        "model": {"class_path": "lightning_kd.methods.KD", "init_args": {
            "teacher": str(tmp_path / "teacher"), "student": str(tmp_path / "student"),
            "teacher_cache": {"path": str(tmp_path / "cache")}}},
        "data": {"class_path": "lightning_kd.data.GlueDataModule", "init_args": {
            "task": "text-classification", "tokenizer": assets["student"], "train_file": assets["data"],
            "validation_file": assets["data"], "batch_size": 8, "max_length": 64, "teacher_tokenizer": assets["teacher"]}},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    cli = run_cli(["fit", "--config", str(path)])
    assert cli.model.teacher_tokenizers.shared == assets["teacher"]
    # Epoch 2 read every row from the cache: the rows it holds are the teacher's own encodings.
    batch = next(iter(cli.datamodule.val_dataloader()))
    batch["example_index"] = torch.arange(batch["input_ids"].shape[0])
    live = cli.model.teacher_forward(0, batch).logits
    cached = cli.model.run_teacher(0, batch).logits
    torch.testing.assert_close(cached, live, rtol=1e-4, atol=1e-5)


def test_hidden_state_terms_compare_each_student_token_with_the_teacher_tokens_sharing_its_characters(assets):
    teacher, student = _models(assets)
    method = methods.TinyBERT(student=student, teacher=copy.deepcopy(teacher), teacher_tokenizer=assets["teacher"],
                              export_tokenizer=assets["student"], terms=["hidden"], prediction=None).eval()
    batch = next(iter(_data(assets, assets["teacher"]).val_dataloader()))
    terms = method.compute_losses(batch)
    with torch.no_grad():
        s_states = student.eval()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True).hidden_states
        t_states = teacher.eval()(input_ids=batch["teacher_input_ids"], attention_mask=batch["teacher_attention_mask"],
                                  output_hidden_states=True).hidden_states
        want = 0.0
        for s, t in method.intermediate.pairs[0]["hidden"]:
            aligned, partner = overlap_means(batch, t_states[t])
            projected = method.intermediate.project(s_states[s], 0)
            want += ((projected - aligned) ** 2).mean(-1)[partner].mean()
    assert not bool(overlap_means(batch, t_states[0])[1][:, 0].any())  # [CLS] spells no text: it has no partner
    torch.testing.assert_close(terms["hidden"].detach(), torch.as_tensor(want, dtype=torch.float32), rtol=1e-4, atol=1e-6)


def test_attention_terms_are_refused_across_tokenizers_and_text_pairs_for_hidden_states():
    with pytest.raises(ValueError, match="attention or Q/K/V position by position"):
        methods.TinyBERT(student=make_family_model("bert", layers=2), teacher=make_family_model("bert", layers=4),
                         teacher_tokenizer="other")
    method = methods.TinyBERT(student=make_family_model("bert", layers=2), teacher=make_family_model("bert", layers=4),
                              teacher_tokenizer="other", terms=["hidden"])
    from tests.conftest import make_batch

    batch = make_batch("classification")
    batch["token_type_ids"][:, 6:] = 1  # a second text
    spans = torch.stack([torch.arange(12), torch.arange(12) + 1], -1).expand(4, 12, 2)
    batch.update(offset_mapping=spans, teacher_offset_mapping=spans, teacher_input_ids=batch["input_ids"],
                 teacher_attention_mask=batch["attention_mask"])
    with pytest.raises(ValueError, match="text pairs"):
        method.compute_losses(batch)
