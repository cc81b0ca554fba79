"""CausalLMDataModule: packed plain text, prompt/response examples, the Chit-Chat reader, resume and errors."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from datasets import IterableDataset
from torchmetrics import MetricCollection

from lightning_kd.data import CausalLMDataModule
from lightning_kd.data import causal_lm as causal_lm_module
from lightning_kd.data.chitchat import conversation_pairs, write_chitchat_splits
from lightning_kd.data.lm_examples import CausalLMCollator, PackDocuments

WORDS = (
    "hello world how are you fine thanks the a good bad movie film is was great what do think of it i "
    "liked loved hated hate or plot acting one two three yes no maybe tell me about story really so"
).split()
SPECIALS = ["<pad>", "<unk>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} <|end|> {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|> {% endif %}"
)
DOCUMENTS = [
    "hello world how are you",
    "the movie was great",
    "i liked the plot and the acting",  # "and" is not in the vocabulary: <unk>
    "",
    "bad film",
    "what do you think of the story",
    "one two three",
] * 6


def _write_tokenizer(directory: Path, pad: bool = True, eos: bool = True, bos: bool = True, template: bool = False,
                     add_bos: bool = False) -> str:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: index for index, token in enumerate(dict.fromkeys(SPECIALS + WORDS))}
    model = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    model.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    specials = {"unk_token": "<unk>"}
    if bos:
        specials["bos_token"] = "<s>"
    if pad:
        specials["pad_token"] = "<pad>"
    if eos:
        specials["eos_token"] = "</s>"
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=model, add_bos_token=add_bos, extra_special_tokens=SPECIALS[4:], **specials
    )
    if template:
        tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(directory)
    return str(directory)


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory) -> dict[str, str]:
    """Tiny word-level tokenizers: plain (BOS/EOS/pad, BOS not added), chat template, no pad, BOS added by the
    tokenizer's template, neither EOS nor pad, no BOS."""
    root = tmp_path_factory.mktemp("lm_tokenizers")
    return {
        "plain": _write_tokenizer(root / "plain"),
        "chat": _write_tokenizer(root / "chat", template=True),
        "padless": _write_tokenizer(root / "padless", pad=False),
        "bos": _write_tokenizer(root / "bos", add_bos=True),
        "bare": _write_tokenizer(root / "bare", pad=False, eos=False),
        "bosless": _write_tokenizer(root / "bosless", bos=False),
    }


def _load(path: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


@pytest.fixture
def corpus(tmp_path: Path) -> str:
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(DOCUMENTS) + "\n")
    return str(path)


def _module(tokenizer: str, cache_dir: str, **kwargs) -> CausalLMDataModule:
    options = dict(block_size=16, batch_size=4, validation_fraction=0.2, cache_dir=cache_dir)
    return CausalLMDataModule(tokenizer, **{**options, **kwargs})


def _stream(tokenizer, documents: list[str], bos: bool = False) -> list[int]:
    out = []
    for document in documents:
        if document.strip():
            out += ([tokenizer.bos_token_id] if bos else []) + tokenizer(document, add_special_tokens=False)["input_ids"]
            out.append(tokenizer.eos_token_id)
    return out


# ----------------------------------------------------------------------------- plain text
def test_text_is_packed_into_full_blocks_with_eos_between_documents(tokenizers, corpus, tmp_path, cache_dir) -> None:
    held_out = tmp_path / "held_out.txt"
    held_out.write_text("\n".join(DOCUMENTS[:14]) + "\n")
    data = _module(tokenizers["plain"], cache_dir, train_files=[corpus], validation_files=[str(held_out)])
    assert data.task_head == "causal_lm" and data.num_labels is None
    assert data.batch_size == 4 and data.block_size == data.max_length == 16
    data.prepare_data()
    data.setup("fit")
    tokenizer = _load(tokenizers["plain"])
    blocks = data.datasets["train"]["input_ids"]
    assert all(len(block) == 16 for block in blocks), "every block is exactly block_size"
    stream = _stream(tokenizer, DOCUMENTS)
    assert sum(blocks, []) == stream[: len(blocks) * 16], "documents in order, each closed by EOS, the tail dropped"
    assert len(blocks) == len(stream) // 16 and tokenizer.bos_token_id not in stream, "GPT-2-like: no BOS by default"

    batch = next(iter(data.train_dataloader()))
    assert set(batch) == {"input_ids", "attention_mask", "labels", "example_index"}
    assert all(v.shape == (4, 16) and v.dtype == torch.int64 for k, v in batch.items() if k != "example_index")
    assert batch["example_index"].shape == (4,) and batch["example_index"].dtype == torch.int64
    assert torch.equal(batch["labels"], batch["input_ids"]), "labels are the ids themselves: unshifted, all scored"
    assert batch["attention_mask"].all()
    for row, index in enumerate(batch["example_index"].tolist()):
        assert batch["input_ids"][row].tolist() == blocks[index]
    validation = list(data.val_dataloader())
    assert validation and "example_index" not in validation[0]
    assert [b["input_ids"].tolist() for b in data.test_dataloader()] == [b["input_ids"].tolist() for b in validation]
    metrics = data.build_metrics("val/")
    assert isinstance(metrics, MetricCollection) and all(key.startswith("val/") for key in metrics.keys(keep_base=False))


