"""Optimized time grids: grid files, the analytic optimizer, the search, TimeTuner and `fewstep grid`."""

import json

import numpy as np
import pytest
import torch

import fewstep
from fewstep import solvers
from fewstep.cli import main
from fewstep.grids import make_grid, make_schedule
from fewstep.grids.files import GridEntry, read_grid_file, write_grid_file
from fewstep.nettimes import TimeTunedDenoiser
from fewstep.tuning import (ReferenceSet, analytic_grid, gaussian_error, gaussian_spectrum, search_grid,
                            tune_net_times)
from fewstep.processes import EDM, VPDiscrete, VPLinear

MULTISTEP = ["dpm++2m", "dpm++3m", "unipc", "ipndm", "deis"]


@pytest.mark.parametrize("process", [VPDiscrete.linear(), VPLinear(), EDM()], ids=lambda p: type(p).__name__)
@pytest.mark.parametrize("solver", MULTISTEP)
def test_analytic_grids_span_the_process_with_the_planned_steps(process, solver):
    spec = solvers.get(solver)
    for nfe in range(max(1, spec.min_nfe), 13):
        ts, bound = analytic_grid(process, solver, nfe)
        steps = spec.steps_for(nfe)[0]
        assert len(ts) == steps + 1 and ts[0] == process.t_max and ts[-1] == process.t_min
        assert bool((ts[1:] < ts[:-1]).all())
        make_schedule(process, steps, ts)  # a valid explicit grid


@pytest.mark.parametrize("solver", ["dpm++2m", "unipc", "ipndm", "deis"])
@pytest.mark.parametrize("c", [0.5, 1.0])
def test_analytic_grid_lowers_the_exact_error_on_an_isotropic_gaussian(solver, c):
    """Data N(0, c^2 I): the ODE is solved in closed form.  The analytic grid errs less than the uniform
    grid at every NFE, and less than the logSNR grid over NFE 5-10 together (logSNR is luckier at a few
    single NFEs, where the signed errors of its steps happen to cancel; docs/solvers.md)."""
    process = VPDiscrete.linear()
    ours, logsnr = 0.0, 0.0
    for nfe in (5, 6, 8, 10):
        error = gaussian_error(process, solver, nfe, gaussian_spectrum(c))
        steps = solvers.get(solver).steps_for(nfe)[0]
        e = error(analytic_grid(process, solver, nfe, data_std=c)[0])
        assert e < 0.5 * error(make_grid(process, steps, "uniform"))
        ours, logsnr = ours + e, logsnr + error(make_grid(process, steps, "logsnr"))
    assert ours < 0.8 * logsnr


def test_gaussian_error_is_the_distance_to_the_exact_ode_solution():
    """The closed-form Gaussian ODE solution matches the float64 reference solver."""
    from fewstep.exact import GaussianMixture, reference_solution

    process = VPDiscrete.linear()
    stds = gaussian_spectrum((0.1, 2.0), count=4)
    gm = GaussianMixture.from_covariances(torch.zeros(1, 4), torch.diag(stds**2)[None])
    x_T = torch.ones(1, 4, dtype=torch.float64)
    ref = reference_solution(gm.denoiser(process), x_T, rtol=1e-11, atol=1e-11)
    a, s = float(process.alpha(process.t_max)), float(process.sigma(process.t_max))
    assert torch.allclose(ref[0], stds / torch.sqrt(a * a * stds**2 + s * s), rtol=1e-6)
    ts = make_grid(process, 6, "logsnr")
    out = fewstep.sample(gm.denoiser(process), x_T, "dpm++2m", 6, ts)
    assert gaussian_error(process, "dpm++2m", 6, stds)(ts) == pytest.approx(float((out - ref).pow(2).mean()), rel=1e-5)


@pytest.fixture(scope="module")
def reference8(gmm8, ddpm_linear):
    return ReferenceSet(gmm8.denoiser(ddpm_linear), (8,), range(1000, 1032), nfe=200)


