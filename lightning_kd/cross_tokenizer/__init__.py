"""Teachers that read another tokenizer: which teacher reads which encoding of the text
(:mod:`.teacher_tokenizers`), aligning token positions by character offsets (:mod:`.alignment`) and
reading vocabulary entries as comparable text (:mod:`.token_text`).

The losses between two vocabularies (ULD, exact-match buckets) are in
:mod:`lightning_kd.losses.cross_vocabulary`.
"""

from lightning_kd.cross_tokenizer.alignment import aligned_teacher_states, shared_prefix_pairs, span_overlap
from lightning_kd.cross_tokenizer.teacher_tokenizers import TeacherTokenizer, TeacherTokenizers
from lightning_kd.cross_tokenizer.token_text import TokenKey, TokenScheme, token_key, token_scheme, vocabulary_keys

__all__ = [
    "TeacherTokenizer",
    "TeacherTokenizers",
    "TokenKey",
    "TokenScheme",
    "aligned_teacher_states",
    "shared_prefix_pairs",
    "span_overlap",
    "token_key",
    "token_scheme",
    "vocabulary_keys",
]
