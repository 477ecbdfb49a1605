"""What each time-to-accuracy lever costs per training step, measured side by side on one machine.

The ablation table (``ablations.py``) says what a lever buys after 8 epochs; this says what it
costs per epoch. Each variant becomes the real step of ``step_timing.OurStep`` (the variant's
network, optimizer groups, augmentation and weight averages, through ``engine.train_one_epoch``);
all of them get the same warm-up and then run interleaved, round after round, so a drift of the
machine lands on every variant alike (the reason is in ``step_timing``). Each figure is the median
img/s over the rounds with its range, and the cost relative to ``fast``'s step. TTA costs nothing
in training and is not measured here.

    accelerate launch --config_file accelerate_configs/cpu_fp32.yaml benchmarks/lever_cost.py --data ../shared/data/cifar10
    accelerate launch --config_file accelerate_configs/cpu.yaml benchmarks/lever_cost.py --data ../shared/data/cifar10 \\
        --only fast fast+whiten fast+ghost_bn

Appends one JSON line (every run, the medians, each variant's trainable parameters, optimizer
groups and weight averages, the command, the CPU, precision and versions) to ``benchmarks/lever_cost.jsonl``.
"""

from __future__ import annotations

import os
import shlex
import statistics
import sys
import time
from pathlib import Path

# Run as a script, this folder is on sys.path: ablations and step_timing are beside it.
from ablations import VARIANTS
from resnet_ocp.atomic import append_json_line
from resnet_ocp.errors import OneLineParser, UserError, exit_with, positive_int
from step_timing import OurStep, interleave

RESULTS = Path(__file__).with_name("lever_cost.jsonl")
# The variants that change the training step; "fast" first: it is the reference of the others.
TRAINED = ["fast", *[name for name in VARIANTS if name.startswith("fast+") and name != "fast+tta_shift"]]


def variant_config(name: str, extra: list[str]):
    """The ``Config`` that ``train.py`` would run for variant ``name`` with ``extra`` flags after its own.

    Args:
        name: a variant of ``ablations.VARIANTS``.
        extra: ``train.py`` flags applied over the variant's (e.g. ``--width 8`` for a smoke test).
    """
    from resnet_ocp.cli import build_parser, resolve_config

    return resolve_config(vars(build_parser().parse_args([*VARIANTS[name], *extra, "--no-progress"])))


def _as_built(accelerator, parts) -> dict:
    """What the step trains, to show the variant's flags reached it: trainable parameters,
    optimizer groups and the weight averages' checkpoint files."""
    from resnet_ocp.model import count_parameters

    return {"trainable_parameters": count_parameters(accelerator.unwrap_model(parts.model)),
            "optimizer_groups": len(parts.optimizer.param_groups), "weight_averages": sorted(parts.averages)}


def main(argv: list[str] | None = None) -> dict:
    """Measure the variants' training steps and append the record to ``--results``.

    Args:
        argv: command-line arguments (default ``sys.argv[1:]``).
    """
    parser = OneLineParser(prog="lever_cost.py", description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="uoft-cs/cifar10", help="Hub id or local parquet directory (offline: e.g. ../shared/data/cifar10)")
    parser.add_argument("--only", nargs="+", choices=TRAINED, default=TRAINED, help="variants to measure (default: fast and its training levers)")
    parser.add_argument("--steps", type=positive_int, default=2, help="timed training steps per run of a variant")
    parser.add_argument("--repeats", type=positive_int, default=3, help="interleaved rounds; each figure is the median over them")
    parser.add_argument("--warmup", type=positive_int, default=1, help="untimed steps every variant gets before its first run")
    parser.add_argument("--extra", default="", help="train.py flags over every variant's, one string (e.g. '--width 8')")
    parser.add_argument("--cache-dir", default=None, help="decoded-image cache (default ~/.cache/resnet_ocp)")
    parser.add_argument("--results", default=str(RESULTS), help="JSON-lines file the record is appended to")
    args = parser.parse_args(argv)
    if "fast" not in args.only:
        parser.error("--only must include fast: every cost is relative to its step")
    try:
        configs = {name: variant_config(name, shlex.split(args.extra)) for name in args.only}
        return measure(args, configs, argv)
    except UserError as exc:
        exit_with(exc)


def measure(args, configs: dict, argv: list[str] | None) -> dict:
    """Build each variant's step, run them interleaved, print the table and append the record.

    Args:
        args: parsed options of ``main``.
        configs: the variants' configurations by name, ``fast`` among them.
        argv: the arguments as given (recorded as the command).
    """
    from accelerate import Accelerator

    from resnet_ocp.data import load_cifar
    from resnet_ocp.session import environment, has_accelerator_device

    accelerator = Accelerator(cpu=not has_accelerator_device())
    data = load_cifar(args.data, args.cache_dir)
    steps = {name: OurStep(accelerator, cfg, data, args.steps, args.warmup, args.repeats, label=name) for name, cfg in configs.items()}
    load_before = os.getloadavg()[0]
    rates, order = interleave(list(steps.values()), args.steps, args.warmup, args.repeats)
    medians = {name: statistics.median(runs) for name, runs in rates.items()}
    env = environment(accelerator)
    record = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": shlex.join(["lever_cost.py", *(argv if argv is not None else sys.argv[1:])]),
        "cpu_name": env["cpu_name"], "cpu_capability": env["cpu_capability"], "cpu_bf16": env["cpu_bf16"], "device": env["device"],
        "mixed_precision": accelerator.mixed_precision, "threads": env["cpu_threads"],
        # Another process on these cores slows every run alike; the 1-minute load average says if one ran.
        "load_average_before": load_before, "load_average_after": os.getloadavg()[0],
        "versions": {k: env[k] for k in ("torch", "accelerate", "python")},
        "steps": args.steps, "repeats": args.repeats, "warmup_steps": args.warmup, "extra": args.extra, "order": order,
        "variants": {name: {"flags": VARIANTS[name], "batch_size": configs[name].batch_size, "runs_img_s": rates[name],
                            "median_img_s": medians[name], "cost_over_fast": medians["fast"] / medians[name],
                            **_as_built(accelerator, steps[name].parts)}
                     for name in configs},
    }
    if accelerator.is_main_process:
        print(f"{'variant':26} {'img/s (median)':>15} {'range':>13} {'epoch time vs fast':>19}")
        for name, row in record["variants"].items():
            spread = f"{min(row['runs_img_s']):.1f}-{max(row['runs_img_s']):.1f}"
            print(f"{name:26} {row['median_img_s']:15.1f} {spread:>13} {row['cost_over_fast']:18.2f}x")
        print(f"{args.repeats} interleaved rounds of {args.steps} steps, {args.warmup} warm-up step(s) each; mixed precision "
              f"{accelerator.mixed_precision}; {env['cpu_name']} ({env['cpu_capability']}); load {load_before:.1f}")
        append_json_line(args.results, record)
    return record


if __name__ == "__main__":
    main()
