"""Training-step speed of the network on this machine in fp32 and bf16 autocast, with and
without channels_last: shows whether bf16 pays on this CPU (it needs native bf16 support).

    python benchmarks/cpu_precision.py --batch-size 128 --steps 3
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.nn.functional as F

from resnet_ocp.atomic import append_json_line
from resnet_ocp.errors import OneLineParser, positive_int
from resnet_ocp.model import CustomResNet


def step_rate(batch: int, steps: int, channels_last: bool, bf16: bool) -> float:
    """img/s of forward+backward+Adam on a fixed random batch (one warm-up step first)."""
    torch.manual_seed(0)
    model = CustomResNet()
    x = torch.randn(batch, 3, 32, 32)
    if channels_last:
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    y = torch.randint(0, 10, (batch,))
    for i in range(steps + 1):
        if i == 1:
            start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = model(x)
        F.cross_entropy(out.float(), y).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return steps * batch / (time.perf_counter() - start)


def main() -> None:
    """Time the three variants and append the record to ``benchmarks/results.jsonl`` (options from ``sys.argv``)."""
    parser = OneLineParser(prog="benchmarks/cpu_precision.py", description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=positive_int, default=128)
    parser.add_argument("--steps", type=positive_int, default=3)
    args = parser.parse_args()
    record = {"cpu_capability": torch.backends.cpu.get_cpu_capability(),
              "native_bf16": bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()), "torch": torch.__version__,
              "threads": torch.get_num_threads(), "batch_size": args.batch_size, "steps": args.steps}
    for cl, bf16 in ((True, False), (False, False), (True, True)):
        rate = step_rate(args.batch_size, args.steps, cl, bf16)
        record[f"{'bf16' if bf16 else 'fp32'}{'_channels_last' if cl else ''}_img_s"] = rate
        print(f"channels_last={cl!s:5} bf16={bf16!s:5} {rate:7.1f} img/s", flush=True)
    append_json_line(Path(__file__).with_name("results.jsonl"), {"benchmark": "cpu_precision", "command": "python benchmarks/cpu_precision.py "
                     f"--batch-size {args.batch_size} --steps {args.steps}", **record})


if __name__ == "__main__":
    main()
