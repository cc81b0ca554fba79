"""Every private Lightning / torch / transformers / datasets API lightning_kd relies on, in one place.

A private name can change in any release. Each one is either wrapped here (the core calls the
wrapper, never the private name) or, where it must stay at its use (an override of a private hook),
listed below. ``tests/test_compat.py`` asserts each still exists and behaves as relied on, so an
upgrade that breaks one fails there, naming it, instead of somewhere deep in a training run.

Verified with the versions in :data:`VERIFIED_WITH`.

Wrapped here:

* ``LightningModule._trainer`` — :func:`attached_trainer` (``module.trainer`` raises when detached);
* ``torch._C._nn._parse_to`` — :func:`device_of_to_args` (the device a ``Module.to(...)`` call names;
  Lightning's own ``DeviceDtypeModuleMixin.to`` parses its arguments the same way);
* ``_FitLoop._combined_loader`` — :func:`forget_train_loader` (resume mid-epoch; see there);
* ``DDPStrategy._ddp_kwargs`` — :func:`ddp_kwargs` (whether DDP looks for unused parameters).

Used where they are (overrides of private hooks, and files outside the core), tested the same way:

* ``lightning_kd/distillation_cli.py``: ``LightningCLI._instantiate_trainer`` (override: drops the ``None`` of an
  unset optional callback key), ``LightningCLI._parse_ckpt_path`` (override: the command line wins
  over a checkpoint's hyper-parameters), ``LightningCLI._subcommand_parsers`` (read: every key a
  subcommand accepts, for "did you mean" suggestions), argparse's ``HelpFormatter._fill_text``
  (override, as the standard library's ``RawDescriptionHelpFormatter`` does: the method table keeps its lines);
* ``lightning_kd/fault/periodic_checkpoint.py``: ``ModelCheckpoint._find_last_checkpoints`` (override)
  and ``ModelCheckpoint._fs`` (set with the default directory); ``lightning_kd/fault/resume.py`` calls
  ``ModelCheckpoint._find_last_checkpoints`` (what ``--ckpt_path last`` would find);
* ``lightning_kd/fault/nonfinite.py`` and ``lightning_kd/cache/teacher_cache.py``:
  ``LightningModule._trainer`` (the attribute :func:`attached_trainer` reads);
* ``lightning_kd/callbacks/compatibility.py``: ``DDPStrategy._ddp_kwargs`` (the attribute
  :func:`ddp_kwargs` reads; the schedule callbacks' unused-parameter check);
* ``lightning_kd/models/vocab_map.py``: ``nn.Module._parameters`` (swaps tied parameters in place);
  ``lightning_kd/models/layer_stack.py``: ``nn.Module._modules`` (finds layer lists by name);
* ``lightning_kd/data/glue.py``, ``lightning_kd/data/pretrain.py``: ``datasets.Dataset._fingerprint``
  (the data key of a teacher cache);
* ``lightning_kd/models/theseus.py``, ``lightning_kd/cache/fingerprint.py``: transformers'
  ``PretrainedConfig._attn_implementation`` (which attention kernel a model runs).
"""

from __future__ import annotations

from typing import Any

import torch

#: The library versions every private use above was checked against (``tests/test_compat.py``).
VERIFIED_WITH = {"torch": "2.13.0", "pytorch_lightning": "2.6.6", "transformers": "5.24.0", "datasets": "5.2.0"}


def attached_trainer(module: Any) -> Any:
    """The trainer ``module`` is attached to, or ``None`` (``module.trainer`` raises instead)."""
    return getattr(module, "_trainer", None)


def device_of_to_args(*args: Any, **kwargs: Any) -> torch.device | None:
    """The device a ``Module.to(*args, **kwargs)`` call moves to, or ``None`` when it only casts."""
    return torch._C._nn._parse_to(*args, **kwargs)[0]


def forget_train_loader(trainer: Any) -> None:
    """Drop the train loader the fit loop built early, so it is rebuilt after a checkpoint restore.

    ``trainer.estimated_stepping_batches`` (read in ``configure_optimizers``) builds the train loader
    before a ``--ckpt_path`` checkpoint is restored, and Lightning then never hands that loader its
    saved position. Dropping it makes the fit loop rebuild it after the restore, so a resumed run
    continues mid-epoch with the same batches.
    """
    loop = trainer.fit_loop
    if getattr(loop, "_combined_loader", None) is not None:
        loop._combined_loader = None


def ddp_kwargs(strategy: Any) -> dict[str, Any]:
    """The keyword arguments a ``DDPStrategy`` passes to ``DistributedDataParallel`` (``{}`` for others)."""
    return dict(getattr(strategy, "_ddp_kwargs", None) or {})
