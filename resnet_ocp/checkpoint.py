"""Resumable checkpoints: ``Accelerator.save_state`` after each epoch, made visible atomically.

A checkpoint holds model, optimizer, scheduler, RNG and any registered object (the weight
EMA). Shuffling and augmentation are pure functions of (seed, epoch, sample), so nothing else
is needed to resume bit-exactly. A checkpoint is written under ``.partial``, gets a
``complete`` marker and is renamed into place, so a half-written one is never loaded.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

CHECKPOINT_PREFIX = "epoch_"


def checkpoint_dir(run_dir: str | os.PathLike, epoch: int) -> Path:
    """Where the checkpoint taken after ``epoch`` lives.

    Args:
        run_dir: the run directory.
        epoch: the epoch just finished (1-based).
    """
    return Path(run_dir) / "checkpoints" / f"{CHECKPOINT_PREFIX}{epoch:03d}"


def _epochs(root: Path) -> list[tuple[int, Path]]:
    return sorted((int(p.name[len(CHECKPOINT_PREFIX):]), p) for p in root.glob(f"{CHECKPOINT_PREFIX}*")
                  if p.name[len(CHECKPOINT_PREFIX):].isdigit())


def latest_checkpoint(run_dir: str | os.PathLike) -> tuple[int, Path] | None:
    """The newest complete checkpoint as ``(epoch, path)``, or None if there is none.

    Args:
        run_dir: the run directory.
    """
    found = [(epoch, p) for epoch, p in _epochs(Path(run_dir) / "checkpoints") if (p / "complete").exists()]
    return found[-1] if found else None


def save_checkpoint(accelerator, run_dir: str | os.PathLike, epoch: int, keep: int) -> Path:
    """Save the full training state after ``epoch`` and prune all but the newest ``keep``.

    Every process takes part (``save_state`` gathers what it needs); only the main process
    renames and prunes.

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
        for _, old in _epochs(final.parent)[:-keep]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final
