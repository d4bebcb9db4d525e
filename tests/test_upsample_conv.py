"""The decoder's upsampling convolution computed at low resolution (fewstep.nets.upsample)."""

import pytest
import torch
import torch.nn.functional as F

from fewstep.nets.upsample import UpsampleConv, transposed_upsample_kernel


def _reference(conv: torch.nn.Conv2d, h: torch.Tensor, size) -> torch.Tensor:
    """Written out here, independently of UpsampleConv.reference."""
    return F.conv2d(F.interpolate(h, size=size, mode="nearest"), conv.weight, conv.bias, padding=1)


@pytest.mark.parametrize("hw", [(7, 7), (4, 6), (1, 1)])
def test_transposed_convolution_equals_upsample_then_conv(hw):
    torch.manual_seed(0)
    conv = UpsampleConv(5, 3).double()
    h = torch.randn(2, 5, *hw, dtype=torch.float64)
    size = (2 * hw[0], 2 * hw[1])
    assert torch.allclose(conv(h, size), _reference(conv, h, size), atol=1e-12)


def test_kernel_rows_collapse_the_taps_landing_on_one_input_row():
    """K[0] = W[+1], K[1] = W[0] + W[+1], K[2] = W[-1] + W[0], K[3] = W[-1] along each axis."""
    w = torch.zeros(1, 1, 3, 3, dtype=torch.float64)
    w[0, 0, :, 1] = torch.tensor([1.0, 10.0, 100.0])  # taps -1, 0, +1 down the middle column
    k = transposed_upsample_kernel(w)[0, 0]
    assert k[:, 1].tolist() == [100.0, 110.0, 11.0, 1.0]
    assert torch.equal(k[:, 2], k[:, 1])   # the middle tap lands on kernel columns 1 and 2 only
    assert not k[:, 0].any() and not k[:, 3].any()


def test_odd_target_sizes_fall_back_to_upsampling():
    torch.manual_seed(1)
    conv = UpsampleConv(2, 2).double()
    h = torch.randn(1, 2, 4, 4, dtype=torch.float64)
    assert torch.allclose(conv(h, (7, 7)), _reference(conv, h, (7, 7)), atol=1e-12)
    assert torch.allclose(conv.reference(h), _reference(conv, h, (8, 8)), atol=1e-12)


def test_gradients_match_the_upsampled_convolution():
    torch.manual_seed(2)
    conv = UpsampleConv(3, 4).double()
    h = torch.randn(2, 3, 5, 5, dtype=torch.float64, requires_grad=True)
    g = torch.randn(2, 4, 10, 10, dtype=torch.float64)
    (conv(h, (10, 10)) * g).sum().backward()
    fast = (h.grad.clone(), conv.weight.grad.clone(), conv.bias.grad.clone())
    h.grad = conv.weight.grad = conv.bias.grad = None
    (_reference(conv, h, (10, 10)) * g).sum().backward()
    for a, b in zip(fast, (h.grad, conv.weight.grad, conv.bias.grad)):
        assert torch.allclose(a, b, atol=1e-10)


def test_the_unet_keeps_its_checkpoint_keys_and_outputs():
    """The upsampling layers keep a plain Conv2d's state-dict entries (``up.k.0.weight`` / ``.bias``, 3x3) and the
    UNet computes what upsample-then-convolve computes."""
    from fewstep.nets import build_net

    torch.manual_seed(3)
    cfg = {"kind": "unet", "in_channels": 1, "resolution": 12, "channels": 8, "channel_mult": [1, 2],
           "num_res_blocks": 1, "attn_resolutions": [], "head_dim": 8}
    net = build_net(cfg).double()
    for p in net.parameters():  # the zero-initialised output layer would hide any difference
        p.data.normal_(0, 0.2)
    ups = [m for m in net.modules() if isinstance(m, UpsampleConv)]
    assert ups and all(type(m).__mro__[1] is torch.nn.Conv2d for m in ups)
    state = net.state_dict()
    for name, m in net.named_modules():
        if isinstance(m, UpsampleConv):
            assert state[f"{name}.weight"].shape == (m.out_channels, m.in_channels, 3, 3) and f"{name}.bias" in state
            assert name.startswith("up.") and name.endswith(".0")
    x, t = torch.randn(2, 1, 12, 12, dtype=torch.float64), torch.tensor([0.3, 0.8], dtype=torch.float64)
    fast = net(x, t)
    for m in ups:  # the slow path: a Conv2d on the upsampled map
        m.forward = m.reference
    assert torch.allclose(fast, net(x, t), atol=1e-10)


def test_the_autoencoder_decoder_is_unchanged_by_the_fused_upsampling():
    """Same state-dict keys as the nn.Upsample + nn.Conv2d decoder, and the same decoded images."""
    from fewstep.nets.autoencoder import AutoencoderConfig, ConvAutoencoder

    torch.manual_seed(4)
    ae = ConvAutoencoder(AutoencoderConfig(in_channels=1, channels=4, downsamples=2, latent_channels=2)).double()
    keys = [k for k in ae.state_dict() if k.startswith("decoder.")]
    assert "decoder.3.weight" in keys and not any(k.startswith("decoder.2.") for k in keys)  # 2: the old Upsample
    z = torch.randn(2, 2, 3, 3, dtype=torch.float64)
    fast = ae.decode(z)
    ups = [m for m in ae.decoder if isinstance(m, UpsampleConv)]
    assert len(ups) == 2
    for m in ups:
        m.forward = m.reference
    assert torch.allclose(fast, ae.decode(z), atol=1e-10)
