"""Faults: a run never loses finished work, never trains on silently, and always answers in one line.

Each test names one fault of docs/faults.md: a loss that stops being finite, a second run
into a live directory, fp16 on a CPU, damaged checkpoints and files, a full disk, a damaged
data cache, a resume with another process count, and kill -9 at many moments (slow).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import REPO, TINY_RANGE_TEST, launch, reset_accelerate, tiny_args
from resnet_ocp.cli import main
from resnet_ocp.rundir import read_steps


def one_line_error(capsys, call) -> str:
    """Run ``call``, expect exit status 2, and return its one error line (the last on stderr, after
    any progress bars of the datasets library), with no traceback anywhere."""
    with pytest.raises(SystemExit) as info:
        call()
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and err.splitlines()[-1].startswith("error: "), err
    assert sum(line.startswith("error: ") for line in err.splitlines()) == 1
    return err.splitlines()[-1]


@pytest.fixture(scope="module")
def stopped_run(tiny_data, cache_dir, tmp_path_factory) -> Path:
    """A tiny run stopped after epoch 1 of 2 (one checkpoint), copied afresh by each test that damages it."""
    out = tmp_path_factory.mktemp("stopped") / "run"
    main(tiny_args(tiny_data, cache_dir, out, "--stop-after-epoch", "1"))
    reset_accelerate()
    return out


def test_a_loss_that_is_not_finite_stops_the_run_at_that_step(tiny_data, cache_dir, tmp_path, capsys):
    """--max-lr 1e9: the step whose loss is NaN or infinite ends the run with one line naming the
    step, the epoch and the LR; steps.csv ends at that step, no weights are written, exit status 2."""
    out = tmp_path / "nan"
    err = one_line_error(capsys, lambda: main(tiny_args(tiny_data, cache_dir, out, max_lr=1e9)))
    rows = read_steps(out / "steps.csv")
    assert "the training loss became" in err and f"at step {rows[-1]['step']} (epoch {rows[-1]['epoch']})" in err
    assert f"with LR {rows[-1]['lr']:.4g}" in err and "lower --max-lr" in err
    assert not torch.isfinite(torch.tensor(rows[-1]["loss"])) and all(torch.isfinite(torch.tensor(r["loss"])) for r in rows[:-1])
    assert not (out / "model.safetensors").exists()


def test_a_second_run_into_a_live_directory_is_refused(tiny_data, cache_dir, tmp_path, capsys):
    """While another process holds a run directory's lock (a run that has not even written
    config.json yet), a new run into it is refused with one line and writes nothing there."""
    out = tmp_path / "busy"
    out.mkdir()
    with open(out / ".lock", "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write("pid 12345 on elsewhere\n")
        held.flush()
        err = one_line_error(capsys, lambda: main(tiny_args(tiny_data, cache_dir, out)))
    assert "is in use by a run that is still going (pid 12345 on elsewhere)" in err
    assert sorted(p.name for p in out.iterdir()) == [".lock"]


def test_fp16_on_a_cpu_is_refused(tiny_data, cache_dir, tmp_path, capsys, monkeypatch):
    """fp16 mixed precision on a CPU (where Accelerate makes no grad scaler) is refused with a
    line pointing to bf16 or fp32, before a run directory exists."""
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp16")
    err = one_line_error(capsys, lambda: main(tiny_args(tiny_data, cache_dir, tmp_path / "fp16")))
    assert "fp16 mixed precision on a CPU" in err and "bf16" in err and "cpu_fp32.yaml" in err
    assert not (tmp_path / "fp16").exists()


def _copy(run: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "copy"
    shutil.copytree(run, dest, ignore=shutil.ignore_patterns(".lock"))
    return dest


def test_a_damaged_checkpoint_is_named_and_the_previous_one_is_used(stopped_run, tmp_path, capsys):
    """A zero-byte optimizer file in the newest checkpoint (after epoch 2): --resume names the
    file, falls back to the previous complete checkpoint (after epoch 1), trains epoch 2 again
    and finishes."""
    run = _copy(stopped_run, tmp_path)
    main(["--resume", str(run), "--stop-after-epoch", "2", "--no-progress"])  # a second, intact checkpoint
    reset_accelerate()
    (run / "model.safetensors").unlink()  # finished: make the final writes pending again
    newest = run / "checkpoints" / "epoch_002"
    (newest / "optimizer.bin").write_bytes(b"")
    capsys.readouterr()
    result = main(["--resume", str(run), "--no-progress"])
    out = capsys.readouterr().out
    assert f"skipping a damaged checkpoint: {newest / 'optimizer.bin'} has 0 bytes" in out
    assert "resumed" in out and "after epoch 1" in out
    assert [h["epoch"] for h in result["history"]] == [1, 2]


def test_a_checkpoint_without_its_marker_is_not_used(stopped_run, tmp_path, capsys):
    """A checkpoint folder without its ``complete`` marker (killed while it was written) is never
    loaded: the run resumes from before it, here from the start, with the saved config."""
    run = _copy(stopped_run, tmp_path)
    (run / "checkpoints" / "epoch_001" / "complete").unlink()
    result = main(["--resume", str(run), "--no-progress"])
    assert "no checkpoint yet, starting from epoch 1" in capsys.readouterr().out
    assert [h["epoch"] for h in result["history"]] == [1, 2]


def test_checkpoint_changed_after_it_was_saved_is_not_loaded(stopped_run, tmp_path, capsys):
    """A checkpoint file with its size intact but other bytes (the marker's SHA-256 differs), and
    then no good checkpoint at all: the first is passed over with its file named; with none
    left, --resume refuses in one line instead of starting on broken state."""
    run = _copy(stopped_run, tmp_path)
    model = run / "checkpoints" / "epoch_001" / "model.safetensors"
    data = bytearray(model.read_bytes())
    data[-1] ^= 0xFF
    model.write_bytes(bytes(data))
    with pytest.raises(SystemExit) as info:
        main(["--resume", str(run), "--no-progress"])
    captured = capsys.readouterr()
    assert info.value.code == 2 and "Traceback" not in captured.err
    assert f"skipping a damaged checkpoint: {model} changed after it was saved (SHA-256 differs)" in captured.out
    assert captured.err.strip().splitlines()[-1].startswith(f"error: no usable checkpoint in {run / 'checkpoints'}")


@pytest.mark.parametrize("name, content", [("history.json", b'[{"epoch": 1, "train'), ("steps.csv", b"step,epoch\n1,x\n"),
                                           ("config.json", b""), ("history.json", None)])
def test_damaged_run_files_are_named_in_one_line(stopped_run, tmp_path, capsys, name, content):
    """A truncated history.json, a steps.csv with bad values, an empty config.json or a missing
    history.json: --resume ends with one line naming the file and what to do."""
    run = _copy(stopped_run, tmp_path)
    if content is None:
        (run / name).unlink()
    else:
        (run / name).write_bytes(content)
    err = one_line_error(capsys, lambda: main(["--resume", str(run), "--no-progress"]))
    assert str(run / name) in err and ("is damaged" in err or "is missing" in err) and "restore it" in err


def test_truncated_weights_are_named_by_evaluate(finished_run, tmp_path, capsys):
    """A truncated model.safetensors: evaluate says which file and how to recover, in one line."""
    from resnet_ocp.evaluate import main as evaluate_main

    run = _copy(Path(finished_run["run_dir"]), tmp_path)
    weights = run / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    err = one_line_error(capsys, lambda: evaluate_main([str(run)]))
    assert f"{weights} is damaged" in err and f"--resume {run}" in err


def test_a_full_disk_while_checkpointing_keeps_what_was_finished(stopped_run, tmp_path, capsys, monkeypatch):
    """The disk fills while epoch 2's checkpoint is written: one line says what ran out and how to
    continue; epoch 1's checkpoint, config.json and history.json are as they were, and --resume
    then finishes the run."""
    import accelerate

    run = _copy(stopped_run, tmp_path)
    before = {p: p.read_bytes() for p in [run / "config.json", run / "history.json", *sorted((run / "checkpoints" / "epoch_001").iterdir())]}
    real = accelerate.Accelerator.save_state

    def full_disk(self, output_dir=None, **kwargs):
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        (Path(output_dir) / "model.safetensors").write_bytes(b"partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(Path(output_dir) / "optimizer.bin"))

    monkeypatch.setattr(accelerate.Accelerator, "save_state", full_disk)
    err = one_line_error(capsys, lambda: main(["--resume", str(run), "--no-progress"]))
    assert "no space left on the device writing" in err and "optimizer.bin" in err and f"--resume {run}" in err
    history = json.loads((run / "history.json").read_text())
    assert all(p.read_bytes() == content for p, content in before.items() if p.name != "history.json")
    assert [h["epoch"] for h in history] in ([1], [1, 2])  # epoch 2's record may precede its checkpoint
    monkeypatch.setattr(accelerate.Accelerator, "save_state", real)
    reset_accelerate()
    assert main(["--resume", str(run), "--no-progress"])["final_accuracy"] > 0


def test_a_damaged_data_cache_is_rebuilt(tiny_data, tmp_path, capsys):
    """A truncated decoded-image cache (a kill while it was written elsewhere, a bad disk) is
    detected, said so, decoded again and rewritten; the images are those of the dataset."""
    from resnet_ocp.data import load_cifar

    first = load_cifar(str(tiny_data), str(tmp_path))
    cache = sorted(tmp_path.glob("cifar-*.safetensors"))
    cache[0].write_bytes(cache[0].read_bytes()[:500])
    again = load_cifar(str(tiny_data), str(tmp_path))
    assert "is unreadable" in capsys.readouterr().err
    assert torch.equal(first.train.images, again.train.images) and torch.equal(first.test.images, again.test.images)
    assert load_file(str(cache[0]))["images"].shape[0] in (len(first.train), len(first.test))


@pytest.mark.slow
def test_resume_with_another_process_count_is_refused(stopped_run, tmp_path):
    """A run checkpointed by one process, resumed by two: refused in one line naming both counts
    (the sample order would match, but RNG files and in-epoch sums are per process)."""
    run = _copy(stopped_run, tmp_path)
    proc = launch("cpu_multi.yaml", ["--resume", str(run), "--no-progress"])
    assert proc.returncode != 0
    assert "was saved by 1 process(es) and this launch has 2; resume with 1" in proc.stderr


# Moments to kill -9 at, in the order of a run's life: (a line the run prints, seconds after it).
# A resumed run prints the line of the phase it repeats again, so one phase can be hit twice;
# together they cover the LR range test, training inside an epoch, the test pass and checkpoint,
# and the final writes (predictions, summary, pictures, weights).
KILL_POINTS = [("LR range test:", 0.1), ("LR range test:", 0.4), ("Epoch 1/", 0.0), ("Epoch 1/", 0.05), ("Test set:", 0.0),
               ("Epoch 2/", 0.02), ("Epoch 2/", 0.06), ("Test set:", 0.01), ("final test accuracy", 0.0),
               ("final test accuracy", 0.05), ("pictures:", 0.0)]


@pytest.mark.slow
def test_kill_9_at_any_moment_then_resume_ends_identical(finished_run, tiny_data, cache_dir, tmp_path):
    """A tiny run (with its LR range test) is killed with SIGKILL at 11 moments plus 3 random
    ones across its life, each time started again with --resume (or anew if it had not written
    config.json); it ends with steps.csv and weights identical to the uninterrupted run's."""
    out = tmp_path / "killed"
    fresh = [sys.executable, "-u", str(REPO / "train.py"), *tiny_args(tiny_data, cache_dir, out, *TINY_RANGE_TEST, max_lr=None)]
    rng = random.Random(0)
    points = KILL_POINTS[:7] + [("Epoch 2/", rng.uniform(0, 0.1)) for _ in range(3)] + KILL_POINTS[7:]
    kills = 0
    for marker, delay in points:
        cmd = [sys.executable, "-u", str(REPO / "train.py"), "--resume", str(out), "--no-progress"] if (out / "config.json").exists() else fresh
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO)
        seen = False
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if marker in line:
                seen = True
                break
        if seen:
            time.sleep(delay)
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
        print(marker, delay, seen, "resume" if cmd is not fresh else "fresh", "" if seen else "".join(lines[-15:]))
        if (out / "model.safetensors").exists():
            break
    assert kills >= 10
    if not (out / "model.safetensors").exists():
        done = subprocess.run([sys.executable, str(REPO / "train.py"), "--resume", str(out), "--no-progress"],
                              capture_output=True, text=True, cwd=REPO)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    ref = Path(finished_run["run_dir"])
    assert (out / "steps.csv").read_text() == (ref / "steps.csv").read_text()
    a, b = load_file(str(out / "model.safetensors")), load_file(str(ref / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in b)
    assert json.loads((out / "config.json").read_text())["max_lr"] == finished_run["max_lr"]


def test_nothing_is_unpickled_with_code_when_resuming(stopped_run, tmp_path, monkeypatch):
    """Resuming reads weights through safetensors and every torch.load (Accelerate's optimizer,
    scheduler and RNG files) with weights_only=True: a checkpoint from a stranger cannot run code."""
    run = _copy(stopped_run, tmp_path)
    assert not list(run.rglob("custom_checkpoint_*.pkl"))
    calls = []
    real = torch.load

    def recording(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "load", recording)
    main(["--resume", str(run), "--no-progress"])
    assert calls and all(w is True for w in calls), calls


def _with_cpu_grad_scaler(monkeypatch, init_scale: float):
    """Hand the trainer's Accelerator a CPU GradScaler, as it makes one for fp16 on a GPU."""
    from resnet_ocp import session, trainer

    real = session.make_accelerator

    def scaled(cfg):
        accelerator = real(cfg)
        accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=init_scale, growth_interval=1000)
        return accelerator

    monkeypatch.setattr(trainer, "make_accelerator", scaled)


