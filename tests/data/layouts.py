"""Writers of tiny files in the standard GLUE / SuperGLUE layouts, with the examples they hold.

Each writer returns, per split file, the normalised examples a correct reader must produce:
``(text_a, text_b or None, label id or score)``.
"""

from __future__ import annotations

import json
from pathlib import Path

from lightning_kd.data.tasks import get_task

SENTENCES = [
    ("the movie was good", "the film was great"),
    ("this plot is boring", "a story with no fun"),
    ("the actors were terrible", "acting is bad"),
    ("i love this film", "best movie of the year"),
    ("the director is funny", "a sad scene"),
]

GLUE_HEADERS = {
    "sst2": "sentence\tlabel",
    "mrpc": "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String",
    "stsb": "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore",
    "qqp": "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate",
    "mnli": "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse\t"
    "sentence2_parse\tsentence1\tsentence2\tlabel1\tgold_label",
    "qnli": "index\tquestion\tsentence\tlabel",
    "rte": "index\tsentence1\tsentence2\tlabel",
    "wnli": "index\tsentence1\tsentence2\tlabel",
}
GLUE_RAW_LABELS = {
    "cola": ["1", "0", "0", "1", "1"],
    "sst2": ["1", "0", "0", "1", "1"],
    "mrpc": ["1", "0", "1", "0", "1"],
    "stsb": ["4.200", "0.5", "3", "1.75", "2.0"],
    "qqp": ["0", "1", "1", "0", "0"],
    "mnli": ["entailment", "neutral", "contradiction", "neutral", "entailment"],
    "qnli": ["entailment", "not_entailment", "entailment", "entailment", "not_entailment"],
    "rte": ["not_entailment", "entailment", "entailment", "not_entailment", "entailment"],
    "wnli": ["0", "1", "1", "0", "1"],
}
GLUE_TASKS = ["cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "mnli-mm", "qnli", "rte", "wnli"]
SUPERGLUE_TASKS = ["boolq", "cb", "copa", "multirc", "superglue-rte", "wic", "wsc"]


def glue_line(task: str, index: int, a: str, b: str, label: str) -> str:
    """One data line of ``task`` in its original GLUE column layout."""
    if task == "cola":
        return f"gj04\t{label}\t{'' if label == '1' else '*'}\t{a}"
    if task == "sst2":
        return f"{a}\t{label}"
    if task == "mrpc":
        return f"{label}\t{index}\t{index + 100}\t{a}\t{b}"
    if task == "stsb":
        return f"{index}\tmain-captions\tMSRvid\t2012test\t{index}\tnone\tnone\t{a}\t{b}\t{label}"
    if task == "qqp":
        return f"{index}\t{2 * index}\t{2 * index + 1}\t{a}\t{b}\t{label}"
    if task == "mnli":
        return f"{index}\t{index}\t{index}e\tfiction\t( x )\t( y )\t(ROOT x)\t(ROOT y)\t{a}\t{b}\t{label}\t{label}"
    return f"{index}\t{a}\t{b}\t{label}"


def _expected(task: str, a: str, b: str, raw: str) -> tuple[str, str | None, int | float]:
    spec = get_task(task)
    label = float(raw) if spec.is_regression else (spec.label_names.index(raw) if raw in spec.label_names else int(raw))
    return a, (b if spec.is_pair else None), label


def write_glue_file(path: Path, task: str, rows: list[tuple[str, str, str]]) -> list[tuple]:
    """Write ``rows`` (a, b, raw label) as ``task``'s TSV; return the expected examples."""
    base = "mnli" if task == "mnli-mm" else task
    lines = [GLUE_HEADERS[base]] if base in GLUE_HEADERS else []
    lines += [glue_line(base, i, a, b, raw) for i, (a, b, raw) in enumerate(rows)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return [_expected(task, a, b, raw) for a, b, raw in rows]


def write_glue(root: Path, task: str) -> dict[str, list[tuple]]:
    """Write train and dev files of ``task`` under ``root`` in the GLUE layout; return expectations per file."""
    spec = get_task(task)
    base = "mnli" if task == "mnli-mm" else task
    raws = GLUE_RAW_LABELS[base]
    rows = [(a, b, raw) for (a, b), raw in zip(SENTENCES, raws, strict=True)]
    names = ["train.tsv", "dev_matched.tsv", "dev_mismatched.tsv"] if base == "mnli" else ["train.tsv", "dev.tsv"]
    written = {}
    for shift, name in enumerate(names):
        # Rows rotated differently per file, so a test can tell which file a split read.
        written[name] = write_glue_file(root / spec.directory / name, task, rows[shift:] + rows[:shift])
    return written


def superglue_records(task: str) -> tuple[list[dict], list[tuple]]:
    """Records of ``task`` in the SuperGLUE JSONL layout and the examples they flatten to."""
    if task == "boolq":
        records = [{"question": "is it good", "passage": "the movie was good", "idx": 0, "label": True},
                   {"question": "is it bad", "passage": "the movie was good", "idx": 1, "label": False}]
        return records, [("is it good", "the movie was good", 1), ("is it bad", "the movie was good", 0)]
    if task == "cb":
        records = [{"premise": "the film was fun", "hypothesis": "it was good", "label": "entailment", "idx": 0},
                   {"premise": "the film was bad", "hypothesis": "it was good", "label": "contradiction", "idx": 1},
                   {"premise": "a film", "hypothesis": "it was long", "label": "neutral", "idx": 2}]
        return records, [(r["premise"], r["hypothesis"], i) for i, r in enumerate(records)]
    if task == "copa":
        records = [{"premise": "the actor cried", "choice1": "the scene was sad", "choice2": "the scene was funny",
                    "question": "cause", "label": 0, "idx": 0},
                   {"premise": "the film was boring", "choice1": "we watched more", "choice2": "we left",
                    "question": "effect", "label": 1, "idx": 1}]
        return records, [("the actor cried What was the cause?", "the scene was sad or the scene was funny", 0),
                         ("the film was boring What was the effect?", "we watched more or we left", 1)]
    if task == "multirc":
        records = [{"idx": 0, "version": 1.1, "passage": {"text": "the movie was good and funny", "questions": [
            {"question": "was it good", "idx": 0, "answers": [{"text": "yes", "idx": 0, "label": 1},
                                                             {"text": "no", "idx": 1, "label": 0}]},
            {"question": "was it funny", "idx": 1, "answers": [{"text": "very", "idx": 2, "label": 1}]}]}}]
        paragraph = "the movie was good and funny"
        return records, [(paragraph, "was it good yes", 1), (paragraph, "was it good no", 0),
                         (paragraph, "was it funny very", 1)]
    if task == "superglue-rte":
        records = [{"premise": "the film is great", "hypothesis": "the film is good", "label": "entailment", "idx": 0},
                   {"premise": "the film is bad", "hypothesis": "the film is good", "label": "not_entailment",
                    "idx": 1}]
        return records, [("the film is great", "the film is good", 0), ("the film is bad", "the film is good", 1)]
    if task == "wic":
        records = [{"word": "watch", "sentence1": "i watch a film", "sentence2": "i watch the actors",
                    "idx": 0, "label": True, "start1": 2, "end1": 7, "start2": 2, "end2": 7},
                   {"word": "fresh", "sentence1": "a fresh review", "sentence2": "fresh fruit", "idx": 1,
                    "label": False, "start1": 2, "end1": 7, "start2": 0, "end2": 5}]
        return records, [("watch: i watch a film", "watch: i watch the actors", 1),
                         ("fresh: a fresh review", "fresh: fresh fruit", 0)]
    if task == "wsc":
        records = [{"text": "the actor said he was sad", "idx": 0, "label": True,
                    "target": {"span1_text": "the actor", "span1_index": 0, "span2_text": "he", "span2_index": 3}},
                   {"text": "the film bored the director so it ended", "idx": 1, "label": False,
                    "target": {"span1_text": "the director", "span1_index": 3, "span2_text": "it",
                               "span2_index": 6}}]
        return records, [("the actor said he was sad", "he refers to the actor", 1),
                         ("the film bored the director so it ended", "it refers to the director", 0)]
    raise KeyError(task)


def write_superglue(root: Path, task: str) -> list[tuple]:
    """Write train.jsonl and val.jsonl (same records) of ``task`` under ``root``; return the examples."""
    spec = get_task(task)
    records, expected = superglue_records(task)
    folder = root / spec.directory
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("train.jsonl", "val.jsonl"):
        (folder / name).write_text("".join(json.dumps(record) + "\n" for record in records))
    return expected
