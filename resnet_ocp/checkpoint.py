"""Resumable checkpoints: ``Accelerator.save_state`` after each epoch, or inside one when the
run is preempted, made visible atomically.

A checkpoint holds model, optimizer, scheduler, RNG, Accelerate's step counter and any
registered object (the weight EMA). Shuffling and augmentation are pure functions of (seed,
epoch, sample), so nothing else is needed to resume bit-exactly after an epoch; a checkpoint
taken inside an epoch also holds ``position.json``, the epoch's progress so far (see
``engine.EpochPosition``). A checkpoint is written under ``.partial``, gets a ``complete``
marker (with the size and SHA-256 of every file, checked before loading) and is renamed into
place, so a half-written or later damaged one is never loaded.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from safetensors.torch import load_file, save_file

from resnet_ocp.atomic import read_json, write_json
from resnet_ocp.errors import RunError

# epoch_007 (after epoch 7) or epoch_007_step_00040 (inside epoch 7, after 40 of its optimizer steps).
_NAME = re.compile(r"epoch_(\d{3,})(?:_step_(\d{5,}))?")
POSITION_FILE = "position.json"
EMA_FILE = "ema.safetensors"
LOOKAHEAD_FILE = "lookahead.safetensors"


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

    def marker(self) -> dict:
        """The ``complete`` marker: the processes that wrote the checkpoint and each file's size
        and SHA-256 (older markers hold only the epoch, and give ``{}``)."""
        try:
            marker = json.loads((self.path / "complete").read_text())
        except ValueError:
            return {}
        return marker if isinstance(marker, dict) else {}

    def damage(self) -> str | None:
        """What is wrong with the checkpoint's files against its marker, or None if they are intact."""
        for name, (size, digest) in self.marker().get("files", {}).items():
            file = self.path / name
            if not file.exists():
                return f"{file} is missing"
            if file.stat().st_size != size:
                return f"{file} has {file.stat().st_size} bytes, not the {size} it was saved with"
            if _sha256(file) != digest:
                return f"{file} changed after it was saved (SHA-256 differs)"
        return None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


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


def complete_checkpoints(run_dir: str | os.PathLike) -> list[Checkpoint]:
    """Every complete checkpoint, the furthest training progress last.

    Args:
        run_dir: the run directory.
    """
    return [c for c in _found(Path(run_dir) / "checkpoints") if (c.path / "complete").exists()]


def latest_checkpoint(run_dir: str | os.PathLike) -> Checkpoint | None:
    """The checkpoint of the furthest training progress that is complete, or None if there is none.

    Args:
        run_dir: the run directory.
    """
    complete = complete_checkpoints(run_dir)
    return complete[-1] if complete else None


def save_checkpoint(accelerator, run_dir: str | os.PathLike, epoch: int, keep: int, step: int | None = None,
                    position: dict | None = None, averages: dict | None = None) -> Path:
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
        averages: file name -> the run's weight averages (the EMA's ``AveragedModel`` as
            ``EMA_FILE``, the ``Lookahead`` as ``LOOKAHEAD_FILE``), each saved from its
            ``state_dict()`` through safetensors rather than Accelerate's custom-object pickle, so
            loading it runs no code.
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
        for name, average in (averages or {}).items():
            save_file({k: v.detach().cpu().contiguous() for k, v in average.state_dict().items()}, str(tmp / name))
        files = {str(f.relative_to(tmp)): [f.stat().st_size, _sha256(f)] for f in sorted(tmp.rglob("*")) if f.is_file()}
        write_json(tmp / "complete", {"epoch": epoch, "step": step, "processes": accelerator.num_processes, "files": files})
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


def load_newest_good_checkpoint(accelerator, run_dir: Path, averages: dict | None = None) -> Checkpoint | None:
    """Load the newest checkpoint whose files match its marker and load cleanly, saying why each
    newer one was passed over; None when the run has none. A checkpoint written by another
    number of processes is refused: its RNG files and in-epoch sums are per process.

    Args:
        accelerator: the run's Accelerator (the prepared objects get the state).
        run_dir: the run directory.
        averages: file name -> weight average (as ``save_checkpoint``), each given its file.
    """
    candidates = complete_checkpoints(run_dir)
    for checkpoint in reversed(candidates):
        processes = checkpoint.marker().get("processes", accelerator.num_processes)
        if processes != accelerator.num_processes:
            raise RunError(f"{checkpoint.path} was saved by {processes} process(es) and this launch has {accelerator.num_processes}; "
                           f"resume with {processes} (the sample order is the same, but the RNG and in-epoch state are per process)")
        problem = checkpoint.damage()
        if problem is None:
            try:
                accelerator.load_state(str(checkpoint.path))
                for name, average in (averages or {}).items():
                    average.load_state_dict(load_file(str(checkpoint.path / name), device=str(accelerator.device)))
                return checkpoint
            except Exception as exc:  # torch, safetensors and pickle each raise their own types
                problem = f"{checkpoint.path} could not be loaded ({type(exc).__name__}: {str(exc).splitlines()[0][:150] if str(exc) else ''})"
        accelerator.print(f"skipping a damaged checkpoint: {problem}; falling back to the one before")
    if candidates:
        raise RunError(f"no usable checkpoint in {run_dir / 'checkpoints'} (each one is damaged, see above); "
                       f"start a new run with another --output-dir")
    return None