def test_bos_follows_the_tokenizers_template_unless_set(tokenizers, corpus, cache_dir) -> None:
    tokenizer = _load(tokenizers["bos"])
    auto = _module(tokenizers["bos"], cache_dir, train_files=[corpus], validation_fraction=0.5)
    auto.setup("fit")
    blocks = auto.datasets["train"]["input_ids"]
    assert sum(block.count(tokenizer.bos_token_id) for block in blocks) >= len(blocks), "Llama-like: BOS per document"
    off = _module(tokenizers["bos"], cache_dir, train_files=[corpus], add_bos=False)
    off.setup("fit")
    assert not any(tokenizer.bos_token_id in block for block in off.datasets["train"]["input_ids"])
    forced = _module(tokenizers["plain"], cache_dir, train_files=[corpus], add_bos=True)
    forced.setup("fit")
    assert any(_load(tokenizers["plain"]).bos_token_id in block for block in forced.datasets["train"]["input_ids"])


def test_pack_documents_records_where_documents_start() -> None:
    tokenizer = _load_plain_tokenizer()
    pack = PackDocuments(tokenizer, "text", block_size=5, eos_id=3, bos_id=None, document_starts=True)
    out = pack({"text": ["hello world", "", "the movie was great", "bad"]})
    ids = tokenizer(["hello world", "the movie was great", "bad"], add_special_tokens=False)["input_ids"]
    stream = ids[0] + [3] + ids[1] + [3] + ids[2] + [3]  # 3 + 5 + 2 = 10 tokens: two blocks
    assert out["input_ids"] == [stream[:5], stream[5:10]]
    assert out["document_starts"] == [[0, 3], [3]]


def _load_plain_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: index for index, token in enumerate(dict.fromkeys(SPECIALS + WORDS))}
    model = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    model.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=model, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


def test_separate_documents_restart_positions_and_mask_nothing_across_documents(tokenizers, corpus, cache_dir) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    data = _module(tokenizers["plain"], cache_dir, train_files=[corpus], separate_documents=True, block_size=24)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    assert set(batch) == {"input_ids", "position_ids", "labels", "example_index"}, "no attention_mask"
    eos = _load(tokenizers["plain"]).eos_token_id
    ids, positions, labels = batch["input_ids"], batch["position_ids"], batch["labels"]
    assert positions.shape == ids.shape and positions.dtype == torch.int64
    for row in range(len(ids)):
        previous_eos = torch.cat([torch.tensor([False]), ids[row, :-1] == eos])  # a document starts after each EOS
        expected_start = previous_eos.clone()
        expected_start[0] = True
        assert torch.equal(positions[row] == 0, expected_start), "positions restart at each document (and block) start"
        step = positions[row, 1:] - positions[row, :-1]
        assert torch.equal(step == 1, ~previous_eos[1:]), "and count up by one inside a document"
        starts_here = 0 in data.datasets["train"][int(batch["example_index"][row])]["document_starts"]
        previous_eos[0] = starts_here  # the block's first token opens a document, or continues one
        assert torch.equal(labels[row] == -100, previous_eos), "a document's first token is not predicted"
        assert torch.equal(labels[row][~previous_eos], ids[row][~previous_eos]), "other labels are the ids, unshifted"

    # A tiny Llama sees a packed document exactly as it sees that document alone. use_cache=False is required:
    # with a KV cache transformers 5 does not derive the block-diagonal mask from packed position_ids.
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(SPECIALS) + len(WORDS), hidden_size=16, intermediate_size=32,
                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                         max_position_embeddings=64, use_cache=False)
    config._attn_implementation = "eager"
    model = LlamaForCausalLM(config).eval()
    starts = (positions[0] == 0).nonzero().flatten().tolist() + [ids.shape[1]]
    assert len(starts) >= 4, "the block holds several documents"
    with torch.no_grad():
        packed = model(input_ids=ids, position_ids=positions).logits
        unseparated = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
        for start, end in zip(starts[1:-1], starts[2:]):
            alone = model(input_ids=ids[:1, start:end]).logits
            torch.testing.assert_close(packed[0, start:end], alone[0], rtol=1e-5, atol=1e-5)
            assert not torch.allclose(unseparated[0, start:end], alone[0], atol=1e-3), "packing without it leaks"


