"""Distillation (fewstep.distill): the SiD loss and its gradient on exact Gaussian models, the fake
score's optimum, exact resume, a tiny run that lowers its loss, and the one-step generator as a model."""

import json

import pytest
import torch

import fewstep
from conftest import tiny_images, tiny_teacher
from fewstep.data import ImageData
from fewstep.distill import (OneStepGenerator, distill_config, fake_score_loss, generate_x0, mmd2_unbiased,
                             sid_generator_loss, sid_times)
from fewstep.exact import GaussianMixture
from fewstep.processes import VPDiscrete
from fewstep.training import Trainer

D = 6


def _gauss(mean: float, std: float) -> GaussianMixture:
    return GaussianMixture.from_covariances(torch.full((1, D), mean, dtype=torch.float64),
                                            (std**2 * torch.eye(D, dtype=torch.float64))[None])


def _sid_pieces(m, s_g, mu, s_d, sigma, z, n, alpha):
    """Generator x_g = m + s_g z; teacher = exact denoiser of N(mu, s_d^2); fake score = exact denoiser of the
    generator's distribution (its parameters held fixed, as the trainer freezes the fake score)."""
    x_g = m + s_g * z
    y = x_g + sigma * n
    f_phi = _gauss(mu, s_d).x0_at(y, sigma)
    f_psi = _gauss(float(m.detach().mean()), s_g).x0_at(y, sigma)
    return x_g, f_phi, f_psi, sid_generator_loss(f_phi, f_psi, x_g, alpha)


def test_sid_loss_and_gradient_match_the_closed_form_on_gaussians():
    g = torch.Generator().manual_seed(0)
    z, n = torch.randn(64, D, generator=g, dtype=torch.float64), torch.randn(64, D, generator=g, dtype=torch.float64)
    mu, s_d, m0, s_g, sigma, alpha = 0.3, 0.8, -0.4, 0.5, 1.3, 1.2
    m = torch.full((D,), m0, dtype=torch.float64, requires_grad=True)
    x_g, f_phi, f_psi, loss = _sid_pieces(m, s_g, mu, s_d, sigma, z, n, alpha)
    d = f_phi - f_psi
    w = (x_g - f_phi).abs().mean(1)
    form = ((1 - alpha) * d.square().sum(1) + (d * (f_psi - x_g)).sum(1)) / w  # paper eq. 22 form
    torch.testing.assert_close(loss, form.detach(), rtol=1e-10, atol=1e-12)
    loss.sum().backward()
    # d/dm with f_phi' = a, f_psi' = b (Gaussian denoisers are affine in y), x_g' = 1; w is a constant
    a, b = s_d**2 / (s_d**2 + sigma**2), s_g**2 / (s_g**2 + sigma**2)
    e = (f_phi - x_g) - alpha * d
    expected = (((a - b) * e + d * (a - 1 - alpha * (a - b))) / w[:, None]).sum(0)
    torch.testing.assert_close(m.grad, expected.detach(), rtol=1e-10, atol=1e-12)


def test_sid_gradient_vanishes_at_the_data_distribution_and_points_towards_it():
    g = torch.Generator().manual_seed(1)
    z, n = torch.randn(4000, D, generator=g, dtype=torch.float64), torch.randn(4000, D, generator=g, dtype=torch.float64)
    for m0, expect in ((0.3, 0.0), (0.9, 1.0), (-0.5, -1.0)):
        m = torch.full((D,), m0, dtype=torch.float64, requires_grad=True)
        loss = _sid_pieces(m, 0.8, 0.3, 0.8, 0.7, z, n, 1.2)[-1]
        loss.mean().backward()
        if expect == 0.0:  # generator == data and fake score exact: f_phi == f_psi for every sample
            assert m.grad.abs().max() < 1e-12
        else:  # descent moves the generator's mean towards the data mean 0.3
            assert (torch.sign(m.grad) == expect).all() and m.grad.abs().min() > 0.05


