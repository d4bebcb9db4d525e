"""Each loss reaches its known minimum on an exact model: Gaussian data N(0, c^2 I).

The optimal output of a network of any prediction type is its target evaluated at the posterior
means E[x0|x], E[eps|x]; its expected loss is ``w(t) * Var[x0|x] / k(t)^2`` with
``Var[x0|x] = c^2 s_hat^2 / (c^2 + s_hat^2)`` and ``s_hat = sigma/alpha``.
"""


import pytest
import torch

from fewstep import Denoiser
from fewstep.processes import EDM, RectifiedFlow, VPDiscrete
from fewstep.parametrization import parametrization
from fewstep.training.losses import WEIGHTINGS, diffusion_loss, sample_t_lognormal, sample_t_uniform

C = 0.7  # data standard deviation
SD = 0.5  # sigma_data


class ExactGaussianNet:
    """The optimal network for N(0, C^2) data, for any prediction type (model_time(t) = t here)."""

    def __init__(self, prediction, process, bias=0.0):
        self.prediction, self.process, self.bias = prediction, process, bias

    def __call__(self, x, t_in):
        p = self.process
        t_in = t_in.double()
        if self.prediction == "edm":
            s_hat = torch.exp(4 * t_in).reshape(-1, 1, 1, 1)
            c_in = (s_hat**2 + SD**2).rsqrt()
            y = x.double() / c_in
            x0 = C**2 * y / (C**2 + s_hat**2)
            eps = (y - x0) / s_hat
            t = p.t_of_sigma_hat(s_hat.reshape(-1))
            out = parametrization("edm", p, SD).target(x0, eps, t)
        else:
            t = t_in
            a = p.alpha(t).reshape(-1, 1, 1, 1)
            s = p.sigma(t).reshape(-1, 1, 1, 1)
            y, s_hat = x.double() / a, s / a
            x0 = C**2 * y / (C**2 + s_hat**2)
            eps = (x.double() - a * x0) / s
            out = parametrization(self.prediction, p, SD).target(x0, eps, t)
        return (out + self.bias).to(x.dtype)


PROCESSES = {"vp": VPDiscrete.linear(1000), "edm": EDM(), "flow": RectifiedFlow()}


@pytest.mark.parametrize("proc", list(PROCESSES))
@pytest.mark.parametrize("prediction", ["eps", "x0", "v", "flow", "edm"])
@pytest.mark.parametrize("weighting", list(WEIGHTINGS))
def test_loss_minimum_on_exact_model(proc, prediction, weighting):
    process = PROCESSES[proc]
    g = torch.Generator().manual_seed(0)
    n = 6
    lo, hi = process.t_of_sigma_hat(5.0), process.t_of_sigma_hat(0.05)  # moderate noise levels
    t = torch.linspace(float(min(lo, hi)), float(max(lo, hi)), n, dtype=torch.float64)
    x0 = C * torch.randn(n, 1, 64, 64, generator=g, dtype=torch.float64)
    eps = torch.randn(n, 1, 64, 64, generator=g, dtype=torch.float64)
    net = ExactGaussianNet(prediction, process)
    loss = diffusion_loss(net, prediction, process, x0, t, eps, weighting=weighting, sigma_data=SD).double()
    s_hat = process.sigma(t) / process.alpha(t)
    var = C**2 * s_hat**2 / (C**2 + s_hat**2)
    w = WEIGHTINGS[weighting](prediction, process, t, sigma_data=SD)
    expected = w * var / parametrization(prediction, process, SD).x0_error_scale(t) ** 2
    assert torch.allclose(loss, expected, rtol=0.08), (loss, expected)
    # Any other model is worse.
    bias = (0.3 * (expected / w).sqrt()).reshape(-1, 1, 1, 1)  # 0.3 native standard deviations
    worse = diffusion_loss(ExactGaussianNet(prediction, process, bias=bias), prediction, process, x0, t, eps,
                           weighting=weighting, sigma_data=SD).double()
    assert (worse > 1.05 * loss).all()
    # The trained output means the same thing to the sampler's Denoiser: its x0 is the posterior mean.
    den = Denoiser(net, process, prediction, sigma_data=SD)
    x = process.alpha(t[2]) * x0[:1] + process.sigma(t[2]) * eps[:1]
    s_hat2 = float(s_hat[2])
    assert torch.allclose(den.predict(x, float(t[2])).x0, C**2 * (x / process.alpha(t[2])) / (C**2 + s_hat2**2),
                          atol=1e-6)


def test_weightings_match_their_papers():
    p = VPDiscrete.linear(1000)
    t = torch.tensor([10.0, 500.0, 990.0], dtype=torch.float64)
    snr = torch.exp(2 * p.lam(t))
    # min-SNR-gamma on eps: min(SNR, gamma) / SNR (Hang et al. 2023, eq. 9); on v: min(SNR, gamma) / (SNR + 1).
    assert torch.allclose(WEIGHTINGS["min_snr"]("eps", p, t, gamma=5.0), snr.clamp(max=5) / snr)
    assert torch.allclose(WEIGHTINGS["min_snr"]("v", p, t, gamma=5.0), snr.clamp(max=5) / (snr + 1))
    # EDM's lambda(sigma) makes the effective weight on F exactly 1 (Karras et al. 2022, sec. 5).
    assert torch.allclose(WEIGHTINGS["edm"]("edm", EDM(), torch.tensor([0.1, 1.0, 10.0], dtype=torch.float64)),
                          torch.ones(3, dtype=torch.float64))


def test_time_samplers_stay_in_range():
    g = torch.Generator().manual_seed(0)
    for p in PROCESSES.values():
        for fn in (sample_t_uniform, sample_t_lognormal):
            t = fn(p, 2000, g)
            assert t.shape == (2000,) and bool((t >= p.t_min).all()) and bool((t <= p.t_max).all())
    t = sample_t_lognormal(EDM(), 20000, g)
    assert abs(float(torch.log(t).mean()) + 1.2) < 0.05 and abs(float(torch.log(t).std()) - 1.2) < 0.05


def test_unknown_weighting_is_a_clear_error():
    p = VPDiscrete.linear(1000)
    x = torch.zeros(2, 1, 4, 4)
    with pytest.raises(ValueError, match="unknown weighting 'snr'"):
        diffusion_loss(lambda x, t: x, "eps", p, x, torch.tensor([1.0, 2.0]), x, weighting="snr")
