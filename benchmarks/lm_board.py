"""The LM board: causal-LM distillation rows against the no-teacher student, held-out perplexity over seeds.

Every row trains the same student (the embedded SmolLM2-135M-Instruct's first 7 and last 8 layers) on
the same text with the same budget; a row is a config plus overrides (``benchmarks/lm_board.yaml``).
Each (row, seed) runs in a process of its own: ``fit``, then the exported student scored on the
validation rows (where recipes are chosen) and once on the test rows, keeping each test block's
summed next-token loss and token count, so that differences can be bootstrapped.

Usage (from the repository root)::

    python -m benchmarks.lm_board plan                  # what would run, with the stored results
    python -m benchmarks.lm_board run [--row NAME] [--seed S] [--commit]
    python -m benchmarks.lm_board report                # docs/leaderboard_lm.md

Resumable: finished runs live in ``benchmarks/lm_board_results.json`` and are skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml

SPEC = Path("benchmarks/lm_board.yaml")
RESULTS = Path("benchmarks/lm_board_results.json")
OUTPUTS = Path("outputs/lm_board")
PAGE = Path("docs/leaderboard_lm.md")
BOOTSTRAP_SAMPLES = 4000


# ----------------------------------------------------------------------------- one run
def block_losses(model, loader) -> tuple[list[float], list[int]]:
    """Per block (row) of ``loader``: the summed next-token loss and the number of scored tokens.

    Labels arrive unshifted (Hugging Face's convention): the logits at ``t`` score ``labels[t + 1]``.
    """
    import torch
    import torch.nn.functional as F

    from lightning_kd.core.features import model_inputs

    sums, counts = [], []
    model.eval()
    with torch.inference_mode():
        for batch in loader:
            logits = model(**model_inputs(batch), use_cache=False).logits[:, :-1].float()
            targets = batch["labels"][:, 1:]
            losses = F.cross_entropy(logits.transpose(1, 2), targets, ignore_index=-100, reduction="none")
            sums += losses.sum(dim=1).tolist()
            counts += targets.ne(-100).sum(dim=1).tolist()
    return sums, counts


def run_one(row: dict, seed: int, directory: Path) -> dict:
    """Fit ``row`` with ``seed`` in this process and score its exported student."""
    from lightning_kd.cli import run_cli

    args = ["fit", "--config", row["config"], f"--seed_everything={seed}", f"--trainer.default_root_dir={directory}",
            f"--export.dirpath={directory / 'student'}", "--trainer.logger=false", "--trainer.enable_checkpointing=false"]
    args += [f"--{key}={json.dumps(value) if isinstance(value, (list, dict)) else value}" for key, value in (row.get("overrides") or {}).items()]
    start = time.perf_counter()
    cli = run_cli(args)
    fit_seconds = time.perf_counter() - start
    student, data = cli.model.student, cli.datamodule
    validation = block_losses(student, data.val_dataloader())
    test = block_losses(student, data.test_dataloader())
    return {
        "validation_perplexity": float(np.exp(sum(validation[0]) / sum(validation[1]))),
        "test_perplexity": float(np.exp(sum(test[0]) / sum(test[1]))),
        "test_block_loss": [round(v, 5) for v in test[0]],
        "test_block_tokens": test[1],
        "fit_seconds": round(fit_seconds, 1),
        "steps": int(cli.trainer.global_step),
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d"),
    }


def machine() -> str:
    """The CPU's model name (or the architecture) and core count, e.g. ``AMD EPYC (x86_64), 2 cores``."""
    name = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as info:
            name = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), name)
    except OSError:
        pass
    return f"{name or 'unknown CPU'} ({platform.machine()}), {os.cpu_count()} cores"


# ----------------------------------------------------------------------------- statistics
def perplexity_difference(row: dict, baseline: dict, samples: int = BOOTSTRAP_SAMPLES, seed: int = 0) -> tuple[float, float, float, int]:
    """Paired Δ test perplexity (row − baseline) over the seeds both have, with a 95 % two-level bootstrap
    interval: seeds resampled with replacement, and test blocks resampled with replacement (the same
    blocks for both sides). Returns ``(delta, low, high, seeds)``; negative is better."""
    seeds = sorted(set(row) & set(baseline))
    if not seeds:
        raise ValueError("the row and its baseline have no seed in common")
    loss = {side: np.array([runs[s]["test_block_loss"] for s in seeds]) for side, runs in (("row", row), ("base", baseline))}
    tokens = np.array(row[seeds[0]]["test_block_tokens"], dtype=float)

    def delta(picked: np.ndarray, counts: np.ndarray) -> float:
        total = counts @ tokens
        ours = np.exp(loss["row"][picked] @ counts / total)
        theirs = np.exp(loss["base"][picked] @ counts / total)
        return float((ours - theirs).mean())

    k, n = len(seeds), tokens.size
    point = delta(np.arange(k), np.ones(n))
    generator = np.random.default_rng(seed)
    draws = [delta(generator.integers(0, k, size=k), np.bincount(generator.integers(0, n, size=n), minlength=n)) for _ in range(samples)]
    low, high = np.percentile(draws, [2.5, 97.5])
    return point, float(low), float(high), k


# ----------------------------------------------------------------------------- the board
def load_results() -> dict:
    return json.loads(RESULTS.read_text()) if RESULTS.exists() else {}


