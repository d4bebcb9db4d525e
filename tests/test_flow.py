"""Flow matching / rectified flow training (rectified_flow process, flow prediction): the regression target
against the exact velocity and ODE of Gaussian data, the solvers on the exact velocity field, the flow
weighting and time sampling in other parametrisations, and the fashion-flow preset end to end."""

import json
import math

import numpy as np
import pytest
import torch

import fewstep
from fewstep.parametrization import parametrization
from fewstep.processes import RectifiedFlow, VPDiscrete, EDM
from fewstep.training.losses import TIME_SAMPLERS, WEIGHTINGS, diffusion_loss, flow_time

M, S = 0.4, 0.6  # data N(M, S^2) per coordinate


def exact_velocity(x: torch.Tensor, t) -> torch.Tensor:
    """``E[eps - x0 | x_t = x]`` for x0 ~ N(M, S^2), x_t = (1 - t) x0 + t eps (Gaussian conditioning)."""
    t = torch.as_tensor(t, dtype=torch.float64).reshape(-1, *[1] * (x.ndim - 1)) if torch.is_tensor(t) else t
    var = (1 - t) ** 2 * S**2 + t**2
    d = x - (1 - t) * M
    return t / var * d - (M + (1 - t) * S**2 / var * d)


def exact_endpoint(x: torch.Tensor, t: float) -> torch.Tensor:
    """The probability-flow ODE from (x, t) to t = 0: in y = x / (1 - t), s = t / (1 - t) it is
    (y - M) sqrt(S^2 / (S^2 + s^2)) + M (each Gaussian direction scales; Wang & Vastola 2024, eq. 8-9)."""
    y, s = x / (1 - t), t / (1 - t)
    return M + (y - M) * math.sqrt(S**2 / (S**2 + s**2))


def test_flow_target_is_eps_minus_x0_and_its_regression_is_the_exact_velocity():
    """The loss target is eps - x0; least squares of it on x_t (the loss's minimiser, linear for Gaussians) is the
    closed-form E[eps - x0 | x_t], which is the time derivative of the exact ODE trajectory."""
    proc = RectifiedFlow()
    param = parametrization("flow", proc)
    g = torch.Generator().manual_seed(0)
    n = 400_000
    x0 = M + S * torch.randn(n, 1, generator=g, dtype=torch.float64)
    eps = torch.randn(n, 1, generator=g, dtype=torch.float64)
    t = torch.full((n,), 0.3, dtype=torch.float64)
    torch.testing.assert_close(param.target(x0, eps, t), eps - x0)
    x_t = 0.7 * x0 + 0.3 * eps
    design = torch.cat([x_t, torch.ones_like(x_t)], dim=1)
    coef = torch.linalg.lstsq(design, eps - x0).solution.reshape(-1)
    grid = torch.tensor([[-1.0], [0.0], [1.5]], dtype=torch.float64)
    fitted = grid * coef[0] + coef[1]
    torch.testing.assert_close(fitted, exact_velocity(grid, 0.3), rtol=0, atol=5e-3)
    # the exact velocity is dx/dt along the exact ODE: x(t) from the closed-form flow, central differences
    x = torch.tensor([[0.9]], dtype=torch.float64)
    def along(tt):  # the trajectory through (x, 0.3) at time tt, via its data end
        x_data = exact_endpoint(x, 0.3)
        s = tt / (1 - tt)
        return (1 - tt) * (M + (x_data - M) * math.sqrt((S**2 + s**2) / S**2))
    h = 1e-5
    torch.testing.assert_close((along(0.3 + h) - along(0.3 - h)) / (2 * h), exact_velocity(x, 0.3),
                               rtol=1e-6, atol=1e-6)
    # and the exact velocity is the flow parametrisation of the exact denoiser: x0 = x - t u
    torch.testing.assert_close(param.prediction(x, 0.3, exact_velocity(x, 0.3)).x0,
                               M + (1 - 0.3) * S**2 / (0.49 * S**2 + 0.09) * (x - 0.7 * M))


@pytest.mark.parametrize("solver,nfe,tol", [("euler", 40, 0.1), ("heun", 40, 0.07), ("dpm++2m", 20, 0.03),
                                            ("unipc", 40, 6e-3)])
