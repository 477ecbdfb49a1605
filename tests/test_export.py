"""`resnet-ocp export RUN_DIR OUT_DIR`: a folder that CustomResNet.from_pretrained loads (locally or
by Hub id) to the run's own network, with a model card that states the run's measured accuracy."""

import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from huggingface_hub import ModelCard
from PIL import Image

from conftest import CLASSES, REPO, make_images
from resnet_ocp import evaluate
from resnet_ocp.cli import build_parser, main, resolve_config
from resnet_ocp.config import Config
from resnet_ocp.export import HOUSEKEEPING
from resnet_ocp.model import CustomResNet

EXPORTED = ["README.md", "config.json", "curves.png", "model.safetensors", "schedule.png"]
RECORD = REPO / "results" / "sgd-24ep"


@pytest.fixture(scope="module")
def exported(finished_run, tmp_path_factory) -> Path:
    """The tiny finished run exported once."""
    out = tmp_path_factory.mktemp("export") / "tiny"
    main(["export", finished_run["run_dir"], str(out)])
    return out


def test_exported_model_is_the_runs_network_bit_for_bit(finished_run, exported):
    """The export holds the run's model.safetensors byte for byte, and from_pretrained gives a
    network whose tensors and logits (evaluated as evaluate does) equal load_trained's exactly."""
    run_dir = Path(finished_run["run_dir"])
    assert sorted(p.name for p in exported.iterdir()) == EXPORTED
    assert (exported / "model.safetensors").read_bytes() == (run_dir / "model.safetensors").read_bytes()
    cfg = Config.from_dict(json.loads((run_dir / "config.json").read_text()))
    original = evaluate.load_trained(run_dir, cfg, 10)
    loaded = CustomResNet.from_pretrained(exported).to(memory_format=torch.channels_last)
    assert all(torch.equal(a, b) for a, b in zip(original.state_dict().values(), loaded.state_dict().values(), strict=True))
    images = torch.from_numpy(make_images(np.arange(40) % 10, seed=9)).permute(0, 3, 1, 2).contiguous()
    assert torch.equal(evaluate.test_logits(loaded, images, cfg, cfg.tta), evaluate.test_logits(original, images, cfg, cfg.tta))
    assert (list(loaded.config.class_names), loaded.config.tta, loaded.config.logit_scale) == (CLASSES, cfg.tta, cfg.logit_scale)


def _card_command_config(card_text: str) -> Config:
    """The config that the card's training command would train with."""
    command = card_text.split("## Training\n\n```bash\n")[1].split("\n```")[0]
    words = shlex.split(command)
    return resolve_config(vars(build_parser().parse_args(words[words.index("train.py") + 1:])))


def _comparable(cfg: Config) -> dict:
    return {k: v for k, v in cfg.to_dict().items() if k not in HOUSEKEEPING}


def test_card_states_the_runs_accuracy_and_command(finished_run, exported):
    """The card's Hub metadata names the library, CIFAR-10 and, in its model-index, the test
    accuracy of summary.json; its training command gives the run's config.json back (housekeeping
    options aside), under the accelerate config of the run's fp32 session; its pictures are there."""
    run_dir = Path(finished_run["run_dir"])
    card = ModelCard.load(exported / "README.md")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert card.data.library_name == "resnet-ocp" and card.data.datasets == ["uoft-cs/cifar10"]
    (result,) = card.data.eval_results
    assert (result.metric_type, result.dataset_type, result.dataset_split) == ("accuracy", "uoft-cs/cifar10", "test")
    assert result.metric_value == summary["final_accuracy"] and f"**Test accuracy {100 * summary['final_accuracy']:.2f}%**" in card.text
    saved = Config.from_dict(json.loads((run_dir / "config.json").read_text()))
    assert _comparable(_card_command_config(card.content)) == _comparable(saved)
    assert "accelerate launch --config_file accelerate_configs/cpu_fp32.yaml train.py " in card.text
    assert "![Learning rate and momentum as the optimizer applied them](schedule.png)" in card.text and "(curves.png)" in card.text


def test_export_never_overwrites_and_needs_a_finished_run(finished_run, exported, tmp_path, capsys):
    """Exporting onto an existing folder or from an unfinished run ends with one error line and
    exit status 2, leaving the existing folder as it was."""
    before = (exported / "README.md").read_text()
    (tmp_path / "unfinished").mkdir()
    for argv, fragment in [([finished_run["run_dir"], str(exported)], "already exists; choose a new OUT_DIR"),
                           ([str(tmp_path / "unfinished"), str(tmp_path / "out")], "lacks config.json, history.json, model.safetensors")]:
        with pytest.raises(SystemExit) as info:
            main(["export", *argv])
        err = capsys.readouterr().err.strip()
        assert info.value.code == 2 and err.startswith("error: ") and fragment in err and "\n" not in err
    assert (exported / "README.md").read_text() == before and not (tmp_path / "out").exists()


