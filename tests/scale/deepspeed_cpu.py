"""DeepSpeed on CPU, for tests only.

Lightning's ``DeepSpeedStrategy`` refuses any accelerator but CUDA. DeepSpeed itself runs ZeRO
stages 0-3 in fp32/bf16 on CPU over gloo, so this subclass skips the two CUDA checks and reports a
CPU root device. Production runs use the stock strategy (``configs/trainer/deepspeed_*.yaml``).
"""

from __future__ import annotations

import torch
from pytorch_lightning.strategies import DeepSpeedStrategy


class CPUDeepSpeedStrategy(DeepSpeedStrategy):
    """``DeepSpeedStrategy`` that runs on CPU processes over gloo (tests only)."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("process_group_backend", "gloo")
        super().__init__(*args, **kwargs)

    def setup_environment(self) -> None:  # skip the CUDA-only check
        super(DeepSpeedStrategy, self).setup_environment()

    def setup_distributed(self) -> None:  # skip the CUDA device-index validation
        from lightning_fabric.utilities.seed import reset_seed

        reset_seed()
        self.set_world_ranks()
        self._init_deepspeed_distributed()

    @property
    def root_device(self) -> torch.device:
        return torch.device("cpu", self.local_rank)  # DeepSpeed reads the index as the rank
