"""Compare a teacher and its distilled student: quality, size and speed, as a Markdown table.

Usage::

    # classification: the task's test split
    python -m lightning_kd.report --teacher outputs/quickstart/teacher --student outputs/quickstart/student \
        --task rotten_tomatoes --tokenizer embedded:all-MiniLM-L6-v2

    # causal LM: held-out perplexity, generation speed and greedy generations side by side
    python -m lightning_kd.report --teacher embedded:smollm2-135m-instruct --student outputs/lm/student \
        --text held_out.txt --block-size 256 --prompts prompts.txt --chat
    # ... or on the test split that a training config's CausalLMDataModule holds out
    python -m lightning_kd.report --teacher embedded:smollm2-135m-instruct --student outputs/lm/student \
        --data-config configs/lm/fit.yaml

The kind of report follows the exported teacher's ``config.json``: architectures ending in
``ForCausalLM`` / ``LMHeadModel`` get the causal-LM report (:mod:`lightning_kd.reports.causal_lm`),
anything else the classification one (:mod:`lightning_kd.reports.classification`). Prints the
report (and writes it to ``--output`` when given).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lightning_kd.data.sources import resolve_source

CLASSIFICATION_TOKENIZER = "embedded:all-MiniLM-L6-v2"


def report_kind(model_dir: str | Path) -> str:
    """``"causal_lm"`` when the exported model in ``model_dir`` is a decoder LM, else ``"classification"``."""
    from lightning_kd.stages import stage_of_architectures

    architectures = json.loads(Path(model_dir, "config.json").read_text()).get("architectures")
    stage = stage_of_architectures(architectures)
    return "causal_lm" if stage is not None and stage.name == "causal_lm" else "classification"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher", required=True, help="exported teacher directory (or embedded:<name>)")
    parser.add_argument("--student", required=True, help="exported student directory (or embedded:<name>)")
    parser.add_argument("--baseline", help="causal LM: the same student trained without the teacher, a third row")
    parser.add_argument(
        "--tokenizer",
        help=f"tokenizer for both models (classification default: {CLASSIFICATION_TOKENIZER}; causal LM default: "
        "each model's own directory)",
    )
    parser.add_argument("--batch-size", type=int, default=None, help="default: 64 (classification), 8 (causal LM)")
    parser.add_argument("--output", help="also write the report to this Markdown file")
    classification = parser.add_argument_group("classification")
    classification.add_argument("--task", default="rotten_tomatoes")
    classification.add_argument("--max-length", type=int, default=64)
    lm = parser.add_argument_group("causal LM")
    lm.add_argument("--text", default="embedded:chitchat",
                    help="held-out data for perplexity: a text file (one document per line) or embedded:chitchat")
    lm.add_argument("--data-config",
                    help="instead of --text: a training config whose CausalLMDataModule test split is scored")
    lm.add_argument("--block-size", type=int, default=None,
                    help="tokens per perplexity block of --text (default 256; 1024 for embedded:chitchat examples)")
    lm.add_argument("--max-samples", type=int, default=None, help="score at most this many blocks (seeded subset)")
    lm.add_argument("--prompts", help="text file with one prompt per line (default: a few built-in prompts)")
    lm.add_argument("--chat", action="store_true", help="wrap prompts in the tokenizer's chat template, if it has one")
    lm.add_argument("--max-new-tokens", type=int, default=32)
    lm.add_argument("--repeats", type=int, default=3, help="timed generation passes (the median counts)")
    lm.add_argument("--device", default="cpu", help="where the causal LMs run: cpu, cuda, ...")
    lm.add_argument("--cache-dir", help="datasets cache for the tokenised held-out data (default: datasets' own)")
    return parser


def build_report(args: argparse.Namespace) -> str:
    """The report for parsed arguments, of the kind the teacher's config says."""
    if report_kind(args.teacher) == "causal_lm":
        from lightning_kd.reports import causal_lm

        prompts = causal_lm.DEFAULT_PROMPTS
        if args.prompts:
            lines = Path(args.prompts).read_text(encoding="utf-8").splitlines()
            prompts = [line.strip() for line in lines if line.strip()]
        return causal_lm.compare(
            args.teacher, args.student, text=args.text, tokenizer=args.tokenizer, block_size=args.block_size,
            batch_size=args.batch_size or 8, max_samples=args.max_samples, prompts=prompts, chat=args.chat,
            max_new_tokens=args.max_new_tokens, repeats=args.repeats, device=args.device, cache_dir=args.cache_dir,
            data_config=args.data_config, baseline_dir=args.baseline,
        )
    if args.baseline:
        raise ValueError("--baseline applies to causal-LM reports (a teacher whose architecture is …ForCausalLM).")
    from lightning_kd.reports import classification

    return classification.compare(
        args.teacher, args.student, args.task, args.tokenizer or CLASSIFICATION_TOKENIZER, args.batch_size or 64,
        args.max_length,
    )


def main(argv: list[str] | None = None) -> None:
    parser = _parser()
    args = parser.parse_args(argv)
    for name in ("batch_size", "max_length", "block_size", "max_samples", "max_new_tokens", "repeats"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be a positive integer, got {value}")
    for option in ("prompts", "data_config"):
        value = getattr(args, option)
        if value and not Path(value).is_file():
            parser.error(f"--{option.replace('_', '-')} {value}: no such file")
    try:  # ``embedded:<name>`` (e.g. the packaged SmolLM2) becomes its directory, converted on first use
        args.teacher, args.student = resolve_source(args.teacher), resolve_source(args.student)
    except (ValueError, FileNotFoundError) as error:
        parser.error(str(error))
    for path in (args.teacher, args.student):
        if not Path(path, "config.json").exists():
            parser.error(f"{path} is not an exported model directory (no config.json); run the fit steps first.")
    table = build_report(args)
    print(table)
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(table + "\n")


if __name__ == "__main__":
    main()
