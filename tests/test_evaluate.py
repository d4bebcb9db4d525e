"""evaluate(sample_fn, ...): the one evaluation entry point, its resume store and its errors."""

import json

import numpy as np
import pytest
import torch

import fewstep
from fewstep.metrics import FeatureStats, frechet_distance, get_extractor
from fewstep.metrics.evaluate import DivergedError, evaluate, quantize
from fewstep.metrics.models import reference_id, reference_stats, sample_shape
from fewstep.metrics.resume import FORMAT, EvalStore, evaluation_key, finished
from fewstep.metrics.sampling import KeepFirst, solver_sample_fn

from conftest import fashion_standin


@pytest.fixture(scope="module")
def setup():
    den = fashion_standin()
    ext = get_extractor("fashion")
    return den, ext, reference_stats(None, ext)


def test_sample_fn_path_gives_exactly_the_fid_of_the_direct_pipeline(setup):
    den, ext, ref = setup
    # the pipeline spelled out: fewstep.generate per batch of seeds, 8-bit quantisation, features, Frechet distance
    stats = FeatureStats.like(ext)
    with torch.no_grad():
        for seeds in ([0, 1, 2, 3, 4], [5, 6, 7, 8, 9], [10, 11]):
            x = fewstep.generate(den, (1, 28, 28), seeds, "dpm++2m", 4, "uniform")
            stats.update(ext(quantize(x)))
    direct = frechet_distance(stats.mu, stats.sigma, ref.mu, ref.sigma)
    fn = solver_sample_fn(den, (1, 28, 28), "dpm++2m", 4, "uniform")
    result = evaluate(fn, 12, ext, ref, batch_size=5, progress=False)
    assert result["fid"] == direct
    assert result["nfe_used"] == 4 and result["n"] == 12 and result["sample_s"] > 0
    assert {"kid", "kid_std", "precision", "recall", "feature_s", "ms_per_image"} <= set(result)


def test_results_do_not_depend_on_batch_size(setup):
    den, ext, ref = setup
    fn = solver_sample_fn(den, (1, 28, 28), "ddim", 3)
    a = evaluate(fn, 10, ext, ref, batch_size=3, progress=False)
    b = evaluate(fn, 10, ext, ref, batch_size=10, progress=False)
    for k in ("fid", "kid", "precision", "recall"):
        assert a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-6), k


def test_any_sample_function_is_evaluated_the_same_way(setup):
    _, ext, ref = setup

    def one_step(seeds):  # a "generator": one image per seed, independent of the batch
        return torch.stack([torch.rand(1, 28, 28, generator=torch.Generator().manual_seed(s)) * 2 - 1 for s in seeds])

    kept = KeepFirst(one_step, 3)
    a = evaluate(kept, 8, ext, ref, batch_size=2, progress=False, seed=100)
    assert "nfe_used" not in a and a["seed"] == 100
    torch.testing.assert_close(kept.images, one_step([100, 101, 102]))
    assert evaluate(one_step, 8, ext, ref, batch_size=8, progress=False, seed=100)["fid"] == pytest.approx(a["fid"], rel=1e-6)
    with pytest.raises(DivergedError, match="NaN or infinite"):
        evaluate(lambda s: torch.full((len(s), 1, 28, 28), float("nan")), 4, ext, ref, progress=False)
    with pytest.raises(ValueError, match=r"\(len\(seeds\), C, H, W\)"):
        evaluate(lambda s: torch.zeros(1, 1, 28, 28), 4, ext, ref, progress=False)


def test_solver_sample_fn_describes_itself_and_counts_nfe(setup):
    den = setup[0]
    fn = solver_sample_fn(den, (1, 28, 28), "dpm++2m", 3)
    assert fn.description == {"solver": "dpm++2m", "nfe": 3, "grid": "uniform"} and fn.nfe_used is None
    with torch.no_grad():
        fn([0, 1]), fn([2])
    assert fn.nfe_used == 3
    with pytest.raises(ValueError, match="--shape"):
        sample_shape(object())
    assert sample_shape(object(), [1, 8, 8]) == (1, 8, 8)


