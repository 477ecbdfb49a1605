"""LR range test: a usable suggestion, state restored bit for bit, failures handled, processes agree."""

import copy
import json
import math
from pathlib import Path

import pytest
import torch

from conftest import TINY_RANGE_TEST, launch, tiny_args
from resnet_ocp.cli import main
from resnet_ocp.config import MIN_LR_FIND_ITERS, Config, ConfigError
from resnet_ocp.lr_finder import range_test, suggest, sweep_lr


def test_suggestion_lies_on_the_falling_part_of_the_curve(finished_run):
    """On the tiny learnable task the suggested LR sits where the smoothed loss is falling,
    below the LR of the lowest loss, and the run used it as its peak LR."""
    run = Path(finished_run["run_dir"])
    result = json.loads((run / "lr_finder.json").read_text())
    assert {"lrs", "losses", "suggested_lr", "rule", "settings"} <= set(result)
    lrs, smooth = result["lrs"], result["smoothed"]
    i = lrs.index(result["suggested_lr"])
    best = min(range(len(smooth)), key=lambda k: smooth[k] if math.isfinite(smooth[k]) else math.inf)
    assert 10 <= i < best
    assert smooth[i + 1] < smooth[i - 1] < smooth[0]
    assert finished_run["max_lr"] == result["suggested_lr"]
    assert json.loads((run / "config.json").read_text())["max_lr"] == result["suggested_lr"]


@pytest.mark.parametrize("mode", ["exp", "linear"])
def test_sweep_runs_from_the_first_lr_to_the_last_in_even_steps(mode):
    """The range test's LRs start at --lr-find-start, reach --lr-find-end exactly on the last of
    --lr-find-iters steps, and rise by a constant ratio (exp) or a constant difference (linear)."""
    cfg = Config(lr_find_start=1e-5, lr_find_end=0.5, lr_find_iters=30, lr_find_mode=mode)
    lrs = [sweep_lr(cfg, i) for i in range(cfg.lr_find_iters)]
    assert lrs[0] == pytest.approx(1e-5, rel=1e-12) and lrs[-1] == pytest.approx(0.5, rel=1e-12)
    steps = [b / a for a, b in zip(lrs, lrs[1:])] if mode == "exp" else [b - a for a, b in zip(lrs, lrs[1:])]
    expected = (0.5 / 1e-5) ** (1 / 29) if mode == "exp" else (0.5 - 1e-5) / 29
    assert steps == pytest.approx([expected] * 29, rel=1e-9)


def test_rules_on_a_synthetic_curve():
    """steepest finds the steepest drop, min10 a tenth of the minimum's LR, valley a point
    inside the longest falling stretch; every rule lands below the minimum."""
    lrs = [10 ** (-5 + 5 * k / 99) for k in range(100)]
    logs = [math.log10(x) for x in lrs]
    loss = [2.3 - 1.5 / (1 + math.exp(-4 * (u + 2.5))) + (0.5 * (u + 0.8) ** 2 if u > -0.8 else 0) for u in logs]
    steep, _ = suggest(lrs, loss, "steepest")
    assert math.log10(steep) == pytest.approx(-2.5, abs=0.1)
    low = lrs[min(range(len(loss)), key=loss.__getitem__)]
    assert suggest(lrs, loss, "min10")[0] == pytest.approx(low / 10)
    valley, _ = suggest(lrs, loss, "valley")
    assert lrs[10] < valley < low


@pytest.mark.parametrize("losses, fragment", [
    ([float("nan")] * 30, "usable points"),
    ([2.3, 2.4, 5.0, 50.0, float("inf")] + [float("nan")] * 20, "usable points"),
    ([2.0 + 0.01 * k for k in range(40)], "never fell"),
    ([2.0] * 8, "usable points"),
])
def test_no_suggestion_from_bad_curves(losses, fragment):
    """NaN from the first step, immediate divergence, a loss that only rises, or a sweep too
    short give no LR and a message saying why."""
    lrs = [10 ** (-5 + k / 10) for k in range(len(losses))]
    lr, message = suggest(lrs, losses, "steepest")
    assert lr is None and fragment in message


def _prepared_parts(tiny_data, cache_dir, scaler=None):
    """Accelerate-prepared parts of a width-8 network on the tiny set, with ``scaler`` handed to
    Accelerate before prepare (as it makes one for fp16 on a GPU)."""
    from accelerate import Accelerator

    from resnet_ocp.data import CIFAR10_MEAN, CIFAR10_STD, load_cifar, make_loaders
    from resnet_ocp.engine import TrainingParts
    from resnet_ocp.inference import DeviceSplit
    from resnet_ocp.model import CustomResNet, NetworkConfig
    from resnet_ocp.schedule import build_optimizer

    acc = Accelerator(cpu=True)
    acc.scaler = scaler
    data = load_cifar(str(tiny_data), str(cache_dir))
    split = DeviceSplit(data.train.images, data.train.labels, torch.tensor(CIFAR10_MEAN), torch.tensor(CIFAR10_STD))
    torch.manual_seed(0)
    model = CustomResNet(NetworkConfig(width=8))
    loader, _ = make_loaders(200, 100, 20, 50, seed=0)
    model, opt, loader = acc.prepare(model, build_optimizer(model, Config(), lr=1e-3), loader)
    return TrainingParts(acc, model, opt, loader, loader, split, split)


