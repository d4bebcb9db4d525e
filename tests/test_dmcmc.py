"""Denoising MCMC (fewstep.dmcmc) on exact mixtures: the level posterior is Bayes' rule, the Langevin-Gibbs chain
has the right stationary law, and the NFE budget is spent exactly."""

import math

import pytest
import torch

from fewstep.denoisers import DenoiserWrapper
from fewstep.dmcmc import (DMCMCConfig, ExactLevelPosterior, NoiseLevels, dmcmc_generate, draw_levels, gibbs_step,
                           run_chain)
from fewstep.exact import GaussianMixture
from fewstep.metrics.frechet import frechet_distance_to_moments
from fewstep.processes import VPDiscrete

PROCESS = VPDiscrete.linear(1000, 1e-4, 0.02)


def _mixture(dim=4):
    return GaussianMixture.random_low_rank(dim=dim, components=3, rank=2, floor=0.05, seed=1)


def test_levels_are_uniform_in_logsnr_and_checked():
    lv = NoiseLevels.logsnr(PROCESS, 5, 100.0, 600.0)
    lam = PROCESS.lam(lv.times)
    assert lv.times[0] == 600 and lv.times[-1] == 100
    assert torch.allclose(lam[1:] - lam[:-1], (lam[1] - lam[0]).expand(4), rtol=1e-6)
    assert torch.allclose(lv.log_prior.exp().sum(), torch.tensor(1.0, dtype=torch.float64))
    with pytest.raises(ValueError, match="below"):
        NoiseLevels.logsnr(PROCESS, 3, 600.0, 100.0)