def save_results(results: dict) -> None:
    temporary = RESULTS.with_suffix(".tmp")
    temporary.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    os.replace(temporary, RESULTS)


def pending(spec: dict, results: dict, rows: list[str] | None, seeds: list[int] | None) -> list[tuple[dict, int]]:
    return [(row, seed) for row in spec["rows"] for seed in spec["seeds"]
            if (not rows or row["name"] in rows) and (not seeds or seed in seeds) and str(seed) not in results.get(row["name"], {})]


def run(spec: dict, rows: list[str] | None, seeds: list[int] | None, commit: bool) -> None:
    results = load_results()
    todo = pending(spec, results, rows, seeds)
    for index, (row, seed) in enumerate(todo, 1):
        directory = OUTPUTS / row["name"].replace(" ", "_").replace("/", "-") / f"seed{seed}"
        directory.mkdir(parents=True, exist_ok=True)
        log = directory / "log.txt"
        started = time.perf_counter()
        with log.open("w") as handle:
            done = subprocess.run([sys.executable, "-m", "benchmarks.lm_board", "one", "--row", row["name"], "--seed", str(seed)],
                                  stdout=handle, stderr=subprocess.STDOUT)
        if done.returncode != 0:
            sys.exit(f"{row['name']} seed {seed} failed (exit {done.returncode}); see {log}")
        outcome = json.loads((directory / "result.json").read_text())
        results = load_results()
        results.setdefault(row["name"], {})[str(seed)] = outcome
        save_results(results)
        print(f"[{index}/{len(todo)}] {row['name']} seed {seed}: validation {outcome['validation_perplexity']:.2f}, "
              f"test {outcome['test_perplexity']:.2f}, {time.perf_counter() - started:.0f} s", flush=True)
        if commit:
            subprocess.run(["git", "add", str(RESULTS)], check=True)
            subprocess.run(["git", "commit", "-q", "-m", f"lm board: {row['name']} seed {seed}"], check=True)


def table(spec: dict, results: dict) -> str:
    """The board as Markdown: per row its validation and test perplexity over seeds and the paired Δ."""
    baseline_name = next(row["name"] for row in spec["rows"] if row.get("baseline"))
    baseline = {int(s): r for s, r in results.get(baseline_name, {}).items()}
    lines = ["| row | seeds | validation perplexity | test perplexity | Δ test vs no teacher (95 % CI) | verdict | fit time |",
             "|---|---|---|---|---|---|---|"]
    for row in spec["rows"]:
        runs = {int(s): r for s, r in results.get(row["name"], {}).items()}
        if not runs:
            continue
        val = np.array([r["validation_perplexity"] for r in runs.values()])
        test = np.array([r["test_perplexity"] for r in runs.values()])
        spread = lambda a: f"{a.mean():.2f} ± {a.std(ddof=1):.2f}" if a.size > 1 else f"{a.mean():.2f}"  # noqa: E731
        seconds = np.mean([r["fit_seconds"] for r in runs.values()])
        if row.get("baseline"):
            difference, verdict = "—", "baseline"
        else:
            delta, low, high, _ = perplexity_difference(runs, baseline)
            difference = f"{delta:+.2f} ({low:+.2f} … {high:+.2f})"
            verdict = "better" if high < 0 else "worse" if low > 0 else "within noise"
        lines.append(f"| {row['name']} | {len(runs)} | {spread(val)} | {spread(test)} | {difference} | {verdict} | {seconds / 60:.1f} min |")
    return "\n".join(lines)


def report(spec: dict) -> None:
    """Write the page: the spec's preamble, the table, then its notes."""
    results = load_results()
    runs = [run for rows in results.values() for run in rows.values()]
    machines = sorted({run["machine"] for run in runs})
    dates = sorted({run["date"] for run in runs})
    provenance = (f"Measured {dates[0]}{' to ' + dates[-1] if len(dates) > 1 else ''} on {', '.join(machines)} (shared with "
                  "other jobs, so fit times vary); written by `python -m benchmarks.lm_board report` from "
                  "`benchmarks/lm_board_results.json`.") if runs else ""
    parts = [f"# {spec['title']}", spec.get("preamble", "").strip(), provenance, table(spec, results), spec.get("notes", "").strip()]
    PAGE.write_text("\n\n".join(part for part in parts if part) + "\n")
    print(table(spec, results))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.lm_board", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["plan", "run", "one", "report"])
    parser.add_argument("--row", action="append", help="only this row (repeatable)")
    parser.add_argument("--seed", action="append", type=int, help="only this seed (repeatable)")
    parser.add_argument("--commit", action="store_true", help="git-commit the results file after every run")
    options = parser.parse_args(argv)
    spec = yaml.safe_load(SPEC.read_text())
    if options.command == "one":
        row = next(r for r in spec["rows"] if r["name"] == options.row[0])
        directory = OUTPUTS / row["name"].replace(" ", "_").replace("/", "-") / f"seed{options.seed[0]}"
        outcome = run_one(row, options.seed[0], directory)
        (directory / "result.json").write_text(json.dumps(outcome))
    elif options.command == "plan":
        results = load_results()
        for row, seed in pending(spec, results, options.row, options.seed):
            print(f"to run: {row['name']} seed {seed}")
        print(table(spec, results))
    elif options.command == "run":
        run(spec, options.row, options.seed, options.commit)
    else:
        report(spec)


if __name__ == "__main__":
    main()
