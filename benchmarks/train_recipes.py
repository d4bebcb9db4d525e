"""Training recipes at equal CPU time on Fashion-MNIST: today's recipe against each recipe option.

    # train one recipe for a CPU-time budget (resumable: run the same command again)
    nice -n 10 PYTHONPATH=src python benchmarks/train_recipes.py train --recipe default --out /work/runs/recipes \
        --cpu-minutes 12
    # FID (fewstep eval: dataset-native fashion extractor, DPM-Solver++(2M), 10 NFE) of every run's checkpoints
    nice -n 10 PYTHONPATH=src python benchmarks/train_recipes.py eval --out /work/runs/recipes --n 2000
    PYTHONPATH=src python benchmarks/train_recipes.py table --out /work/runs/recipes

Every recipe trains ``bundled:fashion-v1``'s network, process and settings (src/fewstep/assets/fashion-v1/config.json:
1.19M-parameter UNet, v-prediction, DDPM linear schedule, min-SNR-5, AdamW 5e-4, batch 64, half-life EMA with
ramp-up) with one torch thread until the process has spent ``--cpu-minutes`` of CPU time on training steps
(``time.process_time``, data loading excluded), checkpointing at each quarter of the budget.  Every run also
keeps EDM2's two post-hoc EMA tracks (sigma_rel 0.05, 0.10; snapshots every 25 steps), which do not change
training, so the post-hoc EMA is measured on the same runs (``eval`` rebuilds ``--posthoc`` lengths of each
run's final step with ``fewstep ema``).

``eval`` runs ``fewstep eval --extractor fashion --nfe 10 --n N --threads 1`` on each checkpoint and keeps one
JSON per evaluation in OUT/<recipe>/eval/ (a rerun skips those done); ``table`` prints the markdown table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
FASHION_CONFIG = ROOT / "src" / "fewstep" / "assets" / "fashion-v1" / "config.json"

#: Recipe name -> (training overrides, objective overrides) on bundled:fashion-v1's config.
RECIPES: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "default": ({}, {}),
    "uncertainty": ({}, {"uncertainty_weighting": True}),
    "curriculum": ({}, {"curriculum": "time", "curriculum_clusters": 10, "curriculum_stage_steps": 12}),
    "curriculum-snr": ({}, {"curriculum": "snr", "curriculum_clusters": 10, "curriculum_stage_steps": 12}),
    "flow": ({}, {"weighting": "uniform"}),
    "latent-flow": ({}, {"weighting": "uniform"}),
}
#: Recipes that change the model itself: top-level config overrides (``network`` entries are merged).  Rectified
#: flow (the ``fashion-flow`` preset's process and prediction) in pixels, and on the latents of ``--autoencoder``
#: (a run of ``fewstep train --config fashion-autoencoder``; the ``fashion-latent-flow`` preset's network).
MODEL_RECIPES: dict[str, dict[str, Any]] = {
    "flow": {"process": {"kind": "rectified_flow"}, "prediction": "flow"},
    "latent-flow": {"process": {"kind": "rectified_flow"}, "prediction": "flow",
                    "network": {"in_channels": 4, "resolution": 14, "channel_mult": [1, 2], "attn_resolutions": [7]},
                    "latent": {"autoencoder": None}},
}
#: ``--network small``: bundled:fashion-v1's UNet at half the width and without attention (about 3x cheaper per step),
#: for when the CPU is shared too thinly for the full network to get anywhere within the budget.
SMALL_NETWORK = {"channels": 16, "attn_resolutions": []}
POSTHOC = {"posthoc_ema_sigma_rels": [0.05, 0.10], "posthoc_ema_snapshot_every": 25}


def recipe_config(recipe: str, network: str = "fashion", autoencoder: str | None = None) -> dict[str, Any]:
    """bundled:fashion-v1's training config with ``recipe``'s overrides (objective settings in ``objective``);
    ``autoencoder`` is the latent recipes' autoencoder run."""
    from fewstep.training.config import CHECKPOINT_KEYS
    from fewstep.training.denoising import DenoisingSettings
    import dataclasses

    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}; valid: {', '.join(RECIPES)}")
    cfg = {k: v for k, v in json.loads(FASHION_CONFIG.read_text()).items() if k not in CHECKPOINT_KEYS}
    if network == "small":
        cfg["network"] = {**cfg["network"], **SMALL_NETWORK}
    training = dict(cfg["training"])
    objective_keys = {f.name for f in dataclasses.fields(DenoisingSettings)}
    objective = {k: training.pop(k) for k in list(training) if k in objective_keys}
    training_over, objective_over = RECIPES[recipe]
    training.update(training_over, **POSTHOC, sample_every_steps=0, checkpoint_every_seconds=0, keep_checkpoints=0)
    objective.update(objective_over)
    cfg["training"], cfg["objective"] = training, {"kind": "denoising", **objective}
    for key, value in MODEL_RECIPES.get(recipe, {}).items():
        cfg[key] = {**cfg[key], **value} if key == "network" else value
    if "latent" in cfg:
        if not autoencoder:
            raise ValueError(f"recipe {recipe} trains on latents: pass --autoencoder RUN (fewstep train --config "
                             f"fashion-autoencoder)")
        cfg["latent"] = {"autoencoder": str(autoencoder)}
    return cfg


