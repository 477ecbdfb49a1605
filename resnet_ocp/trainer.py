"""A whole run as a list of named phases: start, data, parts, peak LR, schedule, resume,
epochs, finish. ``run`` reads as that list; each phase is a function that can be called and
tested on its own (the last, ``finish``, lives in ``resnet_ocp.finish``). The run directory's
files are described in ``resnet_ocp.rundir``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed

from resnet_ocp.atomic import read_json, write_json
from resnet_ocp.augment import normalize
from resnet_ocp.checkpoint import load_newest_good_checkpoint, save_checkpoint
from resnet_ocp.config import Config
from resnet_ocp.data import CIFAR10_MEAN, CIFAR10_STD, Cifar, load_cifar, make_loaders
from resnet_ocp.engine import EpochPosition, TrainingParts, evaluate_parts, train_one_epoch
from resnet_ocp.errors import RunError
from resnet_ocp.finish import finish
from resnet_ocp.inference import DeviceSplit, load_accuracy_metric
from resnet_ocp.lookahead import Lookahead
from resnet_ocp.lr_finder import LRFinderError, RangeTestResult, agreed_range_test
from resnet_ocp.model import count_parameters, for_config, summary
from resnet_ocp.preemption import PREEMPTED_FILE, StopRequest, stop_diverged, stop_inside_epoch
from resnet_ocp.rundir import open_run_dir, read_steps, write_steps
from resnet_ocp.schedule import build_one_cycle, build_optimizer, steps_per_epoch
from resnet_ocp.session import make_accelerator, record_session
from resnet_ocp.whitening import FIT_IMAGES


@dataclass
class Progress:
    """What a run has done so far: epoch records (history.json), step rows (steps.csv) of the
    finished epochs, and where a stopped epoch is to continue (``partial``)."""

    epochs_done: int = 0
    history: list[dict] = field(default_factory=list)
    rows: list[dict] = field(default_factory=list)
    partial: EpochPosition | None = None


def run(cfg: Config) -> dict:
    """Train (or resume) one run described by ``cfg`` and return its result.

    Args:
        cfg: the run configuration (``max_lr`` None: the LR range test chooses it).

    Returns:
        dict with ``run_dir``, ``config`` (resolved), ``history``, ``max_lr``, and when the
        schedule finished ``final_accuracy``; with ``--lr-find-only`` also ``lr_finder``.
    """
    accelerator = make_accelerator(cfg)
    with open_run_dir(accelerator, cfg.output_dir, resuming=cfg.resume is not None) as run_dir:
        start_session(accelerator, run_dir)
        data = load_data(accelerator, cfg)
        save_config(accelerator, cfg, run_dir)
        parts = build_parts(accelerator, cfg, data)
        if cfg.lr_find_only:
            found = find_peak_lr(parts, cfg, run_dir)
            accelerator.end_training()
            return {"run_dir": str(run_dir), "config": cfg.to_dict(), "history": [], "max_lr": found.suggested_lr, "lr_finder": found.to_dict()}
        resolved = cfg if cfg.max_lr is not None else cfg.replace(max_lr=find_peak_lr(parts, cfg, run_dir).suggested_lr)
        save_config(accelerator, resolved, run_dir)
        attach_schedule(parts, resolved, run_dir)
        progress = restore(parts, resolved, run_dir)
        metric = load_accuracy_metric()
        test = None
        with StopRequest(accelerator) as parts.stop:
            for epoch in range(progress.epochs_done + 1, resolved.stop_epoch + 1):
                test = run_epoch(parts, resolved, epoch, progress, metric, run_dir)
        result = {"run_dir": str(run_dir), "config": resolved.to_dict(), "history": progress.history, "max_lr": resolved.max_lr}
        if resolved.stop_epoch < resolved.epochs:
            accelerator.print(f"stopped after epoch {resolved.stop_epoch} of {resolved.epochs}; continue with --resume {run_dir}")
        else:
            if test is None:  # resumed after the last epoch's checkpoint: only the final writes were missing
                accelerator.print(f"all {resolved.epochs} epochs were done; evaluating the last checkpoint to finish the run")
                test, _ = evaluate_parts(parts, resolved, metric)
            finish(parts, resolved, run_dir, test, data, progress.history)
            result["final_accuracy"] = test["accuracy"]
        accelerator.end_training()
        return result


def start_session(accelerator: Accelerator, run_dir: Path) -> None:
    """Say where the run goes and on what, and append this session to run.json.

    Args:
        accelerator: the run's Accelerator.
        run_dir: the run directory.
    """
    session = record_session(accelerator, run_dir)
    accelerator.print(f"resnet_ocp run in {run_dir}: {accelerator.num_processes} process(es) on {', '.join(session['machines'])}, "
                      f"{accelerator.distributed_type}, device {accelerator.device}, mixed precision {accelerator.mixed_precision}")


def load_data(accelerator: Accelerator, cfg: Config) -> Cifar:
    """Load (on the main process first, which fills the decoded cache) and describe the data.

    Args:
        accelerator: the run's Accelerator.
        cfg: the run configuration (source, cache, subsets).
    """
    with accelerator.main_process_first():
        data = load_cifar(cfg.data, cfg.cache_dir, cfg.train_samples, cfg.test_samples)
    accelerator.print(f"data: {cfg.data}: {len(data.train)} train / {len(data.test)} test images, classes {data.classes}")
    accelerator.print(f"config:\n{cfg.to_json()}")
    return data


def build_parts(accelerator: Accelerator, cfg: Config, data: Cifar) -> TrainingParts:
    """The seeded model, optimizer, device-resident splits and index loaders, prepared by Accelerate.

    Args:
        accelerator: the run's Accelerator.
        cfg: the run configuration.
        data: the loaded splits.
    """
    set_seed(cfg.seed)
    model = for_config(cfg, len(data.classes))
    accelerator.print(summary(model))
    accelerator.print(f"trainable parameters: {count_parameters(model):,}")
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    device = accelerator.device
    mean, std = torch.tensor(CIFAR10_MEAN, device=device), torch.tensor(CIFAR10_STD, device=device)
    train_split = DeviceSplit(data.train.images.to(device), data.train.labels.to(device), mean, std)
    if model.whitening is not None:
        model.whitening.fit(normalize(train_split.images[:FIT_IMAGES], mean, std))
    test_split = DeviceSplit(data.test.images.to(device), data.test.labels.to(device), mean, std)
    per_process = cfg.batch_size // (accelerator.num_processes * cfg.grad_accum)
    train_loader, test_loader = make_loaders(len(data.train), len(data.test), per_process, cfg.eval_batch_size, cfg.seed)
    optimizer = build_optimizer(model, cfg)
    model, optimizer, train_loader, test_loader = accelerator.prepare(model, optimizer, train_loader, test_loader)
    per_epoch = steps_per_epoch(len(data.train), cfg.batch_size)
    if -(-len(train_loader) // cfg.grad_accum) != per_epoch:
        raise RunError(f"the prepared loader gives {len(train_loader)} batches per process, not the {per_epoch} optimizer steps the schedule expects")
    return TrainingParts(accelerator, model, optimizer, train_loader, test_loader, train_split, test_split)


def find_peak_lr(parts: TrainingParts, cfg: Config, run_dir: Path) -> RangeTestResult:
    """Run the LR range test, write ``lr_finder.json`` and ``lr_finder.png``, and return its
    result; raise ``LRFinderError`` (after writing the files) when it suggests nothing.

    Args:
        parts: the prepared training objects (no scheduler yet).
        cfg: the run configuration.
        run_dir: the run directory.
    """
    accelerator = parts.accelerator
    found = agreed_range_test(parts, cfg)
    if accelerator.is_main_process:
        from resnet_ocp.plots import plot_lr_finder

        write_json(run_dir / "lr_finder.json", found.to_dict())
        plot_lr_finder(found.to_dict(), run_dir / "lr_finder.png")
    accelerator.wait_for_everyone()
    if found.suggested_lr is None:
        raise LRFinderError(f"LR range test gave no suggestion: {found.message}; or pass --max-lr explicitly")
    accelerator.print(f"Suggested max LR: {found.suggested_lr:.6g} ({found.message})")
    if cfg.max_lr is None and not cfg.lr_find_only:
        accelerator.print(f"max_lr = {found.suggested_lr:.6g} (from the LR range test; saved in config.json)")
    return found


def save_config(accelerator: Accelerator, cfg: Config, run_dir: Path) -> None:
    """Write config.json for a new run as soon as its data has loaded (a bad --data leaves no
    run behind), and again once the range test has chosen the peak LR: a run killed during the
    range test resumes with ``max_lr`` null and runs the test again. ``--lr-find-only`` writes none.

    Args:
        accelerator: the run's Accelerator.
        cfg: the configuration to save.
        run_dir: the run directory.
    """
    path = run_dir / "config.json"
    peak_lr_found = cfg.resume is not None and cfg.max_lr is not None and read_json(path)["max_lr"] is None
    if accelerator.is_main_process and not cfg.lr_find_only and (cfg.resume is None or peak_lr_found):
        write_json(path, cfg.replace(resume=None).to_dict())


def attach_schedule(parts: TrainingParts, cfg: Config, run_dir: Path) -> None:
    """Give the parts their OneCycleLR, the TensorBoard tracker and the weight averages (``--ema``, ``--lookahead``).

    Args:
        parts: the prepared training objects; ``scheduler``, ``ema`` and ``lookahead`` are set here.
        cfg: the resolved configuration (``max_lr`` set).
        run_dir: the run directory (TensorBoard logs go to ``run_dir/tensorboard``).
    """
    accelerator = parts.accelerator
    n_train = len(parts.train_split.labels)
    parts.scheduler = accelerator.prepare(build_one_cycle(parts.optimizer.optimizer, cfg, cfg.max_lr, n_train))
    accelerator.project_configuration.set_directories(str(run_dir))
    accelerator.project_configuration.logging_dir = str(run_dir)
    hparams = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in cfg.to_dict().items()}
    accelerator.init_trackers("tensorboard", config=hparams)
    attach_averages(parts, cfg, cfg.epochs * steps_per_epoch(n_train, cfg.batch_size))


def attach_averages(parts: TrainingParts, cfg: Config, total_steps: int) -> None:
    """Give the parts the weight averages the configuration asks for (``--ema``, ``--lookahead``).

    Args:
        parts: the prepared training objects; ``ema`` and ``lookahead`` are set here.
        cfg: the configuration.
        total_steps: optimizer steps of the whole run (Lookahead's schedule).
    """
    model = parts.accelerator.unwrap_model(parts.model)
    if cfg.ema > 0:
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        # BN statistics are not averaged (averaged ones scored 32% where the live model scored 70%):
        # they are recomputed for the averaged weights before each evaluation, see recompute_bn_stats.
        parts.ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema), use_buffers=False)
    if cfg.lookahead:
        parts.lookahead = Lookahead(model, total_steps)


def restore(parts: TrainingParts, cfg: Config, run_dir: Path) -> Progress:
    """For ``--resume``, load the newest complete checkpoint and the records up to it.

    Args:
        parts: the prepared training objects with their scheduler (and EMA).
        cfg: the resolved configuration.
        run_dir: the run directory.

    Returns:
        The progress to continue from (nothing done for a new run or one without checkpoints).
    """
    accelerator = parts.accelerator
    if cfg.resume is None:
        return Progress()
    if accelerator.is_main_process:
        (run_dir / PREEMPTED_FILE).unlink(missing_ok=True)
    found = load_newest_good_checkpoint(accelerator, run_dir, parts.averages)
    if found is None:
        # Interrupted inside epoch 1: nothing to restore, the saved config (with its peak LR) starts afresh.
        accelerator.print(f"resuming {run_dir}: no checkpoint yet, starting from epoch 1 with the saved config")
        return Progress()
    position = found.position()
    done = found.epoch if position is None else found.epoch - 1
    history = [h for h in read_json(run_dir / "history.json") if h["epoch"] <= done] if done else []
    rows = [r for r in read_steps(run_dir / "steps.csv") if r["epoch"] <= done] if done else []
    partial = EpochPosition.from_dict(position) if position is not None else None
    where = f"epoch {done}" if partial is None else f"step {partial.steps} of epoch {found.epoch}"
    accelerator.print(f"resumed {run_dir} after {where} (step {len(rows) + (partial.steps if partial else 0)} of the run)")
    return Progress(done, history, rows, partial)


def run_epoch(parts: TrainingParts, cfg: Config, epoch: int, progress: Progress, metric, run_dir: Path) -> dict:
    """Train one epoch, test, record it (history, steps, TensorBoard) and checkpoint.

    Args:
        parts: the prepared training objects with their scheduler.
        cfg: the resolved configuration.
        epoch: the 1-based epoch to run.
        progress: the run's records so far; this epoch's are appended.
        metric: the ``evaluate`` accuracy metric.
        run_dir: the run directory.

    Returns:
        The epoch's test result (``inference.evaluate``).
    """
    accelerator = parts.accelerator
    accelerator.print(f"Epoch {epoch}/{cfg.epochs}")
    start, progress.partial = progress.partial, None
    train = train_one_epoch(parts, cfg, epoch, step_offset=len(progress.rows), start=start)
    if train.get("stopped"):
        stop_inside_epoch(parts, cfg, epoch, train["position"], progress.rows, run_dir)
    if train.get("diverged"):
        stop_diverged(accelerator, run_dir, progress.rows + train["rows"])
    test, eval_seconds = evaluate_parts(parts, cfg, metric)
    accelerator.print(f"Test set: Average loss: {test['loss']:.4f}, Accuracy: {test['correct']}/{test['total']} ({100 * test['accuracy']:.2f}%)")
    record = {
        "epoch": epoch, "train_loss": train["loss"], "train_accuracy": train["accuracy"],
        "test_loss": test["loss"], "test_accuracy": test["accuracy"], "lr": train["lr"],
        "seconds": train["seconds"] + eval_seconds, "images_per_second": train["images_per_second"],
        "eval_seconds": eval_seconds, "train_samples": train["samples"], "test_samples": test["total"],
    }
    progress.history.append(record)
    progress.rows += train["rows"]
    progress.epochs_done = epoch
    accelerator.log({k: v for k, v in record.items() if k != "epoch"}, step=epoch)
    if accelerator.is_main_process:
        write_steps(run_dir / "steps.csv", progress.rows)
        write_json(run_dir / "history.json", progress.history)
    save_checkpoint(accelerator, run_dir, epoch, cfg.keep_checkpoints, averages=parts.averages)
    return test
