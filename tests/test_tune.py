"""``fewstep.tune`` / ``fewstep tune``: tuned plans validated on fresh seeds, on exact mixtures (seconds each)."""

import json

import numpy as np
import pytest
import torch

import fewstep
from fewstep.cli import main
from fewstep.denoisers import NFECounter
from fewstep.exact import GaussianMixture
from fewstep.grids.files import read_grid_file
from fewstep.tuning import NearExact, ReferenceSettings
from fewstep.metrics.solution_error import per_sample_rmse
from fewstep.tuning.validate import best_standard, check_disjoint, compare, judge

TUNING, VALIDATION = range(100, 132), range(1000, 1128)


@pytest.fixture(scope="module")
def gaussian8():
    """An 8-d Gaussian: the data Gaussian's flow is exact, so a teleported start wins clearly."""
    return GaussianMixture.random_low_rank(dim=8, components=1, rank=8, floor=0.05, seed=1)


def run_tune(mix, ddpm_linear, out, **kw):
    den = NFECounter(mix.denoiser(ddpm_linear))
    data = mix.sample(2000, torch.Generator().manual_seed(0)).float()
    args = dict(tuning_seeds=TUNING, validation_seeds=VALIDATION, reference_nfe=40, progress=False, shape=(8,))
    args.update(kw)
    report = fewstep.tune(den, data, args.pop("solvers", ["unipc", "ipndm"]), args.pop("nfes", [5]), out, **args)
    return den, report


def results(report):
    return [{k: v for k, v in s.items() if k != "seconds"} for s in report.steps]


def validated(report):
    return [(s, c) for s in report.steps for c in s["candidates"] if c.get("validation")]


# -- validation statistics ----------------------------------------------------------------------------------------

def test_compare_is_a_paired_ratio_with_its_interval_and_the_fraction_worse():
    base = np.linspace(1.0, 2.0, 64)
    half = compare(0.5 * base, base)
    assert half.ratio == pytest.approx(0.5) and half.low == pytest.approx(0.5) and half.high == pytest.approx(0.5)
    assert half.worse == 0 and judge(half)[0]
    same = compare(base, base)
    assert (same.ratio, same.low, same.high, same.worse) == (1.0, 1.0, 1.0, 0.0) and not judge(same)[0]
    # better on average, but much worse on a quarter of the samples: the fraction says so
    mixed = base.copy()
    mixed[:48] *= 0.5
    mixed[48:] *= 1.1
    c = compare(mixed, base)
    assert c.worse == pytest.approx(16 / 64) and c.ratio == pytest.approx(mixed.mean() / base.mean())
    assert c.low < c.ratio < c.high
    worse = compare(1.2 * base, base)
    kept, why = judge(worse)
    assert not kept and "loses on fresh seeds" in why
    assert not judge(compare(np.r_[base[:-1], np.inf], base))[0]  # a diverged sample is never kept


def test_interval_is_paired_over_samples():
    """A candidate that is always 2% better wins although the per-sample errors vary 10x: pairing removes the spread."""
    base = np.random.default_rng(0).uniform(0.1, 1.0, 40)
    c = compare(0.98 * base, base)
    assert c.high < 1 and judge(c)[0]


def test_best_standard_and_disjoint_seeds():
    assert best_standard({"a": [1.0, 2.0], "b": [1.0, 1.5], "c": [np.inf, 0.0]}) == "b"
    check_disjoint(range(0, 10), range(10, 20))
    with pytest.raises(ValueError, match="both tuning and validation"):
        check_disjoint(range(0, 10), range(5, 20))


# -- tune end to end ----------------------------------------------------------------------------------------------

def test_tune_keeps_only_winners_and_the_plans_reproduce_their_validation(gaussian8, ddpm_linear, tmp_path):
    out = tmp_path / "plans.json"
    den, report = run_tune(gaussian8, ddpm_linear, out)
    rows = validated(report)
    assert rows and all(c["kept"] == (c["validation"]["high"] < 1) for _, c in rows)
    assert all(c["reason"] for s in report.steps for c in s["candidates"])
    assert all(k["reason"] for s in report.steps for k in s["skipped"])
    assert report.kept and report.plans == out
    assert report.report_md.is_file() and "| unipc | 5 |" in report.report_md.read_text()
    assert json.loads(report.report_json.read_text())["steps"]
    grids = read_grid_file(out)
    assert {(e.solver, e.nfe) for e in grids.entries} == {(s, n) for s, n, _, _ in report.kept}
    # each plan, sampled through the grid file with the saved Gaussian, errs exactly what its validation measured
    ref = NearExact(gaussian8.denoiser(ddpm_linear), (8,), VALIDATION, ReferenceSettings("dpm++3m", 40, "logsnr"),
                    progress=False)(list(VALIDATION))
    for e in grids.entries:
        v = e.provenance["validation"]
        assert v["high"] < 1 and v["ratio"] < 1 and e.provenance["tuned_by"] == "fewstep tune"
        x = fewstep.generate(den, (8,), VALIDATION, e.solver, e.nfe, out, gaussian=tmp_path / "gaussian.safetensors")
        assert float(per_sample_rmse(x, ref, clamp=False).mean()) == pytest.approx(v["mean"], rel=1e-5)
    # the data Gaussian fitted from the samples was saved beside the plans
    assert (tmp_path / "gaussian.safetensors").is_file()


