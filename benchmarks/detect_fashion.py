"""multiLID detection of bundled:fashion-v1 samples against Fashion-MNIST test images (docs/detection.md).

Held-out protocol: reference images fashion-mnist:test [0, 256), real training images [256, 1256), real test
images [5000, 6000); generated training images [0, 1000) of each sample file, generated test images
[1000, 2000).  One detector per generated set (as ``fewstep detect fit`` would fit it); every detector shares the
untrained network (seed 0) and the reference set, so each image's features are computed once and every
detector is also scored on the other generated sets (transfer).  A real-vs-real control (Fashion-MNIST training
images in place of generated ones) must give an AUC near 0.5.

    nice -n 10 python benchmarks/detect_fashion.py NAME=SPEC ...   (SPEC: an .npz from fewstep sample)
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from fewstep._io import atomic_path
from fewstep.detect import detection_metrics
from fewstep.detect.detector import Detector, DetectorConfig, minibatch_multilid_features
from fewstep.detect.forest import fit_forest, forest_proba
from fewstep.detect.network import LIDNet
from fewstep.metrics.data import load_images


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("sets", nargs="+", help="NAME=SPEC of generated images (>= 2000 each)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--protocol", choices=["reference", "minibatch"], default="reference",
                    help="reference: neighbours among 256 fixed real images (fewstep detect); minibatch: among the "
                         "other 99 images of the same 100-image batch, each batch all real or all generated")
    ap.add_argument("--cache", default=None, help="folder keeping each set's features (a rerun reads them back)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.time()
    real = load_images("fashion-mnist:test")
    ref = real[:256]
    det = Detector(DetectorConfig(shape=tuple(ref.shape[1:])), LIDNet(1, 16, 0),
                   ((ref + 1) * 127.5).round().to(torch.uint8), {})
    cache = Path(args.cache) if args.cache else None

    def features(name: str, x: torch.Tensor, train: slice, test: slice) -> tuple[np.ndarray, np.ndarray]:
        path = cache / f"{args.protocol}-{name.replace(' ', '_').replace(':', '_')}.npz" if cache else None
        if path is not None and path.is_file():
            f = np.load(path)
            return f["train"], f["test"]
        if args.protocol == "minibatch":
            out = (minibatch_multilid_features(det.net, x[train], 20), minibatch_multilid_features(det.net, x[test], 20))
        else:
            out = (det.features(x[train]), det.features(x[test]))
        if path is not None:
            cache.mkdir(parents=True, exist_ok=True)
            with atomic_path(path) as tmp:
                np.savez(tmp.with_suffix(".npz"), train=out[0], test=out[1])
                tmp.with_suffix(".npz").replace(tmp)
        print(f"features of {name}: {time.time() - t0:.0f} s", flush=True)
        return out

    feats = {"real": features("real", real, slice(256, 1256), slice(5000, 6000))}
    sets = dict(s.split("=", 1) for s in args.sets)
    sets["control: fashion-mnist:train"] = "fashion-mnist:train"
    for name, spec in sets.items():
        feats[name] = features(name, load_images(spec), slice(0, 1000), slice(1000, 2000))
    rows = []
    names = [n for n in feats if n != "real"]
    for fit_name in names:
        x = np.concatenate([feats["real"][0], feats[fit_name][0]])
        y = np.r_[np.zeros(1000), np.ones(1000)]
        forest = fit_forest(x, y, trees=100, seed=0)
        for score_name in names:
            p = forest_proba(forest, np.concatenate([feats["real"][1], feats[score_name][1]]))
            m = detection_metrics(p, y)
            rows.append({"fitted_on": fit_name, "scored_on": score_name, **m})
            print(f"| {fit_name} | {score_name} | {m['accuracy']:.3f} | {m['auc']:.3f} |", flush=True)
    print(f"total {time.time() - t0:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
