"""Cost of the per-step check (stop request and non-finite loss, one reduction and one host sync)
against a training step of the network, on this machine.

    python benchmarks/step_check.py --batch-size 128 --repeats 2000
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.nn.functional as F

from resnet_ocp.atomic import append_json_line
from resnet_ocp.errors import OneLineParser, positive_int
from resnet_ocp.model import CustomResNet
from resnet_ocp.preemption import StopRequest
from resnet_ocp.session import cpu_identity


def main(argv: list[str] | None = None) -> dict:
    """Time ``StopRequest.check`` and one fp32 training step; append the record to results.jsonl."""
    parser = OneLineParser(prog="benchmarks/step_check.py", description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=positive_int, default=128)
    parser.add_argument("--repeats", type=positive_int, default=2000, help="check() calls timed")
    args = parser.parse_args(argv)
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    check = StopRequest(accelerator).check
    loss = torch.tensor(2.3, device=accelerator.device)
    check(loss)
    start = time.perf_counter()
    for _ in range(args.repeats):
        check(loss)
    check_us = (time.perf_counter() - start) / args.repeats * 1e6
    model = CustomResNet().to(accelerator.device).to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    x = torch.randn(args.batch_size, 3, 32, 32, device=accelerator.device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (args.batch_size,), device=accelerator.device)
    times = []
    for _ in range(3):
        start = time.perf_counter()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    step_ms = sorted(times)[1] * 1e3
    record = {"benchmark": "step_check", "date": time.strftime("%Y-%m-%d %H:%M:%S"),
              "command": f"python benchmarks/step_check.py --batch-size {args.batch_size} --repeats {args.repeats}",
              "cpu": cpu_identity()["cpu_name"], "device": str(accelerator.device), "check_us": check_us,
              "step_ms_fp32": step_ms, "check_fraction_of_step": check_us / 1e3 / step_ms}
    print(f"check {check_us:.1f} us per step; fp32 training step of batch {args.batch_size}: {step_ms:.0f} ms; "
          f"the check is {100 * record['check_fraction_of_step']:.4f}% of a step")
    append_json_line(Path(__file__).with_name("results.jsonl"), record)
    return record


if __name__ == "__main__":
    main()
