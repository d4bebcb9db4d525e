"""Order of convergence, exact NFE, determinism and errors of the solvers."""

import math

import numpy as np
import pytest
import torch

import fewstep
from fewstep import solvers
from fewstep.denoisers import Denoiser, NFECounter
from fewstep.exact import reference_solution
from fewstep.grids import make_schedule
from fewstep.processes import VPLinear
from fewstep.solvers import NonFiniteError

from conftest import seeded_noise

DETERMINISTIC_ORDERS = {"ddim": 1, "euler": 1, "heun": 2, "dpm++2m": 2}


def empirical_order(solver, denoiser, x_T, ref, steps_list):
    spec = solvers.get(solver)
    errs = []
    for n in steps_list:
        sched = make_schedule(denoiser.process, n, "logsnr", clean_end=False)
        out = spec.fn(denoiser, x_T, sched)
        # Median over samples: a sample starting near a boundary between mixture components
        # switches component until the grid is very fine, which is not the asymptotic regime.
        errs.append(float((out - ref).pow(2).mean(1).sqrt().median()))
    slope = np.polyfit(np.log(steps_list), np.log(errs), 1)[0]
    return -slope, errs


@pytest.mark.parametrize("solver,order", sorted(DETERMINISTIC_ORDERS.items()))
def test_order_of_convergence(solver, order, gmm8):
    process = VPLinear()
    den = gmm8.denoiser(process)
    x_T = seeded_noise(process, 16, 8)
    ref = reference_solution(den, x_T, t_end=process.t_min)
    p, errs = empirical_order(solver, den, x_T, ref, [16, 24, 32, 48])
    assert abs(p - order) < 0.3, (p, errs)


@pytest.mark.parametrize("solver", ["ddim", "ddpm", "euler", "euler_a", "heun", "dpm++2m"])
@pytest.mark.parametrize("clean_end", [True, False])
def test_nfe_is_exact(solver, clean_end, gmm8, ddpm_linear):
    spec = solvers.get(solver)
    for nfe in range(spec.min_nfe, 13):
        counter = NFECounter(gmm8.denoiser(ddpm_linear))
        x_T = seeded_noise(ddpm_linear, 2, 8, dtype=torch.float32)
        fewstep.sample(counter, x_T, solver, nfe, "logsnr", fewstep.generators([0, 1]), clean_end=clean_end)
        assert counter.count == nfe, (solver, nfe)


@pytest.mark.parametrize("solver,options", [("ddpm", {}), ("euler_a", {}), ("heun", {"s_churn": 10.0}),
                                             ("ddim", {"eta": 0.5}), ("dpm++2m", {})])
def test_same_seed_same_sample_whatever_the_batch(solver, options, gmm8, ddpm_linear):
    den = gmm8.denoiser(ddpm_linear)
    seeds = list(range(6))
    full = fewstep.generate(den, (8,), seeds, solver, 7, "logsnr", **options)
    parts = [fewstep.generate(den, (8,), seeds[i:i + 2], solver, 7, "logsnr", **options) for i in (0, 2, 4)]
    assert torch.equal(full, torch.cat(parts))
    again = fewstep.generate(den, (8,), seeds, solver, 7, "logsnr", **options)
    assert torch.equal(full, again)


def test_stochastic_solvers_use_their_noise(gmm8, ddpm_linear):
    den = gmm8.denoiser(ddpm_linear)
    a = fewstep.generate(den, (8,), [0, 1], "ddpm", 8)
    x_T = fewstep.prior_noise(ddpm_linear, (8,), fewstep.generators([0, 1]))
    b = fewstep.sample(den, x_T, "ddpm", 8, generator=fewstep.generators([5, 6]))
    assert not torch.allclose(a, b)


@pytest.mark.parametrize("solver, same_as, nfe, grid", [
    # DDIM is Euler's method in (x/alpha, sigma/alpha) (Karras et al. 2022, sec. 4)
    ("euler", "ddim", 9, "karras"),
    # DPM-Solver-1 is DDIM (Lu et al. 2022, sec. 4.1), on any grid
    ("dpm1", "ddim", 7, "logsnr"),
    # Euler ancestral (eta = 1) draws DDPM's posterior: in y = x/alpha, sigma_up = alpha' c and
    # sigma_down / s = (s'/s)^2 are DDPM's noise split (Ho et al. 2020, eq. 7)
    ("euler_a", "ddpm", 6, "uniform"),
])
def test_solver_identities(gmm8, ddpm_linear, solver, same_as, nfe, grid):
    """Solvers that are the same algorithm in other variables give the same samples from the same noise."""
    den = gmm8.denoiser(ddpm_linear)
    x_T = seeded_noise(ddpm_linear, 4, 8)
    a = fewstep.sample(den, x_T, solver, nfe, grid, generator=fewstep.generators([1, 2, 3, 4]))
    b = fewstep.sample(den, x_T, same_as, nfe, grid, generator=fewstep.generators([1, 2, 3, 4]))
    assert torch.allclose(a, b, atol=1e-10)


