"""Seconds from a stop signal to a resumable exit, on the real network: the grace period a
cluster must give a preempted job.

Starts ``train.py`` (one process) on real CIFAR-10, sends SIGUSR1 ``--after`` seconds into the
first epoch, and measures until the process has exited; the run itself prints how long after the
signal its checkpoint inside the epoch was saved. Appends one JSON line to ``benchmarks/results.jsonl``.

    python benchmarks/preemption.py --data ../shared/data/cifar10 --runs-dir ~/runs/preempt
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

from resnet_ocp.atomic import append_json_line
from resnet_ocp.errors import OneLineParser, exit_with, positive_int
from resnet_ocp.session import cpu_identity

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).with_name("results.jsonl")


def main(argv: list[str] | None = None) -> dict:
    """Run the measurement and append it to ``benchmarks/results.jsonl``."""
    parser = OneLineParser(prog="benchmarks/preemption.py", description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="a local CIFAR-10 parquet directory, e.g. ../shared/data/cifar10")
    parser.add_argument("--runs-dir", required=True, help="where the stopped run's directory goes (outside the repository)")
    parser.add_argument("--after", type=float, default=60.0, help="seconds after the first epoch starts to send the signal")
    parser.add_argument("--batch-size", type=positive_int, default=512)
    parser.add_argument("--results", default=str(RESULTS), help="JSON-lines file the record is appended to")
    args = parser.parse_args(argv)
    run_dir = Path(args.runs_dir).expanduser() / time.strftime("preempt-%Y%m%d-%H%M%S")
    if not Path(args.data).is_dir():
        exit_with(f"--data {args.data}: no such directory; give a local CIFAR-10 parquet directory")
    cmd = [sys.executable, str(REPO / "train.py"), "--data", args.data, "--output-dir", str(run_dir), "--max-lr", "0.003",
           "--batch-size", str(args.batch_size), "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO, env=os.environ)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("Epoch 1/"):
            break
    time.sleep(args.after)
    proc.send_signal(signal.SIGUSR1)
    sent = time.monotonic()
    lines += proc.stdout.readlines()
    status = proc.wait()
    seconds = time.monotonic() - sent
    saved = next((float(m[1]) for m in map(re.compile(r"checkpoint saved ([\d.]+) s after the signal").search, lines) if m), None)
    where = next((m.groups() for m in map(re.compile(r"inside epoch (\d+) after its step (\d+)").search, lines) if m), None)
    record = {"benchmark": "preemption", "date": time.strftime("%Y-%m-%d %H:%M:%S"),
              "command": "python benchmarks/preemption.py " + shlex.join(argv if argv is not None else sys.argv[1:]),
              "cpu": cpu_identity()["cpu_name"],
              "batch_size": args.batch_size, "signal_after_s": args.after, "exit_status": status, "signal_to_exit_s": seconds,
              "signal_to_checkpoint_s": saved, "stopped_at": where, "run_dir": str(run_dir)}
    print(f"exit status {status}; signal to checkpoint {saved} s, signal to exit {seconds:.1f} s; stopped at epoch/step {where}")
    append_json_line(args.results, record)
    return record


if __name__ == "__main__":
    main()
