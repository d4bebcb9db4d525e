"""``fewstep stats``, ``fewstep eval`` and ``fewstep bench model`` on a stand-in 28x28 model."""

import json
import re
import shutil
import subprocess

import numpy as np
import pytest
import torch

import fewstep
from fewstep.bench.model import ModelBenchConfig, run_model_bench
from fewstep.cli import main
from fewstep.metrics import FeatureStats, get_extractor
from fewstep.metrics.evaluate import sample_stats
from fewstep.metrics.sampling import solver_sample_fn
from fewstep.processes import VPDiscrete

from conftest import fashion_standin


@pytest.fixture(scope="module")
def standin():
    return fashion_standin()


def test_results_do_not_depend_on_batch_size(standin):
    ext = get_extractor("fashion")
    fn = solver_sample_fn(standin, (1, 28, 28), "ddim", 3)
    a = sample_stats(fn, 10, ext, batch_size=3, progress=False)
    b = sample_stats(fn, 10, ext, batch_size=10, progress=False)
    np.testing.assert_allclose(a.stats.mu, b.stats.mu, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(a.stats.features, b.stats.features, rtol=1e-4, atol=1e-4)


def test_stats_and_eval_commands(tmp_path, standin, monkeypatch, capsys):
    images = (np.random.default_rng(0).random((40, 28, 28)) * 255).astype(np.uint8)
    np.save(tmp_path / "data.npy", images)
    assert main(["stats", "--data", str(tmp_path / "data.npy"), "--out", str(tmp_path / "ref.npz"),
                 "--extractor", "fashion", "--batch-size", "16", "--device", "cpu"]) == 0
    ref = FeatureStats.load(tmp_path / "ref.npz")
    assert ref.n == 40 and ref.extractor == "fashion-classifier-v1"
    monkeypatch.setattr("fewstep.metrics.models.load_denoiser", lambda model, device=None: standin)
    capsys.readouterr()
    assert main(["eval", "--model", "standin", "--solver", "dpm++2m", "--nfe", "3", "--n", "12", "--batch-size",
                 "5", "--ref", str(tmp_path / "ref.npz"), "--extractor", "fashion", "--device", "cpu",
                 "--out", str(tmp_path / "m.json")]) == 0
    result = json.loads((tmp_path / "m.json").read_text())
    assert result["fid"] > 0 and {"kid", "precision", "recall"} <= set(result)
    # default reference: the shipped Fashion-MNIST test-set statistics
    assert main(["eval", "--model", "standin", "--solver", "ddim", "--nfe", "2", "--n", "8", "--extractor",
                 "fashion", "--device", "cpu", "--no-progress"]) == 0
    assert "ddim nfe=2" not in capsys.readouterr().err  # --no-progress: no bar on stderr
    # --reference: the error to the near-exact ODE solution, cached beside --out
    args = ["eval", "--model", "standin", "--solver", "dpm++2m", "--nfe", "3", "--n", "6", "--extractor", "fashion",
            "--device", "cpu", "--reference", "--reference-nfe", "12", "--out", str(tmp_path / "e.json")]
    assert main(args) == 0
    result = json.loads((tmp_path / "e.json").read_text())
    assert 0 < result["rmse"] < 2 and result["psnr"] > 0 and result["error_reference"]["nfe"] == 12
    assert len(list((tmp_path / "reference-cache").glob("*/0-6.safetensors"))) == 1


def test_eval_errors_are_clear(tmp_path, capsys):
    assert main(["stats", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "r.npz"),
                 "--extractor", "fashion"]) == 1
    assert "fashion-mnist[:train|:test|:DIR]" in capsys.readouterr().err
    assert main(["eval", "--ref", str(tmp_path / "missing.npz"), "--extractor", "fashion", "--n", "4"]) == 1
    assert "fewstep stats" in capsys.readouterr().err


def _chromium():
    return next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)


