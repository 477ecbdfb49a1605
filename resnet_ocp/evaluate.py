"""``python -m resnet_ocp.evaluate RUN_DIR``: the test accuracy of a run's saved weights.

Reproduces a recorded result from ``model.safetensors`` and ``config.json`` alone (no
checkpoint, no training code path), and says whether it matches the accuracy recorded in
``history.json``. ``--weights`` tests other weights of the same network instead, such as a
checkpoint's live weights in a run whose record is its weight EMA.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from resnet_ocp.atomic import read_json
from resnet_ocp.config import Config
from resnet_ocp.data import CIFAR10_MEAN, CIFAR10_STD, load_cifar
from resnet_ocp.errors import DamagedFileError, OneLineParser, UserError, exit_with, positive_int
from resnet_ocp.inference import load_accuracy_metric, predict_logits
from resnet_ocp.model import CustomResNet, for_config
from resnet_ocp.session import last_session


def load_trained(run_dir: str | Path, cfg: Config, num_classes: int, device: torch.device | str = "cpu",
                 weights: str | Path | None = None) -> torch.nn.Module:
    """The network of a finished run with its ``model.safetensors`` weights, in eval mode.

    Args:
        run_dir: the run directory.
        cfg: its config (width, BN momentum, memory format).
        num_classes: output classes.
        device: where to put it.
        weights: another weights file of the same network (relative to ``run_dir`` or absolute).
    """
    from safetensors.torch import load_file

    model = for_config(cfg, num_classes)
    path = Path(run_dir) / (weights or "model.safetensors")
    try:
        state = load_file(str(path))
    except Exception as exc:  # safetensors raises its own SafetensorError, or OSError
        if weights is not None:
            raise UserError(f"--weights {weights}: {path} cannot be read ({str(exc)[:100]}); give a .safetensors file") from None
        raise DamagedFileError(f"{path} is damaged ({str(exc)[:100]}); restore it from a copy, or delete it and finish the run "
                               f"again with --resume {run_dir} (its last checkpoint is kept)") from None
    if weights is not None and set(state) != set(model.state_dict()):
        # A checkpoint's ema.safetensors is the AveragedModel ("module." keys, BN statistics not averaged).
        raise UserError(f"--weights {weights} does not hold this run's network (keys such as {sorted(set(state) ^ set(model.state_dict()))[0]!r} "
                        "differ); give a model.safetensors, e.g. checkpoints/epoch_NNN/model.safetensors for a checkpoint's live weights")
    model.load_state_dict(state)
    model = model.to(device).eval()
    return model.to(memory_format=torch.channels_last) if cfg.channels_last else model


def load_run_model(run_dir: str | Path) -> CustomResNet:
    """A finished run's network with what prediction needs beside the weights: the class names
    (from ``model.safetensors``'s metadata), the training normalisation every run uses and the
    run's ``--tta``; on the CPU, in eval mode, in the standard memory format.

    Args:
        run_dir: a finished run directory (``config.json`` and ``model.safetensors``).
    """
    from safetensors import safe_open
    from safetensors.torch import load_file

    run_dir = Path(run_dir)
    cfg = Config.from_dict(read_json(run_dir / "config.json"))
    weights = run_dir / "model.safetensors"
    with safe_open(str(weights), "pt") as f:
        classes = (f.metadata() or {}).get("classes")
        num_classes = f.get_slice("fc.bias").get_shape()[0]
    model = for_config(cfg, num_classes, classes.split(",") if classes else None)
    model.load_state_dict(load_file(str(weights)))
    return model.eval()


def run_precision(run_dir: str | Path) -> str:
    """The mixed precision a run's last session trained and evaluated in (``no`` before run.json existed).

    Args:
        run_dir: the run directory.
    """
    session = last_session(run_dir)
    return session["mixed_precision"] if session else "no"


def resolve_tta_shift(cfg: Config, tta: bool, tta_shift: int | None) -> int:
    """The shifted-view pixels an evaluation uses: ``tta_shift`` if given, else the run's, and 0 without TTA.

    Args:
        cfg: the run's config.
        tta: whether flip TTA is on.
        tta_shift: the caller's choice, or None for the run's.
    """
    return (cfg.tta_shift if tta_shift is None else tta_shift) if tta else 0


@torch.no_grad()
def test_logits(model: torch.nn.Module, images: torch.Tensor, cfg: Config, tta: bool, batch_size: int | None = None,
                precision: str = "no", tta_shift: int | None = None) -> torch.Tensor:
    """float32 logits (on the CPU) of uint8 ``images`` in batches, on the model's device.

    Args:
        model: a network from ``load_trained``.
        images: uint8 [N, 3, 32, 32].
        cfg: the run's config (memory format, evaluation batch).
        tta: flip test-time augmentation.
        batch_size: images per forward pass (default: the run's ``--eval-batch-size``, the same
            batches as the run's own evaluation, so that kernels and results match exactly).
        precision: ``no``, ``bf16`` or ``fp16`` autocast, as Accelerate names them.
        tta_shift: pixels of the shifted TTA views (default: the run's ``--tta-shift``; only with ``tta``).
    """
    shift = resolve_tta_shift(cfg, tta, tta_shift)
    device = next(model.parameters()).device
    mean, std = torch.tensor(CIFAR10_MEAN, device=device), torch.tensor(CIFAR10_STD, device=device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        return torch.cat([predict_logits(model, b.to(device), mean, std, cfg.channels_last, tta, shift).cpu()
                          for b in images.split(batch_size or cfg.eval_batch_size)])


def evaluate_run(run_dir: str | Path, data: str | None = None, tta: bool | None = None, batch_size: int | None = None,
                 precision: str | None = None, tta_shift: int | None = None, weights: str | Path | None = None) -> dict:
    """Accuracy and loss of a finished run's weights on its test split.

    Args:
        run_dir: a finished run directory.
        data: dataset source (default: the run's ``--data``).
        tta: flip test-time augmentation (default: the run's ``--tta``).
        batch_size: evaluation batch (default: the run's).
        precision: autocast precision (default: the one the run was evaluated in, from run.json).
        tta_shift: pixels of the shifted TTA views (default: the run's ``--tta-shift``).
        weights: another weights file of the run's network, relative to ``run_dir`` or absolute
            (default: the run's ``model.safetensors``).

    Returns:
        ``accuracy``, ``correct``, ``total``, ``loss`` and ``recorded`` (history's last test accuracy,
        if any, and only for the run's own weights).
    """
    run_dir = Path(run_dir)
    cfg = Config.from_dict(read_json(run_dir / "config.json"))
    tta = cfg.tta if tta is None else tta
    shift = resolve_tta_shift(cfg, tta, tta_shift)
    cifar = load_cifar(data or cfg.data, cfg.cache_dir, cfg.train_samples, cfg.test_samples)
    model = load_trained(run_dir, cfg, len(cifar.classes), "cuda" if torch.cuda.is_available() else "cpu", weights)
    precision = precision or run_precision(run_dir)
    logits = test_logits(model, cifar.test.images, cfg, tta, batch_size, precision, shift)
    labels = cifar.test.labels
    preds = logits.argmax(1)
    accuracy = float(load_accuracy_metric().compute(predictions=preds.numpy(), references=labels.numpy())["accuracy"])
    history = read_json(run_dir / "history.json") if (run_dir / "history.json").exists() else []
    return {
        "accuracy": accuracy, "correct": int((preds == labels).sum()), "total": len(labels),
        "loss": float(torch.nn.functional.cross_entropy(logits, labels)), "tta": tta, "tta_shift": shift, "precision": precision,
        # A record made with other weights or TTA settings is not comparable.
        "recorded": history[-1]["test_accuracy"] if history and weights is None and (tta, shift) == (cfg.tta, cfg.tta_shift) else None,
    }


def main(argv: list[str] | None = None, prog: str = "python -m resnet_ocp.evaluate") -> dict:
    """Print the test accuracy of ``RUN_DIR``'s weights and compare it with the record.

    Args:
        argv: command-line arguments (default ``sys.argv[1:]``).
        prog: the command's name in help and errors (``resnet-ocp evaluate`` from the console command).
    """
    parser = OneLineParser(prog=prog, description="The test accuracy of a finished run's saved weights, compared with its record.")
    parser.add_argument("run_dir", help="a finished run directory (with model.safetensors; with --weights, any run directory)")
    parser.add_argument("--data", help="dataset source (default: the run's --data)")
    parser.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None, help="flip TTA (default: the run's setting)")
    parser.add_argument("--tta-shift", type=positive_int, help="with TTA, also the views shifted by this many pixels (default: the run's)")
    parser.add_argument("--precision", choices=("no", "bf16", "fp16"), help="autocast precision (default: the run's, from run.json)")
    parser.add_argument("--weights", help="test this weights file of the run's network instead of its model.safetensors, relative to "
                                          "RUN_DIR or absolute (checkpoints/epoch_NNN/model.safetensors: that epoch's live weights)")
    args = parser.parse_args(argv)
    run_dir = Path(args.run_dir)
    missing = [f for f in ("config.json", args.weights or "model.safetensors") if not (run_dir / f).exists()]
    if missing:
        exit_with(f"{run_dir} lacks {', '.join(missing)}; give a finished run directory written by train.py"
                  + (" and --weights a file in it, or an absolute path" if args.weights else ""))
    try:
        if args.tta_shift and not (args.tta or (args.tta is None and Config.from_dict(read_json(run_dir / "config.json")).tta)):
            raise UserError(f"--tta-shift {args.tta_shift} needs flip TTA: add --tta")
        result = evaluate_run(run_dir, args.data, args.tta, precision=args.precision, tta_shift=args.tta_shift, weights=args.weights)
    except UserError as exc:
        exit_with(exc)
    print(f"Test set: Average loss: {result['loss']:.4f}, Accuracy: {result['correct']}/{result['total']} "
          f"({100 * result['accuracy']:.2f}%){_tta_words(result)}, precision {result['precision']}"
          + (f", weights {args.weights}" if args.weights else ""))
    if result["recorded"] is not None:
        same = abs(result["recorded"] - result["accuracy"]) < 0.5 / result["total"]
        print(f"recorded in history.json: {100 * result['recorded']:.2f}% ({'matches' if same else 'DIFFERS'})")
    return result


def _tta_words(result: dict) -> str:
    if not result["tta"]:
        return ""
    return f" with flip + {result['tta_shift']}-pixel shift TTA" if result["tta_shift"] else " with flip TTA"


if __name__ == "__main__":
    main()
