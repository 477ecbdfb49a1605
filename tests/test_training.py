"""Training end to end on the tiny set: the schedule as applied, learning, resume, and 2 processes."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import REPO, TINY_MAX_LR, launch, reset_accelerate, tiny_args
from resnet_ocp.cli import main
from resnet_ocp.config import Config
from resnet_ocp.rundir import read_steps
from resnet_ocp.schedule import schedule_trace

HISTORY_KEYS = {"epoch", "train_loss", "train_accuracy", "test_loss", "test_accuracy", "lr", "seconds", "images_per_second"}


def _one_process(tiny_data, cache_dir, out: Path, *extra: str) -> dict:
    return main(tiny_args(tiny_data, cache_dir, out, *extra))


@pytest.fixture(scope="module")
def reference_run(tiny_data, cache_dir, tmp_path_factory):
    """The uninterrupted 1-process run that the resumed and the 2-process runs must match."""
    result = _one_process(tiny_data, cache_dir, tmp_path_factory.mktemp("ref") / "run")
    reset_accelerate()
    return result


def test_run_directory_contract(reference_run):
    """config.json, history.json (one record per epoch, fractions), steps.csv, tensorboard
    events, per-epoch checkpoints, model.safetensors, predictions.csv and run.json (one session,
    its precision and versions) are all written."""
    run = Path(reference_run["run_dir"])
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["max_lr"] == 0.02 and cfg["epochs"] == 2
    history = json.loads((run / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]
    assert HISTORY_KEYS <= set(history[0])
    assert all(0 <= h["test_accuracy"] <= 1 and h["images_per_second"] > 0 for h in history)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(next((run / "tensorboard").rglob("events.out.tfevents.*")).parent))
    events.Reload()
    assert {"test_accuracy", "train_loss", "lr"} <= set(events.Tags()["scalars"])
    assert [e.step for e in events.Scalars("test_accuracy")] == [1, 2]
    assert "misclassified" in events.Tags()["images"]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["epoch_001", "epoch_002"]
    weights = load_file(str(run / "model.safetensors"))
    assert weights["fc.weight"].shape == (10, 64)
    lines = (run / "predictions.csv").read_text().splitlines()
    assert lines[0] == "index,label,prediction,confidence" and len(lines) == 101
    (session,) = json.loads((run / "run.json").read_text())["sessions"]
    assert session["mixed_precision"] == "no" and session["num_processes"] == 1 and session["torch"] == torch.__version__
    assert session["cpu_capability"] == torch.backends.cpu.get_cpu_capability() and session["cpu_vendor"]


def test_applied_lr_and_momentum_follow_the_schedule_to_its_end(reference_run):
    """steps.csv's LR and momentum (Adam's beta1), read from the optimizer at each step, equal OneCycleLR's
    trace step for step, and the last step applies the schedule's final LR."""
    run = Path(reference_run["run_dir"])
    rows = read_steps(run / "steps.csv")
    cfg = Config.from_dict(json.loads((run / "config.json").read_text()))
    trace = schedule_trace(cfg, cfg.max_lr, n_train=200)
    assert len(rows) == len(trace) == 20
    assert [r["step"] for r in rows] == list(range(1, 21))
    assert [r["samples"] for r in rows][9:12] == [200, 220, 240]
    assert [r["lr"] for r in rows] == [t[0] for t in trace]
    assert [r["momentum"] for r in rows] == [t[1] for t in trace]
    assert rows[-1]["lr"] == pytest.approx(TINY_MAX_LR / 100 / 100)


def test_it_learns_the_tiny_task(reference_run):
    """Two epochs on the colour-coded set end far above chance (10%)."""
    assert reference_run["final_accuracy"] >= 0.6
    assert reference_run["history"][-1]["test_samples"] == 100


