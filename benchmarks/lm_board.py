"""The LM board: causal-LM distillation rows against a baseline row, held-out perplexity over seeds.

Every row of a section trains the same student (the embedded SmolLM2-135M-Instruct's first 7 and last 8
layers) on the same data with the same budget; a row is a config plus overrides (``benchmarks/lm_board.yaml``:
the main section at the top level, more under ``sections:``). Each (row, seed) runs in a process of its
own: ``fit``, then the student scored on the validation rows (where recipes are chosen) and once on the
test rows, keeping each test block's summed next-token loss and token count, so that differences can be
bootstrapped, and the seconds the fit spent generating training batches (on-policy, sequence-level KD).

A section's held-out rows are its data module's validation and test splits, or, with
``evaluation: {teacher_responses: …}``, the teacher's own greedy answers to held-out prompts (written
once and kept under ``outputs/lm_board/``): perplexity on what the teacher would say. With
``answers: {prompts: FILE}`` each run also records the student's greedy answers to those prompts, and
the page shows them side by side (seed 1) with the teacher's (a row with ``evaluate: teacher``).

Usage (from the repository root)::

    python -m benchmarks.lm_board plan                  # what would run, with the stored results
    python -m benchmarks.lm_board run [--row NAME] [--seed S] [--commit]
    python -m benchmarks.lm_board report                # docs/leaderboard_lm.md and docs/leaderboard_lm.png

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

from benchmarks.forest_plot import Interval, Panel, draw, write_atomically

SPEC = Path("benchmarks/lm_board.yaml")
HELD_OUT_VERSION = 1
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


def run_one(row: dict, seed: int, directory: Path, section: dict | None = None) -> dict:
    """Fit ``row`` with ``seed`` in this process and score its student (or score the section's teacher:
    ``evaluate: teacher``) on the section's held-out rows."""
    section = section or {}
    fit_seconds, generation_seconds, steps, data = 0.0, 0.0, 0, None
    if row.get("evaluate") == "teacher":
        model = load_lm(section_teacher(section))
    else:
        from lightning_kd.cli import run_cli

        args = ["fit", "--config", row["config"], f"--seed_everything={seed}", f"--trainer.default_root_dir={directory}",
                f"--export.dirpath={directory / 'student'}", "--trainer.logger=false", "--trainer.enable_checkpointing=false"]
        args += [f"--{key}={json.dumps(value) if isinstance(value, (list, dict)) else value}" for key, value in (row.get("overrides") or {}).items()]
        start = time.perf_counter()
        cli = run_cli(args)
        fit_seconds = time.perf_counter() - start
        model, data, steps = cli.model.student, cli.datamodule, int(cli.trainer.global_step)
        generation_seconds = cli.model.generation_seconds or 0.0
    if "teacher_responses" in (section.get("evaluation") or {}):
        validation_batches, test_batches = held_out_teacher_responses(section)
    else:
        validation_batches, test_batches = data.val_dataloader(), data.test_dataloader()
    validation = block_losses(model, validation_batches)
    test = block_losses(model, test_batches)
    outcome = {
        "validation_perplexity": float(np.exp(sum(validation[0]) / sum(validation[1]))),
        "test_perplexity": float(np.exp(sum(test[0]) / sum(test[1]))),
        "test_block_loss": [round(v, 5) for v in test[0]],
        "test_block_tokens": test[1],
        "fit_seconds": round(fit_seconds, 1),
        "generation_seconds": round(generation_seconds, 1),
        "steps": steps,
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d"),
    }
    if section.get("answers"):
        outcome["answers"] = greedy_answers(model, section)
    return outcome


def section_teacher(section: dict) -> str:
    """The teacher whose answers a section's held-out rows and answer table read."""
    return (section.get("evaluation") or {}).get("teacher_responses", {}).get("teacher") or section["answers"]["teacher"]


def load_lm(source: str):
    """A causal LM from a directory or an ``embedded:`` name, in float32 on the CPU."""
    import torch
    from transformers import AutoModelForCausalLM

    from lightning_kd.data.sources import resolve_source

    return AutoModelForCausalLM.from_pretrained(resolve_source(source), dtype=torch.float32).eval()


