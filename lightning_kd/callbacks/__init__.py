"""Callbacks, one job per file."""

from lightning_kd.callbacks.continuation_weight import ContinuationWeight
from lightning_kd.callbacks.export_student import ExportStudent
from lightning_kd.callbacks.mobilebert_stages import MobileBERTStages
from lightning_kd.callbacks.module_driver import ModuleDriver
from lightning_kd.callbacks.progress_log import ProgressLog
from lightning_kd.callbacks.rail_kd_resampling import RailKDResampling
from lightning_kd.callbacks.run_directories import RunDirectories
from lightning_kd.callbacks.sid_stages import SIDStages
from lightning_kd.callbacks.step_schedule import StepSchedule
from lightning_kd.callbacks.temperature_schedule import TemperatureSchedule
from lightning_kd.callbacks.theseus_replacing_rate import TheseusReplacingRate

__all__ = [
    "ContinuationWeight",
    "ExportStudent",
    "MobileBERTStages",
    "ModuleDriver",
    "ProgressLog",
    "RailKDResampling",
    "RunDirectories",
    "SIDStages",
    "StepSchedule",
    "TemperatureSchedule",
    "TheseusReplacingRate",
]
