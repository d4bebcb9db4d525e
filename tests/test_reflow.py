"""Reflow (fewstep.reflow): the loss target is the pairs' straight-line velocity, a perfectly straight coupling
has zero loss in every parametrisation, one Euler step of a perfectly rectified model lands on the pair's
endpoint, the pairs are seeded, sharded and resumable, and `fewstep reflow` trains a loadable model."""

import json

import numpy as np
import pytest
import torch

import fewstep
from conftest import fashion_standin, tiny_teacher
from fewstep.parametrization import parametrization
from fewstep.processes import RectifiedFlow, VPDiscrete
from fewstep.reflow import draw_pairs, load_pairs, reflow_loss
from fewstep.training.losses import TIME_SAMPLERS

M, S = 0.3, 0.5  # the coupling z -> x1 = M + S z: Gaussian to Gaussian, straight and non-crossing


def _pairs(n=64, dim=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 1, dim, dim, generator=g, dtype=torch.float64)
    return z, M + S * z


def test_reflow_target_is_the_straight_line_velocity_of_the_pairs():
    """On rectified_flow + flow the loss of a network that outputs u is ||u - (z - x1)||^2 for any pairs, whatever
    the point of the path: output z - x1 -> 0; output 0 -> ||z - x1||^2."""
    proc = RectifiedFlow()
    g = torch.Generator().manual_seed(0)
    z = torch.randn(8, 1, 3, 3, generator=g, dtype=torch.float64)
    x1 = torch.randn(8, 1, 3, 3, generator=g, dtype=torch.float64)  # an arbitrary (crossing) coupling
    t = TIME_SAMPLERS["flow_uniform"](proc, 8, g)
    zero = reflow_loss(lambda x, tm: (z - x1), "flow", proc, z, x1, t, weighting="flow")
    assert float(zero.abs().max()) < 1e-12
    full = reflow_loss(lambda x, tm: torch.zeros_like(x), "flow", proc, z, x1, t, weighting="flow")
    torch.testing.assert_close(full.double(), (z - x1).square().flatten(1).mean(1), rtol=1e-6, atol=1e-9)
    # the target is the velocity of the straight path X_t = (1 - t) x1 + t z: d/dt X_t = z - x1
    torch.testing.assert_close(parametrization("flow", proc).target(x1, z, t), z - x1)


def _rectified_net(process, prediction):
    """The exact network of the straight coupling x1 = M + S z: on the path x = a x1 + s z the pair is recovered
    from x alone (z = (x - a M) / (a S + s)), so its output is the parametrisation's target for that pair."""
    param = parametrization(prediction, process)

    def net(x, t_model):
        t = t_model.to(torch.float64)  # model_time is t itself on these processes
        a = process.alpha(t).reshape(-1, 1, 1, 1)
        s = process.sigma(t).reshape(-1, 1, 1, 1)
        z = (x - a * M) / (a * S + s)
        return param.target(M + S * z, z, t)

    return net


@pytest.mark.parametrize("process,prediction", [(RectifiedFlow(), "flow"), (VPDiscrete.linear(), "v"),
                                                (VPDiscrete.linear(), "eps"), (RectifiedFlow(), "x0")],
                         ids=["rf-flow", "vp-v", "vp-eps", "rf-x0"])
def test_a_perfectly_straight_coupling_has_zero_loss(process, prediction):
    z, x1 = _pairs()
    t = TIME_SAMPLERS["flow_uniform"](process, len(z), torch.Generator().manual_seed(1))
    loss = reflow_loss(_rectified_net(process, prediction), prediction, process, z, x1, t, weighting="uniform")
    assert float(loss.abs().max()) < 1e-10
    # a coupling that is not the model's (x1 = M - S z) has a positive loss
    bad = reflow_loss(_rectified_net(process, prediction), prediction, process, z, M - S * z, t, weighting="uniform")
    assert float(bad.mean()) > 1e-3


@pytest.mark.parametrize("solver", ["euler", "ddim"])
def test_one_euler_step_of_a_perfectly_rectified_model_reproduces_the_endpoint(solver):
    proc = RectifiedFlow()
    den = fewstep.Denoiser(_rectified_net(proc, "flow"), proc, "flow")
    z, x1 = _pairs()
    t0 = float(proc.t_start)
    on_path = (1 - t0) * x1 + t0 * z  # the pair's straight path at the start time
    for nfe in (1, 2):
        torch.testing.assert_close(fewstep.sample(den, on_path, solver, nfe), x1, rtol=1e-10, atol=1e-10)
    # from the noise itself (t_max = 1 - 1e-3 < 1) the endpoint is missed only by the truncation
    assert float((fewstep.sample(den, z, solver, 1) - x1).abs().max()) < 5e-3


