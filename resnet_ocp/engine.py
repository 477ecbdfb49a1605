"""One training epoch and the run's test pass over the prepared parts, returning dicts.

The hot loop never synchronises host and device except to refresh the progress bar every
``log_every`` steps: losses and correct counts accumulate on the device and are read once
per epoch.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from tqdm.auto import tqdm

from resnet_ocp.augment import AugmentParams, augment_batch, epoch_params
from resnet_ocp.checkpoint import EMA_FILE, LOOKAHEAD_FILE
from resnet_ocp.config import Config
from resnet_ocp.inference import DeviceSplit, evaluate, model_inputs, recompute_bn_stats
from resnet_ocp.lookahead import Lookahead
from resnet_ocp.preemption import StopRequest
from resnet_ocp.schedule import MicroBatches, momentum_of, samples_after

# Training images whose statistics the EMA model's batch norms get before each evaluation: 512 to
# 4,096 all gave 71.3-71.7% at epoch 2 of the proxy (recompute_bn_stats); 1,024 forward passes are 0.7% of an epoch's FLOPs.
EMA_BN_IMAGES = 1024


def training_loss(model: torch.nn.Module, data: DeviceSplit, params: AugmentParams, idx: torch.Tensor,
                  cfg: Config) -> tuple[torch.Tensor, torch.Tensor]:
    """Augment the samples ``idx``, run the model, and return ``(loss, logits)``; shared by
    training and the LR range test so both see exactly the same batches and loss.

    Args:
        model: the (prepared) network in train mode.
        data: the training split on the device.
        params: the epoch's augmentation draws for every training sample.
        idx: sample indices of the micro-batch (on the device).
        cfg: the run configuration (crop padding, Cutout, label smoothing, memory format).
    """
    x = augment_batch(data.images[idx], params[idx], data.mean, data.std, cfg.crop_padding, cfg.cutout, cfg.crop_pad_mode)
    logits = model(model_inputs(x, cfg.channels_last))
    return F.cross_entropy(logits.float(), data.labels[idx], label_smoothing=cfg.label_smoothing), logits


@dataclass
class TrainingParts:
    """The prepared objects of one run's training loop.

    ``scheduler`` is None until the LR range test (if any) is over: building OneCycleLR
    overwrites the optimizer's LR and momentum. ``ema`` is an ``AveragedModel`` or None,
    ``lookahead`` a ``lookahead.Lookahead`` or None;
    ``stop`` a ``preemption.StopRequest`` checked after every optimizer step, or None.
    """

    accelerator: Accelerator
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    train_loader: torch.utils.data.DataLoader
    test_loader: torch.utils.data.DataLoader
    train_split: DeviceSplit
    test_split: DeviceSplit
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
    ema: torch.optim.swa_utils.AveragedModel | None = None
    lookahead: Lookahead | None = None
    stop: StopRequest | None = None

    @property
    def averages(self) -> dict:
        """The weight averages a checkpoint carries, by file name (see ``checkpoint.save_checkpoint``)."""
        return {name: a for name, a in ((EMA_FILE, self.ema), (LOOKAHEAD_FILE, self.lookahead)) if a is not None}

    @property
    def evaluated_model(self) -> torch.nn.Module:
        """The network that is tested and saved: the EMA when there is one, else the live model."""
        return self.ema.module if self.ema is not None else self.model


@dataclass
class EpochPosition:
    """How far a stopped epoch got: its optimizer steps, their steps.csv rows, each process's
    running sums behind the epoch's train loss and accuracy, and the seconds it trained."""

    steps: int
    rows: list[dict]
    loss_sums: list[float]
    corrects: list[float]
    seens: list[float]
    seconds: float

    def to_dict(self) -> dict:
        """The position as plain values, as a checkpoint's ``position.json`` holds it."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> EpochPosition:
        """The position that ``to_dict`` wrote.

        Args:
            values: a ``to_dict`` result (read back from ``position.json``).
        """
        return cls(**values)


class EpochLog:
    """What one process records while an epoch trains, on the device until the epoch ends: the
    (LR, momentum) each optimizer step applied, each step's loss (the mean over its micro-batches)
    and the running sums behind the epoch's train loss and accuracy.

    Args:
        start: where a stopped epoch is continued from, or None for a fresh epoch.
        rank: this process's index (its own running sums are taken from ``start``).
        device: where the sums live.
    """

    def __init__(self, start: EpochPosition | None, rank: int, device: torch.device) -> None:
        self.start = start
        self.done = start.steps if start else 0
        self.loss_sum = torch.tensor(start.loss_sums[rank] if start else 0.0, device=device)
        self.correct = torch.tensor(int(start.corrects[rank]) if start else 0, device=device, dtype=torch.long)
        self.seen = torch.tensor(int(start.seens[rank]) if start else 0, device=device, dtype=torch.long)
        self.applied: list[tuple[float, float]] = []
        self.step_losses: list[torch.Tensor] = []
        self.micro_losses: list[torch.Tensor] = []
        self.stopped = self.diverged = False

    @property
    def steps(self) -> int:
        """Optimizer steps of the epoch so far, those before a stop included."""
        return self.done + len(self.step_losses)

    def add_micro_batch(self, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """Count one micro-batch's detached loss and correct predictions (no host sync)."""
        self.micro_losses.append(loss)
        self.loss_sum += loss * len(labels)
        self.correct += (logits.argmax(1) == labels).sum()
        self.seen += len(labels)

    def end_step(self) -> None:
        """Close an optimizer step: its loss is the mean of its micro-batches' losses."""
        self.step_losses.append(torch.stack(self.micro_losses).mean())
        self.micro_losses = []

    def check(self, stop: StopRequest | None) -> bool:
        """Ask the stop request about the step just closed; True when the epoch ends here."""
        if stop is not None:
            self.stopped, self.diverged = stop.check(self.step_losses[-1])
        return self.stopped or self.diverged

    def description(self) -> str:
        """The progress bar's line; reads the device, so it is called every ``log_every`` steps."""
        return (f"Train: Loss={self.step_losses[-1].item():.4f} Batch_id={self.steps - 1} "
                f"Accuracy={100 * self.correct.item() / max(self.seen.item(), 1):.2f} LR={self.applied[-1][0]:.6f}")

    def result(self, accelerator: Accelerator, cfg: Config, epoch: int, step_offset: int, n_train: int, begin: float) -> dict:
        """``train_one_epoch``'s result (see there), its seconds counted from ``begin``
        (``time.perf_counter``); gathers over processes, so every process calls it.

        Args:
            accelerator: the run's Accelerator.
            cfg: the run configuration (its global batch sizes the rows' sample counts).
            epoch: 1-based epoch number.
            step_offset: optimizer steps taken before this epoch.
            n_train: training samples per epoch.
            begin: when this session began training the epoch, in ``time.perf_counter`` seconds.
        """
        # One gather per epoch: per-step losses averaged over processes.
        losses = accelerator.gather(torch.stack(self.step_losses)[None]).mean(0).tolist() if self.step_losses else []
        seconds = time.perf_counter() - begin + (self.start.seconds if self.start else 0.0)
        rows = (self.start.rows if self.start else []) + [
            {"step": step_offset + self.done + k + 1, "epoch": epoch,
             "samples": samples_after(self.done + k + 1, epoch, n_train, cfg.batch_size),
             "lr": lr, "momentum": momentum, "loss": loss_value}
            for k, ((lr, momentum), loss_value) in enumerate(zip(self.applied, losses))
        ]
        if self.diverged:
            return {"diverged": True, "rows": rows}
        sums = torch.stack([self.loss_sum, self.correct.float(), self.seen.float()])
        if self.stopped:
            per_process = accelerator.gather(sums[None]).tolist()
            position = EpochPosition(self.steps, rows, *(list(col) for col in zip(*per_process)), seconds)
            return {"stopped": True, "position": position}
        loss_sum, correct, seen = accelerator.reduce(sums, reduction="sum").tolist()
        return {"loss": loss_sum / seen, "accuracy": correct / seen, "samples": int(seen), "rows": rows, "lr": rows[-1]["lr"],
                "seconds": seconds, "images_per_second": n_train / seconds}


