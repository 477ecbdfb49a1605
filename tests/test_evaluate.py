"""`python -m resnet_ocp.evaluate RUN_DIR` reproduces the recorded accuracy from the saved weights."""

import json

import pytest
import torch

from conftest import REPO, reset_accelerate, tiny_args
from resnet_ocp.cli import main
from resnet_ocp.evaluate import main as evaluate_main
from resnet_ocp.inference import predict_logits
from resnet_ocp.model import CustomResNet, NetworkConfig


def test_saved_weights_reproduce_the_recorded_accuracy(finished_run, capsys):
    """The final test accuracy in history.json is recomputed exactly from model.safetensors."""
    result = evaluate_main([finished_run["run_dir"]])
    assert result["total"] == 100
    assert result["accuracy"] == pytest.approx(finished_run["history"][-1]["test_accuracy"], abs=1e-9)
    out = capsys.readouterr().out
    assert f"Accuracy: {result['correct']}/100" in out and "(matches)" in out


def test_bf16_run_is_reproduced_in_bf16(tiny_data, cache_dir, tmp_path, monkeypatch, capsys):
    """A run trained and evaluated under bf16 autocast records it in run.json, and the evaluate
    command reproduces its accuracy in bf16 by default (an fp32 pass may differ by a few images)."""
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    result = main(tiny_args(tiny_data, cache_dir, tmp_path / "bf16", "--epochs", "1", "--peak-epoch", "0.5"))
    reset_accelerate()
    sessions = json.loads((tmp_path / "bf16" / "run.json").read_text())["sessions"]
    assert [s["mixed_precision"] for s in sessions] == ["bf16"] and sessions[0]["num_processes"] == 1
    evaluated = evaluate_main([str(tmp_path / "bf16")])
    assert evaluated["precision"] == "bf16"
    assert evaluated["accuracy"] == pytest.approx(result["final_accuracy"], abs=1e-9)
    assert "precision bf16" in capsys.readouterr().out


def test_weights_option_tests_a_checkpoints_live_weights(finished_run, tiny_data, cache_dir, tmp_path, capsys):
    """--weights tests another weights file of the run's network: without EMA the last checkpoint's
    weights are the final ones (same accuracy and loss); with --ema they are the live weights,
    which differ from the recorded average; an unfinished run's checkpoint can be tested too, and
    the checkpoint's ema.safetensors (the AveragedModel's keys) or a file that is not safetensors is
    refused in one line."""
    plain = evaluate_main([finished_run["run_dir"]])
    live = evaluate_main([finished_run["run_dir"], "--weights", "checkpoints/epoch_002/model.safetensors"])
    assert (live["correct"], live["loss"]) == (plain["correct"], plain["loss"]) and live["recorded"] is None
    assert "weights checkpoints/epoch_002/model.safetensors" in capsys.readouterr().out

    run = tmp_path / "ema"
    result = main(tiny_args(tiny_data, cache_dir, run, "--ema", "0.9"))
    reset_accelerate()
    averaged = evaluate_main([str(run)])
    assert averaged["accuracy"] == pytest.approx(result["final_accuracy"], abs=1e-9)
    live = evaluate_main([str(run), "--weights", str(run / "checkpoints" / "epoch_002" / "model.safetensors")])
    assert abs(live["loss"] - averaged["loss"]) > 1e-4 and live["recorded"] is None
    (run / "model.safetensors").unlink()  # as before the run finished
    assert evaluate_main([str(run), "--weights", "checkpoints/epoch_001/model.safetensors"])["total"] == 100
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        evaluate_main([str(run), "--weights", "checkpoints/epoch_002/ema.safetensors"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and len(err.strip().splitlines()) == 1 and "does not hold this run's network" in err
    with pytest.raises(SystemExit) as info:
        evaluate_main([str(run), "--weights", "config.json"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and len(err.strip().splitlines()) == 1 and "cannot be read" in err


def test_flip_tta_averages_the_image_and_its_mirror():
    """--tta logits are the mean of the logits of x and of x mirrored left-right."""
    torch.manual_seed(0)
    model = CustomResNet(NetworkConfig(width=8)).eval()
    x = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    mean, std = torch.zeros(3) + 0.5, torch.ones(3) * 0.25
    with torch.no_grad():
        both = predict_logits(model, x, mean, std, False, tta=True)
        plain = predict_logits(model, x, mean, std, False)
        mirrored = predict_logits(model, x.flip(-1), mean, std, False)
    torch.testing.assert_close(both, (plain + mirrored) / 2)


def test_unfinished_directory_is_refused(tmp_path, capsys):
    """A directory without weights gets one error line and exit status 2."""
    with pytest.raises(SystemExit) as info:
        evaluate_main([str(tmp_path)])
    assert info.value.code == 2 and "lacks config.json, model.safetensors" in capsys.readouterr().err


def test_a_record_is_reproducible_bit_for_bit_only_on_its_own_kernels():
    """same_cpu_kernels: a session recorded on an AMD Zen 4 (AVX512, the records' run.json, which
    predates cpu_vendor) matches a Zen 4 and neither an Intel Sapphire Rapids with the same
    capability level nor an AVX2-only AMD; a session with cpu_bf16 recorded must agree on it."""
    from resnet_ocp.session import same_cpu_kernels

    record = json.loads((REPO / "results" / "sgd-24ep" / "run.json").read_text())["sessions"][-1]
    zen4 = {"cpu_vendor": "AuthenticAMD", "cpu_capability": "AVX512", "cpu_bf16": ["avx512_bf16"]}
    sapphire = {"cpu_vendor": "GenuineIntel", "cpu_capability": "AVX512", "cpu_bf16": ["amx_bf16", "avx512_bf16"]}
    milan = {"cpu_vendor": "AuthenticAMD", "cpu_capability": "AVX2", "cpu_bf16": []}
    assert [same_cpu_kernels(record, cpu) for cpu in (zen4, sapphire, milan)] == [True, False, False]
    assert same_cpu_kernels({**record, **sapphire}, sapphire)
    assert not same_cpu_kernels({**record, **zen4, "cpu_bf16": []}, zen4)
