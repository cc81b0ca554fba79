"""Unlabelled rows in the token-level stages (masked LM, causal LM): a batch's ``labelled`` marks keep the
student's hard term to the labelled rows (an exact 0 for a batch without any), every teacher term reads every
row, methods without a teacher are refused before any step, and a run resumed mid-epoch ends as an
uninterrupted one (through the teacher cache in the causal-LM stage)."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from lightning_kd.cache import TeacherCache
from lightning_kd.core.unlabelled import check_unlabelled_rows
from lightning_kd.data import CausalLMDataModule, PretrainDataModule
from lightning_kd.losses.prediction import PredictionLoss
from lightning_kd.methods import KD, StudentOnly, TinyBERT
from lightning_kd.methods.multi_teacher.mt_bert import teacher_gold_loss
from lightning_kd.stages import shift_labels
from lightning_kd.stages.labelled_rows import LABELLED, hard_labels
from tests.cli_fixtures import fit_with_checkpoints, write_corpus
from tests.conftest import make_batch, make_tiny_bert, write_tiny_lm_tokenizer, write_tiny_tokenizer
from tests.families import make_family_model

#: (family, kind of make_batch / make_family_model): an encoder's MLM head and two decoders.
MODELS = [("bert", "mlm"), ("llama", "causal"), ("gpt2", "causal")]
HARD = 0.5


def _kd(family: str, kind: str, compact: bool = True, **prediction) -> KD:
    teacher = make_family_model(family, kind, layers=2, seed=1, initializer_range=0.5)
    student = make_family_model(family, kind, layers=2, seed=3, initializer_range=0.5)
    method = KD(teacher=teacher, student=student,
                prediction=PredictionLoss(**{"hard_weight": HARD, "temperature": 2.0, **prediction})).eval()
    method.compact_heads = compact
    return method


def _batch(kind: str, marks: list[bool]) -> dict[str, torch.Tensor]:
    return {**make_batch(kind, batch=len(marks), seed=4), LABELLED: torch.tensor(marks)}


def _targets(kind: str, labels: torch.Tensor) -> torch.Tensor:
    """What the logits at each position are scored against (a causal LM's next token)."""
    return shift_labels(labels) if kind == "causal" else labels


def _relabelled(batch: dict[str, torch.Tensor], row: int) -> dict[str, torch.Tensor]:
    """``batch`` with other token ids at ``row``'s scored positions (the same positions stay scored)."""
    labels = batch["labels"].clone()
    scored = labels[row] != -100
    labels[row, scored] = (labels[row, scored] + 7) % 200 + 5
    return {**batch, "labels": labels}


@pytest.mark.parametrize("compact", [True, False], ids=["compact", "whole"])
@pytest.mark.parametrize(("family", "kind"), MODELS)
def test_the_hard_term_is_the_mean_over_the_labelled_rows_scored_tokens(family, kind, compact):
    method = _kd(family, kind, compact)
    batch = _batch(kind, [True, False, True, False])
    with torch.no_grad():
        terms = method.compute_losses(batch)
        inputs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask")}
        logits = method.student(**inputs).logits.double()
    targets = _targets(kind, batch["labels"]).masked_fill(~batch[LABELLED][:, None], -100)
    expected = HARD * F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100)
    torch.testing.assert_close(terms["hard"].double(), expected, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        moved = method.compute_losses(_relabelled(batch, 1))  # an unlabelled row's targets
        other = method.compute_losses(_relabelled(batch, 0))  # a labelled row's
    assert moved["hard"] == terms["hard"], "the hard term never reads an unlabelled row"
    assert other["hard"] != terms["hard"]


@pytest.mark.parametrize("compact", [True, False], ids=["compact", "whole"])
@pytest.mark.parametrize(("family", "kind"), MODELS)
def test_a_batch_of_unlabelled_rows_has_a_zero_hard_term_without_gradient_and_learns_from_the_teacher(family, kind, compact):
    def gradients(method: KD) -> tuple[dict[str, torch.Tensor], list[torch.Tensor | None]]:
        terms = method.compute_losses(_batch(kind, [False] * 4))
        weights = [p for p in method.student.parameters() if p.requires_grad]
        return terms, torch.autograd.grad(terms["loss"], weights, allow_unused=True)

    terms, total = gradients(_kd(family, kind, compact))
    _, soft_only = gradients(_kd(family, kind, compact, hard_weight=0.0))  # the same weights, no hard term
    assert terms["hard"].item() == 0.0 and torch.isfinite(terms["loss"])
    for ours, theirs in zip(total, soft_only):  # the hard term adds nothing to the gradient (and no NaN)
        assert (ours is None) == (theirs is None)
        if ours is not None:
            torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-8)
    assert any(g is not None and g.abs().sum() > 0 for g in total), "the student still learns from the teacher"


