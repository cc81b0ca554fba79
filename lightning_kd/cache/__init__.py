"""Teacher-output cache: store what a method needs from the teacher once, read it in later epochs and runs.

``DistillationModule(teacher_cache=TeacherCache(path=...))``; see ``docs/teacher_cache.md``.
"""

from lightning_kd.cache.manifest import CACHE_FORMAT_VERSION, StaleCacheError
from lightning_kd.cache.teacher_cache import TeacherCache
from lightning_kd.cache.verify import CacheMismatchError

__all__ = ["CACHE_FORMAT_VERSION", "CacheMismatchError", "StaleCacheError", "TeacherCache"]