def test_exact_level_posterior_is_bayes_rule_for_a_gaussian():
    """One Gaussian N(0, c I) in d dims: p_t(x) = N(x; 0, (alpha^2 c + sigma^2) I), so the posterior is explicit."""
    d, c = 3, 0.7
    g = GaussianMixture.from_covariances(torch.zeros(1, d, dtype=torch.float64),
                                         c * torch.eye(d, dtype=torch.float64)[None])
    lv = NoiseLevels.logsnr(PROCESS, 6, 50.0, 900.0)
    x = torch.randn(10, d, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    v = PROCESS.alpha(lv.times) ** 2 * c + PROCESS.sigma(lv.times) ** 2  # (L,)
    logp = -0.5 * (x.square().sum(1, keepdim=True) / v + d * torch.log(2 * math.pi * v))
    expected = torch.log_softmax(logp, 1)
    assert torch.allclose(ExactLevelPosterior(g, PROCESS, lv).log_posterior(x), expected, atol=1e-9)


def test_level_draws_follow_the_posterior():
    probs = torch.tensor([0.1, 0.6, 0.3], dtype=torch.float64)
    gens = [torch.Generator().manual_seed(i) for i in range(6000)]
    draws = draw_levels(probs.log().expand(6000, 3), gens)
    freq = torch.bincount(draws, minlength=3).double() / 6000
    assert torch.allclose(freq, probs, atol=0.02)


def test_langevin_at_one_level_reaches_that_levels_marginal():
    """One level: the chain is unadjusted Langevin on p_t, whose mean is alpha m and covariance alpha^2 C + sigma^2 I;
    a small step reaches them from a far start (prior noise scaled by 3)."""
    gmm = _mixture()
    t = 400.0
    lv = NoiseLevels(torch.tensor([t], dtype=torch.float64), torch.zeros(1, dtype=torch.float64))
    den = gmm.denoiser(PROCESS)
    n = 1500
    gens = [torch.Generator().manual_seed(i) for i in range(n)]
    x = 3 * torch.randn(n, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(123))
    x, _ = run_chain(den, x, torch.zeros(n, dtype=torch.long), ExactLevelPosterior(gmm, PROCESS, lv), gens, 100,
                     step_scale=0.1)
    a, s = float(PROCESS.alpha(t)), float(PROCESS.sigma(t))
    mean, cov = a * gmm.mean, a * a * gmm.covariance + s * s * torch.eye(4, dtype=torch.float64)
    assert frechet_distance_to_moments(x, mean, cov) < 0.02
    # the starting law is far away: the chain moved
    assert frechet_distance_to_moments(3 * torch.randn(n, 4, dtype=torch.float64), mean, cov) > 5


def test_gibbs_chain_reaches_the_joint_law_from_the_top_level():
    """Exact Gibbs from prior noise at the noisiest level: after burn-in the level's marginal is the uniform prior
    and x given the level has p_t's moments."""
    gmm = _mixture()
    lv = NoiseLevels.logsnr(PROCESS, 4, 150.0, 600.0)
    post = ExactLevelPosterior(gmm, PROCESS, lv)
    n = 2500
    gens = [torch.Generator().manual_seed(i) for i in range(n)]
    x = torch.randn(n, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    x, level = run_chain(gmm.denoiser(PROCESS), x, torch.zeros(n, dtype=torch.long), post, gens, 60,
                         step_scale=0.1)
    freq = torch.bincount(level, minlength=4).double() / n
    assert torch.allclose(freq, torch.full((4,), 0.25, dtype=torch.float64), atol=0.04), freq
    for lvl in (0, 3):
        t = float(lv.times[lvl])
        a, s = float(PROCESS.alpha(t)), float(PROCESS.sigma(t))
        sel = x[level == lvl]
        cov = a * a * gmm.covariance + s * s * torch.eye(4, dtype=torch.float64)
        assert frechet_distance_to_moments(sel, a * gmm.mean, cov) < 0.05


class _SampleCounter(DenoiserWrapper):
    """Counts per-sample evaluations (the batch size of every call)."""

    def __init__(self, inner):
        super().__init__(inner)
        self.count = 0

    def predict(self, x, t, *, ctx=None, **cond):
        self.count += x.shape[0]
        return self.inner.predict(x, t, ctx=ctx, **cond)


@pytest.mark.parametrize("burn_in,stride,per_chain,ode_nfe", [(6, 1, 4, 3), (5, 2, 5, 2), (0, 1, 1, 4)])
def test_nfe_budget_is_spent_exactly(burn_in, stride, per_chain, ode_nfe):
    gmm = _mixture()
    den = _SampleCounter(gmm.denoiser(PROCESS))
    cfg = DMCMCConfig(ode_nfe=ode_nfe, burn_in=burn_in, stride=stride, per_chain=per_chain)
    post = ExactLevelPosterior(gmm, PROCESS, NoiseLevels.logsnr(PROCESS, 4, 150.0, 600.0))
    n = 4 * per_chain  # whole chains
    stats = {}
    dmcmc_generate(den, (4,), range(n), post, cfg, stats=stats)
    assert den.count == stats["chain_evals"] + stats["ode_evals"]
    assert den.count == n * cfg.nfe_per_image()
    assert cfg.nfe_per_image() == ode_nfe + stride + burn_in / per_chain


def test_same_seed_same_image_in_any_batch():
    gmm = _mixture()
    den = gmm.denoiser(PROCESS)
    cfg = DMCMCConfig(ode_nfe=3, burn_in=4, per_chain=3)
    post = ExactLevelPosterior(gmm, PROCESS, NoiseLevels.logsnr(PROCESS, 4, 150.0, 600.0))
    full = dmcmc_generate(den, (4,), range(9), post, cfg)
    part = dmcmc_generate(den, (4,), [7, 2], post, cfg)
    assert torch.allclose(part, full[[7, 2]], atol=1e-6)


def test_chain_states_denoised_by_the_ode_match_the_data():
    """Independent chains after burn-in, each state solved to t = 0 by a 20-step ODE: the samples have the
    mixture's moments (x given its level is p_t, so the ODE from there lands on the data law)."""
    gmm = _mixture()
    cfg = DMCMCConfig(ode_nfe=20, burn_in=40, per_chain=1, step_scale=0.1)
    post = ExactLevelPosterior(gmm, PROCESS, NoiseLevels.logsnr(PROCESS, 4, 150.0, 600.0))
    x = dmcmc_generate(gmm.denoiser(PROCESS), (4,), range(2000), post, cfg).double()
    assert frechet_distance_to_moments(x, gmm.mean, gmm.covariance) < 0.02
    with pytest.raises(ValueError, match="step_scale"):
        DMCMCConfig(step_scale=0.0)


def _tiny_images():
    g = torch.Generator().manual_seed(0)
    return (torch.nn.functional.avg_pool2d(torch.randn(64, 1, 8, 8, generator=g), 3, 1, 1) * 2).clamp(-1, 1)


def test_estimator_training_resumes_exactly_and_round_trips(tmp_path, monkeypatch):
    from fewstep.dmcmc import estimator as est
    from fewstep.dmcmc import load_estimator, save_estimator, train_level_classifier

    lv = NoiseLevels.logsnr(PROCESS, 4, 50.0, 900.0)
    images = _tiny_images()
    kw = dict(steps=6, batch_size=8, width=8, seed=3, every=2, progress=False)
    straight, _ = train_level_classifier(PROCESS, images, lv, **kw)
    resume = tmp_path / "r.pt"
    real_batch = est.level_batch
    calls = []

    def failing(*a, **k):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real_batch(*a, **k)

    monkeypatch.setattr(est, "level_batch", failing)
    with pytest.raises(KeyboardInterrupt):
        train_level_classifier(PROCESS, images, lv, resume_file=resume, **kw)
    monkeypatch.setattr(est, "level_batch", real_batch)
    resumed, _ = train_level_classifier(PROCESS, images, lv, resume_file=resume, **kw)
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)
    save_estimator(tmp_path / "est", resumed, lv, {"note": "test"})
    post = load_estimator(tmp_path / "est")
    x = images[:5]
    assert torch.allclose(post.log_posterior(x), torch.log_softmax(resumed(x).double(), 1), atol=1e-6)
    assert torch.allclose(post.levels.times, lv.times)
    with pytest.raises(FileNotFoundError, match="not a noise-level estimator"):
        load_estimator(tmp_path)


def test_restricted_levels_renormalise_the_posterior():
    from fewstep.dmcmc import restrict_levels

    gmm = _mixture()
    lv = NoiseLevels.logsnr(PROCESS, 5, 100.0, 900.0)
    full = ExactLevelPosterior(gmm, PROCESS, lv)
    sub = restrict_levels(full, 500.0)
    kept = lv.times <= 500
    assert torch.equal(sub.levels.times, lv.times[kept])
    x = torch.randn(6, 4, dtype=torch.float64)
    expected = ExactLevelPosterior(gmm, PROCESS, NoiseLevels(lv.times[kept], torch.log_softmax(lv.log_prior[kept], 0)))
    assert torch.allclose(sub.log_posterior(x), expected.log_posterior(x), atol=1e-9)
    with pytest.raises(ValueError, match="no noise level"):
        restrict_levels(full, 10.0)


def test_gibbs_step_runs_a_trained_network_with_per_chain_times():
    """The bundled model evaluated at a different time per chain equals evaluating each chain alone."""
    import fewstep

    den = fewstep.load_model("bundled:fashion")
    lv = NoiseLevels.logsnr(den.process, 3, 100.0, 700.0)

    class Fixed:
        levels = lv

        def log_posterior(self, x):
            return torch.zeros(len(x), 3, dtype=torch.float64)

    x = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    level = torch.tensor([0, 2])
    gens = lambda: [torch.Generator().manual_seed(i) for i in range(2)]  # noqa: E731
    both, _ = gibbs_step(den, x, level, Fixed(), gens(), step_scale=0.1)
    one, _ = gibbs_step(den, x[1:], level[1:], Fixed(), gens()[1:], step_scale=0.1)
    assert torch.allclose(both[1:], one, atol=1e-5)
    assert not torch.allclose(both, x)


def test_cli_train_estimator_and_sample(tmp_path, capsys):
    import numpy as np

    from fewstep.cli import main

    data = tmp_path / "d.npz"
    np.savez(data, images=(np.random.default_rng(0).random((16, 1, 28, 28)) * 255).astype(np.uint8))
    est = str(tmp_path / "est")
    assert main(["dmcmc", "train-estimator", "--model", "bundled:fashion", "--data", str(data), "--out", est,
                 "--levels", "3", "--steps", "2", "--batch-size", "4", "--width", "8", "--no-progress"]) == 0
    out = str(tmp_path / "x.npz")
    assert main(["dmcmc", "sample", "--model", "bundled:fashion", "--estimator", est, "--ode-nfe", "1",
                 "--burn-in", "2", "--per-chain", "2", "--n", "4", "--out", out]) == 0
    printed = capsys.readouterr().out
    assert "network evaluations per image 3 (planned 3" in printed  # 1 + 1 + 2/2
    assert np.load(out)["images"].shape[0] == 4
    assert main(["dmcmc", "sample", "--model", "bundled:fashion", "--estimator", str(tmp_path), "--n", "2",
                 "--out", str(tmp_path / "y.npz")]) != 0
    assert "not a noise-level estimator folder" in capsys.readouterr().err
    assert main(["dmcmc", "sample", "--model", "bundled:fashion", "--estimator", est, "--step-scale", "2",
                 "--out", str(tmp_path / "y.npz")]) != 0
    assert "step_scale" in capsys.readouterr().err