def test_range_test_restores_model_optimizer_and_rng_exactly(tiny_data, cache_dir):
    """After a sweep, weights, BN buffers, Adam's state and the RNG are bit-identical."""
    parts = _prepared_parts(tiny_data, cache_dir)
    acc, model, opt, loader, split = parts.accelerator, parts.model, parts.optimizer, parts.train_loader, parts.train_split
    for idx in list(loader)[:2]:  # give Adam some state to preserve
        x = (split.images[idx].float() / 255).contiguous(memory_format=torch.channels_last)
        acc.backward(torch.nn.functional.cross_entropy(model(x), split.labels[idx]))
        opt.step()
        opt.zero_grad()
    before = (copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict()), torch.get_rng_state())
    result = range_test(parts, Config(lr_find_iters=20, lr_find_start=1e-4, lr_find_end=1.0, progress=False))
    assert len(result.lrs) >= 5
    after = (model.state_dict(), opt.state_dict(), torch.get_rng_state())
    assert all(torch.equal(before[0][k], after[0][k]) for k in before[0])
    assert before[1]["param_groups"] == after[1]["param_groups"]
    for k, state in before[1]["state"].items():
        assert all(torch.equal(v, after[1]["state"][k][name]) for name, v in state.items())
    assert torch.equal(before[2], after[2])


def test_range_test_restores_the_grad_scaler(tiny_data, cache_dir):
    """With a grad scaler (fp16 on a GPU; a CPU GradScaler here) whose first steps overflow (the
    scale times a loss above 2 exceeds float32's 3.4e38), the sweep changes the scale, and the
    range test puts the scaler's state back exactly."""
    parts = _prepared_parts(tiny_data, cache_dir, torch.amp.GradScaler("cpu", init_scale=2.0**127, growth_interval=1000))
    acc = parts.accelerator
    before = copy.deepcopy(acc.scaler.state_dict())
    scales = []
    real_update = acc.scaler.update

    def recording(*args, **kwargs):
        real_update(*args, **kwargs)
        scales.append(acc.scaler.get_scale())

    acc.scaler.update = recording
    range_test(parts, Config(lr_find_iters=20, progress=False))
    assert scales and min(scales) < before["scale"]
    assert acc.scaler.state_dict() == before


def test_diverging_sweep_stops_with_a_clear_error_and_keeps_its_record(tiny_data, cache_dir, tmp_path, capsys):
    """A sweep that explodes at once ends with one error line asking for --max-lr, writes
    lr_finder.json with suggested_lr null, and never trains with a bad LR."""
    out = tmp_path / "div"
    with pytest.raises(SystemExit) as info:
        main(tiny_args(tiny_data, cache_dir, out, "--lr-find-start", "1000", "--lr-find-end", "1e9", "--lr-find-iters", "30", max_lr=None))
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: LR range test gave no suggestion") and "--max-lr" in err
    record = json.loads((out / "lr_finder.json").read_text())
    assert record["suggested_lr"] is None and record["settings"]["steps_run"] < 30
    assert not (out / "history.json").exists()


def test_lr_find_only_writes_its_files_and_prints_the_value(tiny_data, cache_dir, tmp_path, capsys):
    """--lr-find-only writes lr_finder.json/.png, prints 'Suggested max LR: <value>', trains nothing."""
    out = tmp_path / "find"
    result = main(tiny_args(tiny_data, cache_dir, out, "--lr-find-only", *TINY_RANGE_TEST, max_lr=None))
    printed = capsys.readouterr().out
    assert f"Suggested max LR: {result['max_lr']:.6g}" in printed
    assert (out / "lr_finder.png").stat().st_size > 10_000 and (out / "lr_finder.json").exists()
    assert not (out / "history.json").exists() and not (out / "checkpoints").exists()


def test_two_processes_agree_on_one_suggestion(tiny_data, cache_dir, tmp_path):
    """With 2 processes every process computes the same suggested LR (losses are averaged
    across processes before smoothing)."""
    out = tmp_path / "find2"
    proc = launch("cpu_multi.yaml", tiny_args(tiny_data, cache_dir, out, "--lr-find-only", *TINY_RANGE_TEST, max_lr=None))
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((out / "lr_finder.json").read_text())
    assert record["settings"]["processes"] == 2
    assert record["suggested_lr"] is not None
    assert record["settings"]["process_suggestions"] == [record["suggested_lr"]] * 2
    assert proc.stdout.count("Suggested max LR:") == 1


def test_unknown_rule_is_refused():
    """suggest() names the valid rules."""
    with pytest.raises(ValueError, match="steepest"):
        suggest([1e-3 * k for k in range(1, 40)], [2 - 0.01 * k for k in range(39)], "best")


def test_sweep_length_is_checked_against_what_the_rules_need():
    """A sweep shorter than the rules can use is refused by the config, before any data loads;
    the shortest allowed sweep still gives every rule enough points for a suggestion."""
    with pytest.raises(ConfigError, match=f"--lr-find-iters must be at least {MIN_LR_FIND_ITERS}"):
        Config(lr_find_iters=MIN_LR_FIND_ITERS - 1)
    lrs = [10 ** (-5 + k / 4) for k in range(MIN_LR_FIND_ITERS)]
    falling = [3.0 - 0.1 * k for k in range(MIN_LR_FIND_ITERS)]
    assert all(suggest(lrs, falling, rule)[0] is not None for rule in ("valley", "steepest", "min10"))
    assert suggest(lrs[:-1], falling[:-1], "valley")[0] is None
