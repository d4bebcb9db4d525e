"""Rough edges a user of a serious library trips over: each is refused (or recovered) with one clear line."""

import os

import numpy as np
import pytest

from fewstep.cli import main


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err.strip()


# --- 1. --out is checked before the work, and the result is printed as well as written ---------------------------

def _lock(monkeypatch, folder):
    """Make ``folder`` unwritable as far as fewstep's checks can tell (the tests may run as root)."""
    folder.mkdir()
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if str(p) == str(folder) else real(p, mode, **kw))


def _never(name):
    def fail(*args, **kwargs):
        raise AssertionError(f"{name} ran before --out was checked")
    return fail


@pytest.mark.parametrize("argv, work", [
    (["eval", "--model", "bundled:fashion", "--n", "4", "--extractor", "fashion", "--out", "{}/m.json"],
     "fewstep.metrics.models.load_denoiser"),
    (["stats", "--data", "x.npz", "--extractor", "fashion", "--out", "{}/ref.npz"], "fewstep.metrics.data.load_images"),
    (["quantize", "--model", "bundled:fashion", "--out", "{}/q"], "fewstep.loading.load_model"),
    (["grid", "optimize", "--model", "exact:gmm8", "--nfe", "5", "--out", "{}/g.json"],
     "fewstep.commands.grid.load_for_grids"),
    (["bench", "gmm", "--solvers", "ddim", "--nfe", "4", "--out", "{}/b"], "fewstep.bench.gmm.run_gmm_bench"),
    (["bench", "model", "--solvers", "ddim", "--nfe", "4", "--out", "{}/b"], "fewstep.bench.model.run_model_bench"),
])
def test_an_unwritable_out_fails_before_the_work(argv, work, tmp_path, monkeypatch, capsys):
    locked = tmp_path / "locked"
    _lock(monkeypatch, locked)
    monkeypatch.setattr(work, _never(work))
    assert main([a.format(locked) for a in argv]) == 1
    err = _one_line_error(capsys)
    assert f"cannot write to {locked}" in err and str(locked) in err
    assert list(locked.iterdir()) == []


def test_an_out_that_is_a_folder_is_refused_before_the_work(tmp_path, monkeypatch, capsys):
    (tmp_path / "m.json").mkdir()
    monkeypatch.setattr("fewstep.metrics.models.load_denoiser", _never("load_denoiser"))
    assert main(["eval", "--n", "4", "--extractor", "fashion", "--out", str(tmp_path / "m.json")]) == 1
    assert "is a folder; give a file name" in _one_line_error(capsys)


