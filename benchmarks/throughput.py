"""Training throughput against its ceiling and against the textbook pipeline, side by side.

(a) ceiling: the bare training step (forward, backward, Adam) on tensors already on the device;
(b) ours: the real training step: cached `datasets` images, our index loader, batched device
    augmentation, Accelerate-prepared model/optimizer/scheduler (``engine.train_one_epoch``);
(c) textbook: per-sample PIL/torchvision transforms (pad+crop, flip, ToTensor, Normalize,
    cutout) in a DataLoader with workers, fp32, contiguous memory;
(d) the input pipelines alone, no model: ours against the textbook loader;
(e) the physical limit: FLOPs of one image's training step (counted by torch's FlopCounterMode)
    and the machine's measured matrix-multiply rate in the run's precision, so the seconds per
    epoch the hardware allows and the fraction of it (a) and (b) reach.

(a), (b) and (c) get the same ``--warmup`` untimed steps, then run interleaved, a, b, c, a, b,
c, ... for ``--repeats`` rounds: each is reported as the median and range of its runs, so a
drift of the machine lands on all three alike. A single (a)-then-(b) measurement is not a
ceiling: on 2 shared AVX2 cores one step of batch 512 varied by +-18% from step to step (17.8-25.5 s) while
another process ran, more than any difference between (a) and (b) (docs/performance.md). When
the median of (b) still beats the fastest (a), a WARNING line says so. ``--profile`` adds the
share of the bare step's time by operator category (torch.profiler).

Prints img/s, peak memory and the ratios (b)/(a), (b)/(c), (d) ours/textbook, and appends one
JSON line with every run, the medians, the command, the CPU, threads, precision and versions
to ``benchmarks/results.jsonl``.

    accelerate launch --config_file accelerate_configs/cpu.yaml benchmarks/throughput.py --data ../shared/data/cifar10 --profile
    accelerate launch --config_file accelerate_configs/cpu_fp32.yaml benchmarks/throughput.py --data ../shared/data/cifar10 \\
        --batch-size 512 --steps 2 --repeats 3 --warmup 1
    python benchmarks/throughput.py --quick --data ../shared/data/cifar10      # 2 steps x 2 rounds, 1 warm-up step
    accelerate launch --config_file accelerate_configs/cpu.yaml benchmarks/throughput.py --data ../shared/data/cifar10 --compile
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from resnet_ocp.errors import OneLineParser, UserError, exit_with, positive_int

RESULTS = Path(__file__).with_name("results.jsonl")


def _peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _sync(device: torch.device) -> None:
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
        from resnet_ocp.model import CustomResNet
        from resnet_ocp.schedule import build_optimizer

        self.accelerator, self.batch = accelerator, cfg.batch_size
        model = CustomResNet(width=cfg.width).to(memory_format=torch.channels_last)
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
        _sync(self.accelerator.device)

    def run(self, steps: int) -> float:
        """img/s of ``steps`` timed steps."""
        _sync(self.accelerator.device)
        start = time.perf_counter()
        for _ in range(steps):
            self.step()
        _sync(self.accelerator.device)
        return steps * self.batch / (time.perf_counter() - start)


class OurStep:
    """(b) the real step: ``engine.train_one_epoch`` (cached images, index loader, device
    augmentation, Accelerate-prepared model/optimizer/scheduler); one timed epoch of ``steps``
    batches per call.

    Args:
        accelerator: the run's Accelerator.
        cfg: configuration (batch size, width, optimizer, augmentation).
        data: the loaded CIFAR-10 splits.
        steps: batches of one timed epoch.
        warmup: batches of the warm-up epoch.
        rounds: timed epochs that will be run (sizes the One-Cycle schedule, which refuses to
            step past its end).
    """

    label = "b"

    def __init__(self, accelerator, cfg, data, steps: int, warmup: int, rounds: int):
        from resnet_ocp.data import CIFAR10_MEAN, CIFAR10_STD, make_loaders
        from resnet_ocp.engine import DeviceSplit, TrainingParts
        from resnet_ocp.model import CustomResNet
        from resnet_ocp.schedule import build_one_cycle, build_optimizer

        self.cfg, self.epoch = cfg, 0
        per_process = cfg.batch_size // accelerator.num_processes
        n = max(steps, warmup, 1) * cfg.batch_size
        dev = accelerator.device
        split = DeviceSplit(data.train.images[:n].to(dev), data.train.labels[:n].to(dev),
                            torch.tensor(CIFAR10_MEAN, device=dev), torch.tensor(CIFAR10_STD, device=dev))
        model = CustomResNet(width=cfg.width).to(memory_format=torch.channels_last)
        opt = build_optimizer(model, cfg)
        timed, _ = make_loaders(steps * cfg.batch_size, 10, per_process, 10, cfg.seed)
        warm, _ = make_loaders(max(warmup, 1) * cfg.batch_size, 10, per_process, 10, cfg.seed)
        model, opt, timed, warm = accelerator.prepare(model, opt, timed, warm)
        # Enough schedule for the warm-up epoch plus every timed epoch, each at most `steps` steps.
        epochs = rounds + max(warmup, 1) + 2
        sched = accelerator.prepare(build_one_cycle(opt.optimizer, cfg.replace(epochs=epochs, peak_epoch=epochs / 2), 1e-3,
                                                    steps * cfg.batch_size))
        self.parts = TrainingParts(accelerator, model, opt, timed, timed, split, split, scheduler=sched)
        self.warm_parts = TrainingParts(accelerator, model, opt, warm, warm, split, split, scheduler=sched)
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
        from resnet_ocp.model import CustomResNet

        self.batch = cfg.batch_size
        self.model = CustomResNet(width=cfg.width)
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


CATEGORIES = ("conv_matmul", "batch_norm", "elementwise_pool", "optimizer", "other")
_CONV = ("conv", "mm", "matmul", "linear", "gemm")
_ELEMENTWISE = ("relu", "threshold", "pool", "add", "mul", "div", "sub", "copy", "fill", "zero", "clone", "softmax",
                "nll", "cross_entropy", "where", "sum", "mean", "neg", "sqrt", "exp", "cat", "clamp", "max", "masked")


def categorize(name: str, in_optimizer: bool) -> str:
    """The category of an operator's own time: everything under the optimizer region is
    ``optimizer``; otherwise convolution/matrix-multiply kernels, batch norm, activations, pooling
    and other element-wise ops, or ``other`` (views, allocation, autograd bookkeeping).

    Args:
        name: the profiler event's name (e.g. ``aten::mkldnn_convolution``).
        in_optimizer: whether the event runs inside ``bench::optimizer``.
    """
    if in_optimizer:
        return "optimizer"
    low = name.lower().removeprefix("aten::")
    if low.startswith(("autograd::", "bench::", "profiler")) or low in ("empty", "empty_strided", "as_strided", "view", "t", "transpose"):
        return "other"
    if "batch_norm" in low:
        return "batch_norm"
    if any(k in low for k in _CONV):
        return "conv_matmul"
    if any(k in low for k in _ELEMENTWISE):
        return "elementwise_pool"
    return "other"


def profile_shares(step: BareStep, steps: int) -> dict:
    """Share of the bare step's time by category, from torch.profiler's self CPU time of every
    operator over ``steps`` steps (the shares partition that total, so they sum to 1).

    Args:
        step: a warmed-up (a) measurement.
        steps: profiled steps.
    """
    from torch.profiler import ProfilerActivity, profile

    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step.step()
    wall = time.perf_counter() - start
    totals = dict.fromkeys(CATEGORIES, 0.0)
    for event in prof.events():
        parent, in_opt = event, False
        while parent is not None:
            if parent.name == "bench::optimizer":
                in_opt = True
                break
            parent = parent.cpu_parent
        totals[categorize(event.name, in_opt)] += event.self_cpu_time_total
    total = sum(totals.values())
    return {"steps": steps, "wall_s_per_step": wall / steps, "self_cpu_s_per_step": total / 1e6 / steps,
            "shares": {k: v / total for k, v in totals.items()}}


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


def train_gflop_per_image(width: int) -> float:
    """GFLOP of forward + backward of one image (a multiply-add counts 2), from FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    from resnet_ocp.model import CustomResNet

    model = CustomResNet(width=width)
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([0, 1])
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(x), y).backward()
    return counter.get_total_flops() / 2 / 1e9


