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

Prints img/s, peak memory and the ratios (b)/(a), (b)/(c), (d) ours/textbook, and appends one
JSON line with the command, versions and machine to ``benchmarks/results.jsonl``.

    accelerate launch --config_file accelerate_configs/cpu.yaml benchmarks/throughput.py --data ../shared/data/cifar10
    python benchmarks/throughput.py --quick --data ../shared/data/cifar10      # 3 timed steps per measurement
    accelerate launch --config_file accelerate_configs/cpu.yaml benchmarks/throughput.py --data ../shared/data/cifar10 --compile
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
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


def bare_step(accelerator, cfg, steps: int, warmup: int) -> tuple[float, float]:
    """(a) img/s of forward+backward+Adam on a fixed device-resident batch, and the seconds of
    the warm-up steps (which include compilation under ``--compile``)."""
    from resnet_ocp.model import CustomResNet
    from resnet_ocp.schedule import build_optimizer

    model = CustomResNet(width=cfg.width).to(memory_format=torch.channels_last)
    opt = build_optimizer(model, cfg, lr=1e-3)
    model, opt = accelerator.prepare(model, opt)
    x = torch.randn(cfg.batch_size, 3, 32, 32, device=accelerator.device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (cfg.batch_size,), device=accelerator.device)
    begin = time.perf_counter()
    for i in range(warmup + steps):
        if i == warmup:
            _sync(accelerator.device)
            start = time.perf_counter()
        loss = F.cross_entropy(model(x).float(), y)
        accelerator.backward(loss)
        opt.step()
        opt.zero_grad(set_to_none=True)
    _sync(accelerator.device)
    return steps * cfg.batch_size / (time.perf_counter() - start), start - begin


