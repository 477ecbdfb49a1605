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
from pathlib import Path

from resnet_ocp.errors import PREEMPTED_EXIT

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


def run_training(command: list[str], log: Path, run_dir: Path) -> int:
    """Run one training process with its output appended to ``log``; SIGTERM/SIGINT to the caller
    go to its whole process group, as SLURM signals a job step.

    ``accelerate launch`` does not pass a signal on to the ``train.py`` it started and dies of it,
    so the group is signalled and then waited for until ``train.py`` has finished its checkpoint.

    Args:
        command: the launch command (``launch_command``).
        log: the file the run's output is appended to.
        run_dir: the run's directory, where a stopped run leaves ``preempted.json``.

    Returns:
        The exit status: 75 when the run was stopped and checkpointed (``preempted.json``).
    """
    with open(log, "a") as out:
        child = subprocess.Popen(command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        signalled = []

        def forward(signum, frame):
            signalled.append(signum)
            os.killpg(child.pid, signal.SIGTERM)

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
    if signalled and (run_dir / "preempted.json").exists():
        return PREEMPTED_EXIT
    return status if status >= 0 else 128 - status


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True
