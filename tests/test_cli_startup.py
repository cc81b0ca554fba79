"""The command before torch loads: --help and the method list, refusals in well under a second with hints that name
keys that exist, short method names, YAML errors with file/line/column, and a SIGTERM during start-up."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lightning_kd.config_keys import unknown_key
from lightning_kd.errors import HOW_TO_DEBUG, UserInputError, user_errors
from lightning_kd.startup import catalog
from lightning_kd.startup.preflight import COMMON_KEYS, SUBCOMMAND_KEYS, preflight
from lightning_kd.startup.trainer_keys import trainer_arguments

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "pytorch_lightning", "lightning_fabric", "transformers", "datasets")


def _command(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("LIGHTNING_KD_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "lightning_kd", *args], capture_output=True, text=True, env=env, cwd=ROOT, timeout=timeout)


def _refused(words: list[str]) -> str:
    with pytest.raises(UserInputError) as error:
        preflight(words)
    return str(error.value)


# ------------------------------------------------------------------ nothing heavy before the checks
def test_the_entry_point_and_its_checks_load_nothing_heavy(tmp_path):
    config = tmp_path / "ok.yaml"
    config.write_text("trainer:\n  max_steps: 3\nmodel: KD\n")
    code = (
        "import sys\nfrom lightning_kd.cli import main\nfrom lightning_kd.startup.preflight import preflight\n"
        f"preflight(['fit', '--config', {str(config)!r}, '--model', 'TinyBERT', '--trainer.max_epochs=1'])\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_help_lists_every_method_with_its_description_and_a_refusal_is_fast():
    started = time.monotonic()
    done = _command("--help")
    assert done.returncode == 0, done.stderr
    for entry in (*catalog.methods(), *catalog.data_modules()):
        assert f"  {entry.name} " in done.stdout and entry.summary.split()[0] in done.stdout, entry.name
    assert "exit status" in done.stdout and "fit --help" not in done.stderr

    refused = _command("fit", "--trainer.max_step=3")
    elapsed = time.monotonic() - started  # both commands; before the start-up checks one refusal took 6.5 to 9 s
    assert refused.returncode == 2
    assert refused.stderr.splitlines()[0] == (
        "lightning-kd: error: Unknown key trainer.max_step; did you mean trainer.max_steps? (Keys cannot be abbreviated.)"
    )
    assert refused.stderr.rstrip().endswith(HOW_TO_DEBUG)
    assert elapsed < 6, elapsed


def test_the_catalog_read_from_source_matches_the_imported_classes():
    import lightning_kd.data as data
    import lightning_kd.methods as methods

    assert [e.name for e in catalog.methods()] == list(methods.__all__)
    for entry in (*catalog.methods(), *catalog.data_modules()):
        cls = getattr(methods if entry.class_path.startswith("lightning_kd.methods.") else data, entry.name)
        assert cls.__doc__.strip().splitlines()[0].replace("``", "").startswith(entry.summary[:40]), entry.name


def test_the_start_up_keys_are_the_parsers(tmp_path):
    """COMMON_KEYS, SUBCOMMAND_KEYS and the Trainer arguments read from source are exactly what the parser takes."""
    from pytorch_lightning import LightningDataModule, LightningModule

    from lightning_kd.distillation_cli import DistillationCLI

    found = {}

    class Keys(DistillationCLI):
        def parse_arguments(self, parser, args):
            for name, subparser in self._subcommand_parsers.items():
                dests = {action.dest for action in subparser._actions}
                found[name] = ({d.split(".")[0] for d in dests}, {d.split(".")[1] for d in dests if d.startswith("trainer.")})
            raise SystemExit(0)

    with pytest.raises(SystemExit):
        Keys(LightningModule, LightningDataModule, subclass_mode_model=True, subclass_mode_data=True, args=["fit"],
             auto_configure_optimizers=False)
    assert set(found) == set(SUBCOMMAND_KEYS)
    for name, (top, trainer) in found.items():
        assert top == COMMON_KEYS | SUBCOMMAND_KEYS[name], name
        assert trainer - {"help"} == set(trainer_arguments()), name


# ------------------------------------------------------------------ refusals and hints (no process needed)
@pytest.mark.parametrize(
    ("words", "expected"),
    [
        (["fitt"], "Unknown subcommand 'fitt'; did you mean fit?"),
        ([], "Name a subcommand: fit, validate, test or predict"),
        (["fit", "--trainr.max_epochs=3"], "Unknown key trainr.max_epochs; did you mean trainer.max_epochs?"),
        (["fit", "--trainr.callbacks.every_n=3"], "Unknown key trainr.callbacks.every_n: there is no section 'trainr'; did you mean trainer?"),
        (["fit", "--seed", "3"], "Unknown key seed; did you mean seed_everything? (Keys cannot be abbreviated.)"),
        (["fit", "--trainer.max_epochx", "3"], "Unknown key trainer.max_epochx; did you mean trainer.max_epochs"),
        (["fit", "--model", "KDD"], "--model: unknown method 'KDD'; did you mean KD, PKD or CKD? The methods: ALPKD, AnnealingKD,"),
        (["fit", "--model=lightning_kd.methods.Nope"], "--model: unknown method 'Nope'. The methods: ALPKD,"),
        (["fit", "--model.help", "tinybrt"], "--model.help: unknown method 'tinybrt'; did you mean TinyBERT"),
        (["fit", "--data", "Glue"], "--data: unknown data module 'Glue'; did you mean GlueDataModule?"),
        (["fit", "--model", "GlueDataModule"], "'GlueDataModule' is a data module, not a method; give it as --data GlueDataModule."),
        (["validate", "--return_predictions=true"], "Unknown key return_predictions"),
    ],
)
def test_refusals_name_keys_and_classes_that_exist(words, expected):
    assert _refused(words).startswith(expected) or expected in _refused(words)


def test_short_names_become_class_paths():
    words = preflight(["fit", "--model", "KD", "--model.help=tinybert", "--data=GlueDataModule", "--trainer.max_steps", "3"])
    assert words == ["fit", "--model", "lightning_kd.methods.KD", "--model.help=lightning_kd.methods.TinyBERT",
                     "--data=lightning_kd.data.GlueDataModule", "--trainer.max_steps", "3"]
    assert preflight(["fit", "--model", "my_package.MyMethod"]) == ["fit", "--model", "my_package.MyMethod"]  # not ours to judge


def test_config_files_yaml_errors_and_their_keys_are_located(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("model:\n  class_path: KD\n  init_args:\n    teacher: x\n   student_layers: 3\n")
    assert _refused(["fit", "--config", str(broken)]).startswith(f"{broken}, line 5, column ")
    assert "<unicode string>" not in _refused(["fit", "-c", str(broken)])

    typo = tmp_path / "typo.yaml"
    typo.write_text("trainer:\n  max_step: 3\n")
    assert _refused(["fit", f"--config={typo}"]) == (
        f"{typo}: Unknown key trainer.max_step; did you mean trainer.max_steps? (Keys cannot be abbreviated.)"
    )
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("model:\n  class_path: lightning_kd.methods.KDD\n")
    assert _refused(["fit", "--config", str(unknown)]).startswith(f"model in {unknown}: unknown method 'KDD'; did you mean KD")
    assert "does not exist" in _refused(["fit", "--config", str(tmp_path / "missing.yaml")])


def test_switching_the_method_over_a_config_with_a_prediction_block_says_what_to_do(tmp_path):
    config = tmp_path / "kd.yaml"
    config.write_text("model:\n  class_path: lightning_kd.methods.KD\n  init_args:\n    prediction:\n      temperature: 2.0\n")
    message = _refused(["fit", "--config", str(config), "--model", "TinyBERT"])
    assert message.startswith(f"--model TinyBERT switches the method from KD (set in {config}), whose prediction: block")
    assert "Namespace(" not in message and "class_path: lightning_kd.methods.TinyBERT" in message
    plain = tmp_path / "plain.yaml"
    plain.write_text("model:\n  class_path: lightning_kd.methods.KD\n  init_args:\n    student_layers: 3\n")
    assert preflight(["fit", "--config", str(plain), "--model", "TinyBERT"])[-1] == "lightning_kd.methods.TinyBERT"


def test_a_missing_checkpoint_file_is_refused_with_the_ones_beside_it(tmp_path):
    (tmp_path / "epoch=0-step=2.ckpt").write_bytes(b"not a checkpoint")
    message = _refused(["fit", f"--ckpt_path={tmp_path / 'last.ckpt'}"])
    assert message.startswith(f"--ckpt_path {tmp_path / 'last.ckpt'}: no such file.")
    assert preflight(["fit", "--ckpt_path", "last"]) and preflight(["fit", "--ckpt_path=auto"])


def test_unknown_key_suggestions_exist_at_their_level():
    valid = ["model", "return_predictions", "trainer.max_steps", "trainer.max_epochs", "prediction.temperature", "temperature_x"]
    assert str(unknown_key("prediction.temprature", valid)) == "Unknown key prediction.temprature; did you mean prediction.temperature?"
    assert "return_predictions" not in str(unknown_key("predictions.temprature", valid))


# ------------------------------------------------------------------ through the parser (torch loaded, in this process)
def test_the_parser_path_names_existing_keys_lists_methods_and_takes_short_names(capsys):
    from lightning_kd.cli import main, run_cli

    # A misspelt key inside the prediction block: suggested from the block's own keys (it once said return_predictions).
    with pytest.raises(SystemExit), user_errors(argv=[]):
        run_cli(["fit", "--model=lightning_kd.methods.KD", "--model.init_args.prediction.temprature=3"])
    assert "Unknown key model.init_args.prediction.temprature; did you mean prediction.temperature?" in capsys.readouterr().err
    # No abbreviations in the parser either (for run_cli callers, which skip the start-up checks).
    with pytest.raises(SystemExit), user_errors(argv=[]):
        run_cli(["fit", "--trainer.max_step=3"])
    assert "did you mean trainer.max_steps? (Keys cannot be abbreviated.)" in capsys.readouterr().err

    saved = sys.argv
    try:
        for argv, expected in ((["fit", "--help"], "methods (--model <name>"), (["fit", "--model.help", "KD"], "--model.prediction.temperature")):
            sys.argv = ["lightning-kd", *argv]
            with pytest.raises(SystemExit) as exit_info:
                main()
            out = capsys.readouterr().out
            assert exit_info.value.code == 0 and expected in out, out[-2000:]
            if argv[1] == "--help":
                assert "  KD " in out and "Soft-label knowledge distillation" in out and "  TinyBERT " in out
    finally:
        sys.argv = saved


# ------------------------------------------------------------------ signals during start-up
def test_sigterm_during_start_up_exits_143_with_a_message(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen([sys.executable, "-m", "lightning_kd", "fit", "--model", "KD", "--trainer.max_steps=1"],
                               cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1.0)  # the start-up checks are done after ~0.2 s; loading torch and Lightning takes seconds more
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr[-2000:]
    assert "lightning-kd: interrupted by SIGTERM during start-up, before training began" in stderr
    assert "Traceback" not in stderr
