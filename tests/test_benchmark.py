"""The benchmarks: throughput.py (with step_timing.py) records every figure; ablations.py fills its table;
seeds.py trains a recipe from several seeds and publishes them as records."""

import argparse
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO

COLUMNS = ("bare_step_img_s", "our_step_img_s", "textbook_step_img_s", "our_pipeline_img_s", "textbook_pipeline_img_s",
           "peak_memory_mb", "ours_over_bare", "ours_over_textbook", "pipeline_ours_over_textbook",
           "train_gflop_per_image", "matmul_gflop_s", "bare_fraction_of_matmul", "ours_fraction_of_matmul",
           "epoch_seconds_at_matmul_rate", "our_epoch_seconds")


def test_quick_benchmark_writes_a_complete_positive_record(tiny_data, cache_dir, tmp_path):
    """A tiny --quick run appends one JSON line with the command, versions, machine and every
    throughput figure and ratio, all positive, with the FLOP count of the network it timed
    (checked by hand), and prints the same figures as the five measurements (a) to (e)."""
    results = tmp_path / "results.jsonl"
    cmd = [sys.executable, str(REPO / "benchmarks" / "throughput.py"), "--quick", "--data", str(tiny_data), "--width", "8",
           "--batch-size", "20", "--workers", "0", "--cache-dir", str(cache_dir), "--results", str(results)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads(results.read_text().splitlines()[-1])
    assert record["steps"] == 2 and record["repeats"] == 2 and record["batch_size"] == 20 and "--quick" in record["command"]
    assert record["versions"]["torch"] and record["machine"]
    assert all(record[c] > 0 for c in COLUMNS), {c: record[c] for c in COLUMNS}
    assert record["train_gflop_per_image"] == pytest.approx(analytic_train_gflop(8), rel=1e-12)
    printed = {line.split()[0]: line for line in proc.stdout.splitlines() if line.startswith("(")}
    assert sorted(printed) == ["(a)", "(b)", "(c)", "(d)", "(e)"]
    assert f"{record['bare_step_img_s']:10.1f} img/s" in printed["(a)"] and f"{record['our_step_img_s']:10.1f} img/s" in printed["(b)"]
    assert f"{record['train_gflop_per_image']:.3f} GFLOP per training image" in printed["(e)"]


def test_lever_cost_times_each_variant_as_configured_interleaved(tiny_data, cache_dir, tmp_path):
    """benchmarks/lever_cost.py on the tiny set: each variant's step is built from its own flags
    (Lookahead and EMA attached, frozen batch-norm weights not trainable, the bias LR in a second
    optimizer group), the runs go fast, v1, v2, fast, v1, v2, each median is of its runs, and the
    cost column is fast's median over the variant's."""
    import statistics

    results = tmp_path / "lever_cost.jsonl"
    only = ["fast", "fast+bn_frozen_bias_lr64", "fast+lookahead", "fast+ema", "fast+whiten", "fast+ghost_bn"]
    args = ["--data", str(tiny_data), "--only", *only, "--steps", "1", "--repeats", "2", "--extra",
            "--width 8 --batch-size 64", "--cache-dir", str(cache_dir), "--results", str(results)]
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "lever_cost.py"), *args], capture_output=True, text=True,
                          timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads(results.read_text().splitlines()[-1])
    assert record["order"] == only * 2 and record["command"] == shlex.join(["lever_cost.py", *args])
    rows = record["variants"]
    assert list(rows) == only and all(row["batch_size"] == 64 for row in rows.values())
    for name, row in rows.items():
        assert len(row["runs_img_s"]) == 2 and row["median_img_s"] == statistics.median(row["runs_img_s"]) > 0, name
        assert row["cost_over_fast"] == pytest.approx(rows["fast"]["median_img_s"] / row["median_img_s"]), name
        assert f"{name:26} {row['median_img_s']:15.1f}" in proc.stdout, name
    # width 8: every batch norm's 8-64 weights frozen; the bias group at 64x the LR is the second group.
    frozen = rows["fast"]["trainable_parameters"] - rows["fast+bn_frozen_bias_lr64"]["trainable_parameters"]
    assert frozen == 8 + 16 + 16 + 16 + 32 + 64 + 64 + 64
    assert rows["fast+bn_frozen_bias_lr64"]["optimizer_groups"] == 2 and rows["fast"]["optimizer_groups"] == 1
    assert rows["fast+whiten"]["trainable_parameters"] == rows["fast"]["trainable_parameters"]
    assert {name: row["weight_averages"] for name, row in rows.items() if row["weight_averages"]} == {
        "fast+lookahead": ["lookahead.safetensors"], "fast+ema": ["ema.safetensors"]}


