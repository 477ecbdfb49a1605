"""The network: C1 - (C2 + Res) - C3 - (C4 + Res) - MaxPool - FC.

With ``width=64`` it has exactly 6,573,130 trainable parameters (convolutions carry no
bias because each is followed by batch norm). No device or dtype logic lives here:
Accelerate places the model and autocast chooses the precision.

``CustomResNet`` is a huggingface_hub ``PyTorchModelHubMixin``: ``save_pretrained(dir)`` writes
``model.safetensors`` and a small ``config.json`` holding what prediction needs (classes, width,
logit scale, input normalisation, class names, flip TTA), and ``from_pretrained(dir or Hub id)``
builds the network from them, on the CPU, in eval mode.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from huggingface_hub import PyTorchModelHubMixin
from torch import nn

from resnet_ocp.batchnorm import BatchNormOptions
from resnet_ocp.data import CIFAR10_MEAN, CIFAR10_STD
from resnet_ocp.whitening import PatchWhitening

WEIGHTS_FILE = "model.safetensors"


@dataclass(frozen=True)
class NetworkConfig:
    """What a trained network is and how it is used: ``save_pretrained`` writes it as ``config.json``
    and ``from_pretrained`` builds the network from it, so prediction needs nothing else.

    Args:
        num_classes: size of the output layer.
        width: channels of the prep layer; the stages use 2x, 4x and 8x this.
        logit_scale: constant the FC output is multiplied by (no parameters). Page's ResNet
            uses 0.125: the FC layer is the one layer batch norm does not normalise, and its
            512 pooled features make an SGD step move the logits by roughly lr x 500 at scale 1
            (our SGD range test diverged from LR 0.01 there).
        mean: per-channel input mean, fractions of 255 (default: CIFAR-10's training set).
        std: per-channel input standard deviation, fractions of 255.
        class_names: the name of each output, in order (None: unnamed).
        tta: whether the model is meant to be used with flip test-time augmentation (the mean
            of the logits of an image and its mirror), as the run that trained it was tested;
            ``forward`` ignores it.
        tta_shift: with ``tta``, also average over the image translated by this many pixels
            (0: flip only); ``forward`` ignores it.
        activation: after every batch norm, "relu", or "celu" (Page's smoothed ReLU).
        celu_alpha: CELU's alpha; Page's 0.075 is close to a ReLU with a rounded corner.
        whiten: a fixed patch-whitening convolution (``whitening.PatchWhitening``, 3 -> 27
            channels) ahead of a 1x1 prep convolution (27 -> ``width``), in place of the 3x3 prep
            convolution; same trainable count. Its filters are a buffer: ``fit_whitening``.
    """

    num_classes: int = 10
    width: int = 64
    logit_scale: float = 1.0
    mean: tuple[float, ...] = CIFAR10_MEAN
    std: tuple[float, ...] = CIFAR10_STD
    class_names: tuple[str, ...] | None = None
    tta: bool = False
    tta_shift: int = 0
    activation: str = "relu"
    celu_alpha: float = 0.075
    whiten: bool = False

    def __post_init__(self) -> None:
        # config.json holds lists; tuples keep the frozen config hashable and comparable.
        object.__setattr__(self, "mean", tuple(self.mean))
        object.__setattr__(self, "std", tuple(self.std))
        if self.class_names is not None:
            object.__setattr__(self, "class_names", tuple(self.class_names))
            if len(self.class_names) != self.num_classes:
                raise ValueError(f"{len(self.class_names)} class names for {self.num_classes} classes")

    @classmethod
    def from_json(cls, values: dict) -> NetworkConfig:
        """The config a ``config.json`` holds; a key this version does not know is an error.

        Args:
            values: the file's object (older files lack the newer keys, which take their defaults).
        """
        unknown = sorted(set(values) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"config.json has keys this resnet_ocp does not know: {', '.join(unknown)}; upgrade resnet_ocp")
        return cls(**values)

    def as_json(self) -> dict:
        """The config as ``config.json`` holds it (lists for tuples)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    def act(self) -> nn.Module:
        """The activation after each batch norm: ReLU, or CELU with ``celu_alpha``."""
        return nn.CELU(self.celu_alpha, inplace=True) if self.activation == "celu" else nn.ReLU(inplace=True)


class ConvBlock(nn.Sequential):
    """Convolution (3x3 unless given), optional 2x2 max-pool, batch norm, activation (pool before BN, as in the spec)."""

    def __init__(self, c_in: int, c_out: int, pool: bool = False, net: NetworkConfig = NetworkConfig(),
                 norm: BatchNormOptions = BatchNormOptions(), kernel_size: int = 3) -> None:
        layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, kernel_size=kernel_size, padding=kernel_size // 2, bias=False)]
        if pool:
            layers.append(nn.MaxPool2d(2))
        layers += [norm.make(c_out), net.act()]
        super().__init__(*layers)


class Residual(nn.Module):
    """Identity shortcut around two conv-BN-activation blocks: ``x + body(x)``."""

    def __init__(self, channels: int, net: NetworkConfig = NetworkConfig(), norm: BatchNormOptions = BatchNormOptions()) -> None:
        super().__init__()
        self.body = nn.Sequential(ConvBlock(channels, channels, net=net, norm=norm), ConvBlock(channels, channels, net=net, norm=norm))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x + body(x)``, of the same shape as ``x``.

        Args:
            x: a feature map [N, channels, H, W].
        """
        return x + self.body(x)


class CustomResNet(nn.Module, PyTorchModelHubMixin, library_name="resnet-ocp", license="apache-2.0",
                   pipeline_tag="image-classification", tags=["image-classification", "cifar10"]):
    """The mission network for 32x32 RGB inputs: ``CustomResNet(NetworkConfig(width=8))``.

    ``forward`` takes inputs already normalised with ``config.mean`` and ``config.std``; those,
    the class names and ``config.tta`` ride along so that a saved model can be used for
    prediction alone (``resnet_ocp.predict`` applies them).

    Args:
        config: the network and how to use it (``NetworkConfig``; saved as ``config.json``).
        norm: how the batch norms train (``BatchNormOptions``; not saved).
    """

    def __init__(self, config: NetworkConfig = NetworkConfig(), norm: BatchNormOptions = BatchNormOptions()) -> None:
        super().__init__()
        self.config = config
        # What save_pretrained writes as config.json; from_pretrained reads it back in _from_pretrained.
        self._hub_mixin_config = config.as_json()
        w = config.width
        if config.whiten:
            whitening = PatchWhitening(3)
            self.prep = nn.Sequential(whitening, ConvBlock(whitening.out_channels, w, net=config, norm=norm, kernel_size=1))
        else:
            self.prep = ConvBlock(3, w, net=config, norm=norm)
        self.layer1 = nn.Sequential(ConvBlock(w, 2 * w, pool=True, net=config, norm=norm), Residual(2 * w, config, norm))
        self.layer2 = ConvBlock(2 * w, 4 * w, pool=True, net=config, norm=norm)
        self.layer3 = nn.Sequential(ConvBlock(4 * w, 8 * w, pool=True, net=config, norm=norm), Residual(8 * w, config, norm))
        self.pool = nn.MaxPool2d(4)
        self.fc = nn.Linear(8 * w, config.num_classes)

    @property
    def whitening(self) -> PatchWhitening | None:
        """The fixed patch-whitening layer, if the network has one."""
        first = self.prep[0]
        return first if isinstance(first, PatchWhitening) else None

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The last convolutional feature map (``layer3`` output, 4x4), used by Grad-CAM."""
        return self.layer3(self.layer2(self.layer1(self.prep(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The logits [N, num_classes], already multiplied by ``config.logit_scale``.

        Args:
            x: images [N, 3, 32, 32], normalised with ``config.mean`` and ``config.std``.
        """
        return self.fc(torch.flatten(self.pool(self.features(x)), 1)) * self.config.logit_scale

    def _save_pretrained(self, save_directory: Path) -> None:
        """Write the weights as train.py writes a run's ``model.safetensors`` (same tensors, same
        header metadata), so the file saved from a run's weights is byte-identical to the run's."""
        from safetensors.torch import save_file

        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(Path(save_directory) / WEIGHTS_FILE), metadata=weights_metadata(self.config.class_names or []))

    @classmethod
    def _from_pretrained(cls, *, model_id: str, revision: str | None, cache_dir, force_download: bool, local_files_only: bool,
                         token, config: dict | NetworkConfig | None = None, **model_kwargs) -> CustomResNet:
        """Build the network from its config.json and load every tensor (strictly: a missing or
        extra tensor is an error, where the mixin's default would skip it silently), on the CPU."""
        from huggingface_hub import hf_hub_download
        from safetensors.torch import load_model

        if config is None:
            raise FileNotFoundError(f"{model_id} has no config.json: save the network with save_pretrained or resnet-ocp export")
        model = cls(config if isinstance(config, NetworkConfig) else NetworkConfig.from_json(config), **model_kwargs)
        if Path(model_id).is_dir():
            weights = Path(model_id) / WEIGHTS_FILE
        else:
            weights = hf_hub_download(repo_id=model_id, filename=WEIGHTS_FILE, revision=revision, cache_dir=cache_dir,
                                      force_download=force_download, token=token, local_files_only=local_files_only)
        load_model(model, str(weights), strict=True)
        return model.eval()


def weights_metadata(class_names: Sequence[str]) -> dict[str, str]:
    """The header metadata of every ``model.safetensors`` this project writes: the class names,
    comma-separated (safetensors metadata values must be strings).

    Args:
        class_names: the output classes in order.
    """
    return {"classes": ",".join(class_names)}


def for_config(cfg, num_classes: int, class_names: Sequence[str] | None = None) -> CustomResNet:
    """The network a run's configuration describes; training and ``evaluate`` both build it
    here, so a new architecture option cannot reach one and miss the other.

    Args:
        cfg: a ``resnet_ocp.config.Config`` (width, batch-norm, activation, whitening, logit scale, TTA).
        num_classes: size of the output layer.
        class_names: the output classes in order, if known.
    """
    net = NetworkConfig(num_classes=num_classes, width=cfg.width, logit_scale=cfg.logit_scale, class_names=class_names,
                        tta=cfg.tta, tta_shift=cfg.tta_shift, activation=cfg.activation, celu_alpha=cfg.celu_alpha, whiten=cfg.whiten)
    return CustomResNet(net, BatchNormOptions(cfg.bn_momentum, cfg.ghost_batch, cfg.bn_weight_freeze))


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters.

    Args:
        model: any module; parameters with ``requires_grad`` False are not counted.
    """
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
