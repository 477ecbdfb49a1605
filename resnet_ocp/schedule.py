"""The optimizer and the One-Cycle schedule, sized from samples so every process count agrees.

The schedule is sized as ``epochs * ceil(n_train / batch_size)`` optimizer steps, from the
dataset and the *global* batch, never from a prepared loader's length. It is stepped exactly
once per optimizer step (``step_scheduler_with_optimizer=False`` in the Accelerator):
Accelerate's default steps it once per process per call, which is right for schedules sized
from the unsharded loader but, combined with a loader-sized OneCycleLR on N processes, ends
the cycle after 1/N of training and then freezes the LR without an error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from resnet_ocp.config import Config


def steps_per_epoch(n_train: int, batch_size: int) -> int:
    """Optimizer steps in one epoch over ``n_train`` samples with global batch ``batch_size`` (last batch kept).

    Args:
        n_train: training samples per epoch.
        batch_size: the global batch (all processes and accumulation steps together).
    """
    return math.ceil(n_train / batch_size)


def samples_after(step_in_epoch: int, epoch: int, n_train: int, batch_size: int) -> int:
    """Samples seen after ``step_in_epoch`` (1-based) steps of ``epoch`` (1-based).

    Args:
        step_in_epoch: optimizer steps taken in the epoch.
        epoch: the epoch, from 1.
        n_train: training samples per epoch.
        batch_size: the global batch.
    """
    return (epoch - 1) * n_train + min(step_in_epoch * batch_size, n_train)


@dataclass(frozen=True)
class MicroBatches:
    """Which samples of one process's micro-batch belong to the epoch, and how much its loss weighs.

    With several processes Accelerate gives every process a full last batch (``even_batches``):
    micro-batch ``i`` of process ``p`` is the sampler's batch ``i * processes + p``, and a batch
    short of ``per_process`` (or past the end) is filled from the epoch's first samples, which
    the epoch has already trained on; and ``Accelerator.backward`` divides every loss by
    ``grad_accum``, also in the shorter last accumulation window. A micro-batch trains on its
    first ``real`` samples only, and its mean loss times ``factor`` makes each optimizer step's
    gradient the mean over the samples of that step, as one process with the whole batch has it.

    Args:
        n_train: training samples per epoch.
        processes: processes training together.
        per_process: micro-batch size of one process.
        grad_accum: micro-batches per optimizer step.
    """

    n_train: int
    processes: int
    per_process: int
    grad_accum: int

    def real(self, micro: int, rank: int) -> int:
        """Samples of the epoch at the start of micro-batch ``micro`` (from 0) of process ``rank``."""
        return max(0, min(self.per_process, self.n_train - (micro * self.processes + rank) * self.per_process))

    def step_samples(self, micro: int) -> int:
        """Samples of the epoch in the optimizer step that holds micro-batch ``micro``, all processes together."""
        rounds = self.processes * self.per_process
        first = micro // self.grad_accum * self.grad_accum
        last = min(first + self.grad_accum, math.ceil(self.n_train / rounds))
        return sum(min(rounds, self.n_train - r * rounds) for r in range(first, last))

    def factor(self, micro: int, rank: int) -> float:
        """The weight on the micro-batch's mean loss: 1.0 wherever batches are full."""
        return self.processes * self.grad_accum * self.real(micro, rank) / self.step_samples(micro)


def param_groups(model: torch.nn.Module, cfg: Config) -> list[dict]:
    """The trainable parameters in optimizer groups, each with its ``lr_scale`` (times the
    schedule's LR). With ``--bn-bias-lr-scale`` k != 1 the batch-norm biases form a second group
    at k x the LR and 1/k x the weight decay (Page's "Bag of tricks": k = 64, which lets the
    biases keep pace when the normalised layers' effective LR is large); otherwise one group.

    Args:
        model: the network (unwrapped).
        cfg: run configuration (weight decay, bias LR scale).
    """
    trainable = [p for p in model.parameters() if p.requires_grad]
    if cfg.bn_bias_lr_scale == 1:
        return [{"params": trainable, "lr_scale": 1.0}]
    biases = {id(m.bias) for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d) and m.bias is not None}
    k = cfg.bn_bias_lr_scale
    return [{"params": [p for p in trainable if id(p) not in biases], "lr_scale": 1.0},
            {"params": [p for p in trainable if id(p) in biases], "lr_scale": k, "weight_decay": cfg.weight_decay / k}]


def build_optimizer(model: torch.nn.Module, cfg: Config, lr: float | None = None) -> torch.optim.Optimizer:
    """The run's optimizer with its momentum (Adam's beta1 or SGD's momentum) at the top of its cycle.

    ``adam`` (the reference) adds weight decay to the gradient (L2); ``adamw`` decouples it
    (Loshchilov & Hutter); ``sgd`` is Nesterov SGD as in Page's "How to train your ResNet".
    Frozen parameters are left out; groups as ``param_groups``.

    Args:
        model: the network.
        cfg: run configuration (optimizer, weight decay, momentum range, bias LR scale).
        lr: initial LR (the One-Cycle scheduler overwrites it when built).
    """
    lr = lr or cfg.lr_find_start
    groups = param_groups(model, cfg)
    for group in groups:
        group["lr"] = lr * group["lr_scale"]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum_max, nesterov=True, weight_decay=cfg.weight_decay)
    kind = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return kind(groups, lr=lr, betas=(cfg.momentum_max, 0.999), weight_decay=cfg.weight_decay)


def momentum_of(group: dict) -> float:
    """The momentum a param group applies: Adam's beta1 or SGD's momentum.

    Args:
        group: one of an optimizer's ``param_groups``.
    """
    return group["betas"][0] if "betas" in group else group["momentum"]


def build_one_cycle(optimizer: torch.optim.Optimizer, cfg: Config, max_lr: float, n_train: int) -> torch.optim.lr_scheduler.OneCycleLR:
    """Two-phase linear One-Cycle peaking at the end of ``cfg.peak_epoch``.

    Build it after any LR range test: construction overwrites the optimizer's LR and momentum.

    Args:
        optimizer: the run's (unwrapped) optimizer.
        cfg: run configuration.
        max_lr: the peak LR (each group's is this times its ``lr_scale``).
        n_train: training samples per epoch.
    """
    return torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=[max_lr * group.get("lr_scale", 1.0) for group in optimizer.param_groups],
        total_steps=cfg.epochs * steps_per_epoch(n_train, cfg.batch_size),
        pct_start=cfg.pct_start,
        anneal_strategy="linear",
        three_phase=False,
        div_factor=cfg.div_factor,
        final_div_factor=cfg.final_div_factor,
        cycle_momentum=cfg.cycle_momentum,
        base_momentum=cfg.momentum_min,
        max_momentum=cfg.momentum_max,
    )


def schedule_trace(cfg: Config, max_lr: float, n_train: int) -> list[tuple[float, float]]:
    """The (lr, momentum) that each optimizer step of a whole run applies, computed on a dummy
    parameter: the reference that recorded ``steps.csv`` columns are tested against.

    Args:
        cfg: run configuration (optimizer, epochs, global batch, One-Cycle settings).
        max_lr: the peak LR.
        n_train: training samples per epoch.
    """
    opt = build_optimizer(torch.nn.Linear(1, 1), cfg)
    sched = build_one_cycle(opt, cfg, max_lr, n_train)
    trace = []
    for _ in range(sched.total_steps):
        group = opt.param_groups[0]
        trace.append((group["lr"], momentum_of(group)))
        opt.step()
        sched.step()
    return trace