def held_out_teacher_responses(section: dict) -> tuple[list, list]:
    """The validation and test batches of a section's ``teacher_responses`` evaluation: the held-out prompts of
    its data config (the validation split) answered greedily by the teacher, in Hugging Face's causal-LM
    convention (labels on the teacher's tokens up to and including its EOS). The first ``validation`` rows
    are the validation rows, the others the test rows. Written once under ``outputs/lm_board/`` (keyed by the
    settings and the data config's text) and read back by every run."""
    import hashlib

    import torch
    import yaml as yaml_module

    from lightning_kd.fault.atomic_io import atomic_write

    settings = section["evaluation"]["teacher_responses"]
    config_text = Path(settings["data_config"]).read_text()
    key = {"version": HELD_OUT_VERSION, "teacher": settings["teacher"], "max_new_tokens": settings["max_new_tokens"],
           "validation": settings["validation"], "data_config": hashlib.sha256(config_text.encode()).hexdigest()}
    path = OUTPUTS / f"held_out_{slug(section['title'])}.pt"
    if path.exists():
        stored = torch.load(path, weights_only=False)
        if stored["key"] == key:
            return stored["validation"], stored["test"]
    from lightning_kd.data import CausalLMDataModule
    from lightning_kd.on_policy import Generation, continuation_lengths, continue_prompts, prompts_of, special_tokens, written_batch

    data = CausalLMDataModule(**(yaml_module.safe_load(config_text)["data"]["init_args"]))
    data.setup("validate")
    teacher = load_lm(settings["teacher"])
    tokens = special_tokens(settings["teacher"], teacher)
    decoding = Generation(max_new_tokens=settings["max_new_tokens"], do_sample=False)
    rows = []
    for batch in data.val_dataloader():
        prompts = prompts_of(batch, tokens.pad_id)
        written = continue_prompts(teacher, prompts, decoding, tokens, seed=0, device=torch.device("cpu"))
        answered = written_batch(prompts, written, continuation_lengths(written, tokens.eos_ids), tokens.pad_id, writer="teacher")
        rows += [{key: answered[key][row] for key in ("input_ids", "attention_mask", "labels")} for row in range(len(prompts))]
    batches = [_batch(rows[i : i + 8]) for i in range(0, len(rows), 8)]
    split = settings["validation"] // 8
    atomic_write(path, lambda handle: torch.save({"key": key, "validation": batches[:split], "test": batches[split:]}, handle))
    return batches[:split], batches[split:]


def _batch(rows: list[dict]) -> dict:
    """Rows of different lengths as one right-padded batch (labels -100 and mask 0 on the padding)."""
    import torch

    width = max(len(row["input_ids"]) for row in rows)

    def padded(key: str, fill: int):
        return torch.stack([torch.nn.functional.pad(row[key], (0, width - len(row[key])), value=fill) for row in rows])

    return {"input_ids": padded("input_ids", 0), "attention_mask": padded("attention_mask", 0), "labels": padded("labels", -100)}


def greedy_answers(model, section: dict) -> list[str]:
    """The model's greedy answers to the section's answer prompts, in the teacher tokenizer's chat template."""
    from lightning_kd.data.sources import load_tokenizer
    from lightning_kd.reports.causal_lm import encode_prompts, greedy_generations

    settings = section["answers"]
    prompts = [line for line in Path(settings["prompts"]).read_text().splitlines() if line.strip()]
    tokenizer = load_tokenizer(section_teacher(section))
    encoded, _ = encode_prompts(tokenizer, prompts, chat=True)
    return greedy_generations(model, tokenizer, encoded, settings.get("max_new_tokens", 40))


def slug(name: str) -> str:
    return name.replace(" ", "_").replace("/", "-")


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
    text = json.dumps(results, indent=1, sort_keys=True) + "\n"
    write_atomically(RESULTS, lambda temporary: temporary.write_text(text))


def sections(spec: dict) -> list[dict]:
    """The board's sections: the main one (the spec's top level) and those under ``sections:``."""
    main = {key: value for key, value in spec.items() if key != "sections"}
    return [main, *(spec.get("sections") or [])]


def find_row(spec: dict, name: str) -> tuple[dict, dict]:
    """``(row, section)`` of the row called ``name``."""
    for section in sections(spec):
        for row in section["rows"]:
            if row["name"] == name:
                return row, section
    raise SystemExit(f"no row named {name!r} in {SPEC}")