def test_resume_equals_uninterrupted(reference_run, tiny_data, cache_dir, tmp_path):
    """Stopping after epoch 1 and resuming gives the same steps.csv and bit-identical weights;
    run.json records both sessions."""
    out = tmp_path / "split"
    first = _one_process(tiny_data, cache_dir, out, "--stop-after-epoch", "1")
    assert len(first["history"]) == 1 and not (out / "model.safetensors").exists()
    reset_accelerate()
    resumed = main(["--resume", str(out), "--no-progress"])
    assert [h["epoch"] for h in resumed["history"]] == [1, 2]
    ref = Path(reference_run["run_dir"])
    assert (out / "steps.csv").read_text() == (ref / "steps.csv").read_text()
    a, b = load_file(str(out / "model.safetensors")), load_file(str(ref / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert len(json.loads((out / "run.json").read_text())["sessions"]) == 2


def test_two_processes_match_one(reference_run, tiny_data, cache_dir, tmp_path):
    """`accelerate launch` with cpu_multi.yaml runs 2 real processes whose applied LRs equal
    the 1-process run's at every step, whose first-step loss (same samples, split in two)
    is close to it, which end at the schedule's end, count every test sample once, learn, and
    write TensorBoard events and checkpoints."""
    out = tmp_path / "two"
    proc = launch("cpu_multi.yaml", tiny_args(tiny_data, cache_dir, out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 process(es) on " in proc.stdout and ", DistributedType.MULTI_CPU" in proc.stdout
    ref_rows = read_steps(Path(reference_run["run_dir"]) / "steps.csv")
    rows = read_steps(out / "steps.csv")
    assert [r["lr"] for r in rows] == [r["lr"] for r in ref_rows]
    assert [r["samples"] for r in rows] == [r["samples"] for r in ref_rows]
    # Same samples and weights, but batch norm normalises each process's half-batch with its
    # own statistics, so the first loss agrees only closely, not exactly.
    assert rows[0]["loss"] == pytest.approx(ref_rows[0]["loss"], rel=0.05)
    assert rows[-1]["lr"] == pytest.approx(TINY_MAX_LR / 100 / 100)
    history = json.loads((out / "history.json").read_text())
    assert history[-1]["test_samples"] == 100 and history[-1]["test_accuracy"] >= 0.6
    indices = [int(line.split(",")[0]) for line in (out / "predictions.csv").read_text().splitlines()[1:]]
    assert sorted(indices) == list(range(100))
    assert list((out / "tensorboard").rglob("events.out.tfevents.*"))
    assert (out / "checkpoints" / "epoch_002" / "complete").exists()
    assert proc.stdout.count("Test set: Average loss") == 2  # printed by the main process only


def test_lone_process_in_a_multi_process_world_is_refused():
    """A process whose environment says WORLD_SIZE=2 but whose Accelerator sees one process
    (a launch that fell back to DistributedType.NO) is refused with one line."""
    from resnet_ocp.session import RunError, check_world_size

    with pytest.raises(RunError, match="WORLD_SIZE=2 but Accelerate sees 1 process"):
        check_world_size(1, {"WORLD_SIZE": "2"})
    check_world_size(2, {"WORLD_SIZE": "2"})
    check_world_size(1, {})


def test_broken_launch_environment_gives_one_line(tiny_data, cache_dir, tmp_path):
    """WORLD_SIZE=2 without a rendezvous address ends with exit 2 and one error line, no run directory."""
    import os

    env = {**os.environ, "WORLD_SIZE": "2"}
    env.pop("MASTER_ADDR", None)
    cmd = [sys.executable, str(REPO / "train.py"), *tiny_args(tiny_data, cache_dir, tmp_path / "lone")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env, cwd=REPO)
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: Accelerate could not set up the processes") and "MASTER_ADDR" in last
    assert not (tmp_path / "lone").exists()


def test_gradient_accumulation_keeps_the_schedule(reference_run, tiny_data, cache_dir, tmp_path):
    """--grad-accum 2 (two micro-batches of 10 per step of 20) applies the same LR at the same
    optimizer steps and sample counts as the reference run."""
    out = tmp_path / "accum"
    _one_process(tiny_data, cache_dir, out, "--grad-accum", "2")
    rows = read_steps(out / "steps.csv")
    ref = read_steps(Path(reference_run["run_dir"]) / "steps.csv")
    assert [(r["step"], r["samples"], r["lr"], r["momentum"]) for r in rows] == [(r["step"], r["samples"], r["lr"], r["momentum"]) for r in ref]


def test_two_processes_and_accumulation_train_each_sample_once_with_equal_steps(tiny_data, cache_dir, tmp_path):
    """On 190 samples in batches of 20 the last step holds 10 samples. Two processes (Accelerate
    fills process 1's last batch with samples from the epoch's start) and one process with
    --grad-accum 2 (whose last step has one micro-batch of 10, not two) both train each sample
    once per epoch (history's train_samples), and end with the same parameters to float rounding:
    both normalise the same halves of each batch, and each step's gradient is the mean over its
    samples, the last included."""
    from safetensors.torch import load_file

    two, accumulated = tmp_path / "two", tmp_path / "accumulated"
    # SGD: its update is linear in the gradient, where Adam's sign-like update on near-zero
    # gradients turns rounding into differences of the LR's size (0.16 here after 20 steps).
    recipe = ["--train-samples", "190", "--optimizer", "sgd", "--max-lr", "0.05"]
    proc = launch("cpu_multi.yaml", tiny_args(tiny_data, cache_dir, two, *recipe))
    assert proc.returncode == 0, proc.stderr[-3000:]
    # One thread, as torchrun gives each of the two: the kernels round alike (2 threads: 0.5 apart).
    proc = launch("cpu_fp32.yaml", tiny_args(tiny_data, cache_dir, accumulated, *recipe, "--grad-accum", "2"), {"OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    for run in (two, accumulated):
        assert [h["train_samples"] for h in json.loads((run / "history.json").read_text())] == [190, 190]
        assert [r["samples"] for r in read_steps(run / "steps.csv")][9::10] == [190, 380]
    a, b = load_file(str(two / "model.safetensors")), load_file(str(accumulated / "model.safetensors"))
    params = [k for k in a if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    worst = max((a[k] - b[k]).abs().max().item() for k in params)
    print(f"\nlargest parameter difference {worst:.2e}")
    assert worst < 1e-4


def test_emulated_bf16_on_cpu_is_warned_about():
    """bf16 on a CPU without native bf16 gets a warning naming the fp32 config; GPUs,
    fp32 and native-bf16 CPUs get none."""
    from resnet_ocp.session import slow_precision_warning

    message = slow_precision_warning("cpu", "bf16", bf16_native=False)
    assert message.startswith("WARNING: bf16 autocast on a CPU without native bf16") and "accelerate_configs/cpu_fp32.yaml" in message
    assert slow_precision_warning("cpu", "bf16", bf16_native=True) is None
    assert slow_precision_warning("cpu", "no") is None
    assert slow_precision_warning("cuda", "bf16") is None


def test_resume_before_the_first_checkpoint_starts_over_with_the_saved_config(reference_run, tiny_data, cache_dir, tmp_path):
    """A run interrupted inside epoch 1 (config.json written, no checkpoint yet) resumes from
    epoch 1 and still ends identical to the uninterrupted run."""
    out = tmp_path / "early"
    _one_process(tiny_data, cache_dir, out, "--stop-after-epoch", "1")
    reset_accelerate()
    shutil.rmtree(out / "checkpoints")
    (out / "history.json").unlink()
    (out / "steps.csv").unlink()
    main(["--resume", str(out), "--no-progress"])
    assert (out / "steps.csv").read_text() == (Path(reference_run["run_dir"]) / "steps.csv").read_text()


def test_weight_ema_is_evaluated_saved_and_resumed(reference_run, tiny_data, cache_dir, tmp_path):
    """With --ema the evaluated and saved model is the weight average, not the live network:
    model.safetensors equals the EMA held in the last checkpoint (batch-norm statistics aside,
    which are recomputed), differs from that checkpoint's live weights and from the run
    without --ema, and reproduces the recorded accuracy; a split run resumes the EMA exactly."""
    from resnet_ocp.evaluate import evaluate_run

    whole = tmp_path / "ema_whole"
    result = _one_process(tiny_data, cache_dir, whole, "--ema", "0.9")
    reset_accelerate()
    saved = load_file(str(whole / "model.safetensors"))
    checkpoint = whole / "checkpoints" / "epoch_002"
    live = load_file(str(checkpoint / "model.safetensors"))
    ema_state = load_file(str(checkpoint / "ema.safetensors"))
    averaged = {k.removeprefix("module."): v for k, v in ema_state.items() if k.startswith("module.")}
    weights = [k for k in saved if k.endswith(("weight", "bias"))]
    assert weights and all(torch.equal(saved[k], averaged[k]) for k in weights)
    assert not all(torch.equal(saved[k], live[k]) for k in weights)
    plain = load_file(str(Path(reference_run["run_dir"]) / "model.safetensors"))
    assert not torch.equal(saved["fc.weight"], plain["fc.weight"])
    assert evaluate_run(whole)["accuracy"] == pytest.approx(result["final_accuracy"], abs=1e-9)
    split = tmp_path / "ema_split"
    _one_process(tiny_data, cache_dir, split, "--ema", "0.9", "--stop-after-epoch", "1")
    reset_accelerate()
    main(["--resume", str(split), "--no-progress"])
    resumed = load_file(str(split / "model.safetensors"))
    assert all(torch.equal(saved[k], resumed[k]) for k in saved)


def test_run_killed_after_its_last_checkpoint_finishes_on_resume(reference_run, tiny_data, cache_dir, tmp_path):
    """A run killed after the last epoch's checkpoint but before its final writes (weights,
    predictions, summary, pictures) is finished by --resume: it trains nothing more, evaluates
    the last checkpoint, and ends with the uninterrupted run's accuracy and identical weights."""
    out = tmp_path / "killed"
    _one_process(tiny_data, cache_dir, out)
    reset_accelerate()
    for name in ("model.safetensors", "predictions.csv", "summary.json", "curves.png", "gradcam.png"):
        (out / name).unlink()
    steps_before = (out / "steps.csv").read_text()
    resumed = main(["--resume", str(out), "--no-progress"])
    ref = Path(reference_run["run_dir"])
    assert resumed["final_accuracy"] == reference_run["final_accuracy"]
    assert [h["epoch"] for h in resumed["history"]] == [1, 2]
    assert (out / "steps.csv").read_text() == steps_before == (ref / "steps.csv").read_text()
    a, b = load_file(str(out / "model.safetensors")), load_file(str(ref / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (out / "predictions.csv").read_text() == (ref / "predictions.csv").read_text()
    assert json.loads((out / "summary.json").read_text())["final_accuracy"] == reference_run["final_accuracy"]
    assert (out / "gradcam.png").exists() and (out / "curves.png").exists()


def test_recomputed_bn_stats_are_those_of_the_given_images():
    """After recompute_bn_stats on one batch, whatever the buffers held before, the network in
    eval mode computes what train mode computes on that batch (the running statistics are the
    batch's), each BN keeps its momentum, and the network keeps its eval mode."""
    import copy

    from resnet_ocp.augment import normalize
    from resnet_ocp.batchnorm import BatchNormOptions
    from resnet_ocp.inference import DeviceSplit, recompute_bn_stats
    from resnet_ocp.model import CustomResNet, NetworkConfig

    torch.manual_seed(0)
    model = CustomResNet(NetworkConfig(width=8), BatchNormOptions(momentum=0.3))
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for m in bns:  # stale statistics, as an average of other weights' buffers would be
        m.running_mean.fill_(3.0)
        m.running_var.fill_(0.05)
    images = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8)
    mean, std = torch.tensor([0.5, 0.5, 0.5]), torch.tensor([0.25, 0.25, 0.25])
    with torch.no_grad():
        expected = copy.deepcopy(model).train()(normalize(images, mean, std))
        model.eval()
        stale = model(normalize(images, mean, std))
        recompute_bn_stats(model, DeviceSplit(images, torch.zeros(64, dtype=torch.long), mean, std), 1000, 64, channels_last=False)
        got = model(normalize(images, mean, std))
    assert not torch.allclose(stale, expected, atol=1e-2)
    # running_var is the unbiased variance (n / (n - 1), n >= 64 * 4 * 4), train mode uses the biased one
    torch.testing.assert_close(got, expected, atol=2e-3, rtol=2e-3)
    assert {m.momentum for m in bns} == {0.3} and not model.training


def test_bn_momentum_reaches_every_batch_norm():
    """--bn-momentum sets the running-statistics momentum of all eight batch norms."""
    from resnet_ocp.batchnorm import BatchNormOptions
    from resnet_ocp.model import CustomResNet, NetworkConfig

    bns = [m for m in CustomResNet(NetworkConfig(width=8), BatchNormOptions(momentum=0.4)).modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(bns) == 8 and {m.momentum for m in bns} == {0.4}


def test_signal_inside_an_epoch_stops_there_and_resume_continues_exactly(reference_run, tiny_data, cache_dir, tmp_path, monkeypatch):
    """SIGUSR1 arriving during epoch 2's 4th optimizer step: the run finishes that step, saves a
    checkpoint inside the epoch (with position.json), writes steps.csv up to that step and
    preempted.json, and exits with status 75; --resume trains only the remaining 16 steps
    (skipped, not replayed) and ends with steps.csv and weights identical to the uninterrupted run."""
    import os
    import signal

    from resnet_ocp import engine

    real, calls = engine.training_loss, []

    def counting(*args, **kwargs):
        calls.append(1)
        if len(calls) == 14:  # 10 steps per epoch: the 4th step of epoch 2
            os.kill(os.getpid(), signal.SIGUSR1)
        return real(*args, **kwargs)

    monkeypatch.setattr(engine, "training_loss", counting)
    out = tmp_path / "preempted"
    with pytest.raises(SystemExit) as info:
        _one_process(tiny_data, cache_dir, out)
    assert info.value.code == 75
    reset_accelerate()
    assert (out / "checkpoints" / "epoch_002_step_00004" / "position.json").exists()
    assert len(read_steps(out / "steps.csv")) == 14 and not (out / "model.safetensors").exists()
    stopped = json.loads((out / "preempted.json").read_text())
    assert (stopped["signal"], stopped["epoch"], stopped["step_in_epoch"]) == ("SIGUSR1", 2, 4)
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL  # the handler is gone with the run
    calls.clear()
    main(["--resume", str(out), "--no-progress"])
    assert len(calls) == 6 and not (out / "preempted.json").exists()
    ref = Path(reference_run["run_dir"])
    assert (out / "steps.csv").read_text() == (ref / "steps.csv").read_text()
    a, b = load_file(str(out / "model.safetensors")), load_file(str(ref / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in b)
    history, ref_history = json.loads((out / "history.json").read_text()), json.loads((ref / "history.json").read_text())
    assert [(h["train_loss"], h["test_accuracy"]) for h in history] == [(h["train_loss"], h["test_accuracy"]) for h in ref_history]