class _ExactX0(torch.nn.Module):
    """An x0-prediction 'network' on a VP process: the exact denoiser of ``gmm`` plus a learnable offset."""

    def __init__(self, gmm, process):
        super().__init__()
        self.gmm, self.process = gmm, process
        self.offset = torch.nn.Parameter(torch.zeros((), dtype=torch.float64))

    def forward(self, x, t):
        a, s = self.process.alpha(t)[:, None], self.process.sigma(t)[:, None]
        return self.gmm.x0_at(x / a, (s / a)[:, 0]) + self.offset


def test_the_fake_score_loss_is_minimised_by_the_generators_exact_denoiser():
    proc = VPDiscrete.linear()
    gen = _gauss(-0.4, 0.5)
    g = torch.Generator().manual_seed(2)
    x_g = gen.sample(20000, g)
    t = torch.full((len(x_g),), 300.0, dtype=torch.float64)
    eps = torch.randn(x_g.shape, generator=g, dtype=torch.float64)
    grads = {}
    for name, gmm in (("generator", gen), ("teacher", _gauss(0.3, 0.8))):
        net = _ExactX0(gmm, proc)
        fake_score_loss(net, "x0", proc, x_g, t, eps).mean().backward()
        grads[name] = float(net.offset.grad)
    assert abs(grads["generator"]) < 0.02 * abs(grads["teacher"])  # the optimum; the teacher's denoiser is off


def test_sid_times_follow_the_edm_grid_up_to_tmax_index():
    proc = VPDiscrete.linear()
    t = sid_times(proc, 5000, torch.Generator().manual_seed(0), tmax_index=800)
    s_hat = proc.sigma(t) / proc.alpha(t)
    top = (80 ** (1 / 7) * 0.8 + 0.002 ** (1 / 7) * 0.2) ** 7  # index 800 of 1000 from sigma_min
    assert float(s_hat.max()) <= top * 1.001 and float(s_hat.max()) > 0.9 * top
    assert float(s_hat.min()) == pytest.approx(float(proc.sigma(0.0) / proc.alpha(0.0)), rel=1e-6)  # clipped at t_min


def test_mmd2_unbiased_matches_the_double_sum_and_separates_distributions():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(7, 3, generator=g, dtype=torch.float64), torch.randn(5, 3, generator=g, dtype=torch.float64)
    k = lambda a, b: (a @ b / 3 + 1) ** 3  # noqa: E731
    sxx = sum(k(x[i], x[j]) for i in range(7) for j in range(7) if i != j) / 42
    syy = sum(k(y[i], y[j]) for i in range(5) for j in range(5) if i != j) / 20
    sxy = sum(k(x[i], y[j]) for i in range(7) for j in range(5)) / 35
    torch.testing.assert_close(mmd2_unbiased(x, y), sxx + syy - 2 * sxy)
    a, b = torch.randn(400, 4, generator=g), torch.randn(400, 4, generator=g)
    for kernel in ("poly3", "rbf"):
        same, shifted = mmd2_unbiased(a, b, kernel), mmd2_unbiased(a, b + 1.0, kernel)
        assert abs(float(same)) < 0.2 * float(shifted)


# ------------------------------------------------------------------------------------------- runs on the Trainer

