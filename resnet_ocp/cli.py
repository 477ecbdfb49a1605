"""Command line: ``train.py`` / ``resnet-ocp``. Options are generated from ``Config``'s fields.

``main`` returns the run's result (a dict) so tests can call it in-process; bad input ends
with one ``error:`` line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import types
import typing
from pathlib import Path

from resnet_ocp.atomic import read_json
from resnet_ocp.config import PRESETS, RENAMED_FIELDS, RESUME_FREE_FIELDS, Config, choices_of
from resnet_ocp.errors import OneLineParser, RunError, UserError, exit_with
from resnet_ocp.preemption import PREEMPTED_EXIT, Preempted

OLD_NAMES = {new: old for old, new in RENAMED_FIELDS.items()}


def build_parser() -> argparse.ArgumentParser:
    """An argparse parser with one ``--flag`` per Config field; defaults are suppressed so the
    caller knows which options were given explicitly (needed to check a resume). Renamed
    fields also accept their old spelling (``--beta1-max`` for ``--momentum-max``)."""
    parser = OneLineParser(
        prog="train.py",
        description="Train the CIFAR-10 ResNet with One-Cycle through Accelerate. Defaults are the reference recipe.",
        argument_default=argparse.SUPPRESS,
    )
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
    for name, value in given.items():
        if name not in RESUME_FREE_FIELDS and name != "output_dir" and getattr(saved, name) != value:
            raise RunError(
                f"--{name.replace('_', '-')} {value} differs from the resumed run's {getattr(saved, name)}; "
                "a resumed run keeps its saved config: drop the option or start a new run"
            )
    return saved.replace(
        resume=str(run_dir), output_dir=str(run_dir),
        stop_after_epoch=given.get("stop_after_epoch"), progress=given.get("progress", saved.progress),
    )


def args_dir(args: argparse.Namespace) -> str:
    """The run directory named on the command line, for messages."""
    return getattr(args, "resume", None) or getattr(args, "output_dir", None) or "RUN_DIR"


def main(argv: list[str] | None = None) -> dict:
    """Parse ``argv``, train, and return the run's result.

    Args:
        argv: command-line arguments (default ``sys.argv[1:]``).

    Returns:
        dict with ``run_dir``, ``config``, ``history`` and, when the schedule finished,
        ``final_accuracy``.
    """
    args = build_parser().parse_args(argv)
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


if __name__ == "__main__":
    main()