def test_search_lowers_the_score_and_never_returns_a_worse_grid(reference8):
    times, res = search_grid(reference8, "dpm++2m", 5, "uniform", rounds=1)
    assert res.score < 0.8 * res.start_score
    assert reference8.rmse("dpm++2m", 5, times) == pytest.approx(res.score, rel=1e-12)
    assert times[0] == reference8.denoiser.process.t_max and bool((times[1:] < times[:-1]).all())
    again, res2 = search_grid(reference8, "dpm++2m", 5, times, rounds=1)
    assert res2.score <= res.score and reference8.rmse("dpm++2m", 5, again) <= reference8.rmse("dpm++2m", 5, times)


def test_search_refuses_stochastic_solvers(reference8):
    with pytest.raises(ValueError, match="deterministic"):
        search_grid(reference8, "euler_a", 5)


def _entry(process, solver="dpm++2m", nfe=5, **kw):
    steps = solvers.get(solver).steps_for(nfe)[0]
    return GridEntry(solver, nfe, steps, make_grid(process, steps, "logsnr").tolist(), "analytic", 0.1, **kw)


def test_grid_files_round_trip_and_pick_the_entry(tmp_path, ddpm_linear):
    entries = [_entry(ddpm_linear, nfe=5), _entry(ddpm_linear, nfe=6), _entry(ddpm_linear, "unipc", 5)]
    entries[2].times[2] -= 5.0
    path = write_grid_file(tmp_path / "g.json", ddpm_linear, entries, {"model": "x"})
    back = read_grid_file(path)
    assert back.process == ddpm_linear.config() and back.provenance == {"model": "x"}
    assert [(e.solver, e.nfe, e.times) for e in back.entries] == [(e.solver, e.nfe, e.times) for e in entries]
    assert make_grid(ddpm_linear, 5, str(path), solver="unipc", nfe=5).tolist() == entries[2].times
    assert make_grid(ddpm_linear, 5, str(path), solver="dpm++2m", nfe=5).tolist() == entries[0].times
    with pytest.raises(ValueError, match=r"no entry for ipndm at nfe=5; it holds: dpm\+\+2m nfe=5, dpm\+\+2m nfe=6, unipc"):
        make_grid(ddpm_linear, 5, str(path), solver="ipndm", nfe=5)  # an entry is its own solver's, never borrowed
    with pytest.raises(ValueError, match="name both"):
        make_grid(ddpm_linear, 5, str(path))
    one = write_grid_file(tmp_path / "one.json", ddpm_linear, entries[:1])
    data = json.loads(one.read_text())
    assert data["format"] == "fewstep-grid" and data["version"] == 1 and data["nfe"] == 5 and "grids" not in data
    assert read_grid_file(one).entries[0].times == entries[0].times


def test_grid_files_refuse_another_process_or_a_missing_nfe(tmp_path, ddpm_linear):
    path = write_grid_file(tmp_path / "g.json", ddpm_linear, [_entry(ddpm_linear)])
    with pytest.raises(ValueError, match="another noise process"):
        make_grid(VPDiscrete.cosine(), 5, str(path))
    with pytest.raises(ValueError, match="another noise process"):
        make_grid(VPDiscrete.linear(1000, 1e-4, 0.03), 5, str(path))
    with pytest.raises(ValueError, match=r"no entry for dpm\+\+2m at nfe=8; it holds: dpm\+\+2m nfe=5"):
        make_schedule(ddpm_linear, 8, str(path), solver="dpm++2m", nfe=8)
    (tmp_path / "bad.json").write_text('{"format": "other"}')
    with pytest.raises(ValueError, match="not a fewstep grid file"):
        make_grid(ddpm_linear, 5, str(tmp_path / "bad.json"))
    with pytest.raises(FileNotFoundError, match="grid optimize"):
        make_grid(ddpm_linear, 5, str(tmp_path / "none.json"))


def test_sample_with_a_grid_file_equals_sample_with_its_times(tmp_path, gmm8, ddpm_linear):
    den = gmm8.denoiser(ddpm_linear)
    times, _ = analytic_grid(ddpm_linear, "unipc", 6)
    path = write_grid_file(tmp_path / "g.json", ddpm_linear, [GridEntry("unipc", 6, 6, times.tolist(), "analytic")])
    x_T = torch.randn(8, 8, generator=torch.Generator().manual_seed(0))
    assert torch.equal(fewstep.sample(den, x_T, "unipc", 6, str(path)), fewstep.sample(den, x_T, "unipc", 6, times))
    assert torch.equal(fewstep.sample(den, x_T, "unipc", 6, path), fewstep.sample(den, x_T, "unipc", 6, times))


