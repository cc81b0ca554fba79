"""A causal-LM teacher of another vocabulary: the soft term compares next-token distributions where both encodings
have read the same text, at the student's scored positions; everything that would pair other positions is refused."""

from __future__ import annotations

import copy
import math

import pytest
import torch

import lightning_kd.methods as methods
from lightning_kd.losses.cross_vocabulary import VocabularyMatch
from lightning_kd.losses.prediction import PredictionLoss
from tests.cross_tokenizer.tokenizers import CORPUS, metaspace_bpe, wordpiece_and_bpe
from tests.families import make_family_model

TEXTS = CORPUS[:3]


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    root = tmp_path_factory.mktemp("causal_across")
    _, bpe = wordpiece_and_bpe(root / "built")
    metaspace = metaspace_bpe(root / "built")
    bpe.save_pretrained(root / "student")
    metaspace.save_pretrained(root / "teacher")
    return {"student": bpe, "teacher": metaspace, "student_dir": str(root / "student"), "teacher_dir": str(root / "teacher")}


def _encode(tokenizer, prefix: str = "", texts: list[str] = TEXTS) -> dict[str, torch.Tensor]:
    """One text per row, right-padded, with character offsets; every real token a target (plain text)."""
    encoded = [tokenizer(text, add_special_tokens=False, return_offsets_mapping=True) for text in texts]
    length = max(len(e["input_ids"]) for e in encoded)
    ids = torch.full((len(texts), length), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    offsets = torch.zeros(len(texts), length, 2, dtype=torch.long)
    for row, e in enumerate(encoded):
        n = len(e["input_ids"])
        ids[row, :n], mask[row, :n] = torch.tensor(e["input_ids"]), 1
        offsets[row, :n] = torch.tensor(e["offset_mapping"])
    batch = {"input_ids": ids, "attention_mask": mask, "offset_mapping": offsets}
    if not prefix:
        batch["labels"] = ids.masked_fill(mask == 0, -100)
    return {prefix + key: value for key, value in batch.items()}


def _batch(tokenizers) -> dict[str, torch.Tensor]:
    return {**_encode(tokenizers["student"]), **_encode(tokenizers["teacher"], "teacher_")}


def _models(tokenizers):
    student = make_family_model("llama", "causal", layers=2, seed=2, vocab_size=len(tokenizers["student"]))
    teacher = make_family_model("qwen2", "causal", layers=2, seed=1, vocab_size=len(tokenizers["teacher"]))
    return student, teacher


def _kd(tokenizers, student, teacher, **prediction):
    return methods.KD(student=copy.deepcopy(student), teacher=copy.deepcopy(teacher), teacher_tokenizer=tokenizers["teacher_dir"],
                      export_tokenizer=tokenizers["student_dir"], prediction=PredictionLoss(hard_weight=0.0, **prediction)).eval()


def _independent_pairs(batch) -> list[tuple[int, int, int]]:
    """(row, student position, teacher position) whose tokens end at the same character, with a scored
    next token (ASCII text: no token holds part of a character)."""
    pairs = []
    for row in range(batch["input_ids"].shape[0]):
        ends = {int(end): j for j, (start, end) in enumerate(batch["teacher_offset_mapping"][row].tolist())
                if end > start and batch["teacher_attention_mask"][row, j]}
        real = int(batch["attention_mask"][row].sum())
        for i, (start, end) in enumerate(batch["offset_mapping"][row].tolist()[: real - 1]):  # the last has no next token
            if end > start and end in ends and int(batch["labels"][row, i + 1]) != -100:  # position i predicts token i + 1
                pairs.append((row, i, ends[end]))
    return pairs


def _expected_uld(batch, student, teacher, temperature: float) -> float:
    """The mean ULD distance over the independent pairs, from the models' own logits and Python sorts."""
    with torch.no_grad():
        s_logits = student.eval()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        t_logits = teacher.eval()(input_ids=batch["teacher_input_ids"], attention_mask=batch["teacher_attention_mask"]).logits
    distances = []
    for row, i, j in _independent_pairs(batch):
        q = sorted((s_logits[row, i] / temperature).softmax(-1).tolist(), reverse=True)
        p = sorted((t_logits[row, j] / temperature).softmax(-1).tolist(), reverse=True)
        width = max(len(p), len(q))
        q, p = q + [0.0] * (width - len(q)), p + [0.0] * (width - len(p))
        distances.append(sum(abs(a - b) for a, b in zip(q, p)))
    return sum(distances) / len(distances)


def test_uld_at_the_positions_that_read_the_same_text_against_an_independent_formula(tokenizers):
    student, teacher = _models(tokenizers)
    method = _kd(tokenizers, student, teacher, temperature=2.0)
    batch = _batch(tokenizers)
    terms = method.compute_losses(batch)
    assert len(_independent_pairs(batch)) >= 3 * 5  # every word end of three sentences, at least
    want = _expected_uld(batch, student, teacher, 2.0)
    torch.testing.assert_close(terms["soft"].detach(), torch.tensor(want, dtype=torch.float32), rtol=1e-4, atol=1e-6)

def _boundaries(batch, row: int) -> list[tuple[int, int]]:
    """Every (student, teacher) position pair of one row whose real tokens end at the same character, in order."""
    ends = {int(end): j for j, (start, end) in enumerate(batch["teacher_offset_mapping"][row].tolist())
            if end > start and batch["teacher_attention_mask"][row, j]}
    return [(i, ends[int(end)]) for i, (start, end) in enumerate(batch["offset_mapping"][row].tolist())
            if end > start and batch["attention_mask"][row, i] and int(end) in ends]


def _expected_merged_uld(batch, student, teacher, temperature: float) -> tuple[float, int]:
    """The mean ULD between rows scaled by the probability of the rest of the text up to the next shared boundary
    (chain rule over each side's own actual tokens), written loop by loop; and how many pieces had several tokens."""
    with torch.no_grad():
        s_lp = (student.eval()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits / temperature).log_softmax(-1)
        t_lp = (teacher.eval()(input_ids=batch["teacher_input_ids"], attention_mask=batch["teacher_attention_mask"]).logits
                / temperature).log_softmax(-1)
    s_ids, t_ids, labels = batch["input_ids"], batch["teacher_input_ids"], batch["labels"]
    distances, longer = [], 0
    for row in range(s_ids.shape[0]):
        bounds = _boundaries(batch, row)
        for (i, j), (i_next, j_next) in zip(bounds, bounds[1:]):
            if any(int(labels[row, m + 1]) == -100 for m in range(i, i_next)):  # position m predicts token m + 1
                continue
            longer += i_next > i + 1 or j_next > j + 1
            c_s = math.exp(sum(float(s_lp[row, m, s_ids[row, m + 1]]) for m in range(i + 1, i_next)))
            c_t = math.exp(sum(float(t_lp[row, m, t_ids[row, m + 1]]) for m in range(j + 1, j_next)))
            q = [c_s * x for x in sorted(s_lp[row, i].exp().tolist(), reverse=True)]
            p = [c_t * x for x in sorted(t_lp[row, j].exp().tolist(), reverse=True)]
            width = max(len(p), len(q))
            q, p = q + [0.0] * (width - len(q)), p + [0.0] * (width - len(p))
            distances.append(sum(abs(a - b) for a, b in zip(q, p)))
    return sum(distances) / len(distances), longer


def _characters(tokenizer, prefix: str, space: str) -> dict[str, torch.Tensor]:
    """Each text spelled one character per token (``space`` for a blank), so every multi-character token of the
    other side's encoding faces a piece of several tokens; as :func:`_encode` otherwise."""
    vocabulary = tokenizer.get_vocab()
    ids = [[vocabulary[space if c == " " else c] for c in text] for text in TEXTS]
    length = max(map(len, ids))
    batch = {"input_ids": torch.full((len(TEXTS), length), tokenizer.pad_token_id, dtype=torch.long),
             "attention_mask": torch.zeros(len(TEXTS), length, dtype=torch.long),
             "offset_mapping": torch.zeros(len(TEXTS), length, 2, dtype=torch.long)}
    for row, row_ids in enumerate(ids):
        batch["input_ids"][row, : len(row_ids)] = torch.tensor(row_ids)
        batch["attention_mask"][row, : len(row_ids)] = 1
        batch["offset_mapping"][row, : len(row_ids)] = torch.tensor([[k, k + 1] for k in range(len(row_ids))])
    if not prefix:
        batch["labels"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    return {prefix + key: value for key, value in batch.items()}


@pytest.mark.parametrize("finer", ["teacher", "student"])
def test_merged_spans_against_an_independent_chain_rule(tokenizers, finer):
    student, teacher = _models(tokenizers)
    if finer == "teacher":
        batch = {**_encode(tokenizers["student"]), **_characters(tokenizers["teacher"], "teacher_", "▁")}
    else:
        batch = {**_characters(tokenizers["student"], "", "Ġ"), **_encode(tokenizers["teacher"], "teacher_")}
    want, longer = _expected_merged_uld(batch, student, teacher, 1.5)
    assert longer >= 3  # pieces that one side spells with several tokens: the factors are not all 1
    merged = _kd(tokenizers, student, teacher, temperature=1.5, merge_spans=True)
    got = merged.compute_losses(batch)["soft"]
    torch.testing.assert_close(got.detach(), torch.tensor(want, dtype=torch.float32), rtol=1e-4, atol=1e-6)
    assert float(got.detach()) != pytest.approx(float(_kd(tokenizers, student, teacher, temperature=1.5).compute_losses(batch)["soft"]))
    prompt = dict(batch, labels=batch["labels"].clone())
    prompt["labels"][:, :5] = -100  # pieces holding a position without a target leave the term
    want, _ = _expected_merged_uld(prompt, student, teacher, 1.5)
    assert float(merged.compute_losses(prompt)["soft"]) == pytest.approx(want, rel=1e-4)
    merged.train()
    merged.compute_losses(batch)["loss"].backward()
    assert all(p.grad is None for p in merged.teachers[0].parameters())
    assert any(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in merged.student.parameters())


def test_merged_spans_of_identical_encodings_are_at_zero_and_misuse_is_refused(tokenizers):
    student, _ = _models(tokenizers)
    method = methods.KD(student=copy.deepcopy(student), teacher=copy.deepcopy(student), teacher_tokenizer="the-same-one",
                        export_tokenizer=tokenizers["student_dir"],
                        prediction=PredictionLoss(hard_weight=0.0, merge_spans=True)).eval()
    student_side = _encode(tokenizers["student"])
    batch = {**student_side, **{"teacher_" + k: v for k, v in student_side.items() if k != "labels"}}
    assert abs(float(method.compute_losses(batch)["soft"])) < 1e-5
    with pytest.raises(ValueError, match="only ULD"):
        PredictionLoss(cross_vocabulary="matched", merge_spans=True)
    with pytest.raises(ValueError, match="Drop merge_spans"):
        methods.KD(student=copy.deepcopy(student), teacher=copy.deepcopy(student), prediction=PredictionLoss(merge_spans=True))


@pytest.mark.parametrize("kind", ["uld", "matched", "hybrid"])
def test_a_teacher_that_is_the_student_is_at_zero_and_gradients_reach_only_the_student(tokenizers, kind):
    student, _ = _models(tokenizers)
    method = methods.KD(student=copy.deepcopy(student), teacher=copy.deepcopy(student), teacher_tokenizer="the-same-one",
                        export_tokenizer=tokenizers["student_dir"], prediction=PredictionLoss(hard_weight=0.0, cross_vocabulary=kind))
    if kind != "uld":  # the match of a vocabulary with itself
        method.__dict__["_vocabulary_matches"] = {0: VocabularyMatch.between(tokenizers["student"], tokenizers["student"])}
    method.eval()
    student_side = _encode(tokenizers["student"])
    batch = {**student_side, **{"teacher_" + k: v for k, v in student_side.items() if k != "labels"}}
    terms = method.compute_losses(batch)
    assert abs(float(terms["soft"])) < 1e-5
    other = _kd(tokenizers, *_models(tokenizers), cross_vocabulary=kind)
    other.compute_losses(_batch(tokenizers))["loss"].backward()
    assert any(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in other.student.parameters())
    assert all(p.grad is None for p in other.teachers[0].parameters())


def test_positions_with_no_target_and_padding_do_not_count(tokenizers):
    student, teacher = _models(tokenizers)
    method = _kd(tokenizers, student, teacher)
    batch = _batch(tokenizers)
    base = float(method.compute_losses(batch)["soft"])
    longer = {key: torch.cat([value, value[:, :2] * 0], dim=1) if value.dim() >= 2 and key != "labels" else value
              for key, value in batch.items()}  # two more padding positions on every key (mask 0, offsets (0, 0))
    longer["labels"] = torch.cat([batch["labels"], torch.full((batch["labels"].shape[0], 2), -100)], dim=1)
    assert float(method.compute_losses(longer)["soft"]) == pytest.approx(base, rel=1e-5)
    unscored = dict(batch, labels=batch["labels"].clone())
    unscored["labels"][:, : batch["labels"].shape[1] // 2] = -100  # a prompt: its positions leave the term
    assert len(_independent_pairs(unscored)) < len(_independent_pairs(batch))
    assert float(method.compute_losses(unscored)["soft"]) == pytest.approx(_expected_uld(unscored, student, teacher, 1.0), rel=1e-4)


@pytest.mark.parametrize("name, reason", [("TinyBERT", "attention or Q/K/V"), ("MiniLM", "attention or Q/K/V"), ("CKD", "sequence-level fine-tuning only")])
def test_terms_that_pair_positions_are_refused_across_vocabularies(tokenizers, name, reason):
    student, teacher = _models(tokenizers)
    with pytest.raises(ValueError, match=reason):
        getattr(methods, name)(student=student, teacher=teacher, teacher_tokenizer=tokenizers["teacher_dir"])


def test_a_teacher_cache_and_generated_batches_are_refused_across_vocabularies(tokenizers, tmp_path):
    from lightning_kd.cache import TeacherCache

    student, teacher = _models(tokenizers)
    with pytest.raises(ValueError, match="teacher cache"):
        methods.KD(student=student, teacher=teacher, teacher_tokenizer=tokenizers["teacher_dir"], teacher_cache=TeacherCache(path=str(tmp_path)))
    with pytest.raises(ValueError, match="one encoding"):
        methods.KD(student=student, teacher=teacher, teacher_tokenizer=tokenizers["teacher_dir"], on_policy=0.5)


def test_a_cli_fit_distils_across_vocabularies_from_the_data_modules_teacher_tokenizer(tokenizers, tmp_path):
    """Data (two encodings of every packed block) → CLI link → the aligned soft term, for a few real steps."""
    import yaml

    from lightning_kd.distillation_cli import run_cli

    student, teacher = _models(tokenizers)
    student.save_pretrained(tmp_path / "student")
    teacher.save_pretrained(tmp_path / "teacher")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(CORPUS * 2) + "\n")
    config = {
        "seed_everything": 0,
        "trainer": {"max_steps": 3, "accelerator": "cpu", "logger": False, "enable_checkpointing": False,
                    "default_root_dir": str(tmp_path / "run"), "enable_progress_bar": False, "num_sanity_val_steps": 0,
                    "limit_val_batches": 1},
        "model": {"class_path": "lightning_kd.methods.KD", "init_args": {
            "teacher": str(tmp_path / "teacher"), "student": str(tmp_path / "student"),
            "prediction": {"cross_vocabulary": "hybrid", "uld_top": 8}}},
        "data": {"class_path": "lightning_kd.data.CausalLMDataModule", "init_args": {
            "tokenizer": tokenizers["student_dir"], "teacher_tokenizer": tokenizers["teacher_dir"],
            "train_files": [str(corpus)], "block_size": 16, "batch_size": 2, "validation_fraction": 0.2}},
        "export": {"dirpath": str(tmp_path / "exported")},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    cli = run_cli(["fit", "--config", str(path)])
    assert cli.model.teacher_tokenizers.shared == tokenizers["teacher_dir"]
    assert cli.trainer.global_step == 3
    logged = cli.trainer.callback_metrics
    assert torch.isfinite(logged["train/soft"]) and float(logged["train/soft"]) > 0
    assert (tmp_path / "exported" / "config.json").exists()


def test_hidden_state_terms_read_the_teacher_aligned_to_the_students_tokens(tokenizers):
    """DistilBERT (prediction across vocabularies + cosine on hidden states) trains; with the student as its own
    teacher and one tokenization, the aligned cosine term is zero."""
    student, teacher = _models(tokenizers)
    method = methods.DistilBERT(student=copy.deepcopy(student), teacher=copy.deepcopy(teacher), teacher_tokenizer=tokenizers["teacher_dir"],
                                export_tokenizer=tokenizers["student_dir"])
    terms = method.train().compute_losses(_batch(tokenizers))
    assert all(torch.isfinite(value) for value in terms.values()) and "cos" in terms
    same = methods.DistilBERT(student=copy.deepcopy(student), teacher=copy.deepcopy(student), teacher_tokenizer="the-same-one",
                              export_tokenizer=tokenizers["student_dir"]).eval()
    student_side = _encode(tokenizers["student"])
    batch = {**student_side, **{"teacher_" + k: v for k, v in student_side.items() if k != "labels"}}
    assert abs(float(same.compute_losses(batch)["cos"])) < 1e-5


def test_a_truncated_student_comes_from_its_own_layers_when_the_teacher_reads_another_tokenizer(tokenizers):
    """Layers of a teacher with another vocabulary cannot read the student's tokens, so the teacher_* modes cut
    `student` itself, exactly as the no-teacher baseline does (the same starting weights for both rows)."""
    student, teacher = _models(tokenizers)
    method = methods.KD(student=copy.deepcopy(student), teacher=copy.deepcopy(teacher), teacher_tokenizer=tokenizers["teacher_dir"],
                        export_tokenizer=tokenizers["student_dir"], student_init="teacher_first", student_layers=1)
    alone = methods.StudentOnly(student=copy.deepcopy(student), student_init="teacher_first", student_layers=1)
    assert method.student.config.num_hidden_layers == 1
    assert method.student.config.vocab_size == student.config.vocab_size
    for (name, ours), (_, theirs) in zip(method.student.state_dict().items(), alone.student.state_dict().items()):
        assert torch.equal(ours, theirs), name
    torch.testing.assert_close(method.student.model.layers[0].mlp.up_proj.weight, student.model.layers[0].mlp.up_proj.weight)