# torch warns when the scheduler steps after a skipped optimizer step: that is the behaviour under test.
@pytest.mark.filterwarnings("ignore:Seems like `optimizer.step\\(\\)` has been overridden")
def test_grad_scaler_skipped_steps_keep_the_schedule_and_resume_exactly(reference_steps, tiny_data, cache_dir, tmp_path, monkeypatch):
    """The fp16 grad-scaler branches, run on the CPU: with a scale so large that the first
    gradients overflow, the scaler skips those optimizer steps, the LR schedule still advances
    once per step (steps.csv equals the schedule's trace), the scaler's state is checkpointed,
    and a run stopped after epoch 1 resumes to the same weights as the uninterrupted one."""
    _with_cpu_grad_scaler(monkeypatch, init_scale=2.0**127)
    whole = main(tiny_args(tiny_data, cache_dir, tmp_path / "whole"))
    reset_accelerate()
    rows = read_steps(tmp_path / "whole" / "steps.csv")
    assert [r["lr"] for r in rows] == [r["lr"] for r in reference_steps]
    assert (tmp_path / "whole" / "checkpoints" / "epoch_002" / "scaler.pt").exists()
    scale = torch.load(tmp_path / "whole" / "checkpoints" / "epoch_002" / "scaler.pt", weights_only=True)["scale"]
    assert scale < 2.0**127  # steps were skipped: each skip halves the scale
    main(tiny_args(tiny_data, cache_dir, tmp_path / "split", "--stop-after-epoch", "1"))
    reset_accelerate()
    main(["--resume", str(tmp_path / "split"), "--no-progress"])
    a, b = load_file(str(tmp_path / "split" / "model.safetensors")), load_file(str(tmp_path / "whole" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in b)
    # The skipped first steps cost accuracy (0.52 measured against the plain run's >= 0.6), yet it learns.
    assert whole["final_accuracy"] >= 0.4


@pytest.fixture(scope="module")
def reference_steps(tiny_data, cache_dir, tmp_path_factory) -> list[dict]:
    """steps.csv of a plain tiny run (no scaler)."""
    out = tmp_path_factory.mktemp("plain") / "run"
    main(tiny_args(tiny_data, cache_dir, out))
    reset_accelerate()
    return read_steps(out / "steps.csv")


def test_a_benchmark_record_interrupted_while_appended_leaves_every_line_whole(tmp_path, monkeypatch):
    """append_json_line (every benchmark's record) rewrites its file atomically: interrupted at the
    rename, the file keeps its earlier lines, each valid JSON, and no temporary file stays beside it."""
    from resnet_ocp import atomic

    results = tmp_path / "results.jsonl"
    atomic.append_json_line(results, {"run": 1})
    results.write_text(results.read_text() + '{"run": 2}')  # a line written by hand, without its newline
    before = results.read_text()

    def interrupted(src, dst):
        raise KeyboardInterrupt  # as a signal arriving between the write and the rename

    with monkeypatch.context() as m:
        m.setattr(atomic.os, "replace", interrupted)
        with pytest.raises(KeyboardInterrupt):
            atomic.append_json_line(results, {"run": 3, "text": "x" * 100_000})
    assert results.read_text() == before and [p.name for p in tmp_path.iterdir()] == ["results.jsonl"]
    atomic.append_json_line(results, {"run": 3})
    assert [json.loads(line)["run"] for line in results.read_text().splitlines()] == [1, 2, 3]