def test_timetuner_with_identity_times_is_the_plain_solver(gmm8, ddpm_linear):
    den = gmm8.denoiser(ddpm_linear)
    times = make_grid(ddpm_linear, 6, "logsnr")
    x_T = torch.randn(8, 8, generator=torch.Generator().manual_seed(0))
    tuned = TimeTunedDenoiser(den, times.tolist(), times[:-1].tolist())
    for solver in ("dpm++2m", "unipc", "ipndm"):
        assert torch.equal(fewstep.sample(tuned, x_T, solver, 6, times), fewstep.sample(den, x_T, solver, 6, times))
    shifted = TimeTunedDenoiser(den, times.tolist(), (times[:-1] * 0.97).tolist())
    assert not torch.equal(fewstep.sample(shifted, x_T, "dpm++2m", 6, times), fewstep.sample(den, x_T, "dpm++2m", 6, times))
    with pytest.raises(ValueError, match="not the grid"):
        fewstep.sample(tuned, x_T, "dpm++2m", 6, "uniform")


def test_timetuner_lowers_the_score_and_travels_in_the_grid_file(tmp_path, reference8, ddpm_linear):
    times = make_grid(ddpm_linear, 5, "uniform")
    net_times, res = tune_net_times(reference8, "dpm++2m", 5, times, rounds=1)
    assert res.score < res.start_score and len(net_times) == 5
    path = write_grid_file(tmp_path / "tt.json", ddpm_linear,
                           [GridEntry("dpm++2m", 5, 5, times.tolist(), "timetuner", res.score, net_times)])
    assert reference8.rmse("dpm++2m", 5, str(path)) == pytest.approx(res.score, rel=1e-9)
    # another solver borrows the same times only when asked, and without the network times tuned for dpm++2m
    with pytest.raises(ValueError, match="no entry for unipc at nfe=5"):
        reference8.rmse("unipc", 5, str(path))
    assert reference8.rmse("unipc", 5, str(path), options={"borrow": "dpm++2m"}) == reference8.rmse("unipc", 5, times)


def test_cli_grid_optimize_show_and_sample(tmp_path, capsys):
    out = tmp_path / "g.json"
    assert main(["grid", "optimize", "--model", "exact:gmm8", "--solver", "dpm++2m", "--nfe", "5,6",
                 "--method", "search", "--seeds", "0:16", "--reference-nfe", "100", "--iters", "1",
                 "--out", str(out), "--no-progress"]) == 0
    assert main(["grid", "optimize", "--model", "exact:gmm8", "--solver", "unipc", "--nfe", "5",
                 "--method", "analytic", "--out", str(out)]) == 0
    g = read_grid_file(out)
    assert sorted((e.solver, e.nfe, e.method) for e in g.entries) == [
        ("dpm++2m", 5, "search"), ("dpm++2m", 6, "search"), ("unipc", 5, "analytic")]
    assert all(e.score is not None and e.score <= e.provenance.get("start_score", e.score) for e in g.entries)
    capsys.readouterr()
    assert main(["grid", "show", str(out)]) == 0
    text = capsys.readouterr().out
    assert "3 grids" in text and "search" in text and "unipc" in text
    assert main(["grid", "optimize", "--model", "exact:gmm8", "--solver", "euler_a", "--nfe", "5",
                 "--out", str(out)]) == 1
    assert "deterministic" in capsys.readouterr().err
    # the bundled model samples on an analytic grid file, equal to the explicit times
    fashion = tmp_path / "f.json"
    assert main(["grid", "optimize", "--model", "bundled:fashion", "--solver", "dpm++2m", "--nfe", "4",
                 "--out", str(fashion)]) == 0
    assert main(["sample", "--model", "bundled:fashion", "--solver", "dpm++2m", "--nfe", "4", "--n", "2",
                 "--grid", str(fashion), "--out", str(tmp_path / "a.npz"), "--no-progress", "--device", "cpu"]) == 0
    den = fewstep.load_model("bundled:fashion")
    want = fewstep.generate(den, den.sample_shape, [0, 1], "dpm++2m", 4, read_grid_file(fashion).entries[0].times)
    got = np.load(tmp_path / "a.npz")["images"]
    from fewstep.imagegrid import to_uint8

    assert np.array_equal(np.asarray(to_uint8(want)), got) or np.allclose(got, want.numpy(), atol=1e-6)
    assert main(["sample", "--model", "bundled:fashion", "--nfe", "5", "--n", "1", "--grid", str(fashion),
                 "--out", str(tmp_path / "b.npz"), "--no-progress"]) == 1
    assert f"no entry for {fewstep.solvers.DEFAULT_SOLVER} at nfe=5" in capsys.readouterr().err


