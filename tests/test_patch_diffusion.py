"""Patch Diffusion (Wang et al. 2023): coordinate channels, the patch-size schedule, patch batches, and sampling
a patch-trained model at full size with every solver."""

import json

import pytest
import torch

import fewstep
from conftest import tiny_images
from fewstep import load_model, solvers
from fewstep.data import ImageData
from fewstep.nets import CoordinateInput, build_net
from fewstep.nets.coords import image_coordinates
from fewstep.training import Trainer, resolve_config
from fewstep.training.patches import PatchSchedule, crop_patches


def _config(coordinates: bool, p: float = 1.0, res: int = 8, **objective) -> dict:
    return {"network": {"kind": "unet", "in_channels": 1, "resolution": res, "channels": 8, "channel_mult": [1, 2],
                        "num_res_blocks": 1, "attn_resolutions": [], "head_dim": 8, "coordinates": coordinates},
            "process": {"kind": "vp_discrete", "schedule": "linear", "num_train_timesteps": 1000},
            "prediction": "v",
            "objective": {"kind": "denoising", "patch_full_fraction": p, **objective},
            "training": {"steps": 2, "batch_size": 4, "warmup_steps": 0, "checkpoint_every_seconds": 0,
                         "log_every": 1}}


def test_image_coordinates_span_minus_one_to_one():
    c = image_coordinates(5, 3)
    assert c.shape == (2, 5, 3)
    assert torch.allclose(c[0, :, 0], torch.tensor([-1.0, -0.5, 0.0, 0.5, 1.0]))  # rows
    assert torch.allclose(c[1, 0], torch.tensor([-1.0, 0.0, 1.0]))  # columns
    assert torch.equal(c[0], c[0, :, :1].expand(5, 3)) and torch.equal(c[1], c[1, :1].expand(5, 3))


def test_patch_coordinates_are_the_slice_of_the_full_images_coordinates():
    b, h, w, s, k = 3, 9, 7, 4, 5
    index = torch.arange(h * w, dtype=torch.float32).reshape(1, 1, h, w)
    images = torch.cat([index, -index], dim=1).expand(b, 2, h, w) + torch.arange(b).reshape(b, 1, 1, 1) * 1000
    patches, coords = crop_patches(images, s, k, torch.Generator().manual_seed(3))
    assert patches.shape == (b, k, 2, s, s) and coords.shape == (b, k, 2, s, s)
    full = image_coordinates(h, w)
    seen = set()
    for i in range(b):
        for j in range(k):
            top, left = divmod(int(patches[i, j, 0, 0, 0]) - 1000 * i, w)  # the patch's top-left pixel index
            seen.add((top, left))
            assert torch.equal(patches[i, j], images[i, :, top:top + s, left:left + s])
            assert torch.equal(coords[i, j], full[:, top:top + s, left:left + s])
    assert len(seen) > 5, "patches land at different places"


def test_paper_schedule_probabilities():
    sched = PatchSchedule.paper(28, 0.5)
    assert sched.sizes == (28, 14, 7)
    assert sched.probs == pytest.approx((0.5, 0.3, 0.2))
    assert [sched.patches_per_image(s) for s in sched.sizes] == [1, 4, 16]
    custom = PatchSchedule.paper(32, 0.25, sizes=[16, 8, 4], weights=[1, 1, 2], batch_scale=False)
    assert custom.probs == pytest.approx((0.25, 0.1875, 0.1875, 0.375))
    assert custom.patches_per_image(8) == 1
    assert PatchSchedule.paper(32, 0.4, sizes=[16, 8]).probs == pytest.approx((0.4, 0.3, 0.3))


@pytest.mark.parametrize("p", [0.0, 0.5, 0.8])
def test_drawn_sizes_follow_the_schedule(p):
    sched = PatchSchedule.paper(28, p)
    g = torch.Generator().manual_seed(0)
    n = 20000
    drawn = [sched.draw_size(g) for _ in range(n)]
    for size, prob in zip(sched.sizes, sched.probs):
        freq = drawn.count(size) / n
        assert abs(freq - prob) < 4 * (prob * (1 - prob) / n) ** 0.5 + 1e-9, (size, freq, prob)


def test_objective_draws_the_schedules_mix_over_steps():
    data = ImageData(tiny_images(16, res=8))
    tr = Trainer(_config(True, 0.5), data, "unused", device="cpu", progress=False)
    sizes = [tr.batch(step)["x0"].shape[-1] for step in range(400)]
    freq = {s: sizes.count(s) / len(sizes) for s in (8, 4, 2)}
    assert abs(freq[8] - 0.5) < 0.1 and abs(freq[4] - 0.3) < 0.1 and abs(freq[2] - 0.2) < 0.1


