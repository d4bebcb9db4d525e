"""Restoration (RePaint, DPS, RED-diff) on exact Gaussian priors, where the posterior is known in closed form,
plus operators, SSIM, batch independence and the ``fewstep restore`` command."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_config, tiny_images
from fewstep.api import generate, generators
from fewstep.exact import GaussianMixture
from fewstep.grids import Schedule, make_schedule
from fewstep.metrics.ssim import ssim
from fewstep.processes import VPDiscrete
from fewstep.restoration import (box_mask, denoise, dps_gradient, half_mask, inpaint, make_mask, measure,
                                 random_mask, reddiff, repaint, repaint_nfe, restore, restore_nfe, super_resolution)
from fewstep.context import bind

H = 4  # 4x4 one-channel "images": a 16-d Gaussian prior


def smooth_gaussian(independent_box: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and covariance of a 16-d image-like Gaussian (squared-exponential correlations between pixels);
    ``independent_box`` zeroes the correlations between the centre 2x2 box and the rest."""
    ii, jj = torch.meshgrid(torch.arange(H), torch.arange(H), indexing="ij")
    p = torch.stack([ii.flatten(), jj.flatten()], 1).double()
    cov = 0.3 * torch.exp(-((p[:, None] - p[None]) ** 2).sum(-1) / (2 * 1.5**2)) + 0.01 * torch.eye(H * H)
    if independent_box:
        inside = ~box_mask((H, H), 2).flatten().bool()
        cov = cov * (inside[:, None] == inside[None]).double()
    mean = 0.2 * torch.randn(H * H, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return mean, cov


def matrix_of(op) -> torch.Tensor:
    """The matrix of a linear operator on (1, 4, 4) images."""
    basis = torch.eye(H * H, dtype=torch.float64).reshape(-1, 1, H, H)
    return op(basis).reshape(H * H, -1).T


def posterior(mean, cov, a, y, sigma_y):
    """The exact Gaussian posterior of x ~ N(mean, cov) given y = a x + sigma_y n."""
    s = a @ cov @ a.T + sigma_y**2 * torch.eye(len(a), dtype=torch.float64)
    gain = cov @ a.T @ torch.linalg.pinv(s)
    return mean + gain @ (y - a @ mean), cov - gain @ a @ cov


@pytest.fixture(scope="module")
def process():
    return VPDiscrete.linear()


# --- operators and masks -------------------------------------------------------------------------------------------

def test_masks_operators_and_their_pseudo_inverses():
    assert box_mask((28, 28)).sum() == 28 * 28 - 14 * 14 and box_mask((28, 28))[14, 14] == 0
    r = random_mask((28, 28), 0.7, seed=3)
    assert r.sum() == 28 * 28 - round(0.7 * 784) and torch.equal(r, random_mask((28, 28), 0.7, seed=3))
    assert not torch.equal(r, random_mask((28, 28), 0.7, seed=4))
    assert half_mask((28, 28))[:, 14:].sum() == 0 and half_mask((28, 28))[:, :14].all()
    assert torch.equal(make_mask("half", (1, 28, 28), side="top"), half_mask((28, 28), "top"))
    x = torch.randn(3, 2, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    sr = super_resolution(2)
    y = sr(x)
    assert y.shape == (3, 2, 4, 4) and torch.allclose(y[0, 0, 0, 0], x[0, 0, :2, :2].mean())
    assert torch.allclose(sr(sr.pinv(y)), y)  # A A^+ = I
    adjoint = sr.pinv(y) / 4  # A^T = A^+ / f^2: <A x, y> = <x, A^T y>
    assert torch.allclose((sr(x) * y).sum(), (x * adjoint).sum())
    op = inpaint(box_mask((8, 8), 4))
    assert torch.equal(op(op(x)), op(x)) and torch.equal(op.pinv(op(x)), op(x))
    n = measure(denoise(), torch.zeros(2, 1, 8, 8), 0.5, generators([1, 2])) / 0.5
    assert torch.equal(n[1], measure(denoise(), torch.zeros(1, 1, 8, 8), 0.5, generators([2]))[0] / 0.5)
    noisy = measure(op, x, 0.3, generators(range(3)))
    assert bool((noisy[:, :, 2:6, 2:6] == 0).all()), "missing pixels carry no measurement noise"


def test_bad_inputs_get_clear_errors(process):
    x = torch.zeros(2, 1, 16, 16)
    with pytest.raises(ValueError, match="mask shape .* does not fit images"):
        inpaint(box_mask((28, 28)))(x)
    with pytest.raises(ValueError, match="only 0 .* and 1"):
        inpaint(torch.full((16, 16), 0.5))
    with pytest.raises(ValueError, match="factor 3 does not divide the resolution 16x16"):
        super_resolution(3)(x)
    with pytest.raises(ValueError, match="positive integer"):
        super_resolution(1.5)
    with pytest.raises(ValueError, match="unknown mask 'ring'"):
        make_mask("ring", (16, 16))
    mean, cov = smooth_gaussian()
    den = GaussianMixture.from_covariances(mean[None], cov[None]).denoiser(process)
    den.sample_shape = (1, H, H)
    y = torch.zeros(2, 1, 2, 2)
    with pytest.raises(ValueError, match="repaint only inpaints .* cannot do sr; use dps or reddiff"):
        restore(den, y, super_resolution(2), [0, 1], "repaint", 10)
    with pytest.raises(ValueError, match="unknown restoration method 'ddrm'"):
        restore(den, y, super_resolution(2), [0, 1], "ddrm", 10)
    with pytest.raises(ValueError, match=r"restoration method 'dps' has no option 'zetta' \(did you mean 'zeta'\?\); its options: zeta=1.0"):
        restore(den, y, super_resolution(2), [0, 1], "dps", 10, zetta=1.0)
    with pytest.raises(ValueError, match="2 measurements but 3 seeds"):
        restore(den, y, super_resolution(2), [0, 1, 2], "dps", 10)
    with pytest.raises(ValueError, match=r"measurements have shape \(1, 4, 4\) but the operator makes \(1, 2, 2\)"):
        restore(den, torch.zeros(2, 1, 4, 4), super_resolution(2), [0, 1], "dps", 10)
    with pytest.raises(ValueError, match="needs nfe >= 2"):
        restore(den, y, super_resolution(2), [0, 1], "reddiff", 1)
    with pytest.raises(ValueError, match="not a solver"):  # plan file entries are a solver's, not a method's
        restore(den, y, super_resolution(2), [0, 1], "dps", 10, "bundled:fashion")


# --- SSIM ----------------------------------------------------------------------------------------------------------

def test_ssim_identity_constants_and_torchmetrics():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 2, 20, 24, generator=g, dtype=torch.float64)
    assert torch.allclose(ssim(x, x), torch.ones(3, dtype=torch.float64))
    # Constant images a, b: variances vanish, so SSIM = (2ab + C1) / (a^2 + b^2 + C1) exactly (Wang et al. eq. 13).
    a, b, c1 = 0.3, 0.7, 0.01**2
    got = ssim(torch.full((1, 1, 12, 12), a, dtype=torch.float64), torch.full((1, 1, 12, 12), b, dtype=torch.float64))
    assert math.isclose(float(got), (2 * a * b + c1) / (a * a + b * b + c1), rel_tol=1e-12)
    from torchmetrics.functional.image import structural_similarity_index_measure as tm_ssim

    y = (x + 0.2 * torch.randn(x.shape, generator=g, dtype=torch.float64)).clamp(0, 1)
    pad = lambda z: F.pad(z, (5, 5, 5, 5), mode="reflect")  # noqa: E731 torchmetrics reflect-pads, then averages all
    assert torch.allclose(ssim(pad(y), pad(x)), tm_ssim(y, x, data_range=1.0, reduction="none"), atol=1e-10)


# --- exact Gaussian posteriors ---------------------------------------------------------------------------------------

def _repaint_moments(process, independent: bool, steps: int, resample: int, n: int = 1000):
    mean, cov = smooth_gaussian(independent)
    den = GaussianMixture.from_covariances(mean[None], cov[None]).denoiser(process)
    op = inpaint(box_mask((H, H), 2))
    x_true = (mean + torch.linalg.cholesky(cov) @ torch.randn(H * H, generator=torch.Generator().manual_seed(5),
                                                               dtype=torch.float64)).reshape(1, 1, H, H)
    a = matrix_of(op)
    post_mean, post_cov = posterior(mean, cov, a, a @ x_true.flatten(), 0.0)
    u = ~box_mask((H, H), 2).flatten().bool()
    g = torch.Generator().manual_seed(1)
    x_T = torch.randn(n, 1, H, H, generator=g, dtype=torch.float64)
    out = repaint(den, x_T, make_schedule(process, steps, "logsnr"), op(x_true).expand(n, -1, -1, -1), op,
                  generator=g, jump=1, resample=resample)
    xs = out.reshape(n, -1)
    assert torch.equal(xs[:, ~u], x_true.flatten()[~u].expand(n, -1)), "the known pixels are the measurement"
    se = post_cov.diag()[u].sqrt().max() / math.sqrt(n)
    return (xs[:, u].mean(0) - post_mean[u]).abs().max() / se, (torch.cov(xs[:, u].T) - post_cov[u][:, u]).abs().max()


def test_repaint_is_exact_when_the_missing_pixels_are_independent(process):
    """With no prior correlation between known and missing pixels the posterior of the missing ones is their prior
    marginal, and RePaint's unknown part is plain DDPM on that marginal: exact for any resampling."""
    mean_z, cov_err = _repaint_moments(process, independent=True, steps=200, resample=1)
    # Monte-Carlo error of 1000 draws: z < 4 for the mean; the covariance's s.e. is ~0.014 (variances ~0.31), and
    # ancestral sampling with the exact denoiser adds an O(1/steps) covariance bias (0.12 at 20 steps, 0.06 at 50).
    assert mean_z < 4 and cov_err < 0.045, (mean_z, cov_err)


def test_repaint_resampling_harmonises_toward_the_exact_posterior(process):
    """Replacement alone (resample=1) conditions each level on a noisy copy of the known pixels and is biased
    (Lugmayr et al. 2022, sec. 4.2); resampling moves toward the exact posterior.  Not exact at finite
    resampling: the bias falls with r (measured 0.37 -> 0.06 -> 0.02 at r = 1, 10, 40, 50 steps, 2000 draws)."""
    biased, _ = _repaint_moments(process, independent=False, steps=20, resample=1)
    better, _ = _repaint_moments(process, independent=False, steps=20, resample=10)
    assert biased > 8, f"replacement without resampling should be visibly biased (z = {biased:.1f})"
    assert better < 0.4 * biased, f"resampling should cut the bias (z {biased:.1f} -> {better:.1f})"


def test_repaint_nfe_accounting():
    assert repaint_nfe(8, 2, 3) == 8 + 2 * 2 * 3 and repaint_nfe(10, 1, 1) == 10
    assert restore_nfe("repaint", 20, jump=2, resample=3) == 20 and restore_nfe("dps", 7) == 7
    calls = []

    class Counting(GaussianMixture):
        def x0_at(self, y, s):
            calls.append(len(y))
            return super().x0_at(y, s)

    mean, cov = smooth_gaussian()
    base = GaussianMixture.from_covariances(mean[None], cov[None])
    den = Counting(base.means, base.eigvecs, base.eigvals).denoiser(VPDiscrete.linear())
    den.sample_shape = (1, H, H)
    op = inpaint(box_mask((H, H), 2))
    restore(den, op(torch.zeros(2, 1, H, H, dtype=torch.float64)), op, [0, 1], "repaint", 20, jump=2, resample=3)
    assert len(calls) == 20


def test_dps_gradient_is_the_analytic_residual_gradient(process):
    """For a Gaussian prior x0_hat(x_t) = m + a C K^-1 (x_t - a m), K = a^2 C + s^2 I, so
    grad ||y - A x0_hat||^2 = -2 (a C K^-1) A^T (y - A x0_hat) exactly (Chung et al. 2023, eq. 16)."""
    mean, cov = smooth_gaussian()
    den = GaussianMixture.from_covariances(mean[None], cov[None]).denoiser(process)
    op = super_resolution(2)
    a_mat = matrix_of(op)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, 1, H, H, generator=g, dtype=torch.float64)
    y = torch.randn(3, 1, 2, 2, generator=g, dtype=torch.float64)
    t = 400.0
    schedule = make_schedule(process, 4)
    p, grad, norm = dps_gradient(bind(den, schedule), x, t, 0, y, op)
    al, sg = float(process.alpha(t)), float(process.sigma(t))
    jac = al * cov @ torch.linalg.inv(al**2 * cov + sg**2 * torch.eye(H * H, dtype=torch.float64))
    x0 = mean + (x.reshape(3, -1) - al * mean) @ jac.T
    r = y.reshape(3, -1) - x0 @ a_mat.T
    assert torch.allclose(p.x0.reshape(3, -1), x0, atol=1e-10)
    assert torch.allclose(grad.reshape(3, -1), -2 * r @ a_mat @ jac, atol=1e-10)
    assert torch.allclose(norm, r.norm(dim=1), atol=1e-12)


