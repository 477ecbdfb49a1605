"""scripts/slurm/train.sbatch on a real two-node SLURM cluster (scripts/slurm/local_cluster.sh):
one process group over two nodes, preemption with requeue and an exact resume, a dead rank.

Skipped only where sbatch is absent; .ci/run installs and starts the cluster, so CI runs them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import REPO, reset_accelerate, tiny_args
from resnet_ocp.rundir import read_steps

pytestmark = [pytest.mark.slow, pytest.mark.skipif(shutil.which("sbatch") is None, reason="sbatch is absent (no SLURM here)")]

JOB_SCRIPT = REPO / "scripts" / "slurm" / "train.sbatch"


@pytest.fixture(scope="module")
def cluster():
    """The local two-node cluster, started if it is not up."""
    states = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], capture_output=True, text=True).stdout.split()
    if states.count("idle") + states.count("mixed") + states.count("allocated") < 2:
        subprocess.run(["bash", str(REPO / "scripts" / "slurm" / "local_cluster.sh"), "start"], check=True, timeout=180)
    return True


def submit(runs: Path, train_args: list[str], name: str, *sbatch_options: str) -> tuple[str, Path]:
    """sbatch the job script over two nodes; return the job id and its log."""
    log = runs / f"{name}.log"
    env = {**os.environ, "RUNS_DIR": str(runs), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    out = subprocess.run(["sbatch", "--parsable", "-N", "2", "-J", name, "-o", str(log), *sbatch_options, str(JOB_SCRIPT), *train_args],
                         capture_output=True, text=True, env=env, cwd=REPO, check=True)
    return out.stdout.strip().split(";")[0], log


def job_field(job: str, field: str) -> str:
    out = subprocess.run(["scontrol", "show", "job", job, "-o"], capture_output=True, text=True).stdout
    match = re.search(rf"\b{field}=(\S+)", out)
    return match[1] if match else ""


def wait_for(job: str, timeout: float = 300) -> str:
    """Poll until the job has ended; return its final state."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        state = job_field(job, "JobState")
        if state in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"):
            return state
        time.sleep(0.5)
    subprocess.run(["scancel", job])
    raise AssertionError(f"job {job} did not end within {timeout} s")


def wait_for_file(path: Path, timeout: float = 180) -> None:
    end = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < end, f"{path} did not appear within {timeout} s"
        time.sleep(0.2)


def job_args(tiny_data: Path, cache_dir: Path, *extra: str) -> list[str]:
    """tiny_args without the output directory (the job script names the run directory)."""
    args = tiny_args(tiny_data, cache_dir, Path("unused"), *extra)
    i = args.index("--output-dir")
    return args[:i] + args[i + 2:]


def test_two_node_job_forms_one_group_and_keeps_the_schedule(cluster, tiny_data, cache_dir, tmp_path):
    """sbatch -N 2: both nodes join one 2-process group (run.json: 2 processes on node1 and node2),
    the LR applied at every step equals the one-process run's, every test sample is counted once,
    and only the main process wrote the run directory (one session, TensorBoard events from one process)."""
    job, log = submit(tmp_path, job_args(tiny_data, cache_dir), "two-node")
    assert wait_for(job) == "COMPLETED", log.read_text()[-3000:]
    run = tmp_path / f"slurm-{job}"
    (session,) = json.loads((run / "run.json").read_text())["sessions"]
    assert session["num_processes"] == 2 and session["machines"] == ["node1", "node2"] and session["num_machines"] == 2
    assert "2 process(es) on node1, node2, DistributedType.MULTI_CPU" in log.read_text()
    from resnet_ocp.cli import main

    alone = main(tiny_args(tiny_data, cache_dir, tmp_path / "alone"))
    reset_accelerate()
    assert [r["lr"] for r in read_steps(run / "steps.csv")] == [r["lr"] for r in read_steps(Path(alone["run_dir"]) / "steps.csv")]
    indices = [int(line.split(",")[0]) for line in (run / "predictions.csv").read_text().splitlines()[1:]]
    assert sorted(indices) == list(range(100))
    writers = {p.name.split(".")[-2] for p in (run / "tensorboard").rglob("events.out.tfevents.*")}  # ...<host>.<pid>.<n>
    assert len(writers) == 1
    assert json.loads((run / "history.json").read_text())[-1]["test_samples"] == 100


