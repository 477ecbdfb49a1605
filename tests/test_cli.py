"""The command line: options generated from Config, one-line errors, and the run-directory guards."""

import dataclasses
import json

import pytest

from conftest import REPO, tiny_args
from resnet_ocp.cli import build_parser, main
from resnet_ocp.config import RESUME_FREE_FIELDS, Config, ConfigError


def test_every_config_field_is_an_option():
    """Each dataclass field has a --flag; defaults are the mission recipe."""
    help_text = build_parser().format_help()
    for f in dataclasses.fields(Config):
        assert "--" + f.name.replace("_", "-") in help_text
    cfg = Config()
    assert (cfg.epochs, cfg.peak_epoch, cfg.batch_size, cfg.cutout, cfg.crop_padding) == (24, 5, 512, 8, 4)
    assert cfg.pct_start == pytest.approx(5 / 24)


def test_config_rejects_unknown_keys_and_bad_choices():
    """A config.json with a stray key or a choice outside its Literal is refused with a clear message."""
    with pytest.raises(ConfigError, match="unknown config keys"):
        Config.from_dict({"epochs": 3, "epoch": 4})
    with pytest.raises(ConfigError, match="--optimizer must be one of adam, adamw, sgd, got 'lamb'"):
        Config.from_dict({"optimizer": "lamb"})


def test_old_momentum_spellings_still_work():
    """Flags and config.json keys from before the momentum rename (--cycle-beta1, --beta1-max,
    --beta1-min; cycle_beta1, beta1_max, beta1_min) set the renamed fields."""
    from resnet_ocp.cli import resolve_config

    args = vars(build_parser().parse_args(["--no-cycle-beta1", "--beta1-max", "0.9", "--beta1-min", "0.8"]))
    cfg = resolve_config(args)
    assert (cfg.cycle_momentum, cfg.momentum_max, cfg.momentum_min) == (False, 0.9, 0.8)
    assert Config.from_dict({"cycle_beta1": False, "beta1_max": 0.9, "beta1_min": 0.8}) == cfg


def test_existing_run_is_never_overwritten_and_resume_keeps_its_config(finished_run, tiny_data, cache_dir, capsys):
    """Starting a new run in a finished run's directory, resuming a finished run, or resuming
    with a contradicting option, another directory or a stop at an epoch already done all stop
    with one line and leave the files untouched."""
    run_dir = finished_run["run_dir"]
    before = (dataclasses.replace, open(f"{run_dir}/history.json").read())
    for argv, fragment in [
        (tiny_args(tiny_data, cache_dir, run_dir), "already holds a run; continue it with --resume"),
        (["--resume", run_dir], "has finished"),
        (["--resume", run_dir, "--epochs", "7"], "differs from the resumed run's"),
        (["--resume", "/no/such/run"], "no config.json there"),
        (["--resume", run_dir, "--output-dir", "/tmp/elsewhere"], "a resumed run continues in its own directory"),
        (["--resume", run_dir, "--stop-after-epoch", "1"], "epochs already; give a later epoch"),
    ]:
        with pytest.raises(SystemExit):
            main(argv)
        assert fragment in capsys.readouterr().err
    assert open(f"{run_dir}/history.json").read() == before[1]


def test_resume_takes_the_resume_free_options_given(finished_run, tmp_path):
    """On ``--resume`` each option of RESUME_FREE_FIELDS that is given wins over the saved one,
    one not given keeps the saved value, and the run continues in its own directory."""
    from resnet_ocp.cli import resolve_config

    run_dir = tmp_path / "stopped"  # a run stopped in epoch 1: its config.json, no history yet
    run_dir.mkdir()
    (run_dir / "config.json").write_text(open(f"{finished_run['run_dir']}/config.json").read())
    saved = Config.from_dict(json.loads((run_dir / "config.json").read_text()))
    given = {"resume": str(run_dir), "output_dir": str(run_dir), "stop_after_epoch": 1, "progress": not saved.progress,
             "process_group_timeout": saved.process_group_timeout + 7}
    cfg = resolve_config(given)
    assert set(RESUME_FREE_FIELDS) <= set(given)
    assert {name: getattr(cfg, name) for name in given} == given
    kept = resolve_config({"resume": str(run_dir)})
    assert kept.replace(resume=None, output_dir=None) == saved.replace(output_dir=None)


def test_readme_documents_every_option():
    """Each Config field has a row in the README's options table."""
    from conftest import REPO

    readme = (REPO / "README.md").read_text()
    missing = [f.name for f in dataclasses.fields(Config) if f"| `--{f.name.replace('_', '-')}` |" not in readme]
    assert missing == []