def test_dps_without_guidance_is_ddpm(process):
    mean, cov = smooth_gaussian()
    den = GaussianMixture.from_covariances(mean[None], cov[None]).denoiser(process)
    den.sample_shape = (1, H, H)
    op = inpaint(box_mask((H, H), 2))
    y = torch.zeros(3, 1, H, H, dtype=torch.float64)
    got = restore(den, y, op, [4, 5, 6], "dps", 8, zeta=0.0)
    ref = generate(den, (1, H, H), [4, 5, 6], "ddpm", 8, dtype=torch.float64)
    assert torch.allclose(got, ref, atol=1e-12)
    guided = restore(den, y, op, [4, 5, 6], "dps", 8, zeta=1.0)
    assert op(guided).norm() < op(got).norm(), "guidance pulls the known pixels toward y"


def test_reddiff_fixed_point_at_one_noise_level(process):
    """At a fixed t the expected RED-diff gradient is A^T (A mu - y) + lam s^2 K^-1 (mu - m) for a Gaussian prior
    (E[eps_hat - eps] = a s K^-1 (mu - m), times the weight lam s / a), so Adam settles around
    mu* = (A^T A + lam s^2 K^-1)^-1 (A^T y + lam s^2 K^-1 m): exact in expectation; the iterates fluctuate,
    so their average is compared."""
    mean, cov = smooth_gaussian()
    den = GaussianMixture.from_covariances(mean[None], cov[None]).denoiser(process)
    op = super_resolution(2)
    a_mat = matrix_of(op)
    y1 = torch.tensor([[[[0.5, -0.2], [0.1, 0.4]]]], dtype=torch.float64)
    t, lam, iters, n = 300.0, 1.0, 300, 32
    al, sg = process.alpha(torch.tensor(t, dtype=torch.float64)), process.sigma(torch.tensor(t, dtype=torch.float64))
    schedule = Schedule(process, torch.full((iters,), t, dtype=torch.float64), torch.full((iters,), float(al), dtype=torch.float64),
                        torch.full((iters,), float(sg), dtype=torch.float64), torch.full((iters,), float(al.log() - sg.log()), dtype=torch.float64), False)
    seen = []
    keep = lambda info: seen.append(info["x"].clone()) if info["i"] >= iters // 2 else None  # noqa: E731
    g = torch.Generator().manual_seed(0)
    reddiff(den, torch.zeros(n, 1, H, H, dtype=torch.float64), schedule, y1.expand(n, -1, -1, -1), op,
            generator=g, callback=keep, lam=lam, lr=0.02)
    avg = torch.stack(seen).mean((0, 1)).flatten()
    prec = lam * float(sg) ** 2 * torch.linalg.inv(float(al) ** 2 * cov + float(sg) ** 2 * torch.eye(H * H, dtype=torch.float64))
    fixed = torch.linalg.solve(a_mat.T @ a_mat + prec, a_mat.T @ y1.flatten() + prec @ mean)
    assert (avg - fixed).abs().max() < 0.015, (avg - fixed).abs().max()  # measured 0.005
    # ... a point of its own: 0.73 away from the exact posterior mean and 0.75 from the least-squares A^+ y at this t.
    assert (fixed - posterior(mean, cov, a_mat, y1.flatten(), 0.0)[0]).abs().max() > 0.5
    # lam = 0 is least squares: from A^+ y it stays on the measurement.
    out = reddiff(den, torch.zeros(1, 1, H, H, dtype=torch.float64), schedule, y1, op, generator=g, lam=0.0, lr=0.01)
    assert torch.allclose(op(out), y1, atol=1e-8)


