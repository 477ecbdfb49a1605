"""The run directory: where it is, what guards it, and the formats of its files.

Contract (``report``, ``evaluate`` and the tests rely on it): ``config.json``, ``run.json``
(precision, processes, device and versions of each start or resume), ``history.json``,
``steps.csv``, ``tensorboard/``, ``checkpoints/``, ``model.safetensors``, ``predictions.csv``,
``summary.json``, the pictures and, when the range test ran, ``lr_finder.json``. Every file is
written atomically (``resnet_ocp.atomic``).
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from resnet_ocp.atomic import atomic_path
from resnet_ocp.errors import RunError, damaged_file

STEP_FIELDS = ("step", "epoch", "samples", "lr", "momentum", "loss")
# Older steps.csv files (the records under results/ among them) call the momentum column beta1.
_LEGACY_STEP_FIELDS = {"beta1": "momentum"}
PREDICTION_FIELDS = ("index", "label", "prediction", "confidence")
LOCK_FILE = ".lock"


@contextlib.contextmanager
def open_run_dir(accelerator, output_dir: str | None, resuming: bool) -> Iterator[Path]:
    """The run directory, chosen on the main process, shared, guarded, created and locked for
    the block: a second run into the same directory is refused while this one lives, even
    before it has written anything.

    Args:
        accelerator: the run's Accelerator (timestamps differ across processes, so the main
            process's choice is broadcast, and so is its verdict on the guards).
        output_dir: the requested directory, or None for ``runs/<timestamp>``.
        resuming: whether this invocation continues a run (``--resume``).
    """
    from accelerate.utils import broadcast_object_list

    chosen = [output_dir or time.strftime("runs/%Y%m%d-%H%M%S")]
    broadcast_object_list(chosen)
    run_dir = Path(chosen[0])
    lock, problem = None, None
    taken = f"{run_dir} already holds a run; continue it with --resume {run_dir} or choose another --output-dir"
    if accelerator.is_main_process:
        # The checks that need no lock come first, so that a refused command leaves nothing behind.
        if not resuming and (run_dir / "config.json").exists():
            problem = taken
        elif resuming and is_finished(run_dir):
            problem = f"{run_dir} has finished (model.safetensors exists); start a new run with another --output-dir"
        else:
            lock, problem = _lock(run_dir)
            if problem is None and not resuming and (run_dir / "config.json").exists():  # written since the check above
                problem = taken
    verdict = [problem]
    broadcast_object_list(verdict)
    try:
        if verdict[0] is not None:
            raise RunError(verdict[0])
        accelerator.wait_for_everyone()
        yield run_dir
    finally:
        if lock is not None:
            lock.close()  # closing the file releases its flock


def is_finished(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a finished run: ``finish`` writes ``model.safetensors`` last,
    after ``summary.json`` and the pictures, so a run killed while finishing is not taken for done.

    Args:
        run_dir: a run directory (or a record copied from one).
    """
    return (run_dir / "model.safetensors").exists()


def _lock(run_dir: Path):
    """Create ``run_dir`` and hold an exclusive lock on ``run_dir/.lock``: ``(file, None)``, or
    ``(None, problem)`` when that cannot be done."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        handle = open(run_dir / LOCK_FILE, "a+")
    except OSError as exc:
        return None, f"cannot create the run directory {run_dir} ({exc.strerror}); choose another --output-dir"
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        return None, f"{run_dir} is in use by a run that is still going ({holder}); wait for it or choose another --output-dir"
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
    handle.flush()
    return handle, None


def lock_holder(run_dir: Path) -> tuple[int, str] | None:
    """The ``(pid, host)`` of the process holding ``run_dir``'s lock, or None when no run holds it.

    Args:
        run_dir: a run directory.
    """
    try:
        handle = open(run_dir / LOCK_FILE)
    except FileNotFoundError:
        return None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            words = handle.read().split()  # "pid 1234 on host", as _lock writes it
            return (int(words[1]), words[3]) if len(words) == 4 and words[1].isdigit() else (0, "")
        return None


def write_steps(path: str | os.PathLike, rows: list[dict[str, Any]]) -> None:
    """Write all of ``steps.csv`` atomically (small: about 2,400 rows for 24 epochs).

    Args:
        path: the file.
        rows: one dict per optimizer step with the keys of ``STEP_FIELDS``.
    """
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=STEP_FIELDS)
        writer.writeheader()
        writer.writerows(rows)


def read_steps(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Read ``steps.csv`` with numeric columns parsed (older files' ``beta1`` column as ``momentum``).

    Args:
        path: the file.
    """
    types = {"step": int, "epoch": int, "samples": int, "lr": float, "momentum": float, "loss": float}
    try:
        with open(path, newline="") as f:
            rows = []
            for raw in csv.DictReader(f):
                row = {_LEGACY_STEP_FIELDS.get(k, k): v for k, v in raw.items()}
                rows.append({k: types[k](row[k]) for k in STEP_FIELDS})
            return rows
    except (OSError, ValueError, KeyError, TypeError, csv.Error) as exc:
        raise damaged_file(path, exc) from None


def write_predictions(path: str | os.PathLike, test: dict) -> None:
    """Write ``predictions.csv`` (one row per test image, in dataset order) atomically.

    Args:
        path: the file.
        test: an ``inference.evaluate`` result (``indices``, ``labels``, ``predictions``, ``confidences``).
    """
    order = test["indices"].argsort().tolist()
    columns = [test[k][order].tolist() for k in ("indices", "labels", "predictions", "confidences")]
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(PREDICTION_FIELDS)
        for index, label, pred, conf in zip(*columns):
            writer.writerow([index, label, pred, f"{conf:.6f}"])
