"""PFGM++ (Xu et al. 2023) as a process: its perturbation kernel, the D -> inf limit (EDM), and sampling."""

import math

import numpy as np
import pytest
import torch
from scipy import integrate, special, stats

import fewstep
from fewstep.exact.empirical import EmpiricalData
from fewstep.processes import EDM, PFGMPP, process_from_config
from fewstep.solvers import specs
from fewstep.training.config import check_process
from fewstep.training.losses import diffusion_loss, draw_noising
from conftest import TINY_UNET, tiny_images


def _radius_sq_over_r_sq(D: int, shape: tuple[int, ...], n: int, seed: int = 0) -> np.ndarray:
    """``R^2 / r^2`` of ``n`` kernel draws: ``R = sigma |noise|``, ``r = sigma sqrt(D)``."""
    noise = PFGMPP(D=D).noise((n, *shape), torch.Generator().manual_seed(seed), dtype=torch.float64)
    return (noise.reshape(n, -1).square().sum(1) / D).numpy()


def _log_kernel(x: np.ndarray, r: float, N: int, D: int) -> np.ndarray:
    """log p_r(x | 0) of the paper's eq. 4, normalised: Gamma((N+D)/2) / (pi^(N/2) Gamma(D/2)) r^D (|x|^2+r^2)^-(N+D)/2."""
    return (special.gammaln((N + D) / 2) - special.gammaln(D / 2) - N / 2 * math.log(math.pi) + D * math.log(r)
            - (N + D) / 2 * np.log((x**2).sum(-1) + r**2))


@pytest.mark.parametrize("N,D", [(8, 5), (784, 128)])
def test_radius_follows_the_papers_beta_construction(N, D):
    """R1 = R2 / (1 + R2) with R2 = R^2 / r^2 is Beta(N/2, D/2) (Xu et al. 2023, Appendix B): KS test."""
    shape = (N,) if N < 100 else (1, 28, 28)
    r2 = _radius_sq_over_r_sq(D, shape, 4000, seed=1)
    assert stats.kstest(r2 / (1 + r2), stats.beta(N / 2, D / 2).cdf).pvalue > 1e-3
    # E[R2] of the beta-prime distribution: N / (D - 2).
    assert abs(r2.mean() / (N / (D - 2)) - 1) < 0.05


def test_radius_follows_the_kernel_density():
    """Independently of the Beta construction: the radius density of p_r(x|y) ~ (|x-y|^2 + r^2)^-(N+D)/2 is
    R^(N-1) (R^2 + r^2)^-(N+D)/2; its numerically integrated CDF fits the draws, and a Gaussian's does not."""
    N, D = 3, 4
    logpdf = lambda R: (N - 1) * np.log(R) - (N + D) / 2 * np.log(R**2 + D)  # r = sqrt(D): sigma = 1
    z = integrate.quad(lambda R: np.exp(logpdf(R)), 0, np.inf)[0]
    cdf = np.vectorize(lambda R: integrate.quad(lambda u: np.exp(logpdf(u)), 0, R)[0] / z)
    radius = np.sqrt(_radius_sq_over_r_sq(D, (N,), 1500, seed=2) * D)
    assert stats.kstest(radius, cdf).pvalue > 1e-3
    gauss = EDM().noise((1500, N), torch.Generator().manual_seed(2), dtype=torch.float64).norm(dim=1).numpy()
    assert stats.kstest(gauss, cdf).pvalue < 1e-6  # the test tells the kernels apart


def test_direction_is_uniform_on_the_sphere():
    noise = PFGMPP(D=6).noise((20000, 3), torch.Generator().manual_seed(3), dtype=torch.float64)
    u = noise / noise.norm(dim=1, keepdim=True)
    assert u.mean(0).abs().max() < 0.03
    assert torch.allclose(u.T @ u / len(u), torch.eye(3, dtype=torch.float64) / 3, atol=0.02)


def test_kernel_tends_to_gaussian_as_D_grows():
    """Per coordinate: variance D / (D - 2) and kurtosis 3 + 6 / (D - 4) (multivariate t); both -> N(0, 1)'s."""
    for D, tol in ((16, 0.06), (4096, 0.03)):
        x = PFGMPP(D=D).noise((400, 64), torch.Generator().manual_seed(4), dtype=torch.float64).reshape(-1)
        var = float(x.var())
        kurt = float((x - x.mean()).pow(4).mean() / var**2)
        assert abs(var - D / (D - 2)) < tol * D / (D - 2)
        assert abs(kurt - (3 + 6 / (D - 4))) < 0.2 + 0.1 * 6 / (D - 4)
    # at D = 4096 the Gaussian moments hold to the sampling error
    assert abs(var - 1) < 0.02 and abs(kurt - 3) < 0.1


