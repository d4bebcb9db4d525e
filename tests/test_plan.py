"""The sampling plan: one resolution of start, times, network times and options, used by every sampler."""

import json
import shutil

import pytest
import torch

import fewstep
from fewstep.attachments import attach, attached
from fewstep.cli import main
from fewstep.grids import make_grid
from fewstep.grids.files import GridEntry, write_grid_file


def test_a_plan_samples_as_its_keywords_do(gmm8, ddpm_linear):
    den = gmm8.denoiser(ddpm_linear)
    x_T = torch.randn(4, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    plan = fewstep.make_plan(den, "unipc", 6, "logsnr")
    assert plan.steps == 6 and plan.start.t == ddpm_linear.t_max and plan.start.kind == "prior"
    assert plan.sources["times"] == "grid 'logsnr'"
    assert torch.equal(fewstep.sample(den, x_T, plan), fewstep.sample(den, x_T, "unipc", 6, "logsnr"))
    with pytest.raises(ValueError, match="also nfe"):
        fewstep.sample(den, x_T, plan, 6)
    with pytest.raises(ValueError, match="also teleport"):
        fewstep.sample(den, x_T, plan, teleport=700.0)
    back = fewstep.SamplingPlan.from_dict(json.loads(json.dumps(plan.to_dict())))
    assert torch.equal(fewstep.sample(den, x_T, back), fewstep.sample(den, x_T, plan))


def test_plan_records_a_teleported_start_and_refuses_where_it_cannot_apply(gmm8, ddpm_linear):
    from fewstep.exact import GaussianMixture

    den = gmm8.denoiser(ddpm_linear)
    g = GaussianMixture.from_covariances(gmm8.mean[None], gmm8.covariance[None])
    den.data_gaussian = g
    plan = fewstep.make_plan(den, "ipndm", 5, teleport=700.0)
    assert plan.start.teleported and plan.start.t == 700.0 and float(plan.times[0]) == 700.0
    assert plan.describe()["start"] == {"t": 700.0, "kind": "gaussian", "source": "teleport argument",
                                        "gaussian": "model's data_gaussian"}
    with pytest.raises(ValueError, match="inversion cannot start from a teleported time"):
        plan.require("inversion")
    with pytest.raises(ValueError, match="gaussian= is the data Gaussian of a teleported start"):
        fewstep.make_plan(den, "ipndm", 5, gaussian=g)


def test_attachments_are_declared_and_found_through_wrappers(gmm8, ddpm_linear):
    den = gmm8.denoiser(ddpm_linear)
    with pytest.raises(ValueError, match="not a declared model attachment"):
        attach(den, "my_stats", 1)
    attach(den, "plan_file", "x.json")
    assert attached(fewstep.NFECounter(den), "plan_file") == "x.json"


def _model_with_plans(tmp_path):
    """A copy of bundled:fashion whose own plans.json holds one ipndm entry at 3 NFE (no teleport)."""
    from fewstep.loading import resolve_bundled

    folder = tmp_path / "model"
    folder.mkdir()
    for name in ("config.json", "ema.safetensors"):
        shutil.copy(resolve_bundled("bundled:fashion") / name, folder / name)
    den = fewstep.load_model(str(folder))
    times = make_grid(den.process, 3, "logsnr").tolist()
    write_grid_file(folder / "plans.json", den.process, [GridEntry("ipndm", 3, 3, times, "search")])
    return folder, times


def test_tuned_plans_load_with_the_model_and_the_cli_records_the_plan(tmp_path, capsys):
    folder, times = _model_with_plans(tmp_path)
    den = fewstep.load_model(str(folder))
    assert attached(den, "plan_file") == folder / "plans.json"
    plan = fewstep.make_plan(den, "ipndm", 3, "tuned")
    assert plan.times.tolist() == times and plan.grid.startswith("tuned (")
    with pytest.raises(ValueError, match="no entry for unipc at nfe=3; it holds: ipndm nfe=3"):
        fewstep.make_plan(den, "unipc", 3, "tuned")
    assert torch.equal(fewstep.make_plan(den, "unipc", 3, "tuned", borrow="ipndm").times, plan.times)
    out = tmp_path / "a.npz"
    assert main(["sample", "--model", str(folder), "--solver", "ipndm", "--nfe", "3", "--plan", "tuned", "--n", "2",
                 "--out", str(out), "--no-progress"]) == 0
    x = fewstep.generate(den, den.sample_shape, [0, 1], plan)
    from fewstep.imagegrid import to_uint8
    import numpy as np

    assert np.array_equal(np.load(out)["images"], np.asarray(to_uint8(x)))
    capsys.readouterr()
    assert main(["sample", "--model", str(folder), "--solver", "unipc", "--nfe", "3", "--plan", "tuned", "--n", "1",
                 "--out", str(tmp_path / "b.npz"), "--no-progress"]) == 1
    assert "no entry for unipc at nfe=3" in capsys.readouterr().err
    assert main(["sample", "--model", str(folder), "--nfe", "3", "--plan", "tuned", "--grid", "uniform", "--n", "1",
                 "--out", str(tmp_path / "c.npz"), "--no-progress"]) == 1
    assert "--plan and --grid" in capsys.readouterr().err
    fewstep.load_model("bundled:fashion")  # the shipped model still loads with its shipped plans


def test_a_plan_file_entry_s_tuned_options_are_a_field_recorded_and_stored(tmp_path, gmm8, ddpm_linear):
    den = gmm8.denoiser(ddpm_linear)
    times = make_grid(ddpm_linear, 5, "logsnr").tolist()
    ratios = [1.1, 0.9, 1.05, 1.0, 1.0]
    path = write_grid_file(tmp_path / "plans.json", ddpm_linear,
                           [GridEntry("dc_solver", 5, 5, times, "dc", options={"ratios": ratios})])
    plan = fewstep.make_plan(den, "dc_solver", 5, path)
    assert plan.tuned_options == ("ratios",) and plan.options["ratios"] == ratios
    assert plan.describe()["tuned_options"] == {"ratios": ratios}
    assert "options_keys" not in plan.describe()["sources"]
    back = fewstep.SamplingPlan.from_dict(json.loads(json.dumps(plan.to_dict())))
    assert back.tuned_options == ("ratios",) and back.describe()["tuned_options"] == {"ratios": ratios}
    assert fewstep.make_plan(den, "dc_solver", 5, "logsnr").tuned_options == ()


def test_the_cli_grid_takes_explicit_times(tmp_path, capsys):
    """``--grid 999,500,0`` is the explicit grid [999, 500, 0] (the last time clean data): the same images as the
    library's ``generate`` with that list, recorded in the folder's manifest; a malformed list is a one-line error."""
    import json

    import numpy as np

    from fewstep.imagegrid import to_uint8

    den = fewstep.load_model("bundled:fashion")
    out = tmp_path / "a.npz"
    assert main(["sample", "--model", "bundled:fashion", "--solver", "euler", "--nfe", "2", "--grid", "999,500,0",
                 "--n", "2", "--out", str(out), "--no-progress"]) == 0
    want = fewstep.generate(den, den.sample_shape, [0, 1], "euler", 2, [999.0, 500.0, 0.0])
    assert np.array_equal(np.load(out)["images"], np.asarray(to_uint8(want)))
    other = fewstep.generate(den, den.sample_shape, [0, 1], "euler", 2)
    assert not np.array_equal(np.asarray(to_uint8(other)), np.asarray(to_uint8(want)))
    folder = tmp_path / "f"
    assert main(["sample", "--model", "bundled:fashion", "--solver", "euler", "--nfe", "2", "--grid", "999,500,0",
                 "--n", "1", "--out", f"{folder}/", "--no-progress"]) == 0
    assert json.loads((folder / "fewstep-samples.json").read_text())["grid"] == [999.0, 500.0, 0.0]
    capsys.readouterr()
    assert main(["sample", "--model", "bundled:fashion", "--nfe", "2", "--grid", "999,x,0", "--n", "1",
                 "--out", str(tmp_path / "b.npz"), "--no-progress"]) == 1
    assert "comma-separated numbers" in capsys.readouterr().err
