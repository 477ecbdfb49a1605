"""The loader against the facts listed in ../shared/data/cifar10/README.md (skipped where that
folder is absent, e.g. a clone without the shared data)."""

import pytest
import torch

from conftest import REAL_DATA, REPO

pytestmark = pytest.mark.skipif(not REAL_DATA.exists(), reason="real CIFAR-10 not beside the checkout")


@pytest.fixture(scope="module")
def real():
    from resnet_ocp.data import load_cifar

    return load_cifar(str(REAL_DATA))


def test_real_cifar10_facts(real):
    """Sizes, class balance, first labels, the frog's first pixel, and the channel means."""
    assert real.classes == ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    assert len(real.train) == 50_000 and len(real.test) == 10_000
    assert torch.bincount(real.train.labels).tolist() == [5000] * 10
    assert torch.bincount(real.test.labels).tolist() == [1000] * 10
    assert real.train.labels[:10].tolist() == [6, 9, 9, 4, 1, 1, 2, 7, 8, 3]
    assert real.test.labels[:10].tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]
    assert real.train.images[0, :, 0, 0].tolist() == [59, 62, 63]
    mean = real.train.images.double().mean((0, 2, 3))
    torch.testing.assert_close(mean, torch.tensor([125.30691805, 122.95039414, 113.86538318], dtype=torch.float64), atol=1e-6, rtol=0)
    std = real.train.images.double().std((0, 2, 3), correction=0)
    torch.testing.assert_close(std, torch.tensor([62.99321928, 62.08870764, 66.70489964], dtype=torch.float64), atol=1e-4, rtol=0)
    test_mean = real.test.images.double().mean((0, 2, 3))
    torch.testing.assert_close(test_mean, torch.tensor([126.02464141, 123.70850420, 114.85431865], dtype=torch.float64), atol=1e-6, rtol=0)


def test_smoke_run_on_real_data(tmp_path):
    """One short epoch on small real subsets writes the run directory and beats chance."""
    from resnet_ocp.cli import main

    result = main([
        "--data", str(REAL_DATA), "--train-samples", "500", "--test-samples", "200", "--width", "16",
        "--batch-size", "50", "--epochs", "2", "--peak-epoch", "1", "--max-lr", "0.005",
        "--output-dir", str(tmp_path / "run"), "--no-progress",
    ])
    assert len(result["history"]) == 2
    assert result["history"][-1]["test_samples"] == 200
    assert result["final_accuracy"] > 0.15
    assert (tmp_path / "run" / "model.safetensors").exists()


def _records():
    return sorted(p.parent for p in (REPO / "results").glob("*/model.safetensors"))


# How many test images a committed record may gain or lose when re-evaluated on kernels other
# than its own (it is checked exactly where they are the same: vendor, instruction set and precision).
# - bf16 on Intel Xeon Sapphire Rapids (AMX) against the records' AMD Zen 4: fast-5ep-seed1 9015 for 9014,
#   sgd-24ep 9425 for 9426, fast-8ep off by an unreported count, reference-24ep exact (issue 14).
# fast-8ep's count is unknown, so this takes the largest fp32-vs-bf16 gap measured below (4), not twice 1.
OTHER_BF16_CPU_IMAGES = 4
# - fp32 on an AMD EPYC with AVX2 only, where bf16 is emulated (an order of magnitude slower), so the
#   records are re-evaluated in fp32: +2, -4, +1 and -1 images (fast-5ep-seed1, fast-8ep,
#   reference-24ep, sgd-24ep), measured 2026-12-02 (docs/results.md).
# Twice the largest difference seen.
FP32_IMAGES = 8


def reevaluation_plan(session: dict) -> tuple[str, int]:
    """The precision to re-evaluate a record in here, and how many images its count may differ by."""
    from resnet_ocp.session import same_cpu_kernels

    recorded = session["mixed_precision"]
    if recorded == "bf16" and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return "no", FP32_IMAGES
    return recorded, 0 if same_cpu_kernels(session) else (OTHER_BF16_CPU_IMAGES if recorded == "bf16" else FP32_IMAGES)


@pytest.mark.slow
@pytest.mark.parametrize("record", _records(), ids=lambda p: p.name)
def test_committed_record_reproduces_its_accuracy(record, real):
    """Every results/<name>/ record's model.safetensors, evaluated in the precision and batches the
    run used (run.json), gives exactly the final test accuracy of its history.json on a CPU with
    the run's kernels; elsewhere it agrees within the measured tolerance above (in fp32 where
    this CPU only emulates bf16)."""
    import json

    from resnet_ocp.evaluate import evaluate_run

    session = json.loads((record / "run.json").read_text())["sessions"][-1]
    precision, tolerance = reevaluation_plan(session)
    history = json.loads((record / "history.json").read_text())
    result = evaluate_run(record, data=str(REAL_DATA), precision=precision)
    recorded = round(history[-1]["test_accuracy"] * 10_000)
    assert abs(result["correct"] - recorded) <= tolerance, (precision, result["correct"], recorded)


@pytest.mark.parametrize("record", _records(), ids=lambda p: p.name)
def test_committed_record_summary_agrees_with_its_history(record):
    """Every results/<name>/summary.json is what report.summarize computes from its history.json."""
    import json

    from resnet_ocp.report import summarize

    history = json.loads((record / "history.json").read_text())
    assert json.loads((record / "summary.json").read_text()) == summarize(history)
