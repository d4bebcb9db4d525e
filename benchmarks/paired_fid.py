"""Paired FID of two Fashion-MNIST models (or two samplers of one) on the same seeds, with an interval of the difference.

    # features of each arm (run the arms in parallel; each writes one .pt file, resumable per arm)
    PYTHONPATH=src python benchmarks/paired_fid.py features --model bundled:fashion-v1 --solver dpm++2m --nfe 100 \
        --n 2000 --out runs/paired/base-100.pt
    PYTHONPATH=src python benchmarks/paired_fid.py features --model runs/fashion2 --solver dpm++2m --nfe 100 \
        --n 2000 --out runs/paired/new-100.pt
    # FID of each and FID(a) - FID(b) with a paired bootstrap interval (and the distance between the two arms)
    PYTHONPATH=src python benchmarks/paired_fid.py compare runs/paired/new-100.pt runs/paired/base-100.pt

Both arms draw the initial noise of seed ``i`` for sample ``i`` (``fewstep.generate``'s per-sample seeds), so row
``i`` of the two feature files comes from the same noise; the bootstrap resamples seeds, keeping rows paired
(:func:`fewstep.metrics.frechet.paired_fd_difference`). Features: the dataset-native ``fashion`` extractor (the
one ``fewstep eval --extractor fashion`` uses) of the 8-bit quantised samples; reference: the shipped statistics of
the Fashion-MNIST test split. With n = 2000 this is the FID ``fewstep eval --n 2000`` prints (the same samples and statistics).

``--extractor ddae`` is a second opinion that no label ever trained: the diffusion features (DDAE, Xiang et al. 2023;
:mod:`fewstep.diffusion_features`) of ``bundled:fashion-v1`` at ``t = 50``, its decoder taps concatenated (320
features; the best setting of ``benchmarks/probe.py``), each image noised with its own seed ``10^7 + i``.  The
``fashion`` extractor is a classifier trained on Fashion-MNIST's labels; a model trained with a loss on another
label-trained network's features (the perceptual path metric) could fit what such features see rather than the
images, so a gain should show on this one too.  Its reference statistics (the 10,000 test images, seeds
``2 10^7 + j``) are computed once into ``--ddae-ref`` (default ``runs/paired/ddae-ref.pt``); the figure is a Frechet
distance in that space ("FD-DDAE"), not comparable to FID in size.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch


def features(args: argparse.Namespace) -> None:
    import fewstep
    from fewstep.commands._plan import parse_times
    from fewstep._io import atomic_write_bytes
    from fewstep.latent import to_images
    from fewstep.metrics.evaluate import quantize
    from fewstep.metrics.extractors import get_extractor
    from fewstep.plan import make_plan
    from fewstep.precision import set_precision

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    if out.exists():
        print(f"{out} exists; delete it to recompute")
        return
    den = fewstep.load_model(args.model)
    set_precision(den, args.precision)
    grid = parse_times(args.grid) if args.grid and "," in args.grid else args.grid
    plan = make_plan(den, args.solver, args.nfe, grid)
    extractor = get_extractor("fashion") if args.extractor == "fashion" else DDAEExtractor()
    shape = den.sample_shape
    seeds = list(range(args.seed, args.seed + args.n))
    feats, start = [], time.process_time()
    from tqdm import tqdm

    with torch.no_grad():
        for i in tqdm(range(0, len(seeds), args.batch), desc=f"{args.model} {args.solver}@{args.nfe}", unit="batch"):
            x = to_images(den, fewstep.generate(den, shape, seeds[i:i + args.batch], plan))  # a latent model: decoded
            feats.append(extractor(quantize(x.float()), seeds[i:i + args.batch]).double()
                         if args.extractor == "ddae" else extractor(quantize(x.float())).double())
    record = {"features": torch.cat(feats), "extractor": args.extractor, "model": args.model,
              "precision": args.precision, "solver": args.solver,
              "nfe": args.nfe,
              "grid": args.grid, "seed": args.seed, "n": args.n, "cpu_s": time.process_time() - start}
    import io

    buf = io.BytesIO()
    torch.save(record, buf)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, buf.getvalue())
    print(f"wrote {out} ({args.n} samples, {record['cpu_s'] / 60:.1f} CPU-min)")


DDAE_MODEL, DDAE_T, DDAE_TAPS = "bundled:fashion-v1", 50.0, ("up.0", "up.1", "up.3", "up.4", "up.6", "up.7")


class DDAEExtractor:
    """``(images in [-1, 1], seeds) -> (n, 320)``: the label-free diffusion features described in the docstring."""

    def __init__(self) -> None:
        import fewstep

        self.den = fewstep.load_model(DDAE_MODEL)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, seeds) -> torch.Tensor:
        from fewstep.diffusion_features import diffusion_features

        f = diffusion_features(self.den, images, DDAE_T, DDAE_TAPS, seeds=[10**7 + int(s) for s in seeds])
        return torch.cat([f[name].float() for name in DDAE_TAPS], dim=1)


def ddae_reference(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and covariance of the DDAE features of the 10,000 test images (cached in ``path``)."""
    if path.exists():
        ref = torch.load(path, weights_only=False)
        if (ref.get("model"), ref.get("t"), tuple(ref.get("taps", ()))) != (DDAE_MODEL, DDAE_T, DDAE_TAPS):
            raise SystemExit(f"{path} holds ddae statistics of other settings ({ref.get('model')}, t={ref.get('t')}, "
                             f"{ref.get('taps')}); delete it to recompute")
        return ref["mu"], ref["cov"]
    import io

    from fewstep._io import atomic_write_bytes
    from fewstep.data import load_fashion_mnist, to_model_range

    images = to_model_range(load_fashion_mnist(split="test").images)
    ext = DDAEExtractor()
    # test image j is noised with seed 10^7 + (10^7 + j) = 2 10^7 + j, away from every sample's 10^7 + seed
    feats = torch.cat([ext(images[i:i + 500], range(10**7 + i, 10**7 + i + len(images[i:i + 500])))
                       for i in range(0, len(images), 500)]).double()
    mu, cov = feats.mean(0), torch.cov(feats.T)
    buf = io.BytesIO()
    torch.save({"mu": mu, "cov": cov, "model": DDAE_MODEL, "t": DDAE_T, "taps": DDAE_TAPS}, buf)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buf.getvalue())
    return mu, cov


