"""Conformance matrix for diffusers configs: schedules x prediction types x zero terminal SNR x variance types.

Each case's network is exact: Gaussian data ``N(mu, diag(c^2))``, whose ``E[x0 | x_t]`` (hence eps, v) is closed-form
at diffusers' own ``alphas_cumprod`` (the network never sees fewstep's process), behind the loading path a diffusers
folder takes (``read_scheduler_config`` + ``denoiser_from_diffusers``).  Checked: the default start against a rule
computed from diffusers' table, fewstep's high-NFE solution against the exact probability-flow ODE solution, fewstep
against diffusers where both solve the same ODE (or run the same ancestral chain) from the same start, and refusals
by name.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

import fewstep
from fewstep.diffusers_config import read_scheduler_config, read_unet_config
from fewstep.loading import denoiser_from_diffusers
from fewstep.processes import SINGULAR_START_LAMBDA, START_LAMBDA_FLOOR, VPDiscrete, check_start

diffusers = pytest.importorskip("diffusers")

SCHEDULES = {
    "linear": {},
    "scaled_linear": {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012},
    "cosine": {"beta_schedule": "squaredcos_cap_v2"},
    "sigmoid": {"beta_schedule": "sigmoid"},
    "trained": {"trained_betas": torch.linspace(2e-4, 0.03, 1000).tolist()},  # lam(999) = -7.6, no collapse
    "T500": {"num_train_timesteps": 500},
}
PREDICTIONS = ("epsilon", "v_prediction", "sample")
CASES = [(s, p, z, v) for s in SCHEDULES for p in PREDICTIONS for z in (False, True) for v in (None, "learned_range")
         if not (z and p == "epsilon")]
SHAPE = (2, 2, 2)  # C = 2 channels, so a learned variance has channels to split


def _ids(case):
    s, p, z, v = case
    return f"{s}-{p}" + ("-zsnr" if z else "") + (f"-{v}" if v else "")


class GaussianUNet(torch.nn.Module):
    """The exact network of Gaussian data under a diffusers scheduler's ``alphas_cumprod``, called like a diffusers
    UNet; evaluated only at training steps (integer times).  With a learned variance it returns 2C channels."""

    def __init__(self, alphas_cumprod, mu, c, prediction, variance=None):
        super().__init__()
        self.ac, self.mu, self.c, self.prediction, self.variance = alphas_cumprod.double(), mu, c, prediction, variance
        self.times: list[float] = []

    def forward(self, x, t):
        t = float(torch.as_tensor(t).reshape(-1)[0])
        self.times.append(t)
        assert abs(t - round(t)) < 1e-6, f"the exact network is defined at training steps, got t={t}"
        ab = self.ac[round(t)]
        a, s = ab.sqrt(), (1 - ab).sqrt()
        x64 = x.double()
        x0 = self.mu + a * self.c**2 / (a * a * self.c**2 + s * s) * (x64 - a * self.mu)
        eps = (x64 - a * x0) / s
        out = {"epsilon": eps, "v_prediction": a * eps - s * x0, "sample": x0}[self.prediction].to(x.dtype)
        if self.variance == "learned_range":
            out = torch.cat([out, torch.tanh(x)], 1)
        elif self.variance == "learned":
            out = torch.cat([out, 0.01 * torch.sigmoid(x)], 1)
        return SimpleNamespace(sample=out)


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(0)
    mu = 0.5 * torch.randn(*SHAPE, generator=g, dtype=torch.float64)
    c = torch.exp(torch.empty(*SHAPE, dtype=torch.float64).uniform_(-1.2, 0.7, generator=g))
    return mu, c


def _scheduler(cls, schedule, prediction, zero_snr, variance, **extra):
    kw = dict(SCHEDULES[schedule], prediction_type=prediction, rescale_betas_zero_snr=zero_snr, **extra)
    if variance is not None:
        kw["variance_type"] = variance
    return cls(**kw)


def _setup(data, case, cls=None, **extra):
    schedule, prediction, zero_snr, variance = case
    sched = _scheduler(cls or diffusers.DDPMScheduler, schedule, prediction, zero_snr, variance, **extra)
    net = GaussianUNet(sched.alphas_cumprod, *data, prediction, variance)
    den = denoiser_from_diffusers(net, read_scheduler_config(dict(sched.config)))
    return sched, net, den


def _expected_start(alphas_cumprod, prediction, zero_snr):
    """The rule from diffusers' own table: v and x0 start at T-1, one step below a zero-SNR end; eps at T-1 if
    lam(T-1) >= -5.1, else at the last step with lam >= -3 after a collapsing end (lam falls by more than 1 in the last
    step), lam >= -5.1 after any other."""
    ac = alphas_cumprod.double()
    last = len(ac) - 1
    if prediction != "epsilon":
        return last - 1 if zero_snr else last
    lam = 0.5 * torch.log(ac / (1 - ac))
    if lam[last] >= START_LAMBDA_FLOOR:
        return last
    bound = SINGULAR_START_LAMBDA if lam[last - 1] - lam[last] > 1 else START_LAMBDA_FLOOR
    return int(torch.nonzero(lam >= bound).max())


def _lam_integer_grid(process, t0, t_end, n):
    """About ``n`` training steps from ``t0`` to ``t_end``, uniform in logSNR (the exact network needs integers)."""
    lam = torch.linspace(float(process.lam(t0)), float(process.lam(float(t_end))), n, dtype=torch.float64)
    ts = torch.unique(torch.round(process.t_of_lambda(lam)))
    return ts[(ts <= t0) & (ts >= t_end)].flip(0)


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_high_nfe_solution_is_the_exact_ode_solution(data, case):
    sched, net, den = _setup(data, case)
    mu, c = data
    ac = sched.alphas_cumprod.double()
    t0 = den.process.t_start
    assert t0 == _expected_start(ac, case[1], case[2])
    x_T = fewstep.prior_noise(den.process, SHAPE, fewstep.generators(range(8)), dtype=torch.float64)
    t_end = 20
    grid = _lam_integer_grid(den.process, t0, t_end, 100)
    x = fewstep.sample(den, x_T, "dpm++3m", len(grid) - 1, grid, clean_end=False)
    # 1-d Gaussian flows are linear: x(t) - alpha(t) mu = s(t) / s(t0) (x(t0) - alpha(t0) mu), s^2 = alpha^2 c^2 + sigma^2
    a0, a1 = ac[int(t0)].sqrt(), ac[t_end].sqrt()
    s0, s1 = torch.sqrt(a0**2 * c**2 + 1 - a0**2), torch.sqrt(a1**2 * c**2 + 1 - a1**2)
    exact = a1 * mu + s1 / s0 * (x_T - a0 * mu)
    err = float((x - exact).abs().max())
    assert err < 1.5e-4, err  # a wrong process (e.g. zero SNR ignored) errs by > 1e-2


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_agrees_with_diffusers_dpm_solver_from_the_same_start(data, case):
    """The same ODE from the same start: diffusers' DPM-Solver++(2M) on fewstep's default grid (rounded to training
    steps), from fewstep's ``t_start``.  diffusers' DPM-Solver lacks sigmoid betas (given as trained betas) and keeps
    only 3 channels of a learned variance's output (given the mean channels): fewstep takes the whole output."""
    schedule, prediction, zero_snr, variance = case
    steps = 8
    _, net, den = _setup(data, case)
    kw = dict(SCHEDULES[schedule], prediction_type=prediction, rescale_betas_zero_snr=zero_snr)
    if schedule == "sigmoid":
        kw = {"trained_betas": diffusers.DDPMScheduler(beta_schedule="sigmoid").betas.tolist(),
              "prediction_type": prediction, "rescale_betas_zero_snr": zero_snr}
    sched = diffusers.DPMSolverMultistepScheduler(**kw, algorithm_type="dpmsolver++", solver_order=2,
                                                  final_sigmas_type="zero", lower_order_final=True)
    times = [int(t) for t in torch.round(fewstep.make_grid(den.process, steps))[:-1]]
    assert times[0] == den.process.t_start
    sched.set_timesteps(timesteps=times)
    x = theirs = fewstep.prior_noise(den.process, SHAPE, fewstep.generators(range(6)))
    for t in sched.timesteps:
        theirs = sched.step(net(theirs, t).sample[:, :SHAPE[0]], t, theirs).prev_sample
    ours = fewstep.sample(den, x, "dpm++2m", steps, [float(t) for t in times] + [0.0])
    torch.testing.assert_close(ours, theirs, atol=2e-5 * float(theirs.abs().max()), rtol=1e-4)