def test_module_entry_point_exports_as_the_command_does(finished_run, exported, tmp_path):
    """``python -m resnet_ocp.export RUN OUT`` writes the same files and the same card as
    ``resnet-ocp export``."""
    out = tmp_path / "by-module"
    proc = subprocess.run([sys.executable, "-m", "resnet_ocp.export", finished_run["run_dir"], str(out)],
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sorted(p.name for p in out.iterdir()) == EXPORTED
    assert (out / "README.md").read_text() == (exported / "README.md").read_text()


def test_hub_id_loads_from_the_offline_cache(finished_run, exported, tmp_path, monkeypatch):
    """An exported folder placed in the Hub cache as the model someone/tiny loads by that id with
    HF_HUB_OFFLINE=1, and predict gives with it the probabilities it gives with the run directory."""
    import huggingface_hub.constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--someone--tiny"
    shutil.copytree(exported, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    image = tmp_path / "a.png"
    Image.fromarray(make_images(np.array([4]), seed=1)[0]).save(image)
    by_id = main(["predict", "someone/tiny", str(image), "--top-k", "10"])
    by_run = main(["predict", finished_run["run_dir"], str(image), "--top-k", "10"])
    assert (by_id["kind"], by_run["kind"]) == ("Hub model", "run directory")
    assert by_id["predictions"] == by_run["predictions"]


def test_committed_record_export_is_the_record(tmp_path, monkeypatch, capsys):
    """results/sgd-24ep/export holds the 94.26% record's weights byte for byte (git stores them
    once), a card with summary.json's accuracy, card and config.json as ``export`` writes them
    today, and loads with the README's three lines, which predict a test-like image."""
    from resnet_ocp.export import export_run

    export, fresh = RECORD / "export", export_run(RECORD, tmp_path / "fresh")
    assert (export / "model.safetensors").read_bytes() == (RECORD / "model.safetensors").read_bytes()
    for name in ("README.md", "config.json"):
        assert (export / name).read_text() == (fresh / name).read_text(), f"{name} is stale: export results/sgd-24ep again"
    assert ModelCard.load(export / "README.md").data.eval_results[0].metric_value == json.loads(
        (RECORD / "summary.json").read_text())["final_accuracy"] == 0.9426
    readme = (REPO / "README.md").read_text()
    lines = readme.split("```python\n")[1].split("```")[0].strip().splitlines()
    assert len(lines) == 3 and 'CustomResNet.from_pretrained("results/sgd-24ep/export")' in "\n".join(lines)
    Image.fromarray(make_images(np.array([8]), seed=2)[0]).resize((64, 64)).save(tmp_path / "cat.png")
    monkeypatch.chdir(REPO)
    exec("\n".join(lines).replace('"cat.png"', repr(str(tmp_path / "cat.png"))), {})
    printed = capsys.readouterr().out
    assert printed.startswith("[{'file': ") and "'top': [{'class': " in printed and "resized 64x64 -> 32x32" in printed


@pytest.mark.parametrize("session, expected", [
    ({"device": "cpu", "mixed_precision": "bf16", "num_processes": 1}, "--config_file accelerate_configs/cpu.yaml"),
    ({"device": "cpu", "mixed_precision": "no", "num_processes": 1}, "--config_file accelerate_configs/cpu_fp32.yaml"),
    ({"device": "cuda:0", "mixed_precision": "fp16", "num_processes": 1}, "--config_file accelerate_configs/single_gpu_fp16.yaml"),
    ({"device": "cuda:0", "mixed_precision": "bf16", "num_processes": 1}, "--config_file accelerate_configs/single_gpu_bf16.yaml"),
    ({"device": "cpu", "mixed_precision": "no", "num_processes": 2},
     "--config_file accelerate_configs/cpu_multi.yaml --num_processes 2 --mixed_precision no"),
    ({"device": "cuda:0", "mixed_precision": "fp16", "num_processes": 8},
     "--config_file accelerate_configs/multi_gpu.yaml --num_processes 8 --mixed_precision fp16"),
])
def test_card_command_launches_as_the_run_did(session, expected):
    """The card's launcher options give the recorded session's precision and process count: a
    one-process config file whose own values are the session's, else a file of the right kind
    with both given explicitly."""
    import yaml

    from resnet_ocp.session import launch_options

    assert launch_options(session) == expected
    settings = yaml.safe_load((REPO / expected.split()[1]).read_text())
    if "--num_processes" not in expected:
        assert (settings["mixed_precision"], settings["num_processes"], settings["use_cpu"]) == (
            session["mixed_precision"], 1, session["device"] == "cpu")