@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A tiny v-prediction UNet teacher checkpoint (a few denoising steps on tiny images)."""
    return tiny_teacher(tmp_path_factory.mktemp("teacher"), steps=3)


def _distill_trainer(teacher, path, method="sid", objective=None, **training):
    cfg = distill_config(teacher, method, objective={"fid_n": 0, **(objective or {})},
                         training={"steps": 4, "batch_size": 4, "lr": 1e-3, "log_every": 1,
                                   "checkpoint_every_seconds": 0, "sample_every_steps": 0, **training})
    return Trainer(cfg, ImageData(tiny_images()), path, progress=False)


def _states(tr):
    out = {f"{k}.{n}": v.clone() for k, m in tr.modules.items() for n, v in m.state_dict().items()}
    out.update({f"ema.{k}.{n}": v.clone() for k, m in tr.emas.items() for n, v in m.state_dict().items()})
    return out


def test_sid_run_resumes_exactly(teacher, tmp_path):
    full = _distill_trainer(teacher, tmp_path / "full")
    assert set(full.modules) == {"generator", "fake_score"} and set(full.emas) == {"generator"}
    full.fit()
    first = _distill_trainer(teacher, tmp_path / "split")
    first.fit(steps=2)
    first.train_step()  # never checkpointed: "killed"
    history = list(first.loss_history[:2])
    second = _distill_trainer(teacher, tmp_path / "split")
    assert second.resume() == 2
    second.fit()
    assert history + second.loss_history == full.loss_history
    a, b = _states(full), _states(second)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    files = sorted(p.name for p in (tmp_path / "full" / "checkpoints" / "step-00000004").iterdir())
    assert "ema.safetensors" in files and "fake_score.safetensors" in files


def test_generator_checkpoint_is_a_one_step_model(teacher, tmp_path):
    tr = _distill_trainer(teacher, tmp_path / "run", steps=2)
    tr.fit()
    den = fewstep.load_model(tmp_path / "run")
    assert isinstance(den, OneStepGenerator) and den.sample_shape == (1, 8, 8)
    seeds = [3, 1, 4]
    z = torch.stack([torch.randn(1, 8, 8, generator=g) for g in fewstep.generators(seeds)])
    with torch.no_grad():
        want = generate_x0(tr.emas["generator"].eval(), den.param, z, den.t_init)
    for solver in ("ddim", "dpm++2m", "euler", "unipc"):
        got = fewstep.generate(den, (1, 8, 8), seeds, solver, nfe=1)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)  # float32 round trip x_T = prior_std z
    with pytest.raises(ValueError, match="nfe=1"):
        fewstep.generate(den, (1, 8, 8), seeds, "ddim", nfe=2)
    from fewstep.checkpoint import export_ema, latest_checkpoint

    small = export_ema(latest_checkpoint(tmp_path / "run"), tmp_path / "exported", {"fid": 1.0})
    assert sorted(p.name for p in small.iterdir()) == ["checksums.json", "config.json", "ema.safetensors"]
    torch.testing.assert_close(fewstep.generate(fewstep.load_model(small), (1, 8, 8), seeds, "ddim", 1), got)


def test_sample_and_eval_cli_read_a_generator(teacher, tmp_path):
    from fewstep.cli import main

    _distill_trainer(teacher, tmp_path / "run", steps=1).fit()
    assert main(["sample", "--model", str(tmp_path / "run"), "--nfe", "1", "--n", "4", "--out",
                 str(tmp_path / "s.png")]) == 0
    assert (tmp_path / "s.png").exists()
    assert main(["sample", "--model", str(tmp_path / "run"), "--nfe", "3", "--n", "2", "--out",
                 str(tmp_path / "t.png")]) == 1


def test_tiny_runs_lower_their_losses(teacher, tmp_path):
    """The fake score fits a (here frozen) generator's samples; MMD fine-tuning lowers the MMD^2 of its samples."""
    tr = _distill_trainer(teacher, tmp_path / "sid", objective={"fake_lr": 3e-3}, steps=16, batch_size=8, lr=1e-12)
    tr.fit()
    fake = [h["fake_score"] for h in tr.loss_history]
    assert sum(fake[-4:]) < 0.8 * sum(fake[:4]), fake
    tr = _distill_trainer(teacher, tmp_path / "mmd", "mmd", objective={"nfe": 2}, steps=16, batch_size=8, lr=3e-3)
    tr.fit()
    mmd = [h["mmd2"] for h in tr.loss_history]
    assert sum(mmd[-4:]) < 0.6 * sum(mmd[:4]), mmd


