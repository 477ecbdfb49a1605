"""Timing training steps for benchmarks/throughput.py: the bare step (a), ours (b) and the textbook
loop (c) as objects with ``warm_up``/``run``, run interleaved for several rounds, and the check that
the ceiling was not beaten beyond its spread (the bare step's profile: step_profile.py).

Why interleaved and repeated: on 2 shared AVX2 cores one step of batch 512 varied by +-18% from
step to step, and the first steps of a process are slow (docs/performance.md), so a single
(a)-then-(b) measurement measured the order, not the step.
"""

from __future__ import annotations

import statistics
import time

import torch
import torch.nn.functional as F


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on the CPU, whose ops return when done)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class BareStep:
    """(a) the ceiling: forward+backward+Adam on a fixed device-resident batch, no input pipeline.

    Args:
        accelerator: the run's Accelerator (precision, device, wrappers as for (b)).
        cfg: configuration (batch size, width, optimizer).
    """

    label = "a"

    def __init__(self, accelerator, cfg):
        from resnet_ocp.model import CustomResNet, NetworkConfig
        from resnet_ocp.schedule import build_optimizer

        self.accelerator, self.batch = accelerator, cfg.batch_size
        model = CustomResNet(NetworkConfig(width=cfg.width)).to(memory_format=torch.channels_last)
        self.model, self.opt = accelerator.prepare(model, build_optimizer(model, cfg, lr=1e-3))
        dev = accelerator.device
        self.x = torch.randn(cfg.batch_size, 3, 32, 32, device=dev).contiguous(memory_format=torch.channels_last)
        self.y = torch.randint(0, 10, (cfg.batch_size,), device=dev)

    def step(self) -> None:
        """One training step (named phases, so that ``--profile`` can attribute the optimizer)."""
        with torch.profiler.record_function("bench::forward_backward"):
            loss = F.cross_entropy(self.model(self.x).float(), self.y)
            self.accelerator.backward(loss)
        with torch.profiler.record_function("bench::optimizer"):
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)

    def warm_up(self, steps: int) -> None:
        """Run ``steps`` untimed steps."""
        for _ in range(steps):
            self.step()
        sync(self.accelerator.device)

    def run(self, steps: int) -> float:
        """img/s of ``steps`` timed steps."""
        sync(self.accelerator.device)
        start = time.perf_counter()
        for _ in range(steps):
            self.step()
        sync(self.accelerator.device)
        return steps * self.batch / (time.perf_counter() - start)


class OurStep:
    """(b) the real step: ``engine.train_one_epoch`` (cached images, index loader, device
    augmentation, Accelerate-prepared model/optimizer/scheduler, the weight averages) of the
    network ``cfg`` describes; one timed epoch of ``steps`` batches per call.

    Args:
        accelerator: the run's Accelerator.
        cfg: configuration (batch size, network, optimizer, augmentation, averages).
        data: the loaded CIFAR-10 splits.
        steps: batches of one timed epoch.
        warmup: batches of the warm-up epoch.
        rounds: timed epochs that will be run (sizes the One-Cycle schedule, which refuses to
            step past its end).
        label: the measurement's name in the results.
    """

    def __init__(self, accelerator, cfg, data, steps: int, warmup: int, rounds: int, label: str = "b"):
        from resnet_ocp.augment import normalize
        from resnet_ocp.data import CIFAR10_MEAN, CIFAR10_STD, make_loaders
        from resnet_ocp.engine import TrainingParts
        from resnet_ocp.inference import DeviceSplit
        from resnet_ocp.model import for_config
        from resnet_ocp.schedule import build_one_cycle, build_optimizer
        from resnet_ocp.trainer import attach_averages
        from resnet_ocp.whitening import FIT_IMAGES

        self.cfg, self.epoch, self.label = cfg, 0, label
        per_process = cfg.batch_size // accelerator.num_processes
        n = max(steps, warmup, 1) * cfg.batch_size
        dev = accelerator.device
        split = DeviceSplit(data.train.images[:n].to(dev), data.train.labels[:n].to(dev),
                            torch.tensor(CIFAR10_MEAN, device=dev), torch.tensor(CIFAR10_STD, device=dev))
        model = for_config(cfg, 10).to(memory_format=torch.channels_last)
        if model.whitening is not None:
            model.whitening.fit(normalize(split.images[:FIT_IMAGES], split.mean, split.std))
        opt = build_optimizer(model, cfg)
        timed, _ = make_loaders(steps * cfg.batch_size, 10, per_process, 10, cfg.seed)
        warm, _ = make_loaders(max(warmup, 1) * cfg.batch_size, 10, per_process, 10, cfg.seed)
        model, opt, timed, warm = accelerator.prepare(model, opt, timed, warm)
        # Enough schedule for the warm-up epoch plus every timed epoch, each at most `steps` steps.
        epochs = rounds + max(warmup, 1) + 2
        sched = accelerator.prepare(build_one_cycle(opt.optimizer, cfg.replace(epochs=epochs, peak_epoch=epochs / 2), 1e-3,
                                                    steps * cfg.batch_size))
        self.parts = TrainingParts(accelerator, model, opt, timed, timed, split, split, scheduler=sched)
        attach_averages(self.parts, cfg, epochs * steps)
        self.warm_parts = TrainingParts(accelerator, model, opt, warm, warm, split, split, scheduler=sched,
                                        ema=self.parts.ema, lookahead=self.parts.lookahead)
        self.steps_done = 0

    def _epoch(self, parts) -> dict:
        from resnet_ocp.engine import train_one_epoch

        self.epoch += 1
        result = train_one_epoch(parts, self.cfg, self.epoch, step_offset=self.steps_done)
        self.steps_done += len(result["rows"])
        return result

    def warm_up(self, steps: int) -> None:
        """One untimed epoch of ``steps`` batches (the ``warmup`` given at construction)."""
        if steps:
            self._epoch(self.warm_parts)

    def run(self, steps: int) -> float:
        """img/s of one timed epoch (its ``steps`` batches were fixed at construction)."""
        return self._epoch(self.parts)["images_per_second"]


