"""``resnet-ocp launch CONFIG [train options]``: ``accelerate launch`` with its config file checked first.

``accelerate launch --config_file missing.yaml`` ends in Accelerate's own traceback before any of
this project's code runs; this command checks that the file exists and is a YAML mapping with a
``distributed_type``, says what is wrong in one line if not, and otherwise replaces itself with
``accelerate launch --config_file CONFIG -m resnet_ocp.cli train [train options]``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from resnet_ocp.errors import OneLineParser, exit_with

CONFIGS = Path(__file__).resolve().parents[1] / "accelerate_configs"


def check_config(path: str) -> None:
    """Exit with one line unless ``path`` is a readable Accelerate config file.

    Args:
        path: the ``--config_file`` to give ``accelerate launch``.
    """
    import yaml

    hint = f"choose one of {CONFIGS}/*.yaml or write one with `accelerate config`"
    file = Path(path)
    if not file.is_file():
        exit_with(f"accelerate config {path} does not exist; {hint}")
    try:
        values = yaml.safe_load(file.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        exit_with(f"accelerate config {path} is not readable YAML ({type(exc).__name__}); {hint}")
    if not isinstance(values, dict) or "distributed_type" not in values:
        exit_with(f"accelerate config {path} has no distributed_type, so it is not an Accelerate config; {hint}")


def main(argv: list[str] | None = None, prog: str = "resnet-ocp launch") -> None:
    """Check the config, then exec ``accelerate launch`` on ``resnet_ocp.cli train``.

    Args:
        argv: ``CONFIG [train options]``.
        prog: the command's name in help and errors.
    """
    parser = OneLineParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("config", help="an Accelerate config file, e.g. accelerate_configs/cpu.yaml")
    args, train_options = parser.parse_known_args(argv)
    check_config(args.config)
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", args.config, "-m", "resnet_ocp.cli", "train",
               *train_options]
    sys.stdout.flush()
    os.execv(sys.executable, command)
