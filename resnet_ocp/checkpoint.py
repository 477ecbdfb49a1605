"""Resumable checkpoints: ``Accelerator.save_state`` after each epoch, or inside one when the
run is preempted, made visible atomically.

A checkpoint holds model, optimizer, scheduler, RNG, Accelerate's step counter and any
registered object (the weight EMA). Shuffling and augmentation are pure functions of (seed,
epoch, sample), so nothing else is needed to resume bit-exactly after an epoch; a checkpoint
taken inside an epoch also holds ``position.json``, the epoch's progress so far (see
``engine.EpochPosition``). A checkpoint is written under ``.partial``, gets a ``complete``
marker and is renamed into place, so a half-written one is never loaded.
"""

from __future__ import annotations

import math
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from resnet_ocp.atomic import read_json, write_json

# epoch_007 (after epoch 7) or epoch_007_step_00040 (inside epoch 7, after 40 of its optimizer steps).
_NAME = re.compile(r"epoch_(\d{3,})(?:_step_(\d{5,}))?")
POSITION_FILE = "position.json"


@dataclass(frozen=True)
class Checkpoint:
    """A complete checkpoint: taken after ``epoch`` (``step`` None) or inside it after ``step`` optimizer steps."""

    epoch: int
    step: int | None
    path: Path

    @property
    def order(self) -> tuple[int, float]:
        """Sort key: later training progress sorts later."""
        return self.epoch, math.inf if self.step is None else self.step

    def position(self) -> dict | None:
        """The saved progress inside the epoch (None for an end-of-epoch checkpoint)."""
        return None if self.step is None else read_json(self.path / POSITION_FILE)


def checkpoint_dir(run_dir: str | os.PathLike, epoch: int, step: int | None = None) -> Path:
    """Where the checkpoint taken after ``epoch`` (or inside it, after ``step`` optimizer steps) lives.

    Args:
        run_dir: the run directory.
        epoch: the epoch (1-based).
        step: optimizer steps done inside ``epoch``; None for the end of the epoch.
    """
    name = f"epoch_{epoch:03d}" if step is None else f"epoch_{epoch:03d}_step_{step:05d}"
    return Path(run_dir) / "checkpoints" / name


def _found(root: Path) -> list[Checkpoint]:
    found = []
    for p in root.glob("epoch_*"):
        match = _NAME.fullmatch(p.name)
        if match:
            found.append(Checkpoint(int(match[1]), int(match[2]) if match[2] else None, p))
    return sorted(found, key=lambda c: c.order)


def latest_checkpoint(run_dir: str | os.PathLike) -> Checkpoint | None:
    """The checkpoint of the furthest training progress that is complete, or None if there is none.

    Args:
        run_dir: the run directory.
    """
    complete = [c for c in _found(Path(run_dir) / "checkpoints") if (c.path / "complete").exists()]
    return complete[-1] if complete else None


def save_checkpoint(accelerator, run_dir: str | os.PathLike, epoch: int, keep: int, step: int | None = None,
                    position: dict | None = None) -> Path:
    """Save the full training state and prune: all but the newest ``keep`` end-of-epoch
    checkpoints go, and every checkpoint taken inside an epoch once a later one is complete.

    Every process takes part (``save_state`` gathers what it needs); only the main process
    writes the position, renames and prunes.

    Args:
        accelerator: the run's Accelerator.
        run_dir: the run directory.
        epoch: the epoch just finished, or the one in progress when ``step`` is given (1-based).
        keep: how many end-of-epoch checkpoints to keep.
        step: optimizer steps done inside ``epoch`` (a preemption checkpoint), or None.
        position: the epoch's progress so far, saved as ``position.json`` (with ``step``).
    """
    final = checkpoint_dir(run_dir, epoch, step)
    tmp = final.with_name(final.name + ".partial")
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if position is not None:
            write_json(tmp / POSITION_FILE, position)
        (tmp / "complete").write_text(f"{epoch} {step if step is not None else 'end'}\n")
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        found = _found(final.parent)
        ends = [c for c in found if c.step is None]
        stale = [c for c in found if c.step is not None and c.order < found[-1].order] + ends[:-keep]
        for old in stale:
            shutil.rmtree(old.path)
    accelerator.wait_for_everyone()
    return final
