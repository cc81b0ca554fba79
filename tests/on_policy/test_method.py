"""On-policy batches in a method's step: λ = 0 is exactly the off-policy loss; on a student-written batch the
divergence reads the generated tokens only (checked against the divergence computed by hand over exactly
those positions, and against noise put on every other position's logits) and the hard term is left out;
knobs that cannot apply are refused when the method is built."""

from __future__ import annotations

import pytest
import torch

from lightning_kd.cache import TeacherCache
from lightning_kd.losses.logits import soft_divergence
from lightning_kd.losses.prediction import PredictionLoss
from lightning_kd.methods import KD, ContinuationKD, StudentOnly, VocabDistil
from lightning_kd.on_policy import GeneratedBatches, Generation, SequenceKD, SpecialTokens, student_written
from lightning_kd.on_policy.seeds import chosen
from lightning_kd.stages import STAGES
from tests.conftest import make_tiny_bert
from tests.on_policy.helpers import method, models, prompt_batch, tokenizer


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return tokenizer(tmp_path_factory.mktemp("on_policy_method"))


def _step_loss(module, batch, batch_idx: int = 0) -> torch.Tensor:
    with torch.no_grad():
        return module.training_step(batch, batch_idx)


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")  # training_step outside a Trainer
def test_lambda_zero_is_exactly_the_off_policy_loss(tok):
    off = method(tok, hard_weight=1.0)
    zero = method(tok, hard_weight=1.0, on_policy=0.0)
    assert zero.generated_batches is None
    batch = prompt_batch()
    assert torch.equal(_step_loss(zero, batch), _step_loss(off, batch))
    # With λ = 0.5, a batch that is not drawn is the data's batch itself, and its loss the off-policy one.
    half = method(tok, hard_weight=1.0, on_policy=0.5)
    half.generated_batches.run_seed.value = 3
    idle = next(i for i in range(20) if not chosen(3, "on_policy", 0.5, 0, i))
    assert half.generated_batches.training_batch(half, batch, idle) is batch
    assert torch.equal(_step_loss(half, batch, idle), _step_loss(off, batch, idle))


def test_the_choice_of_batches_is_a_share_of_them_and_the_same_on_every_rank():
    draws = [chosen(11, "on_policy", 0.3, step, 0) for step in range(2000)]
    assert 0.25 < sum(draws) / len(draws) < 0.35
    assert all(chosen(11, "on_policy", 1.0, step, 0) for step in range(50))
    assert not any(chosen(11, "on_policy", 0.0, step, 0) for step in range(50))


def test_on_a_student_written_batch_only_the_generated_tokens_are_scored_and_the_hard_term_is_left_out(tok):
    kd = method(tok, hard_weight=1.0, on_policy=0.5, generation=Generation(max_new_tokens=5))
    kd.compact_heads = False  # whole logits, so noise can be put on every unscored position
    kd.eval()
    written = kd.generated_batches.student_batch(kd, prompt_batch(), seed=1)
    assert student_written(written)
    terms = kd.compute_losses(written)
    assert set(terms) == {"soft", "loss"}  # no hard term on the student's own tokens

    prepared = STAGES["causal_lm"].prepare(written)
    scored = prepared["labels"].ne(-100)
    inputs = {"input_ids": written["input_ids"], "attention_mask": written["attention_mask"]}
    with torch.no_grad():
        student, teacher = kd.student(**inputs).logits, kd.teachers[0](**inputs).logits
    by_hand = soft_divergence(student[scored], teacher[scored], "jsd", 1.0, None, "masked_mean", True, jsd_beta=0.5)
    torch.testing.assert_close(terms["soft"], by_hand, rtol=1e-5, atol=1e-6)
    # The generated tokens are exactly the scored positions (shifted): the prompt's last one to the one before the EOS.
    lengths = written["attention_mask"].sum(1)
    prompt_lengths = torch.tensor([4, 6, 3])
    for row in range(3):
        assert scored[row].nonzero().flatten().tolist() == list(range(int(prompt_lengths[row]) - 1, int(lengths[row]) - 1))

    def noise(module, args, output):  # every unscored position's logits replaced by noise
        return output.masked_fill(~scored[..., None], 0.0) + torch.randn_like(output) * (~scored[..., None])

    for model in (kd.student, kd.teachers[0]):
        handle = model.lm_head.register_forward_hook(noise)
        try:
            torch.testing.assert_close(kd.compute_losses(written)["soft"], terms["soft"], rtol=1e-5, atol=1e-6)
        finally:
            handle.remove()