def test_interleaved_runs_are_recorded_with_their_medians_order_and_profile(tiny_data, cache_dir, tmp_path):
    """--steps 1 --repeats 2 --profile 1 on the tiny set: every interleaved measurement keeps two
    runs, its figure is their median, the runs went a, b, c, a, b, c, the profile's category
    shares sum to 1, and the record names the CPU, threads, precision and exact command."""
    import statistics

    results = tmp_path / "results.jsonl"
    args = ["--data", str(tiny_data), "--width", "8", "--batch-size", "20", "--steps", "1", "--repeats", "2", "--warmup", "1",
            "--profile", "1", "--workers", "0", "--cache-dir", str(cache_dir), "--results", str(results)]
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "throughput.py"), *args], capture_output=True, text=True,
                          timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads(results.read_text().splitlines()[-1])
    assert record["order"] == ["a", "b", "c", "a", "b", "c"]
    for name in ("bare_step", "our_step", "textbook_step"):
        runs = record["runs_img_s"][name]
        assert len(runs) == 2 and all(r > 0 for r in runs), name
        assert record[f"{name}_img_s"] == statistics.median(runs), name
    assert record["ceiling_beaten"] == (statistics.median(record["runs_img_s"]["our_step"]) > max(record["runs_img_s"]["bare_step"]))
    assert ("WARNING: the ceiling is beaten" in proc.stdout) == record["ceiling_beaten"]
    shares = record["profile"]["shares"]
    assert sorted(shares) == sorted(("conv_matmul", "batch_norm", "elementwise_pool", "optimizer", "other"))
    assert sum(shares.values()) == pytest.approx(1.0, abs=1e-9) and all(v >= 0 for v in shares.values())
    assert shares["conv_matmul"] > 0 and shares["optimizer"] > 0
    assert record["cpu_name"] and record["cpu_capability"] and record["threads"] >= 1 and record["precision"] == "float32"
    assert record["command"] == " ".join(["throughput.py", *args])
    assert "profile of (a)" in proc.stdout


def test_ghost_bn_benchmark_times_the_networks_batch_norm_shapes(tmp_path):
    """ghost_bn.py times ghost and plain batch norm at exactly the shapes and counts of the
    network's eight batch norms (taken here from the model itself), every timing positive, and
    records the step's extra time as the counted sum of the differences."""
    import torch

    from resnet_ocp.model import CustomResNet

    sys.path.insert(0, str(REPO / "benchmarks"))
    import ghost_bn

    seen = []
    model = CustomResNet()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.register_forward_pre_hook(lambda _, args: seen.append((args[0].shape[1], args[0].shape[2])))
    model(torch.randn(1, 3, 32, 32))
    assert sorted(seen) == sorted((c, side) for c, side, count in ghost_bn.SHAPES for _ in range(count))
    results = tmp_path / "ghost_bn.jsonl"
    record = ghost_bn.main(["--batch", "64", "--repeats", "2", "--results", str(results)])
    assert json.loads(results.read_text().splitlines()[-1]) == record
    assert [r["shape"] for r in record["layers"]] == [[64, c, side, side] for c, side, _ in ghost_bn.SHAPES]
    assert all(len(r["ghost_runs_ms"]) == 2 and min(r["ghost_runs_ms"] + r["plain_runs_ms"]) > 0 for r in record["layers"])
    assert record["extra_ms_per_step"] == pytest.approx(sum(r["count"] * (r["ghost_ms"] - r["plain_ms"]) for r in record["layers"]))
    assert record["cpu_name"] and record["code"] and record["threads"] >= 1 and record["ghost_batch"] == 32


