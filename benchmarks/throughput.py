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
import os
import resource
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from resnet_ocp.atomic import append_json_line
from resnet_ocp.errors import OneLineParser, UserError, exit_with, positive_int

# Run as a script, this folder is on sys.path; the step timing lives beside it.
from step_profile import profile_shares
from step_timing import BareStep, OurStep, TextbookStep, ceiling_warning, interleave, sync, textbook_loader

RESULTS = Path(__file__).with_name("results.jsonl")


def _peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def train_gflop_per_image(width: int) -> float:
    """GFLOP of forward + backward of one image (a multiply-add counts 2), from FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    from resnet_ocp.model import CustomResNet, NetworkConfig

    model = CustomResNet(NetworkConfig(width=width))
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([0, 1])
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(x), y).backward()
    return counter.get_total_flops() / 2 / 1e9


def matmul_gflop_s(device: torch.device, dtype: torch.dtype, n: int, reps: int = 3) -> float:
    """GFLOP/s of an n x n matrix multiply in ``dtype``: the practical compute ceiling of the device
    (convolutions run as such GEMMs in oneDNN/cuDNN, so a step cannot beat it)."""
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    a @ b  # warm-up
    sync(device)
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
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
        sync(dev)
        start = time.perf_counter()
        for idx in loader:
            idx = idx.to(dev)
            augment_batch(images[idx], params[idx], mean, std, 4, 8).contiguous(memory_format=torch.channels_last)
        sync(dev)
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


def _conditions(accelerator, argv: list[str] | None, load_before: float, load_after: float) -> dict:
    """Where and how a measurement ran: date, command, CPU, threads, load, versions and environment.

    Args:
        accelerator: the measurement's Accelerator.
        argv: the arguments as given (``None``: ``sys.argv[1:]``).
        load_before: the 1-minute load average before the measurements.
        load_after: and after them.
    """
    from resnet_ocp.session import environment

    env = environment(accelerator)
    return {
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
    }


def _figures(rates: dict[str, list[float]], pipelines: tuple[float, float], gflop: float, peak: float) -> dict:
    """The runs, their medians and the ratios between them and to the matmul rate.

    Args:
        rates: img/s of each run of (a), (b), (c), keyed "a", "b", "c".
        pipelines: img/s of (d), our input pipeline and the textbook one.
        gflop: GFLOP of one training image's step.
        peak: the matmul rate in GFLOP/s.
    """
    bare, ours, textbook = (statistics.median(rates[k]) for k in "abc")
    pipe_ours, pipe_textbook = pipelines
    return {
        "runs_img_s": {"bare_step": rates["a"], "our_step": rates["b"], "textbook_step": rates["c"]},
        "bare_step_img_s": bare, "our_step_img_s": ours, "textbook_step_img_s": textbook,
        "ceiling_beaten": ceiling_warning(rates["a"], rates["b"]) is not None,
        "our_pipeline_img_s": pipe_ours, "textbook_pipeline_img_s": pipe_textbook,
        "ours_over_bare": ours / bare, "ours_over_textbook": ours / textbook, "pipeline_ours_over_textbook": pipe_ours / pipe_textbook,
        "train_gflop_per_image": gflop, "matmul_gflop_s": peak,
        "bare_fraction_of_matmul": bare * gflop / peak, "ours_fraction_of_matmul": ours * gflop / peak,
        "epoch_seconds_at_matmul_rate": 50_000 * gflop / peak, "our_epoch_seconds": 50_000 / ours,
    }


def measure(args: argparse.Namespace, argv: list[str] | None) -> dict:
    """The measurements of ``main``, on parsed arguments.

    Args:
        args: parsed options of ``main``.
        argv: the arguments as given (recorded as the command).
    """
    from accelerate import Accelerator

    from resnet_ocp.config import Config
    from resnet_ocp.data import load_cifar
    from resnet_ocp.session import has_accelerator_device

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
    record = {
        **_conditions(accelerator, argv, load_before, os.getloadavg()[0]),
        "mixed_precision": accelerator.mixed_precision, "precision": str(dtype).removeprefix("torch."),
        "batch_size": args.batch_size, "steps": args.steps, "repeats": args.repeats, "warmup_steps": args.warmup,
        "width": args.width, "compile": args.compile, "order": order, "interleaved_seconds": interleaved_s,
        "peak_memory_mb": _peak_mb(accelerator.device), "matmul_dtype": str(dtype).removeprefix("torch."),
        **_figures(rates, (pipe_ours, pipe_textbook), gflop, peak),
    }
    if profile:
        record["profile"] = profile
    if accelerator.is_main_process:
        print_figures(record)
        append_json_line(args.results, record)
    return record


def print_figures(record: dict) -> None:
    """Print a record's figures (a) to (e), the ceiling warning, the profile and the conditions.

    Args:
        record: what ``measure`` returns.
    """
    runs, r = record["runs_img_s"], record
    n = f"median of {r['repeats']}, range"
    print(f"(a) bare step      {r['bare_step_img_s']:10.1f} img/s   ({n} {_spread(runs['bare_step'])})")
    print(f"(b) our step       {r['our_step_img_s']:10.1f} img/s   ({n} {_spread(runs['our_step'])})   (b)/(a) = {r['ours_over_bare']:.3f}")
    print(f"(c) textbook step  {r['textbook_step_img_s']:10.1f} img/s   ({n} {_spread(runs['textbook_step'])})   "
          f"(b)/(c) = {r['ours_over_textbook']:.2f}")
    print(f"(d) pipelines      ours {r['our_pipeline_img_s']:,.0f} img/s, textbook {r['textbook_pipeline_img_s']:,.0f} img/s, "
          f"ratio {r['pipeline_ours_over_textbook']:.1f}")
    print(f"(e) limit          {r['train_gflop_per_image']:.3f} GFLOP per training image; {r['matmul_dtype']} matmul "
          f"{r['matmul_gflop_s']:,.0f} GFLOP/s -> {r['epoch_seconds_at_matmul_rate']:.0f} s per 50k-image epoch at that rate, "
          f"ours {r['our_epoch_seconds']:.0f} s; (a) reaches {100 * r['bare_fraction_of_matmul']:.0f}%, "
          f"(b) {100 * r['ours_fraction_of_matmul']:.0f}% of it")
    warning = ceiling_warning(runs["bare_step"], runs["our_step"])
    if warning:
        print(warning)
    if "profile" in r:
        shares = ", ".join(f"{k} {100 * v:.1f}%" for k, v in r["profile"]["shares"].items())
        print(f"profile of (a)     {r['profile']['wall_s_per_step']:.2f} s per step under the profiler: {shares}")
    print(f"order {','.join(r['order'])}; {r['warmup_steps']} warm-up steps each; peak memory {r['peak_memory_mb']:.0f} MB; "
          f"mixed precision {r['mixed_precision']}; {r['threads']} threads; {r['cpu_name']} ({r['cpu_capability']})"
          f"{'; with torch.compile' if r['compile'] else ''}")


if __name__ == "__main__":
    main()