def test_tune_refuses_overlapping_seeds(gaussian8, ddpm_linear, tmp_path):
    with pytest.raises(ValueError, match="both tuning and validation"):
        run_tune(gaussian8, ddpm_linear, tmp_path / "p.json", tuning_seeds=range(0, 32), validation_seeds=range(16, 80))
    assert not (tmp_path / "p.tune").exists() or not list((tmp_path / "p.tune").glob("step-*"))


def test_tune_resumes_without_recomputing(gaussian8, ddpm_linear, tmp_path):
    out = tmp_path / "plans.json"
    den, first = run_tune(gaussian8, ddpm_linear, out, solvers=["unipc"], nfes=[5, 6])
    assert den.count > 0
    den2, again = run_tune(gaussian8, ddpm_linear, out, solvers=["unipc"], nfes=[5, 6])
    assert den2.count == 0  # every step, baseline and reference read back
    assert again.steps == first.steps and out.read_text() == json.dumps(json.loads(out.read_text()), indent=1) + "\n"
    (tmp_path / "plans.tune" / "step-unipc-6.json").unlink()
    den3, third = run_tune(gaussian8, ddpm_linear, out, solvers=["unipc"], nfes=[5, 6])
    assert 0 < den3.count < den.count and results(third) == results(first)  # only that step again, the same result
    with pytest.raises(ValueError, match="other settings"):
        run_tune(gaussian8, ddpm_linear, out, solvers=["unipc"], nfes=[5], reference_nfe=30)


def test_candidates_tuned_on_two_seeds_are_dropped_when_they_lose(gmm8, ddpm_linear, tmp_path):
    """The issue's trap: on a mixture, choices made on 2 seeds look best there and lose on fresh noise."""
    _, report = run_tune(gmm8, ddpm_linear, tmp_path / "p.json", tuning_seeds=range(2), solvers=["ipndm"],
                         nfes=[5, 6])
    rows = validated(report)
    # every candidate beat the untuned grids from t_max on its 2 tuning seeds ...
    assert rows and all(c["tuning_score"] < min(s["scan"]["uniform@t_max"], s["scan"]["logsnr@t_max"])
                        for s, c in rows)
    losers = [c for _, c in rows if c["validation"]["low"] >= 1]
    assert losers and all(not c["kept"] and "loses on fresh seeds" in c["reason"] for c in losers)  # ... some lose
    assert all(c["validation"]["high"] < 1 for _, c in rows if c["kept"])


def test_budget_leaves_tuning_out_but_still_validates(gaussian8, ddpm_linear, tmp_path):
    _, report = run_tune(gaussian8, ddpm_linear, tmp_path / "p.json", solvers=["dc_solver"], budget_minutes=1e-6)
    assert any("TimeTuner left out" in n for n in report.notes)
    reasons = [k["reason"] for s in report.steps for k in s["skipped"]]
    assert any("over the time budget" in r for r in reasons)
    assert validated(report)  # the scanned teleport start is still judged


def test_dpm_v3_gets_statistics_from_the_data(gaussian8, ddpm_linear, tmp_path):
    _, report = run_tune(gaussian8, ddpm_linear, tmp_path / "p.json", solvers=["dpm_v3"], ems_lambdas=16,
                         ems_samples=64, starts=[730.0], validation_seeds=range(1000, 1032))
    assert (tmp_path / "ems" / "ems.json").is_file()
    names = [c["name"] for s in report.steps for c in s["candidates"]]
    assert any(n.endswith(" grid") and "teleport" not in n for n in names)  # dpm_v3 on its best named grid
    # without data (and without statistics of its own) dpm_v3 is skipped, with the reason
    step = fewstep.tune(gaussian8.denoiser(ddpm_linear), None, ["dpm_v3"], [5], tmp_path / "q" / "q.json",
                        tuning_seeds=TUNING, validation_seeds=range(1000, 1032), reference_nfe=40, progress=False,
                        shape=(8,), standard=["unipc"]).steps[0]
    assert step["skipped"][0]["reason"].startswith("no empirical statistics") and not step["candidates"]


# -- CLI ------------------------------------------------------------------------------------------------------------

def test_cli_tune_on_an_exact_model(tmp_path, capsys):
    out = tmp_path / "plans.json"
    rc = main(["tune", "--model", "exact:gmm8", "--solvers", "unipc", "--nfe", "5", "--out", str(out),
               "--tuning-seeds", "0:16", "--validation-seeds", "100:132", "--reference-nfe", "30", "--no-progress"])
    text = capsys.readouterr().out
    assert rc == 0 and "| unipc | 5 |" in text and "best standard solver" in text
    assert (tmp_path / "gaussian.safetensors").is_file()  # fitted to the mixture's own samples
    assert "teleport" in (tmp_path / "plans.report.md").read_text()


def test_cli_tune_checks_out_and_seeds_before_any_work(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["tune", "--model", "exact:gmm8", "--out", str(blocker / "plans.json"), "--no-progress"]) == 1
    assert "--out" in capsys.readouterr().err
    assert main(["tune", "--model", "exact:gmm8", "--out", str(tmp_path / "plans.txt")]) == 1
    assert "end in .json" in capsys.readouterr().err
    assert main(["tune", "--model", "exact:gmm8", "--out", str(tmp_path / "p.json"), "--tuning-seeds", "0:32",
                 "--validation-seeds", "16:64", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "both tuning and validation" in err and err.count("\n") == 1