def test_grid_optimize_prints_its_result_when_the_write_fails(tmp_path, monkeypatch, capsys):
    def disk_full(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr("fewstep.grids.files.write_grid_file", disk_full)
    assert main(["grid", "optimize", "--model", "exact:gmm8", "--solver", "dpm++2m", "--nfe", "5",
                 "--out", str(tmp_path / "g.json")]) == 1
    out, err = capsys.readouterr()
    assert "No space left on device" in err
    assert "dpm++2m nfe=5" in out and "times" in out  # the computed grid is on screen


def test_stats_prints_its_summary_before_writing(tmp_path, monkeypatch, capsys):
    images = (np.random.default_rng(0).random((8, 28, 28)) * 255).astype(np.uint8)
    np.save(tmp_path / "data.npy", images)

    def disk_full(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr("fewstep.metrics.stats.FeatureStats.save", disk_full)
    assert main(["stats", "--data", str(tmp_path / "data.npy"), "--out", str(tmp_path / "ref.npz"),
                 "--extractor", "fashion", "--device", "cpu"]) == 1
    out = capsys.readouterr().out
    assert "stats: 8 images, fashion-classifier-v1" in out


# --- 2. checksums: tensor data damaged behind a valid safetensors header -------------------------------------------

def _bundled_copy(tmp_path, name="fashion"):
    import shutil

    from fewstep.loading import resolve_bundled

    model = tmp_path / name
    shutil.copytree(resolve_bundled(f"bundled:{name}"), model)
    return model


def _flip_data(path):
    data = bytearray(path.read_bytes())
    data[-100] ^= 0x01  # one bit of the last tensor's data: the header stays valid
    path.write_bytes(bytes(data))


def test_bundled_models_record_checksums_that_match():
    from fewstep.checkpoint import CHECKSUMS, verify_checksum
    from fewstep.loading import BUNDLED, resolve_bundled

    for name in BUNDLED:
        folder = resolve_bundled(f"bundled:{name}")
        assert (folder / CHECKSUMS).exists(), name
        verify_checksum(folder / "ema.safetensors")


def test_load_model_refuses_weights_that_do_not_match_their_checksum(tmp_path):
    import fewstep
    from safetensors.torch import load_file

    model = _bundled_copy(tmp_path)
    _flip_data(model / "ema.safetensors")
    load_file(str(model / "ema.safetensors"))  # safetensors itself reads the damaged file without complaint
    with pytest.raises(ValueError, match=r"ema.safetensors does not match the sha256 recorded in .*checksums.json"):
        fewstep.load_model(model)
    (model / "checksums.json").unlink()  # as a checkpoint written before checksums: loads (the bit is lost)
    assert fewstep.load_model(model).sample_shape == (1, 28, 28)


def test_a_quantized_folder_records_and_checks_its_checksum(tmp_path):
    from fewstep.checkpoint import CHECKSUMS
    from fewstep.cli import main as cli

    out = tmp_path / "q"
    assert cli(["quantize", "--model", "bundled:fashion", "--out", str(out), "--calib-nfe", "2", "--calib-n", "2",
                "--no-progress"]) == 0
    assert "int8.safetensors" in (out / CHECKSUMS).read_text()
    _flip_data(out / "int8.safetensors")
    import fewstep

    with pytest.raises(ValueError, match="int8.safetensors does not match the sha256"):
        fewstep.load_model(out)


# --- 3. a corrupt or empty --data array names the file and what is wrong -------------------------------------------

def _array_files(folder):
    """``{name: (path, expected message)}`` of broken array files."""
    good = folder / "good.npz"
    np.savez(good, images=np.zeros((4, 8, 8), np.uint8), labels=np.arange(4))
    raw = good.read_bytes()
    files = {
        "empty.npz": (b"", "is empty (0 bytes)"),
        "truncated.npz": (raw[: len(raw) // 2], "is damaged: not a complete .npz (zip) archive"),
        "garbage.npz": (b"hello world" * 10, "is not a NumPy array file"),
        "crc.npz": (raw[:100] + b"\xff" * 40 + raw[140:], "is damaged: its array 'images' cannot be read (Bad CRC-32"),
    }
    out = {}
    for name, (data, msg) in files.items():
        (folder / name).write_bytes(data)
        out[name] = (folder / name, msg)
    np.save(folder / "full.npy", np.zeros((4, 8, 8), np.uint8))
    (folder / "truncated.npy").write_bytes((folder / "full.npy").read_bytes()[:150])
    out["truncated.npy"] = (folder / "truncated.npy", "is damaged: not a complete .npy array")
    np.savez(folder / "none.npz", images=np.zeros((0, 8, 8), np.uint8))
    out["none.npz"] = (folder / "none.npz", "holds no images (its array has shape (0, 8, 8))")
    np.savez(folder / "objects.npz", images=np.array([1, "a"], dtype=object))
    out["objects.npz"] = (folder / "objects.npz", "holds pickled Python objects, which fewstep never loads")
    return out


def test_a_broken_array_file_names_the_file_and_the_problem(tmp_path):
    from fewstep.data import load_array

    for name, (path, msg) in _array_files(tmp_path).items():
        with pytest.raises(ValueError) as err:
            load_array(path)
        assert str(err.value).startswith(str(path)) and msg in str(err.value), (name, str(err.value))
    assert load_array(tmp_path / "good.npz").images.shape == (4, 1, 8, 8)


def test_train_with_a_truncated_data_file_is_one_line(tmp_path, capsys):
    files = _array_files(tmp_path)
    path = files["truncated.npz"][0]
    assert main(["train", "--data", str(path), "--config", "fashion-unet", "--out", str(tmp_path / "run"),
                 "--device", "cpu", "--no-progress"]) == 1
    err = _one_line_error(capsys)
    assert str(path) in err and "is damaged" in err


# --- 4. solver options have declared ranges ------------------------------------------------------------------------

def _numeric_options(spec):
    """Options a caller may set whose default is a number (booleans and plan-set options aside)."""
    return [k for k, v in spec.options.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
            and not (spec.fixed_nfe and k in spec.planned_options)]


def test_every_numeric_solver_option_declares_a_range_that_holds_its_default():
    from fewstep import solvers

    for spec in solvers.specs():
        for name in _numeric_options(spec):
            assert name in spec.ranges, (spec.name, name)
        for name, interval in spec.ranges.items():
            default = spec.options[name]
            if isinstance(default, (int, float)) and not isinstance(default, bool):
                assert interval.holds(default), (spec.name, name, default)
                spec.check_options({name: default})  # the defaults are valid


@pytest.mark.parametrize("solver, options, message", [
    ("ddim", {"eta": 1e6}, "solver 'ddim': eta=1000000.0 is out of range; valid: 0 <= eta <= 1"),
    ("ddim", {"eta": -0.1}, "valid: 0 <= eta <= 1"),
    ("ts-ddim", {"eta": 2.0}, "valid: 0 <= eta <= 1"),
    ("dpm_adaptive", {"atol": 1e9}, "atol=1000000000.0 is out of range; valid: 0 < atol <= 1"),
    ("dpm_adaptive", {"theta": float("nan")}, "theta=nan is out of range; valid: 0 < theta <= 1"),
    ("dpm_adaptive", {"h_init": float("inf")}, "valid: h_init > 0"),
    ("dpm_adaptive", {"order": 4}, "valid: 2 <= order <= 3"),
    ("heun", {"s_churn": -1.0}, "valid: s_churn >= 0"),
    ("euler_a", {"s_noise": float("nan")}, "valid: s_noise >= 0"),
    ("unipc", {"order": 2.5}, "solver 'unipc': order must be an integer (1 <= order <= 3), got 2.5"),
    ("unipc", {"order": 7}, "valid: 1 <= order <= 3"),
    ("ipndm", {"max_order": 0}, "valid: 1 <= max_order <= 4"),
    ("dpm2", {"r1": 1.0}, "valid: 0 < r1 < 1"),
    ("dpm++2s", {"r": 0}, "valid: 0 < r <= 1"),
    ("ts-unipc", {"cutoff": 1.5}, "valid: 0 <= cutoff <= 1"),
    ("ts-ddpm", {"data_var": -1.0}, "valid: data_var >= 0"),
    ("ddim", {"eta": "half"}, "solver 'ddim': eta must be a number (0 <= eta <= 1), got 'half'"),
    ("ddim", {"eta": True}, "eta must be a number"),
])
def test_out_of_range_solver_options_are_refused_naming_the_range(solver, options, message, gmm8, ddpm_linear):
    import fewstep

    den = gmm8.denoiser(ddpm_linear)
    x_T = fewstep.prior_noise(ddpm_linear, (8,), fewstep.generators(range(2)))
    with pytest.raises(ValueError) as err:
        fewstep.sample(den, x_T, solver, 6, **options)
    assert message in str(err.value)


def test_in_range_values_pass_and_infinite_ends_only_where_declared(gmm8, ddpm_linear):
    from fewstep import solvers

    solvers.get("heun").check_options({"s_tmax": float("inf"), "s_churn": 40.0})
    solvers.get("ts-ddim").check_options({"data_var": "predicted", "eta": 1})
    solvers.get("ddim").check_options({"eta": np.float64(0.5)})
    with pytest.raises(ValueError, match=r"s_churn=inf is out of range; valid: s_churn >= 0"):
        solvers.get("heun").check_options({"s_churn": float("inf")})


# --- 5. train --resume --config other.json is refused, naming the keys that differ ---------------------------------

def test_resume_refuses_a_different_config_and_accepts_the_same(tmp_path, capsys):
    import json

    from conftest import tiny_config, tiny_images

    np.savez(tmp_path / "data.npz", images=tiny_images().numpy())
    cfg = tiny_config(steps=1)
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    run = tmp_path / "run"
    base = ["train", "--data", str(tmp_path / "data.npz"), "--out", str(run), "--no-progress", "--device", "cpu"]
    assert main(base + ["--config", str(tmp_path / "cfg.json")]) == 0
    other = json.loads(json.dumps(cfg))
    other["training"]["lr"] = 5e-4
    other["network"]["channels"] = 16
    (tmp_path / "other.json").write_text(json.dumps(other))
    capsys.readouterr()
    assert main(base + ["--resume", "--config", str(tmp_path / "other.json"), "--steps", "2"]) == 1
    err = _one_line_error(capsys)
    assert "differs from it in 2 keys" in err and "network.channels: 8 in the checkpoint, 16 in" in err
    assert "training.lr: 0.001 in the checkpoint, 0.0005 in" in err and "drop --config" in err
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step-00000001"]  # nothing trained
    # the same config (and a flag applied to both) resumes
    assert main(base + ["--resume", "--config", str(tmp_path / "cfg.json"), "--steps", "2"]) == 0
    assert "resumed from step 1" in capsys.readouterr().out
    # a config file that spells out a default the checkpoint holds is the same config
    same = json.loads(json.dumps(cfg))
    same["training"]["steps"] = 3
    same["training"]["seed"] = json.loads((run / "checkpoints" / "step-00000002" / "config.json").read_text())[
        "training"]["seed"]
    (tmp_path / "same.json").write_text(json.dumps(same))
    assert main(base + ["--resume", "--config", str(tmp_path / "same.json")]) == 1  # steps 3 vs 2: differs
    assert "training.steps: 2 in the checkpoint, 3 in" in _one_line_error(capsys)
    assert main(base + ["--resume", "--config", str(tmp_path / "same.json"), "--steps", "3"]) == 0


# --- 6. non-finite reference statistics are refused when loaded ----------------------------------------------------

@pytest.mark.parametrize("field", ["mu", "sigma", "features"])
def test_non_finite_reference_statistics_are_refused_naming_the_file(field, tmp_path, monkeypatch, capsys):
    from fewstep.metrics import FeatureStats

    rng = np.random.default_rng(0)
    stats = FeatureStats("fashion-classifier-v1", "abc", 4, 8).update(rng.normal(size=(8, 4)))
    stats.save(tmp_path / "ok.npz")
    with np.load(tmp_path / "ok.npz") as z:
        arrays = {k: z[k] for k in z.files}
    arrays[field] = arrays[field].copy()
    arrays[field].flat[0] = np.nan
    np.savez(tmp_path / "ref.npz", **arrays)
    FeatureStats.load(tmp_path / "ok.npz")
    with pytest.raises(ValueError, match=rf"ref.npz: {field} holds NaN or infinite values; regenerate it"):
        FeatureStats.load(tmp_path / "ref.npz")
    monkeypatch.setattr("fewstep.metrics.models.load_denoiser", _never("load_denoiser"))
    assert main(["eval", "--n", "4", "--extractor", "fashion", "--device", "cpu", "--ref", str(tmp_path / "ref.npz"),
                 "--out", str(tmp_path / "m.json")]) == 1
    assert f"{tmp_path / 'ref.npz'}: {field} holds NaN" in _one_line_error(capsys)
    assert not (tmp_path / "m.json").exists()


# --- 7. load_model on a device this machine lacks: one clear line --------------------------------------------------

def test_load_model_on_a_missing_device_is_one_clear_error(monkeypatch):
    import torch

    import fewstep

    monkeypatch.setattr(torch.version, "cuda", None)
    monkeypatch.setattr(torch.version, "hip", None, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr("fewstep.loading._load_fewstep", _never("loading the weights"))
    for device in ["cuda", torch.device("cuda", 1)]:
        with pytest.raises(ValueError, match=r"^device=cuda(:1)?: this PyTorch build has no CUDA \(torch .*\); "
                                             r"use device=cpu, or install a CUDA build of PyTorch$"):
            fewstep.load_model("bundled:fashion", device=device)
    with pytest.raises(ValueError, match=r"^device=tpu: not a device name"):
        fewstep.load_model("bundled:fashion", device="tpu")
