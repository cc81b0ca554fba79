"""The CPU allocator setting (lightning_kd/cpu_allocator.py): when it applies, when it stays away.

mallopt changes the whole process, so the tuning itself runs in a child process; the tests here
check its effect there (freed large blocks no longer leave the process) and every opt-out.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from lightning_kd import cpu_allocator
from lightning_kd.cpu_allocator import reason_to_keep_system_allocator

# Allocates, writes and frees a 64 MB block (as a training step does with its activations), then
# counts the minor page faults of 8 more rounds once the heap has settled (glibc takes a few rounds).
CHILD = textwrap.dedent(
    """
    import resource, sys
    import torch
    from lightning_kd.cpu_allocator import keep_freed_memory
    applied = keep_freed_memory() if sys.argv[1] == "tune" else False
    for _ in range(12):
        torch.empty(16 * 2**20).fill_(1.0)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(8):
        torch.empty(16 * 2**20).fill_(1.0)
    print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    """
)


def run_child(mode: str, env: dict[str, str] | None = None) -> tuple[bool, int]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != cpu_allocator.OPT_OUT}
    environment.update(env or {})
    out = subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True, text=True, env=environment, check=True)
    applied, faults = out.stdout.split()
    return applied == "True", int(faults)


@pytest.mark.skipif(reason_to_keep_system_allocator() == "the C library is not glibc", reason="glibc only")
def test_freed_blocks_stay_in_the_process_once_tuned():
    applied, tuned_faults = run_child("tune")
    _, system_faults = run_child("system")
    assert applied
    # Default glibc maps and unmaps the 64 MB block each time: 16k faults per round (4 KiB pages).
    assert system_faults > 8 * 10_000
    assert tuned_faults < system_faults / 20


def test_opt_outs_are_respected(monkeypatch):
    for name in ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_MAX_", "LD_PRELOAD", "GLIBC_TUNABLES", cpu_allocator.OPT_OUT):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(cpu_allocator.OPT_OUT, "system")
    assert reason_to_keep_system_allocator() == f"{cpu_allocator.OPT_OUT}=system"
    monkeypatch.delenv(cpu_allocator.OPT_OUT)
    monkeypatch.setenv("LD_PRELOAD", "/usr/lib/libjemalloc.so.2")
    assert reason_to_keep_system_allocator() == "jemalloc is preloaded"
    monkeypatch.delenv("LD_PRELOAD")
    monkeypatch.setenv("MALLOC_MMAP_MAX_", "1")
    assert "MALLOC_MMAP_MAX_" in reason_to_keep_system_allocator()
    monkeypatch.delenv("MALLOC_MMAP_MAX_")
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=1")
    assert "GLIBC_TUNABLES" in reason_to_keep_system_allocator()


def test_an_opted_out_process_keeps_the_system_allocator():
    applied, faults = run_child("tune", {cpu_allocator.OPT_OUT: "system"})
    assert not applied
