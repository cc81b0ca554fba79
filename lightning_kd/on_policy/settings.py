"""The knobs of generated training batches: how a model decodes, and sequence-level KD.

Both are plain dataclasses, so a YAML block fills them (``generation: {max_new_tokens: 48}``) and a
checkpoint's hyper-parameters keep them. Each refuses, when built, a value that is out of range or that
would do nothing (a temperature with greedy decoding), naming the fix.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class Generation:
    """How a model continues the batch's prompts (Hugging Face ``generate``, with its KV cache).

    Attributes:
        max_new_tokens: the most tokens generated per prompt; a continuation also ends at the first EOS.
        do_sample: sample from the model's distribution (on-policy, as GKD) instead of decoding greedily
            (or with beams).
        temperature: softmax temperature of the sampled distribution (``do_sample`` only).
        top_p: nucleus sampling: sample among the most likely tokens whose probabilities sum to ``top_p``
            (1 = every token; ``do_sample`` only).
        top_k: sample among the ``top_k`` most likely tokens (0 = every token; ``do_sample`` only).
        num_beams: beam search with this many beams (1 = none). Kim & Rush's sequence-level KD decodes the
            teacher with beams; greedy (1) is the cheap approximation.
    """

    max_new_tokens: int = 64
    do_sample: bool = True
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    num_beams: int = 1

    def __post_init__(self) -> None:
        check_generation(self, "generation")

    def describe(self) -> dict[str, Any]:
        """The settings as JSON values (a response cache's key)."""
        return {"max_new_tokens": self.max_new_tokens, "do_sample": self.do_sample, "temperature": self.temperature,
                "top_p": self.top_p, "top_k": self.top_k, "num_beams": self.num_beams}


def check_generation(settings: Any, name: str) -> None:
    """Refuse out-of-range decoding settings and sampling settings that greedy decoding would ignore.

    Args:
        settings: an object with the :class:`Generation` fields.
        name: the block's name in messages (``generation``, ``sequence_kd``).

    Raises:
        ValueError: naming the field and the fix.
    """
    if settings.max_new_tokens < 1:
        raise ValueError(f"{name}.max_new_tokens must be >= 1 (tokens generated per prompt), got {settings.max_new_tokens}.")
    if settings.temperature <= 0:
        raise ValueError(f"{name}.temperature must be > 0, got {settings.temperature}.")
    if not 0 < settings.top_p <= 1:
        raise ValueError(f"{name}.top_p must be in (0, 1] (1 keeps every token), got {settings.top_p}.")
    if settings.top_k < 0:
        raise ValueError(f"{name}.top_k must be >= 0 (0 keeps every token), got {settings.top_k}.")
    if settings.num_beams < 1:
        raise ValueError(f"{name}.num_beams must be >= 1 (1 = no beam search), got {settings.num_beams}.")
    if not settings.do_sample:
        changed = [field for field, default in (("temperature", 1.0), ("top_p", 1.0), ("top_k", 0))
                   if getattr(settings, field) != default]
        if changed:
            raise ValueError(
                f"{name}.{changed[0]} shapes sampling, but {name}.do_sample is false (greedy or beam decoding), so it "
                f"would do nothing: set {name}.do_sample true or remove {', '.join(changed)}."
            )


@dataclass
class SequenceKD:
    """Sequence-level KD (Kim & Rush, 2016): the teacher writes the responses the student trains on.

    On a training batch chosen with ``probability``, the teacher continues the batch's prompts and its
    continuations (up to and including its EOS) replace the data's responses: every term of the method
    (the hard next-token loss on the teacher's tokens, the soft term, intermediate terms) reads them.

    Attributes:
        probability: the share of training batches whose responses the teacher writes (1 = all).
        cache: keep each training example's teacher response on disk the first time it is written and
            reuse it afterwards (later epochs, later runs, resumed runs), keyed by the teacher's config and
            weights, the tokenizer, the training data and these decoding settings; a directory written under
            another key is refused. ``False`` decodes afresh on every chosen batch (a new sample each time
            with ``do_sample``).
        path: the cache directory (default ``<trainer.default_root_dir>/teacher_responses``).
        teacher_index: which teacher writes (with several teachers).
        max_new_tokens: the most tokens the teacher writes per prompt.
        do_sample: sample the teacher (default: greedy, or beams with ``num_beams``).
        temperature: sampling temperature (``do_sample`` only).
        top_p: nucleus sampling threshold (``do_sample`` only).
        top_k: top-k sampling (0 = off; ``do_sample`` only).
        num_beams: beam search width (Kim & Rush decode with beams; 1 = greedy).
    """

    probability: float = 1.0
    cache: bool = True
    path: str | None = None
    teacher_index: int = 0
    max_new_tokens: int = 64
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    num_beams: int = 1

    def __post_init__(self) -> None:
        if not 0 < self.probability <= 1:
            raise ValueError(
                f"sequence_kd.probability must be in (0, 1] (the share of batches the teacher writes), got {self.probability}; "
                "to turn sequence-level KD off, remove sequence_kd."
            )
        if self.teacher_index < 0:
            raise ValueError(f"sequence_kd.teacher_index must be >= 0, got {self.teacher_index}.")
        if self.path is not None and not self.cache:
            raise ValueError("sequence_kd.path names the response cache, but cache is false: remove path or set cache true.")
        check_generation(self, "sequence_kd")

    @property
    def generation(self) -> Generation:
        """The teacher's decoding settings."""
        return Generation(max_new_tokens=self.max_new_tokens, do_sample=self.do_sample, temperature=self.temperature,
                          top_p=self.top_p, top_k=self.top_k, num_beams=self.num_beams)
