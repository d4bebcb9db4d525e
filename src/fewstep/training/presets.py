"""Named training configs usable as ``fewstep train --config NAME``."""

from __future__ import annotations

import copy
from typing import Any

PRESETS: dict[str, dict[str, Any]] = {
    # The bundled model ``bundled:fashion``: a 1.2M-parameter UNet on Fashion-MNIST 28x28.
    "fashion-unet": {
        "network": {"kind": "unet", "in_channels": 1, "resolution": 28, "channels": 32, "channel_mult": [1, 2, 2],
                    "num_res_blocks": 1, "attn_resolutions": [7], "head_dim": 32, "dropout": 0.0,
                    "num_classes": 0, "time_scale": 1.0},
        "process": {"kind": "vp_discrete", "schedule": "linear", "num_train_timesteps": 1000,
                    "beta_start": 0.0001, "beta_end": 0.02},
        "prediction": "v",
        "data": {"spec": "fashion-mnist", "resolution": 28, "channels": 1},
        "objective": {"kind": "denoising", "weighting": "min_snr", "min_snr_gamma": 5.0, "time_sampling": "uniform"},
        "training": {"steps": 20000, "batch_size": 64, "lr": 5e-4, "warmup_steps": 200, "grad_clip": 1.0,
                     "ema_half_life_images": 50000, "ema_rampup": 0.05, "seed": 0, "checkpoint_every_seconds": 300,
                     "sample_every_steps": 1000, "log_every": 20},
    },
}

# The bundled class-conditional model ``bundled:fashion-cond``: the same UNet with a class table of
# 10 classes + the null class, fine-tuned from ``bundled:fashion`` (class table starting at zero)
# with 10% label dropout, so it also serves unconditional sampling and classifier-free guidance.
# The class only matters at high noise, where min-SNR weighting of the v-loss is ~SNR (tiny): the
# fine-tune uses the plain v-loss (uniform weighting) and a 20x learning rate on the class table.
PRESETS["fashion-unet-cond"] = copy.deepcopy(PRESETS["fashion-unet"])
PRESETS["fashion-unet-cond"]["network"]["num_classes"] = 10
PRESETS["fashion-unet-cond"]["objective"].update({"weighting": "uniform", "use_labels": True, "label_dropout": 0.1,
                                                  "init_from": "bundled:fashion-v1", "class_lr_scale": 20.0})
PRESETS["fashion-unet-cond"]["training"].update({"steps": 3000, "warmup_steps": 20})

# Flow matching / rectified flow (Liu et al. 2023; Lipman et al. 2023) with the same UNet: x_t = (1 - t) x0 + t eps,
# the network predicts the velocity eps - x0 (plain velocity loss, t uniform).  Sample with euler/heun/dpm++2m.
PRESETS["fashion-flow"] = copy.deepcopy(PRESETS["fashion-unet"])
PRESETS["fashion-flow"].update({"process": {"kind": "rectified_flow"}, "prediction": "flow"})
PRESETS["fashion-flow"]["objective"] = {"kind": "denoising", "weighting": "uniform", "time_sampling": "uniform"}

# A noise-aware Fashion-MNIST classifier for classifier guidance (docs/guidance.md): cross-entropy on
# x0 + sigma_hat eps at the noise levels of the bundled models' process (DDPM linear, uniform times).
PRESETS["fashion-noisy-classifier"] = {
    "classifier": {"kind": "noisy_classifier", "in_channels": 1, "resolution": 28, "num_classes": 10,
                   "channels": 32, "channel_mult": [1, 2, 2], "num_res_blocks": 1, "dropout": 0.0,
                   "sigma_data": 0.5, "time_scale": 250.0},
    "process": copy.deepcopy(PRESETS["fashion-unet"]["process"]),
    "data": {"spec": "fashion-mnist", "resolution": 28, "channels": 1},
    "objective": {"kind": "classifier", "time_sampling": "uniform"},
    "training": {"steps": 1200, "batch_size": 64, "lr": 1e-3, "warmup_steps": 100, "grad_clip": 1.0,
                 "ema_half_life_images": 10000, "ema_rampup": 0.05, "seed": 0, "checkpoint_every_seconds": 120,
                 "log_every": 20},
}

