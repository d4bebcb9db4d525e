"""Feature caching (fewstep.accel): DeepCache, encoder propagation, TaylorSeer on tiny networks."""

import numpy as np
import pytest
import torch

import fewstep
from fewstep.accel import (DeepCache, apply_cache, deepcache, encoder_propagation, key_steps, parse_cache,
                           taylorseer)
from fewstep.accel.taylorseer import taylor_forecast, taylor_update
from fewstep.cli import main
from fewstep.context import StepContext, tap
from fewstep.metrics.sampling import solver_sample_fn
from fewstep.nets import build_net
from fewstep.processes import VPDiscrete

from conftest import TINY_UNET

DIT = {"kind": "dit", "in_channels": 1, "resolution": 8, "patch_size": 2, "width": 16, "depth": 3, "heads": 2}


def _net(config):
    torch.manual_seed(0)
    net = build_net(dict(config)).eval()
    for p in net.parameters():  # zero-initialised output layers would hide every block
        torch.nn.init.normal_(p, std=0.2)
    return net


@pytest.fixture(scope="module")
def unet_den():
    return fewstep.Denoiser(_net(TINY_UNET), VPDiscrete.linear(), "eps", sample_shape=(1, 8, 8))


@pytest.fixture(scope="module")
def dit_den():
    return fewstep.Denoiser(_net(DIT), VPDiscrete.linear(), "eps", sample_shape=(1, 8, 8))


def _gen(den, seeds=range(3), solver="dpm++2m", nfe=6):
    return fewstep.generate(den, (1, 8, 8), list(seeds), solver, nfe)


SPECS_1 = ["deepcache:1", "encoder:1", "taylorseer:interval=1,order=2"]


@pytest.mark.parametrize("solver,nfe", [("dpm++2m", 6), ("unipc", 6), ("heun", 7), ("dpm2", 6)])
@pytest.mark.parametrize("spec", SPECS_1)
def test_interval_one_is_the_plain_sampler(unet_den, spec, solver, nfe):
    cached = apply_cache(unet_den, spec)
    assert torch.equal(_gen(cached, solver=solver, nfe=nfe), _gen(unet_den, solver=solver, nfe=nfe))
    assert cached.cached_evals == 0 and cached.full_evals == nfe


def test_taylorseer_interval_one_on_a_dit(dit_den):
    assert torch.equal(_gen(taylorseer(dit_den, 1, order=2)), _gen(dit_den))


def test_caching_changes_the_result_and_counts_what_it_costs(unet_den, dit_den):
    plain = _gen(unet_den)
    for den in (deepcache(unet_den, 2), encoder_propagation(unet_den, 3), taylorseer(unet_den, 2)):
        out = _gen(den)
        assert not torch.equal(out, plain) and torch.isfinite(out).all()
        assert (den.full_evals, den.cached_evals) == ((3, 3) if den.interval == 2 else (2, 4))
    ts = taylorseer(dit_den, 3, order=2)
    assert not torch.equal(_gen(ts), _gen(dit_den)) and (ts.full_evals, ts.cached_evals) == (2, 4)


class Recorder:
    """Forward hooks on the UNet's modules: which top-level block groups ran."""

    def __init__(self, net):
        self.ran = []
        groups = {"conv_in": net.conv_in, "mid": net.mid, "conv_out": net.conv_out,
                  **{f"down.{k}": m for k, m in enumerate(net.down)}, **{f"up.{k}": m for k, m in enumerate(net.up)}}
        for name, module in groups.items():
            for sub in module.modules():
                if not isinstance(sub, torch.nn.ModuleList):
                    sub.register_forward_hook(lambda *_, n=name: self.ran.append(n))

    def groups(self):
        out = set(self.ran)
        self.ran.clear()
        return out


def test_deepcache_cached_step_runs_only_the_shallow_blocks_and_equals_a_hand_forward():
    net = _net(TINY_UNET)
    den = fewstep.Denoiser(net, VPDiscrete.linear(), "eps")
    schedule = fewstep.grids.make_schedule(den.process, 4)
    state = {}
    cache = deepcache(den, 2)
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    rec = Recorder(net)
    t0, t1 = float(schedule.t[0]), float(schedule.t[1])
    cache.predict(x, t0, ctx=StepContext(schedule, 0, 0, state))  # key step: everything runs
    assert rec.groups() == {"conv_in", "mid", "conv_out", *(f"down.{k}" for k in range(len(net.down))),
                            *(f"up.{k}" for k in range(len(net.up)))}
    x1 = 0.9 * x + 0.1
    p = cache.predict(x1, t1, ctx=StepContext(schedule, 1, 0, state))  # cached step
    last = len(net.up) - 1
    assert rec.groups() == {"conv_in", f"up.{last}", "conv_out"}
    # by hand: the deep feature of step 0, then the shallow branch at (x1, t1)
    deep = {}
    net(x, den.param.net_input(x, t0)[1], ctx=StepContext(schedule, 0, tap=lambda c, n, f, *a: deep.setdefault(n, f(*a))))
    x_in, t_in = den.param.net_input(x1, t1)
    emb = net.embed(fewstep.nets._layers.broadcast_time(t_in, 2, x.device), None)
    h0 = net.conv_in(x_in)
    h = net._run(net.up[last], torch.cat([deep["deep"], h0], dim=1), emb)
    out = net.conv_out(torch.nn.functional.silu(net.norm_out(h)))
    assert torch.allclose(p.eps, den.param.prediction(x1, t1, out).eps, atol=1e-6)


