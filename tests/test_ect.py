"""Easy Consistency Tuning (fewstep.distill.ect) and consistency models (fewstep.consistency): the boundary
condition by construction, the paper's r(t) schedule, a zero loss for the exact consistency function of an
exact model, the exact Gaussian flow map as a consistency model, multistep sampling, and a tiny run."""

import math

import pytest
import torch

import fewstep
from conftest import tiny_images, tiny_teacher
from fewstep.consistency import ConsistencyModel, consistency_x0, default_sigma_min
from fewstep.data import ImageData
from fewstep.distill import distill_config
from fewstep.distill.ect import ECTObjective, ECTSettings, ect_r, ect_stage
from fewstep.exact import GaussianMixture
from fewstep.parametrization import parametrization
from fewstep.processes import EDM, RectifiedFlow, VPDiscrete
from fewstep.training import Trainer

PROCESSES = [VPDiscrete.linear(), EDM(), RectifiedFlow()]


def _random_net(x, t):
    return torch.sin(3 * x + t.reshape(-1, *[1] * (x.ndim - 1)) / 100) + 0.3


@pytest.mark.parametrize("process", PROCESSES, ids=lambda p: type(p).__name__)
@pytest.mark.parametrize("prediction", ["v", "eps", "x0", "edm"])
def test_boundary_condition_holds_by_construction(process, prediction):
    """f(x, t_min) = x / alpha(t_min) for any network, scalar or per-sample times; away from t_min f stays near D."""
    den = ConsistencyModel(_random_net, process, prediction)
    x = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    t_min = float(process.t_min)
    a = float(process.alpha(t_min))
    torch.testing.assert_close(den.predict(x, t_min).x0, x / a, rtol=1e-6, atol=1e-6)
    t = torch.tensor([t_min, t_min, t_min], dtype=torch.float64)
    torch.testing.assert_close(den.predict(x, t).x0, x / a, rtol=1e-6, atol=1e-6)
    assert den.sigma_min == pytest.approx(default_sigma_min(process))
    # far from the boundary the blend is c = sigma_min / sigma_hat of the plain denoiser's prediction
    t_mid = float(process.t_of_sigma_hat(torch.tensor(1.0, dtype=torch.float64)))
    d = fewstep.Denoiser(_random_net, process, prediction).predict(x, t_mid).x0
    a, s = process.alpha_sigma(t_mid)
    c = den.sigma_min / (s / a)
    torch.testing.assert_close(den.predict(x, t_mid).x0, (1 - c) * d + c * x / a, rtol=1e-5, atol=1e-5)


def test_r_schedule_matches_the_papers_mapping_function():
    """r/t = 1 - (1 + k sigmoid(-b t)) / q^a (ECT eq. 9, q = 2, k = 8, b = 1), clipped at 0; a = ceil(iter / d)."""
    t = torch.tensor([10.0, 0.5, 1.0], dtype=torch.float64)
    sig = [1 / (1 + math.exp(10.0)), 1 / (1 + math.exp(0.5)), 1 / (1 + math.exp(1.0))]
    for stage in (1, 2, 3, 4, 8):
        want = [max(0.0, tt * (1 - (1 + 8 * s) / 2**stage)) for tt, s in zip(t.tolist(), sig)]
        torch.testing.assert_close(ect_r(t, stage), torch.tensor(want, dtype=torch.float64))
    # by hand: t = 10 at stage 1 -> 4.99818; t = 0.5 at stage 4 -> 0.374365; t = 1 at stage 1 -> 0 (clipped)
    assert float(ect_r(t, 1)[0]) == pytest.approx(4.998184, abs=1e-6)
    assert float(ect_r(t, 4)[1]) == pytest.approx(0.3743648, abs=1e-6)
    assert float(ect_r(t, 1)[2]) == 0.0
    # dt = t - r halves with every stage once r > 0; a = ceil(iteration / d) with iteration = step + 1
    dt = [float(10 - ect_r(t, a)[0]) for a in (1, 2, 3)]
    assert dt[0] / dt[1] == pytest.approx(2) and dt[1] / dt[2] == pytest.approx(2)
    assert [ect_stage(s, 100) for s in (0, 99, 100, 199, 200)] == [1, 1, 2, 2, 3]


