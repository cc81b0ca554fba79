"""Shared by the step benchmarks: workloads run batch by batch in interleaved rounds, and the table written out.

Interleaving (batch 1 of every workload, then batch 2, …) spreads a machine's slow spells over every workload
instead of charging them to whichever ran then.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any


def interleaved(workloads: Sequence[str], batches: Sequence[Any], rounds: int,
                run: Callable[[str, Any, int], Any]) -> dict[str, list[Any]]:
    """Per workload, what ``run(workload, batch, batch_index)`` returned, in order, over ``rounds`` rounds."""
    results: dict[str, list[Any]] = {workload: [] for workload in workloads}
    for _ in range(rounds):
        for index, batch in enumerate(batches):
            for workload in workloads:
                results[workload].append(run(workload, batch, index))
    return results


def emit(table: str, output: str | None) -> None:
    """Print the Markdown table, and write it to ``output`` when given."""
    print(table)
    if output:
        Path(output).write_text(table + "\n")


def step_parser(description: str, *, batches: int, block_size: int) -> argparse.ArgumentParser:
    """The arguments every step benchmark takes: batches, rounds, batch and block size, and ``--output``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--batches", type=int, default=batches)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--block-size", type=int, default=block_size)
    parser.add_argument("--output", help="also write the table to this Markdown file")
    return parser
