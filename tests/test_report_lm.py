"""``python -m lightning_kd.report`` for causal LMs (tiny random Llamas), and its classification path."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch

from lightning_kd import report
from lightning_kd.reports import causal_lm
from tests.conftest import write_tiny_lm_tokenizer

HELD_OUT = [
    "this movie was good",
    "the plot of the film is very funny and a bit sad",
    "the acting was great but the director was terrible",
    "i liked the story",  # "i" and "liked" are not in the vocabulary: <unk>
    "one two three yes no",
] * 4
BLOCK = 16


def write_tiny_llama(directory: Path, tokenizer_dir: Path, layers: int, hidden: int, seed: int) -> Path:
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # larger weights than the init's 0.02 give a less uniform (more testing) distribution
        model.model.embed_tokens.weight.normal_(0, 0.1)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def lm_dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("report_lm")
    tokenizer = write_tiny_lm_tokenizer(root / "tokenizer")  # word-level, BOS/EOS/pad, a chat template
    text = root / "held_out.txt"
    text.write_text("\n".join(HELD_OUT) + "\n")
    prompts = root / "prompts.txt"
    prompts.write_text("the movie\n\nwhat | the plot\n")
    return {
        "teacher": write_tiny_llama(root / "teacher", tokenizer, layers=3, hidden=32, seed=1),
        "student": write_tiny_llama(root / "student", tokenizer, layers=1, hidden=16, seed=2),
        "text": text,
        "prompts": prompts,
        "cache": root / "datasets_cache",
    }


def hand_perplexity(model_dir: Path, lines: list[str]) -> tuple[float, int]:
    """Documents + EOS, concatenated, cut into BLOCK-token blocks (tail dropped); exp of the mean NLL of
    every next token within a block, written out with log-sum-exp in float64."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    stream = []
    for line in lines:
        stream += tokenizer(line, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    blocks = [stream[i : i + BLOCK] for i in range(0, len(stream) - BLOCK + 1, BLOCK)]
    nll = []
    with torch.no_grad():
        for block in blocks:
            logits = model(input_ids=torch.tensor([block])).logits[0].double()
            for t in range(len(block) - 1):
                row = logits[t].tolist()
                top = max(row)
                nll.append(top + math.log(sum(math.exp(v - top) for v in row)) - row[block[t + 1]])
    return math.exp(sum(nll) / len(nll)), len(nll)


def table_rows(markdown: str) -> dict[str, list[str]]:
    rows = {}
    for line in markdown.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if cells and cells[0] in ("teacher", "student", "no-teacher student"):
            rows[cells[0]] = cells
    return rows


def test_causal_lm_report_has_both_models_and_the_hand_computed_perplexity(lm_dirs, capsys):
    output = lm_dirs["text"].parent / "out" / "report.md"
    report.main([
        "--teacher", str(lm_dirs["teacher"]), "--student", str(lm_dirs["student"]), "--text", str(lm_dirs["text"]),
        "--block-size", str(BLOCK), "--batch-size", "3", "--prompts", str(lm_dirs["prompts"]), "--chat",
        "--max-new-tokens", "6", "--repeats", "2", "--cache-dir", str(lm_dirs["cache"]), "--output", str(output),
        "--baseline", str(lm_dirs["student"]),
    ])
    markdown = capsys.readouterr().out
    assert output.read_text() == markdown
    header = markdown.splitlines()[0]
    assert "perplexity" in header and "generation tokens / s" in header and "parameters" in header
    rows = table_rows(markdown)
    assert set(rows) == {"teacher", "student", "no-teacher student"}
    assert rows["no-teacher student"][3] == rows["student"][3]  # the same model in both rows: the same perplexity
    assert rows["teacher"][1] == "3" and rows["student"][1] == "1"  # layers
    expected, tokens = hand_perplexity(lm_dirs["teacher"], HELD_OUT)
    assert float(rows["teacher"][3]) == pytest.approx(expected, abs=0.006)  # printed with 2 decimals
    assert f"over {tokens} held-out tokens" in markdown
    assert float(rows["student"][6]) > 0 and rows["teacher"][7] == "1.00×"
    assert "bits per byte" in header and float(rows["teacher"][4]) > 0
    # generations: one row per non-blank prompt line, side by side, '|' escaped; the template was applied
    assert "### Greedy generations (chat template applied)" in markdown
    generations = markdown.split("### Greedy generations")[1]
    assert "| the movie |" in generations and "what \\| the plot" in generations
    assert len([line for line in generations.splitlines() if line.startswith("| ") and "prompt" not in line]) == 2


def test_perplexity_of_unshifted_batches_equals_the_hand_computation(lm_dirs):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    batches = causal_lm.evaluation_batches(str(lm_dirs["teacher"]), str(lm_dirs["text"]), BLOCK, 2,
                                           cache_dir=str(lm_dirs["cache"]))
    assert all(torch.equal(b["labels"], b["input_ids"]) for b in batches), "plain text: labels are the unshifted ids"
    model = AutoModelForCausalLM.from_pretrained(lm_dirs["teacher"]).eval()
    from lightning_kd.metrics.token_bytes import token_byte_lengths

    token_bytes = token_byte_lengths(AutoTokenizer.from_pretrained(lm_dirs["teacher"]))
    ppl, accuracy, tokens, bits = causal_lm.perplexity(model, batches, token_bytes)
    expected, expected_tokens = hand_perplexity(lm_dirs["teacher"], HELD_OUT)
    assert tokens == expected_tokens == sum(b["input_ids"].numel() - b["input_ids"].shape[0] for b in batches)
    assert ppl == pytest.approx(expected, rel=1e-5)
    assert 0 <= accuracy <= 1
    scored_bytes = sum(int(token_bytes[b["labels"][:, 1:]].sum()) for b in batches)
    assert bits == pytest.approx(math.log(expected) * tokens / (math.log(2) * scored_bytes), rel=1e-5)


def test_prompts_take_the_chat_template_only_when_asked_and_present(lm_dirs, tmp_path):
    from transformers import AutoTokenizer

    chat = AutoTokenizer.from_pretrained(lm_dirs["teacher"])
    plain = AutoTokenizer.from_pretrained(lm_dirs["teacher"])
    plain.chat_template = None
    (templated,), applied = causal_lm.encode_prompts(chat, ["the movie"], chat=True)
    assert applied and chat.decode(templated[0]) == "<|user|> the movie <|end|> <|assistant|>"
    (raw,), applied = causal_lm.encode_prompts(chat, ["the movie"], chat=False)
    assert not applied and raw[0].tolist() == chat("the movie", add_special_tokens=False)["input_ids"]
    (_,), applied = causal_lm.encode_prompts(plain, ["the movie"], chat=True)
    assert not applied


def test_generation_speed_counts_exactly_max_new_tokens(lm_dirs):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(lm_dirs["student"]).eval()
    tokenizer = AutoTokenizer.from_pretrained(lm_dirs["student"])
    encoded, _ = causal_lm.encode_prompts(tokenizer, ["the", "the movie"], chat=False)
    config = causal_lm._generation_config(tokenizer, 5, exact=True)
    assert all(causal_lm._generate(model, ids, config).numel() == 5 for ids in encoded)
    assert causal_lm.generation_speed(model, tokenizer, encoded, 5, repeats=1) > 0
    first = causal_lm.greedy_generations(model, tokenizer, encoded, 5)
    assert first == causal_lm.greedy_generations(model, tokenizer, encoded, 5), "greedy decoding is deterministic"


def test_data_config_scores_the_test_split_a_training_config_holds_out(lm_dirs, tmp_path, capsys):
    import yaml
    from transformers import AutoModelForCausalLM

    config = tmp_path / "fit.yaml"
    config.write_text(yaml.safe_dump({"data": {"class_path": "lightning_kd.data.CausalLMDataModule", "init_args": {
        "tokenizer": "ignored: each model's own tokenizer is used", "train_files": [str(lm_dirs["text"])],
        "block_size": BLOCK, "batch_size": 2, "validation_fraction": 0.2, "test_fraction": 0.3,
        "cache_dir": str(lm_dirs["cache"]),
    }}}))
    report.main(["--teacher", str(lm_dirs["teacher"]), "--student", str(lm_dirs["student"]), "--data-config",
                 str(config), "--max-new-tokens", "2", "--repeats", "1"])
    markdown = capsys.readouterr().out
    batches = causal_lm.config_batches(str(config), str(lm_dirs["teacher"]))
    tokens = sum(int(b["labels"][:, 1:].ne(-100).sum()) for b in batches)
    assert f"over {tokens} held-out tokens of the test split of the data in {config}" in markdown
    model = AutoModelForCausalLM.from_pretrained(lm_dirs["teacher"]).eval()
    from lightning_kd.data.sources import load_tokenizer

    token_bytes = causal_lm.token_byte_lengths(load_tokenizer(str(lm_dirs["teacher"])))
    assert float(table_rows(markdown)["teacher"][3]) == pytest.approx(causal_lm.perplexity(model, batches, token_bytes)[0], abs=0.006)
    config.write_text("data:\n  class_path: lightning_kd.data.GlueDataModule\n")
    with pytest.raises(ValueError, match="not a CausalLMDataModule"):
        causal_lm.config_batches(str(config))


def test_report_kind_follows_the_teachers_architecture(lm_dirs, tmp_path):
    assert report.report_kind(lm_dirs["teacher"]) == "causal_lm"
    (tmp_path / "config.json").write_text('{"architectures": ["BertForSequenceClassification"]}')
    assert report.report_kind(tmp_path) == "classification"
    (tmp_path / "config.json").write_text('{"architectures": ["GPT2LMHeadModel"]}')
    assert report.report_kind(tmp_path) == "causal_lm"


def test_classification_report_still_works(tmp_path, tiny_tokenizer_dir, capsys):
    from tests.conftest import make_tiny_bert

    for name, seed, size in (("teacher", 1, {}), ("student", 2, {"layers": 2, "hidden": 16})):
        make_tiny_bert("classification", seed=seed, **size).save_pretrained(tmp_path / name)
    report.main([
        "--teacher", str(tmp_path / "teacher"), "--student", str(tmp_path / "student"), "--task", "rotten_tomatoes",
        "--tokenizer", str(tiny_tokenizer_dir), "--max-length", "32", "--batch-size", "128",
    ])
    markdown = capsys.readouterr().out
    assert markdown.startswith("| model | layers | parameters | test accuracy |")
    rows = table_rows(markdown)
    assert set(rows) == {"teacher", "student"} and rows["teacher"][1] == "4" and rows["student"][1] == "2"
    assert re.search(r"Quality on all \d+ test examples", markdown)


def test_bad_arguments_are_refused(lm_dirs, tmp_path):
    with pytest.raises(SystemExit):
        report.main(["--teacher", str(tmp_path), "--student", str(lm_dirs["student"])])  # no config.json
    with pytest.raises(SystemExit):
        report.main(["--teacher", str(lm_dirs["teacher"]), "--student", str(lm_dirs["student"]), "--block-size", "0"])
    with pytest.raises(SystemExit):
        report.main(["--teacher", "embedded:no-such-model", "--student", str(lm_dirs["student"])])
