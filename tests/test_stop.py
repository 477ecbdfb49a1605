"""``resnet-ocp stop RUN_DIR``: a training run stops at its next step with a checkpoint, however long the step."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from contextlib import suppress

import pytest

from conftest import REPO, free_port, launch, tiny_args
from resnet_ocp.cli import main


def test_stop_refuses_a_directory_where_nothing_trains(tmp_path, capsys):
    """A directory without a held .lock (none at all, or one left by an ended run) is refused in one line, exit 2."""
    (tmp_path / ".lock").write_text("pid 4242 on somewhere\n")
    for run_dir in (tmp_path / "missing", tmp_path):
        with pytest.raises(SystemExit) as info:
            main(["stop", str(run_dir)])
        assert info.value.code == 2
        err = capsys.readouterr().err.strip()
        assert err == f"error: no run is training in {run_dir} (its .lock is not held); nothing to stop"


def test_stop_signals_nothing_when_the_run_trains_on_another_host(tmp_path, capsys):
    """A lock held by a process on another host names that host, and no local process with the
    recorded pid is signalled."""
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        with open(tmp_path / ".lock", "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            lock.write(f"pid {bystander.pid} on node-17\n")
            lock.flush()
            with pytest.raises(SystemExit) as info:
                main(["stop", str(tmp_path)])
        assert info.value.code == 2
        assert "trains on node-17, not here" in capsys.readouterr().err
        time.sleep(0.5)
        assert bystander.poll() is None
    finally:
        bystander.kill()


def test_stop_answers_in_one_line_for_a_gone_process_and_a_damaged_preempted_json(tmp_path, capsys):
    """A held lock naming a process that no longer exists, and a damaged preempted.json left
    beside a signalled run, are each one error line with exit 2, no traceback."""
    import socket

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        with open(tmp_path / ".lock", "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            for pid, damaged, fragment in [(gone.pid, False, f"the process {gone.pid} that {tmp_path}/.lock names is gone"),
                                           (bystander.pid, True, "preempted.json is damaged")]:
                lock.truncate(0)
                lock.write(f"pid {pid} on {socket.gethostname()}\n")
                lock.flush()
                if damaged:
                    (tmp_path / "preempted.json").write_text('{"signal": "SIGTERM", "epo')
                with pytest.raises(SystemExit) as info:
                    main(["stop", str(tmp_path), "--wait", "0"])
                err = capsys.readouterr().err.strip()
                assert info.value.code == 2 and err.startswith("error: ") and fragment in err and "\n" not in err, err
    finally:
        bystander.kill()


def _stop_in_epoch_2(config: str, argv: list[str], run_dir, log) -> tuple[subprocess.CompletedProcess, int]:
    """Launch ``train.py`` with ``config``, run ``resnet-ocp stop`` once its log shows epoch 2, and
    return the stop command's result and the launcher's exit status."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(REPO / "accelerate_configs" / config),
           "--main_process_port", str(free_port()), str(REPO / "train.py"), *argv]
    with open(log, "w") as out:
        launcher = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"},
                                    start_new_session=True)
    try:
        deadline = time.time() + 240
        while "Epoch 2/500" not in log.read_text() and launcher.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        stop = subprocess.run([sys.executable, "-m", "resnet_ocp.cli", "stop", str(run_dir)], capture_output=True, text=True,
                              timeout=300, cwd=REPO)
        return stop, launcher.wait(timeout=60)
    finally:  # whatever happened, no process of the launch is left running
        with suppress(ProcessLookupError):
            os.killpg(launcher.pid, signal.SIGKILL)


@pytest.mark.slow
def test_stop_checkpoints_a_one_process_launch_inside_a_step_longer_than_the_launchers_grace(tiny_data, cache_dir, tmp_path):
    """Under ``accelerate launch`` (one process), with 5-20 s optimizer steps (width 128, batch 100, one
    thread; accelerate 1.16 kills its child 5 s after a SIGTERM of its own), ``resnet-ocp stop``
    during epoch 2 makes the run checkpoint inside epoch 2, write preempted.json and end; the
    launcher ends with it and the command says how to continue."""
    run_dir, log = tmp_path / "run", tmp_path / "train.log"
    argv = tiny_args(tiny_data, cache_dir, run_dir)
    for flag, value in {"--width": "128", "--batch-size": "100", "--epochs": "500", "--peak-epoch": "100"}.items():
        argv[argv.index(flag) + 1] = value
    stop, status = _stop_in_epoch_2("cpu_fp32.yaml", argv, run_dir, log)
    assert stop.returncode == 0, stop.stderr + log.read_text()[-2000:]
    assert json.loads((run_dir / "preempted.json").read_text())["epoch"] == 2, log.read_text()[-2000:]
    assert f"stopped inside epoch 2 after its step 1; continue with --resume {run_dir}" in stop.stdout
    assert (run_dir / "checkpoints" / "epoch_002_step_00001").is_dir()
    assert status == 1  # accelerate launch reports its child's 75 as a failure


@pytest.mark.slow
def test_stop_reaches_every_process_of_a_two_process_launch_through_the_main_one(tiny_data, cache_dir, tmp_path):
    """With two processes (cpu_multi.yaml), ``resnet-ocp stop`` signals only the main process (the
    .lock's pid); the other stops at the same optimizer step, so the checkpoint inside the epoch
    holds both processes' RNG states, and ``--resume`` with two processes finishes the run."""
    run_dir, log = tmp_path / "run", tmp_path / "train.log"
    argv = tiny_args(tiny_data, cache_dir, run_dir)
    for flag, value in {"--batch-size": "40", "--epochs": "500", "--peak-epoch": "100"}.items():
        argv[argv.index(flag) + 1] = value
    stop, status = _stop_in_epoch_2("cpu_multi.yaml", argv, run_dir, log)
    assert stop.returncode == 0 and status != 0, stop.stderr + log.read_text()[-2000:]
    stopped = json.loads((run_dir / "preempted.json").read_text())
    checkpoint = run_dir / "checkpoints" / f"epoch_{stopped['epoch']:03d}_step_{stopped['step_in_epoch']:05d}"
    assert stopped["epoch"] >= 2 and sorted(p.name for p in checkpoint.glob("random_states_*")) == \
        ["random_states_0.pkl", "random_states_1.pkl"], log.read_text()[-2000:]
    assert f"stopped inside epoch {stopped['epoch']} after its step {stopped['step_in_epoch']}" in stop.stdout
    resumed = launch("cpu_multi.yaml", ["--resume", str(run_dir), "--no-progress", "--stop-after-epoch", str(stopped["epoch"])])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert not (run_dir / "preempted.json").exists()
    assert (run_dir / "checkpoints" / f"epoch_{stopped['epoch']:03d}").is_dir()