class _TextbookSet(torch.utils.data.Dataset):
    """The tutorial pipeline: a PIL image per sample through torchvision transforms."""

    def __init__(self, images, labels):
        import torchvision.transforms as T

        self.images, self.labels = images.permute(0, 2, 3, 1).numpy(), labels
        self.tf = T.Compose([
            T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
            T.Normalize((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
            T.RandomErasing(p=1.0, scale=(64 / 1024, 64 / 1024), ratio=(1.0, 1.0), value=0),  # Cutout 8x8
        ])

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        from PIL import Image

        return self.tf(Image.fromarray(self.images[i])), int(self.labels[i])


def textbook_loader(data, n: int, batch: int, workers: int, persistent: bool = True):
    """The tutorial DataLoader over the first ``n`` training images.

    Args:
        data: the loaded CIFAR-10 splits.
        n: images.
        batch: batch size.
        workers: worker processes.
        persistent: keep the workers between passes.
    """
    return torch.utils.data.DataLoader(_TextbookSet(data.train.images[:n], data.train.labels[:n]), batch_size=batch, shuffle=True,
                                       num_workers=workers, persistent_workers=persistent and workers > 0, drop_last=True)


class TextbookStep:
    """(c) the fp32 tutorial loop: DataLoader workers + per-sample transforms, plain memory format.

    Each call starts the loader afresh and takes its first batch untimed (worker start-up), so
    no worker is left prefetching while (a) and (b) are timed.

    Args:
        cfg: configuration (batch size, width).
        data: the loaded CIFAR-10 splits.
        steps: timed batches per call.
        workers: DataLoader workers.
    """

    label = "c"

    def __init__(self, cfg, data, steps: int, workers: int):
        from resnet_ocp.model import CustomResNet, NetworkConfig

        self.batch = cfg.batch_size
        self.model = CustomResNet(NetworkConfig(width=cfg.width))
        self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-3)
        self.loader = textbook_loader(data, (steps + 1) * cfg.batch_size, cfg.batch_size, workers, persistent=False)

    def _train(self, x, y) -> None:
        loss = F.cross_entropy(self.model(x), y)
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)

    def warm_up(self, steps: int) -> None:
        """``steps`` untimed training steps on the loader's batches."""
        done = 0
        while done < steps:
            for x, y in self.loader:
                self._train(x, y)
                done += 1
                if done == steps:
                    break

    def run(self, steps: int) -> float:
        """img/s of ``steps`` timed steps after the loader's first (untimed) batch."""
        batches = iter(self.loader)
        next(batches)
        start = time.perf_counter()
        for _ in range(steps):
            self._train(*next(batches))
        rate = steps * self.batch / (time.perf_counter() - start)
        del batches  # shuts the workers down before the next measurement
        return rate


def interleave(measurements: list, steps: int, warmup: int, repeats: int) -> tuple[dict[str, list[float]], list[str]]:
    """Warm each measurement up by the same ``warmup`` steps, then run them in turn, ``repeats``
    rounds of a, b, c, a, b, c, ...: a drift of the machine (another process, heat, the
    allocator growing) then lands on every measurement alike instead of on whichever ran last.

    Args:
        measurements: objects with ``label``, ``warm_up(steps)`` and ``run(steps) -> img/s``.
        steps: timed steps per run.
        warmup: untimed steps each measurement gets before its first run.
        repeats: rounds.

    Returns:
        img/s of every run by label, and the labels in the order they ran.
    """
    for m in measurements:
        m.warm_up(warmup)
    rates: dict[str, list[float]] = {m.label: [] for m in measurements}
    order: list[str] = []
    for _ in range(repeats):
        for m in measurements:
            rates[m.label].append(m.run(steps))
            order.append(m.label)
    return rates, order


def ceiling_warning(bare_runs: list[float], our_runs: list[float]) -> str | None:
    """The warning line when the ceiling (a) is beaten beyond its spread (the median of (b) above
    the fastest run of (a)), else None: within the spread the difference is noise, not a result.

    Args:
        bare_runs: img/s of every run of (a).
        our_runs: img/s of every run of (b).
    """
    ours, top = statistics.median(our_runs), max(bare_runs)
    if ours <= top:
        return None
    return (f"WARNING: the ceiling is beaten beyond its spread: median (b) {ours:.1f} img/s > fastest (a) {top:.1f} img/s, "
            "so (a) is no ceiling on this run; check the load average in the record and measure again on an idle machine")