@pytest.fixture(scope="module")
def bench_out(tmp_path_factory, standin):
    out = tmp_path_factory.mktemp("bench")
    cfg = ModelBenchConfig(model="standin", solvers=["ddim", "dpm++2m"], nfes=[2, 3], n=12, batch_size=6,
                           extractor="fashion", device="cpu", grid_images=8, out=str(out), reference_nfe=20)
    rows = run_model_bench(cfg, denoiser=standin, progress=False)
    return out, rows


def test_bench_model_outputs(bench_out):
    out, rows = bench_out
    assert [(r["solver"], r["nfe"]) for r in rows] == [("ddim", 2), ("ddim", 3), ("dpm++2m", 2), ("dpm++2m", 3)]
    assert all(r["fid"] > 0 and r["sample_s"] > 0 and r["nfe_used"] == r["nfe"] for r in rows)
    for name in ("results.csv", "results.json", "results.md", "fid_vs_nfe.png", "fid_vs_time.png", "rmse_vs_nfe.png",
                 "rmse_vs_time.png", "report.html"):
        assert (out / name).stat().st_size > 0, name
    # the error to the near-exact solution, beside FID in every table
    assert all(0 < r["rmse"] < 2 and r["psnr"] == pytest.approx(r["psnr"]) and "rmse_median" in r and "rmse_se" in r
               for r in rows)
    ddim = {r["nfe"]: r["rmse"] for r in rows if r["solver"] == "ddim"}
    assert ddim[3] < ddim[2]
    header = (out / "results.md").read_text().splitlines()[0]
    assert "| fid | rmse | rmse_median | rmse_se | psnr |" in header
    assert {"rmse", "rmse_median", "rmse_se", "psnr", "psnr_se"} <= set((out / "results.csv").read_text().split("\n")[0].split(","))
    assert len(list((out / "reference-cache").glob("*/0-12.safetensors"))) == 1
    assert len(list((out / "samples").glob("*.png"))) == 4
    saved = json.loads((out / "results.json").read_text())
    assert len(saved["rows"]) == 4 and saved["meta"]["extractor"].startswith("fashion-classifier-v1")
    assert saved["meta"]["error reference"].startswith("near-exact ODE solution") and saved["rows"][0]["rmse"] > 0
    page = (out / "report.html").read_text()
    assert "<th>rmse</th>" in page and "<th>psnr</th>" in page and "rmse_vs_nfe" in page
    assert page.count("class='sample-grid'") == 4 and "src='http" not in page and "<script" not in page


def test_html_report_opens_in_headless_chromium(bench_out, tmp_path):
    browser = _chromium()
    if browser is None:
        pytest.skip("Chromium is not installed (apt-get install chromium) - cannot check the HTML report renders")
    out, _ = bench_out
    probe = tmp_path / "probe.html"
    # A copy of the report with a probe script that counts the images that decoded.
    probe.write_text((out / "report.html").read_text().replace(
        "</body>", "<script>window.onload=()=>{const i=[...document.images];document.body.setAttribute("
                   "'data-loaded',i.filter(x=>x.complete&&x.naturalWidth>0).length+'/'+i.length)}</script></body>"))
    dom = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000",
                          "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=60).stdout
    loaded = re.search(r'data-loaded="(\d+)/(\d+)"', dom)
    assert loaded, dom[:500]
    assert loaded.group(1) == loaded.group(2) == "8"  # 4 plots + 4 sample grids


def test_benchmark_drives_diffusers_from_the_same_noise(standin):
    """benchmarks/fashion_fid.py: diffusers' DDIM from fewstep's seeds equals fewstep's DDIM on the same times."""
    import runpy
    from pathlib import Path

    pytest.importorskip("diffusers")
    script = runpy.run_path(str(Path(__file__).parents[1] / "benchmarks" / "fashion_fid.py"))
    name, options = script["DIFFUSERS"]["diffusers DDIM"]
    with torch.no_grad():
        theirs = script["diffusers_sampler"](standin, (1, 28, 28), 5, name, options, "cpu")([3, 4])
        times = [float(round(1000 - k * 200) - 1) for k in range(5)] + [0.0]  # trailing spacing
        ours = fewstep.generate(standin, (1, 28, 28), [3, 4], "ddim", 5, times)
    torch.testing.assert_close(ours, theirs, atol=2e-4 * float(theirs.abs().max()), rtol=1e-4)


