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
from resnet_ocp.schedule import momentum_of, samples_after

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
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> EpochPosition:
        return cls(**values)


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
    n_train = len(data.labels)
    params = epoch_params(n_train, cfg.seed, epoch, cfg.crop_padding, cfg.cutout, cfg.flip).to(accelerator.device)
    loader.set_epoch(epoch)
    begin = time.perf_counter()
    device, rank = accelerator.device, accelerator.process_index
    done = start.steps if start else 0
    loss_sum = torch.tensor(start.loss_sums[rank] if start else 0.0, device=device)
    correct = torch.tensor(int(start.corrects[rank]) if start else 0, device=device, dtype=torch.long)
    seen = torch.tensor(int(start.seens[rank]) if start else 0, device=device, dtype=torch.long)
    micro_losses: list[torch.Tensor] = []
    step_losses: list[torch.Tensor] = []
    applied: list[tuple[float, float]] = []
    skip = done * accelerator.gradient_accumulation_steps
    bar = tqdm(total=len(loader), initial=skip, disable=not (cfg.progress and accelerator.is_local_main_process), leave=True, dynamic_ncols=True)
    stopped = diverged = False
    for i, idx in enumerate(loader):
        if i < skip:  # trained before the stop; its draws are keyed by sample, so skipping is exact
            continue
        with accelerator.accumulate(model):
            loss, logits = training_loss(model, data, params, idx, cfg)
            y = data.labels[idx]
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                group = optimizer.param_groups[0]
                applied.append((group["lr"], momentum_of(group)))
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        detached = loss.detach()
        micro_losses.append(detached)
        loss_sum += detached * len(y)
        correct += (logits.argmax(1) == y).sum()
        seen += len(y)
        bar.update(1)
        if accelerator.sync_gradients:
            # One scheduler step per optimizer step, whatever the process count (see schedule.py).
            parts.scheduler.step()
            if parts.ema is not None:
                parts.ema.update_parameters(accelerator.unwrap_model(model))
            if parts.lookahead is not None:
                parts.lookahead.step(accelerator.unwrap_model(model), step_offset + done + len(step_losses) + 1)
            step_losses.append(torch.stack(micro_losses).mean())
            micro_losses = []
            steps = done + len(step_losses)
            if steps % cfg.log_every == 0 or steps * accelerator.gradient_accumulation_steps >= len(loader):
                bar.set_description(
                    f"Train: Loss={detached.item():.4f} Batch_id={steps - 1} "
                    f"Accuracy={100 * correct.item() / max(seen.item(), 1):.2f} LR={applied[-1][0]:.6f}"
                )
            if parts.stop is not None:
                stopped, diverged = parts.stop.check(step_losses[-1])
                if stopped or diverged:
                    break
    bar.close()
    # One gather per epoch: per-step losses averaged over processes.
    losses = accelerator.gather(torch.stack(step_losses)[None]).mean(0).tolist() if step_losses else []
    seconds = time.perf_counter() - begin + (start.seconds if start else 0.0)
    rows = (start.rows if start else []) + [
        {"step": step_offset + done + k + 1, "epoch": epoch, "samples": samples_after(done + k + 1, epoch, n_train, cfg.batch_size),
         "lr": lr, "momentum": momentum, "loss": loss_value}
        for k, ((lr, momentum), loss_value) in enumerate(zip(applied, losses))
    ]
    if diverged:
        return {"diverged": True, "rows": rows}
    if stopped:
        sums = accelerator.gather(torch.stack([loss_sum, correct.float(), seen.float()])[None]).tolist()
        position = EpochPosition(done + len(step_losses), rows, *(list(col) for col in zip(*sums)), seconds)
        return {"stopped": True, "position": position}
    totals = accelerator.reduce(torch.stack([loss_sum, correct.float(), seen.float()]), reduction="sum").tolist()
    return {
        "loss": totals[0] / totals[2],
        "accuracy": totals[1] / totals[2],
        "rows": rows,
        "lr": rows[-1]["lr"],
        "seconds": seconds,
        "images_per_second": n_train / seconds,
    }


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


