"""Write the no-teacher student's starting point: a copy of chosen teacher layers (with the teacher's
embeddings, pooler and head), exactly what a method's ``student_init: teacher_layers`` builds.

Usage::

    python -m benchmarks.leaderboard_init --teacher outputs/quickstart/teacher --layers 1,3,5 --output DIR

``StudentOnly`` trains without a teacher, so it cannot copy teacher layers itself; the leaderboard
hands it this directory instead, so a baseline and the methods it is compared with start from the
same weights.
"""

from __future__ import annotations

import argparse

from transformers import AutoModelForSequenceClassification, AutoTokenizer

from lightning_kd.models.student_init import truncated_copy


def write_init(teacher_dir: str, layers: list[int], output: str) -> None:
    """Save ``truncated_copy(teacher, layers)`` and the teacher's tokenizer to ``output``."""
    teacher = AutoModelForSequenceClassification.from_pretrained(teacher_dir)
    student = truncated_copy(teacher, layers)
    student.save_pretrained(output)
    AutoTokenizer.from_pretrained(teacher_dir).save_pretrained(output)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher", required=True, help="exported teacher directory")
    parser.add_argument("--layers", required=True, help="0-based teacher layers, comma-separated, e.g. 1,3,5")
    parser.add_argument("--output", required=True, help="directory to write")
    options = parser.parse_args(argv)
    write_init(options.teacher, [int(i) for i in options.layers.split(",")], options.output)


if __name__ == "__main__":
    main()
