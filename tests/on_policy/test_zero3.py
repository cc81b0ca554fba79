"""Generated batches under DeepSpeed ZeRO-3 over two CPU processes: the partitioned student samples, the
partitioned teacher writes and scores, and responses that end at different steps on each process do not
leave one process waiting for the other (``generate(synced_gpus=True)``; tests/on_policy/zero3_run.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_two_zero3_processes_generate_together(tmp_path):
    out = tmp_path / "zero3.json"
    # In-process fits of this session may have left MASTER_PORT & co. behind: start clean.
    inherited = {k: v for k, v in os.environ.items() if k not in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "NODE_RANK")}
    env = {**inherited, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "tests.on_policy.zero3_run", "--devices", "2", "--root", str(tmp_path / "run"), "--out", str(out)]
    log = tmp_path / "zero3.log"
    for attempt in range(2):
        # Output goes to a file, not a pipe: DeepSpeed's launcher leaves helpers that hold a pipe open after exit.
        with open(log, "w") as sink:
            result = subprocess.run(command, cwd=ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT, timeout=300)
        # The free port Lightning picks for the rendezvous can be taken before it binds it; only that is retried.
        if result.returncode == 0 or "EADDRINUSE" not in log.read_text() or attempt:
            break
    assert result.returncode == 0, log.read_text()[-4000:]
    outcome = json.loads(out.read_text())
    first, second = outcome["ranks"]
    assert outcome["steps"] == 4
    assert all(rank["student_partitioned"] and rank["teacher_partitioned"] for rank in (first, second))
    assert first["writers"] == second["writers"] and {"student", "teacher"} <= set(first["writers"])  # chosen alike
    # At some step one process's responses all ended before the other's: it kept decoding with it.
    assert any(max(ours) != max(theirs) for ours, theirs in zip(first["lengths"], second["lengths"]))
