import pytest
import torch

from fewstep.nets import build_net, net_config


@pytest.mark.parametrize("cfg", [
    {"kind": "unet", "in_channels": 3, "resolution": 12, "channels": 8, "channel_mult": [1, 2, 2],
     "num_res_blocks": 1, "attn_resolutions": [3], "head_dim": 8, "dropout": 0.1, "num_classes": 4},
    {"kind": "unet", "in_channels": 1, "resolution": 7, "channels": 8, "channel_mult": [1, 2],
     "num_res_blocks": 2, "attn_resolutions": [], "head_dim": 8},  # odd size: up-sampling matches the skip
    {"kind": "dit", "in_channels": 1, "resolution": 8, "patch_size": 2, "depth": 2, "width": 32, "heads": 2,
     "num_classes": 3},
])
def test_output_shape_and_config_round_trip(cfg):
    torch.manual_seed(0)
    net = build_net(cfg).eval()
    c, r = cfg["in_channels"], cfg["resolution"]
    x = torch.randn(3, c, r, r)
    labels = torch.tensor([0, 1, 2]) if cfg.get("num_classes") else None
    # Zero-initialised output layers make a fresh net output zeros; perturb so the round trip is meaningful.
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.01 * torch.randn_like(p))
    out = net(x, torch.tensor([1.0, 10.0, 100.0]), class_labels=labels)
    assert out.shape == x.shape and torch.isfinite(out).all()
    saved = net_config(net)
    assert saved["kind"] == cfg["kind"]
    clone = build_net(saved).eval()
    clone.load_state_dict(net.state_dict())
    assert torch.equal(clone(x, torch.tensor([1.0, 10.0, 100.0]), class_labels=labels), out)
    # The noise level matters.
    assert not torch.allclose(net(x, 5.0, class_labels=labels), net(x, 500.0, class_labels=labels))


def test_bad_configs_and_inputs():
    with pytest.raises(ValueError, match="unknown network kind"):
        build_net({"kind": "resnet"})
    with pytest.raises(ValueError, match="unknown unet setting.*chanels"):
        build_net({"kind": "unet", "chanels": 8})
    with pytest.raises(ValueError, match="multiple of patch_size"):
        build_net({"kind": "dit", "resolution": 7, "patch_size": 2})
    net = build_net({"kind": "unet", "in_channels": 1, "resolution": 8, "channels": 8, "channel_mult": [1]})
    with pytest.raises(ValueError, match=r"expects input shaped \(batch, 1, H, W\)"):
        net(torch.randn(2, 3, 8, 8), 1.0)
    with pytest.raises(ValueError, match="num_classes=0"):
        net(torch.randn(2, 1, 8, 8), 1.0, class_labels=torch.tensor([0, 1]))