def test_collator_builds_position_ids_from_document_starts() -> None:
    collate = CausalLMCollator(pad_token_id=0, separate_documents=True)
    batch = collate([{"input_ids": [5, 6, 3, 7, 8, 9, 3, 5], "document_starts": [3, 7]},
                     {"input_ids": [9, 9, 9, 9, 9, 9, 9, 9], "document_starts": [0]},
                     {"input_ids": [8, 8, 8, 8, 8, 8, 8, 8], "document_starts": []}])
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1, 2, 3, 0], list(range(8)), list(range(8))]
    assert batch["labels"].tolist() == [[5, 6, 3, -100, 8, 9, 3, -100], [-100] + [9] * 7, [8] * 8]
    assert "attention_mask" not in batch


# ----------------------------------------------------------------------------- prompt/response examples
PAIRS = [
    ("what do you think of the movie", "i liked it"),
    ("tell me about the plot", "the story was great really"),
    ("hello", "hello how are you"),
    ("how are you", "fine thanks"),
    ("what is one two three", "one two three"),
    ("yes or no", "maybe"),
    ("tell me a story", "one story is a good story so it is great"),
    ("do you hate the acting", "no i loved the acting"),
] * 2


@pytest.fixture
def pairs_file(tmp_path: Path) -> str:
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps({"question": p, "answer": r, "id": i}) + "\n" for i, (p, r) in enumerate(PAIRS)))
    return str(path)


def _check_response_labels(batch, tokenizer, responses: dict[str, str], pad_id: int, closing: int) -> None:
    """Labels equal the ids exactly on the response (+ its closing token), -100 on prompt and padding."""
    for ids, mask, labels in zip(batch["input_ids"], batch["attention_mask"], batch["labels"]):
        length = int(mask.sum())
        assert mask[:length].all() and not mask[length:].any(), "right padding"
        assert (ids[length:] == pad_id).all() and (labels[length:] == -100).all()
        scored = labels != -100
        assert torch.equal(labels[scored], ids[scored]), "labels are the ids (unshifted) where scored"
        first = int(scored.nonzero()[0])
        assert scored[first:length].all() and not scored[:first].any(), "one contiguous response span"
        prompt = tokenizer.decode(ids[:first], skip_special_tokens=True)
        assert int(ids[length - 1]) == closing and int(labels[length - 1]) == closing, "the model learns to stop"
        assert tokenizer.decode(labels[scored], skip_special_tokens=True) == responses[prompt.strip()]


def test_prompt_response_without_chat_template(tokenizers, pairs_file, cache_dir) -> None:
    data = _module(tokenizers["plain"], cache_dir, train_files=[pairs_file], prompt_field="question",
                   response_field="answer", block_size=32, validation_fraction=0.25)
    data.setup("fit")
    tokenizer = _load(tokenizers["plain"])
    batch = next(iter(data.train_dataloader()))
    assert set(batch) == {"input_ids", "attention_mask", "labels", "example_index"}
    assert all(v.dtype == torch.int64 for v in batch.values())
    assert batch["attention_mask"].min() == 0, "rows of different lengths are padded per batch"
    _check_response_labels(batch, tokenizer, dict(PAIRS), tokenizer.pad_token_id, tokenizer.eos_token_id)
    ids, labels = batch["input_ids"][0].tolist(), batch["labels"][0].tolist()
    example = data.datasets["train"][int(batch["example_index"][0])]
    assert example["input_ids"] == ids[: len(example["input_ids"])] and example["labels"] == labels[: len(example["labels"])]
    for batch in data.val_dataloader():
        _check_response_labels(batch, tokenizer, dict(PAIRS), tokenizer.pad_token_id, tokenizer.eos_token_id)