def test_encoder_propagation_cached_step_runs_only_the_decoder():
    net = _net(TINY_UNET)
    den = fewstep.Denoiser(net, VPDiscrete.linear(), "eps")
    schedule = fewstep.grids.make_schedule(den.process, 4)
    state, cache, rec = {}, encoder_propagation(den, 2), Recorder(net)
    x = torch.randn(2, 1, 8, 8)
    cache.predict(x, float(schedule.t[0]), ctx=StepContext(schedule, 0, 0, state))
    rec.groups()
    cache.predict(x, float(schedule.t[1]), ctx=StepContext(schedule, 1, 0, state))
    decoder = {f"up.{k}" for k in range(len(net.up))}
    assert rec.groups() == decoder | {"conv_out"}


def test_taylorseer_order_zero_is_reuse(unet_den):
    assert torch.equal(_gen(taylorseer(unet_den, 2, order=0)), _gen(deepcache(unet_den, 2)))


class PolynomialInStep(torch.nn.Module):
    """An eps network whose tapped block's output is a polynomial of degree ``degree`` in ``t``, hence in
    the step index on a time-uniform grid; it records what the tap returned at each evaluation."""

    accepts_step_context = True

    def __init__(self, degree):
        super().__init__()
        self.w = torch.linspace(-1, 1, 16, dtype=torch.float64).reshape(1, 1, 4, 4)
        self.degree, self.seen = degree, []

    def block(self, t):
        s = t.reshape(-1, 1, 1, 1) / 1000
        return sum(self.w * s ** k for k in range(1, self.degree + 1))

    def forward(self, x, t, ctx=None):
        f = tap(ctx, "deep", self.block, t)
        self.seen.append((ctx.step, f, self.block(t)))
        return 0.1 * x + f


@pytest.mark.parametrize("interval", [2, 3])
@pytest.mark.parametrize("degree", [1, 2])
def test_taylorseer_order_one_is_exact_for_features_linear_in_the_step(interval, degree):
    x_T = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    errors = {}
    for order in range(degree + 1):
        net = PolynomialInStep(degree)
        den = taylorseer(fewstep.Denoiser(net, VPDiscrete.linear(), "eps"), interval, order=order, taps=("deep",))
        fewstep.sample(den, x_T, "dpm++2m", 9, grid="uniform")
        # order n is reached once n + 1 full steps lie behind an evaluation
        errors[order] = max(float((f - truth).abs().max()) for step, f, truth in net.seen if step > degree * interval)
    if degree == 1:  # the forecast is exact for a feature linear in the step; reuse (order 0) is not
        assert errors[1] < 1e-12 and errors[0] > 1e-4
    else:  # backward differences estimate the derivatives at a lag (the paper's eq. 7): better, not exact
        assert errors[2] < errors[1] < errors[0]


def test_taylor_forecast_is_exact_for_polynomials():
    f1 = lambda p: 3.0 - 2.0 * p  # noqa: E731
    d = None
    for p in (0.0, 3.0):
        d = taylor_update(d, p, f1(p), order=1)
    assert all(abs(taylor_forecast(d, p) - f1(p)) < 1e-12 for p in (4.0, 5.0, 3.5))
    assert taylor_forecast(taylor_update(None, 0.0, 7.0, order=2), 2.0) == 7.0  # order 0 until two full steps
    # second order from three full steps, uneven spacing: the paper's finite-difference Taylor series
    f2 = lambda p: p * p  # noqa: E731
    d = None
    for p in (0.0, 2.0, 4.0):
        d = taylor_update(d, p, f2(p), order=2)
    assert d[1][1] == pytest.approx(6.0) and d[1][2] == pytest.approx(2.0)
    assert taylor_forecast(d, 5.0) == pytest.approx(4 * 4 + 6 * 1 + 1.0)  # 16 + 6 k + k^2 at k = 1: 23 (truth 25)