@pytest.mark.parametrize(("family", "kind"), MODELS)
def test_the_soft_term_reads_the_teachers_logits_on_unlabelled_rows(family, kind):
    method = _kd(family, kind, compact=False)
    batch = _batch(kind, [True, False, True, False])

    def nudge_row_1(module, args, kwargs, output):
        delta = torch.zeros_like(output.logits)
        delta[1] = torch.randn(output.logits.shape[1:], generator=torch.Generator().manual_seed(0))
        output.logits = output.logits + delta
        return output

    with torch.no_grad():
        base = method.compute_losses(batch)
        handle = method.teachers[0].register_forward_hook(nudge_row_1, with_kwargs=True)
        try:
            nudged = method.compute_losses(batch)
        finally:
            handle.remove()
    assert nudged["soft"] != base["soft"], "the teacher's logits on an unlabelled row reach the soft term"
    assert nudged["hard"] == base["hard"]


@pytest.mark.parametrize(("family", "kind"), [("bert", "mlm"), ("llama", "causal")])
def test_every_teacher_term_reads_unlabelled_rows_and_the_hard_term_does_not(family, kind):
    teacher = make_family_model(family, kind, layers=4, seed=1, initializer_range=0.5)
    student = make_family_model(family, kind, layers=2, seed=3, initializer_range=0.5)
    method = TinyBERT(teacher=teacher, student=student, prediction=PredictionLoss(hard_weight=HARD, temperature=2.0)).eval()
    batch = _batch(kind, [True, False, True, False])
    retexted = {**batch, "input_ids": batch["input_ids"].clone()}
    retexted["input_ids"][1, 1:4] = torch.tensor([30, 31, 32])  # an unlabelled row's text, before its scored tokens
    with torch.no_grad():
        base, moved = method.compute_losses(batch), method.compute_losses(retexted)
    teacher_terms = [name for name in base if name not in ("hard", "loss")]
    assert "soft" in teacher_terms and len(teacher_terms) > 2, teacher_terms
    for name in teacher_terms:
        assert moved[name] != base[name], f"{name} reads the unlabelled row"
    assert moved["hard"] == base["hard"]


def test_hard_labels_leave_a_batch_without_marks_as_it_is_and_refuse_bad_marks():
    batch = make_batch("causal")
    assert hard_labels(batch) is batch["labels"]
    marked = hard_labels({**batch, LABELLED: torch.tensor([True, False, True, True])})
    assert (marked[1] == -100).all() and torch.equal(marked[[0, 2, 3]], batch["labels"][[0, 2, 3]])
    with pytest.raises(ValueError, match="one bool per row"):
        hard_labels({**batch, LABELLED: torch.ones(3, dtype=torch.bool)})


def test_a_teachers_gold_loss_refuses_rows_marked_unlabelled():
    """MT-BERT's weights and RL-KD's agent, for runs that pass dataloaders without the data module's check."""
    logits, labels = torch.randn(2, 5, 30), torch.randint(0, 30, (2, 5))
    assert teacher_gold_loss(logits, labels, labelled=torch.tensor([True, True])).shape == (2,)
    with pytest.raises(ValueError, match="unlabelled rows .* needs a label on every example"):
        teacher_gold_loss(logits, labels, labelled=torch.tensor([True, False]))