def test_prompt_response_with_chat_template(tokenizers, pairs_file, cache_dir) -> None:
    data = _module(tokenizers["chat"], cache_dir, train_files=[pairs_file], prompt_field="question",
                   response_field="answer", block_size=32)
    data.setup("fit")
    tokenizer = _load(tokenizers["chat"])
    end = tokenizer.convert_tokens_to_ids("<|end|>")
    for batch in data.train_dataloader():
        _check_response_labels(batch, tokenizer, dict(PAIRS), tokenizer.pad_token_id, end)
        for ids, labels in zip(batch["input_ids"], batch["labels"]):
            assert int(ids[0]) == tokenizer.bos_token_id, "the template's own BOS, not a second one"
            assert tokenizer.convert_ids_to_tokens(int(ids[(labels != -100).nonzero()[0] - 1])) == "<|assistant|>"


@pytest.mark.parametrize("kind", ["chat", "plain"])
def test_messages_with_several_assistant_turns(kind, tokenizers, tmp_path, cache_dir) -> None:
    conversation = [
        {"role": "system", "content": "you are a good movie story"},
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": "hello how are you"},
        {"role": "user", "content": "what do you think of the plot"},
        {"role": "assistant", "content": "i loved it"},
        {"role": "user", "content": "yes"},
    ]
    path = tmp_path / "chats.jsonl"
    path.write_text("".join(json.dumps({"messages": conversation[: 3 + n]}) + "\n" for n in range(4)) * 2)
    data = _module(tokenizers[kind], cache_dir, train_files=[str(path)], validation_files=[str(path)],
                   messages_field="messages", block_size=64, batch_size=8)
    data.setup("fit")
    tokenizer = _load(tokenizers[kind])
    batch = next(iter(data.val_dataloader()))
    for ids, labels, mask in zip(batch["input_ids"], batch["labels"], batch["attention_mask"]):
        scored = labels != -100
        assert torch.equal(labels[scored], ids[scored])
        spans = torch.diff(torch.cat([torch.tensor([0]), scored.int(), torch.tensor([0])])).nonzero().flatten()
        texts = [tokenizer.decode(ids[a:b], skip_special_tokens=True) for a, b in zip(spans[::2], spans[1::2])]
        real = tokenizer.decode(ids[mask.bool()], skip_special_tokens=True)
        expected = ["hello how are you"] + (["i loved it"] if "loved" in real else [])
        assert texts == expected, "each assistant turn is scored; system and user turns are not"


def test_pad_less_tokenizer_pads_with_eos(tokenizers, pairs_file, cache_dir) -> None:
    data = _module(tokenizers["padless"], cache_dir, train_files=[pairs_file], prompt_field="question",
                   response_field="answer", block_size=32)
    data.setup("fit")
    tokenizer = _load(tokenizers["padless"])
    assert tokenizer.pad_token_id is None and data.pad_token_id == tokenizer.eos_token_id
    for batch in data.train_dataloader():
        _check_response_labels(batch, tokenizer, dict(PAIRS), tokenizer.eos_token_id, tokenizer.eos_token_id)


def test_long_examples_are_cut_from_the_right_and_promptless_ones_dropped_or_refused(tokenizers, tmp_path, cache_dir) -> None:
    path = tmp_path / "long.jsonl"
    rows = [{"prompt": "tell me", "response": " ".join(["great"] * 40)}, {"prompt": "hello", "response": "fine"}]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    data = _module(tokenizers["plain"], cache_dir, train_files=[str(path)], validation_files=[str(path)],
                   prompt_field="prompt", response_field="response", block_size=10)
    data.setup("fit")
    first = data.datasets["validation"][0]
    assert len(first["input_ids"]) == 10 and first["labels"][:2] == [-100, -100] and first["labels"][2:] == first["input_ids"][2:]
    assert len(data.datasets["validation"][1]["input_ids"]) == 3, "hello fine </s>: short examples are not padded in the cache"
    too_long = tmp_path / "too_long.jsonl"
    too_long.write_text(json.dumps({"prompt": " ".join(["no"] * 12), "response": "yes"}) + "\n" + json.dumps(rows[1]) + "\n")
    dropped = _module(tokenizers["plain"], tmp_path / "drop_cache", train_files=[str(path)],
                      validation_files=[str(too_long)], prompt_field="prompt", response_field="response", block_size=10)
    dropped.setup("fit")
    assert len(dropped.datasets["validation"]) == 1, "the example whose response starts after block_size is dropped"
    refused = _module(tokenizers["plain"], tmp_path / "other_cache", train_files=[str(path)], overlong_examples="error",
                      validation_files=[str(too_long)], prompt_field="prompt", response_field="response", block_size=10)
    with pytest.raises(ValueError, match=r"example 0 of the validation data has no response token within .* block_size=10"):
        refused.setup("fit")


