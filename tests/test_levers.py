"""The time-to-accuracy levers (issue 18): patch whitening, ghost batch norm, CELU, frozen
batch-norm weights with a larger bias LR, Lookahead, reflect padding and shifted TTA views.
Each is off by default; each test checks what the option does, not only that it runs."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_args
from resnet_ocp.augment import random_crop
from resnet_ocp.batchnorm import BatchNormOptions, GhostBatchNorm2d
from resnet_ocp.cli import main
from resnet_ocp.config import Config, ConfigError
from resnet_ocp.inference import predict_logits
from resnet_ocp.lookahead import BASE_DECAY, EVERY, Lookahead
from resnet_ocp.model import CustomResNet, NetworkConfig, count_parameters, for_config
from resnet_ocp.schedule import build_one_cycle, build_optimizer
from resnet_ocp.whitening import EIGEN_EPS, PatchWhitening, whitening_filters

SPEC = 6_573_130


def test_every_lever_keeps_the_network_at_the_spec_count_except_frozen_bn_weights():
    """Whitening, ghost BN and CELU keep the 6,573,130 trainable parameters (the 1x1 prep conv
    has the 27 x 64 weights of the 3x3 one); frozen BN weights remove exactly their 2,240."""
    assert count_parameters(CustomResNet(NetworkConfig(whiten=True, activation="celu"), BatchNormOptions(ghost_batch=32))) == SPEC
    frozen = CustomResNet(norm=BatchNormOptions(weight_freeze=True))
    bn_weights = sum(m.weight.numel() for m in frozen.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert bn_weights == 2_240 and count_parameters(frozen) == SPEC - 2_240
    assert sum(p.numel() for p in frozen.parameters()) == SPEC


def test_whitening_filters_decorrelate_the_patches_they_were_fitted_on():
    """The fitted 3x3 convolution maps the training images' patches to 27 uncorrelated channels
    whose variances are lambda / (lambda + eps) for the patch covariance's eigenvalues lambda."""
    g = torch.Generator().manual_seed(0)
    mix = torch.randn(3, 3, generator=g)
    images = torch.einsum("dc,nchw->ndhw", mix, torch.randn(64, 3, 16, 16, generator=g))
    images = F.avg_pool2d(F.pad(images, (1, 1, 1, 1), mode="reflect"), 3, 1)  # correlate neighbours too
    layer = PatchWhitening(3)
    layer.fit(images)
    out = F.conv2d(images, layer.weight)  # valid positions only: exactly the fitted patches
    flat = out.permute(1, 0, 2, 3).reshape(27, -1).double()
    cov = flat @ flat.T / (flat.shape[1] - 1)
    patches = images.unfold(2, 3, 1).unfold(3, 3, 1).permute(0, 2, 3, 1, 4, 5).reshape(-1, 27).double()
    eigenvalues = torch.linalg.eigvalsh(patches.T @ patches / (len(patches) - 1)).flip(0)
    assert torch.allclose(cov, torch.diag(eigenvalues / (eigenvalues + EIGEN_EPS)), atol=1e-4)
    assert torch.equal(layer.weight, whitening_filters(images))
    assert not any(p.requires_grad for p in layer.parameters())


def test_whitened_network_keeps_its_filters_through_save_and_load(tmp_path):
    """The whitening filters are a buffer: save_pretrained/from_pretrained carry them and the
    whiten flag, and the reloaded network gives the same logits."""
    model = CustomResNet(NetworkConfig(width=8, whiten=True, activation="celu", celu_alpha=0.3)).eval()
    model.whitening.fit(torch.randn(20, 3, 32, 32))
    model.save_pretrained(tmp_path)
    again = CustomResNet.from_pretrained(tmp_path)
    x = torch.randn(2, 3, 32, 32)
    assert again.whitening is not None and torch.equal(again.whitening.weight, model.whitening.weight)
    assert isinstance(again.prep[1][-1], torch.nn.CELU) and again.prep[1][-1].alpha == 0.3
    assert torch.equal(again(x), model(x))


