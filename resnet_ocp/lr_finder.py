"""LR range test (Smith 2015, "Cyclical Learning Rates", section 3.3) choosing One-Cycle's peak LR.

The test raises the LR every optimizer step from ``start_lr`` to ``end_lr`` (exponentially by
default) on training batches with the run's augmentation, precision, optimizer and process
layout, records the debiased exponential moving average of the loss, and stops once that
exceeds ``diverge_factor`` times its best. It runs before OneCycleLR exists (building
OneCycleLR overwrites the optimizer's LR and momentum) and leaves the model, optimizer, grad
scaler and RNG exactly as it found them.

Suggestion rules, on the smoothed curve without its first ``skip_start`` and last
``skip_end`` points and without non-finite losses:
- ``valley`` (default): fastai's rule: two thirds into the longest falling stretch of the curve;
- ``steepest``: the LR where the loss falls fastest against log(LR) (torch-lr-finder's rule);
- ``min10``: the LR of the lowest loss divided by 10 (the classic rule of thumb).
On real CIFAR-10 (docs/lr-range-test.md, "How the default was chosen") valley's LR gave 49.2% on a 4-epoch
proxy, min10's 47.5%, steepest's 17.5%: steepest picks the very start of the sweep, where the
untrained network's loss (4.5) falls fast at any LR.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from resnet_ocp.augment import epoch_params
from resnet_ocp.config import Config
from resnet_ocp.engine import TrainingParts, training_loss
from resnet_ocp.errors import UserError

RULES = ("steepest", "valley", "min10")
# First epoch number of the range test's shuffling and augmentation draws: far from the
# training epochs (1..epochs) so the sweep never previews a training epoch's exact draws.
FINDER_EPOCH = 1_000_000


class LRFinderError(UserError):
    """The range test could not suggest an LR; the message says why and what to do."""


@dataclass
class RangeTestResult:
    """The sweep: LRs tried, raw and smoothed losses, and the suggestion (None if there is none)."""

    lrs: list[float]
    losses: list[float]
    smoothed: list[float]
    suggested_lr: float | None
    rule: str
    message: str
    settings: dict = field(default_factory=dict)
    suggestions: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """The result as plain values, as ``lr_finder.json`` holds it."""
        return asdict(self)


def suggest(lrs: list[float], smoothed: list[float], rule: str, skip_start: int = 10, skip_end: int = 5) -> tuple[float | None, str]:
    """Apply a suggestion rule to a smoothed range-test curve.

    Args:
        lrs: LRs of the steps.
        smoothed: smoothed losses of the steps (may hold inf/nan after divergence).
        rule: ``steepest``, ``valley`` or ``min10``.
        skip_start: points ignored at the start (the EMA is still settling there).
        skip_end: points ignored at the end (the divergence itself).

    Returns:
        ``(lr, message)``; ``lr`` is None when the curve is too short or never falls.
    """
    lr = np.asarray(lrs, dtype=float)
    loss = np.asarray(smoothed, dtype=float)
    finite = np.flatnonzero(~np.isfinite(loss))
    end = finite[0] if len(finite) else len(loss)
    lr, loss = lr[skip_start:max(end - skip_end, skip_start)], loss[skip_start:max(end - skip_end, skip_start)]
    if len(loss) < 5:
        return None, (
            f"only {len(loss)} usable points (need 5): the sweep diverged too early or was too short; "
            "lower --lr-find-start or raise --lr-find-iters"
        )
    if loss.min() >= loss[0]:
        return None, "the loss never fell below its starting value; lower --lr-find-start"
    if rule == "steepest":
        i = int(np.argmin(np.gradient(loss, np.log(lr))))
        return float(lr[i]), f"steepest descent of the smoothed loss at step {skip_start + i}"
    if rule == "min10":
        i = int(np.argmin(loss))
        return float(lr[i] / 10), f"minimum smoothed loss at LR {lr[i]:.3g}, divided by 10"
    if rule == "valley":
        start, stop = _longest_fall(loss)
        i = start + (stop - start) * 2 // 3
        return float(lr[i]), f"two thirds into the longest falling stretch (steps {skip_start + start}-{skip_start + stop})"
    raise ValueError(f"unknown rule {rule!r}; choose one of {RULES}")


def _longest_fall(loss: np.ndarray) -> tuple[int, int]:
    """First and last index of the longest strictly falling subsequence of ``loss``: fastai's
    ``valley`` rule, an O(n^2) dynamic programme (n is at most a few hundred LR steps)."""
    n = len(loss)
    run, back = [1] * n, list(range(n))
    for i in range(1, n):
        for j in range(i):
            if loss[i] < loss[j] and run[i] < run[j] + 1:
                run[i], back[i] = run[j] + 1, j
    stop = start = int(np.argmax(run))
    while back[start] != start:
        start = back[start]
    return start, stop


def range_test(parts: TrainingParts, cfg: Config, *, beta: float = 0.98, diverge_factor: float = 4.0) -> RangeTestResult:
    """Sweep the LR over training batches and suggest a peak LR; restore all state afterwards.

    Every optimizer step sees one global batch, as in training (gradient accumulation and the
    process count included). The loss is averaged across processes before smoothing, so all
    processes stop at the same step and compute the same suggestion.

    Args:
        parts: the prepared training objects (no scheduler yet).
        cfg: the run configuration: ``lr_find_start``/``end``/``iters``/``mode``/``rule``, the
            seed, augmentation and loss (as in training) and ``progress``.
        beta: EMA factor of the loss smoothing.
        diverge_factor: stop when the smoothed loss exceeds this times the best.
    """
    from tqdm.auto import tqdm

    accelerator = parts.accelerator
    saved = _snapshot(accelerator, parts.model, parts.optimizer)
    params = epoch_params(len(parts.train_split.labels), cfg.seed, FINDER_EPOCH, cfg.crop_padding, cfg.cutout, cfg.flip).to(accelerator.device)
    batches = _endless(parts.train_loader, FINDER_EPOCH)
    lrs, losses, smoothed = [], [], []
    avg, best = 0.0, math.inf
    parts.model.train()
    bar = tqdm(total=cfg.lr_find_iters, desc="LR range test", disable=not (cfg.progress and accelerator.is_local_main_process), dynamic_ncols=True)
    try:
        for i in range(cfg.lr_find_iters):
            lrs.append(sweep_lr(cfg, i))
            losses.append(_step_at(parts, cfg, params, batches, lrs[-1]))
            avg = beta * avg + (1 - beta) * losses[-1]
            smoothed.append(avg / (1 - beta ** (i + 1)))
            bar.update(1)
            bar.set_postfix(lr=f"{lrs[-1]:.2e}", loss=f"{smoothed[-1]:.3f}")
            if not math.isfinite(smoothed[-1]) or smoothed[-1] > diverge_factor * best:
                break
            best = min(best, smoothed[-1])
    finally:
        bar.close()
        _restore(accelerator, parts.model, parts.optimizer, saved)
    suggestions = {r: suggest(lrs, smoothed, r)[0] for r in RULES}
    lr_value, message = suggest(lrs, smoothed, cfg.lr_find_rule)
    settings = {"start_lr": cfg.lr_find_start, "end_lr": cfg.lr_find_end, "num_iter": cfg.lr_find_iters, "mode": cfg.lr_find_mode, "beta": beta,
                "diverge_factor": diverge_factor, "steps_run": len(lrs), "processes": accelerator.num_processes}
    return RangeTestResult(lrs, losses, smoothed, lr_value, cfg.lr_find_rule, message, settings, suggestions)


def sweep_lr(cfg: Config, i: int) -> float:
    """The LR of the range test's step ``i`` (from 0): geometric or linear from ``lr_find_start``
    to ``lr_find_end`` over ``lr_find_iters`` steps.

    Args:
        cfg: the run configuration.
        i: the step.
    """
    start, end, frac = cfg.lr_find_start, cfg.lr_find_end, i / (cfg.lr_find_iters - 1)
    return start * (end / start) ** frac if cfg.lr_find_mode == "exp" else start + (end - start) * frac


def _endless(loader, first_epoch: int):
    """The loader's index batches, epoch after epoch from ``first_epoch``: a sweep may outlast an epoch."""
    epoch = first_epoch
    while True:
        loader.set_epoch(epoch)
        epoch += 1
        yield from loader