def train(args: argparse.Namespace) -> None:
    import torch

    from fewstep.data import load_data
    from fewstep.checkpoint import list_checkpoints
    from fewstep.training.trainer import Trainer
    from fewstep._io import atomic_write_text

    torch.set_num_threads(1)
    run = Path(args.out) / args.recipe
    cfg = recipe_config(args.recipe, args.network, args.autoencoder)
    data = load_data(args.data, resolution=28, channels=1)
    tr = Trainer(cfg, data, run, device="cpu", progress=False)
    budget_file = run / "budget.json"
    budget = json.loads(budget_file.read_text()) if budget_file.exists() else {"cpu_budget_s": args.cpu_minutes * 60,
                                                                                "checkpoints": {}}
    used = 0.0
    if list_checkpoints(run):
        tr.resume()
        used = budget["checkpoints"][str(tr.step)]["cpu_s"]
    total = budget["cpu_budget_s"]
    marks = [total * k / 4 for k in (1, 2, 3, 4)]
    cpu0, wall0 = time.process_time() - used, time.time()
    wall_used = budget["checkpoints"].get(str(tr.step), {}).get("wall_s", 0.0)
    last_save, window = time.time(), []

    def checkpoint(mark: bool) -> None:
        tr.save()
        entry = {"cpu_s": time.process_time() - cpu0, "wall_s": wall_used + time.time() - wall0,
                 "images_seen": tr.step * tr.settings.batch_size, "mark": mark}
        budget["checkpoints"][str(tr.step)] = entry
        atomic_write_text(budget_file, json.dumps(budget, indent=1))
        print(f"[{args.recipe}] step {tr.step}: checkpoint, {entry['cpu_s']:.0f} CPU-s, {entry['wall_s']:.0f} wall-s",
              flush=True)

    while time.process_time() - cpu0 < total:
        window.append(tr.train_step())
        if tr.step % tr.settings.posthoc_ema_snapshot_every == 0:
            tr.save_snapshots()
        if tr.step % 20 == 0:
            tr._log({"step": tr.step, "loss": sum(window) / len(window), "cpu_s": time.process_time() - cpu0,
                     "time": time.time()})
            window = []
        done = sum(e["mark"] for e in budget["checkpoints"].values())
        if done < len(marks) - 1 and time.process_time() - cpu0 >= marks[done]:
            checkpoint(True)
        elif time.time() - last_save > 300:
            checkpoint(False)
            last_save = time.time()
    tr.save_snapshots()
    if not budget["checkpoints"].get(str(tr.step), {}).get("mark"):
        checkpoint(True)
    budget["final_step"] = tr.step
    atomic_write_text(budget_file, json.dumps(budget, indent=1))


def _fewstep(*argv: str) -> None:
    subprocess.run([sys.executable, "-m", "fewstep", *argv], check=True)


