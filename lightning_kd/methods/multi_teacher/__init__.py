"""Multi-teacher strategies: how per-teacher losses become one training loss (one file per strategy)."""

from lightning_kd.core.multi_teacher import Average, MultiTeacherStrategy, TeacherStep
from lightning_kd.methods.multi_teacher.dgkd import DGKD
from lightning_kd.methods.multi_teacher.mix_mt import MixMT
from lightning_kd.methods.multi_teacher.mt_bert import MTBERT
from lightning_kd.methods.multi_teacher.rl_kd import RLKD
from lightning_kd.methods.multi_teacher.tmkd import TMKD
from lightning_kd.methods.multi_teacher.uncertainty import Uncertainty

__all__ = ["DGKD", "MTBERT", "RLKD", "TMKD", "Average", "MixMT", "MultiTeacherStrategy", "TeacherStep", "Uncertainty"]
