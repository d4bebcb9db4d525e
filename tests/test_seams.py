"""The seams other methods build on: prediction maths with one owner, the sampling context, network
taps, metadata through wrappers, checked solver options and sampling without autograd."""

import math

import pytest
import torch

import fewstep
from fewstep import solvers
from fewstep.context import StepContext, tap
from fewstep.denoisers import ClassifierFreeGuidance, Denoiser, DenoiserWrapper, NFECounter
from fewstep.nets import build_net
from fewstep.parametrization import PREDICTION_TYPES, parametrization
from fewstep.processes import EDM, RectifiedFlow, VPDiscrete, VPLinear
from fewstep.solvers import NonFiniteError
from fewstep.training.losses import diffusion_loss

from conftest import TINY_UNET

PROCESSES = {"vp": VPDiscrete.linear(1000), "vp_cont": VPLinear(), "edm": EDM(), "flow": RectifiedFlow()}


# ----------------------------------------------------------------------------- one owner of the prediction maths

@pytest.mark.parametrize("proc", list(PROCESSES))
@pytest.mark.parametrize("prediction", PREDICTION_TYPES)
def test_prediction_of_the_target_is_the_truth(proc, prediction):
    """A network that outputs exactly the training target yields exactly the (x0, eps) that made x_t,
    for one time per batch (float) and per-sample times (tensor)."""
    process = PROCESSES[proc]
    param = parametrization(prediction, process, 0.5)
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(3, 2, 4, 4, generator=g, dtype=torch.float64), torch.randn(3, 2, 4, 4, generator=g, dtype=torch.float64)
    lo, hi = float(process.t_of_sigma_hat(20.0)), float(process.t_of_sigma_hat(0.05))
    t = torch.tensor([lo, 0.5 * (lo + hi), hi], dtype=torch.float64)
    a, s = param.alpha_sigma(x0, t)
    p = param.prediction(a * x0 + s * eps, t, param.target(x0, eps, t))
    assert torch.allclose(p.x0, x0, atol=1e-9) and torch.allclose(p.eps, eps, atol=1e-9)
    t1 = float(t[1])
    a1, s1 = param.alpha_sigma(x0, t1)
    p1 = param.prediction(a1 * x0 + s1 * eps, t1, param.target(x0, eps, t.new_full((3,), t1)))
    assert torch.allclose(p1.x0, x0, atol=1e-9) and torch.allclose(p1.eps, eps, atol=1e-9)


@pytest.mark.parametrize("prediction", PREDICTION_TYPES)
def test_loss_and_denoiser_call_the_network_identically(prediction):
    """Training and sampling see the network through the same parametrization: same input, same time."""
    process = PROCESSES["vp_cont"]
    seen = []

    def net(x, t_in):
        seen.append((x.clone(), t_in.clone()))
        return torch.zeros_like(x)

    g = torch.Generator().manual_seed(1)
    x0, eps = torch.randn(2, 1, 4, 4, generator=g), torch.randn(2, 1, 4, 4, generator=g)
    t = torch.tensor([0.3, 0.7], dtype=torch.float64)
    diffusion_loss(net, prediction, process, x0, t, eps)
    a, s = parametrization(prediction, process).alpha_sigma(x0, t)
    Denoiser(net, process, prediction).predict(a * x0 + s * eps, t)
    (x_loss, t_loss), (x_den, t_den) = seen
    assert torch.allclose(x_loss, x_den) and torch.equal(t_loss, t_den)


# ----------------------------------------------------------------------------- the sampling context

class ContextRecorder(torch.nn.Module):
    """A network that takes the sampling context and records (step, stage, state, steps) of each call."""

    accepts_step_context = True

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, x, t, ctx=None):
        self.calls.append(None if ctx is None else (ctx.step, ctx.stage, ctx.state, ctx.schedule.steps))
        return 0.1 * x


FIXED = [s.name for s in solvers.specs() if s.fixed_nfe]