def test_diverged_configuration_scores_inf(tmp_path):
    den = fewstep.Denoiser(lambda x, t: x * float("nan"), VPDiscrete.linear(), "eps")
    cfg = ModelBenchConfig(model="nan", solvers=["ddim"], nfes=[2], n=4, batch_size=4, extractor="fashion",
                           device="cpu", shape=[1, 28, 28], out=str(tmp_path))
    rows = run_model_bench(cfg, denoiser=den, progress=False)
    assert rows[0]["fid"] == float("inf") and (tmp_path / "report.html").exists()


def test_bench_model_resumes_finished_configurations(bench_out, standin):
    out, rows = bench_out
    counter = fewstep.NFECounter(standin)
    cfg = ModelBenchConfig(model="standin", solvers=["ddim", "dpm++2m"], nfes=[2, 3, 4], n=12, batch_size=6,
                           extractor="fashion", device="cpu", grid_images=8, out=str(out), reference_nfe=20)
    again = run_model_bench(cfg, denoiser=counter, progress=False)
    # only the new configurations were sampled: ddim and dpm++2m at 4 NFE, 12 samples each (2 batches of 6),
    # plus two warm-up batches (one untimed, one timed for the estimate); the near-exact solutions are cached
    assert counter.count == 2 * 2 * 4 + 2 * 4
    saved = json.loads((out / "evaluations.json").read_text())
    assert saved["format"] == "fewstep-evaluations-1" and len(saved["entries"]) == 6
    assert all(e["key"]["solution"]["nfe"] == 20 and e["key"]["solution"]["solver"] == "dpm++3m"
               for e in saved["entries"])
    assert {e["key"]["sampler"]["solver"] for e in saved["entries"]} == {"ddim", "dpm++2m"}
    old = {(r["solver"], r["nfe"]): r["fid"] for r in rows}
    assert {(r["solver"], r["nfe"]): r["fid"] for r in again if r["nfe"] < 4} == old
    assert len(list((out / "samples").glob("*.png"))) == 6
    # a different sweep (other n) is not mixed with the saved one; its near-exact solutions come from the cache
    counter.count = 0
    cfg.n, cfg.nfes, cfg.solvers = 6, [2], ["ddim"]
    run_model_bench(cfg, denoiser=counter, progress=False)
    assert counter.count == 2 + 2 * 2
    # other reference settings are another key: sampled again, with a new reference (one batch of 6, 10 NFE)
    counter.count = 0
    cfg.reference_nfe = 10
    run_model_bench(cfg, denoiser=counter, progress=False)
    assert counter.count == 2 + 2 * 2 + 10
    # without the reference: no error columns, and keys without a solution entry
    counter.count = 0
    cfg.reference = False
    rows = run_model_bench(cfg, denoiser=counter, progress=False)
    assert counter.count == 2 + 2 * 2 and "rmse" not in rows[0] and "rmse" not in (out / "results.md").read_text()


def test_bench_model_ode_limit_row(tmp_path, standin):
    cfg = ModelBenchConfig(model="standin", solvers=["ddim"], nfes=[2], n=6, batch_size=6, extractor="fashion",
                           device="cpu", grid_images=4, out=str(tmp_path), limit_nfe=8)
    rows = run_model_bench(cfg, denoiser=standin, progress=False)
    assert [(r["solver"], r["nfe"], r.get("role")) for r in rows] == [("ddim", 2, None), ("dpm++2m", 8, "ODE limit")]
    assert rows[0]["grid"] == "uniform"  # the process's default grid, by name
    assert "ODE limit" in (tmp_path / "results.md").read_text()