def test_same_seed_same_image_at_any_batch_size(unet_den, dit_den):
    for den, spec in ((unet_den, "deepcache:2"), (unet_den, "encoder:2"), (unet_den, "taylorseer:interval=2,order=2"),
                      (dit_den, "taylorseer:interval=2,order=2")):
        four = _gen(apply_cache(den, spec), seeds=[3, 4, 5, 6])
        ones = torch.cat([_gen(apply_cache(den, spec), seeds=[s]) for s in (3, 4, 5, 6)])
        # float32 kernels round differently at other batch sizes (the plain sampler too, ~1e-5 relative
        # on these random networks); a cache mixing samples would differ by O(1)
        assert torch.allclose(four, ones, rtol=1e-4, atol=1e-4), spec


def test_the_cache_never_leaks_across_sample_calls(unet_den):
    cached = taylorseer(unet_den, 3, order=2)
    first = _gen(cached, seeds=[0, 1])
    _gen(cached, seeds=[7, 8], nfe=8)  # another trajectory, another grid
    again = _gen(cached, seeds=[0, 1])
    assert torch.equal(first, again) and torch.equal(first, _gen(taylorseer(unet_den, 3, order=2), seeds=[0, 1]))


def test_deepcache_on_a_network_without_a_deep_tap_says_so(dit_den):
    with pytest.raises(ValueError, match="'deep' block tap"):
        _gen(deepcache(dit_den, 2))
    with pytest.raises(ValueError, match="encoder propagation needs a UNet"):
        _gen(encoder_propagation(dit_den, 2))


@pytest.mark.parametrize("spec,message", [
    ("deepcach:3", r"unknown method 'deepcach' \(did you mean 'deepcache'\?\); valid methods and options: "
                   r"deepcache \(interval=3.*encoder \(.*taylorseer \(interval=3, order=1"),
    ("taylorseer:intervl=4", r"no option 'intervl' \(did you mean 'interval'\?\); valid options: interval=3, order=1"),
    ("taylorseer:order=9", "order must be an integer from 0 to 4"),
    ("deepcache:interval=x", "not a valid int"),
    ("deepcache:0", "interval must be a positive integer"),
    ("encoder:2,3", "needs a name"),
])
def test_bad_specs_get_one_clear_error(spec, message):
    with pytest.raises(ValueError, match=message):
        parse_cache(spec)


def test_specs_parse_once_and_round_trip(unet_den):
    spec = parse_cache("taylorseer:4,order=2,taps=deep+mid")
    assert spec.options == {"interval": 4, "order": 2, "taps": ("deep", "mid")}
    assert parse_cache(str(spec)) == spec and parse_cache("none") is None and parse_cache(None) is None
    wrapped = apply_cache(unet_den, spec)
    assert wrapped.spec == "taylorseer:interval=4,order=2,taps=deep+mid" and wrapped.sample_shape == (1, 8, 8)
    assert isinstance(apply_cache(unet_den, "deepcache:interval=2,nonuniform=true"), DeepCache)
    assert list(wrapped.networks()) == list(unet_den.networks())


def test_key_steps():
    assert key_steps(10, 3) == {0, 3, 6, 9} and key_steps(10, 1) == set(range(10))
    nonuniform = key_steps(50, 5, nonuniform=True, center=0.5)
    gaps = np.diff(sorted(nonuniform))
    assert len(nonuniform) == 10 and 0 in nonuniform and gaps.min() < 5 < gaps.max()
    early = sorted(key_steps(20, 4, nonuniform=True, center=0.0))
    assert early == [0, 2, 5, 9, 14]  # gaps grow: dense at the start


def test_sample_function_records_the_cache_and_its_costs(unet_den):
    fn = solver_sample_fn(unet_den, (1, 8, 8), "dpm++2m", 6, cache="deepcache:3")
    assert fn.description["cache"] == "deepcache:interval=3" and fn.evals_used is None
    fn([0, 1])
    fn([2])
    assert fn.evals_used == {"full_evals": 2.0, "cached_evals": 4.0} and fn.nfe_used == 6
    plain = solver_sample_fn(unet_den, (1, 8, 8), "dpm++2m", 6)
    assert "cache" not in plain.description and plain.evals_used is None
    assert torch.equal(fn([5]), _gen(deepcache(unet_den, 3), seeds=[5]))


