import math

import pytest
import torch

from fewstep.processes import EDM, VE, RectifiedFlow, VPCosine, VPDiscrete, VPLinear, process_from_config

PROCESSES = [VPDiscrete.linear(), VPDiscrete.cosine(), VPDiscrete.scaled_linear(), VPLinear(), VPCosine(),
             VE(0.01, 50.0), EDM(), RectifiedFlow()]


@pytest.mark.parametrize("p", PROCESSES, ids=lambda p: type(p).__name__ + getattr(p, "schedule", ""))
def test_lambda_round_trip(p):
    t = torch.linspace(p.t_min, p.t_max, 97, dtype=torch.float64)
    back = p.t_of_lambda(p.lam(t))
    assert torch.allclose(back, t, rtol=1e-9, atol=1e-9 * max(1.0, p.t_max))
    lam = p.lam(t)
    assert bool((lam[1:] < lam[:-1]).all()), "lambda must decrease with t"


@pytest.mark.parametrize("p", PROCESSES, ids=lambda p: type(p).__name__ + getattr(p, "schedule", ""))
def test_config_round_trip(p):
    q = process_from_config(p.config())
    t = torch.linspace(p.t_min, p.t_max, 11, dtype=torch.float64)
    assert torch.allclose(q.alpha(t), p.alpha(t)) and torch.allclose(q.sigma(t), p.sigma(t))


@pytest.mark.parametrize("p", [VPDiscrete.linear(), VPLinear(), VPCosine()])
def test_vp_preserves_variance(p):
    t = torch.linspace(p.t_min, p.t_max, 33, dtype=torch.float64)
    assert torch.allclose(p.alpha(t) ** 2 + p.sigma(t) ** 2, torch.ones_like(t), atol=1e-12)


def test_vp_discrete_matches_diffusers_alphas_cumprod():
    diffusers = pytest.importorskip("diffusers")
    for name, p in [("linear", VPDiscrete.linear()), ("scaled_linear", VPDiscrete.scaled_linear(1000, 0.00085, 0.012)),
                    ("squaredcos_cap_v2", VPDiscrete.cosine())]:
        kw = {} if name == "squaredcos_cap_v2" else {"beta_start": p.meta["beta_start"], "beta_end": p.meta["beta_end"]}
        s = diffusers.DDIMScheduler(num_train_timesteps=1000, beta_schedule=name, **kw)
        ac = s.alphas_cumprod.double()
        t = torch.arange(1000, dtype=torch.float64)
        assert torch.allclose(p.alpha(t) ** 2, ac, rtol=1e-5), name


def test_vp_discrete_interpolates_log_alpha_linearly():
    p = VPDiscrete.linear()
    la = p.log_alpha(torch.tensor([10.0, 11.0]))
    assert math.isclose(float(p.log_alpha(10.25)), float(0.75 * la[0] + 0.25 * la[1]), rel_tol=1e-12)


def test_derivatives_match_finite_differences():
    for p in [VPLinear(), RectifiedFlow(), EDM()]:
        t = torch.tensor([0.3 * p.t_max + 0.7 * p.t_min], dtype=torch.float64)
        da, ds = p.derivatives(t)
        h = 1e-6
        assert torch.allclose(da, (p.alpha(t + h) - p.alpha(t - h)) / (2 * h), rtol=1e-5, atol=1e-8)
        assert torch.allclose(ds, (p.sigma(t + h) - p.sigma(t - h)) / (2 * h), rtol=1e-5, atol=1e-8)


def test_bad_configuration_errors():
    with pytest.raises(ValueError, match="sigma_min < sigma_max"):
        EDM(1.0, 0.5)
    with pytest.raises(ValueError, match="beta"):
        VPDiscrete([0.5, 1.5])
    with pytest.raises(ValueError, match="unknown process kind"):
        process_from_config({"kind": "nope"})


@pytest.mark.parametrize("zero_snr", [False, True])
def test_vp_discrete_tables_follow_the_time_device(zero_snr):
    """Training moves times to the GPU: the schedule's table must follow them (a CPU table indexed by CUDA
    times failed the first GPU run). The meta device stands in for a second device on a CPU machine."""
    p = VPDiscrete.linear(1000, 1e-4, 0.02, zero_terminal_snr=zero_snr)
    t = torch.tensor([3.5, 500.2, 998.7], dtype=torch.float64)
    assert p.log_alpha(t.to("meta")).device.type == "meta"
    assert p.t_of_lambda(p.lam(t).to("meta")).device.type == "meta"
    assert torch.allclose(p.t_of_lambda(p.lam(t)), t, atol=1e-6)
