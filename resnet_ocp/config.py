"""The run configuration: one frozen dataclass whose defaults are the mission recipe.

Every field is a command-line option (see ``cli.build_parser``); derived values are
properties so they can never disagree with the fields they come from.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from resnet_ocp.errors import UserError

# Fields that may differ between an interrupted run and its resumption.
RESUME_FREE_FIELDS = ("resume", "stop_after_epoch", "progress", "process_group_timeout")

# Old names of renamed fields, still accepted in config.json files and as flags.
RENAMED_FIELDS = {"cycle_beta1": "cycle_momentum", "beta1_max": "momentum_max", "beta1_min": "momentum_min"}

# lr_finder.suggest drops the first 10 and last 5 points of the curve and needs 5 more.
MIN_LR_FIND_ITERS = 20

Optimizer = Literal["adam", "adamw", "sgd"]
SweepMode = Literal["exp", "linear"]
SuggestionRule = Literal["valley", "steepest", "min10"]
Activation = Literal["relu", "celu"]
PadMode = Literal["zero", "reflect"]

# Page's SGD settings ("How to train your ResNet"): Nesterov SGD at peak LR 0.4, momentum 0.9 held
# constant, weight decay 5e-4 and his 0.125 logit scale; both SGD presets use them with flip TTA.
_PAGE_SGD: dict[str, Any] = {"optimizer": "sgd", "max_lr": 0.4, "weight_decay": 5e-4, "cycle_momentum": False,
                             "momentum_max": 0.9, "logit_scale": 0.125, "tta": True}

# Named recipes: field values applied over the defaults, under any explicitly given option
# (``--preset fast --epochs 10`` trains 10 epochs). Each value here was measured: docs/results.md
# has the runs and docs/ablations.md the ablation table behind them.
PRESETS: dict[str, dict[str, Any]] = {
    "reference": {},
    # 92.11% after 8 epochs (results/fast-8ep): Page's SGD with label smoothing; no Cutout, because
    # at 8 epochs the network underfits (with Cutout: 91.59%, augmented train accuracy level with
    # test accuracy).
    "fast": {**_PAGE_SGD, "epochs": 8, "peak_epoch": 1.667, "label_smoothing": 0.2, "cutout": 0},
    # 94.26% after 24 epochs (results/sgd-24ep; reference 93.05%): Page's 24-epoch recipe, his SGD
    # over the reference schedule and augmentation, no label smoothing.
    "sgd24": _PAGE_SGD,
    # 94.04% after 10 epochs, median of seeds 0-2 (94.02-94.14, results/fast10-seed0..2; 94% first at epoch 10): Page's final
    # "Bag of tricks" recipe on this network. His LR 1.0/512 per example on a summed loss is 1.0
    # on our mean loss, his weight decay 5e-4 x 512 is 5e-4 here, his classifier x 1/16 is logit
    # scale 0.0625; CELU alpha 0.3 with batch-norm weights frozen at 1 is his alpha 0.075 with
    # weights at 1/4 (CELU(kx; k alpha) = k CELU(x; alpha)).
    "fast10": {**_PAGE_SGD, "epochs": 10, "peak_epoch": 2.0, "max_lr": 1.0, "logit_scale": 0.0625, "label_smoothing": 0.2,
               "cutout": 0, "crop_pad_mode": "reflect", "whiten": True, "ghost_batch": 32, "activation": "celu",
               "celu_alpha": 0.3, "bn_weight_freeze": True, "bn_bias_lr_scale": 64.0, "ema": 0.99},
}
# fast10 squeezed into 5 epochs, peak at the end of epoch 1: 90% by epoch 5 on each of seeds 0-2
# (results/fast5-seed0..2); the fast preset at 5 epochs reached it with one seed of two.
PRESETS["fast5"] = {**PRESETS["fast10"], "epochs": 5, "peak_epoch": 1.0}


class ConfigError(UserError, ValueError):
    """A configuration value is wrong; the message is one line saying how to fix it."""


@dataclass(frozen=True)
class Config:
    """All settings of one training run, in the recipe's own units.

    Defaults reproduce the reference recipe: batch 512, Adam, One-Cycle over 24 epochs
    peaking at epoch 5, linear annealing, no annihilation phase, RandomCrop(32, pad 4)
    + horizontal flip + Cutout 8x8.
    """

    data: str = field(default="uoft-cs/cifar10", metadata={"help": "Hub dataset id, parquet directory or save_to_disk directory"})
    output_dir: str | None = field(default=None, metadata={"help": "run directory (default runs/<timestamp>)"})
    resume: str | None = field(default=None, metadata={"help": "continue the interrupted run in this run directory"})
    epochs: int = field(default=24, metadata={"help": "length of the One-Cycle schedule in epochs"})
    peak_epoch: float = field(default=5.0, metadata={"help": "epoch at whose end the LR peaks"})
    stop_after_epoch: int | None = field(default=None, metadata={"help": "stop (resumably) after this epoch; the schedule still spans --epochs"})
    batch_size: int = field(default=512, metadata={"help": "global batch size per optimizer step, over all processes"})
    grad_accum: int = field(default=1, metadata={"help": "gradient accumulation steps per optimizer step"})
    optimizer: Optimizer = field(default="adam", metadata={"help": "adam (reference, L2 decay), adamw (decoupled decay) or sgd (Nesterov)"})
    max_lr: float | None = field(default=None, metadata={"help": "peak LR; if omitted, an LR range test picks it"})
    div_factor: float = field(default=100.0, metadata={"help": "initial LR = max_lr / div_factor"})
    final_div_factor: float = field(default=100.0, metadata={"help": "final LR = initial LR / final_div_factor"})
    cycle_momentum: bool = field(default=True, metadata={"help": "cycle the momentum (Adam's beta1, SGD's momentum) inversely to the LR"})
    momentum_max: float = field(default=0.95, metadata={"help": "momentum (Adam's beta1, SGD's momentum) at the start and end of the cycle"})
    momentum_min: float = field(default=0.85, metadata={"help": "momentum (Adam's beta1, SGD's momentum) at the LR peak"})
    weight_decay: float = field(default=0.0, metadata={"help": "Adam L2 weight decay"})
    label_smoothing: float = field(default=0.0, metadata={"help": "cross-entropy label smoothing"})
    crop_padding: int = field(default=4, metadata={"help": "zero padding before the random 32x32 crop"})
    crop_pad_mode: PadMode = field(default="zero", metadata={"help": "padding of the random crop: zero (torchvision's RandomCrop) or "
                                                                   "reflect (Page's and airbench's)"})
    flip: bool = field(default=True, metadata={"help": "random horizontal flip"})
    cutout: int = field(default=8, metadata={"help": "side of the Cutout square (0 disables it)"})
    tta: bool = field(default=False, metadata={"help": "flip test-time augmentation: average the logits of each test image and its mirror"})
    tta_shift: int = field(default=0, metadata={"help": "with --tta, also average over the image shifted by this many pixels "
                                                        "diagonally both ways (airbench: 1; 6 forward passes instead of 2)"})
    ema: float = field(default=0.0, metadata={"help": "decay of a per-step weight EMA used for evaluation and the final weights (0: off)"})
    bn_momentum: float = field(default=0.1, metadata={"help": "batch-norm running-statistics momentum (PyTorch convention)"})
    logit_scale: float = field(default=1.0, metadata={"help": "constant times the FC output (Page's ResNet: 0.125, which SGD's large LRs need)"})
    activation: Activation = field(default="relu", metadata={"help": "activation after every batch norm: relu, or celu (Page's smoothed ReLU)"})
    celu_alpha: float = field(default=0.075, metadata={"help": "CELU's alpha (Page: 0.075)"})
    ghost_batch: int = field(default=0, metadata={"help": "batch norm normalises training batches in sub-batches of this many images "
                                                          "(Page: 32; 0: the whole per-process batch)"})
    whiten: bool = field(default=False, metadata={"help": "fixed 3x3 patch-whitening convolution (3 -> 27 channels, fitted on the training "
                                                         "images) ahead of a 1x1 prep convolution; same 6,573,130 trainable parameters"})
    bn_weight_freeze: bool = field(default=False, metadata={"help": "batch-norm weights stay at 1, untrained: 2,240 fewer trainable "
                                                                   "parameters (6,570,890); the biases still train"})
    bn_bias_lr_scale: float = field(default=1.0, metadata={"help": "batch-norm biases train at this times the LR and 1/this times the "
                                                                  "weight decay (Page: 64)"})
    lookahead: bool = field(default=False, metadata={"help": "airbench's Lookahead: every 5 steps the weights move to a slow average "
                                                            "whose weight grows as (step/total)^3; the last step ends on it"})
    width: int = field(default=64, metadata={"help": "channels of the prep layer (64 = the 6,573,130-parameter network)"})
    channels_last: bool = field(default=True, metadata={"help": "channels_last memory format (faster convolutions)"})
    eval_batch_size: int = field(default=1024, metadata={"help": "per-process batch size for evaluation"})
    train_samples: int | None = field(default=None, metadata={"help": "class-balanced training subset of this size"})
    test_samples: int | None = field(default=None, metadata={"help": "class-balanced test subset of this size"})
    lr_find_iters: int = field(default=100, metadata={"help": f"steps of the LR range test (at least {MIN_LR_FIND_ITERS})"})
    lr_find_start: float = field(default=1e-5, metadata={"help": "first LR of the range test"})
    lr_find_end: float = field(default=1.0, metadata={"help": "last LR of the range test"})
    lr_find_mode: SweepMode = field(default="exp", metadata={"help": "LR sweep: exp (geometric steps) or linear"})
    lr_find_rule: SuggestionRule = field(default="valley", metadata={"help": "suggestion rule: valley (chosen on real data), steepest or min10"})
    lr_find_only: bool = field(default=False, metadata={"help": "run the LR range test, write its files and stop"})
    process_group_timeout: int = field(default=1800, metadata={"help": "seconds a collective waits for a missing process before the run "
                                                                   "fails (torch's default; a healthy run's longest wait is the main process "
                                                                   "decoding the data or drawing the pictures)"})
    seed: int = field(default=0, metadata={"help": "seed for initialisation, shuffling and augmentation"})
    keep_checkpoints: int = field(default=2, metadata={"help": "how many per-epoch checkpoints to keep"})
    cache_dir: str | None = field(default=None, metadata={"help": "decoded-image cache (default ~/.cache/resnet_ocp)"})
    log_every: int = field(default=10, metadata={"help": "refresh the progress bar every N steps"})
    progress: bool = field(default=True, metadata={"help": "show tqdm progress bars"})

    def __post_init__(self) -> None:
        self._check_counts_and_choices()
        self._check_schedule()
        self._check_levers()

    def _check_counts_and_choices(self) -> None:
        """Choices among their Literal's values; counts, sizes and epochs in range."""
        for name, choices in _choices().items():
            if getattr(self, name) not in choices:
                raise ConfigError(f"--{_flag(name)} must be one of {', '.join(choices)}, got {getattr(self, name)!r}")
        positive = ["epochs", "batch_size", "grad_accum", "width", "eval_batch_size", "lr_find_iters", "log_every", "keep_checkpoints",
                    "process_group_timeout"]
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"--{_flag(name)} must be >= 1, got {getattr(self, name)}")
        if self.stop_after_epoch is not None and not 1 <= self.stop_after_epoch <= self.epochs:
            raise ConfigError(f"--stop-after-epoch must be between 1 and --epochs ({self.epochs}), got {self.stop_after_epoch}")
        for name in ("train_samples", "test_samples"):
            value = getattr(self, name)
            if value is not None and value < 10:
                raise ConfigError(f"--{_flag(name)} must be at least 10 (one per class), got {value}")

    def _check_schedule(self) -> None:
        """The One-Cycle schedule, the optimizer's LR and momenta, and the LR range test."""
        if not 0 < self.peak_epoch < self.epochs:
            raise ConfigError(f"--peak-epoch must lie strictly between 0 and --epochs ({self.epochs}), got {self.peak_epoch}")
        if self.max_lr is not None and not (math.isfinite(self.max_lr) and self.max_lr > 0):
            raise ConfigError(f"--max-lr must be a positive number, got {self.max_lr}")
        if self.div_factor <= 0 or self.final_div_factor <= 0:
            raise ConfigError("--div-factor and --final-div-factor must be positive")
        if not 0 <= self.momentum_min <= self.momentum_max < 1:
            raise ConfigError(f"need 0 <= --momentum-min <= --momentum-max < 1, got {self.momentum_min} and {self.momentum_max}")
        if self.batch_size % self.grad_accum:
            raise ConfigError(f"--batch-size ({self.batch_size}) must be divisible by --grad-accum ({self.grad_accum})")
        if self.lr_find_iters < MIN_LR_FIND_ITERS:
            raise ConfigError(f"--lr-find-iters must be at least {MIN_LR_FIND_ITERS} (the suggestion rules need that many points), "
                              f"got {self.lr_find_iters}")
        if not 0 < self.lr_find_start < self.lr_find_end:
            raise ConfigError("need 0 < --lr-find-start < --lr-find-end")

    def _check_levers(self) -> None:
        """Regularisers, augmentation, batch norm, activation and TTA options."""
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"--label-smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.weight_decay < 0 or self.crop_padding < 0 or self.cutout < 0:
            raise ConfigError("--weight-decay, --crop-padding and --cutout must be >= 0")
        if self.cutout > 32:
            raise ConfigError(f"--cutout must be at most 32 (the image side), got {self.cutout}")
        if self.crop_pad_mode == "reflect" and self.crop_padding >= 32:
            # Reflection mirrors the image itself, so it cannot pad by more than the side minus one.
            raise ConfigError(f"--crop-padding must be below 32 (the image side) with --crop-pad-mode reflect, got {self.crop_padding}")
        if not 0 <= self.ema < 1:
            raise ConfigError(f"--ema must be in [0, 1), got {self.ema}")
        if not (math.isfinite(self.logit_scale) and self.logit_scale > 0):
            raise ConfigError(f"--logit-scale must be a positive number, got {self.logit_scale}")
        if not 0 < self.bn_momentum <= 1:
            raise ConfigError(f"--bn-momentum must be in (0, 1], got {self.bn_momentum}")
        if self.ghost_batch < 0 or self.tta_shift < 0:
            raise ConfigError("--ghost-batch and --tta-shift must be >= 0")
        if self.tta_shift and not self.tta:
            raise ConfigError(f"--tta-shift {self.tta_shift} needs --tta (the shifts are averaged with the flips)")
        if self.tta_shift > 8:
            raise ConfigError(f"--tta-shift must be at most 8 pixels (a quarter of the image side), got {self.tta_shift}")
        if not (math.isfinite(self.bn_bias_lr_scale) and self.bn_bias_lr_scale > 0):
            raise ConfigError(f"--bn-bias-lr-scale must be a positive number, got {self.bn_bias_lr_scale}")
        if not (math.isfinite(self.celu_alpha) and self.celu_alpha > 0):
            raise ConfigError(f"--celu-alpha must be a positive number, got {self.celu_alpha}")

    @property
    def pct_start(self) -> float:
        """Fraction of the schedule spent warming up (OneCycleLR's ``pct_start``)."""
        return self.peak_epoch / self.epochs

    @property
    def stop_epoch(self) -> int:
        """The epoch after which this invocation stops (``--stop-after-epoch``, else the last)."""
        return self.stop_after_epoch or self.epochs

    def to_dict(self) -> dict[str, Any]:
        """The fields as a plain dict (JSON-serialisable)."""
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        """The fields as indented JSON, for ``config.json`` and the start-of-run print."""
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> Config:
        """The named recipe's values over the defaults, then ``overrides`` over those.

        Args:
            name: a key of ``PRESETS`` ("reference" is the plain defaults).
            overrides: field values that win over the preset's.
        """
        if name not in PRESETS:
            raise ConfigError(f"--preset must be one of {', '.join(PRESETS)}, got {name!r}")
        return cls(**{**PRESETS[name], **overrides})

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Config:
        """Build a config from a dict, rejecting unknown keys with one clear line.

        Args:
            values: field names to values, e.g. a loaded ``config.json`` (old field names are
                read as their new ones, see ``RENAMED_FIELDS``).
        """
        values = {RENAMED_FIELDS.get(k, k): v for k, v in values.items()}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown config keys {unknown}; known keys are the fields of resnet_ocp.config.Config")
        return cls(**values)

    def replace(self, **changes: Any) -> Config:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)


def _flag(name: str) -> str:
    return name.replace("_", "-")


@functools.cache
def _choices() -> dict[str, tuple[str, ...]]:
    """The allowed values of each ``Literal`` field, by field name."""
    hints = typing.get_type_hints(Config)
    return {f.name: typing.get_args(hints[f.name]) for f in dataclasses.fields(Config) if typing.get_origin(hints[f.name]) is Literal}


def choices_of(name: str) -> tuple[str, ...] | None:
    """The allowed values of field ``name`` if it is a choice (``Literal``) field, else None.

    Args:
        name: a Config field name.
    """
    return _choices().get(name)