def test_pairs_are_seeded_sharded_and_resumable(tmp_path):
    teacher = fashion_standin()
    folder = draw_pairs(teacher, tmp_path / "p", 7, solver="ddim", nfe=2, seed=100, shard_size=3, batch_size=2,
                        teacher_name="standin", progress=False)
    assert sorted(p.name for p in folder.iterdir()) == ["pairs.json", "shard-00000.npz", "shard-00001.npz",
                                                        "shard-00002.npz"]
    noise, ends, man = load_pairs(folder)
    assert noise.shape == ends.shape == (7, 1, 28, 28) and man["n"] == 7 and man["teacher"] == "standin"
    seeds = list(range(100, 107))
    want = fewstep.generate(teacher, (1, 28, 28), seeds, "ddim", 2)
    # the endpoint of seed 100 + i, whatever the batch size (up to float32 rounding of batched BLAS, far below 1/255)
    torch.testing.assert_close(ends, want, atol=1e-4, rtol=1e-5)
    z = torch.stack([torch.randn(1, 28, 28, generator=g) for g in fewstep.generators(seeds)])
    torch.testing.assert_close(noise, z)
    with np.load(folder / "shard-00001.npz") as f:
        assert f["seeds"].tolist() == [103, 104, 105]
    # resume: a lost shard is drawn again identically, complete shards are kept, a larger n extends the folder
    before = (folder / "shard-00000.npz").stat().st_mtime_ns
    (folder / "shard-00001.npz").unlink()
    draw_pairs(teacher, folder, 8, solver="ddim", nfe=2, seed=100, shard_size=3, batch_size=5,
               teacher_name="standin", progress=False)
    assert (folder / "shard-00000.npz").stat().st_mtime_ns == before
    noise2, ends2, man2 = load_pairs(folder)
    assert man2["n"] == 8 and len(ends2) == 8
    torch.testing.assert_close(ends2[:7], ends)
    torch.testing.assert_close(load_pairs(folder, 5)[1], ends[:5])
    with pytest.raises(ValueError, match="other settings.*nfe"):
        draw_pairs(teacher, folder, 8, solver="ddim", nfe=3, seed=100, shard_size=3, teacher_name="standin",
                   progress=False)
    with pytest.raises(ValueError, match="stochastic"):
        draw_pairs(teacher, tmp_path / "q", 2, solver="ddpm", nfe=2)
    (folder / "shard-00002.npz").unlink()
    with pytest.raises(FileNotFoundError, match="incomplete"):
        load_pairs(folder)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    return tiny_teacher(tmp_path_factory.mktemp("teacher"), steps=2)


def test_reflow_command_warm_starts_trains_resumes_and_samples(teacher, tmp_path, capsys):
    from fewstep.cli import main
    from fewstep.checkpoint import read_config

    out = tmp_path / "run"
    base = ["reflow", "--teacher", teacher, "--out", str(out), "--pairs", "6", "--nfe", "2", "--batch-size", "4",
            "--sample-every", "0", "--checkpoint-every", "0", "--no-progress"]
    assert main([*base, "--pairs-only"]) == 0
    assert (out / "pairs" / "shard-00000.npz").exists() and not (out / "checkpoints").exists()
    assert main([*base, "--steps", "2"]) == 1  # pairs exist: --resume to reuse them
    assert main([*base, "--steps", "2", "--resume"]) == 0
    cfg = read_config(out / "checkpoints" / "step-00000002")
    assert cfg["objective"]["kind"] == "reflow" and cfg["objective"]["init_from"] == teacher
    assert cfg["process"]["kind"] == "vp_discrete" and cfg["prediction"] == "v"
    assert main([*base, "--steps", "3", "--resume", "--precision", "bf16"]) == 0
    assert "resumed from step 2" in capsys.readouterr().out
    assert read_config(out / "checkpoints" / "step-00000003")["training"]["precision"] == "bf16"
    den = fewstep.load_model(out)
    assert isinstance(den, fewstep.Denoiser) and den.prediction == "v"
    x = fewstep.generate(den, (1, 8, 8), [0, 1], "euler", 1)
    assert bool(torch.isfinite(x).all())
    # a rectified-flow student cannot start from a v-prediction teacher: it trains from scratch
    scratch = tmp_path / "rf"
    assert main(["reflow", "--teacher", teacher, "--out", str(scratch), "--pairs", "4", "--nfe", "2",
                 "--steps", "1", "--batch-size", "2", "--sample-every", "0", "--no-progress",
                 "--process", "rectified_flow"]) == 0
    assert "from scratch" in capsys.readouterr().out
    cfg = json.loads((scratch / "checkpoints" / "step-00000001" / "config.json").read_text())
    assert cfg["process"]["kind"] == "rectified_flow" and cfg["prediction"] == "flow"
    assert cfg["objective"]["init_from"] == ""
    assert main(["reflow", "--teacher", teacher, "--out", str(tmp_path / "x"), "--solver", "euler_a"]) == 1