@pytest.mark.parametrize("method", ["repaint", "dps", "reddiff"])
def test_same_seed_same_result_whatever_the_batch(process, method):
    mean, cov = smooth_gaussian()
    den = GaussianMixture.from_covariances(mean[None], cov[None]).denoiser(process)
    den.sample_shape = (1, H, H)
    op = inpaint(random_mask((H, H), 0.5, seed=1))
    x = torch.randn(4, 1, H, H, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y = measure(op, x, 0.1, generators(range(4)))
    whole = restore(den, y, op, [10, 11, 12, 13], method, 6)
    parts = torch.cat([restore(den, y[:1], op, [10], method, 6), restore(den, y[1:], op, [11, 12, 13], method, 6)])
    assert torch.allclose(whole, parts, atol=1e-10)


# --- the command ---------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny16(tmp_path_factory):
    """A random-weight 16x16 UNet checkpoint and a 16x16 data set (SSIM's window needs 11 pixels).  Written
    directly: a training step would import torch._dynamo through the optimiser (seconds)."""
    from fewstep.checkpoint import write_checkpoint
    from fewstep.nets import build_net

    root = tmp_path_factory.mktemp("restore")
    cfg = tiny_config()
    cfg["network"]["resolution"] = 16
    cfg["network"]["attn_resolutions"] = []
    torch.manual_seed(0)
    net = build_net(dict(cfg["network"]))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn_like(p) * 0.1)
    write_checkpoint(root / "run", 1, cfg, {"ema.safetensors": {k: v.contiguous() for k, v in net.state_dict().items()}})
    images = tiny_images(6, res=16)
    np.savez(root / "data.npz", images=images.numpy())
    return root / "run" / "checkpoints" / "step-00000001", root / "data.npz", root