# ----------------------------------------------------------------------------- splits, order, resume
def test_validation_hold_out_is_seeded_and_disjoint(tokenizers, tmp_path, cache_dir) -> None:
    path = tmp_path / "many.jsonl"
    prompts = [f"{a} {b} {c}" for a in WORDS[:6] for b in WORDS[6:12] for c in WORDS[12:14]]
    path.write_text("".join(json.dumps({"prompt": p, "response": "yes"}) + "\n" for p in prompts))

    def split(seed: int) -> tuple[set, set]:
        data = _module(tokenizers["plain"], cache_dir, train_files=[str(path)], prompt_field="prompt",
                       response_field="response", seed=seed, validation_fraction=0.1)
        data.setup("fit")
        return tuple({tuple(r) for r in data.datasets[name]["input_ids"]} for name in ("train", "validation"))

    train, validation = split(0)
    assert len(validation) == round(len(prompts) * 0.1) and len(train) == len(prompts) - len(validation)
    assert not train & validation
    assert split(0) == (train, validation), "the same seed holds out the same examples"
    assert split(1)[1] != validation


def test_mid_epoch_resume_gives_exactly_the_remaining_batches(tokenizers, corpus, cache_dir) -> None:
    def loader():
        data = _module(tokenizers["plain"], cache_dir, train_files=[corpus], block_size=8, batch_size=3, seed=5)
        data.setup("fit")
        return data.train_dataloader()

    uninterrupted = loader()
    uninterrupted.sampler.set_epoch(1)
    full = list(uninterrupted)
    assert len(full) >= 5
    resumed = loader()
    resumed.load_state_dict({"epoch": 1, "batches": 2})
    rest = list(resumed)
    assert len(rest) == len(full) - 2
    for a, b in zip(full[2:], rest):
        assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["example_index"], b["example_index"])
    assert [b["example_index"].tolist() for b in resumed] == [b["example_index"].tolist() for b in full], "once only"


def test_a_trainer_resumed_mid_epoch_sees_the_batches_of_an_uninterrupted_run(
    tokenizers, corpus, tmp_path, cache_dir, monkeypatch
) -> None:
    from pytorch_lightning import LightningModule, Trainer, seed_everything
    from pytorch_lightning.callbacks import ModelCheckpoint

    monkeypatch.setenv("PL_GLOBAL_SEED", "0")  # seed_everything sets it; restored after the test

    class Recorder(LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(1))
            self.seen: list[list[int]] = []

        def training_step(self, batch, batch_idx):
            self.seen.append(batch["example_index"].tolist())
            return (self.weight - 1).pow(2).sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    def run(steps: int, ckpt_path: str | None = None, save: bool = False) -> list[list[int]]:
        seed_everything(7)
        data = _module(tokenizers["plain"], cache_dir, train_files=[corpus], block_size=8, batch_size=4)
        checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=3, save_top_k=-1)
        module = Recorder()
        Trainer(max_steps=steps, max_epochs=5, logger=False, enable_progress_bar=False, enable_model_summary=False,
                enable_checkpointing=save, callbacks=[checkpoint] if save else [], limit_val_batches=0,
                default_root_dir=tmp_path).fit(module, datamodule=data, ckpt_path=ckpt_path)
        return module.seen

    uninterrupted = run(8)  # 21 blocks, 6 batches an epoch: resuming at step 3 is mid-epoch; the run crosses epochs
    assert len(uninterrupted) == 8 and sorted(sum(uninterrupted[:6], [])) == list(range(21))
    first = run(3, save=True)
    resumed = run(8, ckpt_path=str(next((tmp_path / "ckpt").glob("*step=3*.ckpt"))))
    assert first + resumed == uninterrupted