def test_garbage_reference_is_one_clear_line(tmp_path, capsys):
    from fewstep.metrics.fashion_classifier import asset_dir

    shipped = (asset_dir() / "fashion_test_stats.npz").read_bytes()
    (tmp_path / "trunc.npz").write_bytes(shipped[:len(shipped) // 2])
    (tmp_path / "junk.npz").write_bytes(b"not a zip file at all")
    np.savez(tmp_path / "keys.npz", mean=np.zeros(3))
    for name in ("trunc.npz", "junk.npz", "keys.npz"):
        capsys.readouterr()
        assert main(["eval", "--ref", str(tmp_path / name), "--extractor", "fashion", "--n", "4"]) == 1
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and "Traceback" not in err, err
        assert str(tmp_path / name) in err and "fewstep stats" in err, err
    assert "no 'mu' or 'sigma'" in err


def test_stats_reports_mixed_sizes_and_channels(tmp_path, capsys):
    from PIL import Image

    rng = np.random.default_rng(0)
    folder = tmp_path / "mixed"
    folder.mkdir()
    for i in range(3):
        Image.fromarray((rng.random((28, 28)) * 255).astype(np.uint8)).save(folder / f"a{i}.png")
    Image.fromarray((rng.random((32, 32)) * 255).astype(np.uint8)).save(folder / "b.png")
    args = ["stats", "--data", str(folder), "--out", str(tmp_path / "r.npz"), "--extractor", "fashion", "--device", "cpu"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "found sizes 28x28 (3 files), 32x32 (1 file)" in err and "--resolution" in err
    assert main(args + ["--resolution", "28"]) == 0
    assert FeatureStats.load(tmp_path / "r.npz").n == 4
    Image.fromarray((rng.random((28, 28, 3)) * 255).astype(np.uint8)).save(folder / "c.png")
    assert main(args + ["--resolution", "28"]) == 1
    assert "channel mismatch" in capsys.readouterr().err
    rgb = tmp_path / "rgb"
    rgb.mkdir()
    for i in range(2):
        Image.fromarray((rng.random((28, 28, 3)) * 255).astype(np.uint8)).save(rgb / f"{i}.png")
    assert main(["stats", "--data", str(rgb), "--out", str(tmp_path / "s.npz"), "--extractor", "fashion"]) == 1
    err = capsys.readouterr().err
    assert "channel mismatch" in err and "3-channel" in err and "fashion-classifier-v1" in err


def test_eval_takes_threads_and_announces_the_total(standin, monkeypatch, capsys):
    monkeypatch.setattr("fewstep.metrics.models.load_denoiser", lambda model, device=None: standin)
    before = torch.get_num_threads()
    try:
        assert main(["eval", "--model", "standin", "--solver", "ddim", "--nfe", "2", "--n", "6", "--extractor",
                     "fashion", "--device", "cpu", "--threads", "1"]) == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    out = capsys.readouterr().out
    assert "6 samples" in out and "12 image-evaluations" in out
    assert json.loads(out[out.index("{"):])["sample_s"] > 0


def test_bench_model_announces_plan_and_estimate(tmp_path, standin, capsys):
    from fewstep.bench.model import plan_summary

    cfg = ModelBenchConfig(model="standin", solvers=["ddim"], nfes=[2, 3], n=4, batch_size=4, extractor="fashion",
                           device="cpu", grid_images=0, out=str(tmp_path))
    run_model_bench(cfg, denoiser=standin, progress=True)
    out = capsys.readouterr().out
    assert "2 configurations x 4 samples" in out and "8 samples, 20 image-evaluations" in out and "estimated" in out
    assert "plus the near-exact reference: 4 samples x 200 NFE to compute" in out
    with_ref = plan_summary(1, 0, [10], 1000, 1e-3, "cpu", reference=(400, 1000, 200))
    assert "400 samples x 200 NFE to compute (600 cached)" in with_ref and "estimated 2 min" in with_ref  # 90k evals
    long = plan_summary(192, 0, [10] * 192, 10_000, 2.5e-3, "cpu")
    assert "13.3 h on cpu" in long and "That is long" in long and "resumes" in long
    assert "min on cpu" in plan_summary(1, 0, [10], 10_000, 2.5e-3, "cpu") and "That is long" not in plan_summary(
        1, 0, [10], 10_000, 2.5e-3, "cpu")