@pytest.mark.parametrize("layout", [torch.channels_last, torch.contiguous_format])
@pytest.mark.parametrize("n", [96, 80])
def test_ghost_batch_norm_normalises_each_sub_batch_on_its_own(n, layout):
    """In training, ghost BN equals plain BN applied to each sub-batch of 32: images k, k+s,
    k+2s, ... of a batch of s x 32 (96), consecutive chunks of one that is not a multiple (80),
    gradients included; its running statistics move by momentum towards the mean of the
    sub-batches' statistics, and it keeps the input's memory format (channels_last or NCHW); in
    eval mode it is plain BN on the running statistics."""
    torch.manual_seed(0)
    ghost = GhostBatchNorm2d(4, 32, momentum=0.1)
    ghost.bias.data.uniform_()
    ghost.weight.data.uniform_(0.5, 1.5)
    x = (torch.randn(n, 4, 5, 5) * 3 + 1).contiguous(memory_format=layout).requires_grad_()
    grad = torch.randn(n, 4, 5, 5)
    out = ghost(x)
    out.backward(grad)
    s = n // 32
    index = torch.arange(n).view(32, s).T.reshape(-1) if n % 32 == 0 else torch.arange(n)
    x_ref = x.detach().clone().requires_grad_()
    weight, bias = ghost.weight.detach().clone().requires_grad_(), ghost.bias.detach().clone().requires_grad_()
    subs = x_ref[index].split(32)
    expected = torch.cat([F.batch_norm(c, None, None, weight, bias, True, 0.0, ghost.eps) for c in subs])
    expected.backward(grad[index])
    assert torch.allclose(out[index], expected, atol=1e-5)
    assert torch.allclose(x.grad, x_ref.grad, atol=1e-5)
    assert torch.allclose(ghost.weight.grad, weight.grad, atol=1e-4) and torch.allclose(ghost.bias.grad, bias.grad, atol=1e-4)
    assert out.is_contiguous(memory_format=layout)
    out = out.detach()
    assert not torch.allclose(out, F.batch_norm(x, None, None, ghost.weight, ghost.bias, True, 0.0, ghost.eps), atol=1e-3)
    subs = [c.detach() for c in subs]
    means = torch.stack([c.mean((0, 2, 3)) for c in subs]).mean(0)
    variances = torch.stack([c.var((0, 2, 3)) for c in subs]).mean(0)
    assert torch.allclose(ghost.running_mean, 0.1 * means, atol=1e-5)
    assert torch.allclose(ghost.running_var, 0.9 + 0.1 * variances, atol=1e-5)
    ghost.eval()
    with torch.no_grad():
        assert torch.allclose(ghost(x), F.batch_norm(x, ghost.running_mean, ghost.running_var, ghost.weight, ghost.bias, False), atol=1e-6)


def test_ghost_batch_norm_supports_torch_update_bn():
    """torch's update_bn (used for the EMA's statistics) sets momentum None: ghost BN then keeps
    a cumulative average over the batches, as BatchNorm2d does."""
    from torch.optim.swa_utils import update_bn

    ghost = torch.nn.Sequential(GhostBatchNorm2d(3, 4))
    batches = [torch.randn(8, 3, 2, 2) + i for i in range(3)]
    update_bn(batches, ghost)
    halves = [h for b in batches for h in (b[0::2], b[1::2])]
    assert torch.allclose(ghost[0].running_mean, torch.stack([h.mean((0, 2, 3)) for h in halves]).mean(0), atol=1e-5)


def test_frozen_bn_weights_and_bias_lr_scale_make_the_optimizer_groups():
    """--bn-weight-freeze leaves the BN weights out of the optimizer; --bn-bias-lr-scale 64 puts
    the BN biases in a group whose One-Cycle LR is 64x the others' at every step, with 1/64 the
    weight decay (Page)."""
    cfg = Config(optimizer="sgd", weight_decay=5e-4, bn_weight_freeze=True, bn_bias_lr_scale=64, epochs=2, peak_epoch=1)
    model = for_config(cfg, 10)
    opt = build_optimizer(model, cfg)
    main_group, biases = opt.param_groups
    bn = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert {id(p) for p in biases["params"]} == {id(m.bias) for m in bn}
    assert not {id(m.weight) for m in bn} & {id(p) for g in opt.param_groups for p in g["params"]}
    assert biases["weight_decay"] == pytest.approx(5e-4 / 64) and main_group["weight_decay"] == 5e-4
    sched = build_one_cycle(opt, cfg, 0.4, 1000)
    for _ in range(sched.total_steps - 1):
        assert biases["lr"] == pytest.approx(64 * main_group["lr"])
        opt.step()
        sched.step()
    assert sched.get_last_lr()[1] == pytest.approx(64 * sched.get_last_lr()[0])


