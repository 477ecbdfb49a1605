"""The network matches the spec: size, shapes, residual additions, channels_last and autocast."""

import torch

from resnet_ocp.model import CustomResNet, Residual, count_parameters, summary


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
    model = CustomResNet(width=16).eval()
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
    model = CustomResNet(width=8)
    assert model.fc.in_features == 64
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_logit_scale_multiplies_the_output_and_adds_no_parameters():
    """``logit_scale`` (Page's 0.125) scales the logits by a constant, leaves the parameter
    count at 6,573,130 and the predictions (argmax) unchanged for the same weights."""
    torch.manual_seed(0)
    plain = CustomResNet().eval()
    scaled = CustomResNet(logit_scale=0.125).eval()
    scaled.load_state_dict(plain.state_dict())
    assert count_parameters(scaled) == 6_573_130
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        a, b = plain(x), scaled(x)
    torch.testing.assert_close(b, a * 0.125)
    assert torch.equal(a.argmax(1), b.argmax(1))
