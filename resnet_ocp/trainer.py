"""A whole run: data, model, LR range test, One-Cycle training, checkpoints and run directory.

Run-directory contract (later commands such as ``report`` rely on it): ``config.json``,
``run.json`` (precision, processes, device and versions of each start or resume),
``history.json``, ``steps.csv``, ``tensorboard/``, ``checkpoints/``, ``model.safetensors``,
``predictions.csv``, ``summary.json`` and, when the range test ran, ``lr_finder.json``.
"""

from __future__ import annotations

import csv
import math
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list, set_seed

from resnet_ocp.augment import epoch_params
from resnet_ocp.checkpoint import (
    atomic_path,
    latest_checkpoint,
    read_json,
    read_steps,
    save_checkpoint,
    write_json,
    write_steps,
)
from resnet_ocp.config import Config
from resnet_ocp.data import CIFAR10_MEAN, CIFAR10_STD, load_cifar, make_loaders
from resnet_ocp.engine import DeviceSplit, evaluate, load_accuracy_metric, recompute_bn_stats, train_one_epoch
from resnet_ocp.launch import RunError, make_accelerator, record_session
from resnet_ocp.model import count_parameters, for_config, summary
from resnet_ocp.schedule import build_one_cycle, build_optimizer, steps_per_epoch

# Training images whose statistics the EMA model's batch norms get before each evaluation: 512 to
# 4,096 all gave 71.3-71.7% at epoch 2 of the proxy (recompute_bn_stats); 1,024 forward passes are 0.7% of an epoch's FLOPs.
EMA_BN_IMAGES = 1024


def _run_dir(accelerator: Accelerator, cfg: Config) -> Path:
    """The run directory, decided on the main process and shared (timestamps differ across processes)."""
    chosen = [cfg.output_dir or time.strftime("runs/%Y%m%d-%H%M%S")]
    broadcast_object_list(chosen)
    run_dir = Path(chosen[0])
    if cfg.resume is None and (run_dir / "config.json").exists():
        raise RunError(f"{run_dir} already holds a run; continue it with --resume {run_dir} or choose another --output-dir")
    if cfg.resume is not None and (run_dir / "model.safetensors").exists():
        raise RunError(f"{run_dir} has finished (model.safetensors exists); start a new run with another --output-dir")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    return run_dir