def test_lookahead_follows_airbench_schedule_and_ends_on_the_slow_weights():
    """Every 5 steps the slow copy moves towards the live weights by 1 - 0.95**5 (step/total)**3
    and the live weights take it; the last step leaves the live weights equal to the slow copy."""
    model = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.zero_()
    look = Lookahead(model, total_steps=10)
    slow = 0.0
    for step in range(1, 11):
        with torch.no_grad():
            model.weight.add_(1.0)  # stands in for an optimizer step
        fast = model.weight[0, 0].item()
        look.step(model, step)
        if step % EVERY == 0:
            decay = BASE_DECAY * (step / 10) ** 3
            slow = slow + (1 - decay) * (fast - slow)
            assert model.weight[0, 0].item() == pytest.approx(slow)
        else:
            assert model.weight[0, 0].item() == pytest.approx(fast)
    assert torch.equal(model.weight, look.state_dict()["weight"])


def test_reflect_padding_crops_mirror_the_border():
    """--crop-pad-mode reflect fills the crop's border with the mirrored image, not zeros."""
    x = torch.arange(16, dtype=torch.uint8).view(1, 1, 4, 4)
    shift = torch.tensor([0])
    zero = random_crop(x, shift, shift, 1)
    reflect = random_crop(x, shift, shift, 1, "reflect")
    assert zero[0, 0, 0].tolist() == [0, 0, 0, 0]
    assert reflect[0, 0, 0].tolist() == [5, 4, 5, 6] and reflect[0, 0, 1].tolist() == [1, 0, 1, 2]


def test_shifted_tta_averages_flips_and_diagonal_shifts():
    """With --tta-shift s the logits are half the flip mean and half the flip means of the image
    shifted by s pixels up-left and down-right (reflect-padded), as airbench's TTA."""
    torch.manual_seed(0)
    model = CustomResNet(NetworkConfig(width=4)).eval()
    images = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    mean, std = torch.tensor([0.5] * 3), torch.tensor([0.25] * 3)
    x = (images.float() / 255 - 0.5) / 0.25

    def flip_mean(v):
        return (model(v) + model(v.flip(-1))) / 2

    padded = F.pad(x, (2,) * 4, mode="reflect")
    expected = flip_mean(x) / 2 + (flip_mean(padded[..., :32, :32]) + flip_mean(padded[..., 4:, 4:])) / 4
    with torch.no_grad():
        got = predict_logits(model, images, mean, std, channels_last=False, tta=True, tta_shift=2)
        assert torch.allclose(got, expected.detach(), atol=1e-5)
        assert not torch.allclose(got, predict_logits(model, images, mean, std, channels_last=False, tta=True), atol=1e-4)


def test_lever_options_are_checked_before_any_data_loads():
    """Bad lever values are one-line ConfigErrors."""
    with pytest.raises(ConfigError, match="--tta-shift 1 needs --tta"):
        Config(tta_shift=1)
    with pytest.raises(ConfigError, match="--bn-bias-lr-scale"):
        Config(bn_bias_lr_scale=0)
    with pytest.raises(ConfigError, match="--activation must be one of relu, celu"):
        Config(activation="gelu")
    with pytest.raises(ConfigError, match="--crop-pad-mode must be one of zero, reflect"):
        Config(crop_pad_mode="edge")


