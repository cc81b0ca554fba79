"""The causal-LM stage through the command line: fit, validate, test, export and generation, on tiny
Llamas and a tiny text corpus (what `lightning-kd` does with a decoder LM and CausalLMDataModule)."""

from __future__ import annotations

import pytest
import torch

from lightning_kd.cli import run_cli
from tests.cli_fixtures import causal_data_args, quick_trainer_args, write_causal_models, write_corpus
from tests.conftest import write_tiny_lm_tokenizer


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    root = tmp_path_factory.mktemp("causal_cli")
    return {**write_causal_models(root), "corpus": write_corpus(root)}


def _fit(lm, root, *extra, method="KD"):
    args = ["fit", f"--model=lightning_kd.methods.{method}", *(["--model.teacher", str(lm["teacher_causal"])] if method != "StudentOnly" else []),
            *causal_data_args(lm["teacher_causal"], lm["corpus"]), *quick_trainer_args(root), *extra]
    return run_cli(args)


def test_fit_links_the_stage_exports_a_generating_student_and_tests_perplexity(lm, tmp_path):
    cli = _fit(lm, tmp_path, "--model.student_init=teacher_first_last", "--model.student_layers=4",
               "--trainer.limit_val_batches=2")
    method = cli.model
    assert method.task_head == "causal_lm" and cli.trainer.global_step == 2
    validated = cli.trainer.validate(method, datamodule=cli.datamodule)[0]
    assert {"val/perplexity", "val/token_accuracy", "val/loss"} <= set(validated)
    student_dir = tmp_path / "student"
    from transformers import AutoModelForCausalLM, AutoTokenizer

    exported = AutoModelForCausalLM.from_pretrained(student_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(student_dir)
    assert tokenizer.chat_template and (student_dir / "generation_config.json").exists()
    assert exported.config.num_hidden_layers == 4 and exported.generation_config.eos_token_id == method.student.generation_config.eos_token_id
    prompt = tokenizer("the movie was", return_tensors="pt")
    live = method.student.eval()
    with torch.no_grad():
        ours = live.generate(**prompt, max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        theirs = exported.generate(**prompt, max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert torch.equal(ours, theirs)

    tested = run_cli(["test", "--model=lightning_kd.methods.StudentOnly", f"--model.student={student_dir}",
                      *causal_data_args(lm["teacher_causal"], lm["corpus"]), *quick_trainer_args(tmp_path / "test")])
    metrics = tested.trainer.callback_metrics
    assert {"test/perplexity", "test/token_accuracy", "test/loss"} <= set(metrics)
    torch.testing.assert_close(metrics["test/perplexity"], metrics["test/loss"].exp(), rtol=0.2, atol=0)


def test_a_block_longer_than_the_models_positions_is_refused_before_training(lm, tmp_path):
    with pytest.raises(ValueError, match=r"block_size is 100 tokens but the student .* reads at most 64"):
        _fit(lm, tmp_path, "--data.block_size=100", "--model.student_init=teacher_first", "--model.student_layers=2")


def test_a_tokenizer_without_a_pad_token_trains_on_prompt_response_examples(lm, tmp_path):
    tokenizer = write_tiny_lm_tokenizer(tmp_path / "padless", pad=False)
    examples = tmp_path / "pairs.jsonl"
    examples.write_text("\n".join('{"prompt": "how are you", "response": "fine thanks"}' if i % 2 else
                                  '{"prompt": "the movie was", "response": "very good and fun"}' for i in range(24)) + "\n")
    args = ["fit", "--model=lightning_kd.methods.KD", f"--model.teacher={lm['teacher_causal']}", "--model.student_init=teacher_first",
            "--model.student_layers=2", "--data=lightning_kd.data.CausalLMDataModule", f"--data.tokenizer={tokenizer}",
            f"--data.train_files=[{examples}]", "--data.prompt_field=prompt", "--data.response_field=response",
            "--data.block_size=16", "--data.batch_size=4", "--data.validation_fraction=0.2", *quick_trainer_args(tmp_path)]
    cli = run_cli(args)
    assert cli.trainer.global_step == 2 and torch.isfinite(cli.trainer.callback_metrics["train/loss"])