@pytest.mark.parametrize("schedule", ["linear", "cosine", "T500"])
@pytest.mark.parametrize("variance", [None, "learned_range", "learned"])
def test_ddpm_ancestral_sampling_matches_diffusers(data, schedule, variance):
    """fewstep's ddpm with the network's learned variance (or the posterior one) is diffusers' DDPMScheduler on the
    same network, noise and skipped steps (compared at t = 0, before diffusers' final step, which adds learned noise
    to a clean sample where fewstep's clean end adds none)."""
    sched, net, den = _setup(data, (schedule, "epsilon", False, variance), clip_sample=False)
    times = [int(t) for t in torch.round(fewstep.make_grid(den.process, 7))]  # ends at t = 0
    sched.set_timesteps(timesteps=times)
    x = fewstep.prior_noise(den.process, SHAPE, fewstep.generators(range(6)))
    g = torch.Generator().manual_seed(11)
    theirs = x
    for t in sched.timesteps[:-1]:
        theirs = sched.step(net(theirs, t).sample, t, theirs, generator=g).prev_sample
    ours = fewstep.sample(den, x, "ddpm", 7, [float(t) for t in times], torch.Generator().manual_seed(11),
                          clean_end=False)
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)
    if variance is not None:  # the learned variance matters: the posterior one gives another chain
        plain = denoiser_from_diffusers(net, read_scheduler_config({**dict(sched.config), "variance_type": None}))
        other = fewstep.sample(_mean_only(plain, net), x, "ddpm", 7, [float(t) for t in times],
                               torch.Generator().manual_seed(11), clean_end=False)
        assert not torch.allclose(other, theirs, atol=1e-3)