def evaluations(out: Path, posthoc: list[float]) -> list[tuple[str, str, int, Path]]:
    """``(recipe, ema label, step, checkpoint folder)`` of every evaluation to run."""
    todo = []
    for recipe in RECIPES:
        run = out / recipe
        budget_file = run / "budget.json"
        if not budget_file.exists():
            continue
        budget = json.loads(budget_file.read_text())
        for step, entry in sorted(budget["checkpoints"].items(), key=lambda kv: int(kv[0])):
            if entry["mark"]:
                todo.append((recipe, "half-life", int(step), run / "checkpoints" / f"step-{int(step):08d}"))
        if "final_step" in budget:
            for rel in posthoc:
                todo.append((recipe, f"posthoc-{rel:.3f}", budget["final_step"], run / "posthoc" / f"{rel:.3f}"))
    return todo


def evaluate_all(args: argparse.Namespace) -> None:
    out = Path(args.out)
    for recipe, label, step, folder in evaluations(out, args.posthoc):
        if (args.recipes and recipe not in args.recipes) or (args.labels and label not in args.labels):
            continue
        if label != "half-life" and not args.all_posthoc and recipe != "default":
            continue
        if label == "half-life" and args.final_only and step != json.loads((out / recipe / "budget.json").read_text())["final_step"]:
            continue
        dest = out / recipe / "eval" / f"{label}-step-{step:08d}-n{args.n}-nfe{args.nfe}.json"
        if dest.exists():
            continue
        if label != "half-life" and not folder.exists():
            _fewstep("ema", "--run", str(out / recipe), "--sigma-rel", label.split("-")[1], "--out", str(folder))
        dest.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.time()
        _fewstep("eval", "--model", str(folder), "--extractor", "fashion", "--solver", "dpm++2m", "--nfe",
                 str(args.nfe), "--n", str(args.n), "--threads", "1", "--device", "cpu", "--out", str(dest))
        print(f"[{recipe} {label} step {step}] eval took {time.time() - t0:.0f} s", flush=True)


def table(args: argparse.Namespace) -> None:
    out = Path(args.out)
    print("| recipe | EMA | step | images seen | CPU min | wall min | FID (10 NFE) | KID |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for recipe in RECIPES:
        folder = out / recipe / "eval"
        if not folder.is_dir():
            continue
        budget = json.loads((out / recipe / "budget.json").read_text())
        for path in sorted(folder.glob("*.json")):
            res = json.loads(path.read_text())
            label, rest = path.name.split("-step-")
            step = int(rest.split("-")[0])
            entry = budget["checkpoints"][str(step)]
            kid = res.get("kid")
            print(f"| {recipe} | {label} | {step} | {entry['images_seen']:,} | {entry['cpu_s'] / 60:.1f} | "
                  f"{entry['wall_s'] / 60:.1f} | {res['fid']:.2f} | {kid if kid is None else format(kid, '.4f')} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("--recipe", required=True, choices=list(RECIPES))
    t.add_argument("--out", required=True)
    t.add_argument("--cpu-minutes", type=float, default=12.0)
    t.add_argument("--data", default="fashion-mnist")
    t.add_argument("--network", default="fashion", choices=["fashion", "small"],
                   help="bundled:fashion-v1's network, or SMALL_NETWORK (half width, no attention)")
    t.add_argument("--autoencoder", default=None, help="latent recipes: the autoencoder run")
    e = sub.add_parser("eval")
    e.add_argument("--out", required=True)
    e.add_argument("--n", type=int, default=2000)
    e.add_argument("--nfe", type=int, default=10)
    e.add_argument("--posthoc", type=float, nargs="*", default=[0.05, 0.10, 0.15, 0.20])
    e.add_argument("--recipes", nargs="*", default=None)
    e.add_argument("--labels", nargs="*", default=None, help="only these EMAs: half-life, posthoc-0.050 ...")
    e.add_argument("--all-posthoc", action="store_true", help="rebuild post-hoc EMAs of every recipe (default: "
                                                              "only of 'default')")
    e.add_argument("--final-only", action="store_true", help="only the final checkpoint of each run")
    s = sub.add_parser("table")
    s.add_argument("--out", required=True)
    args = p.parse_args()
    {"train": train, "eval": evaluate_all, "table": table}[args.cmd](args)


if __name__ == "__main__":
    main()
