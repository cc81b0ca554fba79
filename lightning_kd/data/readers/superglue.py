"""SuperGLUE as sentence(-pair) classification: record flattening and input templates.

The official JSONL files nest some fields (MultiRC: passage → questions → answers; WSC: a
``target`` object). :func:`flatten_multirc` and :func:`flatten_wsc` turn one JSONL record into the
flat rows that the Hugging Face ``super_glue`` dataset uses, so one template per task serves both
sources. The templates (``text_a`` / ``text_b``):

========  ==========================================  =============================================
task      text_a                                      text_b
========  ==========================================  =============================================
BoolQ     question                                    passage
CB, RTE   premise                                     hypothesis
COPA      ``"<premise> What was the <cause|effect>?"`` ``"<choice1> or <choice2>"`` (label 0 = choice1)
MultiRC   paragraph                                   ``"<question> <answer>"`` (one binary row per answer)
WiC       ``"<word>: <sentence1>"``                   ``"<word>: <sentence2>"``
WSC       text                                        ``"<span2_text> refers to <span1_text>"``
========  ==========================================  =============================================

MultiRC is scored here per answer (accuracy and binary F1 over all answers, SuperGLUE's F1a);
the per-question exact-match score needs the question grouping and is not computed.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from lightning_kd.data.readers.fields import raw_field, text_field


def flatten_multirc(record: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """One flat row per answer: ``paragraph``, ``question``, ``answer``, ``label``.

    Accepts the official layout (``passage.text``, ``passage.questions``) and ``paragraph`` as a
    synonym of ``passage``.
    """
    passage = record.get("passage", record.get("paragraph"))
    if not isinstance(passage, Mapping):
        raise ValueError("missing field 'passage' (an object with 'text' and 'questions')")
    paragraph = text_field(passage, "text")
    questions = raw_field(passage, "questions")
    if not isinstance(questions, list):
        raise ValueError("field 'passage.questions' should be a list")
    for question in questions:
        if not isinstance(question, Mapping) or not isinstance(question.get("answers"), list):
            raise ValueError("each question needs a 'question' text and an 'answers' list")
        for answer in question["answers"]:
            if not isinstance(answer, Mapping):
                raise ValueError("each answer should be an object with 'text' and 'label'")
            yield {
                "paragraph": paragraph,
                "question": text_field(question, "question"),
                "answer": text_field(answer, "text"),
                "label": answer.get("label"),
            }


def flatten_wsc(record: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Lift ``target.span1_text`` / ``target.span2_text`` to the top level of the row."""
    target = record.get("target")
    if not isinstance(target, Mapping):
        raise ValueError("missing field 'target' (an object with 'span1_text' and 'span2_text')")
    yield {**record, "span1_text": target.get("span1_text"), "span2_text": target.get("span2_text")}


def copa_texts(row: Mapping[str, Any]) -> tuple[str, str]:
    """COPA as a pair: the premise with its question, then both alternatives in order."""
    question = text_field(row, "question")
    if question not in ("cause", "effect"):
        raise ValueError(f"field 'question' should be 'cause' or 'effect', found {question!r}")
    premise = text_field(row, "premise")
    return f"{premise} What was the {question}?", f"{text_field(row, 'choice1')} or {text_field(row, 'choice2')}"


def multirc_texts(row: Mapping[str, Any]) -> tuple[str, str]:
    """MultiRC answer row: the paragraph, then the question followed by the candidate answer."""
    return text_field(row, "paragraph"), f"{text_field(row, 'question')} {text_field(row, 'answer')}"


def wic_texts(row: Mapping[str, Any]) -> tuple[str, str]:
    """WiC: each sentence prefixed by the target word, so the model knows which word to compare."""
    word = text_field(row, "word")
    return f"{word}: {text_field(row, 'sentence1')}", f"{word}: {text_field(row, 'sentence2')}"


def wsc_texts(row: Mapping[str, Any]) -> tuple[str, str]:
    """WSC: the text, then the coreference claim to judge (pronoun ``span2`` → noun ``span1``)."""
    return text_field(row, "text"), f"{text_field(row, 'span2_text')} refers to {text_field(row, 'span1_text')}"