def test_fingerprint_follows_the_data(tokenizers, corpus, cache_dir) -> None:
    first = _module(tokenizers["plain"], cache_dir, train_files=[corpus]).fingerprint
    assert first == _module(tokenizers["plain"], cache_dir, train_files=[corpus]).fingerprint
    assert first["data_module"] == "CausalLMDataModule" and first["mode"] == "text"
    separated = _module(tokenizers["plain"], cache_dir, train_files=[corpus], separate_documents=True).fingerprint
    assert separated["datasets_fingerprint"] != first["datasets_fingerprint"]
    with pytest.raises(ValueError, match="no stable row index"):
        _ = _module(tokenizers["plain"], cache_dir, train_files=[corpus], streaming=True).fingerprint


def test_streaming_text_and_examples(tokenizers, corpus, pairs_file, cache_dir) -> None:
    text = _module(tokenizers["plain"], cache_dir, train_files=[corpus], streaming=True, validation_fraction=0.3)
    text.setup("fit")
    assert isinstance(text.datasets["train"], IterableDataset)
    batches = list(text.train_dataloader())
    assert batches and all(b["input_ids"].shape[1] == 16 and torch.equal(b["labels"], b["input_ids"]) for b in batches)
    examples = _module(tokenizers["chat"], cache_dir, train_files=[pairs_file], prompt_field="question",
                       response_field="answer", streaming=True, block_size=32, max_train_samples=5)
    examples.setup("fit")
    assert sum(len(b["input_ids"]) for b in examples.train_dataloader()) == 5


def test_hf_dataset_of_chat_messages(tokenizers, tmp_path, cache_dir) -> None:
    from datasets import Dataset, DatasetDict

    chats = [[{"role": "user", "content": prompt}, {"role": "assistant", "content": response}] for prompt, response in PAIRS]
    DatasetDict({"train": Dataset.from_dict({"chat": chats}), "validation": Dataset.from_dict({"chat": chats[:3]})}
                ).save_to_disk(tmp_path / "chats")
    data = _module(tokenizers["chat"], cache_dir, hf_dataset=str(tmp_path / "chats"), messages_field="chat",
                   block_size=32)
    data.setup("validate")
    assert len(data.datasets["train"]) == len(PAIRS) and len(data.datasets["validation"]) == 3
    tokenizer = _load(tokenizers["chat"])
    batch = next(iter(data.val_dataloader()))
    _check_response_labels(batch, tokenizer, dict(PAIRS), tokenizer.pad_token_id, tokenizer.convert_tokens_to_ids("<|end|>"))


def test_test_files_feed_the_test_loader(tokenizers, corpus, tmp_path, cache_dir) -> None:
    test = tmp_path / "test.txt"
    test.write_text("one two three\n" * 20)
    data = _module(tokenizers["plain"], cache_dir, train_files=[corpus], test_files=[str(test)], block_size=8)
    data.setup("test")
    ids = torch.cat([b["input_ids"] for b in data.test_dataloader()])
    tokenizer = _load(tokenizers["plain"])
    assert set(ids.flatten().tolist()) == set(_stream(tokenizer, ["one two three"]))


# ----------------------------------------------------------------------------- the Chit-Chat corpus
def _chitchat(count: int) -> dict:
    """``count`` conversations in the package's format; conversation k has k % 4 + 1 turns (one turn: no pair)."""

    def turn(sender: str, *texts: str) -> list[dict]:
        return [{"text": text, "timestamp": "2018-05-02T19:38:15Z", "sender": sender} for text in texts]

    data = {}
    for k in range(count):
        word = WORDS[k]  # in every turn, so each conversation's texts are its own
        turns = [turn("a", f"hello {word}", "how are you"), turn("b", f"fine {word}", " "), turn("a", f"good {word}"),
                 turn("b", "", f"the movie was {word}")][: k % 4 + 1]
        data[f"conversation-{k:03d}"] = {"messages": turns, "ratings": {"witty": 3}, "prompt": "talk", "start": ""}
    return data