def pending(spec: dict, results: dict, rows: list[str] | None, seeds: list[int] | None) -> list[tuple[dict, int]]:
    return [(row, seed) for section in sections(spec) for row in section["rows"] for seed in row.get("seeds", section["seeds"])
            if (not rows or row["name"] in rows) and (not seeds or seed in seeds) and str(seed) not in results.get(row["name"], {})]


def run(spec: dict, rows: list[str] | None, seeds: list[int] | None, commit: bool) -> None:
    results = load_results()
    todo = pending(spec, results, rows, seeds)
    for index, (row, seed) in enumerate(todo, 1):
        directory = OUTPUTS / slug(row["name"]) / f"seed{seed}"
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
        if commit:  # the results file alone, whatever else is staged
            subprocess.run(["git", "add", str(RESULTS)], check=True)
            subprocess.run(["git", "commit", "-q", str(RESULTS), "-m", f"lm board: {row['name']} seed {seed}"], check=True)


def table(section: dict, results: dict) -> str:
    """A section as Markdown: per row its validation and test perplexity over seeds, the paired Δ from the
    section's baseline row and the fit time (with the share spent generating, when a row generates)."""
    baseline_row = next(row for row in section["rows"] if row.get("baseline"))
    baseline = {int(s): r for s, r in results.get(baseline_row["name"], {}).items()}
    against = baseline_row.get("short", "no teacher")
    generating = any(r.get("generation_seconds") for row in section["rows"] for r in results.get(row["name"], {}).values())
    header = f"| row | seeds | validation perplexity | test perplexity | Δ test vs {against} (95 % CI) | verdict | fit time |"
    lines = [header + (" of which generating |" if generating else ""), "|---|---|---|---|---|---|---|" + ("---|" if generating else "")]
    for row in section["rows"]:
        runs = {int(s): r for s, r in results.get(row["name"], {}).items()}
        if not runs:
            continue
        val = np.array([r["validation_perplexity"] for r in runs.values()])
        test = np.array([r["test_perplexity"] for r in runs.values()])
        spread = lambda a: f"{a.mean():.2f} ± {a.std(ddof=1):.2f}" if a.size > 1 else f"{a.mean():.2f}"  # noqa: E731
        seconds = np.mean([r["fit_seconds"] for r in runs.values()])
        if row.get("baseline"):
            difference, verdict = "—", "baseline"
        elif row.get("evaluate") == "teacher":
            difference, verdict = "—", "reference"
        else:
            delta, low, high, _ = perplexity_difference(runs, baseline)
            difference, verdict = f"{delta:+.2f} ({low:+.2f} … {high:+.2f})", perplexity_verdict(low, high)
        fit = f"{seconds / 60:.1f} min" if seconds else "—"
        line = f"| {row['name']} | {len(runs)} | {spread(val)} | {spread(test)} | {difference} | {verdict} | {fit} |"
        if generating:
            spent = np.mean([r.get("generation_seconds", 0.0) for r in runs.values()])
            line += f" {spent / 60:.1f} min ({100 * spent / seconds:.0f} %) |" if spent else " — |"
        lines.append(line)
    return "\n".join(lines)


def perplexity_verdict(low: float, high: float) -> str:
    """A perplexity Δ's verdict from its interval: lower is better."""
    return "better" if high < 0 else "worse" if low > 0 else "within noise"