def test_solver_reaches_reference_with_many_steps(gmm8, ddpm_linear):
    den = gmm8.denoiser(ddpm_linear)
    x_T = seeded_noise(ddpm_linear, 8, 8)
    ref = reference_solution(den, x_T)
    out = fewstep.sample(den, x_T, "dpm++2m", 200, "logsnr")
    assert float((out - ref).pow(2).mean().sqrt()) < 2e-3


def test_registry_lists_core_solvers():
    names = solvers.available()
    for name in ["ddpm", "ddim", "euler", "euler_a", "heun", "dpm++2m"]:
        assert name in names
        spec = solvers.get(name)
        assert spec.paper and spec.order >= 1
    assert solvers.get("euler_a").stochastic and not solvers.get("dpm++2m").stochastic


def test_errors_name_the_problem(gmm8, ddpm_linear):
    den = gmm8.denoiser(ddpm_linear)
    x = torch.zeros(2, 8)
    with pytest.raises(ValueError, match="available solvers: .*dpm\\+\\+2m"):
        fewstep.sample(den, x, "dpm-solver-9000", 5)
    with pytest.raises(ValueError, match="valid grids"):
        fewstep.sample(den, x, "ddim", 5, grid="linear")
    with pytest.raises(ValueError, match="at least 1 network evaluations, got nfe=0"):
        fewstep.sample(den, x, "ddim", 0)
    with pytest.raises(ValueError, match="one per sample"):
        fewstep.sample(den, x, "ddpm", 5, generator=fewstep.generators([1, 2, 3]))


def test_nan_reports_step_and_time(ddpm_linear):
    def net(x, t):
        return torch.where(t[:, None] < 500, torch.full_like(x, math.nan), torch.zeros_like(x))

    den = Denoiser(net, ddpm_linear, "eps")
    with pytest.raises(NonFiniteError, match=r"at step \d+ of 10 \(from t=\d+"):
        fewstep.sample(den, torch.randn(2, 3), "dpm++2m", 10, "uniform")


def test_ddim_step_with_eta_one_is_the_ddpm_posterior(ddpm_linear):
    """The one DDIM step (ddim solver, restoration, inversion): eta = 1 gives the mean and variance of DDPM's
    posterior q(x_t | x_s, x0) (Ho et al. 2020, eq. 6-7), eta = 0 the deterministic DDIM update (eq. 12)."""
    from fewstep.parametrization import Prediction
    from fewstep.solvers.ddim import ddim_mean, ddim_step

    sched = make_schedule(ddpm_linear, 5, "uniform", clean_end=False)
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(3, 4, generator=g, dtype=torch.float64), torch.randn(3, 4, generator=g, dtype=torch.float64)
    i = 2
    a_s, s_s, a_t, s_t = (float(v) for v in (sched.alpha[i], sched.sigma[i], sched.alpha[i + 1], sched.sigma[i + 1]))
    x_s = a_s * x0 + s_s * eps
    p = Prediction(x0, eps)
    a_st, var_st = a_s / a_t, s_s**2 - (a_s / a_t) ** 2 * s_t**2  # q(x_s | x_t)
    want_mean = a_st * s_t**2 / s_s**2 * x_s + a_t * var_st / s_s**2 * x0
    mean, c = ddim_mean(p, sched, i, 1.0)
    torch.testing.assert_close(mean, want_mean, rtol=1e-12, atol=1e-12)
    assert c**2 == pytest.approx(var_st * s_t**2 / s_s**2, rel=1e-10)
    z = torch.randn(3, 4, generator=g, dtype=torch.float64)
    torch.testing.assert_close(ddim_step(p, sched, i, 1.0, noise=z), want_mean + c * z, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ddim_step(p, sched, i), a_t * x0 + s_t * eps, rtol=1e-12, atol=1e-12)