def test_cli_sample_with_a_cache(tmp_path, capsys):
    import json

    from conftest import tiny_config, tiny_images

    np.savez(tmp_path / "data.npz", images=tiny_images().numpy())
    (tmp_path / "cfg.json").write_text(json.dumps(tiny_config(steps=1)))
    assert main(["train", "--data", str(tmp_path / "data.npz"), "--config", str(tmp_path / "cfg.json"),
                 "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    base = ["sample", "--model", str(tmp_path / "run"), "--nfe", "6", "--n", "3", "--no-progress"]
    assert main(base + ["--cache", "deepcache:3", "--out", str(tmp_path / "c.npz")]) == 0
    assert "deepcache:interval=3: 2 full and 4 cached network evaluations in 1 batches" in capsys.readouterr().out
    assert main(base + ["--out", str(tmp_path / "p.npz")]) == 0
    cached, plain = np.load(tmp_path / "c.npz")["images"], np.load(tmp_path / "p.npz")["images"]
    assert cached.shape == plain.shape == (3, 8, 8, 1)
    assert main(base + ["--cache", "taylorseer:interval=2,order=2", "--out", str(tmp_path / "folder")]) == 0
    assert main(base + ["--out", str(tmp_path / "folder")]) == 1  # a folder made with a cache refuses other settings
    capsys.readouterr()
    assert main(base + ["--cache", "deepcache:intervl=3", "--out", str(tmp_path / "x.png")]) == 1
    assert "did you mean 'interval'" in capsys.readouterr().err


# ----------------------------------------------------------------------------- step-aware model schedules

def _gaussian_data(tmp_path, n=500):
    """uint8 8x8 images with correlated pixels, saved as .npy; returns the path and them in [-1, 1]."""
    g = torch.Generator().manual_seed(3)
    base = torch.randn(n, 1, generator=g) * 40 + 128 + torch.randn(n, 64, generator=g) * 20
    imgs = base.clamp(0, 255).round().to(torch.uint8).reshape(n, 1, 8, 8)
    path = tmp_path / "data.npy"
    np.save(path, imgs.numpy())
    return str(path), imgs.double().reshape(n, -1) / 127.5 - 1


def test_gaussian_steps_route_the_first_steps_to_the_data_gaussian(tmp_path, unet_den):
    from fewstep.accel import gaussian_steps
    from fewstep.accel.stepaware import data_gaussian

    path, x = _gaussian_data(tmp_path)
    mix = data_gaussian(path, (1, 8, 8))
    cov = torch.from_numpy(np.cov(x.numpy(), rowvar=False))
    assert torch.allclose(mix.mean, x.mean(0), atol=1e-6) and torch.allclose(mix.covariance, cov, atol=1e-6)
    # its denoiser is Tweedie's formula for one Gaussian: mu + C (C + s^2 I)^-1 (y - mu), y = x_t / alpha
    proc = unet_den.process
    t = torch.tensor(700.0)
    xt = torch.randn(4, 1, 8, 8, dtype=torch.float64)
    a, s = float(proc.alpha(t)), float(proc.sigma(t))
    y = xt.reshape(4, -1) / a
    want = x.mean(0) + (cov @ torch.linalg.solve(cov + (s / a) ** 2 * torch.eye(64, dtype=torch.float64),
                                                 (y - x.mean(0)).T)).T
    got = mix.denoiser(proc).predict(xt.float(), t).x0.reshape(4, -1).double()
    assert torch.allclose(got, want, atol=1e-4)
    # steps < k go to the Gaussian (all stages of a step), the rest to the network
    plain = _gen(unet_den, nfe=6)
    assert torch.equal(_gen(gaussian_steps(unet_den, 0, path), nfe=6), plain)
    for solver, nfe, k, counts in [("dpm++2m", 6, 2, (4, 2)), ("heun", 7, 1, (5, 2)), ("unipc", 6, 6, (0, 6))]:
        den = apply_cache(unet_den, f"gaussian:steps={k},data={path}")
        out = _gen(den, solver=solver, nfe=nfe)
        assert (den.full_evals, den.cached_evals) == counts, (solver, k)
        assert not torch.equal(out, _gen(unet_den, solver=solver, nfe=nfe))
    # the whole solve through the Gaussian is the solve of the exact Gaussian model
    exact = mix.denoiser(proc)
    assert torch.allclose(_gen(gaussian_steps(unet_den, 6, path), nfe=6), _gen(exact, nfe=6), atol=1e-5)
    assert str(parse_cache("gaussian:3")) == "gaussian:steps=3"


def test_gaussian_steps_errors_are_clear(tmp_path, unet_den):
    with pytest.raises(ValueError, match="steps must be a non-negative integer"):
        parse_cache("gaussian:steps=-1")
    with pytest.raises(FileNotFoundError, match="not found"):
        _gen(apply_cache(unet_den, f"gaussian:steps=2,data={tmp_path / 'missing.npy'}"))
    path, _ = _gaussian_data(tmp_path)
    with pytest.raises(ValueError, match="unconditional"):
        apply_cache(unet_den, f"gaussian:data={path}").predict(torch.zeros(1, 1, 8, 8), 999.0,
                                                                ctx=StepContext(None, 0), class_labels=torch.tensor([1]))