def forest_panel(section: dict, results: dict) -> Panel:
    """The section's rows as a forest-plot panel: each compared row's Δ test perplexity from the section's
    baseline with its interval, largest improvement first; the scale fits the rows within a few times the
    typical interval, so that one recipe that wrecks the student does not flatten the others (it is drawn as
    an arrow at the edge, its numbers printed)."""
    baseline_row = next(row for row in section["rows"] if row.get("baseline"))
    baseline = {int(s): r for s, r in results.get(baseline_row["name"], {}).items()}
    intervals = []
    for row in section["rows"]:
        runs = {int(s): r for s, r in results.get(row["name"], {}).items()}
        if runs and baseline and not row.get("baseline") and row.get("evaluate") != "teacher":
            delta, low, high, seeds = perplexity_difference(runs, baseline)
            label = row.get("short", row["name"]) + ("" if seeds > 1 else " (1 seed)")
            intervals.append(Interval(label, delta, low, high, perplexity_verdict(low, high)))
    intervals.sort(key=lambda i: i.delta)
    reach = sorted(max(abs(i.low), abs(i.high)) for i in intervals)
    limit = min(reach[-1], 4 * reach[len(reach) // 2]) * 1.05 + 0.5 if reach else None
    against = baseline_row.get("short", "the no-teacher student")
    title = f"{section['title']}: Δ test perplexity from {against}, paired by seed, 95 % interval (lower is better)"
    return Panel(title, f"perplexity difference from {against}", intervals, limit)


def answers_table(section: dict, results: dict, seed: int = 1) -> str:
    """The greedy answers of each row's seed-``seed`` run to the section's answer prompts, side by side."""
    from lightning_kd.reports.causal_lm import _cell

    prompts = [line for line in Path(section["answers"]["prompts"]).read_text().splitlines() if line.strip()]
    columns = [(row["name"], results.get(row["name"], {}).get(str(seed)) or next(iter(results.get(row["name"], {}).values()), None))
               for row in section["rows"]]
    columns = [(name, run["answers"]) for name, run in columns if run is not None and "answers" in run]
    if not columns:
        return ""
    lines = ["| prompt | " + " | ".join(name for name, _ in columns) + " |", "|---|" + "---|" * len(columns)]
    for index, prompt in enumerate(prompts):
        lines.append(f"| {_cell(prompt)} | " + " | ".join(_cell(answers[index]) for _, answers in columns) + " |")
    return "\n".join(lines)


def report(spec: dict) -> None:
    """Write the page: per section its preamble, the table (and the answers), then its notes."""
    results = load_results()
    runs = [run for rows in results.values() for run in rows.values()]
    machines = sorted({run["machine"] for run in runs})
    dates = sorted({run["date"] for run in runs})
    provenance = (f"Measured {dates[0]}{' to ' + dates[-1] if len(dates) > 1 else ''} on {', '.join(machines)} (shared with "
                  "other jobs, so fit times vary); written by `python -m benchmarks.lm_board report` from "
                  "`benchmarks/lm_board_results.json`.") if runs else ""
    main, *extra = sections(spec)
    image = PAGE.with_suffix(".png")
    draw([forest_panel(section, results) for section in sections(spec)], image)
    # The page opens with what to pick (the spec's ``pick``, written from the measured rows) and the picture.
    parts = [f"# {main['title']}", main.get("pick", "").strip(),
             f"![Δ test perplexity of every row from its section's baseline, with 95 % intervals]({image.name})",
             main.get("preamble", "").strip(), provenance, table(main, results), main.get("notes", "").strip()]
    for section in extra:
        parts += [f"## {section['title']}", section.get("preamble", "").strip(), table(section, results)]
        if section.get("answers"):
            answers = answers_table(section, results)
            if answers:
                parts += [section["answers"].get("caption", "Greedy answers to held-out prompts (seed 1):"), answers]
        parts.append(section.get("notes", "").strip())
    PAGE.write_text("\n\n".join(part for part in parts if part) + "\n")
    for section in sections(spec):
        print(table(section, results))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.lm_board", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["plan", "run", "one", "report"])
    parser.add_argument("--row", action="append", help="only this row (repeatable)")
    parser.add_argument("--seed", action="append", type=int, help="only this seed (repeatable)")
    parser.add_argument("--commit", action="store_true", help="git-commit the results file after every run")
    options = parser.parse_args(argv)
    spec = yaml.safe_load(SPEC.read_text())
    if options.command == "one":
        row, section = find_row(spec, options.row[0])
        directory = OUTPUTS / slug(row["name"]) / f"seed{options.seed[0]}"
        directory.mkdir(parents=True, exist_ok=True)
        outcome = run_one(row, options.seed[0], directory, section)
        (directory / "result.json").write_text(json.dumps(outcome))
    elif options.command == "plan":
        results = load_results()
        for row, seed in pending(spec, results, options.row, options.seed):
            print(f"to run: {row['name']} seed {seed}")
        for section in sections(spec):
            print(table(section, results))
    elif options.command == "run":
        run(spec, options.row, options.seed, options.commit)
    else:
        report(spec)


if __name__ == "__main__":
    main()
