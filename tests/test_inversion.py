"""DDIM inversion against the closed-form flow of a Gaussian, edit-friendly inversion, `fewstep invert`."""

import numpy as np
import pytest
import torch

import fewstep
from fewstep import solvers
from fewstep.checkpoint import save_checkpoint
from fewstep.cli import main
from fewstep.exact import GaussianMixture
from fewstep.inversion import (ddim_invert, ddim_reconstruct, edit_friendly_invert, edit_friendly_sample,
                               invertible_solvers)
from fewstep.nets import build_net
from fewstep.processes import VPDiscrete, VPLinear

from conftest import TINY_UNET

DIM = 6


@pytest.fixture(scope="module")
def gaussian():
    """One Gaussian N(m, C): its probability-flow ODE is linear, with a closed-form flow map."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(DIM, DIM, generator=g, dtype=torch.float64)
    cov = a @ a.T / DIM + 0.05 * torch.eye(DIM, dtype=torch.float64)
    mean = 0.5 * torch.randn(DIM, generator=g, dtype=torch.float64)
    return GaussianMixture.from_covariances(mean[None], cov[None]), mean, cov


def exact_flow(process, mean, cov, x, t0, t1):
    """The PF-ODE flow from ``t0`` to ``t1`` for N(mean, cov): in ``y = x / alpha`` and ``s = sigma / alpha``,
    ``dy/ds = s (C + s^2)^{-1} (y - m)``, so each eigen-coordinate ``u`` of ``y - m`` scales as ``sqrt(c + s^2)``."""
    vals, vecs = torch.linalg.eigh(cov)
    a0, a1 = float(process.alpha(t0)), float(process.alpha(t1))
    s0, s1 = float(process.sigma(t0)) / a0, float(process.sigma(t1)) / a1
    u = (x / a0 - mean) @ vecs * torch.sqrt((vals + s1**2) / (vals + s0**2))
    return a1 * (u @ vecs.T + mean)


def _rmse(a, b):
    return float((a - b).pow(2).mean().sqrt())


@pytest.mark.parametrize("solver", invertible_solvers())
def test_ddim_inversion_converges_with_the_solver_order(solver, gaussian):
    """Inverted noise -> the exact flow map, and reconstruct(invert(x)) -> x, at the solver's order in the steps."""
    gm, mean, cov = gaussian
    process = VPLinear()
    den = gm.denoiser(process)
    x0 = gm.sample(8, torch.Generator().manual_seed(1))
    exact = exact_flow(process, mean, cov, x0, process.t_min, process.t_max)
    spec = solvers.get(solver)
    steps = [20, 40, 80]
    inv, trip = [], []
    for n in steps:
        nfe = int(n * spec.nfe_per_step)
        x_T = ddim_invert(den, x0, solver, nfe, "logsnr")
        inv.append(_rmse(x_T, exact))
        trip.append(_rmse(ddim_reconstruct(den, x_T, solver, nfe, "logsnr"), x0))
    p_inv = -np.polyfit(np.log(steps), np.log(inv), 1)[0]
    p_trip = -np.polyfit(np.log(steps), np.log(trip), 1)[0]
    assert p_inv > spec.order - 0.45 and p_trip > spec.order - 0.45, (p_inv, p_trip, inv, trip)
    assert inv[-1] < 0.1 and trip[-1] < 0.1


def test_ddim_inversion_of_the_exact_flow_is_the_exact_flow(gaussian):
    """At 400 DDIM steps both directions agree with the closed form to the first-order error."""
    gm, mean, cov = gaussian
    process = VPDiscrete.linear()
    den = gm.denoiser(process)
    x0 = gm.sample(4, torch.Generator().manual_seed(2))
    x_T = ddim_invert(den, x0, "dpm++2m", 400, "logsnr")
    assert _rmse(x_T, exact_flow(process, mean, cov, x0, process.t_min, process.t_max)) < 1e-4
    noise = fewstep.prior_noise(process, (DIM,), fewstep.generators(range(4)), dtype=torch.float64)
    back = ddim_reconstruct(den, noise, "dpm++2m", 400, "logsnr")
    assert _rmse(back, exact_flow(process, mean, cov, noise, process.t_max, process.t_min)) < 1e-4


