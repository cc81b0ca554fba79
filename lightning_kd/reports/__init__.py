"""The kinds of ``python -m lightning_kd.report``: :mod:`.classification` and :mod:`.causal_lm` (the dispatcher
is :mod:`lightning_kd.report`)."""
