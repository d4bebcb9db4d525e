"""The training-free solver suite: empirical orders, exact NFE, adaptive tolerance, SDE convergence."""

import numpy as np
import pytest
import torch

import fewstep
from fewstep import solvers
from fewstep.denoisers import NFECounter
from fewstep.exact import GaussianMixture, reference_solution
from fewstep.grids import make_schedule
from fewstep.metrics import frechet_distance_to_moments
from fewstep.processes import VPLinear

from conftest import seeded_noise

LOF = {"lower_order_final": False}  # the order-1 last step would cap the global order at 2
# (solver, options, expected order, steps list).  Lists start where the error is asymptotic on this model.
ORDER_CASES = [
    ("dpm1", {}, 1, [16, 24, 32, 48]),
    ("dpm2", {}, 2, [16, 24, 32, 48]),
    ("dpm3", {}, 3, [16, 24, 32, 48]),
    ("dpm++2s", {}, 2, [16, 24, 32, 48]),
    ("dpm++3m", LOF, 3, [16, 24, 32, 48]),
    ("deis", {"order": 1}, 1, [16, 24, 32, 48]),
    ("deis", {"order": 2}, 2, [64, 96, 128, 192]),
    ("deis", {"order": 3}, 3, [64, 96, 128, 192]),
    ("deis", {"order": 3, "basis": "lam"}, 3, [64, 96, 128, 192]),
    ("unip", {"order": 2, **LOF}, 2, [16, 24, 32, 48]),
    ("unip", {"order": 3, **LOF}, 3, [16, 24, 32, 48]),
    ("unipc", {"order": 1, **LOF}, 2, [16, 24, 32, 48]),
    ("unipc", {"order": 2, **LOF}, 3, [16, 24, 32, 48]),
    ("unipc", {"order": 2, "variant": "bh1", **LOF}, 3, [16, 24, 32, 48]),
    ("unipc", {"order": 2, "prediction": "noise", **LOF}, 3, [16, 24, 32, 48]),
    # UniPC-3: the steady-state method is 4th order, but its warm-up step (UniP-1 + UniC = 2nd order, local
    # error O(h^3)) bounds the global error by O(h^3) on fine grids: the measured slope is 4.3 over 32-96
    # steps and falls to 3.1 over 64-192. Asserted here is that asymptotic order 3; diffusers behaves alike.
    ("unipc", {"order": 3, **LOF}, 3, [64, 96, 128, 192]),
    ("lms", {}, 4, [96, 128, 192, 256]),
    ("pndm", {"prk_steps": 3}, 2, [16, 24, 32, 48]),
    ("plms", {}, 2, [16, 24, 32, 48]),
    ("ipndm", {}, 2, [16, 24, 32, 48]),
]


@pytest.fixture(scope="module")
def trajectory(gmm8):
    process = VPLinear()
    den = gmm8.denoiser(process)
    x_T = seeded_noise(process, 16, 8)
    return den, x_T, reference_solution(den, x_T, t_end=process.t_min)


@pytest.mark.parametrize("solver,options,order,steps_list", ORDER_CASES,
                         ids=[f"{c[0]}-{c[1]}" for c in ORDER_CASES])
def test_order_of_convergence(solver, options, order, steps_list, trajectory):
    den, x_T, ref = trajectory
    errs = []
    for n in steps_list:
        out = solvers.get(solver).fn(den, x_T, make_schedule(den.process, n, "logsnr", clean_end=False), **options)
        errs.append(float((out - ref).pow(2).mean(1).sqrt().median()))
    p = -np.polyfit(np.log(steps_list), np.log(errs), 1)[0]
    assert abs(p - order) < 0.3, (p, errs)


def test_dpmpp_3m_reference_weight_is_second_order(trajectory):
    """The dpm-solver/diffusers 3M weight (half the h phi_3 Taylor term) loses the third order."""
    den, x_T, ref = trajectory
    steps = [32, 48, 64, 96]
    errs = [float((solvers.get("dpm++3m").fn(den, x_T, make_schedule(den.process, n, "logsnr", clean_end=False),
                                             half_d2=True, **LOF) - ref).pow(2).mean(1).sqrt().median()) for n in steps]
    assert -np.polyfit(np.log(steps), np.log(errs), 1)[0] < 2.6