def test_solvers_that_cannot_invert_are_refused_with_the_list(gaussian):
    den = gaussian[0].denoiser(VPLinear())
    x = torch.zeros(2, DIM, dtype=torch.float64)
    for name, why in [("ddpm", "stochastic"), ("dpm++2m_sde", "stochastic"), ("dpm_adaptive", "adapt"),
                      ("ts-ddim", "Time-Shift"), ("lms", "unstable")]:
        with pytest.raises(ValueError, match=f"cannot run the ODE backwards.*{why}.*solvers that can: ddim, "):
            ddim_invert(den, x, name, 10)
    assert {"ddim", "euler", "heun", "dpm++2m", "unipc", "ipndm"} <= set(invertible_solvers())


def _tiny_unet(num_classes=0, seed=0):
    torch.manual_seed(seed)
    net = build_net({**TINY_UNET, "num_classes": num_classes}).eval()
    for p in net.parameters():  # the zero-initialised output layer would hide the network
        torch.nn.init.normal_(p, std=0.2)
    return net


@pytest.fixture(scope="module")
def cond_den():
    return fewstep.Denoiser(_tiny_unet(num_classes=3), VPDiscrete.linear(), "eps", sample_shape=(1, 8, 8))


def _images(n, seed=0):
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_edit_friendly_reconstruction_is_exact():
    """Float64 network: the noise maps reproduce the image to rounding (the CLI test checks float32)."""
    den = fewstep.Denoiser(_tiny_unet(num_classes=3).double(), VPDiscrete.linear(), "eps", sample_shape=(1, 8, 8))
    x0 = _images(3).double()
    cond = {"class_labels": torch.tensor([0, 1, 2])}
    inv = edit_friendly_invert(den, x0, 12, cond=cond, seeds=[0, 1, 2])
    assert inv.zs.shape == (12, 3, 1, 8, 8) and torch.equal(inv.xs[-1], x0)
    assert (edit_friendly_sample(den, inv) - x0).abs().max() < 1e-10
    for skip in (4, 11):  # from any intermediate point too
        assert (edit_friendly_sample(den, inv, skip=skip) - x0).abs().max() < 1e-10
    edited = edit_friendly_sample(den, inv, cond={"class_labels": torch.tensor([1, 2, 0])})
    assert _rmse(edited, x0) > 1e-3  # another class changes the image


def test_edit_friendly_draws_independent_forward_marginals_per_seed(cond_den):
    """Alg. 1 line 2: x_t ~ N(alpha_t x0, sigma_t^2), each sample's draws from its own seed (batch-independent)."""
    x0 = torch.full((400, 1, 8, 8), 0.5)
    inv = edit_friendly_invert(cond_den, x0, 4, seeds=range(400))
    a, s = inv.schedule.alpha, inv.schedule.sigma
    for i in range(4):
        noise = (inv.xs[i] - float(a[i]) * x0) / float(s[i])
        assert abs(float(noise.mean())) < 0.02 and abs(float(noise.std()) - 1) < 0.02
    one = edit_friendly_invert(cond_den, x0[5:6], 4, seeds=[5])
    assert torch.equal(one.xs[:, 0], inv.xs[:, 5]) and torch.allclose(one.zs[:, 0], inv.zs[:, 5], rtol=1e-4, atol=1e-4)


def test_ddim_reconstruct_uses_the_class(cond_den):
    x0 = _images(2, seed=1)
    c0 = {"class_labels": torch.tensor([0, 0])}
    x_T = ddim_invert(cond_den, x0, "dpm++2m", 20, cond=c0)
    same = ddim_reconstruct(cond_den, x_T, "dpm++2m", 20, cond=c0)
    other = ddim_reconstruct(cond_den, x_T, "dpm++2m", 20, cond={"class_labels": torch.tensor([2, 2])})
    assert _rmse(same, x0) < _rmse(other, x0)