def compare(args: argparse.Namespace) -> None:
    from fewstep.metrics.extractors import get_extractor
    from fewstep.metrics.frechet import frechet_distance_to_moments, paired_fd_difference
    from fewstep.metrics.models import reference_stats

    a, b = (torch.load(p, weights_only=False) for p in (args.a, args.b))
    if (a["seed"], a["n"]) != (b["seed"], b["n"]):
        raise SystemExit(f"the arms are not paired: seeds {a['seed']}+{a['n']} against {b['seed']}+{b['n']}")
    kind = a.get("extractor", "fashion")
    if kind != b.get("extractor", "fashion"):
        raise SystemExit(f"the arms used different extractors: {kind} against {b.get('extractor', 'fashion')}")
    if kind == "ddae":
        mu, cov = ddae_reference(Path(args.ddae_ref))
    else:
        ref = reference_stats(None, get_extractor("fashion"))  # the statistics `fewstep eval` scores against
        mu, cov = torch.as_tensor(ref.mu), torch.as_tensor(ref.sigma)

    def fid(f: torch.Tensor) -> float:
        return frechet_distance_to_moments(f, mu, cov)

    diff, lo, hi = paired_fd_difference(a["features"], b["features"], mu, cov, resamples=args.boot)
    label = lambda r: f"{r['model']} {r['solver']}@{r['nfe']}"  # noqa: E731
    print(f"seeds {a['seed']}..{a['seed'] + a['n'] - 1}; Frechet distance to the Fashion-MNIST test split ({kind} "
          f"extractor{'' if kind == 'fashion' else ': FD-DDAE, not FID'}); "
          f"{args.boot} paired bootstrap resamples")
    m = "FID" if kind == "fashion" else "FD-DDAE"
    print(f"| a | b | {m} a | {m} b | a - b [95% interval] |\n|---|---|---:|---:|---:|\n"
          f"| {label(a)} | {label(b)} | {fid(a['features']):.2f} | {fid(b['features']):.2f} | "
          f"{diff:+.2f} [{lo:+.2f}, {hi:+.2f}] |")
    fb = b["features"].double()
    print(f"Frechet distance between the arms' own samples ({kind} features): "
          f"{frechet_distance_to_moments(a['features'], fb.mean(0), torch.cov(fb.T)):.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("features", help="sample one arm and save its features")
    f.add_argument("--model", required=True)
    f.add_argument("--solver", default="dpm++2m")
    f.add_argument("--nfe", type=int, default=10)
    f.add_argument("--grid", default=None, help="a grid name, plan file, or explicit times such as 999,600,0")
    f.add_argument("--n", type=int, default=2000)
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--batch", type=int, default=64)
    f.add_argument("--threads", type=int, default=1)
    f.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help="the network's (fewstep.precision)")
    f.add_argument("--extractor", choices=["fashion", "ddae"], default="fashion",
                   help="fashion: the FID extractor; ddae: bundled:fashion-v1's diffusion features (label-free)")
    f.add_argument("--out", required=True)
    c = sub.add_parser("compare", help="FID of two saved arms and their paired difference")
    c.add_argument("a")
    c.add_argument("b")
    c.add_argument("--boot", type=int, default=500)
    c.add_argument("--ddae-ref", default="runs/paired/ddae-ref.pt", help="cache of the ddae reference statistics")
    args = ap.parse_args()
    features(args) if args.cmd == "features" else compare(args)


if __name__ == "__main__":
    main()
