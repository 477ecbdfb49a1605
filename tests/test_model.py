"""The network matches the spec: size, shapes, residual additions, channels_last and autocast."""

import torch

from resnet_ocp.batchnorm import BatchNormOptions
from resnet_ocp.model import CustomResNet, NetworkConfig, Residual, count_parameters, summary


def test_parameter_count_is_exactly_the_spec():
    """The width-64 network has exactly 6,573,130 trainable parameters."""
    assert count_parameters(CustomResNet()) == 6_573_130


def test_output_shape_and_stage_shapes():
    """Logits are [B, 10]; the stages halve the side 32 -> 16 -> 8 -> 4 with 64/128/256/512 channels."""
    model = CustomResNet().eval()
    x = torch.randn(3, 3, 32, 32)
    assert model(x).shape == (3, 10)
    feats = model.prep(x)
    assert feats.shape == (3, 64, 32, 32)
    feats = model.layer1(feats)
    assert feats.shape == (3, 128, 16, 16)
    assert model.layer2(feats).shape == (3, 256, 8, 8)
    assert model.features(x).shape == (3, 512, 4, 4)
    table = summary(model)
    assert "6,573,130" in table and "layer3" in table and "(1, 512, 4, 4)" in table


def test_residual_blocks_add_their_input():
    """layer1 and layer3 end in Residual blocks whose output is input + body(input)."""
    model = CustomResNet().eval()
    residuals = [m for m in model.modules() if isinstance(m, Residual)]
    assert [r.body[0][0].in_channels for r in residuals] == [128, 512]
    assert isinstance(model.layer1[1], Residual) and isinstance(model.layer3[1], Residual)
    x = torch.randn(2, 128, 16, 16)
    block = residuals[0]
    torch.testing.assert_close(block(x), x + block.body(x))
    # With the body silenced (last BN outputs zero), the block is exactly the identity.
    bn = block.body[1][1]
    torch.nn.init.zeros_(bn.weight)
    torch.nn.init.zeros_(bn.bias)
    torch.testing.assert_close(block(x), x)


def test_channels_last_and_bf16_autocast_agree_with_fp32():
    """channels_last + bf16 autocast give the same shapes and nearly the same logits as fp32."""
    torch.manual_seed(0)
    model = CustomResNet(NetworkConfig(width=16)).eval()
    x = torch.randn(4, 3, 32, 32)
    ref = model(x)
    model_cl = model.to(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model_cl(x.contiguous(memory_format=torch.channels_last))
    assert out.shape == ref.shape
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, atol=0.15, rtol=0.1)


def test_width_scales_every_stage():
    """A narrow network (tests use width 8) keeps the same structure."""
    model = CustomResNet(NetworkConfig(width=8))
    assert model.fc.in_features == 64
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_logit_scale_multiplies_the_output_and_adds_no_parameters():
    """``logit_scale`` (Page's 0.125) scales the logits by a constant, leaves the parameter
    count at 6,573,130 and the predictions (argmax) unchanged for the same weights."""
    torch.manual_seed(0)
    plain = CustomResNet().eval()
    scaled = CustomResNet(NetworkConfig(logit_scale=0.125)).eval()
    scaled.load_state_dict(plain.state_dict())
    assert count_parameters(scaled) == 6_573_130
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        a, b = plain(x), scaled(x)
    torch.testing.assert_close(b, a * 0.125)
    assert torch.equal(a.argmax(1), b.argmax(1))


def _trained_looking(width: int = 8, norm: BatchNormOptions | None = None, **config) -> CustomResNet:
    """A small network with random weights and non-default batch-norm statistics, in eval mode."""
    torch.manual_seed(0)
    model = CustomResNet(NetworkConfig(width=width, **config), norm or BatchNormOptions())
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def test_save_pretrained_and_from_pretrained_give_the_same_network(tmp_path):
    """save_pretrained writes model.safetensors and a config.json holding only what prediction
    needs (no batch-norm momentum, nothing of training); from_pretrained rebuilds a network in eval
    mode on the CPU whose logits are bit-identical and whose class names, normalisation, logit
    scale and TTA flag are the saved ones."""
    import json

    from resnet_ocp.model import CustomResNet as Net

    names = [f"c{i}" for i in range(10)]
    model = _trained_looking(logit_scale=0.125, class_names=names, tta=True, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3),
                             norm=BatchNormOptions(momentum=0.01))
    model.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    config = json.loads((tmp_path / "config.json").read_text())
    assert config == {"num_classes": 10, "width": 8, "logit_scale": 0.125, "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3],
                      "class_names": names, "tta": True, "tta_shift": 0, "activation": "relu", "celu_alpha": 0.075, "whiten": False}
    loaded = Net.from_pretrained(tmp_path)
    assert not loaded.training and next(loaded.parameters()).device.type == "cpu"
    assert loaded.config == NetworkConfig(width=8, logit_scale=0.125, class_names=names, tta=True, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))
    assert loaded.config.class_names == tuple(names)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert count_parameters(Net.from_pretrained(tmp_path)) == count_parameters(model)


def test_from_pretrained_refuses_weights_that_do_not_fit(tmp_path):
    """A weights file missing a tensor is an error, not a network with that tensor left at its
    random initial value (the mixin's default loads non-strictly)."""
    import pytest
    from safetensors.torch import load_file, save_file

    model = _trained_looking()
    model.save_pretrained(tmp_path)
    tensors = load_file(str(tmp_path / "model.safetensors"))
    del tensors["fc.bias"]
    save_file(tensors, str(tmp_path / "model.safetensors"))
    with pytest.raises(RuntimeError, match="fc.bias"):
        CustomResNet.from_pretrained(tmp_path)


def test_default_construction_is_unchanged():
    """CustomResNet() is still the 10-class width-64 network, with CIFAR-10's normalisation,
    no class names and no TTA, so every existing caller builds the same network."""
    from resnet_ocp.data import CIFAR10_MEAN, CIFAR10_STD

    model = CustomResNet()
    assert (model.fc.out_features, model.prep[0].out_channels, model.config.logit_scale) == (10, 64, 1.0)
    assert (model.config.mean, model.config.std, model.config.class_names, model.config.tta) == (CIFAR10_MEAN, CIFAR10_STD, None, False)


def test_config_json_from_an_older_version_loads_and_an_unknown_key_is_refused(tmp_path):
    """A config.json written before a key existed (the published sgd-24ep export has no
    tta_shift, activation or whiten) builds the network with that key's default; a key this
    version does not know is one error naming it, not a silently different network."""
    import json

    import pytest

    from conftest import REPO

    old = CustomResNet.from_pretrained(REPO / "results/sgd-24ep/export")
    assert (old.config.tta_shift, old.config.activation, old.config.whiten, old.config.logit_scale) == (0, "relu", False, 0.125)
    model = _trained_looking()
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "depth": 18}))
    with pytest.raises(ValueError, match="keys this resnet_ocp does not know: depth"):
        CustomResNet.from_pretrained(tmp_path)
