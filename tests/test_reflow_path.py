"""Path distillation (fewstep.reflow.path): the k-step solve trained end to end onto the reflow pairs."""

from __future__ import annotations

import json

import pytest
import torch

import fewstep
from conftest import tiny_teacher
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