def test_grid_file_options_apply_to_their_own_solver_only(tmp_path, gmm8, ddpm_linear):
    den = gmm8.denoiser(ddpm_linear)
    times = make_grid(ddpm_linear, 6, "logsnr")
    ratios = [1.0, 1.0, 1.2, 0.9, 1.1, 1.3]
    path = write_grid_file(tmp_path / "dc.json", ddpm_linear,
                           [GridEntry("dc_solver", 6, 6, times.tolist(), "dc", options={"ratios": ratios})])
    assert read_grid_file(path).entries[0].options == {"ratios": ratios}
    x_T = torch.randn(8, 8, generator=torch.Generator().manual_seed(0))
    with_ratios = fewstep.sample(den, x_T, "dc_solver", 6, times, ratios=ratios)
    assert not torch.equal(with_ratios, fewstep.sample(den, x_T, "dc_solver", 6, times))
    assert torch.equal(fewstep.sample(den, x_T, "dc_solver", 6, str(path)), with_ratios)
    # explicit options win over the file's; another solver reads only the times
    assert torch.equal(fewstep.sample(den, x_T, "dc_solver", 6, str(path), ratios=[1.0] * 6),
                       fewstep.sample(den, x_T, "unipc", 6, times))
    assert torch.equal(fewstep.sample(den, x_T, "unipc", 6, str(path), borrow="dc_solver"),
                       fewstep.sample(den, x_T, "unipc", 6, times))


def test_dc_ratios_on_a_searched_grid_and_timetuner_on_top(tmp_path, reference8, ddpm_linear):
    from fewstep.tuning import optimize_grids

    den = reference8.denoiser
    base = [GridEntry("unipc", 6, 6, make_grid(ddpm_linear, 6, "logsnr").tolist(), "search")]
    grid = write_grid_file(tmp_path / "g.json", ddpm_linear, base)
    dc = optimize_grids(den, "dc_solver", [6], "dc", reference=reference8, start=str(grid))[0]
    assert dc.times == base[0].times  # the file's unipc grid, unchanged
    # dc_solver without ratios is unipc; the searched ratios lower the error to the reference
    assert dc.provenance["start_score"] == pytest.approx(reference8.rmse("unipc", 6, str(grid)), rel=1e-12)
    assert len(dc.options["ratios"]) == 6 and dc.score < 0.8 * dc.provenance["start_score"]
    searched = optimize_grids(den, "unipc", [6], "search", reference=reference8, rounds=1, start="uniform")
    kept = optimize_grids(den, "dc_solver", [6], "dc", reference=reference8, start=searched[0].times)[0]
    assert kept.score <= kept.provenance["start_score"]  # ratios that do not help are not kept
    assert (kept.options is None) == (kept.score == kept.provenance["start_score"])
    searched = base
    both = write_grid_file(tmp_path / "dc.json", ddpm_linear, searched + [dc])
    assert reference8.rmse("dc_solver", 6, str(both)) == pytest.approx(dc.score, rel=1e-9)
    tt = optimize_grids(den, "dc_solver", [6], "timetuner", reference=reference8, rounds=1, start=str(both))[0]
    assert tt.options == dc.options and tt.times == dc.times and tt.net_times is not None
    assert tt.provenance["start_score"] == pytest.approx(dc.score, rel=1e-9) and tt.score < dc.score
    path = write_grid_file(tmp_path / "tt.json", ddpm_linear, [tt])
    assert reference8.rmse("dc_solver", 6, str(path)) == pytest.approx(tt.score, rel=1e-9)
    with pytest.raises(ValueError, match="use solver dc_solver"):
        optimize_grids(den, "unipc", [6], "dc", reference=reference8)


