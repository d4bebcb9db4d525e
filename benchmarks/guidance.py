"""Guidance on the class-conditional Fashion-MNIST model: class accuracy and FID against guidance scale.

    PYTHONPATH=src python benchmarks/guidance.py --model bundled:fashion-cond \
        --classifier runs/fashion-noisy-classifier --n 1000 --threads 1

For each method and scale: ``n`` samples from seeds ``0 .. n-1``, seed ``s`` asking for class
``s % 10`` (balanced classes), drawn with ``--solver`` at ``--nfe`` evaluations of the diffusion
network.  Scored by the shipped evaluation classifier (``fewstep.metrics.fashion_classifier``,
not the guiding one): the class accuracy (its arg-max equals the requested class) and the FID of
its features against the shipped Fashion-MNIST test-set statistics (dataset-native reference).
The FID of ``n`` real training images is printed as the floor at this ``n``.

Methods: ``cfg`` (classifier-free guidance of the label-dropout model: 0 = unconditional, 1 =
conditional), ``cfg-interval`` (guidance only for ``sigma/alpha`` in ``--interval``),
``classifier`` (the model's unconditional (null-class) denoiser guided by the noise-aware
classifier; 0 = unconditional) and ``classifier-calibrated`` (the same classifier with per-noise-
level temperatures fitted on held-out Fashion-MNIST test images, EluCD-style; the calibration table
is written beside the results).  Results resume from ``--out``'s JSON; a PNG plot and a Markdown
table are written next to it.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

import fewstep
from fewstep._io import atomic_write_text
from fewstep.guidance import calibrate, guide, load_calibration, load_classifier, num_classes, save_calibration
from fewstep.metrics.evaluate import compare, images_stats, quantize
from fewstep.metrics.extractors import get_extractor
from fewstep.metrics.models import reference_stats

CALIBRATION_SIGMAS = [0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 150.0]


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def draw(den: Any, n: int, solver: str, nfe: int, batch: int, classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` images (seeds 0..n-1, class ``seed % classes``) and their requested labels."""
    labels = torch.arange(n) % classes
    out = []
    for i in range(0, n, batch):
        seeds = list(range(i, min(n, i + batch)))
        out.append(fewstep.generate(den, den.sample_shape, seeds, solver, nfe, cond={"class_labels": labels[seeds]}))
    return torch.cat(out), labels


@torch.no_grad()
def score(images: torch.Tensor, labels: torch.Tensor, extractor: Any, ref: Any) -> dict[str, float]:
    """Class accuracy and FID (with KID, precision, recall) of ``images`` by the evaluation classifier."""
    q = quantize(images)
    pred = torch.cat([extractor.logits(q[i:i + 500]).argmax(1).cpu() for i in range(0, len(q), 500)])
    stats = images_stats(extractor, q, progress=False)
    return {"accuracy": float((pred == labels).float().mean()), **compare(stats, ref)}


def calibration_for(classifier: Any, path: Path, n: int) -> Any:
    """The calibrated classifier: fitted on ``n`` Fashion-MNIST test images (written to ``path``), or read back."""
    if path.exists():
        return load_calibration(path, classifier)
    from fewstep.data import load_data, to_model_range

    data = load_data("fashion-mnist:test", 28, 1)
    pick = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))[:n]
    _, rows = calibrate(classifier, to_model_range(data.images[pick]), data.labels[pick], CALIBRATION_SIGMAS,
                        progress=True)
    save_calibration(path, rows, {"data": "fashion-mnist:test", "n": n, "seed": 0})
    print("sigma_hat  T      acc    NLL -> calibrated   ECE -> calibrated")
    for r in rows:
        print(f"{r.sigma_hat:8.3g} {r.temperature:6.3f} {r.accuracy:6.3f} {r.nll:6.3f} -> {r.nll_calibrated:6.3f}"
              f"   {r.ece:6.3f} -> {r.ece_calibrated:6.3f}")
    return load_calibration(path, classifier)