def _mean_only(den, net):
    """The same network with its variance channels dropped (a posterior-variance sampler)."""
    channels = SHAPE[0]
    return fewstep.Denoiser(lambda x, t: net(x, t).sample[:, :channels], den.process, den.prediction)


def test_zero_terminal_snr_exact_first_step_agrees_with_diffusers_ddim(data):
    """At zero terminal SNR, v- and x0-prediction are defined at t_max (alpha = 0): DDIM's first step from there is
    exact, and fewstep's ddim on diffusers' trailing grid (starting at 999) matches diffusers' DDIM."""
    for prediction in ("v_prediction", "sample"):
        sched, net, den = _setup(data, ("scaled_linear", prediction, True, None), diffusers.DDIMScheduler,
                                 timestep_spacing="trailing", clip_sample=False)
        assert float(den.process.alpha(999.0)) == 0.0 and den.process.t_start == 998.0
        sched.set_timesteps(5)
        assert int(sched.timesteps[0]) == 999
        x = theirs = fewstep.prior_noise(den.process, SHAPE, fewstep.generators(range(6)))
        for t in sched.timesteps:
            theirs = sched.step(net(theirs, t).sample, t, theirs).prev_sample
        grid = [float(t) for t in sched.timesteps] + [0.0]
        ours = fewstep.sample(den, x, "ddim", 5, grid)
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4)
        # forcing the start at t_max is warned about, naming the setting
        assert "start=999" in check_start(den.process, 999.0) and check_start(den.process, 998.0) is None


