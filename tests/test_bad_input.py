"""Bad input: every case ends with exit status 2 and one line on stderr saying what is wrong and
how to fix it, without a traceback, and leaves an existing result as it was. Options that can be
checked without the data are checked before it loads (these cases point --data at nothing)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from conftest import Schema, reset_accelerate, tiny_args, write_parquet_set
from resnet_ocp.cli import main

NOWHERE = "./no/such/data"

# (options, a fragment of the one error line); each checked before any data loads.
NUMBERS = [
    (["--epochs", "0"], "--epochs must be >= 1, got 0"),
    (["--epochs", "many"], "argument --epochs: invalid int value: 'many'"),
    (["--batch-size", "0"], "--batch-size must be >= 1"),
    (["--batch-size", "20", "--grad-accum", "3"], "--batch-size (20) must be divisible by --grad-accum (3)"),
    (["--peak-epoch", "24"], "--peak-epoch must lie strictly between 0 and --epochs (24)"),
    (["--stop-after-epoch", "25"], "--stop-after-epoch must be between 1 and --epochs (24)"),
    (["--max-lr", "0"], "--max-lr must be a positive number"),
    (["--max-lr", "nan"], "--max-lr must be a positive number"),
    (["--div-factor", "0"], "--div-factor and --final-div-factor must be positive"),
    (["--momentum-max", "1"], "need 0 <= --momentum-min <= --momentum-max < 1"),
    (["--label-smoothing", "1"], "--label-smoothing must be in [0, 1)"),
    (["--ema", "1"], "--ema must be in [0, 1)"),
    (["--bn-momentum", "0"], "--bn-momentum must be in (0, 1]"),
    (["--logit-scale", "0"], "--logit-scale must be a positive number"),
    (["--cutout", "33"], "--cutout must be at most 32"),
    (["--crop-pad-mode", "reflect", "--crop-padding", "32"], "--crop-padding must be below 32 (the image side) with --crop-pad-mode reflect"),
    (["--crop-padding", "-1"], "--weight-decay, --crop-padding and --cutout must be >= 0"),
    (["--width", "0"], "--width must be >= 1"),
    (["--train-samples", "5"], "--train-samples must be at least 10"),
    (["--lr-find-iters", "19"], "--lr-find-iters must be at least 20"),
    (["--lr-find-start", "1", "--lr-find-end", "0.5"], "need 0 < --lr-find-start < --lr-find-end"),
    (["--keep-checkpoints", "0"], "--keep-checkpoints must be >= 1"),
    (["--process-group-timeout", "0"], "--process-group-timeout must be >= 1"),
    (["--peak-epoch", "30"], "--peak-epoch must lie strictly between 0 and --epochs (24)"),
    (["--max-lr", "-1"], "--max-lr must be a positive number"),
    (["--optimizer", "lamb"], "argument --optimizer: invalid choice: 'lamb'"),
    (["--lr-find-rule", "magic"], "argument --lr-find-rule: invalid choice: 'magic'"),
    (["--no-such-option"], "unrecognized arguments: --no-such-option"),
    (["--preset", "turbo"], "--preset must be one of reference, fast, sgd24"),
]


def last_error_line(capsys, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and sum(line.startswith("error: ") for line in err.splitlines()) == 1, err
    reset_accelerate()
    return err.splitlines()[-1]


@pytest.mark.parametrize("argv, fragment", NUMBERS, ids=[" ".join(a) for a, _ in NUMBERS])
def test_numbers_at_and_beyond_their_bounds(argv, fragment, capsys):
    """A number at or past its bound is refused in one line, before the data (here: none) loads."""
    line = last_error_line(capsys, ["--data", NOWHERE, *argv])
    assert line.startswith("error: ") and fragment in line, line


@pytest.fixture(scope="module")
def bad_sets(tmp_path_factory) -> dict[str, Path]:
    """Parquet sets in the real layout, each broken in one way."""
    root = tmp_path_factory.mktemp("bad")
    (root / "not_a_dataset").mkdir()
    (root / "not_a_dataset" / "notes.txt").write_text("no parquet here\n")
    return {
        "not_a_dataset": root / "not_a_dataset",
        "wrong_columns": write_parquet_set(root / "wrong_columns", 20, 10, schema=Schema(columns=("image", "labels"))),
        "other_names": write_parquet_set(root / "other_names", 20, 10, schema=Schema(names=tuple(f"class{i}" for i in range(10)))),
        "label_missing": write_parquet_set(root / "label_missing", 20, 10, schema=Schema(first_label=-1)),
        "small_images": write_parquet_set(root / "small_images", 20, 10, schema=Schema(size=16)),
        "grayscale": write_parquet_set(root / "grayscale", 20, 10, schema=Schema(mode="L")),
        "empty_test": write_parquet_set(root / "empty_test", 20, 0),
    }


DATA_CASES = [
    ("missing", "no such directory; give a CIFAR-10 parquet directory (e.g. ../shared/data/cifar10) or a Hub id"),
    ("not_a_dataset", "has splits ['train'], but needs 'train' and 'test'"),
    ("wrong_columns", "expected 'img' (Image) and 'label' (ClassLabel)"),
    ("other_names", "has label names ['class0'"),
    ("label_missing", "label -1 of row 0 is outside 0..9"),
    ("small_images", "image 0 is 16x16, expected 32x32"),
    ("grayscale", "image 0 is in mode L, expected RGB"),
    ("empty_test", "as a dataset: Instruction \"test\" corresponds to no data!; give a directory in the uoft-cs/cifar10 parquet layout"),
    ("hub_offline", "the Hub is offline here"),
]


@pytest.mark.parametrize("case, fragment", DATA_CASES, ids=[c for c, _ in DATA_CASES])
def test_data_that_is_not_cifar10(case, fragment, bad_sets, cache_dir, tmp_path, capsys):
    """A missing path, a folder that is no dataset, wrong columns, other label names, a label out
    of range, images of another size or mode, an empty split, a Hub id while offline: one line
    each, naming the problem, and no config.json left to block the corrected command."""
    source = {"missing": NOWHERE, "hub_offline": "someone/cifar10-not-cached"}.get(case) or str(bad_sets[case])
    line = last_error_line(capsys, tiny_args(Path(source), cache_dir, tmp_path / "run"))
    assert fragment in line, line
    assert not (tmp_path / "run" / "config.json").exists()  # no run left behind: the corrected command starts afresh


def _digest(run: Path) -> dict[str, str]:
    return {str(p.relative_to(run)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(run.rglob("*")) if p.is_file()}


def test_run_directory_mistakes_leave_results_alone(finished_run, tiny_data, cache_dir, tmp_path, capsys):
    """--resume on nothing, on a directory that holds no run, on a finished run, or with a
    contradicting option; an output path that is a file or cannot be created; a finished run as
    the output: one line each, and the finished run's files are byte for byte as they were."""
    run = finished_run["run_dir"]
    (Path(run) / ".lock").unlink()  # left by the run that made it; a refused command must not make one
    before = _digest(Path(run))
    (tmp_path / "empty").mkdir()
    (tmp_path / "a_file").write_text("x")
    cases = [
        (["--resume", "/no/such/run"], "no config.json there"),
        (["--resume", str(tmp_path / "empty")], "no config.json there"),
        (["--resume", run], "has finished (model.safetensors exists)"),
        (["--resume", run, "--epochs", "7"], "--epochs 7 differs from the resumed run's 2"),
        (tiny_args(tiny_data, cache_dir, tmp_path / "a_file"), "cannot create the run directory"),
        (tiny_args(tiny_data, cache_dir, Path("/proc/no-runs-here")), "cannot create the run directory"),
        (tiny_args(tiny_data, cache_dir, Path(run)), "already holds a run; continue it with --resume"),
    ]
    for argv, fragment in cases:
        line = last_error_line(capsys, argv)
        assert fragment in line, (argv, line)
    assert _digest(Path(run)) == before