def test_bad_input_is_refused_clearly(cond_den):
    with pytest.raises(ValueError, match=r"shape \(2, 3, 8, 8\) but the model takes \(batch, 1, 8, 8\)"):
        ddim_invert(cond_den, torch.zeros(2, 3, 8, 8), "ddim", 5)
    with pytest.raises(ValueError, match="shape"):
        edit_friendly_invert(cond_den, torch.zeros(2, 1, 16, 16), 5)
    inv = edit_friendly_invert(cond_den, _images(1), 5, seeds=[0])
    with pytest.raises(ValueError, match=r"skip must be an integer step in \[0, 4\]"):
        edit_friendly_sample(cond_den, inv, skip=5)


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    """Checkpoints of a tiny unconditional and a tiny 3-class UNet (random weights: inversion needs no training)."""
    root = tmp_path_factory.mktemp("models")
    process = {"kind": "vp_discrete", "schedule": "linear", "num_train_timesteps": 1000,
               "beta_start": 0.0001, "beta_end": 0.02}
    paths = {}
    for name, classes in (("uncond", 0), ("cond", 3)):
        net = _tiny_unet(classes)
        config = {"network": {**TINY_UNET, "num_classes": classes}, "process": process, "prediction": "eps"}
        paths[name] = str(save_checkpoint(root / name, 1, config, net, net))
    from PIL import Image

    arr = ((_images(1)[0, 0].numpy() + 1) * 127.5).round().astype(np.uint8)
    Image.fromarray(arr).save(root / "gray.png")
    Image.fromarray(np.stack([arr] * 3, -1)).save(root / "rgb.png")
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(root / "big.png")
    labels = np.array([0, 1, 2, 1])
    imgs = ((_images(4).numpy() + 1) * 127.5).round().astype(np.uint8)
    np.savez(root / "data.npz", images=imgs, labels=labels)
    return root, paths


def test_cli_invert_end_to_end(tiny_models, capsys):
    from PIL import Image

    root, paths = tiny_models
    out = root / "ddim.png"
    assert main(["invert", "--model", paths["cond"], "--data", str(root / "data.npz"), "--index", "0", "2",
                 "--solver", "dpm++2m", "--nfe", "8", "--edit-class", "1", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "DDIM inversion with dpm++2m, 8 NFE each way: reconstruction RMSE" in text and "edit to class 1" in text
    assert Image.open(out).size == (3 * 10 + 2, 2 * 10 + 2)  # 2 rows x (original | reconstruction | edit)
    assert main(["invert", "--model", paths["uncond"], "--image", str(root / "gray.png"), "--method",
                 "edit-friendly", "--nfe", "6", "--out", str(root / "ef.png")]) == 0
    rmse = float(capsys.readouterr().out.split("reconstruction RMSE ")[1].split()[0])
    assert rmse < 1e-5


@pytest.mark.parametrize("args, message", [
    (["--model", "uncond", "--image", "rgb.png"], "has 3 channel.* the model takes 1; convert it to grayscale"),
    (["--model", "uncond", "--image", "big.png"], "is 10x10 pixels but the model takes 8x8; resize it"),
    (["--model", "uncond", "--image", "gray.png", "--edit-class", "1"], "is unconditional .*drop --class"),
    (["--model", "cond", "--image", "gray.png", "--class", "7"], "class 7 is outside the model's classes 0..2"),
    (["--model", "uncond", "--image", "gray.png", "--solver", "ddpm"], "stochastic.*solvers that can"),
    (["--model", "uncond", "--data", "data.npz", "--index", "9"], "--index 9 is outside"),
    (["--model", "uncond", "--image", "gray.png", "--method", "edit-friendly", "--solver", "ddim"],
     "--solver is for --method ddim"),
])
def test_cli_invert_errors(tiny_models, capsys, args, message):
    root, paths = tiny_models
    args = [paths.get(a, str(root / a) if a.endswith((".png", ".npz")) else a) for a in args]
    assert main(["invert", *args, "--nfe", "4", "--out", str(root / "x.png")]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    import re
    assert re.search(message, err), err
