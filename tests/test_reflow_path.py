"""Path distillation (fewstep.reflow.path): the k-step solve trained end to end onto the reflow pairs."""

from __future__ import annotations

import json

import pytest
import torch

import fewstep
from conftest import PATH_RUN_ARGS, path_run_variants, tiny_encoder, tiny_teacher
from fewstep.plan import make_plan
from fewstep.processes import RectifiedFlow, VPDiscrete
from fewstep.reflow import load_pairs
from fewstep.reflow.path import path_loss, path_plan


class _GatedNet(torch.nn.Module):
    """A float64 network with one parameter used at every time and one only below ``t_gate`` (model time): in a
    two-step solve from the start the second parameter acts at the second evaluation alone."""

    def __init__(self, t_gate: float):
        super().__init__()
        self.a = torch.nn.Parameter(torch.tensor(0.7, dtype=torch.float64))
        self.b = torch.nn.Parameter(torch.tensor(-0.3, dtype=torch.float64))
        self.t_gate = t_gate

    def forward(self, x, t):
        late = (t.to(torch.float64) < self.t_gate).to(x.dtype).reshape(-1, *([1] * (x.dim() - 1)))
        return self.a * torch.tanh(x) + late * self.b * x


def _pairs(n=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 3, 3, generator=g, dtype=torch.float64), torch.randn(n, 1, 3, 3, generator=g,
                                                                                   dtype=torch.float64)


