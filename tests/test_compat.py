"""One test per private API lightning_kd relies on (listed in lightning_kd/compat.py).

Each asserts the private name still exists and behaves as relied on in the installed versions, so an
upgrade that breaks one fails here, naming it. Fix lightning_kd/compat.py (or the file named in its
docstring) and update ``VERIFIED_WITH``.
"""

from __future__ import annotations

import inspect

import pytorch_lightning as pl
import torch
from torch import nn

from lightning_kd.compat import VERIFIED_WITH, attached_trainer, ddp_kwargs, device_of_to_args, forget_train_loader
from lightning_kd.methods import KD
from tests.conftest import make_tiny_bert
from tests.core.test_ddp import _Data

UPGRADE = f"a private API changed since {VERIFIED_WITH}; see lightning_kd/compat.py"


def _trainer(**kwargs) -> pl.Trainer:
    options = dict(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                   enable_model_summary=False, num_sanity_val_steps=0)
    return pl.Trainer(**{**options, **kwargs})


# ---------------------------------------------------------------- wrapped in lightning_kd/compat.py
def test_torch_parse_to_names_the_device_of_a_to_call():
    assert device_of_to_args("meta") == torch.device("meta"), UPGRADE
    assert device_of_to_args(torch.float64) is None, UPGRADE
    assert device_of_to_args(torch.device("cpu"), torch.float16) == torch.device("cpu"), UPGRADE
    assert device_of_to_args(device="meta", dtype=torch.bfloat16) == torch.device("meta"), UPGRADE
    assert device_of_to_args(torch.zeros(1, device="meta")) == torch.device("meta"), UPGRADE


def test_lightning_module_trainer_attribute():
    module = pl.LightningModule()
    assert attached_trainer(module) is None, UPGRADE
    trainer = _trainer()
    module.trainer = trainer
    assert attached_trainer(module) is trainer and module._trainer is trainer, UPGRADE


def test_fit_loop_combined_loader_is_the_early_built_train_loader_and_is_rebuilt_when_dropped():
    seen = {}

    class Probe(KD):
        def configure_optimizers(self):
            assert self.trainer.estimated_stepping_batches == 2  # builds the train loader ahead of the fit loop
            seen["built early"] = self.trainer.fit_loop._combined_loader is not None
            forget_train_loader(self.trainer)
            seen["dropped"] = self.trainer.fit_loop._combined_loader is None
            return super().configure_optimizers()

    method = Probe(teacher=make_tiny_bert(seed=1), student=make_tiny_bert(seed=2, layers=2, hidden=16))
    trainer = _trainer(max_epochs=1)  # no max_steps: the estimate then iterates the loader
    trainer.fit(method, datamodule=_Data(8))
    assert seen == {"built early": True, "dropped": True}, UPGRADE
    assert trainer.global_step == 2 and trainer.fit_loop._combined_loader is not None, UPGRADE


def test_ddp_strategy_keeps_its_ddp_keyword_arguments():
    from pytorch_lightning.strategies import DDPStrategy, SingleDeviceStrategy

    assert ddp_kwargs(DDPStrategy(find_unused_parameters=True)) == {"find_unused_parameters": True}, UPGRADE
    assert ddp_kwargs(DDPStrategy()).get("find_unused_parameters", False) is False, UPGRADE
    assert ddp_kwargs(SingleDeviceStrategy(torch.device("cpu"))) == {}, UPGRADE


# ---------------------------------------------------------------- staying at their use (compat.py's list)
def test_lightning_cli_private_hooks_used_by_the_cli():
    from pytorch_lightning.cli import LightningCLI

    from lightning_kd.cli import DistillationCLI

    source = inspect.getsource(LightningCLI)
    # Overridden in lightning_kd/distillation_cli.py: LightningCLI must still call both.
    assert "self._parse_ckpt_path()" in source, UPGRADE
    assert "self._instantiate_trainer(" in source, UPGRADE
    assert list(inspect.signature(LightningCLI._instantiate_trainer).parameters) == ["self", "config", "callbacks"], UPGRADE
    assert DistillationCLI._parse_ckpt_path is not LightningCLI._parse_ckpt_path
    # Read in lightning_kd/distillation_cli.py: the per-subcommand parsers.
    assert "self._subcommand_parsers[subcommand] = subcommand_parser" in source, UPGRADE
    # Overridden in lightning_kd/distillation_cli.py (the method table of `fit --help` keeps its lines).
    from jsonargparse import DefaultHelpFormatter

    assert callable(getattr(DefaultHelpFormatter, "_fill_text", None)), UPGRADE


def test_model_checkpoint_private_members_used_by_the_periodic_checkpoint():
    from pytorch_lightning.callbacks import ModelCheckpoint

    from lightning_kd.fault.periodic_checkpoint import PeriodicCheckpoint

    assert list(inspect.signature(ModelCheckpoint._find_last_checkpoints).parameters) == ["self", "trainer"], UPGRADE
    assert "_find_last_checkpoints(" in inspect.getsource(pl.trainer.connectors.checkpoint_connector), UPGRADE
    assert hasattr(ModelCheckpoint(), "_fs"), UPGRADE
    assert issubclass(PeriodicCheckpoint, ModelCheckpoint)


def test_module_parameter_and_submodule_tables():
    layer = nn.Linear(2, 2)
    assert set(layer._parameters) == {"weight", "bias"}, UPGRADE
    replacement = nn.Parameter(torch.zeros(2, 2))
    layer._parameters["weight"] = replacement  # how vocab_map swaps a tied parameter in place
    assert layer.weight is replacement, UPGRADE
    stack = nn.Sequential(layer)
    assert stack._modules["0"] is layer, UPGRADE


def test_datasets_fingerprint():
    from datasets import Dataset

    rows = Dataset.from_dict({"text": ["a", "b"]})
    assert isinstance(rows._fingerprint, str) and rows._fingerprint, UPGRADE
    assert rows.map(lambda row: {"text": row["text"] * 2})._fingerprint != rows._fingerprint, UPGRADE


def test_transformers_attention_implementation_setting():
    model = make_tiny_bert(seed=1)
    assert model.config._attn_implementation == "eager", UPGRADE
    model.config._attn_implementation = "sdpa"
    assert model.config._attn_implementation == "sdpa", UPGRADE