# ----------------------------------------------------------------------------- refusals
def test_methods_without_a_teacher_are_refused_before_any_step(tmp_path, tiny_tokenizer_dir):
    corpus = write_corpus(tmp_path, lines=60)
    tokenizer = write_tiny_lm_tokenizer(tmp_path / "lm_tokenizer")
    options = dict(train_files=[str(corpus)], block_size=16, batch_size=4, validation_fraction=0.2, cache_dir=str(tmp_path / "cache"))
    mlm = PretrainDataModule(str(tiny_tokenizer_dir), labelled_examples=2, **options)
    causal = CausalLMDataModule(str(tokenizer), unlabelled_file=str(corpus), **options)
    for data in (mlm, causal):
        with pytest.raises(ValueError, match="StudentOnly cannot train on unlabelled rows.*no teacher"):
            check_unlabelled_rows(StudentOnly(student=make_family_model("bert", "mlm", layers=2)), data)
        check_unlabelled_rows(KD(teacher=make_tiny_bert("mlm", seed=1), student=make_tiny_bert("mlm", seed=2, layers=2)), data)
    trainer = pl.Trainer(accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=tmp_path)
    with pytest.raises(ValueError, match="StudentOnly cannot train on unlabelled rows"):
        trainer.fit(StudentOnly(student=make_family_model("llama", "causal", layers=2)), datamodule=causal)
    assert trainer.global_step == 0


# ----------------------------------------------------------------------------- resume
@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("unlabelled_resume")
    no_dropout = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    make_tiny_bert("mlm", seed=1, layers=4, **no_dropout).save_pretrained(root / "masked_lm")
    write_tiny_tokenizer(root / "masked_lm")
    make_family_model("llama", "causal", layers=3, seed=1, initializer_range=0.5).save_pretrained(root / "causal_lm")
    write_tiny_lm_tokenizer(root / "causal_lm")
    extra = root / "extra"
    extra.mkdir()
    return {"root": root, "corpus": write_corpus(root, lines=80), "extra": write_corpus(extra, lines=40)}


def _fit(assets, kind: str, root: Path, **kwargs) -> tuple[KD, pl.Trainer]:
    teacher = assets["root"] / kind
    options = dict(train_files=[str(assets["corpus"])], block_size=16, batch_size=4, validation_fraction=0.1,
                   unlabelled_file=str(assets["extra"]), labelled_examples=5, cache_dir=str(assets["root"] / "hf_cache"))
    if kind == "masked_lm":
        data = PretrainDataModule(str(teacher), masking_seed=0, **options)  # static masks: a pure function of the order
        method = KD(teacher=str(teacher), student_init="teacher_uniform", student_layers=2,
                    prediction=PredictionLoss(hard_weight=HARD, temperature=2.0))
    else:
        data = CausalLMDataModule(str(teacher), **options)
        method = KD(teacher=str(teacher), student_init="teacher_first_last", student_layers=2,
                    prediction=PredictionLoss(hard_weight=HARD, temperature=2.0),
                    teacher_cache=TeacherCache(path=str(root.parent / "cache"), top_k=8, verify_batches=1))
    return method, fit_with_checkpoints(method, data, root, **kwargs)


@pytest.mark.parametrize("kind", ["masked_lm", "causal_lm"])
def test_a_run_resumed_mid_epoch_ends_with_the_uninterrupted_runs_student(assets, tmp_path, kind):
    (tmp_path / "whole").mkdir()
    whole, _ = _fit(assets, kind, tmp_path / "whole" / "run")
    _fit(assets, kind, tmp_path / "run_first", stop_at=3)
    checkpoint = next((tmp_path / "run_first" / "ckpt").glob("*step=3*.ckpt"))
    resumed, trainer = _fit(assets, kind, tmp_path / "run_resumed", ckpt_path=str(checkpoint))
    assert trainer.global_step == 6 and trainer.datamodule.training_counts.labelled == 5
    for key, value in whole.student.state_dict().items():
        torch.testing.assert_close(resumed.student.state_dict()[key], value, rtol=1e-4, atol=1e-6, msg=key)