def our_step(accelerator, cfg, data, steps: int) -> tuple[float, float]:
    """(b) img/s of ``engine.train_one_epoch`` over ``steps`` batches after one warm-up epoch,
    and that warm-up epoch's seconds."""
    from resnet_ocp.data import CIFAR10_MEAN, CIFAR10_STD, make_loaders
    from resnet_ocp.engine import DeviceSplit, TrainingParts, train_one_epoch
    from resnet_ocp.model import CustomResNet
    from resnet_ocp.schedule import build_one_cycle, build_optimizer

    n = steps * cfg.batch_size
    dev = accelerator.device
    split = DeviceSplit(data.train.images[:n].to(dev), data.train.labels[:n].to(dev),
                        torch.tensor(CIFAR10_MEAN, device=dev), torch.tensor(CIFAR10_STD, device=dev))
    model = CustomResNet(width=cfg.width).to(memory_format=torch.channels_last)
    opt = build_optimizer(model, cfg)
    loader, _ = make_loaders(n, 10, cfg.batch_size // accelerator.num_processes, 10, cfg.seed)
    model, opt, loader = accelerator.prepare(model, opt, loader)
    sched = accelerator.prepare(build_one_cycle(opt.optimizer, cfg.replace(epochs=3, peak_epoch=1), 1e-3, n))
    parts = TrainingParts(accelerator, model, opt, loader, loader, split, split, scheduler=sched)
    # Epoch 1 warms up (allocator, oneDNN kernels, compilation).
    epochs = [train_one_epoch(parts, cfg, epoch, step_offset=0) for epoch in (1, 2)]
    return epochs[1]["images_per_second"], epochs[0]["seconds"]


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


def textbook_loader(data, n: int, batch: int, workers: int):
    return torch.utils.data.DataLoader(_TextbookSet(data.train.images[:n], data.train.labels[:n]), batch_size=batch,
                                       shuffle=True, num_workers=workers, persistent_workers=workers > 0, drop_last=True)


def textbook_step(cfg, data, steps: int, workers: int) -> float:
    """(c) img/s of the fp32 tutorial loop: workers + per-sample transforms, plain memory format."""
    from resnet_ocp.model import CustomResNet

    model = CustomResNet(width=cfg.width)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = textbook_loader(data, (steps + 1) * cfg.batch_size, cfg.batch_size, workers)
    for i, (x, y) in enumerate(loader):
        if i == 1:  # first batch warms up workers and kernels
            start = time.perf_counter()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return steps * cfg.batch_size / (time.perf_counter() - start)


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
    """Run the four measurements and append them to ``benchmarks/results.jsonl``."""
    parser = OneLineParser(prog="benchmarks/throughput.py", description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="uoft-cs/cifar10", help="Hub id or local parquet directory (offline: e.g. ../shared/data/cifar10)")
    parser.add_argument("--steps", type=positive_int, default=10, help="timed training steps per measurement")
    parser.add_argument("--batch-size", type=positive_int, default=512)
    parser.add_argument("--width", type=positive_int, default=64)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of the textbook pipeline")
    parser.add_argument("--quick", action="store_true", help="3 timed steps: under two minutes on 2 CPU cores")
    parser.add_argument("--results", default=str(RESULTS), help="JSON-lines file the record is appended to")
    parser.add_argument("--cache-dir", default=None, help="decoded-image cache (default ~/.cache/resnet_ocp)")
    parser.add_argument("--compile", action="store_true", help="torch.compile (inductor) the model of (a) and (b), as "
                        "`accelerate launch --dynamo_backend inductor train.py` does; warm-up seconds include compilation")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps = 3
    try:
        return measure(args, argv)
    except UserError as exc:
        exit_with(exc)


def measure(args: argparse.Namespace, argv: list[str] | None) -> dict:
    """The measurements of ``main``, on parsed arguments."""
    from accelerate import Accelerator

    from resnet_ocp.config import Config
    from resnet_ocp.data import load_cifar
    from resnet_ocp.session import environment, has_accelerator_device

    accelerator = Accelerator(cpu=not has_accelerator_device(), dynamo_backend="inductor" if args.compile else None)
    cfg = Config(batch_size=args.batch_size, width=args.width, max_lr=1e-3, progress=False)
    data = load_cifar(args.data, args.cache_dir)
    bare, bare_warmup = bare_step(accelerator, cfg, args.steps, warmup=2)
    ours, our_warmup = our_step(accelerator, cfg, data, args.steps)
    textbook = textbook_step(cfg, data, args.steps, args.workers)
    pipe_ours, pipe_textbook = pipelines_alone(accelerator, cfg, data, max(args.steps, 8) * args.batch_size, args.workers)
    gflop = train_gflop_per_image(args.width)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(accelerator.mixed_precision, torch.float32)
    peak = matmul_gflop_s(accelerator.device, dtype, 2048 if args.quick else 4096)
    env = environment(accelerator)
    record = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": " ".join(shlex.quote(a) for a in [Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "machine": f"{env['device_name']} ({env['cpu_capability']}), {os.cpu_count()} cpus, device {env['device']}",
        "versions": {k: env[k] for k in ("torch", "accelerate", "python")},
        # Allocator settings change every step's page faults (glibc.malloc.hugetlb=1: docs/performance.md).
        "allocator_env": {k: os.environ[k] for k in ("GLIBC_TUNABLES", "LD_PRELOAD") if k in os.environ},
        "mixed_precision": accelerator.mixed_precision, "batch_size": args.batch_size, "steps": args.steps, "width": args.width,
        "compile": args.compile, "bare_warmup_s": bare_warmup, "our_warmup_epoch_s": our_warmup,
        "bare_step_img_s": bare, "our_step_img_s": ours, "textbook_step_img_s": textbook,
        "our_pipeline_img_s": pipe_ours, "textbook_pipeline_img_s": pipe_textbook,
        "peak_memory_mb": _peak_mb(accelerator.device),
        "ours_over_bare": ours / bare, "ours_over_textbook": ours / textbook, "pipeline_ours_over_textbook": pipe_ours / pipe_textbook,
        "train_gflop_per_image": gflop, "matmul_gflop_s": peak, "matmul_dtype": str(dtype).removeprefix("torch."),
        "bare_fraction_of_matmul": bare * gflop / peak, "ours_fraction_of_matmul": ours * gflop / peak,
        "epoch_seconds_at_matmul_rate": 50_000 * gflop / peak, "our_epoch_seconds": 50_000 / ours,
    }
    if accelerator.is_main_process:
        print(f"(a) bare step      {bare:10.1f} img/s")
        print(f"(b) our step       {ours:10.1f} img/s   (b)/(a) = {record['ours_over_bare']:.3f}")
        print(f"(c) textbook step  {textbook:10.1f} img/s   (b)/(c) = {record['ours_over_textbook']:.2f}")
        ratio = record["pipeline_ours_over_textbook"]
        print(f"(d) pipelines      ours {pipe_ours:,.0f} img/s, textbook {pipe_textbook:,.0f} img/s, ratio {ratio:.1f}")
        print(f"(e) limit          {gflop:.3f} GFLOP per training image; {record['matmul_dtype']} matmul {peak:,.0f} GFLOP/s -> "
              f"{record['epoch_seconds_at_matmul_rate']:.0f} s per 50k-image epoch at that rate, ours {record['our_epoch_seconds']:.0f} s; "
              f"(a) reaches {100 * record['bare_fraction_of_matmul']:.0f}%, (b) {100 * record['ours_fraction_of_matmul']:.0f}% of it")
        print(f"peak memory {record['peak_memory_mb']:.0f} MB; mixed precision {accelerator.mixed_precision}; "
              f"warm-up {bare_warmup:.1f} s (a), {our_warmup:.1f} s (b){' with torch.compile' if args.compile else ''}")
        with open(args.results, "a") as f:
            f.write(json.dumps(record) + "\n")
    return record


if __name__ == "__main__":
    main()
