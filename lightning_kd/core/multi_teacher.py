"""The contract of a multi-teacher strategy, and the default :class:`Average`.

More strategies live in :mod:`lightning_kd.methods.multi_teacher`, one per file.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class MultiTeacherStrategy(nn.Module):
    """Combines the per-teacher loss terms of one training step into one dict of terms.

    A strategy is an ``nn.Module`` so it may own learnable parts (optimised and checkpointed with
    the method, never exported with the student). Subclasses implement :meth:`combine`.
    """

    def combine(self, per_teacher: list[dict[str, Tensor]], batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Merge ``per_teacher[i]`` (teacher ``i``'s weighted terms) into the step's terms.

        Args:
            per_teacher: one dict of already-weighted scalar loss terms per teacher.
            batch: the training batch (strategies that weight by sample may need labels).
        """
        raise NotImplementedError
class Average(MultiTeacherStrategy):
    """Mean over teachers of each loss term; with one teacher it returns that teacher's terms."""

    def combine(self, per_teacher: list[dict[str, Tensor]], batch: dict[str, Tensor]) -> dict[str, Tensor]:
        if len(per_teacher) == 1:
            return dict(per_teacher[0])
        names = list(dict.fromkeys(name for terms in per_teacher for name in terms))
        return {name: torch.stack([t[name] for t in per_teacher if name in t]).sum() / len(per_teacher) for name in names}