def test_D_inf_is_edm_exactly_draws_loss_and_samples():
    shape = (4, 1, 8, 8)
    a = PFGMPP(D=math.inf).noise(shape, torch.Generator().manual_seed(5))
    b = EDM().noise(shape, torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    net = fewstep.nets.build_net(dict(TINY_UNET)).eval()
    images = tiny_images(4)

    def loss(process):
        x0, t, eps = draw_noising(process, images, torch.Generator().manual_seed(6), time_sampling="lognormal")
        return diffusion_loss(net, "edm", process, x0, t, eps, weighting="edm")

    with torch.no_grad():
        edm, inf, big = loss(EDM()), loss(PFGMPP(D=math.inf)), loss(PFGMPP(D=20000))
        assert torch.equal(edm, inf)
        assert torch.allclose(big, edm, rtol=0.05)  # D = 2e4: the noise scale is 1 +- 1/sqrt(2D)
        assert not torch.allclose(loss(PFGMPP(D=3)), edm, rtol=0.05)
        den = lambda p: fewstep.Denoiser(net, p, "edm", sample_shape=(1, 8, 8))
        xs = [fewstep.generate(den(p), (1, 8, 8), range(3), "heun", 7) for p in (EDM(), PFGMPP(D=math.inf))]
    assert torch.equal(*xs)


def test_prior_draw_is_the_kernel_at_r_max_and_batch_independent():
    p = PFGMPP(D=8)
    x = fewstep.prior_noise(p, (16,), fewstep.generators(range(2000)), dtype=torch.float64)
    r2 = (x.square().sum(1) / (p.prior_std**2 * 8)).numpy()
    assert stats.kstest(r2 / (1 + r2), stats.beta(8, 4).cdf).pvalue > 1e-3
    one = fewstep.prior_noise(p, (16,), fewstep.generators([7]), dtype=torch.float64)
    assert torch.equal(one[0], x[7])


def test_pfgm_ode_transports_the_kernel_marginals():
    """The paper's sec. 4: with r = sigma sqrt(D) the backward ODE is EDM's, dx/dsigma = (x - E[y|x]) / sigma, with
    E[y|x] under the PFGM++ kernel.  Its marginals p_sigma(x) = mean_i p_r(x | y_i) then obey the continuity
    equation dp/dsigma + div(p v) = 0 - checked by float64 finite differences; the Gaussian posterior fails it."""
    N, D = 2, 5
    ys = np.array([[1.0, 0.0], [-1.0, 0.5], [0.0, -1.5]])

    def density(x, s):
        return np.exp(_log_kernel(x[None] - ys, s * math.sqrt(D), N, D)).mean()

    def residual(denoiser_D):
        model = EmpiricalData(torch.tensor(ys), D=denoiser_D)

        def flux(x, s):  # p(x) v(x), v = (x - E[y|x]) / sigma
            x0 = model.x0_at(torch.tensor(x[None]), s)[0].numpy()
            return density(x, s) * (x - x0) / s

        h, worst = 1e-5, 0.0
        for x in (np.array([0.3, -0.2]), np.array([1.5, 1.0]), np.array([-0.7, -1.1])):
            s = 0.8
            dp = (density(x, s + h) - density(x, s - h)) / (2 * h)
            div = sum((flux(x + h * e, s)[k] - flux(x - h * e, s)[k]) / (2 * h) for k, e in enumerate(np.eye(N)))
            worst = max(worst, abs(dp + div) / abs(dp))
        return worst

    assert residual(D) < 1e-5
    assert residual(math.inf) > 1e-2


@pytest.mark.parametrize("solver", [s.name for s in specs() if not s.stochastic])
def test_pfgmpp_model_samples_with_every_solver(solver):
    """From the kernel's prior at r_max, every deterministic solver lands on the data (two points) of the exact
    PFGM++ denoiser."""
    data = torch.tensor([[1.0, 0.0], [-1.0, 0.5]], dtype=torch.float64)
    den = EmpiricalData(data, D=16).denoiser(PFGMPP(D=16))
    nfe = 60 if solver == "dpm_adaptive" else 10  # the adaptive solver's budget is a cap, not a plan
    try:
        x = fewstep.generate(den, (2,), range(6), solver, nfe, dtype=torch.float64)
    except ValueError as err:  # a solver that needs what an exact model lacks (statistics) says so
        pytest.skip(str(err))
    assert x.shape == (6, 2) and torch.isfinite(x).all()
    assert torch.cdist(x, data).min(dim=1).values.max() < 0.05


def test_config_round_trip_and_bad_D():
    p = process_from_config({"kind": "pfgmpp", "sigma_min": 0.002, "sigma_max": 80.0, "D": 128})
    assert isinstance(p, PFGMPP) and p.D == 128 and process_from_config(p.config()).D == 128
    check_process({"kind": "pfgmpp", "D": 64})
    with pytest.raises(ValueError, match="d"):
        check_process({"kind": "pfgmpp", "d": 64})
    for bad in (0, 2.5, -3, float("nan")):
        with pytest.raises(ValueError, match="positive integer or inf"):
            PFGMPP(D=bad)


def test_gaussian_only_methods_are_refused_for_a_finite_D():
    """Stochastic solvers inject Gaussian noise and a teleported start follows the Gaussian kernel's flow: neither
    is derived for PFGM++'s kernel, so both are refused by name (D = inf, EDM, keeps them)."""
    den = EmpiricalData(torch.tensor([[1.0, 0.0]]), D=16).denoiser(PFGMPP(D=16))
    stochastic = next(s.name for s in specs() if s.stochastic)
    with pytest.raises(ValueError, match="deterministic solver"):
        fewstep.make_plan(den, stochastic, 10)
    with pytest.raises(ValueError, match="teleport"):
        fewstep.make_plan(den, "heun", 9, teleport=10.0)
    assert fewstep.make_plan(EmpiricalData(torch.tensor([[1.0, 0.0]])).denoiser(PFGMPP(D=math.inf)), stochastic, 10)
