"""The Time-Shift sampler (Li et al. 2024): window 0 is the base solver, the variance criterion, TS-DDIM's update."""

import math

import pytest
import torch

import fewstep
from fewstep.cli import main
from fewstep.denoisers import DenoiserWrapper, NFECounter
from fewstep.grids import make_schedule
from fewstep.processes import VPDiscrete
from fewstep.solvers.time_shift import TS_BASES, TimeShift, shifted_times

from conftest import seeded_noise


@pytest.mark.parametrize("base", TS_BASES)
def test_window_zero_is_the_base_solver_exactly(base, gmm8, ddpm_linear):
    den = gmm8.denoiser(ddpm_linear)
    x_T = seeded_noise(ddpm_linear, 8, 8, dtype=torch.float32)
    a = fewstep.sample(den, x_T, base, 6, "logsnr", fewstep.generators(range(8)))
    b = fewstep.sample(den, x_T, f"ts-{base}", 6, "logsnr", fewstep.generators(range(8)), window=0.0)
    assert torch.equal(a, b)
    c = fewstep.sample(den, x_T, f"ts-{base}", 6, "logsnr", fewstep.generators(range(8)), window=0.1, cutoff=0.0)
    assert not torch.equal(a, c)  # the shift does act


def _with_variance(target: float, n: int = 3, dim: int = 4096) -> torch.Tensor:
    z = torch.randn(n, dim, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    z = z - z.mean(1, keepdim=True)
    return z / z.var(1, keepdim=True).sqrt() * math.sqrt(target)  # each sample's variance is exactly target


@pytest.mark.parametrize("v0", [0.0, 0.5])
def test_variance_matching_finds_the_analytic_time(v0):
    """For a sample whose variance is alpha(t*)^2 v0 + sigma(t*)^2, the criterion returns t* (to the window's
    resolution), from a planned time 15 steps away."""
    proc = VPDiscrete.linear()
    t_star = 612.3
    a, s = float(proc.alpha(t_star)), float(proc.sigma(t_star))
    x = _with_variance(a * a * v0 + s * s)
    window = 40.0
    t_s = shifted_times(proc, x, t_star + 15.0, window, v0)
    assert t_s.shape == (3,) and t_s.dtype == torch.float64
    assert torch.allclose(t_s, torch.full((3,), t_star, dtype=torch.float64), atol=window / 256)


def test_ignoring_data_variance_matches_sigma_squared():
    """The paper's criterion |Var(x) - (1 - abar_tau)|: the time with sigma^2 = Var(x), per sample."""
    proc = VPDiscrete.linear()
    targets = [0.7, 0.8, 0.9]
    x = torch.cat([_with_variance(v, n=1) for v in targets])
    t_s = shifted_times(proc, x, 600.0, 600.0)
    for v, t in zip(targets, t_s.tolist()):
        assert float(proc.sigma(t)) ** 2 == pytest.approx(v, abs=2e-3)


def test_window_is_respected_and_clipped_to_the_time_range():
    proc = VPDiscrete.linear()
    x = _with_variance(1e-4)  # far below any sigma^2 in the window: the window's lower end
    assert torch.allclose(shifted_times(proc, x, 500.0, 50.0), torch.full((3,), 475.0, dtype=torch.float64))
    x = _with_variance(4.0)  # above sigma_max^2: the window's upper end, clipped to t_max
    assert torch.allclose(shifted_times(proc, x, 990.0, 50.0), torch.full((3,), proc.t_max, dtype=torch.float64))


class Recorder(DenoiserWrapper):
    def __init__(self, inner):
        super().__init__(inner)
        self.calls = []

    def predict(self, x, t, *, ctx=None, **cond):
        self.calls.append((ctx.step, ctx.stage, t))
        return self.inner.predict(x, t, ctx=ctx, **cond)


def test_only_main_evaluations_after_the_first_step_above_the_cutoff_are_shifted(gmm8, ddpm_linear):
    rec = Recorder(gmm8.denoiser(ddpm_linear))
    x_T = seeded_noise(ddpm_linear, 5, 8, dtype=torch.float32)
    fewstep.sample(rec, x_T, "ts-unipc", 8, "uniform", window=0.1, cutoff=0.5)
    sched = make_schedule(ddpm_linear, 8, "uniform")
    for step, stage, t in rec.calls:
        planned = float(sched.t[step])
        if step > 0 and planned / ddpm_linear.t_max > 0.5:
            assert isinstance(t, torch.Tensor) and t.shape == (5,)
            assert float((t - planned).abs().max()) <= 0.05 * ddpm_linear.t_max + 1e-9
            assert len(set(t.tolist())) > 1  # per sample
        else:
            assert not isinstance(t, torch.Tensor) and t == planned


def test_ts_ddim_is_the_papers_update(gmm8, ddpm_linear):
    """TS-DDIM (Li et al. 2024, Alg. 1): x_{i+1} = alpha_{i+1} x0(x, t_s) + sigma_{i+1} eps(x, t_s)."""
    den = gmm8.denoiser(ddpm_linear)
    x = seeded_noise(ddpm_linear, 6, 8)
    out = fewstep.sample(den, x, "ts-ddim", 5, "uniform", window=0.2, cutoff=0.0)
    sched = make_schedule(ddpm_linear, 5, "uniform")
    for i in range(5):
        t = float(sched.t[i])
        if i > 0:
            t = shifted_times(ddpm_linear, x, t, 0.2 * ddpm_linear.t_max)
        p = den.predict(x, t)
        x = float(sched.alpha[i + 1]) * p.x0 + float(sched.sigma[i + 1]) * p.eps
    assert torch.allclose(out, x, atol=1e-12)


def test_exact_nfe_and_errors(gmm8, ddpm_linear):
    counter = NFECounter(gmm8.denoiser(ddpm_linear))
    fewstep.sample(counter, seeded_noise(ddpm_linear, 4, 8), "ts-unipc", 7)
    assert counter.count == 7
    with pytest.raises(ValueError, match=r"window=-1.0 is out of range; valid: 0 <= window <= 1"):
        fewstep.sample(counter, seeded_noise(ddpm_linear, 4, 8), "ts-ddim", 5, window=-1.0)
    with pytest.raises(ValueError, match="data_var must be"):
        TimeShift(counter, data_var="guess")
    with pytest.raises(ValueError, match="did you mean 'window'"):
        fewstep.sample(counter, seeded_noise(ddpm_linear, 4, 8), "ts-ddim", 5, windw=0.1)


def test_predicted_data_variance_runs(gmm8, ddpm_linear):
    den = gmm8.denoiser(ddpm_linear)
    x_T = seeded_noise(ddpm_linear, 4, 8)
    out = fewstep.sample(den, x_T, "ts-dpm++2m", 6, window=0.1, cutoff=0.2, data_var="predicted")
    assert torch.isfinite(out).all()


def test_cli_samples_with_a_time_shift_solver(tmp_path):
    out = tmp_path / "s.npz"
    assert main(["sample", "--model", "bundled:fashion", "--solver", "ts-ddim", "--nfe", "3", "--n", "2",
                 "--out", str(out), "--no-progress"]) == 0
    assert out.exists()
