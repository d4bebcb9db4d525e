"""Diffusion features through block taps, the L-BFGS linear probe, and `fewstep probe`."""

import math
import re

import numpy as np
import pytest
import torch

import fewstep
from fewstep.checkpoint import save_checkpoint
from fewstep.cli import main
from fewstep.diffusion_features import dataset_features, diffusion_features, tap_names
from fewstep.nets import build_net
from fewstep.probe import fit_linear_probe, select_l2
from fewstep.processes import VPDiscrete

from conftest import TINY_UNET, write_idx


def _tiny_unet(num_classes=0):
    torch.manual_seed(0)
    net = build_net({**TINY_UNET, "num_classes": num_classes}).eval()
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.2)
    return net


@pytest.fixture(scope="module")
def den():
    return fewstep.Denoiser(_tiny_unet(), VPDiscrete.linear(), "eps", sample_shape=(1, 8, 8))


def _images(n, seed=0):
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_features_are_the_taps_at_the_seeded_noisy_image(den):
    """The `in` tap is conv_in(alpha x0 + sigma eps) with eps from each image's seed; pooling is the spatial mean."""
    x0, t = _images(3), 120.0
    feats = diffusion_features(den, x0, t, ("in", "mid", "up.0"), seeds=[4, 5, 6], pool="none")
    eps = torch.stack([torch.randn(1, 8, 8, generator=torch.Generator().manual_seed(s)) for s in (4, 5, 6)])
    a, s = float(den.process.alpha(t)), float(den.process.sigma(t))
    with torch.no_grad():
        expected = den.net.conv_in(a * x0 + s * eps)
    assert torch.allclose(feats["in"], expected, atol=1e-6)
    assert feats["mid"].shape == (3, 16, 4, 4) and feats["up.0"].shape[:2] == (3, 16)
    pooled = diffusion_features(den, x0, t, ("mid",), seeds=[4, 5, 6])["mid"]
    assert torch.allclose(pooled, feats["mid"].mean(dim=(2, 3)), atol=1e-6)
    # another time gives other features; the clean-image tap `pixels` is x0 itself
    assert not torch.allclose(diffusion_features(den, x0, 600.0, ("mid",), seeds=[4, 5, 6])["mid"], pooled)
    assert torch.equal(diffusion_features(den, x0, t, ("pixels",))["pixels"], x0.flatten(1))


def test_features_do_not_depend_on_the_batch(den):
    x0 = _images(5, seed=1)
    full = dataset_features(den, (x0 * 127.5 + 127.5).round().to(torch.uint8), 50.0, ("mid", "up.1"),
                            seed=10, batch_size=5, progress=False)
    parts = dataset_features(den, (x0 * 127.5 + 127.5).round().to(torch.uint8), 50.0, ("mid", "up.1"),
                             seed=10, batch_size=2, progress=False)
    assert full.shape == (5, 16 + 16) and torch.allclose(full, parts, atol=1e-5)


def test_feature_errors_name_the_problem(den, gmm8, ddpm_linear):
    x0 = _images(2)
    assert tap_names(den) == ["in", "down.0", "deep", "down.1", "down.2", "mid", "up.0", "up.1", "up.3", "up.4"]
    with pytest.raises(ValueError, match=r"no block tap 'middle'; its taps: in, down.0, .*mid"):
        diffusion_features(den, x0, 10.0, ("middle",))
    with pytest.raises(ValueError, match="outside"):
        diffusion_features(den, x0, 5000.0)
    with pytest.raises(ValueError, match="does not take a sampling context"):
        diffusion_features(gmm8.denoiser(ddpm_linear), torch.zeros(2, 8), 10.0)
    with pytest.raises(ValueError, match="one per image"):
        diffusion_features(den, x0, 10.0, seeds=[1])


