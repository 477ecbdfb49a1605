"""Train one recipe from several seeds, across sessions, and publish the finished runs as records.

Each seed trains in a real ``accelerate launch ... train.py`` process into ``RUNS_DIR/NAME-seedN``
(the name ``resnet-ocp records`` groups by); a finished seed (in ``RUNS_DIR`` or already published
under ``--publish``) is skipped and an interrupted one resumed, so one command, started again after
every interruption, finishes all of them. SIGTERM or
SIGINT to this driver reaches the training process, which checkpoints inside its epoch; the
driver then stops with status 75, as it does when ``resnet-ocp stop RUNS_DIR/NAME-seedN`` stopped the run.

    python benchmarks/seeds.py --name fast10 --seeds 0 1 2 --runs-dir ~/runs \\
        --config-file accelerate_configs/cpu_fp32.yaml -- --preset fast10 --data ../shared/data/cifar10
    python benchmarks/seeds.py --name fast10 --seeds 0 1 2 --runs-dir ~/runs --publish results -- ...

Prints the recipe's records row (median and range over the finished seeds). ``--publish DIR``
copies each finished run into ``DIR/NAME-seedN`` (its files, not checkpoints or TensorBoard
events, with its log as ``train.log``); a record already there is never overwritten.
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

from resnet_ocp.atomic import atomic_path
from resnet_ocp.errors import PREEMPTED_EXIT, OneLineParser, exit_with
from resnet_ocp.records import read_run, table_row
from resnet_ocp.rundir import is_finished

# Run as a script, this folder is on sys.path.
from training_job import launch_command, run_training

# Run-directory entries that stay behind when a run becomes a record: resumable state, live lock.
NOT_PUBLISHED = {".lock", "checkpoints", "tensorboard", "preempted.json"}


def publish(run_dir: Path, log: Path, target: Path) -> bool:
    """Copy a finished run into ``target`` as a record, atomically; False if ``target`` exists.

    Args:
        run_dir: the finished run directory.
        log: its training log, kept as ``train.log``.
        target: the record directory to create (e.g. ``results/fast10-seed0``).
    """
    if target.exists():
        return False
    with atomic_path(target) as partial:
        shutil.copytree(run_dir, partial, ignore=lambda folder, names: [n for n in names if folder == str(run_dir) and n in NOT_PUBLISHED])
        if log.exists():
            shutil.copyfile(log, Path(partial) / "train.log")
    return True


def main(argv: list[str] | None = None) -> str:
    """Train the seeds in order (resuming, skipping the finished), publish, print the row.

    Args:
        argv: the driver's options, then ``--`` and the recipe's ``train.py`` options.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    ours, flags = (argv[: argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    parser = OneLineParser(prog="benchmarks/seeds.py", description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True, help="the recipe's name: runs are RUNS_DIR/NAME-seedN")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--runs-dir", required=True, help="where the run directories and their logs are kept (outside the repository)")
    parser.add_argument("--config-file", default="accelerate_configs/cpu.yaml")
    parser.add_argument("--publish", help="copy each finished run into this folder as NAME-seedN (e.g. results)")
    args = parser.parse_args(ours)
    if any(f in flags for f in ("--seed", "--output-dir", "--resume")):
        exit_with("give the recipe's options after --, without --seed, --output-dir or --resume: the driver sets them per seed")
    runs_dir = Path(args.runs_dir).expanduser()
    runs_dir.mkdir(parents=True, exist_ok=True)
    done = []
    for seed in args.seeds:
        run_dir, log = runs_dir / f"{args.name}-seed{seed}", runs_dir / f"{args.name}-seed{seed}.log"
        record = Path(args.publish) / run_dir.name if args.publish else None
        if record is not None and is_finished(record):
            done.append(read_run(record))  # published, perhaps on another machine whose runs directory went with it
            continue
        if not is_finished(run_dir):
            command = launch_command(args.config_file, run_dir, [*flags, "--seed", str(seed)])
            print(f"[{time.strftime('%H:%M:%S')}] seed {seed}: {' '.join(command)}", flush=True)
            outcome = run_training(command, log, run_dir)
            if outcome.status or outcome.stopped:
                print(f"seed {seed} stopped with exit status {outcome.status}; see {log}; run this command again to continue", file=sys.stderr)
                raise SystemExit(PREEMPTED_EXIT if outcome.stopped else outcome.status)
        done.append(read_run(run_dir))
        if record is not None and publish(run_dir, log, record):
            print(f"published {run_dir} as {record}")
    row = table_row(args.name, done)
    print(row)
    return row


if __name__ == "__main__":
    main()
