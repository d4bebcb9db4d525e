"""Analytical teleportation: the Gaussian's closed-form flow, teleported sampling, storage, grids, DC, CLI."""

import json

import numpy as np
import pytest
import torch

import fewstep
from fewstep.api import plan_solve
from fewstep.cli import main
from fewstep.exact import GaussianMixture, reference_solution
from fewstep.grids import make_grid, make_schedule
from fewstep.grids.files import GridEntry, write_grid_file
from fewstep.tuning import ReferenceSet, search_grid
from fewstep.teleport import load_gaussian, save_gaussian, teleport, truncate


def moment_gaussian(mix: GaussianMixture) -> GaussianMixture:
    """The one Gaussian with the mixture's mean and covariance (what `fewstep gaussian` computes from data)."""
    return GaussianMixture.from_covariances(mix.mean[None], mix.covariance[None])


@pytest.mark.parametrize("low_rank", [False, True])
def test_flow_is_the_exact_ode_solution_of_one_gaussian(ddpm_linear, low_rank):
    """Wang & Vastola 2024, eq. 8-9: the closed-form map equals the float64 ODE solve of the Gaussian's own denoiser,
    for full covariances and for low rank plus a floor."""
    g = (GaussianMixture.random_low_rank(dim=6, components=1, rank=2, floor=0.1, seed=3) if low_rank else
         GaussianMixture.from_covariances(torch.zeros(1, 6) + 0.3, torch.diag(torch.linspace(0.01, 2.0, 6))[None]))
    x_T = torch.randn(4, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for t1 in (900.0, 500.0, 100.0):
        exact = reference_solution(g.denoiser(ddpm_linear), x_T, t_end=t1, rtol=1e-11, atol=1e-11)
        assert torch.allclose(teleport(x_T, ddpm_linear, t1, g), exact, atol=1e-7)
    # composition: t_max -> 700 -> 300 equals t_max -> 300
    mid = teleport(x_T, ddpm_linear, 700.0, g)
    assert torch.allclose(teleport(mid, ddpm_linear, 300.0, g, t_from=700.0), teleport(x_T, ddpm_linear, 300.0, g),
                          atol=1e-12)


def test_teleported_sampling_on_gaussian_data_is_exact_above_the_start(ddpm_linear):
    """On Gaussian data the teleport is exact: teleport to t then a fine solve equals the exact solution, and a few
    steps below t err far less than the same steps over the whole range."""
    g = GaussianMixture.from_covariances(torch.zeros(1, 4), torch.diag(torch.tensor([0.01, 0.1, 0.5, 1.5]))[None])
    den = g.denoiser(ddpm_linear)
    x_T = torch.randn(8, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    at_t_min = reference_solution(den, x_T, t_end=ddpm_linear.t_min, rtol=1e-11, atol=1e-11)
    fine = fewstep.sample(den, x_T, "dpm++3m", 200, "logsnr", teleport=600.0, gaussian=g, clean_end=False)
    assert (fine - at_t_min).abs().max() < 1e-4  # dpm++3m at 200 NFE: its own error is ~4e-5
    exact = reference_solution(den, x_T, rtol=1e-11, atol=1e-11)
    few = (fewstep.sample(den, x_T, "unipc", 5, "logsnr", teleport=400.0, gaussian=g) - exact).norm()
    assert few < 0.5 * (fewstep.sample(den, x_T, "unipc", 5, "logsnr") - exact).norm()


def test_sample_with_teleport_is_the_flow_then_the_solver_from_there(gmm8, ddpm_linear):
    den, g = gmm8.denoiser(ddpm_linear), moment_gaussian(gmm8)
    x_T = torch.randn(5, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    ours = fewstep.sample(den, x_T, "unipc", 6, "uniform", teleport=700.0, gaussian=g)
    by_hand = fewstep.sample(den, teleport(x_T, ddpm_linear, 700.0, g), "unipc", 6,
                             make_grid(ddpm_linear, 6, "uniform", t_max=700.0))
    assert torch.equal(ours, by_hand)
    # On a mixture the Gaussian is an approximation: its error to the exact solution grows as the start moves down.
    exact = reference_solution(den, x_T, t_end=ddpm_linear.t_min, rtol=1e-11, atol=1e-11)
    err = [float((fewstep.sample(den, x_T, "dpm++3m", 200, "logsnr", teleport=t, gaussian=g, clean_end=False)
                  - exact).norm()) for t in (950.0, 500.0, 400.0, 300.0)]
    assert err[0] < 1e-3 < err[1] < err[2] < err[3]  # at t = 300 the teleport lands trajectories in wrong components


def test_teleport_refuses_bad_input_with_clear_errors(gmm8, ddpm_linear):
    den = gmm8.denoiser(ddpm_linear)
    x_T = torch.zeros(2, 8, dtype=torch.float64)
    with pytest.raises(ValueError, match="fewstep gaussian"):
        fewstep.sample(den, x_T, "unipc", 5, teleport=700.0)  # nothing attached
    with pytest.raises(ValueError, match="outside the process's times"):
        fewstep.sample(den, x_T, "unipc", 5, teleport=5000.0, gaussian=moment_gaussian(gmm8))
    with pytest.raises(TypeError, match="teleport must be a time"):
        fewstep.sample(den, x_T, "unipc", 5, teleport="700", gaussian=moment_gaussian(gmm8))
    with pytest.raises(ValueError, match="must start at the teleport time"):
        fewstep.sample(den, x_T, "unipc", 2, [800.0, 400.0, 0.0], teleport=700.0, gaussian=moment_gaussian(gmm8))
    with pytest.raises(ValueError, match="dimension 3"):
        teleport(x_T, ddpm_linear, 500.0, GaussianMixture.from_covariances(torch.zeros(1, 3), torch.eye(3)[None]))
    with pytest.raises(ValueError, match="one Gaussian"):
        teleport(x_T, ddpm_linear, 500.0, gmm8)


def test_truncation_keeps_mean_and_total_variance_and_storage_round_trips(tmp_path, gmm8):
    full = moment_gaussian(gmm8)
    low = truncate(full, 3)
    assert torch.allclose(low.mean, full.mean)
    assert float(torch.trace(low.covariance)) == pytest.approx(float(torch.trace(full.covariance)), rel=1e-10)
    top = torch.linalg.eigvalsh(full.covariance).flip(0)[:3]
    assert torch.allclose(torch.linalg.eigvalsh(low.covariance).flip(0)[:3], top, rtol=1e-8)
    path = save_gaussian(low, tmp_path / "gaussian.safetensors", {"data": "x"})
    back = load_gaussian(tmp_path)
    assert back.meta == {"data": "x"} and torch.allclose(back.covariance, low.covariance, atol=1e-6)
    path.write_bytes(b"broken")
    with pytest.raises(ValueError, match="damaged"):
        load_gaussian(path)
    with pytest.raises(FileNotFoundError, match="fewstep gaussian"):
        load_gaussian(tmp_path / "nothing")


def test_class_conditional_teleport_is_the_exact_conditional_flow(ddpm_linear):
    """One Gaussian per class: the class's closed-form flow equals a fine numerical solve of the exact conditional
    ODE (``E[x0 | x_t, c]`` of the class-conditional mixture) down to the teleport time."""
    from fewstep.exact import ClassConditionalMixture

    per_class = GaussianMixture.random_low_rank(dim=6, components=3, rank=2, floor=0.1, seed=5)
    mix = ClassConditionalMixture(per_class, [0, 1, 2])
    den = mix.denoiser(ddpm_linear)
    x_T = torch.randn(6, 6, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 2, 1, 0])
    ours = teleport(x_T, ddpm_linear, 400.0, per_class, labels=labels)
    grid = make_grid(ddpm_linear, 200, "logsnr", t_min=400.0)
    solved = fewstep.sample(den, x_T, "dpm++3m", 200, grid, clean_end=False, cond={"class_labels": labels})
    assert (ours - solved).abs().max() < 1e-5
    # through fewstep.sample with cond: the same start, then the solver
    den.class_gaussians = per_class
    a = fewstep.sample(den, x_T, "unipc", 4, "uniform", teleport=400.0, cond={"class_labels": labels})
    b = fewstep.sample(den, ours, "unipc", 4, make_grid(ddpm_linear, 4, "uniform", t_max=400.0),
                       cond={"class_labels": labels})
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="one label in 0..2"):
        teleport(x_T, ddpm_linear, 400.0, per_class, labels=torch.full((6,), 3))
    with pytest.raises(ValueError, match="say which carries each sample"):
        teleport(x_T, ddpm_linear, 400.0, per_class)


def test_class_gaussians_from_labelled_data_and_storage(tmp_path):
    from fewstep.teleport import class_gaussians, load_class_gaussians

    rng = np.random.default_rng(1)
    images = (rng.random((30, 4, 4)) * 255).astype(np.uint8)
    labels = np.repeat([0, 1, 2], 10)
    np.savez(tmp_path / "d.npz", images=images, labels=labels)
    g = class_gaussians(str(tmp_path / "d.npz"), (1, 4, 4))
    x = images.reshape(30, 16).astype(np.float64) / 127.5 - 1
    for k in range(3):
        np.testing.assert_allclose(g.means[k].numpy(), x[labels == k].mean(0), atol=1e-6)  # model range is float32
    assert torch.allclose(g.weights, torch.full((3,), 1 / 3, dtype=torch.float64))
    low = truncate(g, 4)
    path = save_gaussian(truncate(GaussianMixture.from_covariances(torch.zeros(1, 16), torch.eye(16)[None]), 4),
                         tmp_path / "g.safetensors", classes=low)
    back = load_class_gaussians(path)
    assert back is not None and torch.allclose(back.means, low.means, atol=1e-6) and back.floor == pytest.approx(low.floor)
    assert load_class_gaussians(save_gaussian(load_gaussian(path), tmp_path / "plain.safetensors")) is None
    np.savez(tmp_path / "nolabels.npz", images=images)
    with pytest.raises(ValueError, match="no labels"):
        class_gaussians(str(tmp_path / "nolabels.npz"), (1, 4, 4))


def test_bundled_fashion_ships_its_data_gaussian():
    den = fewstep.load_model("bundled:fashion")
    g = den.data_gaussian
    assert g.dim == 28 * 28 and g.eigvecs.shape == (1, 784, 128) and g.floor > 0
    assert -1 < float(g.mean.mean()) < 0  # Fashion-MNIST is mostly dark background in [-1, 1]
    x_T = fewstep.prior_noise(den.process, (1, 28, 28), fewstep.generators([0, 1, 2, 3]))
    batch = teleport(x_T, den.process, 700.0, g)
    assert batch.shape == x_T.shape and batch.dtype == x_T.dtype
    one_by_one = torch.cat([teleport(x_T[i:i + 1], den.process, 700.0, g) for i in range(4)])
    assert torch.equal(batch, one_by_one)  # the same seed gives the same start whatever the batch


def test_bundled_fashion_cond_ships_one_gaussian_per_class(tmp_path):
    den = fewstep.load_model("bundled:fashion-cond")
    g = den.class_gaussians
    assert g.means.shape == (10, 784) and g.eigvecs.shape == (10, 784, 32)
    assert float((g.means[1] - g.means[8]).norm()) > 5  # trousers and bags differ in mean
    out = tmp_path / "c.npz"
    assert main(["sample", "--model", "bundled:fashion-cond", "--class", "0,1", "--solver", "unipc", "--nfe", "2",
                 "--teleport", "700", "--n", "2", "--out", str(out), "--no-progress"]) == 0
    x_T = fewstep.prior_noise(den.process, (1, 28, 28), fewstep.generators([0, 1]))
    want = fewstep.sample(den, x_T, "unipc", 2, "uniform", fewstep.generators([0, 1]), teleport=700.0,
                          cond={"class_labels": torch.tensor([0, 1])})
    from fewstep.imagegrid import to_uint8

    got, expected = np.load(out)["images"].astype(int), np.asarray(to_uint8(want)).astype(int)
    assert got.shape == expected.shape and np.abs(got - expected).max() <= 1  # the CLI is the library call


def test_plan_file_entries_are_their_own_solvers_and_borrowing_is_explicit(tmp_path, gmm8, ddpm_linear):
    den, g = gmm8.denoiser(ddpm_linear), moment_gaussian(gmm8)
    den.data_gaussian = g
    times = make_grid(ddpm_linear, 5, "uniform", t_max=650.0).tolist()
    path = tmp_path / "tp.json"
    write_grid_file(path, ddpm_linear, [GridEntry("unipc", 5, 5, times, "search", options={"teleport": 650.0})])
    x_T = torch.randn(3, 8, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    direct = fewstep.sample(den, x_T, "unipc", 5, times, teleport=650.0)
    assert torch.equal(fewstep.sample(den, x_T, "unipc", 5, str(path)), direct)
    # another solver has no entry: a clear error listing the file's entries, never a silent borrow
    with pytest.raises(ValueError, match=r"no entry for ipndm at nfe=5; it holds: unipc nfe=5"):
        fewstep.sample(den, x_T, "ipndm", 5, str(path))
    with pytest.raises(ValueError, match="no entry for unipc at nfe=6"):
        fewstep.sample(den, x_T, "unipc", 6, str(path))
    # borrowing is explicit and carries the teleport only when asked for it
    with pytest.raises(ValueError, match="does not carry the teleport: pass teleport=650"):
        fewstep.sample(den, x_T, "ipndm", 5, str(path), borrow="unipc")
    assert torch.equal(fewstep.sample(den, x_T, "ipndm", 5, str(path), borrow="unipc", teleport=650.0),
                       fewstep.sample(den, x_T, "ipndm", 5, times, teleport=650.0))
    plan = fewstep.make_plan(den, "ipndm", 5, str(path), borrow="unipc", teleport=650.0)
    assert plan.entry == {"solver": "unipc", "nfe": 5, "method": "search", "borrowed": True}
    assert plan.describe()["start"]["kind"] == "gaussian" and plan.start.t == 650.0
    with pytest.raises(ValueError, match="teleported time"):
        plan_solve(den, "unipc", 5, str(path), where="inversion")  # inversion's plan: no Gaussian start there
    with pytest.raises(ValueError, match="teleported time"):
        make_schedule(ddpm_linear, 5, str(path), solver="unipc", nfe=5)  # diffusers adapter, restoration
    with pytest.raises(ValueError, match="one data Gaussian per class"):
        fewstep.sample(den, x_T, "unipc", 5, str(path), cond={"class_labels": torch.zeros(3, dtype=torch.long)})


def test_search_with_teleport_moves_the_start_time_and_lowers_the_error(gmm8, ddpm_linear):
    den = gmm8.denoiser(ddpm_linear)
    den.data_gaussian = moment_gaussian(gmm8)
    ref = ReferenceSet(den, (8,), range(2000, 2032), nfe=200)
    times, res = search_grid(ref, "unipc", 5, "uniform", rounds=1, options={"teleport": 800.0})
    assert res.score < res.start_score and float(times[0]) != 800.0
    assert ref.rmse("unipc", 5, times, options={"teleport": float(times[0])}) == pytest.approx(res.score, rel=1e-12)


def test_dc_and_timetuner_compose_on_a_teleported_start(tmp_path, gmm8, ddpm_linear):
    """DC-Solver's ratio search and TimeTuner run on a teleported start; the teleport travels in the entries."""
    from fewstep.tuning import optimize_grids
    from fewstep.nettimes import time_tuned

    den = gmm8.denoiser(ddpm_linear)
    den.data_gaussian = moment_gaussian(gmm8)
    ref = ReferenceSet(den, (8,), range(3000, 3016), nfe=100)
    dc = optimize_grids(den, "dc_solver", [5], "dc", reference=ref, shape=(8,), teleport=700.0)[0]
    assert dc.times[0] == 700.0 and dc.teleport == 700.0 and dc.score <= dc.provenance["start_score"]
    write_grid_file(tmp_path / "dc.json", ddpm_linear, [dc])
    tt = optimize_grids(den, "dc_solver", [5], "timetuner", reference=ref, rounds=1, start=str(tmp_path / "dc.json"))[0]
    assert tt.teleport == 700.0 and tt.score <= tt.provenance["start_score"]
    rescored = ref.rmse("dc_solver", 5, tt.times, denoiser=time_tuned(den, tt.times, tt.net_times),
                        options={**(tt.options or {}), "teleport": tt.teleport})
    assert rescored == pytest.approx(tt.score, rel=1e-9)


def test_reference_path_through_a_teleported_grid_is_the_networks_own_solution(gmm8, ddpm_linear):
    """What DC-Solver's search compares each step with: the near-exact states at a teleported grid's times, solved
    from t_max (the first state, at the teleport time, dropped), the last one the data prediction at t_min."""
    from fewstep.tuning import ReferenceSettings, near_exact_path

    den = gmm8.denoiser(ddpm_linear)
    x_T = torch.randn(4, 8, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    sched = make_schedule(ddpm_linear, 4, "uniform", t_max=600.0, clean_end=False)
    states = near_exact_path(den, x_T, [ddpm_linear.t_max, *sched.t.tolist()], ReferenceSettings(nfe=400))[1:]
    exact = [reference_solution(den, x_T, t_end=float(t), rtol=1e-11, atol=1e-11) for t in sched.t[1:]]
    assert len(states) == 4
    for s, e in zip(states[:-1], exact):
        assert (s - e).abs().max() < 1e-4
    assert (states[-1] - den.predict(exact[-1], float(sched.t[-1])).x0).abs().max() < 1e-4


def test_cli_gaussian_then_sample_with_teleport(tmp_path, capsys):
    import shutil
    from importlib.resources import files

    ckpt = tmp_path / "ckpt"
    shutil.copytree(str(files("fewstep") / "assets" / "fashion"), ckpt)
    (ckpt / "gaussian.safetensors").unlink()
    images = (np.random.default_rng(0).random((64, 28, 28)) * 255).astype(np.uint8)
    np.save(tmp_path / "data.npy", images)
    assert main(["gaussian", "--model", str(ckpt), "--data", str(tmp_path / "data.npy"), "--rank", "16"]) == 0
    assert "rank 16" in capsys.readouterr().out
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg.pop("data")
    (ckpt / "config.json").write_text(json.dumps(cfg))  # no recorded training data: --data is needed
    assert main(["gaussian", "--model", str(ckpt), "--rank", "16", "--out", str(tmp_path / "x.safetensors")]) == 1
    assert "does not record its training data" in capsys.readouterr().err
    assert fewstep.load_model(ckpt).data_gaussian.eigvecs.shape == (1, 784, 16)
    out = tmp_path / "s.npz"
    assert main(["sample", "--model", str(ckpt), "--solver", "unipc", "--nfe", "2", "--teleport", "600", "--n", "2",
                 "--out", str(out), "--no-progress"]) == 0
    assert np.load(out)["images"].shape[0] == 2
    assert main(["eval", "--model", str(ckpt), "--solver", "unipc", "--nfe", "2", "--teleport", "600", "--n", "8",
                 "--extractor", "fashion", "--device", "cpu", "--out", str(tmp_path / "m.json")]) == 0
    assert '"teleport": 600' in (tmp_path / "m.json").read_text()
    assert main(["sample", "--model", str(ckpt), "--solver", "unipc", "--nfe", "2", "--teleport", "5000", "--n", "2",
                 "--out", str(tmp_path / "bad.npz"), "--no-progress"]) == 1
    assert "outside the process's times" in capsys.readouterr().err


def _affine_map(process, t_to, g, dim):
    """The teleport from t_max as ``x -> b + M x``: ``b`` the image of 0, ``M``'s columns the images of e_i."""
    eye = torch.eye(dim, dtype=torch.float64)
    b = teleport(torch.zeros(1, dim, dtype=torch.float64), process, t_to, g)[0]
    return b, (teleport(eye, process, t_to, g) - b).T


@pytest.mark.parametrize("zero_snr", [False, True])
def test_teleport_from_t_max_carries_the_prior_to_the_gaussians_marginal(zero_snr):
    """The prior at t_max is carried to N(alpha m, alpha^2 C + sigma^2 I), the Gaussian's own marginal at t, also
    from a zero-terminal-SNR end (alpha(t_max) = 0: the flow in the state's own scale never divides by alpha)."""
    from fewstep.processes import VPDiscrete

    process = VPDiscrete.linear(1000, 1e-4, 0.02, zero_terminal_snr=zero_snr)
    assert (float(process.alpha(process.t_max)) == 0.0) == zero_snr
    cov = torch.tensor([[1.0, 0.3, 0.0], [0.3, 0.5, 0.1], [0.0, 0.1, 0.2]], dtype=torch.float64)
    g = GaussianMixture.from_covariances(torch.tensor([[0.2, -0.4, 0.1]], dtype=torch.float64), cov[None])
    for t in (700.0, 300.0):
        a, s = float(process.alpha(t)), float(process.sigma(t))
        b, m = _affine_map(process, t, g, 3)
        a0, s0 = float(process.alpha(process.t_max)), float(process.sigma(process.t_max))
        prior_cov = a0 ** 2 * cov + s0 ** 2 * torch.eye(3, dtype=torch.float64)  # the marginal at t_max (prior at 0)
        assert torch.allclose(b + a0 * (m @ g.means[0]), a * g.means[0], atol=1e-12)
        assert torch.allclose(m @ prior_cov @ m.T, a * a * cov + s * s * torch.eye(3, dtype=torch.float64), atol=1e-10)


def test_teleport_starts_at_t_max_even_where_sampling_starts_lower():
    """On a capped cosine schedule (t_start = 967 < t_max = 999 for an eps network) the prior is carried from t_max,
    its own time, not from the network's well-conditioned start."""
    from fewstep.processes import VPDiscrete

    process = VPDiscrete.cosine()
    assert process.t_start < process.t_max
    g = GaussianMixture.from_covariances(torch.full((1, 4), -0.5, dtype=torch.float64),
                                         torch.diag(torch.tensor([0.3, 0.2, 0.1, 0.05], dtype=torch.float64))[None])
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    from_max = teleport(x, process, 900.0, g)
    assert torch.equal(from_max, teleport(x, process, 900.0, g, t_from=process.t_max))
    assert not torch.allclose(from_max, teleport(x, process, 900.0, g, t_from=process.t_start), atol=1e-3)


def test_a_teleport_above_the_trusted_start_warns_by_name(tmp_path):
    """A forced teleport, or a plan file's start, above the well-conditioned start is allowed with a warning that
    names it (a plan tuned under an older start rule says to re-tune)."""
    from fewstep.processes import VPDiscrete

    process = VPDiscrete.cosine()
    g = GaussianMixture.from_covariances(torch.zeros(1, 4, dtype=torch.float64), torch.eye(4, dtype=torch.float64)[None])
    den = g.denoiser(process)
    high = process.t_start + 5.0
    with pytest.warns(UserWarning, match=r"teleport=972 is above the well-conditioned start"):
        fewstep.make_plan(den, "unipc", 5, teleport=high, gaussian=g)
    plan_file = tmp_path / "plans.json"
    times = make_grid(process, 5, "uniform", t_max=high).tolist()
    write_grid_file(plan_file, process, [GridEntry("unipc", 5, 5, times, "tune", teleport=high)])
    with pytest.warns(UserWarning, match="re-tune the plan"):
        fewstep.make_plan(den, "unipc", 5, str(plan_file), gaussian=g)
