"""What a run's pictures show, taken from its run directory (``plots`` draws them), and its summary numbers.

``python -m resnet_ocp.report RUN_DIR`` (``resnet-ocp report``) regenerates every picture from a finished run's files and saved weights
without retraining: ``lr_finder.png``, ``schedule.png`` (LR and momentum as the optimizer applied them, from steps.csv), ``curves.png``,
``misclassified.png``, ``confusion_matrix.png`` (with per-class accuracy, also in ``per_class_accuracy.json``) and ``gradcam.png``, plus
``summary.json``: final and best test accuracy and the first epoch (and minutes) at which the run reached 90, 92 and 94%.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from resnet_ocp.atomic import read_json, write_json
from resnet_ocp.config import Config
from resnet_ocp.data import CIFAR10_MEAN, CIFAR10_STD
from resnet_ocp.errors import OneLineParser, UserError, exit_with, positive_int
from resnet_ocp.plots import ImageGrid, momentum_name, plot_confusion, plot_curves, plot_image_grid, plot_lr_finder, plot_schedule
from resnet_ocp.rundir import read_steps


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
    """One line per fact of ``summarize``'s result, for the end of a run's log.

    Args:
        summary: a ``summarize`` result.
    """
    lines = [f"final test accuracy {100 * summary['final_accuracy']:.2f}% after {summary['epochs']} epochs "
             f"({summary['seconds'] / 60:.1f} min of epochs); best {100 * summary['best_accuracy']:.2f}% at epoch {summary['best_epoch']}"]
    for target, hit in summary["first_reached"].items():
        when = "not reached" if hit is None else f"epoch {hit['epoch']}, after {hit['seconds'] / 60:.1f} min"
        lines.append(f"first >= {100 * float(target):.0f}%: {when}")
    return "\n".join(lines)


def confusion(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts ``m[true, predicted]``, int64 [num_classes, num_classes].

    Args:
        labels: true classes [N].
        preds: predicted classes [N].
        num_classes: rows (and columns) of the matrix.
    """
    m = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(m, (labels, preds), 1)
    return m


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
    from resnet_ocp.data import load_cifar
    from resnet_ocp.evaluate import load_trained, run_precision, test_logits

    run_dir = Path(run_dir)
    cfg = Config.from_dict(read_json(run_dir / "config.json"))
    written = training_pictures(run_dir, cfg)
    data = data or load_cifar(cfg.data, cfg.cache_dir, cfg.train_samples, cfg.test_samples)
    model = model if model is not None else load_trained(run_dir, cfg, len(data.classes))
    if predictions is None:
        conf, pred = test_logits(model, data.test.images, cfg, cfg.tta, precision=run_precision(run_dir)).softmax(1).max(1)
    else:
        pred, conf = predictions
    return written + evaluation_pictures(run_dir, data, model, (pred, conf), max_images)


def training_pictures(run_dir: Path, cfg: Config) -> list[Path]:
    """Draw what the run's records show (range test, schedule, curves) and write ``summary.json``.

    Args:
        run_dir: the run directory.
        cfg: its ``Config``.

    Returns:
        The PNG paths written.
    """
    written = []
    if (run_dir / "lr_finder.json").exists():
        plot_lr_finder(read_json(run_dir / "lr_finder.json"), run_dir / "lr_finder.png")
        written.append(run_dir / "lr_finder.png")
    plot_schedule(read_steps(run_dir / "steps.csv"), cfg.peak_epoch, run_dir / "schedule.png", momentum_name(cfg.optimizer))
    history = read_json(run_dir / "history.json")
    write_json(run_dir / "summary.json", summarize(history))
    plot_curves(history, run_dir / "curves.png")
    return written + [run_dir / "schedule.png", run_dir / "curves.png"]


def evaluation_pictures(run_dir: Path, data, model: torch.nn.Module, predictions: tuple, max_images: int) -> list[Path]:
    """Draw what the test set shows (confusion matrix, the most confident mistakes, their Grad-CAM)
    and write ``per_class_accuracy.json`` and ``misclassified.json``.

    Args:
        run_dir: the run directory.
        data: the loaded ``data.Cifar``.
        model: the trained network on the CPU.
        predictions: ``(predicted class, confidence)`` per test image in dataset order.
        max_images: how many misclassified images to show.

    Returns:
        The PNG paths written.
    """
    from resnet_ocp.augment import normalize

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
    shown = ImageGrid(data.test.images[wrong], labels[wrong].tolist(), pred[wrong].tolist(), conf[wrong].tolist(), wrong.tolist())
    n_wrong = int((pred != labels).sum())
    plot_image_grid(shown, data.classes, run_dir / "misclassified.png", title=f"Misclassified test images ({n_wrong} of {len(labels)} wrong)")
    heat = grad_cam(model, normalize(data.test.images[wrong], mean, std), pred[wrong]).numpy() if len(wrong) else None
    plot_image_grid(shown, data.classes, run_dir / "gradcam.png", heat=heat, title="Grad-CAM: where the network looked for its wrong answer")
    write_json(run_dir / "misclassified.json", {"indices": wrong.tolist()})
    return [run_dir / n for n in ("confusion_matrix.png", "misclassified.png", "gradcam.png")]


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