def test_preset_sets_values_under_the_explicit_options(capsys):
    """``--preset fast`` applies the fast recipe's values over the defaults, an option given
    explicitly wins over the preset, and an unknown preset or a preset on a resume is one line."""
    from resnet_ocp.cli import resolve_config
    from resnet_ocp.config import PRESETS

    fast = PRESETS["fast"]
    assert fast and resolve_config({"preset": "reference"}) == Config()
    cfg = resolve_config({"preset": "fast", "epochs": 10})
    assert cfg.epochs == 10
    assert {k: getattr(cfg, k) for k in fast if k != "epochs"} == {k: v for k, v in fast.items() if k != "epochs"}
    for argv, fragment in [(["--preset", "turbo"], "--preset must be one of reference, fast"),
                           (["--preset", "fast", "--resume", "/tmp"], "--preset applies to a new run only")]:
        with pytest.raises(SystemExit):
            main(argv)
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and fragment in err and "\n" not in err


@pytest.mark.parametrize(("preset", "record"), [("fast", "fast-8ep"), ("sgd24", "sgd-24ep"), ("fast10", "fast10-seed0"),
                                                   ("fast5", "fast5-seed0")])
def test_preset_is_the_recipe_of_its_committed_run(preset, record):
    """Each SGD preset reproduces the configuration of the committed run it was measured by
    (``fast``: results/fast-8ep, 92.11% in 8 epochs; ``sgd24``: results/sgd-24ep; ``fast10``:
    results/fast10-seed0, 94.02% in 10 epochs; ``fast5``: results/fast5-seed0, 91.67% in 5) in
    every field that shapes training."""
    recorded = Config.from_dict(json.loads((REPO / "results" / record / "config.json").read_text())).to_dict()
    run_only = {*RESUME_FREE_FIELDS, "data", "output_dir", "cache_dir"}
    config = Config.from_preset(preset).to_dict()
    assert {k: v for k, v in recorded.items() if k not in run_only} == {k: v for k, v in config.items() if k not in run_only}


def test_readme_records_table_is_the_one_the_committed_runs_give():
    """The README's table of records is, line for line, what `resnet-ocp records` builds from the
    run directories under results/ (medians, ranges, times to 90/92/94%, commands, machines)."""
    from resnet_ocp.records import HEADER, records_table

    readme = (REPO / "README.md").read_text().splitlines()
    start = readme.index(HEADER)
    end = next(i for i in range(start, len(readme)) if not readme[i].startswith("|"))
    assert "\n".join(readme[start:end]) == records_table(REPO / "results")


def test_readme_names_the_versions_the_records_ran_with():
    """The versions the README's records sentence names ("torch X, accelerate Y") are exactly the
    ones in the committed records' run.json sessions, so a record made with another version shows."""
    import re

    sentence = next(line for line in (REPO / "README.md").read_text().splitlines() if line.startswith("Minutes count epochs"))
    named = re.search(r"\(torch ([^,]+), accelerate ([^)]+)\)", sentence)
    assert named, sentence
    sessions = [s for run in sorted((REPO / "results").glob("*/run.json")) for s in json.loads(run.read_text())["sessions"]]
    assert len(sessions) >= 10
    assert {s["torch"].split("+")[0] for s in sessions} == set(named[1].split(" or "))
    assert {s["accelerate"] for s in sessions} == set(named[2].split(" or "))


def test_older_run_files_still_read():
    """A committed record's steps.csv (momentum column still named beta1) and config.json (beta1_*
    keys) load under today's names, with the values their files hold."""
    from resnet_ocp.rundir import read_steps

    record = REPO / "results" / "sgd-24ep"
    header = (record / "steps.csv").read_text().splitlines()[0]
    assert header == "step,epoch,samples,lr,beta1,loss"
    rows = read_steps(record / "steps.csv")
    assert len(rows) == 24 * 98 and {r["momentum"] for r in rows} == {0.9}
    saved = json.loads((record / "config.json").read_text())
    assert Config.from_dict(saved).momentum_max == saved["beta1_max"] == 0.9


def test_every_script_calls_main_only_after_defining_everything():
    """In each module run as a script (``python -m resnet_ocp.X``, ``python benchmarks/X.py``) the
    ``if __name__ == "__main__"`` guard is the last statement, so nothing ``main`` calls is
    defined after it runs."""
    import ast

    scripts = [p for p in [*REPO.glob("resnet_ocp/*.py"), *REPO.glob("benchmarks/*.py"), REPO / "train.py"]
               if '__name__ == "__main__"' in p.read_text()]
    assert len(scripts) >= 10
    for path in scripts:
        body = ast.parse(path.read_text()).body
        guards = [i for i, node in enumerate(body) if isinstance(node, ast.If) and "__main__" in ast.unparse(node.test)]
        assert guards == [len(body) - 1], f"{path.relative_to(REPO)}: the __main__ guard is not the last statement"
