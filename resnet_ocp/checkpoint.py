"""Atomic files and resumable checkpoints for a run directory.

Every file a run produces is written to a temporary name and renamed into place, so an
interrupted run never leaves a half-written result and a finished one is never clobbered.
Per-epoch checkpoints use ``Accelerator.save_state`` (model, optimizer, scheduler, RNG);
shuffling and augmentation are pure functions of (seed, epoch, sample), so nothing else is
needed to resume bit-exactly.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

STEP_FIELDS = ("step", "epoch", "samples", "lr", "beta1", "loss")
CHECKPOINT_PREFIX = "epoch_"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        yield str(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp) if tmp.is_dir() else tmp.unlink()


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(obj, indent=2) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file."""
    return json.loads(Path(path).read_text())


def write_steps(path: str | os.PathLike, rows: list[dict[str, Any]]) -> None:
    """Write all of ``steps.csv`` atomically (it is small: about 2,400 rows for 24 epochs)."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=STEP_FIELDS)
        writer.writeheader()
        writer.writerows(rows)


def read_steps(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Read ``steps.csv`` with numeric columns parsed."""
    with open(path, newline="") as f:
        return [
            {"step": int(r["step"]), "epoch": int(r["epoch"]), "samples": int(r["samples"]),
             "lr": float(r["lr"]), "beta1": float(r["beta1"]), "loss": float(r["loss"])}
            for r in csv.DictReader(f)
        ]


def checkpoint_dir(run_dir: str | os.PathLike, epoch: int) -> Path:
    """Where the checkpoint taken after ``epoch`` lives."""
    return Path(run_dir) / "checkpoints" / f"{CHECKPOINT_PREFIX}{epoch:03d}"


def latest_checkpoint(run_dir: str | os.PathLike) -> tuple[int, Path] | None:
    """The newest complete checkpoint as ``(epoch, path)``, or None if there is none."""
    root = Path(run_dir) / "checkpoints"
    found = sorted(
        (int(p.name[len(CHECKPOINT_PREFIX):]), p)
        for p in root.glob(f"{CHECKPOINT_PREFIX}*")
        if p.name[len(CHECKPOINT_PREFIX):].isdigit() and (p / "complete").exists()
    )
    return found[-1] if found else None


def save_checkpoint(accelerator, run_dir: str | os.PathLike, epoch: int, keep: int) -> Path:
    """Save the full training state after ``epoch`` and prune all but the newest ``keep``.

    Every process takes part (``save_state`` gathers what it needs); only the main process
    renames and prunes. A ``complete`` marker makes half-written checkpoints invisible.

    Args:
        accelerator: the run's Accelerator.
        run_dir: the run directory.
        epoch: the epoch just finished (1-based).
        keep: how many checkpoints to keep.
    """
    final = checkpoint_dir(run_dir, epoch)
    tmp = final.with_name(final.name + ".partial")
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / "complete").write_text(f"{epoch}\n")
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        done = sorted(p for p in final.parent.glob(f"{CHECKPOINT_PREFIX}*") if p.name[len(CHECKPOINT_PREFIX):].isdigit())
        for old in done[:-keep]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final