def plot(results: list[dict[str, Any]], floor: float, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for method in dict.fromkeys(r["method"] for r in results):
        rows = [r for r in results if r["method"] == method]
        if method == "classifier-calibrated":  # shares the unguided point (scale 0) with "classifier"
            rows += [r for r in results if r["method"] == "classifier" and r["scale"] == 0]
        rows = sorted(rows, key=lambda r: r["scale"])
        xs = [r["scale"] for r in rows]
        ax1.plot(xs, [100 * r["accuracy"] for r in rows], "o-", label=method)
        ax2.plot(xs, [r["fid"] for r in rows], "o-", label=method)
    ax2.axhline(floor, color="gray", ls="--", lw=1, label="real images (floor)")
    ax1.set(xlabel="guidance scale", ylabel="class accuracy of samples (%)", title="accuracy (evaluation classifier)")
    ax2.set(xlabel="guidance scale", ylabel="FID (Fashion-MNIST features)", title="FID vs test set", yscale="log")
    ax1.grid(alpha=0.3)
    ax2.grid(alpha=0.3)
    ax2.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def table(results: list[dict[str, Any]], floor: float) -> str:
    lines = ["| method | scale | class accuracy | FID | precision | recall | s |", "|---|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r['method']} | {r['scale']:g} | {100 * r['accuracy']:.1f}% | {r['fid']:.2f} | "
                     f"{r.get('precision', float('nan')):.3f} | {r.get('recall', float('nan')):.3f} | {r['seconds']:.0f} |")
    lines.append(f"| real training images (floor) | - | - | {floor:.2f} | | | |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="bundled:fashion-cond")
    ap.add_argument("--classifier", default=None, help="noise-aware classifier (run or checkpoint folder)")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--solver", default="dpm++2m")
    ap.add_argument("--nfe", type=int, default=10)
    ap.add_argument("--cfg-scales", default="0,1,1.5,2,3,4", help="'' for none (also the next two)")
    ap.add_argument("--interval-scales", default="2,3,4")
    ap.add_argument("--interval", default="0.3,5", help="guidance interval of the cfg-interval rows (sigma/alpha)")
    ap.add_argument("--classifier-scales", default="0,1,2,4,8")
    ap.add_argument("--calibration-n", type=int, default=2000)
    ap.add_argument("--batch-size", type=int, default=250)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default="benchmarks/results/guidance.json")
    ap.add_argument("--plot", default="docs/guidance.png")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    den = fewstep.load_model(args.model)
    checkpoint = str(den.config.get("step", "?")) if den.config else "?"
    saved = json.loads(out.read_text()) if out.exists() else {}
    setting = {"model": args.model, "step": checkpoint, "n": args.n, "solver": args.solver, "nfe": args.nfe}
    results = saved.get("results", []) if saved.get("setting") == setting else []
    done = {(r["method"], r["scale"]) for r in results}
    extractor = get_extractor("fashion")
    ref = reference_stats(None, extractor)
    floor = saved.get("floor") if saved.get("setting") == setting else None
    if floor is None:
        from fewstep.data import load_data, to_model_range

        train = load_data("fashion-mnist:train", 28, 1)
        pick = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:args.n]
        floor = compare(images_stats(extractor, to_model_range(train.images[pick]), progress=False), ref)["fid"]
    print(f"FID of {args.n} real training images (floor): {floor:.2f}")

    plan: list[tuple[str, float, dict[str, Any]]] = []
    if num_classes(den):  # classifier-free guidance needs a class-conditional model
        plan += [("cfg", w, {"method": "cfg"}) for w in _floats(args.cfg_scales)]
        plan += [(f"cfg-interval ({args.interval}]", w, {"method": "cfg", "interval": args.interval})
                 for w in _floats(args.interval_scales)]
    classifier = calibrated = None
    if args.classifier:
        classifier = load_classifier(args.classifier)
        calibrated = calibration_for(classifier, out.with_name(out.stem + "-calibration.json"), args.calibration_n)
        plan += [("classifier", s, {"method": "classifier", "classifier": classifier})
                 for s in _floats(args.classifier_scales)]
        # scale 0 is the unguided (unconditional) model whatever the classifier: computed once, under "classifier"
        plan += [("classifier-calibrated", s, {"method": "classifier", "classifier": calibrated})
                 for s in _floats(args.classifier_scales) if s != 0]
    classes = num_classes(den) or (classifier.num_classes if classifier is not None else 0)
    for label, scale, spec in plan:
        if (label, scale) in done:
            continue
        guided = guide(den, spec["method"], scale, interval=spec.get("interval"), classifier=spec.get("classifier"))
        t0 = time.perf_counter()
        images, labels = draw(guided, args.n, args.solver, args.nfe, args.batch_size, classes)
        row = {"method": label, "scale": scale, **score(images, labels, extractor, ref),
               "seconds": time.perf_counter() - t0}
        print(f"{label:28s} scale {scale:4g}: accuracy {100 * row['accuracy']:5.1f}%  FID {row['fid']:7.2f}  "
              f"({row['seconds']:.0f} s)", flush=True)
        results.append(row)
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out, json.dumps({"setting": setting, "floor": floor, "results": results}, indent=2))
    title = (f"{args.model} (step {checkpoint}), {args.solver} {args.nfe} NFE, n={args.n}, "
             f"class = seed mod {classes}")
    md = f"{title}\n\n" + table(results, floor)
    atomic_write_text(out.with_suffix(".md"), md)
    plot(results, floor, Path(args.plot), title)
    print(md)


if __name__ == "__main__":
    main()
