"""``fewstep train``: train a denoiser and write checkpoint folders."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a diffusion model", description=(
        "Train a network (UNet or DiT) as a denoiser. Checkpoints go to OUT/checkpoints/step-N, "
        "losses to OUT/log.jsonl, sample grids to OUT/samples. Run under torchrun for several GPUs/nodes."))
    p.add_argument("--data", help="fashion-mnist[:DIR], a .npz/.npy file or an image folder (default: the config's)")
    p.add_argument("--config", help="a JSON file {network, process, prediction, data, training} or a preset name "
                                    "(fashion-unet); with --resume the checkpoint's config is used (a --config "
                                    "that differs from it is refused)")
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in OUT")
    p.add_argument("--steps", type=int, help="total optimiser steps (overrides training.steps)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"])
    p.add_argument("--grad-accum", type=int)
    p.add_argument("--checkpoint-every", type=float, help="seconds between checkpoints")
    p.add_argument("--sample-every", type=int, help="steps between sample grids (0: never)")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=run)


def _load_config(spec: str) -> dict[str, Any]:
    from ..training.presets import PRESETS, get_preset

    if spec in PRESETS:
        return get_preset(spec)
    path = Path(spec)
    if not path.exists():
        raise FileNotFoundError(f"config {spec} not found (give a .json file or a preset: {', '.join(PRESETS)})")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"config {spec} is not valid JSON: {err}") from None


def _prepare(config: Any, args: argparse.Namespace, spec: str | None = None) -> dict[str, Any]:
    """``config`` with this command's flags applied (``training`` overrides, ``--data``, the data's size from the
    network); ``spec``: the data when neither ``--data`` nor the config names one."""
    if not isinstance(config, dict):
        raise ValueError(f"config {args.config} must be a JSON object {{network, process, prediction, data, training}}")
    training = config.setdefault("training", {})
    if not isinstance(training, dict):
        raise ValueError(f"config training must be a JSON object, got {training!r}")
    for name, key in [("steps", "steps"), ("batch_size", "batch_size"), ("lr", "lr"), ("seed", "seed"),
                      ("precision", "precision"), ("grad_accum", "grad_accum"),
                      ("checkpoint_every", "checkpoint_every_seconds"), ("sample_every", "sample_every_steps")]:
        value = getattr(args, name)
        if value is not None:
            training[key] = value
    data_cfg = config.setdefault("data", {})
    net = config.get("network", config.get("classifier", config.get("encoder", {})))  # the trained network's input size sets the data's
    if not isinstance(data_cfg, dict) or not isinstance(net, dict):
        raise ValueError("config data and network must be JSON objects")
    data_cfg["spec"] = args.data or data_cfg.get("spec") or spec
    if not data_cfg["spec"]:
        raise ValueError("no data given: pass --data (fashion-mnist[:DIR], a .npz/.npy file or an image folder)")
    data_cfg.setdefault("resolution", net.get("resolution", 28))
    data_cfg.setdefault("channels", net.get("in_channels", 1))
    return config


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as ``{"training.lr": ...}``."""
    if not isinstance(value, dict):
        return {prefix: value}
    out: dict[str, Any] = {}
    for k, v in value.items():
        out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def _refuse_other_config(resumed: dict[str, Any], given: dict[str, Any], name: str, folder: Path) -> None:
    """Refuse ``--config`` with ``--resume`` unless it is the resumed run's config (both as this command would run
    them: defaults filled, flags applied), naming the keys that differ."""
    from ..training.settings import resolve_config

    a, b = _flat(resolve_config(resumed)[0]), _flat(resolve_config(given)[0])
    for flat in (a, b):  # where the data is read from is --data's business (a moved file resumes), not the config's
        flat.pop("data.spec", None)
    missing = "(absent)"
    diffs = [f"{k}: {json.dumps(a.get(k, missing))} in the checkpoint, {json.dumps(b.get(k, missing))} in {name}"
             for k in sorted(set(a) | set(b)) if a.get(k, missing) != b.get(k, missing)]
    if diffs:
        shown = "; ".join(diffs[:6]) + (f"; and {len(diffs) - 6} more" if len(diffs) > 6 else "")
        raise ValueError(f"--resume continues the run with the config saved in {folder / 'config.json'}, but "
                         f"--config {name} differs from it in {len(diffs)} key{'s' if len(diffs) != 1 else ''} "
                         f"({shown}); drop --config to resume the run as it was (a flag such as --steps or --lr "
                         f"changes one setting), or start a new run in another --out with the new config")


def _bf16_would_pay(trainer: Any) -> bool:
    """Whether ``trainer`` runs in float32 on a CPU whose AMX tiles make bf16 autocast about twice as fast."""
    from ..precision import fast_bf16_here

    return trainer.device.type == "cpu" and trainer.settings.precision != "bf16" and fast_bf16_here("cpu")


def run(args: argparse.Namespace) -> int:
    import torch

    from ..checkpoint import latest_checkpoint, newest_readable_config
    from ..data import load_data
    from ..devices import resolve_device
    from ..training.settings import resolve_config
    from ..training.trainer import Trainer, init_distributed_from_env

    device = resolve_device(args.device)  # a bad --device fails here, not after the data is loaded
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.resume:
        if latest_checkpoint(args.out) is None:
            raise FileNotFoundError(f"--resume: no checkpoint under {Path(args.out) / 'checkpoints'}")
        folder, config = newest_readable_config(args.out)  # the trainer warns about damaged ones it skips
        config = _prepare(config, args)
        if args.config:
            given = _prepare(_load_config(args.config), args, spec=config["data"]["spec"])
            _refuse_other_config(config, given, args.config, folder)
    else:
        if not args.config:
            raise ValueError("--config is required for a new run (a .json file or a preset name such as fashion-unet)")
        if (Path(args.out) / "checkpoints").is_dir() and latest_checkpoint(args.out):
            raise ValueError(f"{args.out} already holds checkpoints; pass --resume to continue, or choose another --out")
        config = _prepare(_load_config(args.config), args)
    data_cfg = config["data"]
    resolve_config(config)  # refuse typos and wrong types before loading any data
    init_distributed_from_env()
    data = load_data(data_cfg["spec"], data_cfg["resolution"], data_cfg["channels"])
    trainer = Trainer(config, data, args.out, device=device, progress=not args.no_progress)
    if trainer.rank == 0 and _bf16_would_pay(trainer):
        print("note: this CPU runs bf16 natively (AMX); training.precision bf16 (--precision bf16) trains about 2x "
              "faster per image (docs/training.md, \"Precision\")")
    if args.resume:
        step = trainer.resume()
        if trainer.rank == 0:
            print(f"resumed from step {step}")
    trainer.fit()
    if trainer.rank == 0:
        print(f"done: step {trainer.step}, checkpoint {latest_checkpoint(args.out)}")
    return 0