def test_bundled_fashion_fewstep_samples_through_its_own_two_step_grid():
    """bundled:fashion-fewstep declares its plans its default: 2 NFE goes through the intermediate time chosen for
    it (any solver with an entry, none given), other NFEs and solvers keep the process's grid. The path-distilled
    solve's two steps (bundled:fashion-fewstep-v3) land near the teacher's 10-NFE ODE solution, nearer than the
    2-rectified flow it was distilled from (bundled:fashion-fewstep-v2); today's model, fine-tuned with distribution
    matching, lies between the two and far nearer than the teacher's own two steps; the 2-rectified
    flow's one step is far nearer than the teacher's one step (its coupling is straight)."""
    den = fewstep.load_model("bundled:fashion-fewstep")
    plan = fewstep.make_plan(den, nfe=2)
    from fewstep.attachments import attached
    from fewstep.grids.files import read_grid_file

    entry = next(e for e in read_grid_file(attached(den, "plan_file")).entries if (e.solver, e.nfe) == ("unipc", 2))
    assert plan.times.tolist() == entry.times and entry.times[1] != 499.5  # not the uniform grid's midpoint
    assert "default" in plan.sources and plan.grid.startswith("tuned")
    with pytest.warns(UserWarning, match="meant to be sampled"):  # its config declares NFE 1 and 2
        three = fewstep.make_plan(den, nfe=3)
    assert fewstep.make_plan(den, "ipndm", 2).grid == "uniform" and three.grid == "uniform"
    assert fewstep.make_plan(fewstep.load_model("bundled:fashion"), nfe=2).grid == "uniform"  # declared per model
    teacher = fewstep.load_model("bundled:fashion")
    seeds = range(8)
    target = fewstep.generate(teacher, (1, 28, 28), seeds, "unipc", 10)
    one = fewstep.generate(den, (1, 28, 28), seeds, "euler", 1)
    two = fewstep.generate(den, (1, 28, 28), seeds, nfe=2)
    assert torch.isfinite(two).all() and two.std() > 0.2

    def rmse(x):
        return float((x - target).pow(2).mean().sqrt())

    reflowed = fewstep.load_model("bundled:fashion-fewstep-v2")
    path_distilled = fewstep.generate(fewstep.load_model("bundled:fashion-fewstep-v3"), (1, 28, 28), seeds, nfe=2)
    assert rmse(path_distilled) < 0.8 * rmse(fewstep.generate(reflowed, (1, 28, 28), seeds, nfe=2))
    # distribution matching trades some of that pointwise agreement for the distribution (docs/training.md)
    assert rmse(path_distilled) < rmse(two) < rmse(fewstep.generate(reflowed, (1, 28, 28), seeds, nfe=2))
    assert rmse(two) < 0.7 * rmse(fewstep.generate(teacher, (1, 28, 28), seeds, "euler", 2))
    one_reflowed = fewstep.generate(reflowed, (1, 28, 28), seeds, "euler", 1)
    assert rmse(one_reflowed) < 0.7 * rmse(fewstep.generate(teacher, (1, 28, 28), seeds, "euler", 1))
    assert bool(torch.isfinite(one).all())


def test_a_few_step_generator_warns_outside_the_nfes_it_is_meant_for():
    """bundled:fashion-fewstep declares sampling.nfe = [1, 2] (its path-distilled solve is poor at 4 NFE: FID 29
    against its flow's 6.5): planning it at another NFE warns, at 1 and 2 it does not; models without the key never
    warn."""
    import warnings

    den = fewstep.load_model("bundled:fashion-fewstep")
    with pytest.warns(UserWarning, match=r"meant to be sampled at NFE 1, 2.*nfe=4"):
        fewstep.make_plan(den, "euler", 4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fewstep.make_plan(den, "euler", 2)
        fewstep.make_plan(den, "euler", 1)
        fewstep.make_plan(fewstep.load_model("bundled:fashion-fewstep-v2"), "euler", 4)