def matmul_gflop_s(device: torch.device, dtype: torch.dtype, n: int, reps: int = 3) -> float:
    """GFLOP/s of an n x n matrix multiply in ``dtype``: the practical compute ceiling of the device
    (convolutions run as such GEMMs in oneDNN/cuDNN, so a step cannot beat it)."""
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    a @ b  # warm-up
    _sync(device)
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    _sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - start) / 1e9


def pipelines_alone(accelerator, cfg, data, n: int, workers: int) -> tuple[float, float]:
    """(d) img/s of the input pipelines with no model: ours on the device vs the textbook loader."""
    from resnet_ocp.augment import augment_batch, epoch_params
    from resnet_ocp.data import CIFAR10_MEAN, CIFAR10_STD, make_loaders

    dev = accelerator.device
    images, mean, std = data.train.images[:n].to(dev), torch.tensor(CIFAR10_MEAN, device=dev), torch.tensor(CIFAR10_STD, device=dev)
    loader, _ = make_loaders(n, 10, cfg.batch_size, 10, 0)
    params = epoch_params(n, 0, 1).to(dev)
    for _ in range(2):  # first pass warms up
        _sync(dev)
        start = time.perf_counter()
        for idx in loader:
            idx = idx.to(dev)
            augment_batch(images[idx], params[idx], mean, std, 4, 8).contiguous(memory_format=torch.channels_last)
        _sync(dev)
        ours = n / (time.perf_counter() - start)
    loader = textbook_loader(data, n + cfg.batch_size, cfg.batch_size, workers)
    for i, _batch in enumerate(loader):
        if i == 1:
            start = time.perf_counter()
    textbook = (len(loader) - 1) * cfg.batch_size / (time.perf_counter() - start)
    return ours, textbook


