"""``resnet-ocp records [RESULTS_DIR]``: the README's table of records, one row per recipe.

A record is a finished run directory under ``results/``. Directories whose names differ only in a
``-seedN`` suffix (``fast10-seed0``, ``fast10-seed1``; a name without the suffix is the seed its
config holds) are one recipe trained from several seeds: their configs must agree in every option
but the seed. A recipe's figures are the median over its seeds with the range beside it, and a
figure from one seed says so, because seeds alone moved the 5-epoch fast recipe by 0.57 points
(89.57% and 90.14% on seeds 0 and 1), more than most single levers.
"""

from __future__ import annotations

import dataclasses
import re
import statistics
from dataclasses import dataclass
from pathlib import Path

from resnet_ocp.atomic import read_json
from resnet_ocp.config import PRESETS, Config
from resnet_ocp.errors import OneLineParser, RunError, UserError, exit_with
from resnet_ocp.export import HOUSEKEEPING

# Options that say where the data is or which seed ran: never part of a recipe's command.
NOT_RECIPE = (*HOUSEKEEPING, "data", "seed")
TARGETS = ("0.90", "0.92", "0.94")
HEADER = ("| record | command | seeds | final test %: median (range) | first >= 90% | first >= 92% | first >= 94% "
          "| minutes of epochs (median per machine) | machine, precision |")
_SEED_SUFFIX = re.compile(r"-seed\d+$")


@dataclass(frozen=True)
class Run:
    """One committed run: its directory, config, ``summary.json`` and where it ran."""

    path: Path
    config: Config
    summary: dict
    machine: str
    lr_from_range_test: bool


def read_run(path: Path) -> Run:
    """Read one record directory (``config.json``, ``summary.json``; ``run.json`` and
    ``lr_finder.json`` where it has them).

    Args:
        path: a finished run directory.
    """
    cfg = Config.from_dict(read_json(path / "config.json"))
    sessions = read_json(path / "run.json")["sessions"] if (path / "run.json").exists() else []
    machines = dict.fromkeys(_machine(s) for s in sessions)
    finder = path / "lr_finder.json"
    from_test = finder.exists() and read_json(finder)["suggested_lr"] == cfg.max_lr
    return Run(path, cfg, read_json(path / "summary.json"), " + ".join(machines) or "not recorded", from_test)


def _machine(session: dict) -> str:
    from resnet_ocp.session import machine_words  # here: the session module imports torch and accelerate

    return ", ".join(machine_words(session))


def group_runs(results_dir: Path) -> dict[str, list[Run]]:
    """The records under ``results_dir`` by recipe name, each recipe's runs in seed order.

    Raises RunError when two runs of one recipe differ in an option other than the seed.

    Args:
        results_dir: the folder holding one directory per record (``results/``).
    """
    groups: dict[str, list[Run]] = {}
    for summary in sorted(Path(results_dir).glob("*/summary.json")):
        groups.setdefault(_SEED_SUFFIX.sub("", summary.parent.name), []).append(read_run(summary.parent))
    for name, runs in groups.items():
        runs.sort(key=lambda r: r.config.seed)
        first, recipe = runs[0], _recipe(runs[0])
        for other in runs[1:]:
            differ = [k for k, v in _recipe(other).items() if v != recipe.get(k)]
            if differ:
                raise RunError(f"{other.path} and {first.path} differ in {', '.join(differ)}: the seeds of recipe {name!r} must "
                               f"share every other option; rename one of them")
    return groups


def _recipe(run: Run) -> dict:
    skip = (*NOT_RECIPE, "max_lr") if run.lr_from_range_test else NOT_RECIPE
    return {f.name: getattr(run.config, f.name) for f in dataclasses.fields(Config) if f.name not in skip}