def test_restore_command_writes_grid_and_folder(tiny16, capsys):
    from PIL import Image

    from fewstep.cli import main

    ckpt, data, root = tiny16
    base = ["restore", "--model", str(ckpt), "--data", str(data), "--n", "3", "--no-progress", "--threads", "1"]
    assert main(base + ["--task", "inpaint", "--mask", "half", "--method", "repaint", "--nfe", "6",
                        "--opt", "jump=2", "--opt", "resample=2", "--out", str(root / "g.png")]) == 0
    out = capsys.readouterr().out
    assert "repaint inpaint (NFE 6, 3 images): PSNR" in out and "SSIM" in out
    assert Image.open(root / "g.png").size == (2 + 9 * 18, 2 + 18)  # measurement | restored | truth x 3
    assert main(base + ["--task", "sr", "--method", "dps", "--nfe", "3", "--out", str(root / "folder")]) == 0
    scores = __import__("json").loads((root / "folder" / "scores.json").read_text())
    assert scores["method"] == "dps" and scores["nfe"] == 3 and scores["n"] == 3 and -1 <= scores["ssim"] <= 1
    assert sorted(p.name for p in (root / "folder" / "restored").iterdir()) == ["00000.png", "00001.png", "00002.png"]
    assert main(base + ["--task", "denoise", "--method", "reddiff", "--nfe", "3", "--sigma-y", "0.2",
                        "--out", str(root / "d.png")]) == 0