NEW = ["pndm", "plms", "ipndm", "deis", "dpm1", "dpm2", "dpm3", "dpm_fast", "dpm++2s", "dpm++3m", "dpm++2m_sde",
       "dpm++3m_sde", "unipc", "unip", "lms"]


@pytest.mark.parametrize("solver", NEW)
@pytest.mark.parametrize("clean_end", [True, False])
def test_nfe_is_exact(solver, clean_end, gmm8, ddpm_linear):
    spec = solvers.get(solver)
    for nfe in [spec.min_nfe, spec.min_nfe + 1, 5, 6, 7, 8, 10, 13, 14, 15]:
        if nfe < spec.min_nfe:
            continue
        counter = NFECounter(gmm8.denoiser(ddpm_linear))
        x_T = seeded_noise(ddpm_linear, 2, 8, dtype=torch.float32)
        out = fewstep.sample(counter, x_T, solver, nfe, "logsnr", fewstep.generators([0, 1]), clean_end=clean_end)
        assert counter.count == nfe, (solver, nfe)
        assert torch.isfinite(out).all()


def test_registry_lists_the_suite():
    for name in NEW + ["dpm_adaptive", "dpm++2m"]:
        spec = solvers.get(name)
        assert spec.paper
    assert not solvers.get("dpm_adaptive").fixed_nfe
    assert solvers.get("dpm++3m_sde").stochastic and not solvers.get("unipc").stochastic


def test_fast_order_allocation():
    from fewstep.solvers.dpm_solver import fast_orders
    assert fast_orders(12, False) == [3, 3, 3, 2, 1]
    assert fast_orders(10, False) == [3, 3, 3, 1]
    assert fast_orders(11, False) == [3, 3, 3, 2]
    assert fast_orders(11, True) == [3, 3, 2, 2, 1]
    for nfe in range(3, 20):
        for clean in (True, False):
            assert sum(fast_orders(nfe, clean)) == nfe


@pytest.mark.parametrize("tol", [1e-3, 1e-4])
def test_dpm_adaptive_meets_its_tolerance(tol, trajectory):
    den, x_T, ref = trajectory
    stats = {}
    out = fewstep.sample(den, x_T, "dpm_adaptive", 10_000, clean_end=False, atol=tol, rtol=tol, stats=stats)
    assert float((out - ref).abs().max()) < 3 * tol
    assert stats["nfe"] > 0 and stats["steps"] > 0 and stats["nfe"] < 10_000


def test_dpm_adaptive_counts_and_caps_its_nfe(gmm8, ddpm_linear):
    counter = NFECounter(gmm8.denoiser(ddpm_linear))
    x_T = seeded_noise(ddpm_linear, 4, 8)
    stats = {}
    fewstep.sample(counter, x_T, "dpm_adaptive", 500, stats=stats, atol=1e-3, rtol=1e-3)
    assert stats["nfe"] == counter.count
    with pytest.raises(RuntimeError, match="budget of 10 evaluations"):
        fewstep.sample(counter, x_T, "dpm_adaptive", 10, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("solver", ["dpm++2m_sde", "dpm++3m_sde"])
def test_sde_converges_in_distribution(solver, ddpm_linear):
    """With the same per-sample noise seeds, the Frechet distance to the exact mixture falls with NFE.

    From 10 NFE up: the 3M SDE's third-order extrapolation of noisy x0 history is unstable at
    ~10 steps on a logSNR grid (FD 0.19 at 10 NFE vs 0.06 at 5 on this mixture; diffusers' 3M SDE
    stalls at 0.015 from 20 NFE on, ours reaches the floor).
    """
    gmm = GaussianMixture.random_low_rank(dim=4, components=2, rank=2, floor=0.1, seed=2)
    den = gmm.denoiser(ddpm_linear)
    seeds = range(3000)
    fds = [frechet_distance_to_moments(fewstep.generate(den, (4,), seeds, solver, nfe, dtype=torch.float64),
                                       gmm.mean, gmm.covariance) for nfe in (10, 20, 80)]
    floor = sum(frechet_distance_to_moments(gmm.sample(3000, torch.Generator().manual_seed(k)), gmm.mean, gmm.covariance)
                for k in range(5)) / 5
    assert fds[0] > fds[1] > fds[2], fds
    assert fds[2] < 2 * floor, (fds, floor)
