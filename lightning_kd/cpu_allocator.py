"""Keep glibc's freed memory in the process during CPU training, instead of handing it back every step.

A training step on a CPU allocates and frees the same large tensors every time (activations, vocabulary
logits, their gradients). glibc's ``malloc`` serves large blocks with ``mmap`` and returns them, and
the top of its heap, to the kernel when they are freed; the next step then page-faults and
zero-fills every page again. Measured here (2-core VM, MiniLM-L6 teacher, 3-layer student, MLM
batch 8 × 128, whole process): system time 12.4 s → 4.1 s and wall time −22 % with the memory kept;
peak resident memory +12 %. PyTorch's own CPU launcher reaches the same end by preloading jemalloc or
tcmalloc; this module needs nothing installed: it sets two glibc parameters at run time
(``mallopt``): no ``mmap`` for large blocks, and no trimming of the heap's top.

Applied by the ``lightning-kd`` command when the trainer runs on CPU (on GPU the host allocator is off
the critical path, and keeping host memory would only raise each rank's resident set). Left alone
when the process is not on glibc, when another allocator is preloaded (jemalloc, tcmalloc,
mimalloc), when the user set glibc's own ``MALLOC_*`` / ``GLIBC_TUNABLES`` malloc settings, or when
``LIGHTNING_KD_CPU_ALLOCATOR=system``.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import sys

log = logging.getLogger(__name__)

OPT_OUT = "LIGHTNING_KD_CPU_ALLOCATOR"
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc <malloc.h>
_NO_TRIMMING = -1  # mallopt(3): "Setting M_TRIM_THRESHOLD to -1 disables trimming completely."
_USER_SETTINGS = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_MAX_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_")
_OTHER_ALLOCATORS = ("jemalloc", "tcmalloc", "mimalloc")

_applied = False


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 — only glibc has it (musl does not)
        return libc
    except (OSError, AttributeError):
        return None


def reason_to_keep_system_allocator() -> str | None:
    """Why the allocator must be left as it is, or ``None`` when it may be tuned."""
    if os.environ.get(OPT_OUT, "").lower() == "system":
        return f"{OPT_OUT}=system"
    preloaded = os.environ.get("LD_PRELOAD", "")
    other = next((name for name in _OTHER_ALLOCATORS if name in preloaded), None)
    if other:
        return f"{other} is preloaded"
    user = [name for name in _USER_SETTINGS if name in os.environ]
    if "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        user.append("GLIBC_TUNABLES")
    if user:
        return f"the environment sets {', '.join(user)}"
    if _glibc() is None:
        return "the C library is not glibc"
    return None


def keep_freed_memory() -> bool:
    """Tune glibc so freed tensor memory stays in the process (see the module docstring).

    Returns:
        ``True`` when the settings are in effect (now or from an earlier call), ``False`` when the
        allocator was left alone; the reason is logged at INFO level.
    """
    global _applied
    if _applied:
        return True
    reason = reason_to_keep_system_allocator()
    if reason is None:
        libc = _glibc()
        if libc.mallopt(_M_MMAP_MAX, 0) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, _NO_TRIMMING) == 1:
            _applied = True
            log.info("CPU run: glibc malloc keeps freed memory for reuse (%s=system to opt out).", OPT_OUT)
            return True
        reason = "mallopt refused the settings"
    log.info("CPU run: the system allocator is left as it is (%s).", reason)
    return False
