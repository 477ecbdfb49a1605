"""The pictures of a run, drawn headless (matplotlib Agg) and written atomically as PNGs.

Each function draws one picture from plain data (a run's JSON and CSV records, a confusion matrix,
images with their predictions); ``report`` decides what to draw from a run directory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from resnet_ocp.atomic import atomic_path  # noqa: E402


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


def plot_lr_finder(result: dict, path: Path) -> None:
    """Loss against LR (log axis), raw and smoothed, with the suggestion marked.

    Args:
        result: an ``lr_finder.json`` dict.
        path: PNG to write.
    """
    fig, ax = plt.subplots(figsize=(7, 4.5))
    lrs, smoothed = np.asarray(result["lrs"]), np.asarray(result["smoothed"])
    ax.plot(lrs, result["losses"], color="0.75", lw=1, label="loss per step")
    ax.plot(lrs, smoothed, color="C0", lw=2, label="smoothed loss")
    finite = smoothed[np.isfinite(smoothed)]
    raw = np.asarray(result["losses"], dtype=float)
    raw = raw[np.isfinite(raw)]
    if len(finite):
        # Clip the divergence so the falling part, where the suggestion lies, fills the plot.
        low = min(finite.min(), raw.min() if len(raw) else finite.min())
        ax.set_ylim(max(low - 0.05 * abs(low), 0), min(finite.max(), 3 * finite[: max(len(finite) // 2, 1)].max()) * 1.05)
    # Other rules go into the legend, not beside their lines: their LRs are often close (valley and min10 within 3% on CIFAR-10).
    others = [(n, lr) for n, lr in (result.get("suggestions") or {}).items() if lr is not None and n != result["rule"]]
    for (name, lr), style, color in zip(others, (":", "-."), ("C2", "C4")):
        ax.axvline(lr, color=color, ls=style, lw=1.2, label=f"{name} rule: {lr:.3g}")
    if result["suggested_lr"] is not None:
        ax.axvline(result["suggested_lr"], color="C3", ls="--", label=f"suggested ({result['rule']}): {result['suggested_lr']:.3g}")
    else:
        ax.text(0.5, 0.5, "no suggestion: " + result["message"][:60], transform=ax.transAxes, ha="center", color="C3")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate (log scale)")
    ax.set_ylabel("training loss")
    ax.set_title(f"LR range test: {result['settings'].get('steps_run', len(lrs))} steps")
    ax.legend(loc="lower left", fontsize=8)
    _save(fig, Path(path))


def momentum_name(optimizer: str) -> str:
    """What the momentum column means for an optimizer: Adam's (and AdamW's) beta1 or SGD's momentum.

    Args:
        optimizer: a config's ``optimizer`` (adam, adamw, sgd).
    """
    return "SGD momentum" if optimizer == "sgd" else f"{'AdamW' if optimizer == 'adamw' else 'Adam'} beta1"


def plot_schedule(steps: list[dict], peak_epoch: float, path: Path, momentum_label: str = "momentum") -> None:
    """LR and momentum per optimizer step as applied (steps.csv), with the peak epoch marked.

    Args:
        steps: steps.csv rows.
        peak_epoch: the epoch at whose end the LR peaks.
        path: PNG to write.
        momentum_label: what the momentum is (``momentum_name``), for the legend and axis.
    """
    fig, ax = plt.subplots(figsize=(8, 4.5))
    step = [r["step"] for r in steps]
    ax.plot(step, [r["lr"] for r in steps], color="C0", label="learning rate")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("learning rate", color="C0")
    per_epoch = sum(1 for r in steps if r["epoch"] == steps[0]["epoch"])
    ax.axvline(peak_epoch * per_epoch, color="0.5", ls="--", lw=1)
    ax.text(peak_epoch * per_epoch, ax.get_ylim()[1] * 0.98, f" peak: end of epoch {peak_epoch:g}", va="top", fontsize=8)
    ax2 = ax.twinx()
    ax2.plot(step, [r["momentum"] for r in steps], color="C1", label=momentum_label)
    ax2.set_ylabel(momentum_label, color="C1")
    ax.set_title("One-Cycle schedule as applied by the optimizer")
    _save(fig, Path(path))


def plot_curves(history: list[dict], path: Path) -> None:
    """Train/test loss and accuracy per epoch.

    Args:
        history: ``history.json`` records (``epoch``; train and test loss, and accuracy as a fraction).
        path: PNG to write.
    """
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
    ep = [h["epoch"] for h in history]
    a.plot(ep, [h["train_loss"] for h in history], "o-", label="train")
    a.plot(ep, [h["test_loss"] for h in history], "o-", label="test")
    a.set(xlabel="epoch", ylabel="cross-entropy loss", title="Loss")
    b.plot(ep, [100 * h["train_accuracy"] for h in history], "o-", label="train (augmented)")
    b.plot(ep, [100 * h["test_accuracy"] for h in history], "o-", label="test")
    b.set(xlabel="epoch", ylabel="accuracy (%)", title=f"Accuracy (final test {100 * history[-1]['test_accuracy']:.2f}%)")
    for ax in (a, b):
        ax.legend()
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    _save(fig, Path(path))


def _to_hwc(images_u8: torch.Tensor) -> np.ndarray:
    """uint8 [N, 3, H, W] as the [N, H, W, 3] array matplotlib shows."""
    return images_u8.permute(0, 2, 3, 1).numpy()


@dataclass
class ImageGrid:
    """Test images shown in a grid, with what the network made of them (one entry per image)."""

    images: torch.Tensor  # uint8 [N, 3, H, W]
    labels: list[int]
    preds: list[int]
    confs: list[float]
    indices: list[int]  # positions in the test set


def plot_image_grid(shown: ImageGrid, classes: list[str], path: Path, heat=None, title: str = "") -> None:
    """A grid of test images, each titled with true class, predicted class and confidence.

    Args:
        shown: the images and their labels, predictions, confidences and test-set indices.
        classes: class names by label.
        path: PNG to write.
        heat: Grad-CAM maps, [N, H, W] in [0, 1], overlaid when given.
        title: the figure's title.
    """
    images, labels, preds, confs, indices = shown.images, shown.labels, shown.preds, shown.confs, shown.indices
    n = len(indices)
    cols = min(5, n)
    rows = max(1, -(-n // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2.3 * cols, 2.6 * rows), squeeze=False)
    pics = _to_hwc(images)
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k >= n:
            continue
        ax.imshow(pics[k], interpolation="nearest")
        if heat is not None:
            ax.imshow(heat[k], cmap="jet", alpha=0.45, extent=(-0.5, 31.5, 31.5, -0.5), interpolation="bilinear")
        ax.set_title(f"#{indices[k]} true: {classes[labels[k]]}\npred: {classes[preds[k]]} ({100 * confs[k]:.0f}%)", fontsize=8)
    fig.suptitle(title)
    _save(fig, Path(path))


def plot_confusion(m: np.ndarray, classes: list[str], path: Path) -> None:
    """Confusion matrix with counts, and per-class accuracy in the row labels.

    Args:
        m: counts ``m[true, predicted]`` (``report.confusion``).
        classes: class names by label.
        path: PNG to write.
    """
    fig, ax = plt.subplots(figsize=(8.5, 7.5))
    ax.imshow(m, cmap="Blues")
    acc = m.diagonal() / np.maximum(m.sum(1), 1)
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), [f"{c} ({100 * a:.1f}%)" for c, a in zip(classes, acc)])
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, str(m[i, j]), ha="center", va="center", fontsize=7, color="white" if m[i, j] > m.max() / 2 else "black")
    ax.set(xlabel="predicted class", ylabel="true class (per-class accuracy)", title="Confusion matrix on the test set")
    _save(fig, Path(path))