def test_one_step_path_loss_is_liu_et_al_distillation():
    """k = 1 on rectified flow with flow prediction: ``|| z - t0 v(z, t0) - x1 ||^2``, Liu et al. sec. 2.3's one-step
    distillation (their t = 1 is fewstep's start time t0, just below 1)."""
    proc = RectifiedFlow()
    net = _GatedNet(t_gate=-1.0)
    den = fewstep.Denoiser(net, proc, "flow")
    z, x1 = _pairs()
    plan = path_plan(den, "euler", 1)
    t0 = float(proc.t_start)
    want = (z - t0 * net(z, torch.full((len(z),), t0)) - x1).square().flatten(1).mean(1)
    torch.testing.assert_close(path_loss(den, plan, z, x1), want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("solver", ["euler", "ddim", "dpm++2m"])
def test_two_step_path_loss_and_its_gradient_are_those_of_the_sampler(solver):
    """The loss is the squared error of exactly what ``fewstep.sample`` returns for the plan, and its gradient matches
    central differences of that sampled error, including the parameter that acts at the second evaluation only
    (backpropagation runs through both steps)."""
    proc = VPDiscrete.linear()
    net = _GatedNet(t_gate=700.0)
    den = fewstep.Denoiser(net, proc, "v")
    z, x1 = _pairs()
    plan = path_plan(den, solver, 2, [999.0, 600.0, 0.0])
    assert plan.times.tolist()[:2] == [999.0, 600.0]

    def sampled_error() -> float:
        out = fewstep.sample(den, proc.prior_std * z, plan)
        return float((out - x1).square().flatten(1).mean(1).sum())

    loss = path_loss(den, plan, z, x1)
    assert abs(float(loss.detach().sum()) - sampled_error()) < 1e-10
    grads = torch.autograd.grad(loss.sum(), [net.a, net.b])
    for param, grad in zip([net.a, net.b], grads):
        h = 1e-6
        with torch.no_grad():
            param += h
            up = sampled_error()
            param -= 2 * h
            down = sampled_error()
            param += h
        assert abs(float(grad)) > 1e-4
        assert float(grad) == pytest.approx((up - down) / (2 * h), rel=1e-5)


def test_path_plans_refuse_what_cannot_be_unrolled():
    den = fewstep.Denoiser(_GatedNet(0.0), VPDiscrete.linear(), "v")
    with pytest.raises(ValueError, match="stochastic"):
        path_plan(den, "ddpm", 2)
    with pytest.raises(ValueError, match="3 times"):
        path_plan(den, "euler", 2, [999.0, 0.0])


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    return tiny_teacher(tmp_path_factory.mktemp("teacher"), steps=2)


def _two_step_error(model: str, pairs_dir) -> float:
    den = fewstep.load_model(model)
    z, x1, _ = load_pairs(pairs_dir)
    plan = make_plan(den, "euler", 2, [999.0, 600.0, 0.0])
    return float((fewstep.sample(den, den.process.prior_std * z, plan) - x1).square().mean())


def test_reflow_command_distils_the_two_step_path_from_a_finished_run(teacher, tmp_path, capsys):
    """``--init-from`` a reflow run and ``--path-weight 1`` on its shared pairs (``--pairs-dir``): the run records the
    path settings and its two-step solve lands several times closer to the pairs' endpoints."""
    from fewstep.cli import main
    from fewstep.checkpoint import read_config

    common = ["--teacher", teacher, "--pairs", "8", "--nfe", "2", "--batch-size", "8", "--sample-every", "0",
              "--checkpoint-every", "0", "--no-progress"]
    first = tmp_path / "reflow"
    assert main(["reflow", "--out", str(first), *common, "--steps", "2"]) == 0
    start = str(first / "checkpoints" / "step-00000002")
    out = tmp_path / "path"
    args = ["reflow", "--out", str(out), *common, "--pairs-dir", str(first / "pairs"), "--init-from", start,
            "--path-weight", "1", "--path-times", "999,600,0", "--lr", "3e-3", "--steps", "60"]
    assert main(args) == 0
    assert not (out / "pairs").exists()  # the shared pairs were reused
    cfg = read_config(out / "checkpoints" / "step-00000060")
    assert cfg["objective"]["init_from"] == start and cfg["objective"]["path_weight"] == 1.0
    assert cfg["objective"]["path_times"] == [999.0, 600.0, 0.0]
    before, after = _two_step_error(start, first / "pairs"), _two_step_error(str(out / "checkpoints" / "step-00000060"),
                                                                             first / "pairs")
    assert after < before / 3, (before, after)
    capsys.readouterr()
    assert main([*args[:-1], "61", "--resume", "--path-weight", "0.5"]) == 1  # resuming keeps the objective
    assert "--path-weight (0.5; the run has 1.0)" in capsys.readouterr().err
    assert main([*args[:-1], "61", "--resume"]) == 0  # the same flags resume
    capsys.readouterr()
    bad = ["reflow", "--out", str(tmp_path / "bad"), *common, "--pairs-dir", str(first / "pairs")]
    assert main([*bad, "--path-weight", "1.5"]) == 1
    assert "path_weight must be in [0, 1]" in capsys.readouterr().err
    assert main([*bad, "--path-weight", "1", "--path-times", "999;0"]) == 1
    assert "comma-separated" in capsys.readouterr().err
    assert main([*bad, "--init-from", start, "--process", "rectified_flow"]) == 1
    assert "--init-from needs the teacher's process" in capsys.readouterr().err
    assert json.loads((first / "pairs" / "pairs.json").read_text())["n"] == 8


def test_pseudo_huber_path_distance_is_icts_distance_per_dimension():
    """``pseudo_huber`` is iCT's ``sqrt(||x - y||^2 + c_d^2) - c_d`` divided by ``sqrt(d)`` with ``c_d = c sqrt(d)``
    (default iCT's c = 0.00054): quadratic (``mse / 2c``) for small errors, the RMSE for large ones; and the k = 1
    path loss under it is that distance of Liu et al.'s one step."""
    from fewstep.reflow.path import path_distance

    z, x1 = _pairs()
    d = z[0].numel()
    for c in (0.1, 0.0):
        dist = path_distance("pseudo_huber", huber_c=c)(z, x1)
        c_d = (c or 0.00054) * d**0.5
        icts = (torch.sqrt((z - x1).square().flatten(1).sum(1) + c_d**2) - c_d) / d**0.5
        torch.testing.assert_close(dist, icts, rtol=1e-12, atol=1e-14)
    small, large = 1e-3 * x1, 10 * x1
    zero = torch.zeros_like(x1)
    mse = lambda a: a.square().flatten(1).mean(1)  # noqa: E731
    torch.testing.assert_close(path_distance("pseudo_huber", huber_c=1.0)(small, zero), mse(small) / 2, rtol=1e-4,
                               atol=0)
    torch.testing.assert_close(path_distance("pseudo_huber", huber_c=1e-6)(large, zero), mse(large).sqrt(), rtol=1e-5,
                               atol=0)
    proc = RectifiedFlow()
    net = _GatedNet(t_gate=-1.0)
    den = fewstep.Denoiser(net, proc, "flow")
    t0 = float(proc.t_start)
    one_step = z - t0 * net(z, torch.full((len(z),), t0))
    got = path_loss(den, path_plan(den, "euler", 1), z, x1, path_distance("pseudo_huber", huber_c=0.1))
    torch.testing.assert_close(got, path_distance("pseudo_huber", huber_c=0.1)(one_step, x1), rtol=1e-10, atol=1e-12)


class _OneMapEncoder(torch.nn.Module):
    """An encoder with ``features`` only (no ``stage_features``): the perceptual distance uses its single map."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 3, 3, padding=1).double()

    def features(self, x):
        return self.conv(x)


def test_perceptual_distance_is_the_unweighted_lpips_sum_over_the_encoders_stages():
    """LPIPS eq. 1 with unit weights over the stages of a PatchEncoder (the last one its ``features``), plus the
    pixels' mean squared error; zero between equal images, blind to a scaling of a feature map (the unit
    normalisation), gradients to the image only."""
    from fewstep.nets.encoder import EncoderConfig, PatchEncoder
    from fewstep.training.perceptual import encoder_stages, perceptual_distance

    torch.manual_seed(0)
    enc = PatchEncoder(EncoderConfig(resolution=8, channels=4, feature_dim=6)).double().eval().requires_grad_(False)
    x, y = torch.rand(3, 1, 8, 8, dtype=torch.float64) * 2 - 1, torch.rand(3, 1, 8, 8, dtype=torch.float64) * 2 - 1
    stages = encoder_stages(enc, x)
    assert [s.shape[-1] for s in stages] == [8, 4, 2] and torch.equal(stages[-1], enc.features(x))
    torch.testing.assert_close(stages[1], enc.body[:10](x))

    def unit(f):
        return f / f.norm(dim=1, keepdim=True)

    want = (x - y).square().flatten(1).mean(1)
    for a, b in zip(encoder_stages(enc, x), encoder_stages(enc, y)):
        want = want + (unit(a) - unit(b)).square().sum(1).flatten(1).mean(1)
    x.requires_grad_(True)
    got = perceptual_distance(enc, x, y)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)
    assert float(got.detach().min()) > 0 and float(perceptual_distance(enc, y, y).abs().max()) < 1e-9
    (grad,) = torch.autograd.grad(got.sum(), [x])
    assert float(grad.abs().max()) > 0
    one = _OneMapEncoder()
    with torch.no_grad():
        a, b = one.features(x), one.features(y)
        only = (x - y).square().flatten(1).mean(1) + (unit(a) - unit(b)).square().sum(1).flatten(1).mean(1)
        torch.testing.assert_close(perceptual_distance(one, x, y), only, rtol=1e-9, atol=1e-12)
        one.conv.weight *= 3.0
        one.conv.bias *= 3.0  # every feature vector scaled by 3: the same distance
        torch.testing.assert_close(perceptual_distance(one, x, y), only, rtol=1e-9, atol=1e-12)


def test_path_metric_settings_are_checked():
    from fewstep.reflow.objective import ReflowSettings
    from fewstep.reflow.path import path_distance

    for bad, match in [(dict(path_weight=1, path_metric="lpips"), "unknown objective.path_metric"),
                       (dict(path_weight=1, path_metric="perceptual"), "needs objective.path_encoder"),
                       (dict(path_weight=1, path_encoder="enc"), "needs objective.path_encoder"),
                       (dict(path_weight=1, path_huber_c=0.1), "path_huber_c is set"),
                       (dict(path_metric="pseudo_huber"), "no effect with path_weight 0")]:
        with pytest.raises(ValueError, match=match):
            ReflowSettings(**bad).check()
    with pytest.raises(ValueError, match="needs an encoder"):
        path_distance("perceptual")
    with pytest.raises(ValueError, match="only used by the 'perceptual'"):
        path_distance("l2", encoder=_OneMapEncoder())


def test_reflow_command_trains_the_path_under_a_perceptual_metric(teacher, tmp_path, capsys):
    """``--path-metric perceptual --path-encoder ENC``: the run records the metric, its loss is the perceptual distance
    of the two-step solve (above the plain MSE), the encoder is neither trained nor saved, and a resume may not
    change the metric."""
    from fewstep.cli import main
    from fewstep.checkpoint import read_config

    enc = tiny_encoder(tmp_path / "enc")
    common = ["--teacher", teacher, "--pairs", "8", "--nfe", "2", "--batch-size", "8", "--sample-every", "0",
              "--checkpoint-every", "0", "--no-progress", "--path-weight", "1", "--path-times", "999,600,0"]
    out = tmp_path / "perc"
    args = ["reflow", "--out", str(out), *common, "--path-metric", "perceptual", "--path-encoder", enc, "--steps", "2"]
    assert main(args) == 0
    step = out / "checkpoints" / "step-00000002"
    cfg = read_config(step)
    assert cfg["objective"]["path_metric"] == "perceptual" and cfg["objective"]["path_encoder"] == enc
    assert not any("encoder" in f.name for f in step.iterdir())
    l2 = tmp_path / "l2"
    assert main(["reflow", "--out", str(l2), *common, "--pairs-dir", str(out / "pairs"), "--steps", "2"]) == 0
    first = [json.loads((d / "log.jsonl").read_text().splitlines()[0])["loss"] for d in (out, l2)]
    assert first[0] > first[1] > 0  # the same model and first batch: the perceptual distance adds to the MSE
    capsys.readouterr()
    assert main([*args[:-1], "3", "--resume", "--path-metric", "l2"]) == 1
    assert "--path-metric ('l2'; the run has 'perceptual')" in capsys.readouterr().err
    bad = ["reflow", "--out", str(tmp_path / "bad"), *common, "--pairs-dir", str(out / "pairs")]
    assert main([*bad, "--path-metric", "perceptual"]) == 1
    assert "needs objective.path_encoder" in capsys.readouterr().err
    assert main([*bad, "--path-metric", "perceptual", "--path-encoder", str(tmp_path / "nowhere")]) == 1
    assert "not found" in capsys.readouterr().err


class _LinearCritic(torch.nn.Module):
    """``D(x) = w . x + b`` for every one of two patch logits: its input gradient is exactly ``w``."""

    def __init__(self, shape):
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(shape, dtype=torch.float64))
        self.b = torch.nn.Parameter(torch.tensor(0.2, dtype=torch.float64))

    def forward(self, x):
        d = (x * self.w).flatten(1).sum(1) + self.b
        return torch.stack([d, d], dim=1)


def test_adversarial_losses_are_the_non_saturating_gan_losses_with_r1():
    """``L_D = softplus(-D(real)) + softplus(D(fake)) + gamma / 2 ||grad D(real)||^2`` and ``L_G = softplus(-D(fake))``,
    checked on a linear critic whose input gradient is its weight; the R1 term's gradient reaches the critic (double
    backpropagation) and the discriminator loss sends none into the fake images."""
    import torch.nn.functional as F

    from fewstep.reflow.adversarial import discriminator_loss, generator_adversarial_loss

    torch.manual_seed(0)
    real, fake = torch.randn(4, 1, 3, 3, dtype=torch.float64), torch.randn(4, 1, 3, 3, dtype=torch.float64)
    fake.requires_grad_(True)
    critic = _LinearCritic((1, 3, 3))
    d = lambda x: (x * critic.w).flatten(1).sum(1) + critic.b  # noqa: E731
    gamma = 0.3
    got = discriminator_loss(critic, real, fake, gamma)
    want = F.softplus(-d(real)) + F.softplus(d(fake)) + gamma / 2 * critic.w.square().sum()
    torch.testing.assert_close(got, want.detach(), rtol=1e-12, atol=1e-12)
    (gw,) = torch.autograd.grad(got.sum(), [critic.w])
    (ww,) = torch.autograd.grad(want.sum(), [critic.w])
    torch.testing.assert_close(gw, ww, rtol=1e-10, atol=1e-12)  # includes the penalty's gamma * w per sample
    assert fake.grad is None
    torch.testing.assert_close(discriminator_loss(critic, real, fake, 0.0),
                               (F.softplus(-d(real)) + F.softplus(d(fake))).detach(), rtol=1e-12, atol=1e-12)
    g = generator_adversarial_loss(critic, fake)
    torch.testing.assert_close(g, F.softplus(-d(fake)), rtol=1e-12, atol=1e-12)
    (gx,) = torch.autograd.grad(g.sum(), [fake])
    torch.testing.assert_close(gx, -torch.sigmoid(-d(fake)).reshape(-1, 1, 1, 1) * critic.w, rtol=1e-10, atol=1e-12)


def test_reflow_command_adds_the_adversarial_term_after_its_start_step(teacher, tmp_path, capsys):
    """``--adv-weight W``: a discriminator phase (logged ``d_loss``) before the student's, saved in the checkpoint but
    never in the EMA nor the sampled model; before ``--adv-start-step`` the student's loss is the path loss alone (the
    same first-step loss as a run without the term), from it the loss adds ``W softplus(-D)``."""
    from fewstep.cli import main

    first = path_run_variants(teacher, tmp_path, {"late": ["--adv-weight", "0.5", "--adv-start-step", "5"],
                                                  "now": ["--adv-weight", "0.5"]})
    common = ["--teacher", teacher, *PATH_RUN_ARGS]
    now, pairs = tmp_path / "now", ["--pairs-dir", str(tmp_path / "plain" / "pairs")]
    assert first["late"]["losses"]["loss"] == pytest.approx(first["plain"]["loss"], rel=1e-5)
    extra = first["now"]["losses"]["loss"] - first["plain"]["loss"]
    assert 0.5 * 0.4 < extra < 0.5 * 1.1  # W softplus(-D) with D near 0 at the start: about W ln 2
    assert first["now"]["losses"]["d_loss"] == pytest.approx(2 * 0.6931, abs=0.2)
    step = now / "checkpoints" / "step-00000002"
    names = {f.name for f in step.iterdir()}
    assert "discriminator.safetensors" in names and "discriminator-ema.safetensors" not in names
    fewstep.load_model(str(step))  # an ordinary denoiser
    capsys.readouterr()
    assert main(["reflow", "--out", str(tmp_path / "bad"), *common, *pairs, "--path-weight", "0",
                 "--adv-weight", "0.5"]) == 1
    assert "adv_weight judges the few-step solve" in capsys.readouterr().err
