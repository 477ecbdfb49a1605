"""The one console command: `resnet-ocp train | launch | stop | lr-find | evaluate | predict | report | export | records`,
each with --help and one-line errors, and `main(argv)` without a command still meaning train."""

import json
from pathlib import Path

import pytest

from conftest import launch, tiny_args
from resnet_ocp.cli import COMMANDS, main

NAMES = ["train", "launch", "stop", "lr-find", "evaluate", "predict", "report", "export", "records"]


def test_overview_lists_every_command(capsys):
    """`resnet-ocp --help` exits 0 and names each of the nine commands with its one-line summary."""
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    out = capsys.readouterr().out
    assert info.value.code == 0 and list(COMMANDS) == NAMES
    for name, (_, summary) in COMMANDS.items():
        assert f"  {name}" in out and summary in out


@pytest.mark.parametrize("name", NAMES)
def test_every_command_has_help(name, capsys):
    """`resnet-ocp NAME --help` exits 0 with a usage line under that command's name."""
    with pytest.raises(SystemExit) as info:
        main([name, "--help"])
    assert info.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: resnet-ocp {name} ")


@pytest.mark.parametrize("argv, fragment", [
    (["predcit", "m", "x.png"], "unknown command 'predcit'; choose one of train, launch, stop, lr-find"),
    (["train", "--epochs", "0"], "--epochs must be >= 1"),
    (["lr-find", "--lr-find-iters", "5"], "--lr-find-iters must be at least 20"),
    (["evaluate"], "the following arguments are required: run_dir; see resnet-ocp evaluate --help"),
    (["evaluate", "/no/such/run"], "/no/such/run lacks config.json, model.safetensors"),
    (["report", "/no/such/run"], "/no/such/run lacks config.json, history.json, steps.csv, model.safetensors"),
    (["predict", "results/sgd-24ep/export"], "the following arguments are required: IMAGE; see resnet-ocp predict --help"),
    (["predict", "m", "x.png", "--top-k", "0"], "argument --top-k: must be >= 1, got 0"),
    (["predict", "/no/such/model", "x.png"], "MODEL /no/such/model is no directory here"),
    (["export", "/no/such/run", "out"], "/no/such/run lacks config.json, history.json, model.safetensors"),
    (["records", "/no/such/results"], "/no/such/results is not a folder; give the folder that holds the record directories"),
])
def test_bad_input_to_any_command_is_one_error_line(argv, fragment, capsys):
    """Bad input to any command ends with exit status 2 and a single `error:` line naming the
    problem (argparse's own refusals name the command's --help)."""
    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err.strip()
    assert info.value.code == 2 and err.startswith("error: ") and fragment in err and "\n" not in err


def test_no_command_means_train(capsys):
    """`main(OPTIONS)` is `main(["train", *OPTIONS])`: the same options, the same refusals."""
    answers = []
    for argv in (["--epochs", "0"], ["train", "--epochs", "0"]):
        with pytest.raises(SystemExit):
            main(argv)
        answers.append(capsys.readouterr().err)
    assert answers[0] == answers[1] == "error: --epochs must be >= 1, got 0\n"


def test_lr_find_is_train_with_lr_find_only(monkeypatch, tmp_path):
    """`resnet-ocp lr-find OPTIONS` runs the config of `resnet-ocp train OPTIONS --lr-find-only`
    (what that flag does is tested in test_lr_finder.py)."""
    import resnet_ocp.trainer

    monkeypatch.setattr(resnet_ocp.trainer, "run", lambda cfg: cfg)
    options = ["--data", "d", "--output-dir", str(tmp_path / "lr"), "--lr-find-iters", "30", "--width", "8"]
    assert main(["lr-find", *options]) == main(["train", *options, "--lr-find-only"])
    assert main(["lr-find", *options]).lr_find_only and not main(["train", *options]).lr_find_only


def test_evaluate_command_is_the_evaluate_module(finished_run):
    """`resnet-ocp evaluate RUN_DIR` returns what `python -m resnet_ocp.evaluate RUN_DIR` does:
    the run's recorded final accuracy, recomputed."""
    result = main(["evaluate", finished_run["run_dir"]])
    assert result["accuracy"] == pytest.approx(finished_run["history"][-1]["test_accuracy"], abs=1e-9) and result["total"] == 100


@pytest.mark.slow
def test_accelerate_launch_of_the_module_trains(tiny_data, cache_dir, tmp_path):
    """`accelerate launch -m resnet_ocp.cli train ...` (Accelerate's --module) runs a real launch
    of the package's command: one epoch on the tiny set, in the config file's fp32, finished."""
    out = tmp_path / "module"
    proc = launch("cpu_fp32.yaml", ["train", *tiny_args(tiny_data, cache_dir, out, "--epochs", "1", "--peak-epoch", "0.5")],
                  module="resnet_ocp.cli")
    assert proc.returncode == 0, proc.stderr[-3000:]
    (session,) = json.loads((out / "run.json").read_text())["sessions"]
    assert (session["mixed_precision"], session["num_processes"]) == ("no", 1)
    assert [h["epoch"] for h in json.loads((out / "history.json").read_text())] == [1]
    assert Path(out / "model.safetensors").exists() and proc.stdout.count("Test set: Average loss") == 1


def test_launch_refuses_a_config_that_accelerate_cannot_use(tmp_path):
    """`resnet-ocp launch CONFIG`: a config file that is missing, not YAML, or not an Accelerate
    config is one error line (exit 2) where `accelerate launch` would end in a traceback."""
    import subprocess
    import sys

    from conftest import REPO

    (tmp_path / "broken.yaml").write_text("a: [\n")
    (tmp_path / "other.yaml").write_text("name: not accelerate\n")
    for config, fragment in [("nope.yaml", "accelerate config nope.yaml does not exist"),
                             (str(tmp_path / "broken.yaml"), "is not readable YAML"), (str(tmp_path / "other.yaml"), "has no distributed_type")]:
        proc = subprocess.run([sys.executable, "-m", "resnet_ocp.cli", "launch", config], capture_output=True, text=True, cwd=REPO)
        assert proc.returncode == 2 and proc.stderr.strip().startswith("error: ") and fragment in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_launch_with_a_good_config_trains(tiny_data, cache_dir, tmp_path):
    """`resnet-ocp launch accelerate_configs/cpu_fp32.yaml ...` runs `accelerate launch -m
    resnet_ocp.cli train` with the options: the run finishes its two epochs."""
    import subprocess
    import sys

    from conftest import REPO

    out = tmp_path / "launched"
    proc = subprocess.run([sys.executable, "-m", "resnet_ocp.cli", "launch", "accelerate_configs/cpu_fp32.yaml",
                           *tiny_args(tiny_data, cache_dir, out)], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads((out / "summary.json").read_text())["epochs"] == 2