def after_optimizer_step(parts: TrainingParts, step: int) -> None:
    """Advance what moves once per optimizer step, whatever the process count (see schedule.py):
    the One-Cycle schedule, the EMA and Lookahead.

    Args:
        parts: the prepared training objects (their ``scheduler`` built).
        step: the run's optimizer step just taken, counted from 1 over all epochs.
    """
    parts.scheduler.step()
    if parts.ema is not None:
        parts.ema.update_parameters(parts.accelerator.unwrap_model(parts.model))
    if parts.lookahead is not None:
        parts.lookahead.step(parts.accelerator.unwrap_model(parts.model), step)


def train_one_epoch(parts: TrainingParts, cfg: Config, epoch: int, step_offset: int, start: EpochPosition | None = None) -> dict:
    """Train for one epoch (or its rest), stepping the One-Cycle schedule once per optimizer step.

    Args:
        parts: the prepared model, optimizer, scheduler, loader and training split (and EMA,
            updated after every optimizer step, and the stop request, checked after it); the
            Accelerator's gradient accumulation applies.
        cfg: the run configuration (global batch, augmentation, loss, progress settings).
        epoch: 1-based epoch number; the augmentation draws are those of ``(cfg.seed, epoch)``.
        step_offset: optimizer steps taken before this epoch.
        start: where a stopped epoch is continued from (its batches are skipped, not replayed).

    Returns:
        ``loss``, ``accuracy`` (fraction), ``rows`` (one dict per optimizer step of the epoch
        for steps.csv), ``lr`` (last LR applied), ``seconds``, ``images_per_second``; or, when
        a stop was requested, ``stopped`` and the ``position`` reached; or, when a process's
        loss was not finite, ``diverged`` and the ``rows`` up to that step.
    """
    accelerator, model, optimizer, loader, data = parts.accelerator, parts.model, parts.optimizer, parts.train_loader, parts.train_split
    model.train()
    params = epoch_params(len(data.labels), cfg.seed, epoch, cfg.crop_padding, cfg.cutout, cfg.flip).to(accelerator.device)
    loader.set_epoch(epoch)
    begin = time.perf_counter()
    log = EpochLog(start, accelerator.process_index, accelerator.device)
    skip = log.done * accelerator.gradient_accumulation_steps
    bar = tqdm(total=len(loader), initial=skip, disable=not (cfg.progress and accelerator.is_local_main_process), leave=True, dynamic_ncols=True)
    batches = MicroBatches(len(data.labels), accelerator.num_processes, cfg.batch_size // (accelerator.num_processes * cfg.grad_accum),
                           cfg.grad_accum)
    for i, idx in enumerate(loader):
        if i < skip:  # trained before the stop; its draws are keyed by sample, so skipping is exact
            continue
        real, factor = batches.real(i, accelerator.process_index), batches.factor(i, accelerator.process_index)
        idx = idx[:real] if real else idx  # all padding (3+ processes): it trains at weight 0, for DDP's collective
        with accelerator.accumulate(model):
            loss, logits = training_loss(model, data, params, idx, cfg)
            accelerator.backward(loss if factor == 1 else loss * factor)
            if accelerator.sync_gradients:
                group = optimizer.param_groups[0]
                log.applied.append((group["lr"], momentum_of(group)))
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        log.add_micro_batch(loss.detach(), logits[:real], data.labels[idx[:real]])
        bar.update(1)
        if accelerator.sync_gradients:
            log.end_step()
            after_optimizer_step(parts, step_offset + log.steps)
            if log.steps % cfg.log_every == 0 or log.steps * accelerator.gradient_accumulation_steps >= len(loader):
                bar.set_description(log.description())
            if log.check(parts.stop):
                break
    bar.close()
    return log.result(accelerator, cfg, epoch, step_offset, len(data.labels), begin)


def evaluate_parts(parts: TrainingParts, cfg: Config, metric) -> tuple[dict, float]:
    """Evaluate the model that the run tests (the EMA, with its batch-norm statistics
    recomputed first, or the live model) on the test split, under the run's autocast.

    Args:
        parts: the prepared training objects.
        cfg: the resolved configuration (TTA, memory format, evaluation batch).
        metric: the ``evaluate`` accuracy metric.

    Returns:
        ``(inference.evaluate's result, seconds)``.
    """
    start = time.perf_counter()
    with parts.accelerator.autocast():
        if parts.ema is not None:
            recompute_bn_stats(parts.ema.module, parts.train_split, EMA_BN_IMAGES, cfg.eval_batch_size, cfg.channels_last)
        test = evaluate(parts.accelerator, parts.evaluated_model, parts.test_loader, parts.test_split, metric,
                        channels_last=cfg.channels_last, tta=cfg.tta, tta_shift=cfg.tta_shift)
    return test, time.perf_counter() - start