def main(argv: list[str] | None = None) -> dict:
    """Run the measurements and append them to ``benchmarks/results.jsonl``.

    Args:
        argv: command-line arguments (default ``sys.argv[1:]``).
    """
    parser = OneLineParser(prog="benchmarks/throughput.py", description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="uoft-cs/cifar10", help="Hub id or local parquet directory (offline: e.g. ../shared/data/cifar10)")
    parser.add_argument("--steps", type=positive_int, default=10, help="timed training steps per run of (a), (b), (c)")
    parser.add_argument("--repeats", type=positive_int, default=3, help="interleaved rounds a, b, c; each figure is the median over them")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps every measurement gets before its first run")
    parser.add_argument("--batch-size", type=positive_int, default=512)
    parser.add_argument("--width", type=positive_int, default=64)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of the textbook pipeline")
    parser.add_argument("--quick", action="store_true", help="2 timed steps, 2 rounds, 1 warm-up step: about 3 minutes on 2 CPU cores")
    parser.add_argument("--profile", type=int, nargs="?", const=2, default=0, metavar="STEPS",
                        help="also profile STEPS (default 2) bare steps with torch.profiler: share of step time by category")
    parser.add_argument("--results", default=str(RESULTS), help="JSON-lines file the record is appended to")
    parser.add_argument("--cache-dir", default=None, help="decoded-image cache (default ~/.cache/resnet_ocp)")
    parser.add_argument("--compile", action="store_true", help="torch.compile (inductor) the model of (a) and (b), as "
                        "`accelerate launch --dynamo_backend inductor train.py` does; warm-up includes compilation")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.repeats, args.warmup = 2, 2, 1
    if args.warmup < 0:
        parser.error(f"--warmup must be 0 or more, got {args.warmup}")
    try:
        return measure(args, argv)
    except UserError as exc:
        exit_with(exc)


def _spread(values: list[float]) -> str:
    return f"{min(values):.1f}-{max(values):.1f}"