def test_a_full_size_step_reproduces_ordinary_training_input_exactly(tmp_path):
    data = ImageData(tiny_images(16, res=8))
    plain = Trainer(_config(False), data, tmp_path / "a", device="cpu", progress=False)
    patch = Trainer(_config(True, 0.5), data, tmp_path / "b", device="cpu", progress=False)
    inputs: dict[str, torch.Tensor] = {}
    plain.model.conv_in.register_forward_hook(lambda m, a, o: inputs.__setitem__("plain", a[0]))
    patch.model.net.conv_in.register_forward_hook(lambda m, a, o: inputs.__setitem__("patch", a[0]))
    full_steps = patched_steps = 0
    for step in range(12):
        a, b = plain.batch(step), patch.batch(step)
        if b["x0"].ndim == 5:
            patched_steps += 1
            continue
        full_steps += 1
        assert b.keys() == a.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), key
        plain.objective.loss(a, plain.modules)
        patch.objective.loss(b, patch.modules)
        assert torch.equal(inputs["patch"][:, :1], inputs["plain"])
        assert torch.equal(inputs["patch"][:, 1:], image_coordinates(8, 8).expand(4, 2, 8, 8))
    assert full_steps and patched_steps


def test_patch_loss_is_the_mean_over_each_images_patches(tmp_path):
    tr = Trainer(_config(True, 0.0, patch_sizes=[4]), ImageData(tiny_images(16, res=8)), tmp_path, device="cpu",
                 progress=False)
    batch = tr.batch(0)
    assert batch["x0"].shape == (4, 4, 1, 4, 4) and batch["t"].shape == (4, 4)
    per_image = tr.objective.loss(batch, tr.modules)
    assert per_image.shape == (4,)
    one = {k: v[:, 2] for k, v in batch.items()}  # the third patch of every image alone
    single = tr.objective.loss({k: v[:, None] for k, v in one.items()}, tr.modules)
    every = torch.stack([tr.objective.loss({k: v[:, j:j + 1] for k, v in batch.items()}, tr.modules)
                         for j in range(4)], dim=1)
    assert torch.allclose(every[:, 2], single)
    assert torch.allclose(per_image, every.mean(dim=1), atol=1e-6)


def test_sampling_a_patch_trained_model_with_every_solver(tmp_path):
    tr = Trainer(_config(True, 0.5), ImageData(tiny_images(16, res=8)), tmp_path, device="cpu", progress=False)
    tr.fit()
    saved = json.loads((tmp_path / "checkpoints" / "step-00000002" / "config.json").read_text())
    assert saved["network"]["coordinates"] is True and saved["network"]["in_channels"] == 1
    den = load_model(tmp_path)
    assert isinstance(den.net, CoordinateInput) and den.sample_shape == (1, 8, 8)
    seen = []
    den.net.net.conv_in.register_forward_hook(lambda m, a, o: seen.append(a[0][:, 1:]))
    for name in solvers.available():
        nfe = 200 if name == "dpm_adaptive" else 6
        x = fewstep.generate(den, (1, 8, 8), [0, 1], name, nfe)
        assert x.shape == (2, 1, 8, 8) and bool(torch.isfinite(x).all()), name
    assert seen and all(torch.equal(c, image_coordinates(8, 8).expand(len(c), 2, 8, 8)) for c in seen)


def test_coordinate_wrapper_keeps_the_data_channels_in_its_config():
    net = build_net({"kind": "unet", "in_channels": 3, "resolution": 8, "channels": 8, "channel_mult": [1],
                     "attn_resolutions": [], "coordinates": True})
    assert net.net.config.in_channels == 5 and net.net.config.out_channels == 3
    assert net.config.to_dict()["in_channels"] == 3 and net.config.to_dict()["coordinates"] is True
    rebuilt = build_net(net.config.to_dict())
    rebuilt.load_state_dict(net.state_dict())
    x = torch.randn(2, 3, 8, 8)
    assert net(x, torch.tensor([0.3, 0.7])).shape == (2, 3, 8, 8)
    with pytest.raises(ValueError, match="coords must be shaped"):
        net(x, torch.tensor([0.3, 0.7]), coords=torch.zeros(2, 2, 4, 4))


@pytest.mark.parametrize("change, message", [
    ({"objective": {"patch_fraction": 0.5}}, "unknown config key.*patch_fraction"),
    ({"objective": {"patch_full_fraction": 1.5}}, "patch_full_fraction must lie in"),
    ({"objective": {"patch_full_fraction": "half"}}, "patch_full_fraction must be float"),
    ({"objective": {"patch_sizes": [4]}}, "need objective.patch_full_fraction below 1"),
    ({"network": {"coordinates": "yes"}}, "network.coordinates must be bool"),
    ({"network": {"coordinate": True}}, "unknown config key.*network.coordinate"),
])
def test_configs_are_strictly_checked(change, message):
    cfg = _config(True)
    for section, values in change.items():
        cfg[section].update(values)
    with pytest.raises(ValueError, match=message):
        resolve_config(cfg)


@pytest.mark.parametrize("cfg, message", [
    (_config(False, 0.5), "set network.coordinates to true"),
    (_config(True, 0.5, patch_sizes=[8]), r"patch_sizes must lie in \[1, 7\]"),
    (_config(True, 0.5, patch_sizes=[4], patch_weights=[1, 2]), "one weight per size"),
])
def test_bad_patch_settings_are_refused_before_training(cfg, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        Trainer(cfg, ImageData(tiny_images(16, res=8)), tmp_path, device="cpu", progress=False)
