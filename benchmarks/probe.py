"""Linear probes on ``bundled:fashion-v1``'s diffusion features (DDAE, Xiang et al. 2023) against raw pixels.

    PYTHONPATH=src python benchmarks/probe.py [--t 10,50,150] [--train-n 5000] [--test-n 5000] [--threads 1]

For each time ``t`` one network evaluation per image records every UNet tap (``fewstep.diffusion_features``,
train image i noised with seed i, test image i with seed 10^6 + i, as ``fewstep probe`` does); a linear probe
(``fewstep.probe``: L2 weight chosen on a 10% hold-out of the training features) is fitted on each tap and on
the concatenation of the decoder taps, and scored on the first ``test-n`` Fashion-MNIST test images.  The raw
pixels are the baseline.  Results per ``t`` are saved to ``benchmarks/results/probe.json`` and read back on a rerun.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from fewstep import load_model
from fewstep._io import atomic_write_text
from fewstep.data import load_fashion_mnist, to_model_range
from fewstep.diffusion_features import diffusion_features, tap_names
from fewstep.probe import fit_linear_probe, select_l2

RESULTS = Path(__file__).parent / "results" / "probe.json"


def features(den, images, t, taps, seed, batch_size=250) -> dict[str, torch.Tensor]:
    out: dict[str, list[torch.Tensor]] = {name: [] for name in taps}
    for i in tqdm(range(0, len(images), batch_size), desc=f"t={t:g}", leave=False):
        x0 = to_model_range(images[i:i + batch_size])
        f = diffusion_features(den, x0, t, taps, seeds=range(seed + i, seed + i + len(x0)))
        for name in taps:
            out[name].append(f[name].float())
    return {name: torch.cat(v) for name, v in out.items()}


def probe(f_train, y_train, f_test, y_test) -> dict[str, float]:
    l2, _ = select_l2(f_train, y_train, 10)
    p = fit_linear_probe(f_train, y_train, 10, l2=l2)
    return {"test_accuracy": p.accuracy(f_test, y_test), "train_accuracy": p.accuracy(f_train, y_train),
            "l2": l2, "dim": int(f_train.shape[1])}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--t", default="10,50,150")
    ap.add_argument("--train-n", type=int, default=5000)
    ap.add_argument("--test-n", type=int, default=5000)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    train, test = load_fashion_mnist(split="train"), load_fashion_mnist(split="test")
    xtr, ytr = train.images[:args.train_n], train.labels[:args.train_n]
    xte, yte = test.images[:args.test_n], test.labels[:args.test_n]
    done = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    tag = f"train={args.train_n},test={args.test_n}"
    key = f"pixels|{tag}"
    if key not in done:
        done[key] = probe(to_model_range(xtr).flatten(1), ytr, to_model_range(xte).flatten(1), yte)
        atomic_write_text(RESULTS, json.dumps(done, indent=1))
    print(f"raw pixels: test accuracy {done[key]['test_accuracy']:.4f} ({done[key]['dim']} features)", flush=True)
    den = load_model("bundled:fashion-v1")
    taps = [name for name in tap_names(den) if name != "deep"]  # deep is up.6's input, pooled: = a decoder tap's
    decoder = [name for name in taps if name.startswith("up.")]
    for t in [float(v) for v in args.t.split(",")]:
        key = f"t={t:g}|{tag}"
        if key not in done:
            start = time.perf_counter()
            ftr, fte = features(den, xtr, t, taps, 0), features(den, xte, t, taps, 10**6)
            ftr["up.*"] = torch.cat([ftr[n] for n in decoder], 1)
            fte["up.*"] = torch.cat([fte[n] for n in decoder], 1)
            done[key] = {name: probe(ftr[name], ytr, fte[name], yte) for name in ftr}
            done[key]["seconds"] = time.perf_counter() - start
            atomic_write_text(RESULTS, json.dumps(done, indent=1))
        row = done[key]
        print(f"t={t:g}: " + ", ".join(f"{n} {row[n]['test_accuracy']:.4f}" for n in row if n != "seconds"),
              flush=True)
    print("\n| t | " + " | ".join(taps + ["up.*"]) + " |")
    print("|---:|" + "---:|" * (len(taps) + 1))
    for t in [float(v) for v in args.t.split(",")]:
        row = done[f"t={t:g}|{tag}"]
        print(f"| {t:g} | " + " | ".join(f"{row[n]['test_accuracy']:.3f}" for n in taps + ["up.*"]) + " |")


if __name__ == "__main__":
    main()
