"""On-policy and sequence-level distillation for causal LMs: training batches the models write.

* ``on_policy`` (λ, a method argument): on that share of training batches the student continues the
  batch's prompts (GKD, Agarwal et al. 2024) and the teacher scores its tokens; ``generation`` sets how
  it samples (:class:`Generation`).
* ``sequence_kd`` (:class:`SequenceKD`): the teacher writes the responses (Kim & Rush 2016), cached on
  disk per training example (:class:`TeacherResponses`) or decoded afresh.

:class:`GeneratedBatches` is the piece a method holds (``method.generated_batches``); the rest are its
parts: the prompts of a batch (:mod:`.prompts`), seeded ``generate`` calls (:mod:`.decoding`), the
generated batch in Hugging Face's convention (:mod:`.written`), the seeds (:mod:`.seeds`) and the
response cache (:mod:`.responses`). See ``docs/on_policy.md``.
"""

from lightning_kd.on_policy.decoding import SpecialTokens, continue_prompts, special_tokens
from lightning_kd.on_policy.mixing import GeneratedBatches
from lightning_kd.on_policy.prompts import Prompts, prompts_of
from lightning_kd.on_policy.responses import StaleResponsesError, TeacherResponses
from lightning_kd.on_policy.settings import Generation, SequenceKD
from lightning_kd.on_policy.written import WRITTEN_BY, continuation_lengths, student_written, written_batch

__all__ = [
    "WRITTEN_BY",
    "GeneratedBatches",
    "Generation",
    "Prompts",
    "SequenceKD",
    "SpecialTokens",
    "StaleResponsesError",
    "TeacherResponses",
    "continuation_lengths",
    "continue_prompts",
    "prompts_of",
    "special_tokens",
    "student_written",
    "written_batch",
]