def recipe_command(run: Run) -> str:
    """The shortest option list that gives the run's recipe: a preset plus what differs from it
    (data, seed and housekeeping aside), or ``defaults``.

    Args:
        run: one run of the recipe.
    """
    recipe = _recipe(run)
    candidates = []
    for preset, values in PRESETS.items():
        base = dataclasses.asdict(Config(**values))
        flags = [_flag(k, v) for k, v in recipe.items() if v != base[k]]
        candidates.append(([f"--preset {preset}"] if preset != "reference" else []) + flags)
    words = min(candidates, key=len)
    command = f"`{' '.join(words)}`" if words else "defaults"
    return f"{command} (range-test LR)" if run.lr_from_range_test else command


def _flag(name: str, value) -> str:
    flag = name.replace("_", "-")
    if isinstance(value, bool):
        return f"--{flag}" if value else f"--no-{flag}"
    return f"--{flag} {value}"


def _median_range(values: list[float], digits: int) -> str:
    middle = f"{statistics.median(values):.{digits}f}"
    return middle if len(values) == 1 else f"{middle} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def _per_machine(runs: list[Run], seconds) -> str:
    """Median minutes per machine, in the machine column's order: minutes of an fp32 AVX2 run and
    of a bf16 AMX run differ five-fold, so one median over both would describe neither."""
    by_machine: dict[str, list[float]] = {}
    for r in runs:
        if (value := seconds(r)) is not None:
            by_machine.setdefault(r.machine, []).append(value / 60)
    return " / ".join(f"{statistics.median(m):.1f}" for m in by_machine.values())


def _reached(runs: list[Run], target: str) -> str:
    hits = [r.summary["first_reached"][target] for r in runs if r.summary["first_reached"].get(target)]
    if not hits:
        return "not reached"
    epoch = statistics.median(h["epoch"] for h in hits)
    minutes = _per_machine(runs, lambda r: (r.summary["first_reached"].get(target) or {}).get("seconds"))
    cell = f"epoch {epoch:g}, {minutes} min"
    return cell if len(hits) == len(runs) else f"{cell} ({len(hits)} of {len(runs)} seeds)"


def table_row(name: str, runs: list[Run]) -> str:
    """One recipe's row of the records table.

    Args:
        name: the recipe's name (its directories' name without ``-seedN``).
        runs: its runs, in seed order.
    """
    seeds = ", ".join(f"[{r.config.seed}](results/{r.path.name})" for r in runs)
    final = _median_range([100 * r.summary["final_accuracy"] for r in runs], 2)
    if len(runs) == 1:
        final += " (one seed)"
    minutes = _per_machine(runs, lambda r: r.summary["seconds"])
    machines = " / ".join(dict.fromkeys(r.machine for r in runs))
    cells = [f"`{name}`", recipe_command(runs[0]), seeds, final, *(_reached(runs, t) for t in TARGETS), minutes, machines]
    return "| " + " | ".join(cells) + " |"


def records_table(results_dir: str | Path) -> str:
    """The whole records table in Markdown, as the README holds it.

    Args:
        results_dir: the folder holding one directory per record (``results/``).
    """
    groups = group_runs(Path(results_dir))
    order = sorted(groups, key=lambda name: (-groups[name][0].config.epochs, name))
    rows = [table_row(name, groups[name]) for name in order]
    return "\n".join([HEADER, "|" + "---|" * HEADER.count(" | ") + "---|", *rows])


def main(argv: list[str] | None = None, prog: str = "python -m resnet_ocp.records") -> str:
    """Print the records table (the README's, from the committed run directories).

    Args:
        argv: ``[RESULTS_DIR]`` (default ``results``).
        prog: the command's name in help and errors.
    """
    parser = OneLineParser(prog=prog, description=__doc__.splitlines()[0].split(": ", 1)[1])
    parser.add_argument("results_dir", nargs="?", default="results", help="folder of record directories (default: results)")
    args = parser.parse_args(argv)
    if not Path(args.results_dir).is_dir():
        exit_with(f"{args.results_dir} is not a folder; give the folder that holds the record directories, e.g. results")
    try:
        table = records_table(args.results_dir)
    except UserError as exc:
        exit_with(exc)
    print(table)
    return table


if __name__ == "__main__":
    main()
