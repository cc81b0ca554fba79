"""Cross-tokenizer distillation maths: aligning token positions by character offsets
(:mod:`.alignment`) and reading vocabulary entries as comparable text (:mod:`.token_text`).

The losses between two vocabularies (ULD, exact-match buckets) are in
:mod:`lightning_kd.losses.cross_vocabulary`.
"""

from lightning_kd.cross_tokenizer.alignment import aligned_teacher_states, shared_prefix_pairs, span_overlap
from lightning_kd.cross_tokenizer.token_text import TokenKey, TokenScheme, token_key, token_scheme, vocabulary_keys

__all__ = [
    "TokenKey",
    "TokenScheme",
    "aligned_teacher_states",
    "shared_prefix_pairs",
    "span_overlap",
    "token_key",
    "token_scheme",
    "vocabulary_keys",
]