@pytest.mark.slow
def test_a_run_with_every_lever_trains_checkpoints_and_resumes_exactly(tiny_data, cache_dir, tmp_path):
    """A tiny run with all the levers on learns (loss falls), saves the whitening filters and the
    Lookahead's slow copy in its checkpoints, and a run stopped after epoch 1 and resumed ends
    with the same weights and history as the uninterrupted one; its export says how many of
    the parameters were trained and predicts with the shifted TTA views."""
    from safetensors.torch import load_file

    from resnet_ocp.export import export_run

    levers = ["--optimizer", "sgd", "--max-lr", "0.2", "--logit-scale", "0.125", "--whiten", "--ghost-batch", "10",
              "--activation", "celu", "--celu-alpha", "0.3", "--bn-weight-freeze", "--bn-bias-lr-scale", "8", "--lookahead",
              "--crop-pad-mode", "reflect", "--tta", "--tta-shift", "1", "--label-smoothing", "0.2"]
    whole = main(tiny_args(tiny_data, cache_dir, tmp_path / "whole", *levers, max_lr=None))
    assert whole["config"]["whiten"] and whole["history"][-1]["train_loss"] < whole["history"][0]["train_loss"]
    checkpoint = tmp_path / "whole" / "checkpoints" / "epoch_002"
    assert set(load_file(str(checkpoint / "lookahead.safetensors"))) >= {"prep.0.weight", "fc.weight"}
    weights = load_file(str(tmp_path / "whole" / "model.safetensors"))
    assert weights["prep.0.weight"].abs().sum() > 0 and weights["prep.0.weight"].shape == (27, 3, 3, 3)
    main(tiny_args(tiny_data, cache_dir, tmp_path / "split", *levers, "--stop-after-epoch", "1", max_lr=None))
    resumed = main(["--resume", str(tmp_path / "split"), "--no-progress"])
    again = load_file(str(tmp_path / "split" / "model.safetensors"))
    assert all(torch.equal(weights[k], again[k]) for k in weights)
    history = json.loads((tmp_path / "split" / "history.json").read_text())
    assert [h["test_accuracy"] for h in history] == [h["test_accuracy"] for h in whole["history"]]
    assert resumed["final_accuracy"] == whole["final_accuracy"]
    exported = export_run(tmp_path / "whole", tmp_path / "export")
    card = (exported / "README.md").read_text()
    assert "(103,954 parameters, width 8; 103,674 of them trained, the batch-norm weights frozen at 1)" in card
    assert "shifted 1 pixel(s) diagonally each way" in card and "--whiten" in card
    loaded = CustomResNet.from_pretrained(exported)
    assert (loaded.config.tta_shift, loaded.whitening is not None, type(loaded.layer2[-1]).__name__) == (1, True, "CELU")


def test_each_lever_ablation_is_the_fast_preset_plus_that_lever_only():
    """benchmarks/ablations.py's fast+ variants, on the 8-epoch proxy, give --preset fast's config
    with only their lever's fields changed, and are measured against the variant fast."""
    import argparse
    import dataclasses
    import sys

    from conftest import REPO

    sys.path.insert(0, str(REPO / "benchmarks"))
    from ablations import BASELINE_OF, EVALUATED, VARIANTS, proxy_flags
    from resnet_ocp.cli import build_parser, resolve_config

    proxy = argparse.Namespace(data="d", epochs=8, max_lr=0.00266, train_samples=None, extra="")
    fast = Config.from_preset("fast", data="d", progress=False)
    expected = {
        "fast": set(), "fast+whiten": {"whiten"}, "fast+ghost_bn": {"ghost_batch"}, "fast+celu": {"activation"},
        "fast+bn_bias_lr64": {"bn_bias_lr_scale"}, "fast+bn_frozen_bias_lr64": {"bn_weight_freeze", "bn_bias_lr_scale"},
        "fast+ema": {"ema"}, "fast+lookahead": {"lookahead"}, "fast+reflect_pad": {"crop_pad_mode"},
        "fast+batch1024": {"batch_size", "max_lr"},
    }
    for name, fields in expected.items():
        config = resolve_config(vars(build_parser().parse_args([*proxy_flags(proxy), *VARIANTS[name]])))
        changed = {f.name for f in dataclasses.fields(Config) if getattr(config, f.name) != getattr(fast, f.name)}
        assert changed == fields, name
        assert name == "fast" or BASELINE_OF[name] == "fast"
    assert EVALUATED["fast+tta_shift"] == ("fast", {"tta": True, "tta_shift": 1})
