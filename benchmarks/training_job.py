"""One training run driven by a benchmark script: launched or resumed, stopped cleanly on SIGTERM.

``benchmarks/seeds.py`` (one recipe, several seeds) and ``benchmarks/ablations.py`` (one lever per
run) keep their runs in a runs directory across sessions; both start each run here, so both resume
an interrupted run from its checkpoint and pass a preemption on to it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

import psutil

from resnet_ocp.errors import PREEMPTED_EXIT
from resnet_ocp.preemption import PREEMPTED_FILE

REPO = Path(__file__).resolve().parents[1]


def launch_command(config_file: str, run_dir: Path, flags: list[str]) -> list[str]:
    """The ``accelerate launch`` command of one run: a resume when ``run_dir`` exists, else a new run.

    Args:
        config_file: the Accelerate config.
        run_dir: the run's directory (``--output-dir`` of a new run).
        flags: the run's ``train.py`` options, without ``--output-dir`` (unused on resume, where
            ``config.json`` holds them).
    """
    launch = ["accelerate", "launch", "--config_file", config_file, "train.py"]
    if (run_dir / "config.json").exists():
        return [*launch, "--resume", str(run_dir), "--no-progress"]
    return [*launch, *flags, "--output-dir", str(run_dir), "--no-progress"]


@dataclass(frozen=True)
class Outcome:
    """How one training process ended.

    Args:
        status: its exit status: 75 (``PREEMPTED_EXIT``) when it was stopped and checkpointed
            inside its epoch (``preempted.json``), 0 when it finished.
        stopped: whether a stop was asked while it ran: SIGTERM/SIGINT to the driver, or a
            signal to ``train.py`` itself (``resnet-ocp stop``), which leaves a fresh
            ``preempted.json``; the driver then ends, whatever the status, instead of starting
            its next run.
    """

    status: int
    stopped: bool


def run_training(command: list[str], log: Path, run_dir: Path) -> Outcome:
    """Run one training process with its output appended to ``log``; SIGTERM/SIGINT to the caller
    go on to the training processes, which checkpoint at their next optimizer step.

    The signal goes to every process the launcher started but not to ``accelerate launch`` itself:
    accelerate 1.16 answers SIGTERM by killing its child 5 s later, and an fp32 step of batch 512
    takes 7-16 s on a 2-core AVX2 CPU (32-75 img/s), so a signalled launcher loses the epoch in progress.

    Args:
        command: the launch command (``launch_command``).
        log: the file the run's output is appended to.
        run_dir: the run's directory, where a stopped run leaves ``preempted.json``.
    """
    started = time.time()
    with open(log, "a") as out:
        child = subprocess.Popen(command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        signalled = []

        def forward(signum, frame):
            signalled.append(signum)
            _signal_workers(child.pid)

        previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            status = child.wait()
            # A checkpoint of the full run takes ~20 s here; the bound covers a container whose
            # init never reaps the orphaned train.py (its zombie would look alive forever).
            deadline = time.monotonic() + 300
            while _group_alive(child.pid) and time.monotonic() < deadline:
                time.sleep(0.5)
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
    preempted = run_dir / PREEMPTED_FILE
    if preempted.exists() and preempted.stat().st_mtime >= started:  # not one that this run's resume consumed
        return Outcome(PREEMPTED_EXIT, True)
    return Outcome(status if status >= 0 else 128 - status, bool(signalled))


def _signal_workers(launcher: int) -> None:
    """SIGTERM every process in the launcher's process group except the launcher."""
    for process in psutil.process_iter():
        with suppress(psutil.Error, ProcessLookupError):
            if process.pid != launcher and os.getpgid(process.pid) == launcher:
                process.send_signal(signal.SIGTERM)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True