def test_sida_and_mmd_runs_train_and_save_models(teacher, tmp_path):
    sida = _distill_trainer(teacher, tmp_path / "sida", "sida", steps=2)
    sida.fit()
    assert any(k.startswith("head.") for k in sida.modules["fake_score"].state_dict())
    teacher_net = fewstep.load_model(teacher).net.state_dict()  # the paper's warm-up: the generator waits
    assert all(torch.equal(v, teacher_net[k]) for k, v in sida.modules["generator"].state_dict().items())
    moving = _distill_trainer(teacher, tmp_path / "sida0", "sida", objective={"generator_start_images": 0,
                                                                              "adv_start_images": 0}, steps=1)
    moving.fit()
    assert any(not torch.equal(v, teacher_net[k]) for k, v in moving.modules["generator"].state_dict().items())
    assert isinstance(fewstep.load_model(tmp_path / "sida"), OneStepGenerator)
    init = _distill_trainer(teacher, tmp_path / "sida2", "sida", objective={"init_from": str(tmp_path / "sida")},
                            steps=1)
    torch.testing.assert_close(init.modules["generator"].state_dict(), sida.emas["generator"].state_dict())
    _distill_trainer(teacher, tmp_path / "mmd", "mmd", objective={"nfe": 2}, steps=1).fit()
    den = fewstep.load_model(tmp_path / "mmd")
    assert type(den) is fewstep.Denoiser and json.loads((tmp_path / "mmd" / "checkpoints" / "step-00000001" /
                                                         "config.json").read_text())["objective"]["nfe"] == 2


def test_clear_errors(teacher, tmp_path):
    with pytest.raises(ValueError, match="unknown distillation method 'gan'"):
        distill_config(teacher, "gan")
    with pytest.raises(ValueError, match="tmax_index"):
        _distill_trainer(teacher, tmp_path / "a", objective={"tmax_index": 0})
    cfg = distill_config(teacher, "sid", "tiny")
    cfg["prediction"] = "eps"
    with pytest.raises(ValueError, match="differs from the teacher"):
        Trainer(cfg, ImageData(tiny_images()), tmp_path / "b", progress=False)
    from fewstep.cli import main

    assert main(["distill", "--teacher", teacher, "--method", "sid", "--nfe", "4", "--out", str(tmp_path / "c")]) == 1


def test_bench_model_scores_a_generator_beside_the_solvers(teacher, tmp_path):
    from fewstep.bench.model import GENERATOR_ROLE, ModelBenchConfig, _plot, run_model_bench
    from fewstep.metrics.features import ModuleExtractor

    _distill_trainer(teacher, tmp_path / "run", steps=1).fit()
    torch.manual_seed(0)
    ext = ModuleExtractor(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 8)), name="tiny", num_features=8)
    from fewstep.metrics.evaluate import images_stats

    ref = images_stats(ext, torch.randn(64, 1, 8, 8), progress=False)
    ref.save(tmp_path / "ref.npz")
    cfg = ModelBenchConfig(model=teacher, solvers=["ddim"], nfes=[2], n=24, ref=str(tmp_path / "ref.npz"),
                           extractor=ext, out=None, reference=False, batch_size=8,
                           generators=[str(tmp_path / "run")])
    rows = run_model_bench(cfg, progress=False)
    gen = [r for r in rows if r.get("role") == GENERATOR_ROLE]
    assert len(rows) == 2 and len(gen) == 1 and gen[0]["nfe"] == 1 and gen[0]["fid"] > 0
    _plot(rows, "ms_per_image", "ms", tmp_path / "t.png", "FID vs time")  # the generator as a point
    assert (tmp_path / "t.png").stat().st_size > 0
    only = run_model_bench(ModelBenchConfig(model=str(tmp_path / "run"), n=24, ref=str(tmp_path / "ref.npz"),
                                            extractor=ext, out=None, batch_size=8), progress=False)
    assert [(r["solver"], r["nfe"]) for r in only] == [("ddim", 1)]
    assert only[0]["fid"] == pytest.approx(gen[0]["fid"], rel=1e-6)  # same seeds, same images


def test_bundled_fashion_sid_is_a_one_step_model():
    den = fewstep.load_model("bundled:fashion-sid")
    assert isinstance(den, OneStepGenerator) and den.sample_shape == (1, 28, 28) and den.sigma_init == 2.5
    x = fewstep.generate(den, (1, 28, 28), [0, 1], "ddim", nfe=1)
    assert x.shape == (2, 1, 28, 28) and torch.isfinite(x).all() and x.std() > 0.2
