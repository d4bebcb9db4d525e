"""Denoising MCMC on bundled:fashion-v1: FID against total NFE beside the best ODE solvers (docs/dmcmc.md).

Every row: n images of seeds 0..n-1, dataset-native extractor, the shipped Fashion-MNIST test statistics.
DMCMC rows count every network evaluation (chain and ODE) per image; the noise-level estimator's calls are
reported apart.  Rows are appended to --out as JSON lines as they finish; a rerun skips rows already there.

    nice -n 10 python benchmarks/dmcmc_fashion.py --estimator EST --n 2000 --out results.jsonl
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import fewstep
from fewstep.dmcmc import DMCMCConfig, dmcmc_generate, load_estimator, restrict_levels
from fewstep.metrics.evaluate import evaluate
from fewstep.metrics.extractors import get_extractor
from fewstep.metrics.models import reference_stats
from fewstep.metrics.sampling import solver_sample_fn


class DMCMCSampleFn:
    def __init__(self, den, posterior, cfg: DMCMCConfig) -> None:
        self.den, self.post, self.cfg = den, posterior, cfg
        self.evals, self.images = 0, 0

    def __call__(self, seeds):
        stats: dict = {}
        x = dmcmc_generate(self.den, tuple(self.den.sample_shape), seeds, self.post, self.cfg, stats=stats)
        self.evals += stats["chain_evals"] + stats["ode_evals"]
        self.images += len(seeds)
        return x


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--estimator", required=True)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--out", required=True)
    ap.add_argument("--nfe", default="6,8,10")
    ap.add_argument("--solvers", default="dpm++2m,unipc,ipndm", help="NAME or NAME:TELEPORT_TIME, comma-separated")
    ap.add_argument("--dmcmc", default="20:20:1:0.1:999,20:20:1:0.1:500",
                    help="configs per_chain:burn_in:stride:step_scale:t_max, comma-separated")
    args = ap.parse_args()
    torch.set_num_threads(1)
    den = fewstep.load_model("bundled:fashion-v1")
    extractor = get_extractor("fashion")
    ref = reference_stats(None, extractor)
    out = Path(args.out)
    done = {json.loads(line)["key"] for line in out.read_text().splitlines()} if out.exists() else set()
    est = load_estimator(args.estimator)

    def record(key: str, fn, extra: dict, batch: int) -> None:
        if key in done:
            return
        t0 = time.time()
        r = evaluate(fn, args.n, extractor, ref, seed=0, batch_size=batch, progress=False)
        row = {"key": key, "fid": r["fid"], "precision": r.get("precision"), "recall": r.get("recall"),
               "seconds": time.time() - t0, **extra}
        if isinstance(fn, DMCMCSampleFn):
            row["evals_per_image"] = fn.evals / fn.images
            row["estimator_calls"] = fn.post.calls
        with out.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)

    for nfe in [int(v) for v in args.nfe.split(",")]:
        for solver in filter(None, args.solvers.split(",")):  # NAME or NAME:TELEPORT_TIME
            name, _, tele = solver.partition(":")
            kw = {"teleport": float(tele)} if tele else {}
            record(f"{solver}@{nfe}", solver_sample_fn(den, den.sample_shape, name, nfe, **kw), {"nfe": nfe}, 100)
        for spec in filter(None, args.dmcmc.split(",")):
            per_chain, burn_in, stride, step, t_max = spec.split(":")
            per_chain, burn_in, stride = int(per_chain), int(burn_in), int(stride)
            ode = nfe - stride - burn_in // per_chain
            cfg = DMCMCConfig("dpm++2m", ode, None, burn_in, stride, per_chain, float(step))
            post = restrict_levels(est, float(t_max))
            fn = DMCMCSampleFn(den, post, cfg)
            # batches of whole chains: exactly nfe_per_image evaluations per image
            record(f"dmcmc {spec}@{nfe}", fn, {"nfe": float(cfg.nfe_per_image()), **cfg.describe(),
                                                "t_max": float(t_max)}, 5 * per_chain)


if __name__ == "__main__":
    main()
