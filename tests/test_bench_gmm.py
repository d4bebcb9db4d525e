import json
import math

from fewstep.cli import main


def test_bench_gmm_writes_tables_and_files(tmp_path, capsys):
    out = tmp_path / "b"
    code = main(["bench", "gmm", "--solvers", "ddim,dpm++2m", "--nfe", "4,12", "--grids", "logsnr",
                 "--processes", "vp_linear_ddpm", "--n", "200", "--out", str(out)])
    assert code == 0
    text = capsys.readouterr().out
    assert "Frechet distance to the exact moments" in text and "finite-sample floor" in text
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert len(rows) == 4 and (out / "results.csv").exists() and "| ddim |" in (out / "results.md").read_text() and (out / "error_vs_nfe.png").stat().st_size > 1000
    by = {(r["solver"], r["nfe"]): r for r in rows}
    # More evaluations bring the samples closer to the ODE solution and the exact moments.
    for s in ["ddim", "dpm++2m"]:
        assert by[(s, 12)]["rmse"] < by[(s, 4)]["rmse"]
        assert by[(s, 12)]["fd"] < by[(s, 4)]["fd"]
    assert by[("dpm++2m", 12)]["rmse"] < by[("ddim", 12)]["rmse"]
    assert all(math.isfinite(r["fd_floor"]) and r["fd_floor"] > 0 for r in rows)


def test_bench_gmm_bad_solver_is_a_clear_error(capsys):
    assert main(["bench", "gmm", "--solvers", "nope", "--out", ""]) == 1
    err = capsys.readouterr().err
    assert "unknown solver 'nope'" in err and "available solvers" in err


def test_solvers_command_lists_registry(capsys):
    from fewstep import solvers

    assert main(["solvers"]) == 0
    out = capsys.readouterr().out
    for name in solvers.available():
        assert f"\n{name} " in out


def test_cli_reports_library_errors_without_traceback(capsys):
    assert main(["bench", "gmm", "--nfe", "4", "--grids", "cosine", "--solvers", "ddim", "--out", ""]) == 1
    err = capsys.readouterr().err
    assert err.startswith("fewstep bench: error: unknown grid 'cosine'") and "Traceback" not in err
