
import torch

from fewstep.exact import EmpiricalData, GaussianMixture, reference_solution
from fewstep.processes import EDM, VPDiscrete


def test_gmm_posterior_mean_matches_monte_carlo(gmm8):
    """x0_hat(y) = E[x0 | y]: estimate by importance weighting exact draws of x0 with p(y | x0)."""
    g = torch.Generator().manual_seed(0)
    x0 = gmm8.sample(400_000, g)
    sigma = 0.7
    y = gmm8.sample(3, g) + sigma * torch.randn(3, 8, generator=g, dtype=torch.float64)
    logw = -((y[:, None, :] - x0[None]) ** 2).sum(-1) / (2 * sigma**2)
    w = torch.softmax(logw, dim=1)
    mc = w @ x0
    ess = 1 / (w**2).sum(1)
    assert bool((ess > 200).all())
    exact = gmm8.x0_at(y, sigma)
    assert torch.allclose(exact, mc, atol=6 / ess.min().sqrt().item())


def test_gmm_full_covariance_single_component_is_linear_filter():
    cov = torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=torch.float64)
    m = torch.tensor([1.0, -1.0], dtype=torch.float64)
    gmm = GaussianMixture.from_covariances(m[None], cov[None])
    y = torch.tensor([[0.3, 0.2]], dtype=torch.float64)
    s = 0.8
    want = m + cov @ torch.linalg.solve(cov + s**2 * torch.eye(2, dtype=torch.float64), (y - m)[0])
    assert torch.allclose(gmm.x0_at(y, s)[0], want, atol=1e-12)


def test_gmm_moments_match_samples(gmm8):
    x = gmm8.sample(200_000, torch.Generator().manual_seed(1))
    assert torch.allclose(x.mean(0), gmm8.mean, atol=0.02)
    assert torch.allclose(torch.cov(x.T), gmm8.covariance, atol=0.03)


def test_gmm_per_sample_sigma(gmm8):
    y = gmm8.sample(4, torch.Generator().manual_seed(2))
    s = torch.tensor([0.1, 0.5, 1.0, 3.0], dtype=torch.float64)
    batched = gmm8.x0_at(y, s)
    single = torch.cat([gmm8.x0_at(y[i:i + 1], float(s[i])) for i in range(4)])
    assert torch.allclose(batched, single, atol=1e-12)


def test_exact_denoiser_is_exact_under_every_process(gmm8):
    y = gmm8.sample(5, torch.Generator().manual_seed(3))
    for proc, t in [(VPDiscrete.linear(), 300.0), (EDM(), 1.3)]:
        a, s = float(proc.alpha(t)), float(proc.sigma(t))
        x = a * y
        pred = gmm8.denoiser(proc).predict(x, t)
        assert torch.allclose(pred.x0, gmm8.x0_at(y, s / a), atol=1e-12)


def test_empirical_denoiser_limits():
    data = torch.tensor([[0.0, 0.0], [4.0, 4.0]], dtype=torch.float64)
    emp = EmpiricalData(data)
    assert torch.allclose(emp.x0_at(torch.tensor([[0.5, 0.2]], dtype=torch.float64), 0.05), data[:1])
    assert torch.allclose(emp.x0_at(torch.tensor([[0.5, 0.2]], dtype=torch.float64), 1e4), data.mean(0, keepdim=True), atol=1e-6)


def test_reference_solution_is_converged(gmm8):
    proc = VPDiscrete.linear()
    den = gmm8.denoiser(proc)
    x_T = torch.randn(4, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    a = reference_solution(den, x_T, rtol=1e-10, atol=1e-10)
    b = reference_solution(den, x_T, rtol=1e-7, atol=1e-7)
    assert float((a - b).abs().max()) < 1e-5
    # The clean end is the limit of the trajectory: it is a fixed point of the denoiser.
    assert torch.allclose(gmm8.x0_at(a, 1e-4), a, atol=1e-6)