def test_probe_reaches_the_bayes_accuracy_of_two_gaussians():
    """Two classes N(+m, I), N(-m, I): logistic regression is well specified; its accuracy -> Phi(|m|)."""
    g = torch.Generator().manual_seed(0)
    d, m = 5, torch.tensor([0.6, -0.3, 0.2, 0.0, 0.4], dtype=torch.float64)

    def draw(n):
        y = torch.randint(0, 2, (n,), generator=g)
        x = torch.randn(n, d, generator=g, dtype=torch.float64) + (2 * y[:, None] - 1) * m
        return x * torch.tensor([1.0, 3.0, 0.5, 2.0, 1.0], dtype=torch.float64) + 7.0, y  # scaled and shifted

    x, y = draw(4000)
    probe = fit_linear_probe(x, y, l2=0.0)
    bayes = 0.5 * (1 + math.erf(float(m.norm()) / math.sqrt(2)))
    xt, yt = draw(20000)
    assert abs(probe.accuracy(xt, yt) - bayes) < 0.012
    # the fit is the optimum: the gradient of the (convex) objective vanishes there
    w, b = probe.weight.clone().requires_grad_(), probe.bias.clone().requires_grad_()
    loss = torch.nn.functional.cross_entropy(((x - probe.mean) / probe.std) @ w.T + b, y)
    gw, gb = torch.autograd.grad(loss, (w, b))
    assert float(gw.abs().max()) < 1e-6 and float(gb.abs().max()) < 1e-6


def test_select_l2_uses_the_holdout_only():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(300, 40, generator=g)
    y = (x[:, 0] > 0).long()
    best, scores = select_l2(x, y, 2, grid=(1e-4, 1e-1, 1e3))
    assert set(scores) == {1e-4, 1e-1, 1e3} and scores[best] == max(scores.values())
    assert scores[1e3] < scores[1e-4]  # a huge weight cannot fit the hold-out as well
    with pytest.raises(ValueError, match=r"features must be \(N, D\)"):
        fit_linear_probe(x[:, 0], y)


@pytest.fixture(scope="module")
def probe_setup(tmp_path_factory):
    """A Fashion-MNIST-shaped folder of 8x8 images whose class is the brightness, and tiny 8x8 checkpoints."""
    root = tmp_path_factory.mktemp("probe")
    rng = np.random.default_rng(0)
    for split, n in (("train", 60), ("t10k", 30)):
        labels = np.arange(n) % 10
        images = np.clip(labels[:, None, None] * 25 + rng.integers(0, 20, (n, 8, 8)), 0, 255)
        write_idx(root / f"{split}-images-idx3-ubyte.gz", images)
        write_idx(root / f"{split}-labels-idx1-ubyte.gz", labels)
    process = {"kind": "vp_discrete", "schedule": "linear", "num_train_timesteps": 1000,
               "beta_start": 0.0001, "beta_end": 0.02}
    models = {}
    for name, classes in (("uncond", 0), ("cond", 10)):
        config = {"network": {**TINY_UNET, "num_classes": classes}, "process": process, "prediction": "eps"}
        net = _tiny_unet(classes)
        models[name] = str(save_checkpoint(root / name, 1, config, net, net))
    return root, models


def test_cli_probe_end_to_end(probe_setup, capsys):
    import json

    root, models = probe_setup
    data = f"fashion-mnist:{root}"
    assert main(["probe", "--tap", "pixels", "--data", data, "--train-n", "60", "--test-n", "30",
                 "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "linear probe on raw pixels (64 features" in out
    assert float(out.split("test accuracy ")[1].split()[0]) > 0.9  # brightness is linear in the pixels
    assert main(["probe", "--model", models["uncond"], "--t", "20", "--tap", "mid,up.1", "--data", data,
                 "--train-n", "60", "--test-n", "30", "--l2", "0.01", "--no-progress",
                 "--json", str(root / "r.json")]) == 0
    assert "(32 features, l2 0.01)" in capsys.readouterr().out
    assert main(["probe", "--model", models["cond"], "--t", "20", "--data", data, "--train-n", "30",
                 "--test-n", "10", "--l2", "0.01", "--no-progress"]) == 0
    assert "features are read under the null class" in capsys.readouterr().out
    result = json.loads((root / "r.json").read_text())
    assert result["taps"] == ["mid", "up.1"] and 0 <= result["test_accuracy"] <= 1


@pytest.mark.parametrize("args, message", [
    (["--model", "uncond", "--t", "20", "--tap", "midd"], "no block tap 'midd'; its taps: in, down.0"),
    (["--tap", "pixels", "--l2", "x"], "--l2 x: give a number >= 0 or auto"),
    (["--model", "uncond", "--t", "2000"], "outside"),
    (["--tap", "mid"], "--model and --t are needed"),
    (["--tap", "pixels", "--train-n", "500"], "exceed the data"),
])
def test_cli_probe_errors(probe_setup, capsys, args, message):
    root, models = probe_setup
    args = [models.get(a, a) for a in args]
    base = ["--data", f"fashion-mnist:{root}", "--train-n", "40", "--test-n", "10", "--no-progress"]
    assert main(["probe", *base, *args]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and re.search(message, err), err
