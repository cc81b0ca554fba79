"""Time to the first answer of ``lightning-kd``: ``--help`` and commands it refuses, median seconds over several runs.

Each case is a complete ``python -m lightning_kd`` command in a fresh process (what a user waits for
after pressing Enter), run on tiny models and data written to a temporary directory. The table gives
the exit status and the median, min and max wall-clock seconds.

Compare with another checkout (e.g. the code before a change) by extracting it and passing it as
``--baseline``; its cases run with that tree first on ``PYTHONPATH``, in alternation with the current
tree, so both see the same machine load::

    mkdir /tmp/before && git archive HEAD | tar -x -C /tmp/before
    python benchmarks/cli_startup.py --runs 5 --baseline /tmp/before

Run it on an otherwise idle machine: the numbers are dominated by importing torch, Lightning and
transformers when a command gets that far.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def cases(assets: dict[str, Path], scratch: Path) -> dict[str, list[str]]:
    """Name -> arguments. Every command is complete: without its one mistake it would train."""
    teacher = assets["teacher_classification"]
    base = [
        "--model=lightning_kd.methods.KD", f"--model.teacher={teacher}", "--model.student_init=teacher_uniform",
        "--model.student_layers=3", "--data=lightning_kd.data.GlueDataModule", "--data.task=text-classification",
        f"--data.tokenizer={teacher}", f"--data.train_file={assets['train']}", f"--data.validation_file={assets['validation']}",
        "--data.text_columns=[text]", "--data.batch_size=4", "--data.max_length=16", "--trainer.accelerator=cpu",
        "--trainer.max_steps=2", "--trainer.logger=false", "--trainer.enable_progress_bar=false",
    ]
    broken = scratch / "broken.yaml"
    broken.write_text("model:\n  class_path: lightning_kd.methods.KD\n  init_args:\n    teacher: x\n   student_layers: 3\n")

    def run(name: str) -> list[str]:
        return [f"--trainer.default_root_dir={scratch / name}", f"--export.dirpath={scratch / name / 'student'}"]

    return {
        "--help": ["--help"],
        "misspelt trainer key (--trainer.max_epochx)": ["fit", *base, *run("a"), "--trainer.max_epochx=3"],
        "unknown method (--model ...KDD)": ["fit", *base, *run("b"), "--model=lightning_kd.methods.KDD"],
        "YAML syntax error in --config": ["fit", *base, *run("c"), f"--config={broken}"],
        "missing --ckpt_path file": ["fit", *base, *run("d"), f"--ckpt_path={scratch / 'nowhere' / 'last.ckpt'}"],
        "bad value (prediction.temperature=-1)": ["fit", *base, *run("e"), "--model.prediction.temperature=-1"],
        "--ckpt_path last, nothing to resume": ["fit", *base, *run("f"), "--ckpt_path=last"],
    }


def time_command(arguments: list[str], source: Path) -> tuple[float, int]:
    env = {**os.environ, "PYTHONPATH": str(source), "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    env.pop("LIGHTNING_KD_DEBUG", None)
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "lightning_kd", *arguments], cwd=source, env=env, capture_output=True, timeout=600)
    return time.perf_counter() - started, done.returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="runs per case (the median is reported)")
    parser.add_argument("--baseline", type=Path, help="another source tree to time the same cases with (e.g. the code before a change)")
    options = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from tests.cli_fixtures import write_classification_csvs, write_models

    trees = {"this tree": ROOT} if options.baseline is None else {"baseline": options.baseline.resolve(), "this tree": ROOT}
    with tempfile.TemporaryDirectory() as scratch_dir:
        scratch = Path(scratch_dir)
        assets = {**write_models(scratch / "assets"), **write_classification_csvs(scratch / "assets")}
        table = cases(assets, scratch)
        results: dict[tuple[str, str], list[float]] = {}
        statuses: dict[tuple[str, str], set[int]] = {}
        for _ in range(options.runs):
            for name, arguments in table.items():
                for tree, source in trees.items():
                    seconds, status = time_command(arguments, source)
                    results.setdefault((name, tree), []).append(seconds)
                    statuses.setdefault((name, tree), set()).add(status)
    print(f"lightning-kd time to first answer: median of {options.runs} runs, seconds (min-max); exit status")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"load average {os.getloadavg()[0]:.1f} at the end")
    header = "| case | " + " | ".join(trees) + " |"
    print(header)
    print("|---|" + "---|" * len(trees))
    for name in table:
        cells = []
        for tree in trees:
            values = results[(name, tree)]
            codes = ",".join(map(str, sorted(statuses[(name, tree)])))
            cells.append(f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f}); exit {codes}")
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