@pytest.mark.parametrize("solver", FIXED)
def test_every_evaluation_knows_its_step_and_stage(solver):
    net = ContextRecorder()
    den = NFECounter(ClassifierFreeGuidance(Denoiser(net, VPLinear(), "eps"), 1.0, {}))
    nfe = 7
    x_T = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    fewstep.sample(den, x_T, solver, nfe, generator=fewstep.generators([0, 1]))
    calls = net.calls
    assert len(calls) == nfe and None not in calls, "the context must reach the network through every wrapper"
    steps_total = calls[0][3]
    assert all(c[2] is calls[0][2] for c in calls), "one state dict for the whole trajectory"
    main = [c[0] for c in calls if c[1] == 0]
    assert main == sorted(main) and len(set(main)) == len(main), "one main evaluation per step, in order"
    assert all(0 <= c[0] < steps_total for c in calls)
    extra = [c for c in calls if c[1] > 0]
    assert len(main) + len(extra) == nfe
    # a second call gets a fresh state
    net.calls = []
    fewstep.sample(den, x_T, solver, nfe, generator=fewstep.generators([0, 1]))
    assert net.calls[0][2] is not calls[0][2]


def test_heun_marks_its_corrections_as_stage_one():
    net = ContextRecorder()
    fewstep.sample(Denoiser(net, EDM(), "eps"), torch.randn(1, 1, 4, 4), "heun", 9)
    assert [(c[0], c[1]) for c in net.calls] == [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1), (3, 0), (3, 1), (4, 0)]


@pytest.mark.parametrize("solver", solvers.available())
def test_callback_carries_x0(solver, gmm8):
    den = gmm8.denoiser(VPLinear())
    seen = []
    x_T = torch.randn(3, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    nfe = 200 if solver == "dpm_adaptive" else 8
    out = fewstep.sample(den, x_T, solver, nfe, generator=fewstep.generators([0, 1, 2]), callback=seen.append)
    assert seen, "the callback is called"
    for info in seen:
        assert isinstance(info["x0"], torch.Tensor) and info["x0"].shape == x_T.shape
        assert math.isfinite(float(info["x0"].sum()))
    assert torch.equal(seen[-1]["x"], out)


def test_unet_taps_name_its_blocks_and_can_replace_them():
    torch.manual_seed(0)
    net = build_net(dict(TINY_UNET)).eval()
    for p in net.parameters():  # the output layer starts at zero: make every block matter
        torch.nn.init.normal_(p, std=0.3)
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([10.0, 500.0])
    plain = net(x, t)
    names = []

    def record(ctx, name, compute, *args):
        names.append(name)
        return compute(*args)

    ctx = StepContext(schedule=None, step=0, tap=record)
    assert torch.equal(net(x, t, ctx=ctx), plain)
    groups = len(net.down)
    assert names[:3] == ["in", "down.0", "deep"] and names[-1] == f"up.{len(net.up) - 1}"
    assert {f"down.{k}" for k in range(groups)} | {"mid"} <= set(names)

    cached = {}

    def deep_cache(ctx, name, compute, *args):  # DeepCache's skeleton: compute "deep" once, reuse it
        if name != "deep":
            return compute(*args)
        if name not in cached:
            cached[name] = compute(*args)
        return cached[name]

    ctx = StepContext(schedule=None, step=0, tap=deep_cache)
    assert torch.equal(net(x, t, ctx=ctx), plain)
    other = net(x, t.flip(0), ctx=ctx)  # the deep features of the first call are reused
    assert not torch.equal(other, net(x, t.flip(0)))
    assert tap(None, "x", lambda v: v + 1, 1) == 2


def test_dit_taps_every_block():
    torch.manual_seed(0)
    net = build_net({"kind": "dit", "in_channels": 1, "resolution": 8, "patch_size": 2, "width": 16,
                     "depth": 3, "heads": 2}).eval()
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.3)
    names = []
    ctx = StepContext(schedule=None, step=0, tap=lambda c, n, f, *a: (names.append(n), f(*a))[1])
    x, t = torch.randn(1, 1, 8, 8), torch.tensor([3.0])
    assert torch.equal(net(x, t, ctx=ctx), net(x, t))
    assert names == ["block.0", "block.1", "block.2"]


# ----------------------------------------------------------------------------- metadata and networks