def test_chitchat_pairs_and_split_by_conversation(tmp_path: Path) -> None:
    source = tmp_path / "dataset.json"
    source.write_text(json.dumps(_chitchat(40)))
    assert list(conversation_pairs(_chitchat(4)["conversation-003"])) == [
        ("hello are\nhow are you", "fine are"), ("fine are", "good are"), ("good are", "the movie was are"),
    ], "a turn's messages joined by newlines (blank ones dropped); each consecutive pair of turns"
    paths = write_chitchat_splits(source, tmp_path / "cache", validation_fraction=0.2, seed=0)
    rows = {split: [json.loads(line) for line in path.read_text().splitlines()] for split, path in paths.items()}
    assert all(set(row) == {"prompt", "response", "conversation"} for split in rows.values() for row in split)
    assert sum(len(split) for split in rows.values()) == sum(k % 4 for k in range(40)), "one-turn conversations give none"
    conversations = {split: {row["conversation"] for row in split_rows} for split, split_rows in rows.items()}
    assert not conversations["train"] & conversations["validation"], "never the same conversation on both sides"
    assert len(conversations["validation"]) == round(30 * 0.2), "20% of the 30 conversations that have a pair"
    stamp = paths["train"].stat().st_mtime_ns
    assert write_chitchat_splits(source, tmp_path / "cache", 0.2, 0) == paths and paths["train"].stat().st_mtime_ns == stamp
    other = write_chitchat_splits(source, tmp_path / "cache", 0.2, 1)
    assert other["validation"].read_text() != paths["validation"].read_text(), "the seed picks the conversations"


def test_chitchat_through_the_data_module(tokenizers, tmp_path, cache_dir, monkeypatch) -> None:
    source = tmp_path / "dataset.json"
    source.write_text(json.dumps(_chitchat(20)))
    monkeypatch.setattr(causal_lm_module, "locate_embedded", lambda name: source)
    data = _module(tokenizers["chat"], cache_dir, train_files=["embedded:chitchat"], block_size=32, batch_size=2)
    assert (data.prompt_field, data.response_field) == ("prompt", "response")
    data.setup("fit")
    tokenizer = _load(tokenizers["chat"])
    decoded = {split: {tokenizer.decode(ids, skip_special_tokens=True) for ids in data.datasets[split]["input_ids"]}
               for split in ("train", "validation")}
    assert len(decoded["validation"]) >= 1 and not decoded["train"] & decoded["validation"]
    batch = next(iter(data.train_dataloader()))
    assert (batch["labels"] != -100).any() and batch["labels"].shape == batch["input_ids"].shape