def test_interleave_warms_every_measurement_alike_then_alternates():
    """Each measurement gets the same warm-up steps once, then the runs alternate a, b, c per
    round, each run timing ``steps`` steps; the rates come back per label in run order."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    from step_timing import interleave

    log = []

    class Fake:
        def __init__(self, label):
            self.label, self.n = label, 0

        def warm_up(self, steps):
            log.append(("warm", self.label, steps))

        def run(self, steps):
            self.n += 1
            log.append(("run", self.label, steps))
            return {"a": 10.0, "b": 20.0, "c": 30.0}[self.label] + self.n

    rates, order = interleave([Fake("a"), Fake("b"), Fake("c")], steps=4, warmup=3, repeats=3)
    assert log[:3] == [("warm", "a", 3), ("warm", "b", 3), ("warm", "c", 3)]
    assert [e[1] for e in log[3:]] == order == list("abcabcabc") and {e[2] for e in log[3:]} == {4}
    assert rates == {"a": [11.0, 12.0, 13.0], "b": [21.0, 22.0, 23.0], "c": [31.0, 32.0, 33.0]}


def test_ceiling_warning_only_beyond_the_spread_of_the_bare_step():
    """(b)'s median above (a)'s median but within (a)'s range is noise: no warning; above (a)'s
    fastest run it is a warning that names both figures."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    from step_timing import ceiling_warning

    assert ceiling_warning([18.3, 27.5], [22.5, 27.8]) is None  # --quick on the loaded AVX2 EPYC: 25.2 within 18.3-27.5
    assert ceiling_warning([40.0, 42.0, 41.0], [42.0, 42.0, 50.0]) is None  # equal to the fastest is not beyond
    line = ceiling_warning([40.0, 42.0, 41.0], [43.0, 44.0, 39.0])
    assert line.startswith("WARNING: the ceiling is beaten") and "43.0" in line and "42.0" in line


def test_profile_categories_of_the_step_operators():
    """The operators of the step fall into the profile's categories by name; anything inside
    the optimizer region counts as optimizer."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    from step_profile import categorize

    assert categorize("aten::mkldnn_convolution", False) == "conv_matmul"
    assert categorize("aten::convolution_backward", False) == "conv_matmul"
    assert categorize("aten::addmm", False) == "conv_matmul"
    assert categorize("aten::native_batch_norm_backward", False) == "batch_norm"
    assert categorize("aten::threshold_backward", False) == "elementwise_pool"
    assert categorize("aten::max_pool2d_with_indices", False) == "elementwise_pool"
    assert categorize("aten::_foreach_mul_", True) == "optimizer"
    assert categorize("aten::empty", False) == "other"
    assert categorize("autograd::engine::evaluate_function: ConvolutionBackward0", False) == "other"


def analytic_train_gflop(width: int) -> float:
    """GFLOP of one image's training step counted by hand from the layer shapes: 2 FLOPs per
    multiply-add, backward twice the forward (input and weight gradients) except the first
    convolution, whose input needs no gradient."""
    w = width
    convs = [(32, 3, w), (32, w, 2 * w), (16, 2 * w, 2 * w), (16, 2 * w, 2 * w), (16, 2 * w, 4 * w),
             (8, 4 * w, 8 * w), (4, 8 * w, 8 * w), (4, 8 * w, 8 * w)]  # (output side before pooling, in, out)
    macs = [side * side * c_in * c_out * 9 for side, c_in, c_out in convs]
    forward = 2 * (sum(macs) + 8 * w * 10)
    return (3 * forward - 2 * macs[0]) / 1e9


def test_training_flops_of_the_full_network():
    """One image's forward + backward costs 2.272 GFLOP, about three times the forward's 0.759:
    FlopCounterMode's count equals the count by hand from the layer shapes."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    from throughput import train_gflop_per_image

    assert train_gflop_per_image(64) == pytest.approx(analytic_train_gflop(64), rel=1e-12)
    assert round(train_gflop_per_image(64), 3) == 2.272


def _stopped_in_epoch_2(command: list[str], run_dir, env: dict, stop_the_run: bool = False) -> str:
    """Start a benchmark driver, stop it once its run (``run_dir``, log beside it) is in epoch 2 (a
    SIGTERM to the driver, or with ``stop_the_run`` ``resnet-ocp stop`` on the run), and check the run
    checkpointed inside an epoch from 2 on, the driver exited 75 and no train.py was left training;
    return the driver's output."""
    log = run_dir.with_name(run_dir.name + ".log")
    logged = len(log.read_text()) if log.exists() else 0
    driver = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env=env)
    deadline = time.time() + 240
    while not (log.exists() and "Epoch 2/500" in log.read_text()[logged:]) and time.time() < deadline:
        time.sleep(0.2)
    if stop_the_run:
        subprocess.run([sys.executable, "-m", "resnet_ocp.cli", "stop", str(run_dir), "--wait", "0"], check=True, timeout=60, cwd=REPO)
    else:
        driver.send_signal(signal.SIGTERM)
    try:
        out, err = driver.communicate(timeout=240)
    finally:  # whatever happened, nothing the driver started under the runs directory may keep training
        driver.kill()
        orphans = subprocess.run(["pkill", "-e", "-f", str(run_dir.parent)], capture_output=True, text=True).stdout
    assert driver.returncode == 75, err[-2000:]
    assert json.loads((run_dir / "preempted.json").read_text())["epoch"] >= 2, log.read_text()[-2000:]
    assert "run this command again to continue" in err
    assert not orphans
    return out


