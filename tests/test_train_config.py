"""Strict training configs: unknown keys and wrong types at every level are errors naming the key."""

import json

import pytest

from conftest import tiny_config, tiny_images
from fewstep.cli import main
from fewstep.data import ImageData
from fewstep.training.settings import resolve_config
from fewstep.training.trainer import Trainer


def _with(path: str, value):
    cfg = tiny_config()
    cfg["data"] = {"spec": "x.npz", "resolution": 8, "channels": 1}
    cfg["objective"] = {"kind": "denoising"}
    *parents, last = path.split(".")
    node = cfg
    for p in parents:
        node = node[p]
    node[last] = value
    return cfg


@pytest.mark.parametrize("path,value,message", [
    ("traning", {}, r"unknown config key\(s\) traning; valid keys: data, .*network, objective, .*training"),
    ("data.resolutoin", 8, r"data\.resolutoin; valid keys in data: channels, resolution, spec"),
    ("network.channel", 8, r"network\.channel; valid keys in network: attn_removed, attn_resolutions, channel_mult"),
    ("process.beta_stat", 0.1, r"process\.beta_stat; valid keys in process: beta_end, beta_start, kind"),
    ("training.stepz", 3, r"training\.stepz; valid keys in training: adam_betas, batch_size"),
    ("objective.weightng", "edm", r"objective\.weightng; valid keys in objective: align, .*, class_lr_scale, curriculum, curriculum_clusters, curriculum_stage_steps, hflip, init_from, label_dropout, min_snr_gamma"),
    ("training.batch_size", "8", r"config training\.batch_size must be int, got str '8'"),
    ("training.steps", 4.0, r"config training\.steps must be int, got float 4\.0"),
    ("training.hflip", 1, r"config training\.hflip must be bool, got int 1"),
    ("training.warmup_steps", True, r"config training\.warmup_steps must be int, got bool True"),
    ("training.lr", "1e-3", r"config training\.lr must be float, got str"),
    ("training.grad_clip", "off", r"config training\.grad_clip must be float or null"),
    ("training.adam_betas", [0.9, "x"], r"config training\.adam_betas must be a list of float"),
    ("network.channel_mult", [1, 2.5], r"config network\.channel_mult must be a list of int"),
    ("network.dropout", "0", r"config network\.dropout must be float"),
    ("process.num_train_timesteps", 1000.5, r"config process\.num_train_timesteps must be int"),
    ("data.resolution", "28", r"config data\.resolution must be int"),
    ("sigma_data", "0.5", r"config sigma_data must be float"),
    ("network", [1], r"config network must be a JSON object"),
    ("network.kind", "unet2", r"config network\.kind must be one of unet, dit, maskunet, got 'unet2'"),
    ("process.kind", "vp", r"config process\.kind must be one of vp_discrete, .*got 'vp'"),
    ("prediction", "epsilon", r"config prediction must be one of eps, x0, v, flow, edm, got 'epsilon'"),
    ("training.steps", 0, r"config training\.steps must be positive, got 0"),
    ("training.steps", -5, r"config training\.steps must be positive, got -5"),
    ("training.checkpoint_every_steps", -1, r"training\.checkpoint_every_steps must be non-negative, got -1"),
    ("training.checkpoint_every_seconds", -1.0, r"training\.checkpoint_every_seconds must be non-negative"),
    ("training.keep_checkpoints", -2, r"training\.keep_checkpoints must be non-negative, got -2"),
    ("training.log_every", 0, r"training\.log_every must be positive"),
    ("training.ema_half_life_images", 0, r"training\.ema_half_life_images must be positive"),
    ("training.adam_betas", [0.9], r"adam_betas must be two numbers"),
    ("objective.hflip", "yes", r"config objective\.hflip must be bool, got str 'yes'"),
    ("objective.sample_nfe", 0, r"objective\.sample_nfe must be positive"),
])
def test_bad_configs_name_the_key(path, value, message):
    with pytest.raises(ValueError, match=message):
        resolve_config(_with(path, value))


def test_good_configs_and_checkpoint_keys_pass():
    cfg = _with("training.hflip", True)  # older layout: objective settings under training
    cfg.update(format="fewstep-checkpoint", format_version=1, step=7, images_seen=56, provenance={"x": 1})
    out, cls, settings, obj = resolve_config(cfg)
    assert cls.kind == "denoising" and obj.hflip is True and "hflip" not in out["training"]
    assert out["objective"]["hflip"] is True and "step" not in out and out["sigma_data"] == 0.5
    assert settings.lr == 1e-3
    # ints are valid floats; null where allowed
    resolve_config(_with("training.grad_clip", None))
    resolve_config(_with("training.lr", 1))
    with pytest.raises(ValueError, match="both in training and in objective"):
        cfg = _with("training.hflip", True)
        cfg["objective"] = {"hflip": False}
        resolve_config(cfg)


def test_every_process_kind_is_checked():
    for proc in [{"kind": "vp_discrete", "schedule": "cosine", "num_train_timesteps": 100, "s": 0.008},
                 {"kind": "vp_discrete", "schedule": "custom", "betas": [0.1, 0.2]},
                 {"kind": "edm", "sigma_min": 0.002, "sigma_max": 80}, {"kind": "rectified_flow"},
                 {"kind": "vp_linear", "beta_min": 0.1}, {"kind": "ve"}, {"kind": "vp_cosine", "t_max": 0.99}]:
        resolve_config({**tiny_config(), "process": proc})
    with pytest.raises(ValueError, match=r"process\.sigma_mx; valid keys in process: kind, sigma_max, sigma_min"):
        resolve_config({**tiny_config(), "process": {"kind": "edm", "sigma_mx": 3}})
    with pytest.raises(ValueError, match=r"process\.schedule must be one of linear"):
        resolve_config({**tiny_config(), "process": {"kind": "vp_discrete", "schedule": "sqrt"}})


def test_the_trainer_refuses_a_typo(tmp_path):
    cfg = tiny_config()
    cfg["training"]["checkpoint_every_step"] = 5
    with pytest.raises(ValueError, match=r"training\.checkpoint_every_step;"):
        Trainer(cfg, ImageData(tiny_images()), tmp_path / "r", progress=False)


def test_cli_prints_the_config_error_before_loading_data(tmp_path, capsys):
    cfg = tiny_config()
    cfg["traning"] = {"steps": 2}
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    rc = main(["train", "--data", str(tmp_path / "missing.npz"), "--config", str(tmp_path / "cfg.json"),
               "--out", str(tmp_path / "run"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 1 and "unknown config key(s) traning" in err and "Traceback" not in err
    assert "did you mean 'training' for 'traning'?" in err
    assert main(["train", "--data", str(tmp_path / "missing.npz"), "--config", "fashion-unet", "--steps", "0",
                 "--out", str(tmp_path / "run"), "--no-progress"]) == 1
    assert "training.steps must be positive, got 0" in capsys.readouterr().err