def _step_at(parts: TrainingParts, cfg: Config, params, batches, lr: float) -> float:
    """One optimizer step at ``lr`` over one global batch, as in training (gradient accumulation
    included); returns its loss averaged over processes, so every process sees the same value."""
    accelerator, optimizer = parts.accelerator, parts.optimizer
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
    step_loss = torch.zeros((), device=accelerator.device)
    for _ in range(accelerator.gradient_accumulation_steps):
        loss, _ = training_loss(parts.model, parts.train_split, params, next(batches), cfg)
        accelerator.backward(loss)  # divides by the accumulation steps itself
        step_loss += loss.detach() / accelerator.gradient_accumulation_steps
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return accelerator.reduce(step_loss, reduction="mean").item()


def _snapshot(accelerator, model, optimizer) -> dict:
    state = {
        "model": copy.deepcopy(model.state_dict()),
        "optimizer": copy.deepcopy(optimizer.state_dict()),
        "cpu_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "step": accelerator.step,
    }
    if accelerator.scaler is not None:
        state["scaler"] = copy.deepcopy(accelerator.scaler.state_dict())
    return state


def _restore(accelerator, model, optimizer, state: dict) -> None:
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    optimizer.zero_grad(set_to_none=True)
    torch.set_rng_state(state["cpu_rng"])
    if state["cuda_rng"] is not None:
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    if "scaler" in state:
        accelerator.scaler.load_state_dict(state["scaler"])
    accelerator.step = state["step"]


def agreed_range_test(parts: TrainingParts, cfg: Config) -> RangeTestResult:
    """Run the range test with the config's settings on every process and return one result
    that all processes share (the caller writes and draws it).

    Args:
        parts: the prepared training objects (no scheduler yet).
        cfg: the run configuration.
    """
    from accelerate.utils import broadcast_object_list, gather_object

    accelerator = parts.accelerator
    accelerator.print(
        f"LR range test: {cfg.lr_find_iters} steps from {cfg.lr_find_start:g} to {cfg.lr_find_end:g} ({cfg.lr_find_mode}, rule: {cfg.lr_find_rule})"
    )
    result = range_test(parts, cfg)
    # Recorded so a multi-process run shows that every process reached the same suggestion.
    result.settings["process_suggestions"] = gather_object([result.suggested_lr])
    # Identical by construction (losses are reduced before smoothing); broadcast anyway so a
    # float difference in one process can never split the group.
    shared = [result.suggested_lr]
    broadcast_object_list(shared)
    result.suggested_lr = shared[0]
    return result
