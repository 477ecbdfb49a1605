"""notebooks/colab.ipynb runs headless, offline, with a real kernel on the tiny set, and shows what
a Colab user would see: the chosen Accelerate config, the pictures, the accuracy, predictions."""

import json
import re

import pytest
import torch
import yaml

from conftest import CLASSES, REPO
from resnet_ocp.session import recommended_accelerate_config

NOTEBOOK = REPO / "notebooks" / "colab.ipynb"


@pytest.mark.parametrize("capability, cpu_bf16, expected", [
    ((7, 5), False, "single_gpu_fp16"),  # T4
    ((7, 0), False, "single_gpu_fp16"),  # V100
    ((8, 0), False, "single_gpu_bf16"),  # A100
    ((8, 9), True, "single_gpu_bf16"),   # L4
    ((9, 0), False, "single_gpu_bf16"),  # H100
    (None, True, "cpu"),                 # native bf16 CPU (Zen 4, Sapphire Rapids)
    (None, False, "cpu_fp32"),           # AVX2 CPU: bf16 would be emulated
])
def test_accelerate_config_follows_the_hardware(capability, cpu_bf16, expected):
    """fp16 on T4/V100, bf16 on Ampere and newer, and on a CPU bf16 only where it is native."""
    assert recommended_accelerate_config(capability, cpu_bf16) == f"accelerate_configs/{expected}.yaml"


def test_notebook_has_a_parameters_cell_and_no_training_loop():
    """One code cell is tagged `parameters` (papermill's hook), and no cell holds a training loop:
    training goes through resnet_ocp.cli.main."""
    cells = json.loads(NOTEBOOK.read_text())["cells"]
    tagged = [c for c in cells if "parameters" in c["metadata"].get("tags", [])]
    assert len(tagged) == 1 and tagged[0]["cell_type"] == "code" and "INSTALL = True" in "".join(tagged[0]["source"])
    code = "".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    assert 'main(["train"' in code and 'main(["lr-find"' in code and 'main(["predict"' in code
    assert not re.search(r"\.backward\(|optimizer\.step|for .* in .*loader", code)


@pytest.mark.slow
def test_notebook_runs_headless_on_the_tiny_set(tiny_data, cache_dir, tmp_path):
    """Executed by papermill with an ipykernel on the tiny set (width 8, 2 epochs, no install),
    from a working directory outside the repository, the notebook prints this machine's Accelerate config, shows the range test and the five run
    pictures and a prediction grid inline (image/png), prints an evaluated accuracy equal to the
    run's summary.json, leaves a finished run and an export, and predicts every test image it wrote."""
    import papermill

    out = tmp_path / "runs"
    parameters = {"INSTALL": False, "DATA": str(tiny_data), "OUTPUT_DIR": str(out), "CACHE_DIR": str(cache_dir), "EPOCHS": 2,
                  "PEAK_EPOCH": 1, "WIDTH": 8, "BATCH_SIZE": 20, "EVAL_BATCH_SIZE": 32, "LR_FIND_ITERS": 30, "LR_FIND_END": 0.5,
                  "PROGRESS": False, "PREDICT_IMAGES": 4}
    notebook = papermill.execute_notebook(str(NOTEBOOK), str(tmp_path / "executed.ipynb"), parameters=parameters, cwd=str(tmp_path),
                                          kernel_name="python3", progress_bar=False)
    outputs = [o for c in notebook.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    expected_config = recommended_accelerate_config(None, bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()))
    assert f"no GPU: CPU: {expected_config}" in text
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 7  # range test, 5 run pictures, prediction grid
    summary = json.loads((out / "train" / "summary.json").read_text())
    # evaluate's line (the epochs print theirs without a precision), in the config file's precision.
    correct, total, precision = re.search(r"Accuracy: (\d+)/(\d+) \([\d.]+%\), precision (\w+)\n", text).groups()
    assert (int(total), int(correct)) == (100, round(summary["final_accuracy"] * 100)) and "(matches)" in text
    assert precision == yaml.safe_load((REPO / expected_config).read_text())["mixed_precision"]
    assert f"final test accuracy {100 * summary['final_accuracy']:.2f}% after 2 epochs" in text
    for name in ("model.safetensors", "curves.png", "gradcam.png", "predictions.csv"):
        assert (out / "train" / name).exists(), name
    assert (out / "lr-find" / "lr_finder.json").exists() and (out / "export" / "README.md").exists()
    predicted = re.findall(r"test_\d{5}\.png: (\w+) [\d.]+%", text)
    assert len(predicted) == 4 and set(predicted) <= set(CLASSES)


def test_colab_links_name_one_repository():
    """The README's Colab badge, the notebook's own badge and its REPO_URL name the same GitHub
    repository, so publishing it means changing one name in three agreeing places."""
    readme = (REPO / "README.md").read_text()
    notebook = NOTEBOOK.read_text()
    badge = re.search(r"colab\.research\.google\.com/github/([\w.-]+/[\w.-]+)/blob/main/notebooks/colab\.ipynb", readme).group(1)
    assert f"colab.research.google.com/github/{badge}/blob/main/notebooks/colab.ipynb" in notebook
    assert f'REPO_URL = \\"https://github.com/{badge}.git\\"' in notebook