@pytest.mark.parametrize("extra, message", [
    (["--task", "sr", "--method", "repaint"], "--method repaint only inpaints; use --method dps or reddiff"),
    (["--task", "sr", "--mask", "box"], "--mask is for --task inpaint"),
    (["--task", "inpaint", "--mask", "ring"], "unknown --mask ring; valid masks: box, random, half"),
    (["--task", "sr", "--factor", "3"], "factor 3 does not divide the resolution 16x16"),
    (["--task", "inpaint", "--method", "dps", "--opt", "zeta"], "--opt zeta: expected KEY=VALUE"),
    (["--task", "inpaint", "--method", "dps", "--opt", "jump=2"], "restoration method 'dps' has no option 'jump'; its options: zeta=1.0"),
    (["--task", "inpaint", "--method", "ddrm"], "unknown restoration method 'ddrm'"),
    (["--task", "inpaint", "--n", "7"], "holds 6 images; --first 0 --n 7 asks for more"),
    (["--task", "inpaint", "--out", "x.npz"], "restore writes a grid image or a folder"),
])
def test_restore_command_errors(tiny16, capsys, extra, message):
    from fewstep.cli import main

    ckpt, data, root = tiny16
    args = ["restore", "--model", str(ckpt), "--data", str(data), "--nfe", "2", "--no-progress",
            "--out", str(root / "e.png")]
    assert main(args + extra) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_adam_step_is_kingma_and_ba():
    """Adam's first step moves every coordinate by lr * sign(g) (bias correction makes m_hat = g, v_hat = g^2);
    the second follows Algorithm 1 by hand."""
    from fewstep.restoration.reddiff import adam_step

    mu, m, v = torch.zeros(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
    g1, g2 = torch.tensor([2.0, -0.5, 1e-3], dtype=torch.float64), torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64)
    mu = adam_step(mu, g1, m, v, 1, lr=0.1, eps=0.0)
    assert torch.allclose(mu, -0.1 * g1.sign())
    mu = adam_step(mu, g2, m, v, 2, lr=0.1, eps=0.0)
    m2, v2 = 0.9 * 0.1 * g1 + 0.1 * g2, 0.99 * 0.01 * g1**2 + 0.01 * g2**2
    assert torch.allclose(mu, -0.1 * g1.sign() - 0.1 * (m2 / (1 - 0.81)) / (v2 / (1 - 0.99**2)).sqrt())


def test_dps_and_reddiff_take_any_differentiable_function(process):
    """A plain function (no pinv, no check): the brightness of each image's top-left 2x2 block."""
    mean, cov = smooth_gaussian()
    den = GaussianMixture.from_covariances(mean[None], cov[None]).denoiser(process)
    den.sample_shape = (1, H, H)
    corner = lambda x: x[..., :2, :2].mean((-2, -1))  # noqa: E731
    y = torch.full((2, 1), 0.8, dtype=torch.float64)
    free = restore(den, y, corner, [0, 1], "dps", 10, zeta=0.0)
    guided = restore(den, y, corner, [0, 1], "dps", 10, zeta=1.0)
    assert (corner(guided) - y).abs().max() < (corner(free) - y).abs().max()
    fitted = restore(den, y, corner, [0, 1], "reddiff", 200, lam=0.0, lr=0.05)
    assert torch.allclose(corner(fitted), y, atol=1e-3)  # least squares from the prior draw
