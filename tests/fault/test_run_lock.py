"""One run per directory: a second fit into a default_root_dir or export directory in use is refused with the
holder's pid and start time, a lock left by a dead process is taken over with a note, and a refused run leaves
no empty folders behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lightning_kd.cli import main
from lightning_kd.fault.run_lock import LOCK_NAME, DirectoryInUseError, lock_directory, release
from tests.cli_fixtures import classification_data_args, quick_trainer_args, write_classification_csvs, write_models

ROOT = Path(__file__).resolve().parents[2]


def _hold_lock(directory: Path) -> subprocess.Popen:
    """Another process that takes the lock of ``directory`` and keeps it (the lock module loads no torch: fast)."""
    code = (
        "import sys, time\nfrom lightning_kd.fault.run_lock import lock_directory\n"
        f"lock_directory({str(directory)!r}, 'default_root_dir', 'x')\nprint('locked', flush=True)\ntime.sleep(120)\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_a_held_lock_refuses_with_the_holder_and_a_dead_holders_lock_is_taken_over(tmp_path, capsys):
    holder = _hold_lock(tmp_path)
    try:
        with pytest.raises(DirectoryInUseError) as error:
            lock_directory(tmp_path, "default_root_dir", "give this run its own --trainer.default_root_dir")
        message = str(error.value)
        assert message.startswith(f"Another run is using {tmp_path.resolve()} as its default_root_dir: process {holder.pid} on ")
        assert ", started 20" in message and message.endswith("or give this run its own --trainer.default_root_dir.")
    finally:
        holder.send_signal(signal.SIGKILL)  # dies without releasing: the file stays, the OS drops the lock
        holder.wait()
    assert (tmp_path / LOCK_NAME).exists()
    path = lock_directory(tmp_path, "default_root_dir", "x")
    assert f"took over the lock of {tmp_path} left by process {holder.pid}" in capsys.readouterr().err
    assert lock_directory(tmp_path, "default_root_dir", "x") == path  # this process may ask again (pipeline stages)
    release(path)
    assert path.exists()
    release(path)
    assert not path.exists(), "the last release removes the file"


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("lock_assets")
    return {**write_models(root), **write_classification_csvs(root)}


def _args(assets: dict, root: Path, export: Path, *extra: str) -> list[str]:
    teacher = assets["teacher_classification"]
    return ["fit", "--model=KD", f"--model.teacher={teacher}", "--model.student_init=teacher_uniform", "--model.student_layers=3",
            *classification_data_args(teacher, assets), *quick_trainer_args(root, steps=3), f"--export.dirpath={export}", *extra]


def _refused(monkeypatch, capsys, argv: list[str]) -> str:
    monkeypatch.setattr(sys, "argv", ["lightning-kd", *argv])
    with pytest.raises(SystemExit) as exit_info:
        main()
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err[-3000:]
    return next(line for line in err.splitlines() if line.startswith("lightning-kd: error: "))


def test_a_second_fit_into_a_directory_in_use_is_refused_and_the_first_is_untouched(assets, tmp_path, monkeypatch, capsys):
    root, export, marker, go = tmp_path / "run", tmp_path / "student", tmp_path / "paused", tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen(
        [sys.executable, "-m", "lightning_kd", *_args(assets, root, export, "--checkpoint=lightning_kd.fault.PeriodicCheckpoint",
                                                       "--checkpoint.every_n_train_steps=1", "--trainer.callbacks+=tests.fault.helpers.WaitForFile",
                                                       "--trainer.callbacks.step=1", f"--trainer.callbacks.marker={marker}",
                                                       f"--trainer.callbacks.release={go}")],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not marker.exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert marker.exists(), "the first run never reached its pause"
        # The same default_root_dir, from a second process.
        message = _refused(monkeypatch, capsys, _args(assets, root, tmp_path / "other_student"))
        assert f"Another run is using {root.resolve()} as its default_root_dir: process {first.pid} on " in message
        # Another root, but the same export directory; with a logger, whose version_0 folder a refused run removes again.
        fresh = tmp_path / "fresh_run"
        message = _refused(monkeypatch, capsys, _args(assets, fresh, export, "--trainer.logger=true"))
        assert f"Another run is using {export.resolve()} as its export directory: process {first.pid} on " in message
        assert not fresh.exists(), "a refused run leaves no empty folders behind"
    finally:
        go.touch()
        _, stderr = first.communicate(timeout=120)
    assert first.returncode == 0, stderr[-3000:]
    assert sorted(p.name for p in (root / "checkpoints").iterdir()) == ["epoch=0-step=1.ckpt", "epoch=0-step=2.ckpt", "epoch=0-step=3.ckpt", "last.ckpt"]
    assert (export / "config.json").is_file() and not (root / LOCK_NAME).exists()
