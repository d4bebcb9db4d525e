"""The error to the near-exact ODE solution: reference solutions, their cache, RMSE/PSNR, evaluate."""

import math
import warnings

import numpy as np
import pytest
import torch

import fewstep
from fewstep.exact import reference_solution
from fewstep.metrics import get_extractor
from fewstep.metrics.evaluate import evaluate, sample_stats
from fewstep.metrics.models import reference_stats
from fewstep.fingerprint import model_fingerprint
from fewstep.tuning import NearExact, ReferenceSettings, reference_solutions
from fewstep.metrics.sampling import solver_sample_fn
from fewstep.metrics.solution_error import per_sample_rmse, psnr, summarize_errors

from conftest import fashion_standin

QUICK = ReferenceSettings("dpm++3m", 6, "logsnr")


@pytest.fixture(scope="module")
def standin():
    return fashion_standin()


# -- the reference solution ----------------------------------------------------------------------

def test_reference_agrees_with_float64_ode_on_exact_model(gmm8, ddpm_linear):
    """On an exact mixture, the near-exact reference is x0_hat(x(t_min), t_min) of DOP853's tight solve."""
    den = gmm8.denoiser(ddpm_linear)
    seeds = range(3, 9)
    ours = reference_solutions(den, (8,), seeds, ReferenceSettings("dpm++3m", 200, "logsnr", "float64"),
                               progress=False)
    x_T = fewstep.prior_noise(ddpm_linear, (8,), fewstep.generators(seeds), dtype=torch.float64)
    t_min = float(ddpm_linear.t_min)
    exact = den.predict(reference_solution(den, x_T, t_end=t_min, rtol=1e-11, atol=1e-11), t_min).x0
    err = float((ours.double() - exact).abs().max())
    assert err < 2e-5, err  # float32 storage (~1e-7) plus the solver's error at 200 NFE
    # and it is what a few-step solver converges to: the error falls as the NFE grows
    errs = [float((fewstep.generate(den, (8,), seeds, "dpm++2m", nfe, "logsnr", dtype=torch.float64)
                   - exact).pow(2).mean().sqrt()) for nfe in (5, 10, 20, 40)]
    assert all(b < a for a, b in zip(errs, errs[1:])), errs


def test_reference_settings_refuse_bad_solvers():
    with pytest.raises(ValueError, match="deterministic fixed-NFE"):
        ReferenceSettings("euler_a", 100)
    with pytest.raises(ValueError, match="at least 2"):
        ReferenceSettings("dpm++3m", 1)
    with pytest.raises(ValueError, match="unknown solver"):
        ReferenceSettings("dpm+++", 100)


# -- RMSE and PSNR -------------------------------------------------------------------------------

def test_rmse_and_psnr_formulas():
    x = torch.zeros(4, 1, 5, 5)
    off = torch.tensor([0.1, 0.2, 0.4, 0.0]).reshape(4, 1, 1, 1)
    r = per_sample_rmse(x + off, x)
    torch.testing.assert_close(r, torch.tensor([0.1, 0.2, 0.4, 0.0], dtype=torch.float64))
    np.testing.assert_allclose(psnr(0.1), 20 * math.log10(2 / 0.1))  # 26.02 dB
    assert psnr(0.0) == math.inf
    s = summarize_errors(np.array([0.1, 0.2, 0.4]))
    assert s["rmse"] == pytest.approx(0.7 / 3) and s["rmse_median"] == pytest.approx(0.2)
    assert s["rmse_se"] == pytest.approx(np.std([0.1, 0.2, 0.4], ddof=1) / math.sqrt(3))
    assert s["psnr"] == pytest.approx(np.mean([20 * math.log10(2 / v) for v in (0.1, 0.2, 0.4)]))
    # both sides are clamped to the model range [-1, 1] first
    assert float(per_sample_rmse(torch.full((1, 1, 2, 2), 3.0), torch.full((1, 1, 2, 2), 0.5))) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="differ in shape"):
        per_sample_rmse(torch.zeros(2, 1, 4, 4), torch.zeros(2, 1, 4, 5))


def test_evaluate_accumulates_the_error_batch_by_batch():
    """Any sample function: a constant offset of 0.1 to the reference gives RMSE 0.1 and PSNR 26.02 dB."""
    ext = get_extractor("fashion")
    ref = reference_stats(None, ext)

    def images(seeds):  # a different image per seed, inside [-0.5, 0.5]
        return torch.stack([torch.rand(1, 28, 28, generator=torch.Generator().manual_seed(s)) - 0.5 for s in seeds])

    result = evaluate(lambda seeds: images(seeds) + 0.1, 7, ext, ref, seed=5, batch_size=3, progress=False,
                      reference=images)
    assert result["rmse"] == pytest.approx(0.1) and result["rmse_median"] == pytest.approx(0.1)
    assert result["psnr"] == pytest.approx(20 * math.log10(20)) and result["fid"] > 0
    # a tensor of reference images, image i for seed 5 + i, gives the same; other batch sizes too
    run = sample_stats(lambda seeds: images(seeds) + 0.1, 7, ext, seed=5, batch_size=7, progress=False,
                       reference=images(range(5, 12)))
    np.testing.assert_allclose(run.errors, 0.1, rtol=1e-6)
    assert "rmse" not in evaluate(images, 4, ext, ref, progress=False)
    with pytest.raises(ValueError, match="holds 3 images"):
        sample_stats(images, 4, ext, batch_size=4, progress=False, reference=images(range(3)))


