"""The pictures of a run, written headless (matplotlib Agg) into its run directory.

``python -m resnet_ocp.report RUN_DIR`` (``resnet-ocp report``) regenerates every picture from a finished run's files and saved weights
without retraining: ``lr_finder.png``, ``schedule.png`` (LR and momentum as the optimizer applied them, from steps.csv), ``curves.png``,
``misclassified.png``, ``confusion_matrix.png`` (with per-class accuracy, also in ``per_class_accuracy.json``) and ``gradcam.png``, plus
``summary.json``: final and best test accuracy and the first epoch (and minutes) at which the run reached 90, 92 and 94%.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from resnet_ocp.atomic import atomic_path, read_json, write_json  # noqa: E402
from resnet_ocp.data import CIFAR10_MEAN, CIFAR10_STD  # noqa: E402
from resnet_ocp.errors import OneLineParser, UserError, exit_with, positive_int  # noqa: E402
from resnet_ocp.rundir import read_steps  # noqa: E402


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


def summarize(history: list[dict], targets: tuple[float, ...] = (0.90, 0.92, 0.94)) -> dict:
    """Final and best test accuracy, and for each target the first epoch that reached it.

    ``seconds`` counts training and test passes (history's per-epoch ``seconds``), not start-up
    or the LR range test, so runs on one machine compare by their epochs' cost alone.

    Args:
        history: a run's ``history.json`` records.
        targets: test-accuracy fractions to report the time to.
    """
    best = max(history, key=lambda h: h["test_accuracy"])
    elapsed = np.cumsum([h["seconds"] for h in history])
    reached = {}
    for target in targets:
        first = next((i for i, h in enumerate(history) if h["test_accuracy"] >= target), None)
        reached[f"{target:.2f}"] = None if first is None else {"epoch": history[first]["epoch"], "seconds": round(float(elapsed[first]), 1)}
    return {
        "epochs": history[-1]["epoch"], "final_accuracy": history[-1]["test_accuracy"],
        "best_accuracy": best["test_accuracy"], "best_epoch": best["epoch"],
        "seconds": round(float(elapsed[-1]), 1), "first_reached": reached,
    }


def describe(summary: dict) -> str:
    """One line per fact of ``summarize``'s result, for the end of a run's log."""
    lines = [f"final test accuracy {100 * summary['final_accuracy']:.2f}% after {summary['epochs']} epochs "
             f"({summary['seconds'] / 60:.1f} min of epochs); best {100 * summary['best_accuracy']:.2f}% at epoch {summary['best_epoch']}"]
    for target, hit in summary["first_reached"].items():
        when = "not reached" if hit is None else f"epoch {hit['epoch']}, after {hit['seconds'] / 60:.1f} min"
        lines.append(f"first >= {100 * float(target):.0f}%: {when}")
    return "\n".join(lines)


def plot_curves(history: list[dict], path: Path) -> None:
    """Train/test loss and accuracy per epoch."""
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


def plot_misclassified(images: torch.Tensor, labels, preds, confs, indices, classes: list[str], path: Path, heat=None, title="") -> None:
    """A grid of test images, each titled with true class, predicted class and confidence;
    with ``heat`` (Grad-CAM maps, [N, H, W] in [0, 1]) overlaid when given."""
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


def confusion(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts ``m[true, predicted]``."""
    m = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(m, (labels, preds), 1)
    return m


def plot_confusion(m: np.ndarray, classes: list[str], path: Path) -> None:
    """Confusion matrix with counts, and per-class accuracy in the row labels."""
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


def grad_cam(model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Grad-CAM maps (Selvaraju et al. 2017) of ``target`` classes at the last conv block
    (``model.layer3``, 4x4), upsampled to the input size and scaled to [0, 1] per image.

    Args:
        model: a CustomResNet (eval mode is set here).
        x: normalised inputs [N, 3, H, W].
        target: the class to explain for each input (e.g. the wrong prediction).
    """
    store = {}
    hook = model.layer3.register_forward_hook(lambda _m, _i, out: store.update(act=out))
    model.eval()
    try:
        with torch.enable_grad():
            logits = model(x)
            act = store["act"]
            grads = torch.autograd.grad(logits.gather(1, target[:, None]).sum(), act)[0]
    finally:
        hook.remove()
    cam = torch.relu((grads.mean((2, 3), keepdim=True) * act).sum(1, keepdim=True))
    cam = torch.nn.functional.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    peak = cam.flatten(1).max(1).values.clamp_min(1e-12)
    return (cam / peak[:, None, None]).detach()


def make_report(run_dir: str | Path, data=None, max_images: int = 20, predictions=None, model=None) -> list[Path]:
    """Write every picture of a finished run from its files and weights.

    Args:
        run_dir: the run directory.
        data: a loaded ``data.Cifar`` (default: loaded from the run's config).
        max_images: how many misclassified images to show.
        predictions: ``(predicted class, confidence)`` per test image in dataset order, as the
            run's last evaluation made them (default: recomputed from the weights).
        model: the trained network on the CPU (default: loaded from ``model.safetensors``).

    Returns:
        The PNG paths written.
    """
    from resnet_ocp.augment import normalize
    from resnet_ocp.config import Config
    from resnet_ocp.data import load_cifar
    from resnet_ocp.evaluate import load_trained, run_precision, test_logits

    run_dir = Path(run_dir)
    cfg = Config.from_dict(read_json(run_dir / "config.json"))
    written = []
    if (run_dir / "lr_finder.json").exists():
        plot_lr_finder(read_json(run_dir / "lr_finder.json"), run_dir / "lr_finder.png")
        written.append(run_dir / "lr_finder.png")
    plot_schedule(read_steps(run_dir / "steps.csv"), cfg.peak_epoch, run_dir / "schedule.png", momentum_name(cfg.optimizer))
    history = read_json(run_dir / "history.json")
    write_json(run_dir / "summary.json", summarize(history))
    plot_curves(history, run_dir / "curves.png")
    written += [run_dir / "schedule.png", run_dir / "curves.png"]
    data = data or load_cifar(cfg.data, cfg.cache_dir, cfg.train_samples, cfg.test_samples)
    model = model if model is not None else load_trained(run_dir, cfg, len(data.classes))
    if predictions is None:
        conf, pred = test_logits(model, data.test.images, cfg, cfg.tta, precision=run_precision(run_dir)).softmax(1).max(1)
    else:
        pred, conf = predictions
    mean, std = torch.tensor(CIFAR10_MEAN), torch.tensor(CIFAR10_STD)
    labels = data.test.labels
    m = confusion(labels.numpy(), pred.numpy(), len(data.classes))
    plot_confusion(m, data.classes, run_dir / "confusion_matrix.png")
    per_class = {c: float(m[i, i] / max(m[i].sum(), 1)) for i, c in enumerate(data.classes)}
    write_json(run_dir / "per_class_accuracy.json", per_class)
    wrong = torch.nonzero(pred != labels).flatten()
    # The most confident mistakes are the instructive ones.
    wrong = wrong[conf[wrong].argsort(descending=True)][:max_images]
    args = (data.test.images[wrong], labels[wrong].tolist(), pred[wrong].tolist(), conf[wrong].tolist(), wrong.tolist(), data.classes)
    n_wrong = int((pred != labels).sum())
    plot_misclassified(*args, run_dir / "misclassified.png", title=f"Misclassified test images ({n_wrong} of {len(labels)} wrong)")
    heat = grad_cam(model, normalize(data.test.images[wrong], mean, std), pred[wrong]).numpy() if len(wrong) else None
    plot_misclassified(*args, run_dir / "gradcam.png", heat=heat, title="Grad-CAM: where the network looked for its wrong answer")
    write_json(run_dir / "misclassified.json", {"indices": wrong.tolist()})
    written += [run_dir / n for n in ("confusion_matrix.png", "misclassified.png", "gradcam.png")]
    return written


def main(argv: list[str] | None = None, prog: str = "python -m resnet_ocp.report") -> list[Path]:
    """``python -m resnet_ocp.report RUN_DIR``: regenerate the pictures of a finished run.

    Args:
        argv: command-line arguments (default ``sys.argv[1:]``).
        prog: the command's name in help and errors (``resnet-ocp report`` from the console command).
    """
    parser = OneLineParser(prog=prog, description="Redraw every picture of a finished run (and summary.json) without retraining.")
    parser.add_argument("run_dir", help="a finished run directory (with model.safetensors)")
    parser.add_argument("--max-images", type=positive_int, default=20, help="misclassified images to show (default 20)")
    args = parser.parse_args(argv)
    run_dir = Path(args.run_dir)
    missing = [f for f in ("config.json", "history.json", "steps.csv", "model.safetensors") if not (run_dir / f).exists()]
    if missing:
        exit_with(f"{run_dir} lacks {', '.join(missing)}; give a finished run directory written by train.py")
    try:
        written = make_report(run_dir, max_images=args.max_images)
    except UserError as exc:
        exit_with(exc)
    print(*written, sep="\n")
    return written


if __name__ == "__main__":
    main()
