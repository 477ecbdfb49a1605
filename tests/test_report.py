"""The pictures: every PNG exists, is a real image of the expected size, and shows the right samples."""

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from resnet_ocp.model import CustomResNet, NetworkConfig
from resnet_ocp.report import confusion, describe, grad_cam, summarize
from resnet_ocp.report import main as report_main

EXPECTED = {  # figsize x dpi 100
    "lr_finder.png": (700, 450), "schedule.png": (800, 450), "curves.png": (1100, 420),
    "confusion_matrix.png": (850, 750),
}


def test_every_picture_is_a_valid_image_of_the_expected_size(finished_run):
    """A finished run holds all six PNGs, decodable and of the sizes the code asks for."""
    run = Path(finished_run["run_dir"])
    for name in ("lr_finder.png", "schedule.png", "curves.png", "misclassified.png", "confusion_matrix.png", "gradcam.png"):
        with Image.open(run / name) as img:
            img.verify()
        with Image.open(run / name) as img:
            assert img.format == "PNG"
            if name in EXPECTED:
                assert img.size == EXPECTED[name]
            else:
                assert img.size[0] >= 230 and img.size[1] >= 260
        assert (run / name).stat().st_size > 5_000


def test_misclassified_grid_holds_only_misclassified_samples(finished_run, tiny_data, cache_dir):
    """Every index in the grid is a test sample the saved model gets wrong; per-class
    accuracy agrees with the confusion matrix."""
    from resnet_ocp.augment import normalize
    from resnet_ocp.data import CIFAR10_MEAN, CIFAR10_STD, load_cifar

    run = Path(finished_run["run_dir"])
    shown = json.loads((run / "misclassified.json").read_text())["indices"]
    data = load_cifar(str(tiny_data), str(cache_dir))
    model = CustomResNet(NetworkConfig(width=8)).eval()
    model.load_state_dict(load_file(str(run / "model.safetensors")))
    with torch.no_grad():
        pred = model(normalize(data.test.images, torch.tensor(CIFAR10_MEAN), torch.tensor(CIFAR10_STD))).argmax(1)
    wrong = set(torch.nonzero(pred != data.test.labels).flatten().tolist())
    assert set(shown) <= wrong and len(shown) == min(len(wrong), 20)
    per_class = json.loads((run / "per_class_accuracy.json").read_text())
    m = confusion(data.test.labels.numpy(), pred.numpy(), 10)
    assert per_class["airplane"] == pytest.approx(m[0, 0] / m[0].sum())


def test_confusion_counts():
    """m[true, predicted] counts pairs."""
    m = confusion([0, 0, 1, 2], [0, 1, 1, 1], 3)
    assert m.tolist() == [[1, 1, 0], [0, 1, 0], [0, 1, 0]]


def test_grad_cam_is_the_class_weighted_feature_map():
    """Grad-CAM of class c is, for this network, ReLU(sum_k W[c, k] * scale / 16 * A_k): the
    global 4x4 max-pool passes the logit's gradient to one cell per channel, so the averaged
    gradient of channel k is W[c, k] * scale / 16. The maps equal that closed form, upsampled to
    the input and scaled to peak at 1 (all zero where no cell has positive evidence), one per
    image and per requested class."""
    torch.manual_seed(0)
    model = CustomResNet(NetworkConfig(width=8, logit_scale=0.5)).eval()
    x, target = torch.randn(3, 3, 32, 32), torch.tensor([1, 2, 3])
    cam = grad_cam(model, x, target)
    with torch.no_grad():
        act = model.features(x)
    raw = (model.fc.weight[target][:, :, None, None].detach() * 0.5 / 16 * act).sum(1, keepdim=True)
    assert (raw < 0).any() and (raw > 0).any()  # the ReLU has something to remove
    expected = torch.nn.functional.interpolate(torch.relu(raw), size=(32, 32), mode="bilinear", align_corners=False)[:, 0]
    peaks = expected.flatten(1).max(1).values
    assert (peaks > 0).sum() == 2 and (peaks == 0).sum() == 1  # seed 0: one image has no positive evidence for its class
    expected = expected / peaks.clamp_min(1e-12)[:, None, None]
    assert cam.shape == (3, 32, 32)
    torch.testing.assert_close(cam, expected, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(grad_cam(model, x, torch.tensor([4, 5, 6])), cam)


def test_schedule_plot_names_the_optimizer_momentum():
    """The schedule picture's momentum curve is labelled by what it is: Adam's or AdamW's beta1, or SGD's momentum."""
    from resnet_ocp.plots import momentum_name

    assert [momentum_name(o) for o in ("adam", "adamw", "sgd")] == ["Adam beta1", "AdamW beta1", "SGD momentum"]


def test_report_command_regenerates_pictures_and_refuses_unfinished_dirs(finished_run, tmp_path, capsys):
    """`python -m resnet_ocp.report RUN_DIR` rewrites the pictures; a directory without a
    finished run gets one error line."""
    run = Path(finished_run["run_dir"])
    (run / "curves.png").unlink()
    at_run_end = (run / "per_class_accuracy.json").read_text(), (run / "misclassified.json").read_text()
    written = report_main([str(run)])
    assert run / "curves.png" in written and (run / "curves.png").exists()
    # The run's end reused its last evaluation; recomputing from the weights gives the same figures.
    assert ((run / "per_class_accuracy.json").read_text(), (run / "misclassified.json").read_text()) == at_run_end
    with pytest.raises(SystemExit) as info:
        report_main([str(tmp_path)])
    assert info.value.code == 2
    assert "lacks config.json" in capsys.readouterr().err


def test_summary_reports_the_first_epoch_and_time_at_each_target():
    """summarize: final/best accuracy, and per target the first epoch reaching it with the
    cumulative epoch seconds up to it; a target never reached is None."""
    accs = [0.80, 0.905, 0.89, 0.921, 0.93]
    history = [{"epoch": i + 1, "test_accuracy": a, "seconds": 100.0 + i} for i, a in enumerate(accs)]
    s = summarize(history)
    assert s["final_accuracy"] == 0.93 and s["best_accuracy"] == 0.93 and s["best_epoch"] == 5 and s["epochs"] == 5
    assert s["first_reached"] == {"0.90": {"epoch": 2, "seconds": 201.0}, "0.92": {"epoch": 4, "seconds": 406.0}, "0.94": None}
    assert s["seconds"] == 510.0
    assert "first >= 90%: epoch 2, after 3.4 min" in describe(s) and "first >= 94%: not reached" in describe(s)


def test_finished_run_writes_its_summary(finished_run):
    """summary.json of a finished run agrees with its history.json."""
    run = Path(finished_run["run_dir"])
    summary = json.loads((run / "summary.json").read_text())
    history = json.loads((run / "history.json").read_text())
    assert summary == summarize(history)
    assert summary["final_accuracy"] == finished_run["final_accuracy"]