def test_error_decreases_with_nfe_for_a_second_order_solver(standin):
    ext = get_extractor("fashion")
    ref = reference_stats(None, ext)
    near = NearExact(standin, (1, 28, 28), range(0, 6), ReferenceSettings("dpm++3m", 100, "logsnr"), progress=False)
    errs = [evaluate(solver_sample_fn(standin, (1, 28, 28), "dpm++2m", nfe), 6, ext, ref, batch_size=6,
                     progress=False, reference=near)["rmse"] for nfe in (2, 4, 8, 16)]
    assert all(b < 0.7 * a for a, b in zip(errs, errs[1:])), errs


# -- the cache -----------------------------------------------------------------------------------

def _near(den, tmp_path, seeds=range(0, 10), **kw):
    kw = {"chunk_size": 4, "batch_size": 3, "progress": False, **kw}
    return NearExact(den, (1, 28, 28), seeds, QUICK, cache_dir=tmp_path, **kw)


def test_cache_is_read_back_without_network_calls(standin, tmp_path):
    first = fewstep.NFECounter(standin)
    a = _near(first, tmp_path)
    assert a.prepare() == 10 and first.count == 5 * QUICK.nfe  # batches of <= 3 within chunks [0,4) [4,8) [8,10): 2 + 2 + 1
    assert sorted(p.name for p in (tmp_path / a.key).iterdir()) == ["0-4.safetensors", "4-8.safetensors",
                                                                    "8-10.safetensors"]
    images = a(list(range(10)))
    assert images.shape == (10, 1, 28, 28)
    # the same seed's image, whatever the batch: it is fewstep.generate's x_T solved to t_min
    torch.testing.assert_close(images[7:8], _near(standin, tmp_path / "other", range(7, 8))(([7])))
    again = fewstep.NFECounter(standin)
    b = _near(again, tmp_path)
    assert b.key == a.key and b.prepare() == 0
    torch.testing.assert_close(b(list(range(10))), images)
    torch.testing.assert_close(reference_solutions(again, (1, 28, 28), range(2, 9), QUICK, cache_dir=tmp_path,
                                                   chunk_size=4, progress=False), images[2:9])
    assert again.count == 0  # everything read from disk (inner chunks of another range included)


def test_key_depends_on_model_settings_and_seeds(standin, tmp_path):
    a = _near(standin, tmp_path)
    assert _near(fewstep.NFECounter(standin), tmp_path).key == a.key
    other = fashion_standin()
    with torch.no_grad():
        other.net.conv.bias += 0.01
    assert model_fingerprint(other) != model_fingerprint(standin)
    assert _near(other, tmp_path).key != a.key
    more = NearExact(standin, (1, 28, 28), range(10), ReferenceSettings("dpm++3m", 7, "logsnr"), cache_dir=tmp_path)
    assert more.key != a.key
    a.prepare()
    counter = fewstep.NFECounter(standin)
    shifted = _near(counter, tmp_path, range(10, 14))  # another seed range: other chunk files
    assert shifted.key == a.key and shifted.missing() == [(10, 12), (12, 14)]
    shifted.prepare()
    assert counter.count == 2 * QUICK.nfe


def test_truncated_cache_file_is_recomputed(standin, tmp_path):
    a = _near(standin, tmp_path)
    a.prepare()
    good = a(list(range(10)))
    path = tmp_path / a.key / "4-8.safetensors"
    path.write_bytes(path.read_bytes()[:100])
    counter = fewstep.NFECounter(standin)
    b = _near(counter, tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert b.missing() == [(4, 8)]
        torch.testing.assert_close(b(list(range(10))), good)
    assert counter.count == 2 * QUICK.nfe and any("4-8.safetensors" in str(w.message) for w in caught)


def test_interrupted_run_resumes(standin, tmp_path):
    class Kill(fewstep.NFECounter):
        def predict(self, *args, **kw):
            if self.count >= 2 * QUICK.nfe + 2:  # during the third chunk (one batch per chunk)
                raise KeyboardInterrupt
            return super().predict(*args, **kw)

    with pytest.raises(KeyboardInterrupt):
        _near(Kill(standin), tmp_path, chunk_size=2, batch_size=2).prepare()
    counter = fewstep.NFECounter(standin)
    resumed = _near(counter, tmp_path, chunk_size=2, batch_size=2)
    assert resumed.missing() == [(4, 6), (6, 8), (8, 10)]  # two finished chunks kept, the third lost
    assert resumed.prepare() == 6 and counter.count == 3 * QUICK.nfe
    assert not [p for p in (tmp_path / resumed.key).iterdir() if p.name.endswith(".tmp")]


def test_seeds_outside_the_range_are_refused(standin):
    near = NearExact(standin, (1, 28, 28), range(5), QUICK, progress=False)
    with pytest.raises(ValueError, match="outside"):
        near([5])
    with pytest.raises(ValueError, match="contiguous"):
        NearExact(standin, (1, 28, 28), [0, 2], QUICK)


def test_cli_reference_options():
    from fewstep.cli import build_parser
    from fewstep.commands._reference import reference_settings

    parser = build_parser()
    bench = parser.parse_args(["bench", "model"])
    assert bench.reference and reference_settings(bench) == ReferenceSettings()  # on by default
    assert not parser.parse_args(["bench", "model", "--no-reference"]).reference
    args = parser.parse_args(["bench", "model", "--reference-solver", "dpm++2m", "--reference-nfe", "50",
                              "--reference-grid", "default"])
    assert reference_settings(args) == ReferenceSettings("dpm++2m", 50, None)
    assert not parser.parse_args(["eval"]).reference and parser.parse_args(["eval", "--reference"]).reference
