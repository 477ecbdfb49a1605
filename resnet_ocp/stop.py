"""``resnet-ocp stop RUN_DIR``: stop a run that is training, at its next optimizer step, resumably.

The signal goes to the run's main ``train.py`` process (its pid is in ``RUN_DIR/.lock``), not to
``accelerate launch``: accelerate 1.16's one-process launcher answers its own SIGTERM by killing
its child 5 s later, and a CPU step of batch 512 takes 7-16 s on 2 cores (32-75 img/s), so
signalling the launcher loses the epoch in progress. The other processes of a multi-process run
stop at the same step (``preemption.StopRequest`` reduces the request across them).
"""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

from resnet_ocp.atomic import read_json
from resnet_ocp.errors import OneLineParser, UserError, exit_with
from resnet_ocp.preemption import PREEMPTED_FILE
from resnet_ocp.rundir import lock_holder


def stop_run(run_dir: Path, wait: float) -> dict:
    """SIGTERM the run's main process and wait until it has let go of its run directory.

    Args:
        run_dir: the directory of a run that is training.
        wait: seconds to wait for the checkpoint (0: send the signal and return).

    Returns:
        ``{"run_dir", "pid", "stopped"}`` plus ``preempted`` (the contents of ``preempted.json``)
        when the run has stopped and checkpointed inside its epoch.
    """
    holder = lock_holder(run_dir)
    if holder is None:
        exit_with(f"no run is training in {run_dir} (its .lock is not held); nothing to stop")
    pid, host = holder
    if not pid:
        exit_with(f"{run_dir}/.lock does not name the process holding it; stop the run with kill -TERM <pid of its train.py>")
    if host != socket.gethostname():
        exit_with(f"the run in {run_dir} trains on {host}, not here; run resnet-ocp stop there (or scancel the job)")
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        exit_with(f"the process {pid} that {run_dir}/.lock names is gone (another PID namespace, e.g. a container?); "
                  "stop the run where it trains")
    except PermissionError:
        exit_with(f"not allowed to signal the run's process {pid} (another user's?); stop it as that user")
    print(f"sent SIGTERM to train.py (pid {pid}); it stops after its current optimizer step", flush=True)
    deadline = time.monotonic() + wait
    while lock_holder(run_dir) is not None and time.monotonic() < deadline:
        time.sleep(0.5)
    result = {"run_dir": str(run_dir), "pid": pid, "stopped": lock_holder(run_dir) is None}
    if (run_dir / PREEMPTED_FILE).exists():
        result["preempted"] = read_json(run_dir / PREEMPTED_FILE)
    return result


def main(argv: list[str] | None = None, prog: str = "python -m resnet_ocp.stop") -> dict:
    """``resnet-ocp stop RUN_DIR``: stop a training run resumably and say how to continue it.

    Args:
        argv: command-line arguments (default ``sys.argv[1:]``).
        prog: the command's name in help and errors.
    """
    parser = OneLineParser(prog=prog, description=__doc__.splitlines()[0].split(": ", 1)[1])
    parser.add_argument("run_dir", help="the directory of a run that is training (its --output-dir)")
    parser.add_argument("--wait", type=float, default=600.0,
                        help="seconds to wait for the checkpoint (default 600; 0 returns once the signal is sent)")
    args = parser.parse_args(argv)
    try:
        result = stop_run(Path(args.run_dir), args.wait)
    except UserError as exc:  # a damaged preempted.json
        exit_with(exc)
    if "preempted" in result:
        p = result["preempted"]
        print(f"stopped inside epoch {p['epoch']} after its step {p['step_in_epoch']}; continue with --resume {args.run_dir}")
    elif result["stopped"]:
        print(f"the run has ended; see {args.run_dir}")
    elif args.wait:
        exit_with(f"the run in {args.run_dir} still holds its lock after {args.wait:g} s; wait longer or check its process (pid {result['pid']})", 1)
    return result


if __name__ == "__main__":
    main()
