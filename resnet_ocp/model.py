"""The network: C1 - (C2 + Res) - C3 - (C4 + Res) - MaxPool - FC.

With ``width=64`` it has exactly 6,573,130 trainable parameters (convolutions carry no
bias because each is followed by batch norm). No device or dtype logic lives here:
Accelerate places the model and autocast chooses the precision.
"""

from __future__ import annotations

import torch
from torch import nn


class ConvBlock(nn.Sequential):
    """3x3 convolution, optional 2x2 max-pool, batch norm, ReLU (pool before BN, as in the spec)."""

    def __init__(self, c_in: int, c_out: int, pool: bool = False, bn_momentum: float = 0.1) -> None:
        layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=False)]
        if pool:
            layers.append(nn.MaxPool2d(2))
        layers += [nn.BatchNorm2d(c_out, momentum=bn_momentum), nn.ReLU(inplace=True)]
        super().__init__(*layers)


class Residual(nn.Module):
    """Identity shortcut around two conv-BN-ReLU blocks: ``x + body(x)``."""

    def __init__(self, channels: int, bn_momentum: float = 0.1) -> None:
        super().__init__()
        self.body = nn.Sequential(ConvBlock(channels, channels, bn_momentum=bn_momentum), ConvBlock(channels, channels, bn_momentum=bn_momentum))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class CustomResNet(nn.Module):
    """The mission network for 32x32 RGB inputs.

    Args:
        num_classes: size of the output layer.
        width: channels of the prep layer; the stages use 2x, 4x and 8x this.
        bn_momentum: momentum of every batch norm's running statistics.
        logit_scale: constant the FC output is multiplied by (no parameters). Page's ResNet
            uses 0.125: the FC layer is the one layer batch norm does not normalise, and its
            512 pooled features make an SGD step move the logits by roughly lr x 500 at scale 1
            (our SGD range test diverged from LR 0.01 there).
    """

    def __init__(self, num_classes: int = 10, width: int = 64, bn_momentum: float = 0.1, logit_scale: float = 1.0) -> None:
        super().__init__()
        self.logit_scale = logit_scale
        w, m = width, bn_momentum
        self.prep = ConvBlock(3, w, bn_momentum=m)
        self.layer1 = nn.Sequential(ConvBlock(w, 2 * w, pool=True, bn_momentum=m), Residual(2 * w, m))
        self.layer2 = ConvBlock(2 * w, 4 * w, pool=True, bn_momentum=m)
        self.layer3 = nn.Sequential(ConvBlock(4 * w, 8 * w, pool=True, bn_momentum=m), Residual(8 * w, m))
        self.pool = nn.MaxPool2d(4)
        self.fc = nn.Linear(8 * w, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The last convolutional feature map (``layer3`` output, 4x4), used by Grad-CAM."""
        return self.layer3(self.layer2(self.layer1(self.prep(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1)) * self.logit_scale


def for_config(cfg, num_classes: int) -> CustomResNet:
    """The network a run's configuration describes; training and ``evaluate`` both build it
    here, so a new architecture option cannot reach one and miss the other.

    Args:
        cfg: a ``resnet_ocp.config.Config`` (width, bn_momentum, logit_scale).
        num_classes: size of the output layer.
    """
    return CustomResNet(num_classes=num_classes, width=cfg.width, bn_momentum=cfg.bn_momentum, logit_scale=cfg.logit_scale)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def summary(model: nn.Module, input_shape: tuple[int, ...] = (1, 3, 32, 32)) -> str:
    """A per-layer table (name, output shape, parameters) of the model's top-level children.

    Args:
        model: the network (run on a CPU copy of nothing: hooks only read output shapes).
        input_shape: shape of the dummy input pushed through once.
    """
    rows: list[tuple[str, str, int]] = []
    hooks = []
    for name, child in model.named_children():
        def hook(_m, _i, out, name=name, child=child):
            rows.append((name, str(tuple(out.shape)), count_parameters(child)))
        hooks.append(child.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            param = next(model.parameters())
            model(torch.zeros(input_shape, device=param.device, dtype=param.dtype))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    lines = [f"{'layer':<8} {'output shape':<20} {'params':>12}", "-" * 42]
    lines += [f"{n:<8} {s:<20} {p:>12,}" for n, s, p in rows]
    lines += ["-" * 42, f"{'total':<8} {'':<20} {count_parameters(model):>12,}"]
    return "\n".join(lines)