def test_start_rule_values_and_warning():
    """The rule's starts (docs/diffusers.md): regular ends stay at t_max, the capped cosine schedule's collapsing end
    moves eps models to lambda >= -3; diffusers' own ``lambda_min_clipped`` is recorded as ignored."""
    assert [p.t_start for p in (VPDiscrete.linear(), VPDiscrete.scaled_linear(), VPDiscrete.sigmoid())] == [999.0] * 3
    assert VPDiscrete.cosine().t_start == 967.0 and VPDiscrete.cosine(500).t_start == 483.0
    assert VPDiscrete.scaled_linear(zero_terminal_snr=True).t_start == 998.0  # v/x0 (eps is refused there)
    s = diffusers.DPMSolverMultistepScheduler(beta_schedule="squaredcos_cap_v2", lambda_min_clipped=-5.1)
    schedule = read_scheduler_config(dict(s.config))
    assert schedule.process.t_start == 967.0 and "lambda_min_clipped" in {k.key for k in schedule.uses("ignored")}
    warning = check_start(VPDiscrete.cosine(), 999.0, "t_max")
    assert warning.startswith("t_max=999 is above the well-conditioned start t=967 (lambda = -9.92 at t=999)")


def test_clipping_is_an_option_off_by_default(data):
    """diffusers' DDPMScheduler clips the data prediction by default; fewstep does only with clipping='config'."""
    mu, c = data
    sched = diffusers.DDPMScheduler()  # clip_sample=True, clip_sample_range=1.0
    net = GaussianUNet(sched.alphas_cumprod, 3 * mu, 3 * c, "epsilon")  # wide data: predictions leave [-1, 1]
    schedule = read_scheduler_config(dict(sched.config))
    assert schedule.clipping == ("clip", 1.0) and {k.key for k in schedule.uses("mapped")} >= {"clip_sample"}
    times = [int(t) for t in torch.round(fewstep.make_grid(schedule.process, 6))]
    sched.set_timesteps(timesteps=times)
    x = fewstep.prior_noise(schedule.process, SHAPE, fewstep.generators(range(6)))
    g = torch.Generator().manual_seed(2)
    theirs = x
    for t in sched.timesteps[:-1]:
        theirs = sched.step(net(theirs, t).sample, t, theirs, generator=g).prev_sample
    run = lambda den: fewstep.sample(den, x, "ddpm", 6, [float(t) for t in times],  # noqa: E731
                                     torch.Generator().manual_seed(2), clean_end=False)
    torch.testing.assert_close(run(denoiser_from_diffusers(net, schedule, clipping="config")), theirs,
                               atol=1e-4, rtol=1e-4)
    assert not torch.allclose(run(denoiser_from_diffusers(net, schedule)), theirs, atol=1e-3)


REFUSED = [
    ({"beta_schedule": "laplace"}, "beta_schedule='laplace' is not supported; valid: linear"),
    ({"prediction_type": "flow_prediction"}, "prediction_type='flow_prediction'"),
    ({"rescale_betas_zero_snr": True}, "rescale_betas_zero_snr=True is not supported; at zero terminal SNR"),
    ({"variance_type": "fixed_tiny"}, "variance_type='fixed_tiny'"),
    ({"use_flow_sigmas": True}, "use_flow_sigmas=True"),
    ({"use_dynamic_shifting": True}, "use_dynamic_shifting=True"),
    ({"timestep_type": "continuous"}, "timestep_type='continuous'"),
    ({"trained_betas": [0.01] * 10, "num_train_timesteps": 1000}, "trained_betas"),
    ({"brand_new_key": 3}, "brand_new_key=3"),
    ({"_class_name": "FlowMatchEulerDiscreteScheduler"}, "_class_name='FlowMatchEulerDiscreteScheduler'"),
    ({"_class_name": "LCMScheduler"}, "_class_name='LCMScheduler'"),
    ({"_class_name": "EDMEulerScheduler", "prediction_type": "v_prediction"}, "prediction_type='v_prediction'"),
]


