"""int8 post-training quantization with per-step calibration (fewstep.quant, docs/quantization.md)."""

import json

import pytest
import torch

import fewstep
from fewstep.checkpoint import write_checkpoint
from fewstep.cli import main
from fewstep.nets import build_net
from fewstep.quant import (CalibrationSettings, QuantizedNetwork, dequantize, fake_quantize, is_time_path,
                           quantizable_layers, quantize, quantize_denoiser, quantize_weight, save_quantized,
                           set_kernels, weight_scales)

from conftest import TINY_UNET, fashion_standin, tiny_config

CALIB = dict(solver="dpm++2m", nfe=4, n=8, batch_size=8, seed=100)


def _tiny_net() -> torch.nn.Module:
    """The tiny UNet with random (non-zero) weights everywhere, so its output depends on every layer."""
    torch.manual_seed(0)
    net = build_net(dict(TINY_UNET))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn_like(p) * 0.1)
    return net.eval()


@pytest.fixture
def checkpoint(tmp_path):
    cfg = tiny_config()
    tensors = {k: v.contiguous() for k, v in _tiny_net().state_dict().items()}
    write_checkpoint(tmp_path / "run", 1, cfg, {"ema.safetensors": tensors})
    return tmp_path / "run"


def _quantized(checkpoint, **calib):
    return quantize_denoiser(fewstep.load_model(checkpoint), CalibrationSettings(**{**CALIB, **calib}))


def _groups_used(den, nfe):
    """``(timestep group used, network noise level)`` of each network evaluation of a dpm++2m solve."""
    qnet = next(den.networks())
    layer = next(m for _, m in qnet.quant_layers())
    groups, levels = [], []
    hooks = [layer.register_forward_pre_hook(lambda m, inp: groups.append(int(m.selector.group))),
             qnet.register_forward_pre_hook(lambda m, args: levels.append(float(torch.as_tensor(args[1]).reshape(-1)[0])))]
    fewstep.generate(den, (1, 8, 8), range(2), "dpm++2m", nfe)
    for h in hooks:
        h.remove()
    return groups, levels


# ----------------------------------------------------------------------------- maths

def test_weight_scales_per_output_channel_symmetric():
    w = torch.tensor([[1.0, -2.54, 0.5], [0.0, 0.0, 0.0], [0.127, 0.0635, -0.001]])
    s = weight_scales(w)
    assert torch.allclose(s, torch.tensor([2.54 / 127, 1.0, 0.127 / 127]))
    q, s2 = quantize_weight(w)
    assert q.dtype == torch.int8 and torch.equal(s, s2)
    assert q[0].tolist() == [50, -127, 25] and q[1].tolist() == [0, 0, 0] and q[2].tolist() == [127, 64, -1]


def test_quantize_rounds_half_to_even_and_clamps():
    x = torch.tensor([0.5, 1.5, 2.5, -0.5, -1.49, 126.6, 200.0, -300.0])
    q = quantize(x, 1.0)
    assert q.dtype == torch.int8
    assert q.tolist() == [0, 2, 2, 0, -1, 127, 127, -127]
    assert quantize(torch.tensor([9.0, -9.0]), 1.0, bits=4).tolist() == [7, -7]
    assert torch.equal(dequantize(q, 0.25), q.float() * 0.25)
    y = torch.randn(100) * 3
    assert torch.equal(fake_quantize(y, 0.05), dequantize(quantize(y, 0.05), 0.05))
    with pytest.raises(ValueError, match="bits must lie in 2..8"):
        quantize(y, 1.0, bits=16)


# ----------------------------------------------------------------------------- the network

def test_time_embedding_path_stays_float():
    net = _tiny_net()
    names = quantizable_layers(net)
    assert not any(n.startswith("embed") or n.endswith(".emb") for n in names)
    assert "conv_in" in names and "conv_out" in names and "mid.1.qkv" in names
    assert is_time_path("down.0.0.emb") and is_time_path("embed.mlp.0") and not is_time_path("down.0.0.conv1")