def test_existing_solvers_sample_the_exact_velocity_field(solver, nfe, tol):
    """A flow-prediction Denoiser on the rectified-flow process, driven by the exact velocity, carries the prior
    draw to the closed-form ODE endpoint with the existing solvers (time-uniform grid; errors measured:
    euler 0.076, heun 0.049, dpm++2m 0.020, unipc 0.0035), first-order ones converging at their order."""
    proc = RectifiedFlow()
    den = fewstep.Denoiser(lambda x, t: exact_velocity(x, t.to(torch.float64)), proc, "flow")
    x_T = torch.randn(64, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    want = exact_endpoint(x_T, float(proc.t_start))
    out = fewstep.sample(den, x_T, solver, nfe)
    assert float((out - want).abs().max()) < tol
    if solver == "euler":  # first order: half the error at twice the steps; DDIM is the same method
        half = fewstep.sample(den, x_T, solver, nfe // 2)
        ratio = float((half - want).abs().max() / (out - want).abs().max())
        assert 1.8 < ratio < 2.2, ratio
        torch.testing.assert_close(fewstep.sample(den, x_T, "ddim", nfe), out)
    # and the endpoints have the data's law (up to the t_max truncation and the sample size)
    assert abs(float(want.mean()) - M) < 0.1 and abs(float(want.std()) - S) < 0.1


@pytest.mark.parametrize("process", [RectifiedFlow(), VPDiscrete.linear(), EDM()], ids=lambda p: type(p).__name__)
@pytest.mark.parametrize("prediction", ["flow", "v", "eps"])
def test_flow_weighting_is_the_velocity_loss_in_every_parametrisation(process, prediction):
    """weighting='flow' turns each parametrisation's native error into rectified flow's ||u - (eps - x0)||^2 at the
    same point of the straight path; on rectified_flow + flow it is 1; flow_uniform draws RF time uniformly."""
    g = torch.Generator().manual_seed(2)
    x0 = torch.randn(6, 1, 2, 2, generator=g, dtype=torch.float64)
    eps = torch.randn(6, 1, 2, 2, generator=g, dtype=torch.float64)
    t = TIME_SAMPLERS["flow_uniform"](process, 6, g)
    param = parametrization(prediction, process)
    wrong = torch.randn(6, 1, 2, 2, generator=g, dtype=torch.float64)  # a network output
    a, s = param.alpha_sigma(x0, t)
    x_t = a * x0 + s * eps
    ours = diffusion_loss(lambda x, tm: wrong, prediction, process, x0, t, eps, weighting="flow")
    # the same prediction read as a rectified-flow velocity at the RF point (1 - u) x0 + u eps, u = flow time
    x0_hat = param.prediction(x_t, t, wrong).x0
    u = flow_time(process, t).reshape(-1, 1, 1, 1)
    x_rf = (1 - u) * x0 + u * eps
    vel = (x_rf - x0_hat) / u  # the flow parametrisation on RF: x0 = x - u v
    torch.testing.assert_close(ours.double(), (vel - (eps - x0)).square().flatten(1).mean(1), rtol=1e-5, atol=1e-7)
    if isinstance(process, RectifiedFlow) and prediction == "flow":
        torch.testing.assert_close(WEIGHTINGS["flow"](prediction, process, t), torch.ones_like(t))
        torch.testing.assert_close(flow_time(process, t), t)
    rf = TIME_SAMPLERS["flow_uniform"](process, 20000, torch.Generator().manual_seed(3))
    q = flow_time(process, rf)
    assert abs(float(q.mean()) - 0.5) < 0.01 and abs(float((q < 0.25).double().mean()) - 0.25) < 0.015


def test_fashion_flow_preset_trains_and_samples_end_to_end(tmp_path):
    from conftest import tiny_images
    from fewstep.cli import main
    from fewstep.training.presets import get_preset

    cfg = get_preset("fashion-flow")
    assert cfg["process"] == {"kind": "rectified_flow"} and cfg["prediction"] == "flow"
    images = tiny_images(n=8, res=28)
    np.savez(tmp_path / "data.npz", images=images.numpy())
    assert main(["train", "--config", "fashion-flow", "--data", str(tmp_path / "data.npz"), "--out",
                 str(tmp_path / "run"), "--steps", "2", "--batch-size", "4", "--sample-every", "0",
                 "--no-progress"]) == 0
    den = fewstep.load_model(tmp_path / "run")
    assert isinstance(den.process, RectifiedFlow) and den.prediction == "flow"
    for solver, nfe in (("euler", 2), ("heun", 3)):
        x = fewstep.generate(den, (1, 28, 28), [0, 1], solver, nfe)
        assert x.shape == (2, 1, 28, 28) and bool(torch.isfinite(x).all())
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert all(math.isfinite(r["loss"]) for r in log if "loss" in r)