def test_cached_reference_is_the_near_exact_solution_and_is_reused(tmp_path, gmm8, ddpm_linear, monkeypatch):
    from fewstep.tuning import reference_cache
    from fewstep.tuning.reference import ReferenceSettings, near_exact_batch

    den = gmm8.denoiser(ddpm_linear)
    ref = ReferenceSet(den, (8,), range(5, 21), nfe=50, cache_dir=str(tmp_path))
    want = near_exact_batch(den, (8,), list(range(5, 21)), ReferenceSettings("dpm++3m", 50, "logsnr"))
    assert torch.equal(ref.reference, want) and list(tmp_path.rglob("*.safetensors"))
    # one computation: the uncached reference set is the same solution (no float32 storage in between here)
    assert torch.equal(ReferenceSet(den, (8,), range(5, 21), nfe=50, batch_size=5).reference, want)
    monkeypatch.setattr(reference_cache, "near_exact_batch", lambda *a, **k: pytest.fail("recomputed"))
    again = ReferenceSet(den, (8,), range(5, 21), nfe=50, cache_dir=str(tmp_path))
    assert torch.equal(again.reference, want)
    with pytest.raises(ValueError, match="contiguous"):
        ReferenceSet(den, (8,), [1, 3], nfe=50, cache_dir=str(tmp_path))


def test_bench_model_runs_a_grid_file_only_for_the_solvers_and_nfes_it_was_tuned_for(tmp_path, ddpm_linear):
    from fewstep.bench.model import _tuned_runs

    path = str(write_grid_file(tmp_path / "g.json", ddpm_linear, [_entry(ddpm_linear, "unipc", 5)]))
    runs = [("unipc", path, 5), ("unipc", path, 6), ("ipndm", path, 5), ("unipc", "logsnr", 6)]
    kept, skipped = _tuned_runs(runs, ddpm_linear)
    assert kept == [("unipc", path, 5), ("unipc", "logsnr", 6)]
    assert len(skipped) == 2 and all("no grid optimized for it" in s for s in skipped)


@pytest.mark.parametrize("name", ["bundled:fashion", "bundled:fashion-v1"])
def test_the_grids_shipped_with_bundled_models_resolve_by_name(name):
    from fewstep.nettimes import time_tuned

    den = fewstep.load_model(name)
    shipped = read_grid_file(name)
    assert shipped.entries and shipped.process == den.process.config()
    for e in shipped.entries:
        assert make_grid(den.process, e.steps, name, solver=e.solver, nfe=e.nfe).tolist() == e.times
    e = max(shipped.entries, key=lambda e: (e.net_times is not None) + (e.options is not None))
    x_T = fewstep.prior_noise(den.process, den.sample_shape, fewstep.generators([3]))
    want = fewstep.sample(time_tuned(den, e.times, e.net_times), x_T, e.solver, e.nfe, e.times, **(e.options or {}),
                          teleport=e.teleport)
    assert torch.equal(fewstep.sample(den, x_T, e.solver, e.nfe, name), want)
    with pytest.raises(ValueError, match="unknown bundled model"):
        make_grid(den.process, 5, "bundled:nope")


def test_cli_dc_method_and_reference_cache(tmp_path, capsys):
    out, cache = tmp_path / "dc.json", tmp_path / "cache"
    common = ["grid", "optimize", "--model", "exact:gmm8", "--nfe", "6", "--seeds", "0:16", "--reference-nfe", "60",
              "--reference-cache", str(cache), "--no-progress", "--out", str(out)]
    assert main(common + ["--solver", "dc_solver", "--method", "dc", "--start", "logsnr"]) == 0
    e = read_grid_file(out).entries[0]
    assert e.solver == "dc_solver" and e.method == "dc" and e.score <= e.provenance["start_score"]
    assert e.provenance["reference"]["near_exact"] and list(cache.rglob("0-16.safetensors"))
    capsys.readouterr()
    assert main(["grid", "show", str(out)]) == 0
    assert ("ratios" in capsys.readouterr().out) == (e.options is not None)
    assert main(common + ["--solver", "unipc", "--method", "dc"]) == 1
    assert "use solver dc_solver" in capsys.readouterr().err