def run(cfg: Config) -> dict:
    """Train (or resume) one run described by ``cfg`` and return its result.

    Args:
        cfg: the run configuration.

    Returns:
        dict with ``run_dir``, ``config`` (resolved), ``history``, ``max_lr``, and when the
        schedule finished ``final_accuracy``.
    """
    accelerator = make_accelerator(cfg)
    run_dir = _run_dir(accelerator, cfg)
    accelerator.print(f"resnet_ocp run in {run_dir}: {accelerator.num_processes} process(es), {accelerator.distributed_type}, "
                      f"device {accelerator.device}, mixed precision {accelerator.mixed_precision}")
    record_session(accelerator, run_dir)
    with accelerator.main_process_first():
        data = load_cifar(cfg.data, cfg.cache_dir, cfg.train_samples, cfg.test_samples)
    n_train, n_test = len(data.train), len(data.test)
    accelerator.print(f"data: {cfg.data}: {n_train} train / {n_test} test images, classes {data.classes}")
    accelerator.print(f"config:\n{cfg.to_json()}")

    set_seed(cfg.seed)
    model = for_config(cfg, len(data.classes))
    accelerator.print(summary(model))
    accelerator.print(f"trainable parameters: {count_parameters(model):,}")
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)

    device = accelerator.device
    mean, std = torch.tensor(CIFAR10_MEAN, device=device), torch.tensor(CIFAR10_STD, device=device)
    train_split = DeviceSplit(data.train.images.to(device), data.train.labels.to(device), mean, std)
    test_split = DeviceSplit(data.test.images.to(device), data.test.labels.to(device), mean, std)
    per_process = cfg.batch_size // (accelerator.num_processes * cfg.grad_accum)
    train_loader, test_loader = make_loaders(n_train, n_test, per_process, cfg.eval_batch_size, cfg.seed)
    optimizer = build_optimizer(model, cfg)
    model, optimizer, train_loader, test_loader = accelerator.prepare(model, optimizer, train_loader, test_loader)
    per_epoch = steps_per_epoch(n_train, cfg.batch_size)
    if math.ceil(len(train_loader) / cfg.grad_accum) != per_epoch:
        raise RunError(f"the prepared loader gives {len(train_loader)} batches per process, not the {per_epoch} optimizer steps the schedule expects")

    if cfg.max_lr is None or cfg.lr_find_only:
        from resnet_ocp.lr_finder import run_range_test

        found = run_range_test(accelerator, model, optimizer, train_loader, train_split, cfg, run_dir)
        if cfg.lr_find_only:
            accelerator.end_training()
            return {"run_dir": str(run_dir), "config": cfg.to_dict(), "history": [], "max_lr": found.suggested_lr,
                    "lr_finder": found.to_dict()}
        cfg = cfg.replace(max_lr=found.suggested_lr)
        accelerator.print(f"max_lr = {cfg.max_lr:.6g} (from the LR range test; saved in config.json)")
    if accelerator.is_main_process and cfg.resume is None:
        write_json(run_dir / "config.json", cfg.to_dict())

    scheduler = accelerator.prepare(build_one_cycle(optimizer.optimizer, cfg, cfg.max_lr, n_train))
    accelerator.project_configuration.set_directories(str(run_dir))
    accelerator.project_configuration.logging_dir = str(run_dir)
    accelerator.init_trackers("tensorboard", config={k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in cfg.to_dict().items()})

    ema = None
    if cfg.ema > 0:
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        # BN statistics are not averaged (averaged ones scored 32% where the live model scored 70%):
        # they are recomputed for the averaged weights before each evaluation, see recompute_bn_stats.
        ema = AveragedModel(accelerator.unwrap_model(model), multi_avg_fn=get_ema_multi_avg_fn(cfg.ema), use_buffers=False)
        accelerator.register_for_checkpointing(ema)
    history: list[dict] = []
    rows: list[dict] = []
    start_epoch = 1
    if cfg.resume is not None:
        found_ckpt = latest_checkpoint(run_dir)
        if found_ckpt is None:
            # Interrupted inside epoch 1: nothing to restore, the saved config (with its peak LR) starts afresh.
            accelerator.print(f"resuming {run_dir}: no checkpoint yet, starting from epoch 1 with the saved config")
        else:
            done, path = found_ckpt
            accelerator.load_state(str(path))
            start_epoch = done + 1
            history = [h for h in read_json(run_dir / "history.json") if h["epoch"] <= done]
            rows = [r for r in read_steps(run_dir / "steps.csv") if r["epoch"] <= done]
            accelerator.print(f"resumed {run_dir} after epoch {done} (step {len(rows)})")

    metric = load_accuracy_metric()
    test = None
    for epoch in range(start_epoch, cfg.last_epoch + 1):
        accelerator.print(f"Epoch {epoch}/{cfg.epochs}")
        params = epoch_params(n_train, cfg.seed, epoch, cfg.crop_padding, cfg.cutout, cfg.flip).to(device)
        train = train_one_epoch(
            accelerator, model, optimizer, scheduler, train_loader, train_split, params,
            epoch=epoch, step_offset=len(rows), batch_size=cfg.batch_size, padding=cfg.crop_padding,
            cutout_size=cfg.cutout, label_smoothing=cfg.label_smoothing, channels_last=cfg.channels_last,
            log_every=cfg.log_every, progress=cfg.progress, ema=ema,
        )
        eval_start = time.perf_counter()
        with accelerator.autocast():
            if ema is not None:
                recompute_bn_stats(ema.module, train_split, EMA_BN_IMAGES, cfg.eval_batch_size, cfg.channels_last)
            test = evaluate(accelerator, ema.module if ema else model, test_loader, test_split, metric,
                            channels_last=cfg.channels_last, tta=cfg.tta)
        eval_seconds = time.perf_counter() - eval_start
        accelerator.print(
            f"Test set: Average loss: {test['loss']:.4f}, Accuracy: {test['correct']}/{test['total']} ({100 * test['accuracy']:.2f}%)"
        )
        record = {
            "epoch": epoch, "train_loss": train["loss"], "train_accuracy": train["accuracy"],
            "test_loss": test["loss"], "test_accuracy": test["accuracy"], "lr": train["lr"],
            "seconds": train["seconds"] + eval_seconds, "images_per_second": train["images_per_second"],
            "eval_seconds": eval_seconds, "test_samples": int(test["indices"].unique().numel()),
        }
        history.append(record)
        rows += train["rows"]
        accelerator.log({k: v for k, v in record.items() if k != "epoch"}, step=epoch)
        if accelerator.is_main_process:
            write_steps(run_dir / "steps.csv", rows)
            write_json(run_dir / "history.json", history)
        save_checkpoint(accelerator, run_dir, epoch, cfg.keep_checkpoints)

    result = {"run_dir": str(run_dir), "config": cfg.to_dict(), "history": history, "max_lr": cfg.max_lr}
    if cfg.last_epoch < cfg.epochs:
        accelerator.print(f"stopped after epoch {cfg.last_epoch} of {cfg.epochs}; continue with --resume {run_dir}")
    elif test is not None:
        _finish(accelerator, ema.module if ema else model, run_dir, test, data.classes)
        result["final_accuracy"] = test["accuracy"]
        if accelerator.is_main_process:
            from resnet_ocp.report import describe, make_report, summarize

            accelerator.print(describe(summarize(history)))

            # The last evaluation's predictions, not a second pass over the test set (66 s on this CPU in fp32).
            order = test["indices"].argsort()
            pictures = make_report(run_dir, data=data, predictions=(test["predictions"][order], test["confidences"][order]))
            accelerator.print("pictures: " + ", ".join(p.name for p in pictures))
            _log_picture(accelerator, run_dir / "misclassified.png", cfg.epochs)
        accelerator.wait_for_everyone()
    accelerator.end_training()
    return result


def _log_picture(accelerator: Accelerator, path: Path, step: int) -> None:
    """Put a PNG into TensorBoard's Images tab (main process)."""
    import numpy as np
    from PIL import Image

    with Image.open(path) as img:
        pixels = np.asarray(img.convert("RGB"))
    accelerator.get_tracker("tensorboard").writer.add_image(path.stem, pixels, step, dataformats="HWC")


def _finish(accelerator: Accelerator, model, run_dir: Path, test: dict, classes: list[str]) -> None:
    """Write the final weights and the per-sample test predictions (main process, atomically)."""
    from safetensors.torch import save_file

    state = accelerator.get_state_dict(model)
    if accelerator.is_main_process:
        with atomic_path(run_dir / "predictions.csv") as tmp, open(tmp, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["index", "label", "prediction", "confidence"])
            order = test["indices"].argsort().tolist()
            columns = [test[k][order].tolist() for k in ("indices", "labels", "predictions", "confidences")]
            for index, label, pred, conf in zip(*columns):
                writer.writerow([index, label, pred, f"{conf:.6f}"])
        with atomic_path(run_dir / "model.safetensors") as tmp:
            save_file({k: v.contiguous() for k, v in state.items()}, tmp, metadata={"classes": ",".join(classes)})
    accelerator.wait_for_everyone()
