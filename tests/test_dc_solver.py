"""DC-Solver (Zhao et al. 2024): rho = 1 is UniPC, the compensation's interpolant, the ratio search, saved ratios and CPR."""

import json

import pytest
import torch

import fewstep
from fewstep.denoisers import NFECounter
from fewstep.exact import reference_solution
from fewstep.grids import make_schedule
from fewstep.solvers._expint import lagrange_weights
from fewstep.solvers.dc import RatioTable, fit_cpr, predict_cpr
from fewstep.tuning import search_ratios
from fewstep.solvers.unipc import _compensate, _Grid

from conftest import seeded_noise


@pytest.mark.parametrize("nfe", [3, 6, 10])
@pytest.mark.parametrize("order", [1, 2, 3])
def test_unit_ratios_are_unipc_exactly(nfe, order, gmm8, ddpm_linear):
    den = gmm8.denoiser(ddpm_linear)
    x_T = seeded_noise(ddpm_linear, 8, 8, dtype=torch.float32)
    ref = fewstep.sample(den, x_T, "unipc", nfe, "logsnr", order=order)
    assert torch.equal(fewstep.sample(den, x_T, "dc_solver", nfe, "logsnr", order=order), ref)
    assert torch.equal(fewstep.sample(den, x_T, "dc_solver", nfe, "logsnr", order=order, ratios=[1.0] * nfe), ref)
    if nfe > 3:
        other = fewstep.sample(den, x_T, "dc_solver", nfe, "logsnr", order=order, ratios=[1.0, 1.0] + [0.9] * (nfe - 2))
        assert not torch.equal(other, ref)


def test_compensation_interpolates_in_time(ddpm_linear):
    """The compensated output is the Lagrange interpolant of the buffer at t_{i-1} + rho (t_i - t_{i-1}):
    exact for outputs quadratic in t, and the buffered value itself at rho = 1."""
    sched = make_schedule(ddpm_linear, 6, "uniform")
    g = _Grid(sched, "bh2", True)
    f = lambda t: torch.tensor([1.0 + 0.01 * t - 2e-5 * t * t], dtype=torch.float64)  # noqa: E731
    hist = [f(t) for t in g.t[:4]]
    for rho in (0.7, 1.0, 1.3):
        tau = g.t[2] + rho * (g.t[3] - g.t[2])
        assert torch.allclose(_compensate(g, hist, 3, rho, 2), f(tau), rtol=1e-12)
    assert lagrange_weights([5.0, 3.0, 1.0], 5.0) == [1.0, 0.0, 0.0]


def test_search_lowers_the_error_to_the_reference(gmm8, ddpm_linear):
    den = gmm8.denoiser(ddpm_linear)
    nfe = 6
    ratios = search_ratios(den, (8,), nfe, range(32), reference_nfe=120, grid="logsnr", dtype=torch.float64)
    assert len(ratios) == nfe and ratios[:2] == [1.0, 1.0] and any(r != 1.0 for r in ratios)
    x_T = seeded_noise(ddpm_linear, 64, 8, seed=1000)  # held-out seeds
    exact = reference_solution(den, x_T)
    err = {s: float((fewstep.sample(den, x_T, s, nfe, "logsnr", **o) - exact).pow(2).mean().sqrt())
           for s, o in [("unipc", {}), ("dc_solver", {"ratios": ratios})]}
    assert err["dc_solver"] < 0.9 * err["unipc"], err


def test_ratio_table_round_trip_and_cpr(tmp_path, gmm8, ddpm_linear):
    truth = [0.1, -0.2, 0.05, 0.3, 0.02, -0.01, -0.4, 0.1, 0.0]  # CPR coefficients
    searched = {n: predict_cpr(truth, n, 2) for n in (5, 6, 8, 10)}
    coef = fit_cpr(searched, 2)
    assert predict_cpr(coef, 7, 2) == pytest.approx(predict_cpr(truth, 7, 2), abs=1e-9)
    table = RatioTable(searched, 2, coef, {"model": "gmm8"})
    path = tmp_path / "ratios.json"
    table.save(path)
    assert not list(tmp_path.glob("*.tmp*"))
    back = RatioTable.load(path)
    assert back.ratios == searched and back.cpr == pytest.approx(coef) and back.meta == {"model": "gmm8"}
    assert back.for_steps(6) == searched[6]
    assert back.for_steps(7) == pytest.approx(predict_cpr(truth, 7, 2), abs=1e-9)  # an unsearched NFE: CPR
    den = NFECounter(gmm8.denoiser(ddpm_linear))
    x_T = seeded_noise(ddpm_linear, 4, 8)
    by_path = fewstep.sample(den, x_T, "dc_solver", 7, ratios=str(path))
    assert den.count == 7
    assert torch.equal(by_path, fewstep.sample(den, x_T, "dc_solver", 7, ratios=back.for_steps(7)))
    with pytest.raises(ValueError, match="no DC-Solver ratios for NFE 7"):
        RatioTable(searched, 2).for_steps(7)
    with pytest.raises(ValueError, match="ratios has 3 entries but this solve has 7 steps"):
        fewstep.sample(den, x_T, "dc_solver", 7, ratios=[1.0, 1.0, 1.0])
    (tmp_path / "bad.json").write_text(json.dumps({"ratios": {}}))
    with pytest.raises(ValueError, match="not a DC-Solver ratio file"):
        fewstep.sample(den, x_T, "dc_solver", 7, ratios=str(tmp_path / "bad.json"))


def test_cli_dc_search_writes_a_reusable_table(tmp_path):
    from fewstep.cli import main

    out = tmp_path / "ratios.json"
    assert main(["dc-search", "--model", "bundled:fashion", "--nfe", "4,5", "--seeds", "2", "--reference-nfe", "8",
                 "--out", str(out)]) == 0
    table = RatioTable.load(out)
    assert sorted(table.ratios) == [4, 5] and table.cpr is not None and table.meta["model"] == "bundled:fashion"
    assert len(table.for_steps(6)) == 6
    assert main(["dc-search", "--model", "bundled:fashion", "--nfe", "x", "--out", str(out)]) == 1
