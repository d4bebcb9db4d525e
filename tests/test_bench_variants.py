"""``fewstep bench model`` variants (caches, step schedules, other models), timing rounds and the Pareto front."""

import json

import torch

from fewstep.bench.model import ModelBenchConfig, mark_pareto, pareto_front, pareto_table, run_model_bench
from fewstep.cli import main

import fewstep
from fewstep.nets import build_net
from fewstep.processes import VPDiscrete

from conftest import TINY_UNET, fashion_standin


def test_pareto_front_is_the_set_no_other_point_beats():
    rows = [{"ms_per_image": t, "fid": f, "rmse": e, "solver": "s", "nfe": i}
            for i, (t, f, e) in enumerate([(1, 10, 0.5), (2, 8, 0.4), (2, 9, 0.3), (3, 8, 0.1), (4, 3, 0.2),
                                           (5, 3, 0.2), (0.5, float("nan"), 0.9), (6, 2, float("inf"))])]
    assert pareto_front(rows, "ms_per_image", "fid") == [0, 1, 4, 7]  # (3, 8) ties (2, 8) on FID, slower
    assert pareto_front(rows, "ms_per_image", "rmse") == [6, 0, 2, 3]  # (2, 0.4) loses to (2, 0.3); inf is left out
    mark_pareto(rows)
    assert [r["pareto"] for r in rows] == ["fid+rmse", "fid", "rmse", "rmse", "fid", "", "rmse", "fid"]
    table = pareto_table(rows, "fid").splitlines()
    assert len(table) == 2 + 4 and table[2].startswith("| s nfe=0 | 1.0 | 10 | 0.5 |")


def test_bench_model_runs_variants_on_the_same_axes(tmp_path, capsys):
    torch.manual_seed(0)
    net = build_net({**TINY_UNET, "resolution": 28}).eval()
    torch.nn.init.normal_(net.conv_out.weight, std=0.1)  # zero-initialised: the output would not depend on x
    den = fewstep.Denoiser(net, VPDiscrete.linear(), "eps", sample_shape=(1, 28, 28))
    cfg = ModelBenchConfig(model="standin", solvers=["ddim", "dpm++2m"], nfes=[2, 4], n=8, batch_size=4, extractor="fashion",
                           device="cpu", grid_images=4, out=str(tmp_path), reference_nfe=8,
                           caches=["deepcache:2", "none", "taylorseer:interval=2,order=1"], variant_nfes=[4], variant_solvers=["dpm++2m"],
                           timing_rounds=2, timing_batch=2)
    rows = run_model_bench(cfg, denoiser=den, progress=False)
    labels = [(r["solver"], r["nfe"], r.get("cache", "")) for r in rows]
    assert labels == [("ddim", 2, ""), ("ddim", 4, ""), ("dpm++2m", 2, ""), ("dpm++2m", 4, ""),
                      ("dpm++2m", 4, "deepcache:interval=2"), ("dpm++2m", 4, "taylorseer:interval=2,order=1")]
    assert all(r["timing_rounds"] == 2 and r["ms_per_image"] > 0 and r["ms_spread"] >= 0 and r["fid"] > 0 and
               r["eval_ms_per_image"] > 0 for r in rows)
    for cached in rows[4:]:
        assert (cached["full_evals"], cached["cached_evals"]) == (2, 2)
    assert rows[4]["rmse"] != rows[3]["rmse"]
    assert all(r["pareto"] in ("", "fid", "rmse", "fid+rmse") for r in rows)
    front = {i for i in pareto_front(rows)}
    assert front and all((rows[i]["pareto"].startswith("fid")) for i in front)
    pareto = (tmp_path / "pareto.md").read_text()
    assert "wall time against FID" in pareto and "wall time against RMSE" in pareto
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["meta"]["wall time"].startswith("median of 2 interleaved rounds of one 2-image batch")
    assert len(list((tmp_path / "samples").glob("*taylorseer*.png"))) == 1
    assert "Pareto front" in capsys.readouterr().out


def test_bench_cli_checks_variant_specs_before_loading(capsys):
    assert main(["bench", "model", "--model", "does-not-exist", "--cache", "deepcach:3", "--out", "x"]) != 0
    assert "unknown method 'deepcach'" in capsys.readouterr().err


def test_a_variant_the_network_cannot_run_scores_nan_and_the_sweep_goes_on(tmp_path):
    cfg = ModelBenchConfig(model="standin", solvers=["ddim"], nfes=[3], n=4, batch_size=4, extractor="fashion",
                           device="cpu", out=None, reference=False, caches=["deepcache:2"])
    rows = run_model_bench(cfg, denoiser=fashion_standin(), progress=False)
    assert rows[0]["fid"] > 0 and rows[1]["fid"] != rows[1]["fid"] and "deep" in rows[1]["note"]