def test_preempted_job_is_requeued_and_ends_as_if_never_stopped(cluster, tiny_data, cache_dir, tmp_path):
    """A two-node job sent SIGUSR1 (as SLURM does before the time limit) after its first epoch:
    both processes stop at the same optimizer step, checkpoint inside the epoch, the job script
    requeues the job, and the requeued job resumes there and ends with steps.csv and weights
    identical to an uninterrupted two-node job's. The signal-to-checkpoint time is printed."""
    args = job_args(tiny_data, cache_dir, "--epochs", "6", "--batch-size", "10", "--peak-epoch", "2")
    whole, whole_log = submit(tmp_path, args, "whole")
    assert wait_for(whole) == "COMPLETED", whole_log.read_text()[-3000:]
    job, log = submit(tmp_path, args, "preempted")
    run = tmp_path / f"slurm-{job}"
    wait_for_file(run / "checkpoints" / "epoch_001" / "complete")
    subprocess.run(["scancel", "--signal=USR1", job], check=True)
    assert wait_for(job) == "COMPLETED", log.read_text()[-3000:]
    text = log.read_text()
    stops = re.findall(r"preempted by SIGUSR1 inside epoch (\d+) after its step (\d+): checkpoint saved ([\d.]+) s after the signal", text)
    assert stops, text[-3000:]
    assert "requeueing job" in text and "resuming" in text and job_field(job, "Restarts") == "1"
    print(f"\nstopped inside epoch {stops[0][0]} after step {stops[0][1]}; signal to checkpoint {stops[0][2]} s")
    reference = tmp_path / f"slurm-{whole}"
    assert (run / "steps.csv").read_text() == (reference / "steps.csv").read_text()
    a, b = load_file(str(run / "model.safetensors")), load_file(str(reference / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in b)
    assert len(json.loads((run / "run.json").read_text())["sessions"]) == 2


def test_a_requeued_job_whose_resume_fails_is_not_requeued_again(cluster, tmp_path):
    """A requeued job whose run cannot resume (its data has gone) ends FAILED with the run's
    error, not requeued again (and again) by the preempted.json the stop before it left behind."""
    from resnet_ocp.config import Config

    job, log = submit(tmp_path, [], "stale-stop", "--hold")
    run = tmp_path / f"slurm-{job}"
    run.mkdir()
    (run / "config.json").write_text(json.dumps(Config(data=str(tmp_path / "gone"), max_lr=0.01).to_dict()))
    (run / "preempted.json").write_text(json.dumps({"signal": "SIGUSR1", "epoch": 2, "step_in_epoch": 3}))
    subprocess.run(["scontrol", "release", job], check=True)
    assert wait_for(job, timeout=120) == "FAILED", log.read_text()[-3000:]
    text = log.read_text()
    assert "resuming" in text and "no such directory" in text and "requeueing" not in text, text[-3000:]
    assert re.search(r"training ended with status [1-9]", text), text[-3000:]
    assert job_field(job, "Restarts") == "0"


def _worker_of_node(node_id: str) -> int | None:
    """The pid of the training process that torchrun started on SLURM node ``node_id`` (its
    launcher has no LOCAL_RANK in its environment)."""
    for proc in Path("/proc").iterdir():
        try:
            environ = dict(e.split(b"=", 1) for e in (proc / "environ").read_bytes().split(b"\0") if b"=" in e)
            cmdline = (proc / "cmdline").read_bytes()
        except (OSError, ValueError):
            continue
        if environ.get(b"SLURM_NODEID") == node_id.encode() and b"LOCAL_RANK" in environ and b"resnet_ocp.cli" in cmdline:
            return int(proc.name)
    return None


def test_a_dead_rank_fails_the_whole_job_within_a_minute(cluster, tiny_data, cache_dir, tmp_path):
    """Killing node 2's training process (SIGKILL) mid-run ends the whole job within 60 s, as
    FAILED, with that rank's failure in the log, instead of leaving node 1 waiting in a collective."""
    args = job_args(tiny_data, cache_dir, "--epochs", "30", "--process-group-timeout", "60")
    job, log = submit(tmp_path, args, "dead-rank")
    wait_for_file(tmp_path / f"slurm-{job}" / "checkpoints" / "epoch_001" / "complete")
    pid = _worker_of_node("1")
    assert pid is not None, "no training process of node 2 found"
    os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()
    state = wait_for(job, timeout=120)
    seconds = time.monotonic() - killed
    print(f"\njob {state} {seconds:.1f} s after node 2's process was killed")
    assert state == "FAILED" and seconds < 60
    text = log.read_text()
    assert "rank      : 1" in text and "Signal 9 (SIGKILL)" in text, text[-3000:]
