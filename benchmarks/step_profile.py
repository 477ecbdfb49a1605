"""Where the bare training step's time goes: torch.profiler's self CPU time of every operator,
summed by category (convolution/matmul, batch norm, element-wise and pooling, optimizer, other),
for benchmarks/throughput.py ``--profile``. On AMX the split says why the step reaches only part
of the matmul rate: 37.8% of it is memory-bound non-matmul work (docs/performance.md).
"""

from __future__ import annotations

import time

from step_timing import BareStep

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
