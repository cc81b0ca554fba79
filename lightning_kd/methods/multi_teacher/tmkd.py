"""TMKD — Yang et al. (2020), "Model Compression with Two-stage Multi-teacher Knowledge Distillation
for Web Question Answering System" (WSDM 2020).

In the GKD reference TMKD is the averaging strategy (``--multi_teacher_model=tmkd`` is an alias of
``avg``) used with MSE soft labels; the method-level part is a KD configuration:

* pre-training: ``KD(soft_loss="mse", hard_weight=0, soft_positions="all_tokens")`` →
  ``L = mean_i MSE(z^S, z^T_i)`` over the non-padding tokens;
* fine-tuning: ``KD(soft_loss="mse", hard_weight=1/N)`` → ``L = mean_i MSE(z^S, z^T_i) + L_hard/N``.

Where we differ from the GKD reference: nothing in the strategy. The reference puts the hard loss
inside every teacher's term and then averages, so its ``--distill_hard_rate=1/N`` is a weight of
``1/N`` on ``L_hard``; here the hard loss is the method's own term, added once with ``hard_weight``,
which gives the same total. TMKD's multi-head student (one output head per teacher) is not
implemented (nor is it in the reference).
"""

from __future__ import annotations

from lightning_kd.core.multi_teacher import Average


class TMKD(Average):
    """The averaging strategy under TMKD's name: each loss term is the mean over teachers.

    Identical to :class:`~lightning_kd.core.multi_teacher.Average`; pair it with
    ``KD(soft_loss="mse", ...)`` as in ``configs/gkd/tmkd/``.
    """
