"""Command line: ``resnet-ocp COMMAND`` for the commands of ``COMMANDS`` (train, launch, stop,
lr-find, evaluate, predict, report, export, records).

``train`` options are generated from ``Config``'s fields; without a command ``main`` trains, so
``python train.py`` and ``accelerate launch -m resnet_ocp.cli`` (which pass no command) take
train's options. ``main`` returns the command's result (a dict for train, evaluate, predict and
export) so tests can call it in-process; bad input ends with one ``error:`` line on stderr and
exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import importlib
import sys
import types
import typing
from pathlib import Path

from resnet_ocp.atomic import read_json
from resnet_ocp.config import PRESETS, RENAMED_FIELDS, RESUME_FREE_FIELDS, Config, choices_of
from resnet_ocp.errors import PREEMPTED_EXIT, OneLineParser, Preempted, RunError, UserError, exit_with

OLD_NAMES = {new: old for old, new in RENAMED_FIELDS.items()}
TRAIN_DESCRIPTION = "Train the CIFAR-10 ResNet with One-Cycle through Accelerate. Defaults are the reference recipe."

# name: (module whose main(argv, prog) runs it, one line for the overview). train and lr-find are here.
COMMANDS = {
    "train": (None, "train (or --resume) a run; the default when no command is given"),
    "launch": ("resnet_ocp.launcher", "accelerate launch CONFIG with train's options, the config file checked first"),
    "stop": ("resnet_ocp.stop", "stop a training run at its next optimizer step with a checkpoint, resumably"),
    "lr-find": (None, "the LR range test alone: train --lr-find-only (writes lr_finder.json/.png, prints the suggestion)"),
    "evaluate": ("resnet_ocp.evaluate", "the test accuracy of a finished run's weights, compared with its record"),
    "predict": ("resnet_ocp.predict", "top-k classes of image files, from a run directory, an exported folder or a Hub id"),
    "report": ("resnet_ocp.report", "redraw a finished run's pictures without retraining"),
    "export": ("resnet_ocp.export", "write a finished run as a from_pretrained folder with a model card"),
    "records": ("resnet_ocp.records", "the README's records table from results/: median and range over each recipe's seeds"),
}
EXAMPLES = """examples:
  resnet-ocp train --data ../shared/data/cifar10 --preset sgd24
  resnet-ocp launch accelerate_configs/cpu_multi.yaml --data ../shared/data/cifar10
  accelerate launch --config_file accelerate_configs/cpu_fp32.yaml -m resnet_ocp.cli train --data ../shared/data/cifar10
  resnet-ocp stop runs/20261202-101500
  resnet-ocp lr-find --data ../shared/data/cifar10 --output-dir runs/lr
  resnet-ocp evaluate results/sgd-24ep --data ../shared/data/cifar10
  resnet-ocp predict results/sgd-24ep/export cat.png dog.jpg --top-k 3
  resnet-ocp report results/sgd-24ep
  resnet-ocp export results/sgd-24ep runs/sgd-24ep-export"""


def build_parser(prog: str = "train.py", description: str = TRAIN_DESCRIPTION) -> argparse.ArgumentParser:
    """An argparse parser with one ``--flag`` per Config field; defaults are suppressed so the
    caller knows which options were given explicitly (needed to check a resume). Renamed
    fields also accept their old spelling (``--beta1-max`` for ``--momentum-max``).

    Args:
        prog: the command's name in help and errors.
        description: the first paragraph of ``--help``.
    """
    parser = OneLineParser(prog=prog, description=description, argument_default=argparse.SUPPRESS)
    parser.add_argument("--preset", metavar="NAME", help=f"named recipe under the options given: {', '.join(PRESETS)} (default: reference)")
    hints = typing.get_type_hints(Config)
    for f in dataclasses.fields(Config):
        kind, optional = _base_type(hints[f.name])
        flags = ["--" + name.replace("_", "-") for name in (f.name, OLD_NAMES.get(f.name)) if name]
        help_text = f"{f.metadata.get('help', '')} (default: {f.default})"
        choices = choices_of(f.name)
        if kind is bool:
            parser.add_argument(*flags, dest=f.name, action=argparse.BooleanOptionalAction, help=help_text)
        elif choices:
            parser.add_argument(*flags, dest=f.name, choices=choices, help=help_text)
        else:
            parser.add_argument(*flags, dest=f.name, type=kind, metavar=f.name.upper(), help=help_text)
    return parser


def _base_type(hint) -> tuple[type, bool]:
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args:
        return next(a for a in args if a is not type(None)), True
    return hint, False


def resolve_config(given: dict) -> Config:
    """The config of this invocation: the given options over the defaults, or for ``--resume``
    the saved config of that run (options other than resume-free ones must not contradict it).

    Args:
        given: options given explicitly on the command line, by field name, plus ``preset``.
    """
    given = dict(given)
    preset = given.pop("preset", None)
    if "resume" not in given:
        return Config.from_preset(preset or "reference", **given)
    if preset is not None:
        raise RunError("--preset applies to a new run only; a resumed run keeps its saved config: drop --preset")
    run_dir = Path(given["resume"])
    saved_file = run_dir / "config.json"
    if not saved_file.exists():
        raise RunError(f"--resume {run_dir}: no config.json there; give a run directory written by train.py")
    saved = Config.from_dict(read_json(saved_file))
    if "output_dir" in given and Path(given["output_dir"]).resolve() != run_dir.resolve():
        raise RunError(f"--output-dir {given['output_dir']} differs from --resume {run_dir}: a resumed run continues "
                       "in its own directory; drop --output-dir")
    for name, value in given.items():
        if name not in RESUME_FREE_FIELDS and name != "output_dir" and getattr(saved, name) != value:
            raise RunError(
                f"--{name.replace('_', '-')} {value} differs from the resumed run's {getattr(saved, name)}; "
                "a resumed run keeps its saved config: drop the option or start a new run"
            )
    history = run_dir / "history.json"
    done = max((h["epoch"] for h in read_json(history)), default=0) if history.exists() else 0
    if given.get("stop_after_epoch") is not None and given["stop_after_epoch"] <= done:
        raise RunError(f"--stop-after-epoch {given['stop_after_epoch']}: {run_dir} has done {done} epochs already; "
                       "give a later epoch or drop the option")
    free = {name: given[name] for name in RESUME_FREE_FIELDS if name in given}
    return saved.replace(**{**free, "resume": str(run_dir), "output_dir": str(run_dir), "stop_after_epoch": given.get("stop_after_epoch")})


def args_dir(args: argparse.Namespace) -> str:
    """The run directory named on the command line, for messages."""
    return getattr(args, "resume", None) or getattr(args, "output_dir", None) or "RUN_DIR"


def train(argv: list[str] | None = None, prog: str = "train.py", lr_find_only: bool = False) -> dict:
    """Parse training options, train, and return the run's result.

    Args:
        argv: training options (default ``sys.argv[1:]``).
        prog: the command's name in help and errors.
        lr_find_only: run the LR range test alone (``resnet-ocp lr-find``).

    Returns:
        dict with ``run_dir``, ``config``, ``history`` and, when the schedule finished,
        ``final_accuracy``.
    """
    description = (f"{COMMANDS['lr-find'][1][0].upper()}{COMMANDS['lr-find'][1][1:]}. Takes train's options." if lr_find_only
                   else TRAIN_DESCRIPTION)
    args = build_parser(prog, description).parse_args(argv)
    if lr_find_only:
        args.lr_find_only = True
    try:
        cfg = resolve_config(vars(args))
        from resnet_ocp.trainer import run  # here, not at the top: --help and bad options answer without importing torch

        return run(cfg)
    except UserError as exc:
        exit_with(exc)
    except Preempted:  # the trainer printed where it stopped and how to continue
        raise SystemExit(PREEMPTED_EXIT) from None
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        # Every file is written beside its final name and renamed, so what was finished before is intact.
        exit_with(f"no space left on the device writing {exc.filename or 'the run directory'} ({exc.strerror}); files written "
                  f"before are intact: free space, then continue with --resume {args_dir(args)}")


def overview() -> str:
    """The text of ``resnet-ocp --help``: the commands, one line each, and examples."""
    width = max(map(len, COMMANDS))
    lines = ["usage: resnet-ocp [COMMAND] [OPTIONS]", "",
             "The CIFAR-10 ResNet trained with One-Cycle through Accelerate, and the uses of a trained model.", "", "commands:"]
    lines += [f"  {name:<{width}}  {summary}" for name, (_, summary) in COMMANDS.items()]
    lines += ["", "Each command has --help. Without a command, the options are train's (as python train.py takes them).", "", EXAMPLES]
    return "\n".join(lines)


def main(argv: list[str] | None = None):
    """Run one command and return its result.

    Args:
        argv: ``[COMMAND] OPTIONS`` (default ``sys.argv[1:]``); without a command, train's options.

    Returns:
        The command's result: train and lr-find return the run's dict (see ``train``), the others
        what their module's ``main`` returns.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in ("-h", "--help"):
        print(overview())
        raise SystemExit(0)
    if argv and not argv[0].startswith("-") and argv[0] not in COMMANDS:
        exit_with(f"unknown command {argv[0]!r}; choose one of {', '.join(COMMANDS)}; see resnet-ocp --help")
    name, rest = (argv[0], argv[1:]) if argv else ("train", [])
    if name not in COMMANDS:
        name, rest = "train", argv
    prog = f"resnet-ocp {name}"
    if name in ("train", "lr-find"):
        return train(rest, prog, lr_find_only=name == "lr-find")
    module = importlib.import_module(COMMANDS[name][0])
    return module.main(rest, prog=prog)


def console() -> int:
    """The ``resnet-ocp`` console command: ``main``, then the exit status (1 when ``predict``
    could not read some of its files; errors have exited with 2 already)."""
    result = main()
    return 1 if isinstance(result, dict) and result.get("failed") else 0


def report_console() -> int:
    """The ``resnet-ocp-report`` console command (older spelling of ``resnet-ocp report``)."""
    main(["report", *sys.argv[1:]])
    return 0


if __name__ == "__main__":
    raise SystemExit(console())