def test_the_teacher_scores_the_sequence_with_its_own_terms_intermediate_ones_included(tok):
    from lightning_kd.methods import TinyBERT

    teacher, student = models()
    tiny = TinyBERT(teacher=teacher, student=student, export_tokenizer=str(tok), on_policy=1.0,
                    generation=Generation(max_new_tokens=4), prediction=PredictionLoss(soft_loss="jsd", hard_weight=0.0))
    written = tiny.generated_batches.student_batch(tiny, prompt_batch(), seed=0)
    terms = tiny.compute_losses(written)
    assert {"hidden", "attention"} <= set(terms) and "hard" not in terms
    assert all(torch.isfinite(value) for value in terms.values())


def test_knobs_that_cannot_apply_are_refused_when_the_method_is_built(tok):
    teacher, student = models()
    with pytest.raises(ValueError, match="on_policy 1 .* prediction.hard_weight 0"):
        method(tok, hard_weight=1.0, on_policy=1.0)
    with pytest.raises(ValueError, match="generation sets how the student samples"):
        method(tok, generation=Generation())
    with pytest.raises(ValueError, match=r"on_policy must be in \[0, 1\]"):
        method(tok, on_policy=1.5)
    with pytest.raises(ValueError, match="teacher cache cannot serve"):
        method(tok, on_policy=0.5, teacher_cache=TeacherCache(path="unused"))
    with pytest.raises(ValueError, match="leaving none for sequence_kd"):
        method(tok, on_policy=1.0, sequence_kd=SequenceKD())
    with pytest.raises(ValueError, match="needs a teacher"):
        StudentOnly(student=student, export_tokenizer=str(tok), on_policy=0.5)
    with pytest.raises(ValueError, match="causal-LM stage"):
        KD(teacher=make_tiny_bert("classification", seed=1), student=make_tiny_bert("classification", seed=2, layers=2),
           on_policy=0.5)
    with pytest.raises(ValueError, match="ContinuationKD cannot train on its student's samples"):
        ContinuationKD(teacher=teacher, student=student, export_tokenizer=str(tok), on_policy=0.5)
    with pytest.raises(ValueError, match="VocabDistil cannot train on its student's samples"):
        VocabDistil(teacher=teacher, student=student, export_tokenizer=str(tok), on_policy=0.5, size_multiple=16)
    with pytest.raises(ValueError, match="teacher_index"):
        method(tok, sequence_kd=SequenceKD(teacher_index=1))
    assert GeneratedBatches.build(0.0, None, None) is None
    # A vocabulary-compressing student may still train on the teacher's responses.
    VocabDistil(teacher=teacher, student=student, export_tokenizer=str(tok), sequence_kd=SequenceKD(), size_multiple=16)


def test_the_first_eos_ends_the_scored_tokens(tok):
    kd = method(tok, on_policy=1.0, generation=Generation(max_new_tokens=6, do_sample=False))
    batches = kd.generated_batches
    free = batches.student_batch(kd, prompt_batch(), seed=0)
    second = int(free["labels"][0, 5])  # row 0's second generated token (its prompt has 4 tokens)
    assert second not in free["labels"][0, 4:5].tolist()
    batches.tokens = SpecialTokens((second,), batches.tokens.pad_id)  # greedy decoding now stops there
    ended = batches.student_batch(kd, prompt_batch(), seed=0)
    assert ended["labels"][0].tolist() == [-100] * 4 + free["labels"][0, 4:6].tolist() + [-100] * (ended["labels"].shape[1] - 6)
    assert ended["attention_mask"][0].sum() == 6
    terms = kd.compute_losses(ended)
    assert torch.isfinite(terms["loss"])
