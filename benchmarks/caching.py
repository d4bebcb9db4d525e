"""Feature caching on the bundled Fashion-MNIST UNet: wall time, evaluations, FID, error to a near-exact solve.

    PYTHONPATH=src python benchmarks/caching.py --rounds 5 --threads 2 --out benchmarks/results/caching

Two parts, at batch size 64 on the same threads:

1. Network parts: the median time of one full UNet evaluation, of DeepCache's and encoder
   propagation's cached evaluations, and of the top-level blocks (``in``, ``down.0``, ``deep``,
   the last ``up`` group), from interleaved repeats.  ``down.0`` + last ``up`` over the full
   evaluation bounds DeepCache's speed-up on this UNet.
2. Sampling, in interleaved rounds: round r draws seeds ``64 r .. 64 r + 63`` with every
   configuration in turn and times each (a short warm-up on other seeds comes first).  Wall time per
   image is the median over rounds; the ratio to the plain solver is taken per round (A/B pairs
   under the same machine load) and its median reported.  The images of all rounds (``n = 64 x
   rounds``, the same seeds for every configuration) are scored by
   ``fewstep.metrics.evaluate.evaluate`` with the shipped Fashion-MNIST classifier (dataset-native
   FID); the first ``--rmse-n`` are compared with a ``--ref-nfe`` dpm++2m solve from the same noise.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

import fewstep
from fewstep.accel import apply_cache
from fewstep.context import StepContext
from fewstep.grids import make_schedule
from fewstep.loading import load_model
from fewstep.metrics.evaluate import evaluate
from fewstep.metrics.extractors import get_extractor
from fewstep.metrics.models import reference_stats

CONFIGS = [("dpm++2m", 10, None), ("dpm++2m", 10, "deepcache:2"), ("dpm++2m", 10, "deepcache:3"),
           ("dpm++2m", 10, "deepcache:5"), ("dpm++2m", 10, "encoder:2"), ("dpm++2m", 10, "taylorseer:interval=2,order=1"),
           ("dpm++2m", 10, "taylorseer:interval=3,order=2"), ("dpm++2m", 10, "taylorseer:interval=4,order=2"),
           ("unipc", 10, None), ("unipc", 10, "deepcache:3"),
           ("dpm++2m", 5, None), ("dpm++2m", 6, None), ("dpm++2m", 7, None)]
"""(solver, NFE, cache spec): the caches at 10 NFE, and plain solvers at fewer NFE (equal compute)."""


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def network_parts(den, batch: int, repeats: int) -> dict[str, float]:
    """Median ms of a full evaluation, the cached evaluations, and each top-level block (interleaved)."""
    net = next(iter(den.networks()))
    schedule = make_schedule(den.process, 10)
    x = torch.randn(batch, *den.sample_shape, generator=torch.Generator().manual_seed(0))
    t0, t1 = float(schedule.t[0]), float(schedule.t[1])
    block_times: dict[str, list[float]] = {}

    def timing(ctx, name, fn, *args):
        start = time.perf_counter()
        out = fn(*args)
        block_times.setdefault(name, []).append(time.perf_counter() - start)
        return out

    def cached_eval(spec):
        w, state = apply_cache(den, spec), {}
        w.predict(x, t0, ctx=StepContext(schedule, 0, 0, state))
        return lambda: w.predict(x, t1, ctx=StepContext(schedule, 1, 0, state))

    runs = {"full": lambda: den.predict(x, t1), "deepcache cached": cached_eval("deepcache:2"),
            "encoder cached": cached_eval("encoder:2"),
            "full (block timing)": lambda: den.predict(x, t1, ctx=StepContext(schedule, 1, 0, {}, timing))}
    samples: dict[str, list[float]] = {k: [] for k in runs}
    with torch.inference_mode():
        for r in range(repeats + 1):
            for name, fn in runs.items():
                start = time.perf_counter()
                fn()
                if r:  # round 0 warms up
                    samples[name].append(time.perf_counter() - start)
    last = f"up.{len(net.up) - 1}"
    out = {k: 1000 * statistics.median(v) for k, v in samples.items()}
    for name in ("in", "down.0", "deep", last):
        out[f"block {name}"] = 1000 * statistics.median(block_times[name][1:])
    out["(down.0 + last up) / full"] = (out["block down.0"] + out[f"block {last}"]) / out["full (block timing)"]
    out["(in + last up) / full"] = (out["block in"] + out[f"block {last}"]) / out["full (block timing)"]
    return out


def run_rounds(den, configs, rounds: int, batch: int) -> tuple[dict, dict, dict]:
    """Round r samples seeds ``r*batch ..`` with every configuration in turn (interleaved A/B), timing each;
    a short warm-up comes first.  Returns images, per-round seconds and counts."""
    images: dict = {c: [] for c in configs}
    seconds: dict = {c: [] for c in configs}
    counts: dict = {}
    for c in configs[:2]:  # warm-up (allocator, kernels) on seeds that are not scored
        fewstep.generate(apply_cache(den, c[2]), den.sample_shape, list(range(10**6, 10**6 + batch)), c[0], 3)
    for r in range(1, rounds + 1):
        seeds = list(range((r - 1) * batch, r * batch))
        for c in configs:
            solver, nfe, spec = c
            d = apply_cache(den, spec)
            start = time.perf_counter()
            x = fewstep.generate(d, den.sample_shape, seeds, solver, nfe)
            elapsed = time.perf_counter() - start
            counts[c] = d.counts() if spec else {"full_evals": nfe, "cached_evals": 0}
            seconds[c].append(elapsed)
            images[c].append(x)
        print(f"  round {r}/{rounds} done", flush=True)
    return {c: torch.cat(v) for c, v in images.items()}, seconds, counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=8, help="scored rounds: n = rounds x batch-size samples")
    ap.add_argument("--repeats", type=int, default=5, help="repeats of the network-part timings")
    ap.add_argument("--rmse-n", type=int, default=16, help="samples compared to the near-exact solve")
    ap.add_argument("--ref-nfe", type=int, default=50, help="NFE of the near-exact dpm++2m solve")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--out", default="benchmarks/results/caching")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    den = load_model("bundled:fashion-v1")
    report: dict = {"args": vars(args), "torch_threads": torch.get_num_threads()}

    print("1. network parts", flush=True)
    report["parts_ms"] = network_parts(den, args.batch_size, args.repeats)
    print(json.dumps(report["parts_ms"], indent=1), flush=True)

    print("2. sampling: interleaved rounds", flush=True)
    ref_seeds = list(range(args.rmse_n))
    reference = fewstep.generate(den, den.sample_shape, ref_seeds, "dpm++2m", args.ref_nfe)
    images, seconds, counts = run_rounds(den, CONFIGS, args.rounds, args.batch_size)
    n = args.rounds * args.batch_size
    extractor = get_extractor("fashion")
    ref = reference_stats(None, extractor)
    rows = []
    base = seconds[("dpm++2m", 10, None)]
    for c in CONFIGS:
        solver, nfe, spec = c
        plain = seconds.get((solver, nfe, None), base)
        res = evaluate(lambda s, c=c: images[c][torch.as_tensor(s)], n, extractor, ref, seed=0,
                       batch_size=args.batch_size, progress=False)
        rows.append({"solver": solver, "nfe": nfe, "cache": spec or "-", **counts[c],
                     "s_per_image": statistics.median(seconds[c]) / args.batch_size,
                     "ratio_to_plain": statistics.median(a / b for a, b in zip(seconds[c], plain)),
                     "ratio_to_dpm++2m_10": statistics.median(a / b for a, b in zip(seconds[c], base)),
                     "fid": res["fid"], "kid": res["kid"],
                     "rmse_to_ref": float((images[c][:args.rmse_n] - reference).pow(2).mean().sqrt())})
        print(json.dumps(rows[-1]), flush=True)
    report.update(n=n, rows=rows)
    (out / "results.json").write_text(json.dumps(report, indent=1) + "\n")
    lines = ["| solver | NFE | cache | full / cached evals | ms per image | ratio to plain | ratio to dpm++2m@10 "
             f"| FID | RMSE to {args.ref_nfe}-NFE |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['solver']} | {r['nfe']} | {r['cache']} | {r['full_evals']:.0f} / {r['cached_evals']:.0f} "
                     f"| {1000 * r['s_per_image']:.2f} | {r['ratio_to_plain']:.2f} | {r['ratio_to_dpm++2m_10']:.2f} "
                     f"| {r['fid']:.2f} | {r['rmse_to_ref']:.4f} |")
    table = "\n".join(lines)
    (out / "table.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