def test_store_reads_back_and_keys_what_must_match(tmp_path, setup):
    _, ext, ref = setup
    key = evaluation_key("m", {"solver": "ddim", "nfe": 3, "grid": "uniform"}, 10, 0, ext, ref)
    assert key["extractor"] == f"{ext.name}:{ext.fingerprint()}" and key["reference"] == reference_id(ref)
    store = EvalStore(tmp_path / "e.json")
    assert store.get(key) is None
    store.put(key, {"fid": 1.5, "sample_s": 2.0})
    store.put({**key, "n": 20}, {"fid": float("nan"), "note": "budget"})
    saved = json.loads((tmp_path / "e.json").read_text())
    assert saved["format"] == FORMAT and len(saved["entries"]) == 2
    again = EvalStore(tmp_path / "e.json")
    assert again.get(dict(reversed(list(key.items())))) == {"fid": 1.5, "sample_s": 2.0}  # key order is irrelevant
    assert again.get({**key, "seed": 1}) is None and again.get({**key, "model": "other"}) is None
    assert finished(again.get(key)) and not finished(again.get({**key, "n": 20}))
    assert finished({"fid": float("inf")})  # diverged is a result, not a failure to run
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="bad.json"):
        EvalStore(tmp_path / "bad.json")


def test_reference_id_depends_on_contents_not_name(tmp_path, setup):
    _, ext, ref = setup
    ref.save(tmp_path / "a.npz")
    assert reference_id(FeatureStats.load(tmp_path / "a.npz")) == reference_id(ref)
    other = FeatureStats.like(ext).update(np.random.default_rng(0).normal(size=(5, 128)))
    assert reference_id(other) != reference_id(ref)


def test_shipped_fashion_fid_results_read_in_the_shared_format():
    import runpy
    from pathlib import Path

    root = Path(__file__).parents[1]
    store = EvalStore(root / "benchmarks" / "results" / "fashion_fid" / "results.json", writable=False)
    by = {(r["label"], k["sampler"].get("nfe")): r for k, r in store}
    assert len(store) == 78 and by[("dpm_adaptive", 100)]["fid"] == pytest.approx(6.08096117823888)
    assert by[("ODE limit: dpm++2m, 100 NFE", 100)]["sample_s"] == pytest.approx(1637.6130959210059)
    script = runpy.run_path(str(root / "benchmarks" / "fashion_fid.py"))
    old = {"args": {"n": 4}, "setup_seconds": 3.0, "rows": [
        {"model": "m", "n": 4, "grid": "uniform", "sampler": script["FLOOR"], "nfe": nfe, "fid": 0.1, "sample_s": 0.0}
        for nfe in (5, 10)] + [
        {"model": "m", "n": 4, "grid": "uniform", "sampler": "ddim", "nfe": 5, "fid": 30.0, "kid": 0.5, "sample_s": 9.0},
        {"model": "m", "n": 4, "grid": "uniform", "sampler": "diffusers DDIM", "nfe": 5, "fid": 31.0, "sample_s": 8.0}]}
    new = script["convert_rows"](old, "ext:hash", "refhash")
    assert new["format"] == FORMAT and new["meta"]["setup_seconds"] == 3.0 and len(new["entries"]) == 3
    ddim = next(e for e in new["entries"] if e["key"]["sampler"].get("solver") == "ddim")
    assert ddim["key"] == {"model": "m", "sampler": {"solver": "ddim", "nfe": 5, "grid": "uniform"}, "n": 4, "seed": 0,
                           "extractor": "ext:hash", "reference": "refhash"}
    assert ddim["result"] == {"label": "ddim", "n": 4, "fid": 30.0, "kid": 0.5, "sample_s": 9.0}


def test_solver_sample_fn_cycles_class_labels_by_seed():
    """class_label: each seed's label comes from its offset to first_seed, whatever the batch."""
    seen = []

    class LabelNet(torch.nn.Module):
        def forward(self, x, t, class_labels=None):
            seen.append(class_labels.tolist())
            return torch.zeros_like(x)

    den = fewstep.Denoiser(LabelNet(), fewstep.processes.VPDiscrete.linear(), "eps", sample_shape=(1, 4, 4),
                           config={"network": {"num_classes": 3}})
    fn = solver_sample_fn(den, (1, 4, 4), "ddim", 1, class_label="all", first_seed=10)
    fn([10, 11, 12, 13])
    fn([14])
    assert seen == [[0, 1, 2, 0], [1]]
