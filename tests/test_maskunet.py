"""MaskUNet (Wang et al. 2025): timestep-dependent binary masks over a frozen UNet, trained as an objective."""

import copy

import pytest
import torch

from conftest import TINY_UNET, tiny_config, tiny_images
from fewstep.checkpoint import latest_checkpoint
from fewstep.data import ImageData
from fewstep.loading import load_model
from fewstep.nets import build_net
from fewstep.nets.masked import binary_mask
from fewstep.training.trainer import Trainer

X, T = torch.randn(3, 1, 8, 8), torch.tensor([5.0, 300.0, 900.0])


def _random_unet(seed=0):
    torch.manual_seed(seed)
    net = build_net(dict(TINY_UNET))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    return net.eval()


def _masked(base):
    net = build_net({**base.config.to_dict(), "kind": "maskunet"}).eval()
    missing = net.load_state_dict(base.state_dict(), strict=False).missing_keys
    assert missing and all(k.startswith("masker.") for k in missing)
    return net


def test_all_ones_masks_compute_exactly_the_original_network():
    base = _random_unet()
    net = _masked(base)
    with torch.no_grad():
        assert all(bool((m == 1).all()) for m in net.masks(X, T))
        assert torch.equal(net(X, T), base(X, T))


def test_a_zero_mask_zeroes_the_weights_of_that_output_channel():
    base = _random_unet(1)
    net = _masked(base)
    with torch.no_grad():
        net.masker.heads[0].bias[2] = -5.0  # channel 2 of the first ResBlock's conv1 off for every sample
        got = net(X, T)
        ref = copy.deepcopy(base)
        ref.down[0][0].conv1.weight[2] = 0.0
        torch.testing.assert_close(got, ref(X, T))
        assert (got - base(X, T)).abs().max() > 1e-4


def test_masks_depend_on_the_time_and_pass_gradients_straight_through():
    net = _masked(_random_unet(2))
    with torch.no_grad():
        for head in net.masker.heads:
            head.weight.normal_(0, 3.0)
            head.bias.zero_()
    masks = net.masks(torch.zeros(2, 1, 8, 8), torch.tensor([10.0, 900.0]))
    assert any(not torch.equal(m[0], m[1]) for m in masks)  # same input, other time: other masks
    assert all(set(m.unique().tolist()) <= {0.0, 1.0} for m in masks)
    logits = torch.tensor([-1.0, 0.5, 2.0], requires_grad=True)
    m = binary_mask(logits, 1.0, 0.5)
    assert m.tolist() == [0.0, 1.0, 1.0]
    m.sum().backward()
    s = torch.sigmoid(logits.detach())
    torch.testing.assert_close(logits.grad, s * (1 - s))


def _masking_config(source, steps=3):
    cfg = tiny_config(steps=steps, lr=0.05)
    cfg["network"] = {**cfg["network"], "kind": "maskunet", "mask_hidden": 16}
    cfg["objective"] = {"kind": "masking", "init_from": source}
    return cfg


def test_training_the_masks_leaves_the_frozen_network_unchanged(tmp_path):
    Trainer(tiny_config(steps=2), ImageData(tiny_images()), tmp_path / "base", progress=False).fit()
    source = str(latest_checkpoint(tmp_path / "base"))
    base = load_model(source).net
    tr = Trainer(_masking_config(source), ImageData(tiny_images()), tmp_path / "mask", progress=False)
    gen_before = {k: v.clone() for k, v in tr.model.masker.state_dict().items()}
    with torch.no_grad():  # starts as the source's network
        torch.testing.assert_close(tr.model(X, T), base(X, T), rtol=0, atol=0)
    tr.fit()
    den = load_model(tmp_path / "mask")
    assert type(den.net).__name__ == "MaskUNet"
    for name, value in base.state_dict().items():
        assert torch.equal(den.net.state_dict()[name], value), name
        assert torch.equal(tr.model.state_dict()[name], value), name
    assert any(not torch.equal(gen_before[k], v) for k, v in tr.model.masker.state_dict().items())


def test_the_masking_objective_refuses_a_plain_network_or_no_source(tmp_path):
    cfg = _masking_config("bundled:fashion")
    cfg["network"]["kind"] = "unet"
    cfg["network"] = {k: v for k, v in cfg["network"].items() if not k.startswith("mask_")}
    with pytest.raises(ValueError, match="maskunet"):
        Trainer(cfg, ImageData(tiny_images()), tmp_path / "a", progress=False)
    cfg = _masking_config("")
    with pytest.raises(ValueError, match="init_from"):
        Trainer(cfg, ImageData(tiny_images()), tmp_path / "b", progress=False)
