"""Stopping early: on request (SIGTERM or SIGUSR1 end the run at the next optimizer step,
resumably), or when the loss stops being a finite number (the run ends with what was good).

Clusters end jobs with a signal and a short grace period (SLURM: ``--signal=USR1@<seconds>``
before the time limit, SIGTERM then SIGKILL after ``KillWait`` on preemption), while an epoch
on a CPU takes minutes. The handler only notes the signal; after every optimizer step all
processes reduce the notes (``StopRequest.check``), so they stop at the same step whichever of
them the signal reached first. The trainer then saves a checkpoint inside the epoch and exits
with ``PREEMPTED_EXIT``; ``--resume`` continues from that step.
"""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import torch

from resnet_ocp.atomic import write_json
from resnet_ocp.checkpoint import latest_checkpoint, save_checkpoint
from resnet_ocp.errors import Preempted, UserError
from resnet_ocp.rundir import write_steps

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
# Written into the run directory on such an exit (and removed on resume): launchers such as torchrun
# report their own status, not the worker's, so a job script reads this file instead.
PREEMPTED_FILE = "preempted.json"


class StopRequest:
    """While active, SIGTERM and SIGUSR1 ask the run to stop at the next optimizer step.

    Args:
        accelerator: the run's Accelerator (its trigger carries the request to every process).
    """

    def __init__(self, accelerator) -> None:
        self.accelerator = accelerator
        self.signal: int | None = None
        self.received_at: float | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopRequest:
        # Python runs signal handlers in the main thread only; elsewhere (a notebook launcher's
        # worker thread) the run simply cannot be stopped by a signal.
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in STOP_SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}

    def _handle(self, signum: int, _frame) -> None:
        if self.signal is None:
            self.signal, self.received_at = signum, time.monotonic()

    def check(self, step_loss: torch.Tensor) -> tuple[bool, bool]:
        """After an optimizer step: whether any process was asked to stop, and whether any
        process's loss is not finite. A collective (every process calls it at the same step)
        and the loop's one host sync per step: both answers travel in one reduction.

        Args:
            step_loss: this process's loss of the step (on the device).
        """
        flags = torch.stack([torch.tensor(float(self.signal is not None), device=step_loss.device),
                             (~torch.isfinite(step_loss.detach().float())).float()])
        stop, nonfinite = self.accelerator.reduce(flags, reduction="sum").tolist()
        return stop > 0, nonfinite > 0

    def describe(self) -> str:
        """The signal's name, or "another process's signal" where it reached only a sibling."""
        return signal.Signals(self.signal).name if self.signal is not None else "another process's signal"


def stop_inside_epoch(parts, cfg, epoch: int, position, finished_rows: list[dict], run_dir: Path) -> None:
    """Checkpoint a run stopped by a signal inside ``epoch``, say so in one line, and raise ``Preempted``.

    Args:
        parts: the prepared training objects (their ``stop`` holds the signal).
        cfg: the resolved configuration.
        epoch: the epoch in progress.
        position: how far it got (``engine.train_one_epoch``'s result).
        finished_rows: steps.csv rows of the finished epochs.
        run_dir: the run directory.
    """
    accelerator = parts.accelerator
    save_checkpoint(accelerator, run_dir, epoch, cfg.keep_checkpoints, step=position.steps, position=position.to_dict(), averages=parts.averages)
    waited = time.monotonic() - parts.stop.received_at if parts.stop.received_at is not None else None
    if accelerator.is_main_process:
        write_steps(run_dir / "steps.csv", finished_rows + position.rows)
        write_json(run_dir / PREEMPTED_FILE, {"signal": parts.stop.describe(), "epoch": epoch, "step_in_epoch": position.steps,
                                              "seconds_from_signal_to_checkpoint": waited})
    after = f" {waited:.1f} s after the signal" if waited is not None else ""
    accelerator.print(f"preempted by {parts.stop.describe()} inside epoch {epoch} after its step {position.steps}: checkpoint saved{after}; "
                      f"continue with --resume {run_dir}")
    accelerator.end_training()
    raise Preempted(f"{run_dir} stopped inside epoch {epoch}")


class TrainingDiverged(UserError):
    """The loss stopped being a finite number; the message says where and what to change."""


def stop_diverged(accelerator, run_dir: Path, rows: list[dict]) -> None:
    """End a run whose loss became NaN or infinite: keep steps.csv up to that step and the last
    good checkpoint (nothing is saved from the broken weights) and raise ``TrainingDiverged``.

    Args:
        accelerator: the run's Accelerator.
        run_dir: the run directory.
        rows: steps.csv rows up to and including the step whose loss was not finite.
    """
    if accelerator.is_main_process:
        write_steps(run_dir / "steps.csv", rows)
    last = latest_checkpoint(run_dir)
    kept = f"the last good checkpoint is {last.path}" if last else "no checkpoint was taken yet"
    bad = rows[-1]
    accelerator.end_training()
    raise TrainingDiverged(f"the training loss became {bad['loss']} at step {bad['step']} (epoch {bad['epoch']}) with LR {bad['lr']:.4g}; "
                           f"{kept}; start a new run with a lower --max-lr")
