"""A model on a split resident on the device: logits (with flip and shift TTA), the test pass
gathered across processes, the accuracy metric, and batch-norm statistics for averaged weights.

Shared by training (``engine``), ``evaluate`` and ``predict``, so a recorded accuracy and a
re-evaluation run the same code.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.optim.swa_utils import update_bn

from resnet_ocp.augment import normalize

METRIC_DIR = Path(__file__).parent / "metrics" / "accuracy"


@dataclass(frozen=True)
class DeviceSplit:
    """A split resident on the training device: uint8 images, int64 labels, and the normalisation."""

    images: torch.Tensor
    labels: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor


def load_accuracy_metric():
    """The ``evaluate`` accuracy metric, loaded from the module shipped in this package (works offline)."""
    import evaluate

    return evaluate.load(str(METRIC_DIR))


def model_inputs(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """``x`` in the memory format the run feeds its network.

    Args:
        x: a batch [N, C, H, W].
        channels_last: whether the run uses the channels_last memory format.
    """
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def predict_logits(model: torch.nn.Module, images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
                   channels_last: bool = True, tta: bool = False, tta_shift: int = 0) -> torch.Tensor:
    """float32 logits of uint8 images; with ``tta`` the mean of the image's and its mirror's.

    With ``tta_shift`` s > 0 as well (airbench's ``infer_mirror_translate``): half that mean,
    half the mean of the same over the image shifted by s pixels up-left and down-right
    (reflect-padded), six forward passes in all.

    Args:
        model: the network (in eval mode for evaluation).
        images: uint8 [B, 3, H, W] on the model's device.
        mean, std: per-channel normalisation, fractions of 255.
        channels_last: feed channels_last inputs.
        tta: flip test-time augmentation (two forward passes).
        tta_shift: translation of the shifted views in pixels (0: none; needs ``tta``).
    """
    x = normalize(images, mean, std)

    def mirrored(view: torch.Tensor) -> torch.Tensor:
        logits = model(model_inputs(view, channels_last)).float()
        return (logits + model(model_inputs(view.flip(-1), channels_last)).float()) / 2 if tta else logits

    logits = mirrored(x)
    if tta and tta_shift:
        s, (h, w) = tta_shift, x.shape[-2:]
        padded = F.pad(x, (s,) * 4, mode="reflect")
        shifted = (mirrored(padded[..., :h, :w]) + mirrored(padded[..., 2 * s:, 2 * s:])) / 2
        logits = (logits + shifted) / 2
    return logits


def recompute_bn_stats(model: torch.nn.Module, data: DeviceSplit, n_images: int, batch_size: int,
                       channels_last: bool = True) -> None:
    """Set every BatchNorm's running statistics to those of ``model``'s own activations on the
    first ``n_images`` images of ``data`` (un-augmented), the same images on every process.

    Averaged weights need their own statistics: at epoch 2 of the 8-epoch proxy an EMA (decay
    0.99) that also averaged the BN buffers scored 32.2% on 2,000 test images, the EMA weights
    with the live model's buffers 41.4%, the live model 70.4%, and the EMA weights with
    statistics recomputed here 71.7% from 512 images and 71.3% from 4,096 (measured).
    torch's ``update_bn`` does the work (reset, cumulative average, momenta and mode restored);
    this feeds it our uint8 device images in the training input format.

    Args:
        model: the network whose BatchNorm buffers are replaced; keeps its train/eval mode.
        data: a split on the model's device.
        n_images: how many images (all of the split if it has fewer).
        batch_size: images per forward pass.
        channels_last: feed channels_last inputs.
    """
    batches = (model_inputs(normalize(b, data.mean, data.std), channels_last) for b in data.images[:n_images].split(batch_size))
    update_bn(batches, model)


@torch.no_grad()
def evaluate(accelerator, model: torch.nn.Module, loader, data: DeviceSplit, metric=None, *, channels_last: bool = True,
             tta: bool = False, tta_shift: int = 0) -> dict:
    """Evaluate on a split, gathering every sample exactly once across processes.

    Args:
        accelerator: the run's Accelerator.
        model: the prepared model.
        loader: the prepared in-order index loader of the split.
        data: the split on the device.
        metric: an ``evaluate`` accuracy metric (default: the shipped one).
        channels_last: feed channels_last inputs.
        tta: flip test-time augmentation.
        tta_shift: also the shifted views (``predict_logits``).

    Returns:
        ``loss`` (mean), ``accuracy`` (fraction, from ``evaluate``), ``correct``, ``total``,
        and per-sample ``indices``, ``labels``, ``predictions``, ``confidences`` (CPU tensors).
    """
    model.eval()
    metric = metric or load_accuracy_metric()
    parts: list[tuple[torch.Tensor, ...]] = []
    for idx in loader:
        y = data.labels[idx]
        logits = predict_logits(model, data.images[idx], data.mean, data.std, channels_last, tta, tta_shift)
        losses = F.cross_entropy(logits, y, reduction="none")
        conf, pred = logits.softmax(1).max(1)
        # gather_for_metrics drops the samples Accelerate repeated to even out the last batch.
        parts.append(accelerator.gather_for_metrics((idx, y, pred, conf, losses)))
    indices, labels, preds, confs, losses = (torch.cat(t).cpu() for t in zip(*parts))
    result = metric.compute(predictions=preds.numpy(), references=labels.numpy())
    return {
        "loss": losses.mean().item(),
        "accuracy": float(result["accuracy"]),
        "correct": int((preds == labels).sum()),
        "total": len(labels),
        "indices": indices,
        "labels": labels,
        "predictions": preds,
        "confidences": confs,
    }