# EDM (Karras et al. 2022) and PFGM++ (Xu et al. 2023) on the bundled UNet: the same network, data, EDM
# preconditioning, weighting and log-normal noise levels; only the process's perturbation kernel differs
# (Gaussian vs PFGM++'s at D = 128, r = sigma sqrt(D)).  docs/pfgm.md compares them at equal compute.
PRESETS["fashion-unet-edm"] = copy.deepcopy(PRESETS["fashion-unet"])
PRESETS["fashion-unet-edm"].update({"process": {"kind": "edm", "sigma_min": 0.002, "sigma_max": 80.0},
                                    "prediction": "edm", "sigma_data": 0.5})
PRESETS["fashion-unet-edm"]["objective"] = {"kind": "denoising", "weighting": "edm", "time_sampling": "lognormal",
                                            "p_mean": -1.2, "p_std": 1.2}
# Their training section is the short equal-compute run of docs/pfgm.md (~6 CPU-minutes each; --steps for more).
PRESETS["fashion-unet-edm"]["training"].update({"steps": 250, "warmup_steps": 25, "ema_half_life_images": 4000,
                                                "checkpoint_every_seconds": 120, "sample_every_steps": 250})
PRESETS["fashion-unet-pfgmpp"] = copy.deepcopy(PRESETS["fashion-unet-edm"])
PRESETS["fashion-unet-pfgmpp"]["process"] = {"kind": "pfgmpp", "sigma_min": 0.002, "sigma_max": 80.0, "D": 128}

# Latent space (Rombach et al. 2022; docs/training.md, "Latent flow"): a small autoencoder, 28x28x1 <-> 14x14x4
# (``fewstep train --config fashion-autoencoder --out runs/autoencoder``), then rectified flow on its latents with
# the bundled UNet's blocks at 14 and 7 (``fewstep train --config fashion-latent-flow``: ``latent.autoencoder``
# names the autoencoder run; the trainer encodes the data once and fits the latent scale).
PRESETS["fashion-autoencoder"] = {
    "autoencoder": {"kind": "conv_autoencoder", "in_channels": 1, "resolution": 28, "channels": 32,
                    "latent_channels": 4, "downsamples": 1},
    "data": {"spec": "fashion-mnist", "resolution": 28, "channels": 1},
    "objective": {"kind": "autoencoder", "hflip": True, "latent_noise": 0.1, "latent_weight": 1e-4},
    "training": {"steps": 1500, "batch_size": 64, "lr": 1e-3, "warmup_steps": 50, "grad_clip": 1.0,
                 "ema_half_life_images": 20000, "ema_rampup": 0.05, "seed": 0, "checkpoint_every_seconds": 120,
                 "log_every": 20, "lr_schedule": "cosine"},
}
PRESETS["fashion-latent-flow"] = copy.deepcopy(PRESETS["fashion-flow"])
PRESETS["fashion-latent-flow"]["network"].update({"in_channels": 4, "resolution": 14, "channel_mult": [1, 2],
                                                  "attn_resolutions": [7]})
PRESETS["fashion-latent-flow"]["latent"] = {"autoencoder": "runs/autoencoder"}

# The frozen encoder of representation alignment (REPA, docs/training.md): a small CNN classifier trained on the
# training split only; its last feature map (64 x 7 x 7) is the alignment target.  Not the FID extractor nor the
# shipped classifier that judges samples.
PRESETS["fashion-encoder"] = {
    "encoder": {"kind": "patch_encoder", "in_channels": 1, "resolution": 28, "channels": 32, "feature_dim": 64,
                "num_classes": 10},
    "data": {"spec": "fashion-mnist", "resolution": 28, "channels": 1},
    "objective": {"kind": "encoder", "hflip": True},
    "training": {"steps": 1000, "batch_size": 128, "lr": 2e-3, "warmup_steps": 50, "grad_clip": 1.0,
                 "ema_half_life_images": 20000, "ema_rampup": 0.05, "seed": 0, "checkpoint_every_seconds": 120,
                 "log_every": 20},
}


def get_preset(name: str) -> dict[str, Any]:
    if name not in PRESETS:
        raise ValueError(f"unknown config preset {name!r}; valid: {', '.join(PRESETS)} or a path to a .json file")
    return copy.deepcopy(PRESETS[name])
