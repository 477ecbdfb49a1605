"""What ghost batch norm costs over a plain batch norm, layer by layer, on this machine.

``--ghost-batch 32`` (in ``fast10`` and ``fast5``) normalises each batch as sub-batches, which
needs the batch in another memory layout; this times ``GhostBatchNorm2d`` against
``nn.BatchNorm2d`` (forward + backward, channels_last, fp32 or bf16) at each batch-norm shape of
the network at batch 512, interleaved round after round so a drift of the machine lands on both,
and prints the medians and what the network's eight batch norms add to one training step.

    python benchmarks/ghost_bn.py
    python benchmarks/ghost_bn.py --dtype bfloat16

Appends one JSON line (the command, commit, CPU, threads, versions and every timing) to
``benchmarks/ghost_bn.jsonl``.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn

from resnet_ocp.atomic import append_json_line
from resnet_ocp.batchnorm import GhostBatchNorm2d
from resnet_ocp.session import cpu_identity

RESULTS = Path(__file__).with_name("ghost_bn.jsonl")
# (channels, side, how many batch norms of the network have this shape): prep; layer1's conv
# block and its two residual blocks; layer2; layer3 and its two residual blocks.
SHAPES = [(64, 32, 1), (128, 16, 3), (256, 8, 1), (512, 4, 3)]


def time_layer(layer: nn.Module, x: torch.Tensor, grad: torch.Tensor) -> float:
    """Seconds of one forward and backward pass of ``layer`` on a fresh copy of ``x``."""
    x = x.detach().clone().requires_grad_()
    begin = time.perf_counter()
    layer(x).backward(grad)
    return time.perf_counter() - begin


def _code_version() -> str:
    """The checkout's commit (with ``-dirty`` for uncommitted changes): the figures are those of its ``GhostBatchNorm2d``."""
    git = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True, cwd=Path(__file__).parent)
    return git.stdout.strip() or "unknown"


def main(argv: list[str] | None = None) -> dict:
    """Time both batch norms at every shape, print the medians and append the record to ``--results``.

    Args:
        argv: command-line arguments (default ``sys.argv[1:]``).
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--ghost-batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=7, help="interleaved rounds; each figure is their median")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    dtype = getattr(torch, args.dtype)
    rows = []
    for channels, side, count in SHAPES:
        x = torch.randn(args.batch, channels, side, side, dtype=dtype).contiguous(memory_format=torch.channels_last)
        grad = torch.randn_like(x)
        layers = {"plain": nn.BatchNorm2d(channels), "ghost": GhostBatchNorm2d(channels, args.ghost_batch)}
        runs = {name: [] for name in layers}
        # fp32 parameters on bf16 activations, as under autocast; one untimed pass each first.
        for layer in layers.values():
            time_layer(layer, x, grad)
        for _ in range(args.repeats):
            for name, layer in layers.items():
                runs[name].append(time_layer(layer, x, grad))
        median = {name: statistics.median(r) for name, r in runs.items()}
        rows.append({"shape": [args.batch, channels, side, side], "count": count, "plain_ms": 1e3 * median["plain"],
                     "ghost_ms": 1e3 * median["ghost"], "ghost_runs_ms": [1e3 * t for t in runs["ghost"]],
                     "plain_runs_ms": [1e3 * t for t in runs["plain"]]})
    extra = sum(r["count"] * (r["ghost_ms"] - r["plain_ms"]) for r in rows)
    record = {"date": time.strftime("%Y-%m-%d %H:%M:%S"),
              "command": shlex.join(["ghost_bn.py", *(argv if argv is not None else sys.argv[1:])]),
              "code": _code_version(), **cpu_identity(),
              "threads": torch.get_num_threads(), "torch": torch.__version__, "dtype": args.dtype,
              "ghost_batch": args.ghost_batch, "repeats": args.repeats, "layers": rows, "extra_ms_per_step": extra}
    print(f"{'shape':22} {'plain BN ms':>12} {'ghost BN ms':>12} {'ratio':>6}")
    for r in rows:
        print(f"{str(r['shape']):22} {r['plain_ms']:12.1f} {r['ghost_ms']:12.1f} {r['ghost_ms'] / r['plain_ms']:6.2f}  x{r['count']}")
    print(f"ghost batch norm adds {extra:.0f} ms to a training step ({args.dtype}, {record['threads']} threads, "
          f"median of {args.repeats})")
    append_json_line(args.results, record)
    return record


if __name__ == "__main__":
    main()