@pytest.mark.parametrize("cfg,message", REFUSED, ids=[m.split("=")[0] for _, m in REFUSED])
def test_unsupported_keys_are_refused_by_name(cfg, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_scheduler_config({"_class_name": "DDPMScheduler", **cfg} if "_class_name" not in cfg else cfg)


def test_every_key_of_a_real_config_is_accounted_for():
    for cls in (diffusers.DDPMScheduler, diffusers.DDIMScheduler, diffusers.DPMSolverMultistepScheduler,
                diffusers.EulerDiscreteScheduler, diffusers.UniPCMultistepScheduler, diffusers.PNDMScheduler):
        cfg = dict(cls(beta_schedule="squaredcos_cap_v2").config)
        schedule = read_scheduler_config({"_class_name": cls.__name__, **cfg})
        seen = {k.key for k in schedule.keys}
        assert seen == {k for k in cfg if not k.startswith("_")}, cls.__name__
        assert {k.key for k in schedule.uses("ignored")} >= {"timestep_spacing", "steps_offset"} & set(cfg)


def test_unet_configs_that_do_not_fit_are_refused():
    plain = read_scheduler_config({"_class_name": "DDPMScheduler"})
    learned = read_scheduler_config({"_class_name": "DDPMScheduler", "variance_type": "learned_range"})
    unet = {"_class_name": "UNet2DModel", "in_channels": 3, "out_channels": 3, "sample_size": 32}
    assert read_unet_config(unet, plain).sample_shape == (3, 32, 32)
    with pytest.raises(ValueError, match="variance_type 'learned_range' needs out_channels=6"):
        read_unet_config(unet, learned)
    with pytest.raises(ValueError, match="out_channels=6 is twice in_channels=3"):
        read_unet_config({**unet, "out_channels": 6}, plain)
    with pytest.raises(ValueError, match="_class_name='UNet1DModel'"):
        read_unet_config({**unet, "_class_name": "UNet1DModel"}, plain)
    with pytest.raises(ValueError, match="2 x 2 channels"):
        fewstep.Denoiser(lambda x, t: x, plain.process, "eps", variance="learned_range").predict(torch.zeros(1, 2, 2, 2),
                                                                                                  500.0)
    with pytest.raises(ValueError, match="declare it"):
        fewstep.Denoiser(lambda x, t: torch.cat([x, x], 1), plain.process, "eps").predict(torch.zeros(1, 2, 2, 2), 500.0)
    with pytest.raises(ValueError, match="eps-prediction model on a zero-terminal-SNR process"):
        fewstep.Denoiser(lambda x, t: x, VPDiscrete.linear(zero_terminal_snr=True), "eps")


def test_fewstep_scheduler_honours_or_refuses_every_key(data):
    from fewstep.diffusers_scheduler import FewstepScheduler

    base = diffusers.DDPMScheduler(beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction",
                                   rescale_betas_zero_snr=True, variance_type="learned_range", clip_sample=True)
    sched = FewstepScheduler.from_config(base.config, solver="unipc")
    assert sched.process.zero_terminal_snr and sched.prediction == "v" and sched.schedule.variance == "learned_range"
    sched.set_timesteps(4)
    assert float(sched.timesteps[0]) == 998.0  # one step below the zero-SNR end
    assert "clip_sample" in sched.config_report["mapped"] and "timestep_spacing" in sched.config_report["ignored"]
    with pytest.raises(ValueError, match="use_flow_sigmas=True"):
        FewstepScheduler.from_config({**dict(diffusers.DPMSolverMultistepScheduler().config), "use_flow_sigmas": True})
    with pytest.raises(ValueError, match="rescale_betas_zero_snr=True is not supported"):
        FewstepScheduler.from_config(diffusers.DDPMScheduler(rescale_betas_zero_snr=True).config)
    with pytest.raises(ValueError, match="runs DDPM-family processes"):
        FewstepScheduler.from_config(diffusers.EDMEulerScheduler().config)
    cos = FewstepScheduler(beta_schedule="squaredcos_cap_v2", solver="ddim")
    cos.set_timesteps(3)
    assert float(cos.timesteps[0]) == 967.0
    assert math.isinf(cos.config.lambda_min_clipped)
