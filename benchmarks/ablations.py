"""One-at-a-time ablations of the recipe's levers on a short proxy schedule, as a table.

Each variant is the reference recipe plus a few ``train.py`` flags, trained by a real
``accelerate launch ... train.py`` process into ``RUNS_DIR/<name>``; a finished variant is
skipped and an interrupted one resumed, so the table fills in across sessions. A variant whose
committed record under ``results/`` is the very same recipe is read from there, not trained again
(``RECORDED``). The TTA variants need no training: they re-evaluate another variant's weights
(``EVALUATED``), beside that variant's own evaluation in the same precision, which is their delta's
reference (``--eval-precision no`` where bf16 is not native: emulated, it is 12-16x slower). The
``fast+...`` variants add one lever each to ``--preset fast`` and are measured against it
(``BASELINE_OF``); the others against the Adam reference. Every variant shares
one peak LR (``--max-lr``, from the full-data range test) unless it sets its own, so a
difference is the lever's, not the LR finder's noise.

    python benchmarks/ablations.py --data ../shared/data/cifar10 --runs-dir ~/runs/ablate --max-lr 0.00265609
    python benchmarks/ablations.py ... --only baseline label_smoothing   # a subset
    python benchmarks/ablations.py ... --only fast fast+whiten fast+ghost_bn  # issue 18's levers
    python benchmarks/ablations.py ... --table                          # print the table of what finished

Appends one JSON line per finished variant (once, with its per-epoch test accuracy and the machine
and precision it trained on) to ``benchmarks/ablations.jsonl`` and prints a
Markdown table (variant, flags, final and best test accuracy, delta to its baseline, command).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

from resnet_ocp.atomic import append_json_line
from resnet_ocp.config import Config
from resnet_ocp.errors import PREEMPTED_EXIT, OneLineParser, positive_int
from resnet_ocp.export import HOUSEKEEPING, training_command
from resnet_ocp.records import read_run
from resnet_ocp.rundir import is_finished
from resnet_ocp.session import last_session

# Run as a script, this folder is on sys.path.
from training_job import launch_command, run_training

RESULTS = Path(__file__).with_name("ablations.jsonl")
REPO = Path(__file__).resolve().parents[1]

# Page's settings; --logit-scale 0.125 is what lets SGD take LR 0.4 (at scale 1 our SGD range test diverged from 0.01).
PAGE_SGD = ["--optimizer", "sgd", "--max-lr", "0.4", "--weight-decay", "5e-4", "--no-cycle-momentum", "--momentum-max", "0.9",
            "--logit-scale", "0.125"]

# --preset fast's flags (92.11% after 8 epochs, results/fast-8ep): the baseline of the issue-18 levers below,
# which come from Page's and airbench's SGD recipes.
FAST = [*PAGE_SGD, "--label-smoothing", "0.2", "--cutout", "0", "--tta"]

# name -> extra train.py flags, each measured against BASELINE_OF[name] (default "baseline", the Adam reference).
VARIANTS: dict[str, list[str]] = {
    "baseline": [],
    "tta": ["--tta"],
    "label_smoothing": ["--label-smoothing", "0.2"],
    "adam_l2": ["--weight-decay", "5e-4"],
    "adamw": ["--optimizer", "adamw", "--weight-decay", "0.05"],
    "beta1_constant": ["--no-cycle-momentum", "--momentum-max", "0.9"],
    "bn_momentum": ["--bn-momentum", "0.01"],
    "ema": ["--ema", "0.99"],
    # At 8 epochs the augmented train accuracy sits level with the test accuracy (0.904 vs 0.902 at epoch 7
    # of the first fast candidate): the network underfits, so less augmentation may help.
    "cutout_off": ["--cutout", "0"],
    "sgd_nesterov": PAGE_SGD,
    # --preset fast (92.11%, results/fast-8ep) less its label smoothing: LS alone cost 0.52 points with Adam,
    # and in the fast recipe it was only measured stacked. Compare with 92.11%, not with the Adam baseline.
    "fast_without_label_smoothing": [*PAGE_SGD, "--tta", "--cutout", "0"],
    "fast": FAST,
    "fast+whiten": [*FAST, "--whiten"],
    "fast+ghost_bn": [*FAST, "--ghost-batch", "32"],
    "fast+celu": [*FAST, "--activation", "celu", "--celu-alpha", "0.075"],
    "fast+bn_bias_lr64": [*FAST, "--bn-bias-lr-scale", "64"],
    "fast+bn_frozen_bias_lr64": [*FAST, "--bn-weight-freeze", "--bn-bias-lr-scale", "64"],
    "fast+ema": [*FAST, "--ema", "0.99"],
    "fast+lookahead": [*FAST, "--lookahead"],
    "fast+reflect_pad": [*FAST, "--crop-pad-mode", "reflect"],
    # airbench trains at batch 1024; the peak LR doubles with the batch (linear scaling, mean loss).
    "fast+batch1024": [*FAST, "--batch-size", "1024", "--max-lr", "0.8"],
    "fast+tta_shift": ["--tta-shift", "1"],
}
BASELINE_OF = {name: "fast" for name in VARIANTS if name.startswith("fast+")}
# Variants that train nothing: they re-evaluate another variant's weights with these evaluate options.
EVALUATED = {"tta": ("baseline", {"tta": True}), "fast+tta_shift": ("fast", {"tta": True, "tta_shift": 1})}
# Variants that are a committed record's recipe: used as they are when the proxy gives that very config.
RECORDED = {"fast": REPO / "results" / "fast-8ep"}


def recipe(config: Config) -> dict:
    """What a run learns from: its config less where it is kept and where its data lies."""
    return {k: v for k, v in config.to_dict().items() if k not in (*HOUSEKEEPING, "data")}


def shown(path: Path) -> str:
    """A run directory as recorded: relative to the repository when it is a committed record."""
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def variant_dir(args: argparse.Namespace, name: str) -> Path:
    """The run directory of a variant: its committed record if that trained the same recipe and
    the runs directory holds no run of its own, else ``RUNS_DIR/<name>``."""
    run_dir = Path(args.runs_dir) / name
    record = RECORDED.get(name)
    if record is None or (run_dir / "config.json").exists() or not (record / "summary.json").exists():
        return run_dir
    from resnet_ocp.cli import build_parser, resolve_config

    wanted = resolve_config(vars(build_parser().parse_args([*proxy_flags(args), *VARIANTS[name]])))
    return record if recipe(wanted) == recipe(Config.from_dict(json.loads((record / "config.json").read_text()))) else run_dir


def proxy_flags(args: argparse.Namespace) -> list[str]:
    """The proxy schedule shared by every variant: fewer epochs, the peak at the same fraction."""
    flags = ["--data", args.data, "--epochs", str(args.epochs), "--peak-epoch", f"{args.epochs * 5 / 24:.4g}",
             "--max-lr", str(args.max_lr), "--no-progress"]
    if args.train_samples:
        flags += ["--train-samples", str(args.train_samples)]
    return flags + shlex.split(args.extra)


def run_variant(args: argparse.Namespace, name: str) -> dict | None:
    """Train (or resume, or skip) one variant; return its record once finished."""
    run_dir = variant_dir(args, name)
    if name in EVALUATED:
        source, options = EVALUATED[name]
        base = variant_dir(args, source)
        if not is_finished(base):
            return None
        from resnet_ocp.evaluate import evaluate_run

        result = evaluate_run(base, args.data, precision=args.eval_precision, **options)
        reference = evaluate_run(base, args.data, precision=result["precision"])
        flags = " ".join(f"--{k.replace('_', '-')}" + ("" if v is True else f" {v}") for k, v in options.items())
        return {"variant": name, "flags": VARIANTS[name], "final_accuracy": result["accuracy"], "best_accuracy": None,
                "reference_accuracy": reference["accuracy"], "precision": result["precision"], "run_dir": shown(base),
                "command": f"python -m resnet_ocp.evaluate {shown(base)} {flags} --precision {result['precision']}"}
    if not is_finished(run_dir):
        if args.table:
            return None
        command = launch_command(args.config_file, run_dir, [*proxy_flags(args), *VARIANTS[name]])
        print(f"[{time.strftime('%H:%M:%S')}] {name}: {shlex.join(command)}", flush=True)
        log = Path(args.runs_dir) / f"{name}.log"
        outcome = run_training(command, log, run_dir)
        if outcome.stopped:
            how = ("checkpointed inside its epoch" if outcome.status == PREEMPTED_EXIT
                   else f"ended with status {outcome.status}; it resumes from its last checkpoint")
            print(f"{name} stopped ({how}); the variants after it were not started; run this command again to continue", file=sys.stderr)
            raise SystemExit(PREEMPTED_EXIT)
        if outcome.status:
            print(f"{name} failed; see {log}", file=sys.stderr)
            return None
    summary = json.loads((run_dir / "summary.json").read_text())
    saved = json.loads((run_dir / "config.json").read_text())
    command = shlex.join(["accelerate", "launch", "--config_file", args.config_file, "train.py", *proxy_flags(args), *VARIANTS[name]])
    if run_dir == RECORDED.get(name):
        command = training_command(Config.from_dict(saved), last_session(run_dir))
    # Run directories live outside the repository and go with their machine: the record keeps the curve and where it ran.
    history = json.loads((run_dir / "history.json").read_text())
    return {"variant": name, "flags": VARIANTS[name], "final_accuracy": summary["final_accuracy"],
            "best_accuracy": summary["best_accuracy"], "seconds": summary["seconds"], "max_lr": saved["max_lr"],
            "test_accuracy_by_epoch": [round(h["test_accuracy"], 4) for h in history], "machine": read_run(run_dir).machine,
            "run_dir": shown(run_dir), "command": command}


def reference_of(record: dict, final: dict[str, float]) -> float | None:
    """The accuracy a variant's delta is taken against: the same weights evaluated the baseline's way in
    the same precision for an evaluated variant, else its baseline's (``BASELINE_OF``) final accuracy.

    Args:
        record: one variant's record.
        final: final accuracy by variant name.
    """
    return record.get("reference_accuracy") or final.get(BASELINE_OF.get(record["variant"], "baseline"))


def table(records: list[dict]) -> str:
    """A Markdown table of the records, with each variant's delta to its reference (``reference_of``)."""
    final = {r["variant"]: r["final_accuracy"] for r in records}
    lines = ["| variant | flags | final test acc | best | delta vs its baseline | command |", "|---|---|---|---|---|---|"]
    for r in records:
        base = reference_of(r, final)
        delta = "" if base is None or r["variant"] in ("baseline", "fast") else f"{100 * (r['final_accuracy'] - base):+.2f}"
        best = "" if r["best_accuracy"] is None else f"{100 * r['best_accuracy']:.2f}%"
        lines.append(f"| {r['variant']} | `{' '.join(r['flags'])}` | {100 * r['final_accuracy']:.2f}% | {best} | {delta} | `{r['command']}` |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    """Run the chosen variants in order and print their table."""
    parser = OneLineParser(prog="benchmarks/ablations.py", description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="uoft-cs/cifar10")
    parser.add_argument("--runs-dir", required=True, help="one run directory per variant is kept here (outside the repository)")
    parser.add_argument("--max-lr", type=float, required=True, help="the shared peak LR (the full-data range test's suggestion)")
    parser.add_argument("--epochs", type=positive_int, default=8, help="proxy schedule length; the peak stays at 5/24 of it")
    parser.add_argument("--train-samples", type=positive_int, help="a class-balanced subset of the training set (default: all)")
    parser.add_argument("--config-file", default="accelerate_configs/cpu.yaml")
    parser.add_argument("--extra", default="", help="train.py flags added to every variant, one string (e.g. '--width 8' for a smoke test)")
    parser.add_argument("--only", nargs="+", choices=sorted(VARIANTS), help="variants to run (default: all, in table order)")
    parser.add_argument("--eval-precision", choices=("no", "bf16", "fp16"),
                        help="precision of the evaluated (TTA) variants, theirs and their reference's (default: the run's)")
    parser.add_argument("--table", action="store_true", help="train nothing: print the table of the finished variants")
    parser.add_argument("--results", default=str(RESULTS), help="JSON-lines file each finished variant is appended to")
    args = parser.parse_args(argv)
    Path(args.runs_dir).mkdir(parents=True, exist_ok=True)
    results = Path(args.results)
    previous = [json.loads(line) for line in results.read_text().splitlines()] if results.exists() else []
    recorded = {(r["variant"], r.get("run_dir")) for r in previous}
    latest = {r["variant"]: r for r in previous}
    records = []
    for name in args.only or list(VARIANTS):
        # --table trains nothing and evaluates nothing either: a re-evaluation is read back.
        record = latest.get(name) if args.table and name in EVALUATED else run_variant(args, name)
        if record is None:
            continue
        records.append(record)
        if (name, record["run_dir"]) not in recorded:
            append_json_line(results, {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "epochs": args.epochs,
                                       "train_samples": args.train_samples, **record})
    print(table(records))
    return records


if __name__ == "__main__":
    main()