@pytest.mark.skipif(importlib.util.find_spec("chitchat_dataset") is None, reason="needs chitchat-dataset installed")
def test_real_chitchat_corpus(tmp_path: Path) -> None:
    from lightning_kd.data.sources import locate_embedded

    source = locate_embedded("embedded:chitchat")
    conversations = json.loads(source.read_text())
    assert len(conversations) == 7168
    with_pairs = sum(1 for c in conversations.values() if any(True for _ in conversation_pairs(c)))
    paths = write_chitchat_splits(source, tmp_path, validation_fraction=0.01, seed=42)
    rows = {split: [json.loads(line) for line in path.read_text().splitlines()] for split, path in paths.items()}
    assert 100_000 < len(rows["train"]) + len(rows["validation"]) <= 131_569, "one row per pair of consecutive turns"
    ids = {split: {row["conversation"] for row in split_rows} for split, split_rows in rows.items()}
    assert len(ids["train"]) + len(ids["validation"]) == with_pairs and not ids["train"] & ids["validation"]
    assert len(ids["validation"]) == round(with_pairs * 0.01)
    assert all(row["prompt"].strip() and row["response"].strip() for row in rows["validation"])


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "Pass exactly one corpus"),
        ({"train_files": ["a.txt"], "hf_dataset": "x"}, "Pass exactly one corpus"),
        ({"train_files": ["a.txt"], "block_size": 1}, "block_size must be at least 2"),
        ({"train_files": ["a.txt"], "prompt_field": "q"}, "prompt_field and response_field go together"),
        ({"train_files": ["a.txt"], "messages_field": "m", "prompt_field": "q", "response_field": "r"}, "not both"),
        ({"train_files": ["a.jsonl"], "messages_field": "m", "separate_documents": True}, "separate_documents applies"),
        ({"train_files": ["embedded:chitchat", "a.jsonl"]}, "pass validation_files too"),
        ({"train_files": ["a.txt"], "validation_fraction": 1.0}, "validation_fraction"),
        ({"train_files": ["a.txt"], "batch_size": 0}, "batch_size must be a positive integer"),
        ({"train_files": ["a.txt"], "streaming": True, "num_proc": 2}, "Drop one"),
        ({"validation_files": ["a.txt"], "hf_dataset": "x"}, "validation_files go with train_files"),
    ],
)
def test_bad_arguments_fail_in_the_constructor(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        CausalLMDataModule("unused-tokenizer", **kwargs)


def test_bad_data_and_tokenizers_fail_at_setup(tokenizers, corpus, pairs_file, tmp_path, cache_dir) -> None:
    with pytest.raises(ValueError, match="no column 'prompt'.*Set prompt_field/response_field="):
        _module(tokenizers["plain"], cache_dir, train_files=[pairs_file], prompt_field="prompt",
                response_field="answer").setup("fit")
    with pytest.raises(ValueError, match="no column 'body'.*Set text_column="):
        _module(tokenizers["plain"], cache_dir, train_files=[corpus], text_column="body").setup("fit")
    with pytest.raises(ValueError, match="neither an EOS nor a pad token"):
        _module(tokenizers["bare"], cache_dir, train_files=[corpus]).setup("fit")
    with pytest.raises(ValueError, match="add_bos=True, but the tokenizer .* has no BOS token"):
        _module(tokenizers["bosless"], cache_dir, train_files=[corpus], add_bos=True).setup("fit")
    with pytest.raises(ValueError, match="shorter than one block"):
        _module(tokenizers["plain"], cache_dir, train_files=[corpus], block_size=400).setup("fit")
    chats = tmp_path / "chats.jsonl"
    chats.write_text(json.dumps({"messages": [{"role": "user", "content": "hello"}]}) + "\n")
    with pytest.raises(ValueError, match=r"example 0 of the train data has no 'assistant' message.*\['user'\]"):
        _module(tokenizers["chat"], cache_dir, train_files=[str(chats)], validation_files=[str(chats)],
                messages_field="messages").setup("fit")
    numbers = tmp_path / "numbers.jsonl"
    numbers.write_text(json.dumps({"prompt": "hello", "response": 3}) + "\n")
    with pytest.raises(ValueError, match="must both be strings"):
        _module(tokenizers["plain"], cache_dir, train_files=[str(numbers)], validation_files=[str(numbers)],
                prompt_field="prompt", response_field="response").setup("fit")


def test_a_template_that_rewrites_earlier_turns_is_reported(tokenizers, pairs_file, tmp_path, cache_dir) -> None:
    tokenizer = _load(tokenizers["chat"])
    # The generation prompt differs from the way an answered turn is rendered, so the prefixes do not match.
    tokenizer.chat_template = (
        "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} <|end|> {% endfor %}"
        "{% if add_generation_prompt %}<|system|> {% endif %}"
    )
    tokenizer.save_pretrained(tmp_path / "odd")
    data = _module(str(tmp_path / "odd"), cache_dir, train_files=[pairs_file], prompt_field="question",
                   response_field="answer", block_size=32)
    with pytest.raises(ValueError, match="does not render assistant message 1 as a continuation"):
        data.setup("fit")


def test_test_fraction_holds_out_a_third_disjoint_split(tokenizers, tmp_path):
    corpus = tmp_path / "docs.txt"
    corpus.write_text("\n".join(f"{w} {WORDS[i % len(WORDS)]} {WORDS[(i * 7) % len(WORDS)]}" for i, w in enumerate(WORDS * 4)) + "\n")
    data = CausalLMDataModule(tokenizer=tokenizers["plain"], train_files=[str(corpus)], block_size=4, batch_size=2,
                              validation_fraction=0.2, test_fraction=0.25, seed=3)
    data.setup("fit")
    rows = {split: {tuple(r["input_ids"]) for r in data.datasets[split]} for split in ("train", "validation", "test")}
    assert all(rows.values())
    assert next(iter(data.test_dataloader()))["input_ids"].tolist()[0] in [list(r) for r in rows["test"]]
    with pytest.raises(ValueError, match="test_fraction must be in"):
        CausalLMDataModule(tokenizer=tokenizers["plain"], train_files=[str(corpus)], test_fraction=1.0)
    with pytest.raises(ValueError, match="drop one"):
        CausalLMDataModule(tokenizer=tokenizers["plain"], train_files=[str(corpus)], test_fraction=0.1, test_files=[str(corpus)])