def test_metadata_and_networks_are_read_through_wrappers():
    net = torch.nn.Conv2d(1, 1, 1)
    den = Denoiser(net, VPLinear(), "eps", sample_shape=(1, 4, 4), config={"a": 1})
    wrapped = NFECounter(ClassifierFreeGuidance(den, 2.0, {}))
    assert wrapped.sample_shape == (1, 4, 4) and wrapped.config == {"a": 1}
    assert list(wrapped.networks()) == [net]
    wrapped.map_networks(lambda m: torch.nn.Sequential(m))
    assert isinstance(den.net, torch.nn.Sequential) and den.net[0] is net
    assert Denoiser(lambda x, t: x, VPLinear()).sample_shape is None
    assert list(Denoiser(lambda x, t: x, VPLinear()).networks()) == []


# ----------------------------------------------------------------------------- options and autograd

def test_unknown_and_plan_overriding_options_are_refused(gmm8):
    den = gmm8.denoiser(VPLinear())
    x_T = torch.randn(2, 8, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"no option 'etaa'.*did you mean 'eta'"):
        fewstep.sample(den, x_T, "ddim", 6, etaa=1.0)
    with pytest.raises(ValueError, match=r"'heun_steps'.*set from nfe"):
        fewstep.sample(den, x_T, "heun", 9, heun_steps=0)
    with pytest.raises(ValueError, match=r"cond="):
        fewstep.sample(den, x_T, "dpm++2m", 6, class_labels=torch.tensor([0, 1]))
    with pytest.raises(TypeError, match="cond must be a dict"):
        fewstep.sample(den, x_T, "dpm++2m", 6, cond=[1])
    assert solvers.get("ddim").options == {"eta": 0.0}
    fewstep.sample(den, x_T, "dpm_adaptive", 40, rtol=0.5)  # a solver without a fixed NFE takes its options


def test_conditioning_reaches_the_network():
    seen = []

    def net(x, t, class_labels=None):
        seen.append(class_labels)
        return torch.zeros_like(x)

    labels = torch.tensor([3, 4])
    fewstep.sample(Denoiser(net, VPLinear()), torch.randn(2, 1, 2, 2), "dpm++2m", 3, cond={"class_labels": labels})
    assert len(seen) == 3 and all(torch.equal(s, labels) for s in seen)


class ConvNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 1, 3, padding=1)

    def forward(self, x, t):
        return self.conv(x)


def test_sampling_builds_no_graph_unless_asked():
    torch.manual_seed(0)
    net = ConvNet()
    den = Denoiser(net, VPLinear(), "eps")
    out = fewstep.generate(den, (1, 4, 4), range(2), "dpm++2m", 4)
    assert not out.requires_grad
    out.add_(1.0)  # an ordinary tensor: in-place updates work outside inference mode
    x_T = torch.randn(2, 1, 4, 4, requires_grad=True)
    out = fewstep.sample(den, x_T, "dpm++2m", 4, grad=True)
    out.sum().backward()
    assert x_T.grad is not None and net.conv.weight.grad is not None


def test_empty_seeds_and_nan_networks_get_clear_errors():
    den = Denoiser(lambda x, t: torch.full_like(x, float("nan")), VPLinear())
    with pytest.raises(ValueError, match="seeds is empty"):
        fewstep.generate(den, (1, 2, 2), [], "ddim", 3)
    with pytest.raises(NonFiniteError, match="dpm_adaptive"):
        fewstep.generate(den, (1, 2, 2), [0], "dpm_adaptive", 20)


class Doubling(DenoiserWrapper):
    """A user wrapper that forwards the context without knowing about it."""


def test_custom_wrappers_forward_the_context():
    net = ContextRecorder()
    fewstep.sample(Doubling(Denoiser(net, VPLinear())), torch.randn(1, 1, 2, 2), "ddim", 3)
    assert [c[:2] for c in net.calls] == [(0, 0), (1, 0), (2, 0)]


def test_the_bundled_unet_taps_its_input_convolution_without_changing_its_output():
    """The ``in`` tap (encoder propagation caches the input convolution): a pass-through handler and no
    context give bit-identical outputs of the bundled model."""
    from fewstep.loading import load_model

    net = next(load_model("bundled:fashion").networks()).eval()
    x, t = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(0)), torch.tensor([10.0, 700.0])
    names = []
    ctx = StepContext(schedule=None, step=0, tap=lambda c, n, f, *a: (names.append(n), f(*a))[1])
    with torch.inference_mode():
        assert torch.equal(net(x, t, ctx=ctx), net(x, t))
    assert names[0] == "in" and names.count("in") == 1
