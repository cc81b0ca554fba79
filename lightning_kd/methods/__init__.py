"""Every distillation method, one class per file. This import list is the registry."""

from lightning_kd.methods.alp_kd import ALPKD
from lightning_kd.methods.annealing_kd import AnnealingKD
from lightning_kd.methods.ckd import CKD
from lightning_kd.methods.continuation_kd import ContinuationKD
from lightning_kd.methods.diito import DIITO
from lightning_kd.methods.distilbert import DistilBERT
from lightning_kd.methods.erdistill import ERDistill
from lightning_kd.methods.kd import KD
from lightning_kd.methods.logits_distil import LogitsDistil
from lightning_kd.methods.lrc_bert import LRCBERT
from lightning_kd.methods.mgskd import MGSKD
from lightning_kd.methods.minilm import MiniLM
from lightning_kd.methods.minilmv2 import MiniLMv2
from lightning_kd.methods.mix_baseline import MixBaseline
from lightning_kd.methods.mobilebert import MobileBERT
from lightning_kd.methods.pkd import PKD
from lightning_kd.methods.rail_kd import RAILKD
from lightning_kd.methods.sid import SID
from lightning_kd.methods.student_only import StudentOnly
from lightning_kd.methods.theseus import Theseus
from lightning_kd.methods.tinybert import TinyBERT
from lightning_kd.methods.universal_kd import UniversalKD
from lightning_kd.methods.vocab_distil import VocabDistil

__all__ = ["ALPKD", "AnnealingKD", "CKD", "ContinuationKD", "DIITO", "DistilBERT", "ERDistill", "KD", "LogitsDistil", "LRCBERT", "MGSKD", "MiniLM", "MiniLMv2", "MixBaseline", "MobileBERT", "PKD", "RAILKD", "SID", "StudentOnly", "Theseus", "TinyBERT", "UniversalKD", "VocabDistil"]