@pytest.mark.slow
def test_ablation_driver_trains_resumes_and_tabulates(tiny_data, cache_dir, tmp_path):
    """benchmarks/ablations.py trains each variant once into its own run directory, evaluates
    flip TTA from the baseline's weights (beside their plain evaluation, the TTA delta's
    reference), records each finished variant once (a trained one with its per-epoch test
    accuracy and its machine and precision), and prints a
    table whose deltas are differences to the baseline; a second call trains nothing; SIGTERM to
    the driver reaches training, which checkpoints, and the driver exits 75."""
    runs, results = tmp_path / "ablate", tmp_path / "ablations.jsonl"
    cmd = [sys.executable, str(REPO / "benchmarks" / "ablations.py"), "--data", str(tiny_data), "--runs-dir", str(runs),
           "--max-lr", "0.02", "--epochs", "2", "--only", "baseline", "tta", "label_smoothing", "--results", str(results),
           "--config-file", "accelerate_configs/cpu_fp32.yaml",
           "--extra", f"--width 8 --batch-size 20 --eval-batch-size 32 --cache-dir {cache_dir}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO, env=env)
    assert first.returncode == 0, first.stderr[-3000:]
    records = [json.loads(line) for line in results.read_text().splitlines()]
    assert [r["variant"] for r in records] == ["baseline", "tta", "label_smoothing"]
    base, smooth = records[0], records[2]
    # The re-evaluation's reference: the same weights without TTA, in the precision of the TTA figure.
    assert (records[1]["reference_accuracy"], records[1]["precision"]) == (base["final_accuracy"], "no")
    assert json.loads((runs / "label_smoothing" / "config.json").read_text())["label_smoothing"] == 0.2
    # A trained variant's record keeps its curve and its machine, which go when the run directory does.
    history = json.loads((runs / "label_smoothing" / "history.json").read_text())
    assert smooth["test_accuracy_by_epoch"] == [round(h["test_accuracy"], 4) for h in history] and len(history) == 2
    assert smooth["test_accuracy_by_epoch"][-1] == pytest.approx(smooth["final_accuracy"], abs=1e-4)
    assert smooth["machine"].endswith(", fp32") and "test_accuracy_by_epoch" not in records[1]
    assert json.loads((runs / "baseline" / "config.json").read_text())["peak_epoch"] == pytest.approx(2 * 5 / 24, abs=1e-4)
    rows = [line for line in first.stdout.splitlines() if line.startswith("| ")]
    assert len(rows) == 4 and rows[3].startswith("| label_smoothing |")
    assert f"| {100 * (smooth['final_accuracy'] - base['final_accuracy']):+.2f} |" in rows[3]
    again = subprocess.run([*cmd, "--table"], capture_output=True, text=True, timeout=300, cwd=REPO, env=env)
    assert again.returncode == 0 and [line for line in again.stdout.splitlines() if line.startswith("| ")] == rows
    assert "label_smoothing:" not in again.stdout  # nothing trained
    assert len(results.read_text().splitlines()) == 3

    # A step of width 128 at batch 200 takes 8-20 s on 2 cores, longer than the 5 s accelerate
    # launch (1.16) leaves its child after a SIGTERM of its own; the second variant must never start.
    stop = [*cmd[:cmd.index("--epochs") + 1], "500", "--only", "ema", "adamw", *cmd[cmd.index("--results"):-1],
            f"--width 128 --batch-size 200 --eval-batch-size 100 --cache-dir {cache_dir}"]
    out = _stopped_in_epoch_2(stop, runs / "ema", env)
    assert "adamw:" not in out and not (runs / "adamw").exists()
    assert json.loads((runs / "ema" / "preempted.json").read_text())["epoch"] == 2
    # Started again, it resumes ema; stopped through the run itself, the queue ends there too.
    out = _stopped_in_epoch_2(stop, runs / "ema", env, stop_the_run=True)
    assert "adamw:" not in out and not (runs / "adamw").exists()


def test_fast_without_label_smoothing_is_the_fast_preset_less_label_smoothing():
    """The ablation variant fast_without_label_smoothing, on the 8-epoch proxy and its shared
    (Adam) peak LR, gives the config of --preset fast with label smoothing 0 and nothing else changed."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    from ablations import VARIANTS, proxy_flags
    from resnet_ocp.cli import build_parser, resolve_config
    from resnet_ocp.config import Config

    proxy = argparse.Namespace(data="d", epochs=8, max_lr=0.00266, train_samples=None, extra="")
    argv = [*proxy_flags(proxy), *VARIANTS["fast_without_label_smoothing"]]
    config = resolve_config(vars(build_parser().parse_args(argv)))
    assert config == Config.from_preset("fast", label_smoothing=0.0, data="d", progress=False)


def test_fast_variant_is_read_from_its_committed_record_only_when_the_recipe_is_the_same(tmp_path):
    """The ablation variant fast on the 8-epoch proxy is the recipe of results/fast-8ep, so its run
    is that record; on another proxy length, or once the runs directory has its own run, it is not."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    from ablations import variant_dir

    args = argparse.Namespace(runs_dir=str(tmp_path), data="d", epochs=8, max_lr=0.00266, train_samples=None, extra="")
    assert variant_dir(args, "fast") == REPO / "results" / "fast-8ep"
    assert variant_dir(args, "fast+whiten") == tmp_path / "fast+whiten"
    assert variant_dir(argparse.Namespace(**{**vars(args), "epochs": 6}), "fast") == tmp_path / "fast"
    assert variant_dir(argparse.Namespace(**{**vars(args), "extra": "--width 8"}), "fast") == tmp_path / "fast"
    (tmp_path / "fast").mkdir()
    (tmp_path / "fast" / "config.json").write_text("{}")
    assert variant_dir(args, "fast") == tmp_path / "fast"


def test_readme_ablation_table_agrees_with_the_recorded_variants():
    """Every variant recorded in benchmarks/ablations.jsonl (its latest record) has a row in the
    ablation table of docs/ablations.md with its exact flags, its 8-epoch test accuracy and its
    delta over its reference (its baseline's record, or for a re-evaluation the same weights
    evaluated the baseline's way), so the table cannot drift from the measurements."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    from ablations import reference_of

    latest = {}
    for line in (REPO / "benchmarks" / "ablations.jsonl").read_text().splitlines():
        record = json.loads(line)
        latest[record["variant"]] = record
    rows = {}
    for line in (REPO / "docs" / "ablations.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[2].rstrip("*").endswith("%"):
            rows[cells[1].strip("`")] = cells
    final = {name: record["final_accuracy"] for name, record in latest.items()}
    for name, record in latest.items():
        flags = " ".join(record["flags"])
        assert flags in rows, f"no docs/ablations.md row with flags {flags!r} ({name})"
        accuracy = record["final_accuracy"] * 100
        assert rows[flags][2].strip("*") == f"{accuracy:.2f}%", name
        if name not in ("baseline", "fast"):
            assert rows[flags][3] == f"{accuracy - 100 * reference_of(record, final):+.2f}", name


@pytest.mark.slow
def test_predict_speed_benchmark_records_rates_latency_and_accuracy(finished_run, tiny_data, tmp_path):
    """benchmarks/predict_speed.py on the tiny set and run appends one record: a folder of its 100
    test images predicted with and without TTA (rates, and a top-1 count equal to the run's final
    test accuracy without TTA), and the cold-start latency of one image."""
    results = tmp_path / "results.jsonl"
    cmd = [sys.executable, str(REPO / "benchmarks" / "predict_speed.py"), "--data", str(tiny_data), "--model", finished_run["run_dir"],
           "--png-dir", str(tmp_path / "png"), "--cold-runs", "1", "--results", str(results)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads(results.read_text())
    assert record["folder_no_tta"]["images"] == record["folder_tta"]["images"] == 100
    assert record["folder_no_tta"]["correct"] == round(100 * finished_run["final_accuracy"])
    assert record["folder_tta"]["images_per_second"] > 0 and record["cold_start_one_image_s"]["median"] > 0
    assert "one image from a cold start: median" in proc.stdout


@pytest.mark.slow
def test_seeds_driver_trains_each_seed_once_publishes_and_forwards_sigterm(tiny_data, cache_dir, tmp_path):
    """benchmarks/seeds.py trains NAME-seed0 and NAME-seed1 with the recipe's flags and their own
    seeds, publishes each as a record (files and log, no checkpoints or lock), prints the recipe's
    records row over both seeds; a second call trains nothing and overwrites nothing, nor does one
    where only the published record is left; a run without its final weights is finished; SIGTERM
    to the driver reaches training, which checkpoints, and the driver exits 75."""
    runs, results = tmp_path / "runs", tmp_path / "results"
    recipe = ["--data", str(tiny_data), "--cache-dir", str(cache_dir), "--width", "8", "--batch-size", "20",
              "--eval-batch-size", "32", "--max-lr", "0.02"]
    cmd = [sys.executable, str(REPO / "benchmarks" / "seeds.py"), "--name", "tiny", "--runs-dir", str(runs),
           "--config-file", "accelerate_configs/cpu_fp32.yaml"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.run([*cmd, "--seeds", "0", "1", "--publish", str(results), "--", *recipe, "--epochs", "2", "--peak-epoch", "1"],
                           capture_output=True, text=True, timeout=300, cwd=REPO, env=env)
    assert first.returncode == 0, first.stderr[-3000:]
    for seed in (0, 1):
        assert json.loads((runs / f"tiny-seed{seed}" / "config.json").read_text())["seed"] == seed
        record = results / f"tiny-seed{seed}"
        assert {"model.safetensors", "summary.json", "train.log", "history.json"} <= {p.name for p in record.iterdir()}
        assert not {"checkpoints", "tensorboard", ".lock"} & {p.name for p in record.iterdir()}
        assert "Epoch 2/2" in (record / "train.log").read_text()
    finals = sorted(100 * json.loads((results / f"tiny-seed{s}" / "summary.json").read_text())["final_accuracy"] for s in (0, 1))
    row = first.stdout.strip().splitlines()[-1]
    assert row.startswith("| `tiny` | ") and "[0](results/tiny-seed0), [1](results/tiny-seed1)" in row
    assert f"| {sum(finals) / 2:.2f} ({finals[0]:.2f}-{finals[1]:.2f}) |" in row
    stamp = (results / "tiny-seed0" / "model.safetensors").stat().st_mtime_ns
    again = subprocess.run([*cmd, "--seeds", "0", "1", "--publish", str(results), "--", *recipe], capture_output=True, text=True,
                           timeout=300, cwd=REPO, env=env)
    assert again.returncode == 0 and "seed 0:" not in again.stdout and "published" not in again.stdout
    assert again.stdout.strip().splitlines()[-1] == row
    assert (results / "tiny-seed0" / "model.safetensors").stat().st_mtime_ns == stamp

    # A published seed is not trained again where its run directory is gone (another machine) ...
    shutil.rmtree(runs / "tiny-seed0")
    elsewhere = subprocess.run([*cmd, "--seeds", "0", "--publish", str(results), "--", *recipe], capture_output=True, text=True,
                               timeout=300, cwd=REPO, env=env)
    assert elsewhere.returncode == 0 and "seed 0:" not in elsewhere.stdout and not (runs / "tiny-seed0").exists()
    # ... and a run killed while finishing (summary.json written, model.safetensors not yet) is finished, not skipped.
    (runs / "tiny-seed1" / "model.safetensors").unlink()
    finishing = subprocess.run([*cmd, "--seeds", "1", "--", *recipe], capture_output=True, text=True, timeout=300, cwd=REPO, env=env)
    assert finishing.returncode == 0 and "seed 1:" in finishing.stdout and "--resume" in finishing.stdout
    assert (runs / "tiny-seed1" / "model.safetensors").exists()

    # A tiny epoch here lasts well under a second, so the signal may land in epoch 3 (CI saw it):
    # the property is that the stop checkpoints where preempted.json says, not which epoch that is.
    _stopped_in_epoch_2([*cmd, "--seeds", "2", "--", *recipe, "--epochs", "500", "--peak-epoch", "1"], runs / "tiny-seed2", env)
    stopped = json.loads((runs / "tiny-seed2" / "preempted.json").read_text())
    assert (runs / "tiny-seed2" / "checkpoints" / f"epoch_{stopped['epoch']:03d}_step_{stopped['step_in_epoch']:05d}").is_dir()