def measure(args: argparse.Namespace, argv: list[str] | None) -> dict:
    """The measurements of ``main``, on parsed arguments.

    Args:
        args: parsed options of ``main``.
        argv: the arguments as given (recorded as the command).
    """
    from accelerate import Accelerator

    from resnet_ocp.config import Config
    from resnet_ocp.data import load_cifar
    from resnet_ocp.session import environment, has_accelerator_device

    accelerator = Accelerator(cpu=not has_accelerator_device(), dynamo_backend="inductor" if args.compile else None)
    cfg = Config(batch_size=args.batch_size, width=args.width, max_lr=1e-3, progress=False)
    data = load_cifar(args.data, args.cache_dir)
    load_before = os.getloadavg()[0]
    bare = BareStep(accelerator, cfg)
    measurements = [bare, OurStep(accelerator, cfg, data, args.steps, args.warmup, args.repeats),
                    TextbookStep(cfg, data, args.steps, args.workers)]
    warm_start = time.perf_counter()
    rates, order = interleave(measurements, args.steps, args.warmup, args.repeats)
    interleaved_s = time.perf_counter() - warm_start
    profile = profile_shares(bare, args.profile) if args.profile else None
    # At least 8 batches (one batch is too short to time), at most the training set.
    batches = max(1, min(max(args.steps, 8), len(data.train.labels) // args.batch_size - 1))
    pipe_ours, pipe_textbook = pipelines_alone(accelerator, cfg, data, batches * args.batch_size, args.workers)
    gflop = train_gflop_per_image(args.width)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(accelerator.mixed_precision, torch.float32)
    peak = matmul_gflop_s(accelerator.device, dtype, 2048 if args.quick else 4096)
    load_after = os.getloadavg()[0]
    env = environment(accelerator)
    medians = {k: statistics.median(v) for k, v in rates.items()}
    bare_img, ours, textbook = medians["a"], medians["b"], medians["c"]
    record = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": " ".join(shlex.quote(a) for a in [Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "machine": f"{env['device_name']} ({env['cpu_capability']}), {os.cpu_count()} cpus, device {env['device']}",
        "cpu_name": env["cpu_name"], "cpu_capability": env["cpu_capability"], "cpu_bf16": env["cpu_bf16"],
        "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
        # Another process on these 2 cores slows every step alike; the 1-minute load average says if one ran.
        "load_average_before": load_before, "load_average_after": load_after,
        "versions": {k: env[k] for k in ("torch", "accelerate", "python")},
        # Allocator settings change every step's page faults (glibc.malloc.hugetlb=1: docs/performance.md).
        "allocator_env": {k: os.environ[k] for k in ("GLIBC_TUNABLES", "LD_PRELOAD", "OMP_NUM_THREADS") if k in os.environ},
        # Set by `accelerate launch` (config file's precision, CPU use, threads): the command above omits the launcher.
        "accelerate_env": {k: v for k, v in os.environ.items() if k.startswith("ACCELERATE_")},
        "mixed_precision": accelerator.mixed_precision, "precision": str(dtype).removeprefix("torch."),
        "batch_size": args.batch_size, "steps": args.steps, "repeats": args.repeats, "warmup_steps": args.warmup,
        "width": args.width, "compile": args.compile, "order": order, "interleaved_seconds": interleaved_s,
        "runs_img_s": {"bare_step": rates["a"], "our_step": rates["b"], "textbook_step": rates["c"]},
        "bare_step_img_s": bare_img, "our_step_img_s": ours, "textbook_step_img_s": textbook,
        "ceiling_beaten": ceiling_warning(rates["a"], rates["b"]) is not None,
        "our_pipeline_img_s": pipe_ours, "textbook_pipeline_img_s": pipe_textbook,
        "peak_memory_mb": _peak_mb(accelerator.device),
        "ours_over_bare": ours / bare_img, "ours_over_textbook": ours / textbook, "pipeline_ours_over_textbook": pipe_ours / pipe_textbook,
        "train_gflop_per_image": gflop, "matmul_gflop_s": peak, "matmul_dtype": str(dtype).removeprefix("torch."),
        "bare_fraction_of_matmul": bare_img * gflop / peak, "ours_fraction_of_matmul": ours * gflop / peak,
        "epoch_seconds_at_matmul_rate": 50_000 * gflop / peak, "our_epoch_seconds": 50_000 / ours,
    }
    if profile:
        record["profile"] = profile
    if accelerator.is_main_process:
        n = f"median of {args.repeats}, range"
        print(f"(a) bare step      {bare_img:10.1f} img/s   ({n} {_spread(rates['a'])})")
        print(f"(b) our step       {ours:10.1f} img/s   ({n} {_spread(rates['b'])})   (b)/(a) = {record['ours_over_bare']:.3f}")
        print(f"(c) textbook step  {textbook:10.1f} img/s   ({n} {_spread(rates['c'])})   (b)/(c) = {record['ours_over_textbook']:.2f}")
        ratio = record["pipeline_ours_over_textbook"]
        print(f"(d) pipelines      ours {pipe_ours:,.0f} img/s, textbook {pipe_textbook:,.0f} img/s, ratio {ratio:.1f}")
        print(f"(e) limit          {gflop:.3f} GFLOP per training image; {record['matmul_dtype']} matmul {peak:,.0f} GFLOP/s -> "
              f"{record['epoch_seconds_at_matmul_rate']:.0f} s per 50k-image epoch at that rate, ours {record['our_epoch_seconds']:.0f} s; "
              f"(a) reaches {100 * record['bare_fraction_of_matmul']:.0f}%, (b) {100 * record['ours_fraction_of_matmul']:.0f}% of it")
        warning = ceiling_warning(rates["a"], rates["b"])
        if warning:
            print(warning)
        if profile:
            shares = ", ".join(f"{k} {100 * v:.1f}%" for k, v in profile["shares"].items())
            print(f"profile of (a)     {profile['wall_s_per_step']:.2f} s per step under the profiler: {shares}")
        print(f"order {','.join(order)}; {args.warmup} warm-up steps each; peak memory {record['peak_memory_mb']:.0f} MB; "
              f"mixed precision {accelerator.mixed_precision}; {record['threads']} threads; {env['cpu_name']} ({env['cpu_capability']})"
              f"{'; with torch.compile' if args.compile else ''}")
        with open(args.results, "a") as f:
            f.write(json.dumps(record) + "\n")
    return record


if __name__ == "__main__":
    main()