@torch.no_grad()
def test_quantized_output_close_to_float(checkpoint):
    float_den = fewstep.load_model(checkpoint)
    inputs = []  # the network inputs of a float solve from fresh seeds: in-distribution at every step
    handle = float_den.net.register_forward_pre_hook(lambda m, args: inputs.append(args[:2]))
    a = fewstep.generate(float_den, (1, 8, 8), range(4), "dpm++2m", 4)
    handle.remove()
    den = _quantized(checkpoint)
    qnet = next(den.networks())
    assert isinstance(qnet, QuantizedNetwork) and qnet.net.embed.mlp[0].weight.dtype == torch.float32
    errors = []
    for x, t in inputs:
        ref = float_den.net(x, t)
        errors.append(float((qnet(x, t) - ref).norm() / ref.norm()))
    assert len(errors) == 4 and max(errors) < 0.05, errors
    b = fewstep.generate(den, (1, 8, 8), range(4), "dpm++2m", 4)
    assert float((a - b).norm() / a.norm()) < 0.05


def test_int8_kernels_match_simulated(checkpoint):
    den = _quantized(checkpoint)
    qnet = next(den.networks())
    x = torch.randn(5, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    t = torch.full((5,), float(qnet.levels[1]))
    sim = qnet(x, t)
    set_kernels(den, "int8")
    assert qnet.kernels == "int8"
    assert torch.allclose(qnet(x, t), sim, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="valid: simulated, int8"):
        set_kernels(den, "int4")


def test_per_sample_levels_use_each_samples_ranges(checkpoint):
    den = _quantized(checkpoint)
    qnet = next(den.networks())
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    t = qnet.levels[:3].float()
    for kernels in ("simulated", "int8"):
        qnet.kernels = kernels
        whole = qnet(x, t)
        parts = torch.cat([qnet(x[i:i + 1], t[i:i + 1]) for i in range(3)])
        assert torch.allclose(whole, parts, atol=1e-5)


# ----------------------------------------------------------------------------- calibration

def test_calibration_records_one_range_set_per_step(checkpoint):
    den = _quantized(checkpoint)
    info = next(den.networks()).info
    assert len(info["levels"]) == 4 and info["steps"] == [[0, 0], [1, 0], [2, 0], [3, 0]]
    assert info["level_groups"] == [0, 1, 2, 3]
    assert all(len(r) == 4 and min(r) > 0 for r in info["ranges"].values())
    assert info["levels"] == sorted(info["levels"], reverse=True)  # noisiest first, in solve order
    grouped = next(_quantized(checkpoint, groups=2).networks()).info
    assert grouped["level_groups"] == [0, 0, 1, 1] and all(len(r) == 2 for r in grouped["ranges"].values())


def test_sampling_maps_steps_to_the_nearest_calibrated_step(checkpoint):
    den = _quantized(checkpoint)
    assert _groups_used(den, 4)[0] == [0, 1, 2, 3]  # the calibration's own solve: each step its own ranges
    calibrated = next(den.networks()).info["levels"]
    used, levels = _groups_used(den, 8)
    nearest = [min(range(4), key=lambda g: abs(calibrated[g] - lv)) for lv in levels]
    assert len(used) == 8 and used == nearest and used == sorted(used) and used[0] == 0 and used[-1] == 3


def test_non_fewstep_networks_are_refused():
    with pytest.raises(TypeError, match="quantization supports fewstep UNet and DiT"):
        quantize_denoiser(fashion_standin(), CalibrationSettings(**CALIB))


# ----------------------------------------------------------------------------- saving, loading, CLI

def test_save_load_round_trip_identical(checkpoint, tmp_path):
    den = _quantized(checkpoint)
    out = save_quantized(den, tmp_path / "q")
    assert sorted(p.name for p in out.iterdir()) == ["checksums.json", "config.json", "int8.safetensors"]
    cfg = json.loads((out / "config.json").read_text())["quantization"]
    assert cfg["bits"] == 8 and cfg["calibration"]["nfe"] == 4 and cfg["calibration"]["seed"] == 100
    back = fewstep.load_model(out)
    assert isinstance(back.net, QuantizedNetwork) and back.config["quantization"]["method"] == "tfmq-ptq"
    layer = dict(back.net.quant_layers())["down.0.0.conv1"]
    assert layer.weight_int8.dtype == torch.int8
    assert torch.equal(layer.act_clip, dict(den.net.quant_layers())["down.0.0.conv1"].act_clip)
    for nfe in (4, 6):
        assert torch.equal(fewstep.generate(back, (1, 8, 8), range(3), "dpm++2m", nfe),
                           fewstep.generate(den, (1, 8, 8), range(3), "dpm++2m", nfe))
    with pytest.raises(FileExistsError):
        save_quantized(den, out)


def test_same_seed_same_image_at_any_batch_size(checkpoint):
    den = _quantized(checkpoint)
    for kernels in ("simulated", "int8"):
        set_kernels(den, kernels)
        whole = fewstep.generate(den, (1, 8, 8), range(6), "dpm++2m", 4)
        split = torch.cat([fewstep.generate(den, (1, 8, 8), s, "dpm++2m", 4) for s in (range(0, 2), range(2, 6))])
        assert torch.allclose(whole, split, atol=1e-5)


def test_cli_quantize_then_sample(checkpoint, tmp_path, capsys):
    out = tmp_path / "q"
    args = ["quantize", "--model", str(checkpoint), "--out", str(out), "--calib-nfe", "4", "--calib-n", "4",
            "--batch-size", "4", "--no-progress"]
    assert main(args) == 0
    assert "4 calibrated steps" in capsys.readouterr().out
    assert json.loads((out / "config.json").read_text())["quantization"]["calibration"]["n"] == 4
    assert main(["sample", "--model", str(out), "--nfe", "4", "--n", "3", "--out", str(tmp_path / "s.npz"),
                 "--no-progress"]) == 0
    assert (tmp_path / "s.npz").exists()
    assert main(args) == 1  # --out exists
    assert "already exists" in capsys.readouterr().err
    assert main(["quantize", "--model", str(out), "--out", str(tmp_path / "q2"), "--no-progress"]) == 1
    assert "already quantized" in capsys.readouterr().err


def test_cli_refuses_a_diffusers_model(tmp_path, capsys):
    folder = tmp_path / "unet"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"_class_name": "UNet2DModel"}))
    (folder / "scheduler_config.json").write_text("{}")
    assert main(["quantize", "--model", str(folder), "--out", str(tmp_path / "q"), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "diffusers model" in err and "supports fewstep UNet and DiT" in err and not (tmp_path / "q").exists()


# ----------------------------------------------------------------------------- asymmetric ranges, float layers

def test_affine_grid_maths():
    from fewstep.quant.maths import affine_params, fake_quantize_affine

    lo, hi = torch.tensor(-0.28), torch.tensor(3.0)
    s, z = affine_params(lo, hi, 8)
    assert float(s) == pytest.approx(3.28 / 255) and float(z) == round(0.28 / float(s))
    x = torch.linspace(-0.28, 3.0, 10001)
    xq = fake_quantize_affine(x, s, z, 8)
    assert float(fake_quantize_affine(torch.tensor(0.0), s, z, 8)) == 0.0  # zero padding stays exact
    assert float((xq - x).abs().max()) <= float(s) / 2 + 1e-6  # round to nearest inside the range
    assert len(torch.unique(xq)) == 256  # every level of 8 bits is used on [lo, hi]
    assert float(fake_quantize_affine(torch.tensor(5.0), s, z, 8)) == pytest.approx(float(s) * (255 - float(z)))
    # on a skewed (post-SiLU-like) input the affine grid is about twice as fine as the symmetric one
    sym = fake_quantize(x, 3.0 / 127, 8)
    assert float((xq - x).pow(2).mean()) < 0.3 * float((sym - x).pow(2).mean())
    # a range that excludes 0 is widened to include it
    s2, z2 = affine_params(torch.tensor(0.5), torch.tensor(2.0), 8)
    assert float(z2) == 0 and float(s2) == pytest.approx(2.0 / 255)


def test_asymmetric_calibration_records_observed_min_and_max(checkpoint):
    den = _quantized(checkpoint, activations="asymmetric")
    qnet = next(den.networks())
    info = qnet.info
    assert set(info["ranges_low"]) == set(info["ranges"]) and "asymmetric" in info["activations"]
    for name, layer in qnet.quant_layers():
        assert layer.asymmetric
        assert all(lo <= 0 <= hi for lo, hi in zip(info["ranges_low"][name], info["ranges"][name]))
    # the max estimator's range is the observed [min, max] of the layer's input at each calibrated step
    seen = {}
    float_den = fewstep.load_model(checkpoint)
    layer = float_den.net.get_submodule("down.0.0.conv2")
    h = layer.register_forward_pre_hook(lambda m, a: seen.setdefault("x", []).append(a[0].detach().clone()))
    fewstep.generate(float_den, (1, 8, 8), range(100, 108), "dpm++2m", 4)
    h.remove()
    assert info["ranges_low"]["down.0.0.conv2"] == pytest.approx([min(float(x.min()), 0) for x in seen["x"]], rel=1e-5)
    assert info["ranges"]["down.0.0.conv2"] == pytest.approx([max(float(x.max()), 0) for x in seen["x"]], rel=1e-5)
    with pytest.raises(ValueError, match="simulated kernels only"):
        set_kernels(den, "int8")


def test_asymmetric_and_float_layers_round_trip_and_help(checkpoint, tmp_path):
    ref = fewstep.generate(fewstep.load_model(checkpoint), (1, 8, 8), range(8), "dpm++2m", 4)
    sym = fewstep.generate(_quantized(checkpoint), (1, 8, 8), range(8), "dpm++2m", 4)
    den = quantize_denoiser(fewstep.load_model(checkpoint), CalibrationSettings(**CALIB, activations="asymmetric"),
                            keep_float=["conv_in", "conv_out"])
    qnet = next(den.networks())
    assert isinstance(qnet.net.conv_in, torch.nn.Conv2d) and isinstance(qnet.net.conv_out, torch.nn.Conv2d)
    assert {"conv_in", "conv_out"} <= set(qnet.info["float_layers"]) and "conv_in" not in qnet.info["ranges"]
    asym = fewstep.generate(den, (1, 8, 8), range(8), "dpm++2m", 4)
    assert (asym - ref).pow(2).mean() < (sym - ref).pow(2).mean()
    back = fewstep.load_model(save_quantized(den, tmp_path / "q"))
    assert torch.equal(fewstep.generate(back, (1, 8, 8), range(8), "dpm++2m", 4), asym)
    with pytest.raises(ValueError, match="conv_nope is not a quantizable layer"):
        quantize_denoiser(fewstep.load_model(checkpoint), CalibrationSettings(**CALIB), keep_float=["conv_nope"])
    with pytest.raises(ValueError, match="unknown activation scheme"):
        CalibrationSettings(activations="skewed")


def test_percentile_estimator_clips_below_the_maximum(checkpoint):
    top = next(_quantized(checkpoint).networks()).info["ranges"]
    pct = next(_quantized(checkpoint, estimator="percentile", percentile=99.0).networks()).info["ranges"]
    assert all(p <= t + 1e-6 for name in top for p, t in zip(pct[name], top[name]))
    assert any(p < 0.99 * t for name in top for p, t in zip(pct[name], top[name]))