def _bare_objective(process, prediction="x0", **settings) -> ECTObjective:
    """The ECT objective's loss without a teacher checkpoint (its maths needs only these attributes)."""
    obj = ECTObjective.__new__(ECTObjective)
    obj.process, obj.prediction, obj.sigma_data = process, prediction, 0.5
    obj.param = parametrization(prediction, process, 0.5)
    obj.settings = ECTSettings(**settings)
    obj.sigma_min = default_sigma_min(process)
    a, s = process.alpha_sigma(float(process.t_max))
    obj.sigma_max, obj.stage_steps = s / a, 10
    return obj


@pytest.mark.parametrize("process", [VPDiscrete.linear(), EDM()], ids=lambda p: type(p).__name__)
def test_loss_is_zero_for_the_exact_consistency_function_of_an_exact_model(process):
    """Data = a point mass at m: every trajectory is the straight line to m, the exact denoiser is m and its
    consistency function f = m + (sigma_min / sigma_hat)(y - m) agrees at t and r (and with the boundary value
    x0 + sigma_min eps when r = 0), at every stage; a model that is not a consistency function has a positive loss."""
    m = torch.linspace(-0.8, 0.8, 16, dtype=torch.float64).reshape(1, 1, 4, 4).repeat(32, 1, 1, 1)
    exact = lambda x, t: m[: len(x)]  # noqa: E731  (x0-prediction network: the point mass's denoiser)
    wrong = lambda x, t: m[: len(x)] + 0.2 * x  # noqa: E731  (not constant along the straight trajectories)
    for huber_c, weighting in ((0.0, "inv_dt"), (0.03, "snr")):
        obj = _bare_objective(process, huber_c=huber_c, weighting=weighting)
        g = torch.Generator().manual_seed(1)
        rs = []
        for step in (0, 15, 35, 75):
            t, r = obj.times(step, 32, g)
            rs.append(r)
            batch = {"x0": m, "t": t, "r": r, "eps": torch.randn(m.shape, generator=g, dtype=torch.float64)}
            loss = obj.loss(batch, {"model": exact})
            assert loss.shape == (32,) and float(loss.abs().max()) < 1e-4, (step, loss)
            assert float(obj.loss(batch, {"model": wrong}).mean()) > 1e-2
        rs = torch.cat(rs)
        assert bool((rs == 0).any()) and bool((rs > 0).any())  # boundary targets (r = 0) and model targets


def test_exact_gaussian_flow_map_is_a_consistency_model():
    """For N(m, s^2 I) data the ODE flow map to sigma_min is closed form; the network that makes
    consistency_x0 equal to it gives a ConsistencyModel constant along the exact trajectories."""
    process = VPDiscrete.linear()
    gauss = GaussianMixture.from_covariances(torch.full((1, 6), 0.3, dtype=torch.float64),
                                             (0.5**2 * torch.eye(6, dtype=torch.float64))[None])
    smin = default_sigma_min(process)

    def net(x, t_model):  # x0-prediction network D with consistency_x0(D) = flow to sigma_min
        t = t_model.to(torch.float64)
        a, s = process.alpha(t)[:, None], process.sigma(t)[:, None]
        y = x / a
        f = torch.stack([gauss.flow(y[i:i + 1], float(s[i] / a[i]), smin)[0] for i in range(len(x))])
        c = (smin * a / s).clamp(max=1.0)
        return torch.where(c < 1, (f - c * y) / (1 - c).clamp(min=1e-12), y)

    den = ConsistencyModel(net, process, "x0")
    x0 = gauss.sample(4, torch.Generator().manual_seed(0))
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    t = 800.0
    a, s = process.alpha_sigma(t)
    x_t = a * x0 + s * eps
    f_t = den.predict(x_t, t).x0
    for r in (500.0, 100.0, 5.0):
        ar, sr = process.alpha_sigma(r)
        x_r = ar * gauss.flow(x_t / a, s / a, sr / ar)  # the exact ODE point at r on x_t's trajectory
        torch.testing.assert_close(den.predict(x_r, r).x0, f_t, rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(f_t, gauss.flow(x_t / a, s / a, smin))


def test_cm_sampler_is_the_papers_multistep_sampling():
    """One step of cm = one step of ddim = f(x_T, T); two steps re-noise f's output with fresh per-seed noise."""
    process = VPDiscrete.linear()
    den = ConsistencyModel(_random_net, process, "v", sample_shape=(1, 4, 4))
    seeds = [5, 2]
    one = fewstep.generate(den, (1, 4, 4), seeds, "cm", 1)
    torch.testing.assert_close(one, fewstep.generate(den, (1, 4, 4), seeds, "ddim", 1))
    gens = fewstep.generators(seeds)
    x_T = fewstep.prior_noise(process, (1, 4, 4), gens)
    t0 = float(process.t_start)
    x0 = den.predict(x_T, t0).x0
    torch.testing.assert_close(one, x0)
    times = [t0, 400.0, float(process.t_min)]
    gens = fewstep.generators(seeds)
    two = fewstep.sample(den, fewstep.prior_noise(process, (1, 4, 4), gens), "cm", 2, grid=times, generator=gens)
    gens = fewstep.generators(seeds)
    fewstep.prior_noise(process, (1, 4, 4), gens)  # the prior draw comes first from each seed's generator
    z = torch.stack([torch.randn(1, 4, 4, generator=g) for g in gens])
    a, s = process.alpha_sigma(400.0)
    torch.testing.assert_close(two, den.predict(a * x0 + s * z, 400.0).x0)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    return tiny_teacher(tmp_path_factory.mktemp("teacher"), steps=2)


def test_ect_run_saves_a_consistency_model_that_sample_reads(teacher, tmp_path):
    from fewstep.cli import main

    cfg = distill_config(teacher, "ect", objective={"fid_n": 0, "stage_steps": 2},
                         training={"steps": 4, "batch_size": 4, "lr": 1e-3, "log_every": 1,
                                   "checkpoint_every_seconds": 0, "sample_every_steps": 0})
    assert cfg["consistency"]["sigma_min"] == pytest.approx(default_sigma_min(VPDiscrete.linear()))
    tr = Trainer(cfg, ImageData(tiny_images()), tmp_path / "run", progress=False)
    assert not any(p.requires_grad for p in tr.objective.teacher.parameters())
    tr.fit()
    assert len(tr.loss_history) == 4 and all(math.isfinite(h["ect"]) for h in tr.loss_history)
    den = fewstep.load_model(tmp_path / "run")
    assert isinstance(den, ConsistencyModel) and den.sigma_min == cfg["consistency"]["sigma_min"]
    seeds = [0, 1, 2]
    x = fewstep.generate(den, (1, 8, 8), seeds, "ddim", 1)
    with torch.no_grad():
        x_T = fewstep.prior_noise(den.process, (1, 8, 8), fewstep.generators(seeds))
        t = float(den.process.t_start)
        d = den.param.prediction(x_T, t, tr.emas["model"].eval()(*den.param.net_input(x_T, t))).x0
        torch.testing.assert_close(x, consistency_x0(den.process, x_T, t, d, den.sigma_min), rtol=1e-4, atol=1e-4)
    for args in (["--nfe", "1"], ["--solver", "cm", "--nfe", "2"]):
        assert main(["sample", "--model", str(tmp_path / "run"), *args, "--n", "2", "--out",
                     str(tmp_path / "s.png")]) == 0
    assert main(["distill", "--teacher", teacher, "--method", "ect", "--alpha", "1.0",
                 "--out", str(tmp_path / "bad")]) == 1
    with pytest.raises(ValueError, match="q must be > 1"):
        ECTSettings(q=1.0).check()


def test_distill_precision_flag_reaches_the_training_config():
    from fewstep.cli import build_parser
    from fewstep.commands.distill import _overrides

    args = build_parser().parse_args(["distill", "--teacher", "t", "--method", "ect", "--out", "o",
                                      "--precision", "bf16"])
    assert _overrides(args)[0]["precision"] == "bf16"
    args = build_parser().parse_args(["distill", "--teacher", "t", "--method", "ect", "--out", "o"])
    assert "precision" not in _overrides(args)[0]  # not given: the config's own (a resumed run keeps its value)
