"""Does a few-step generator copy the teacher endpoints it was trained on?

A generator fitted to a finite set of (noise, endpoint) pairs can score a good FID by reproducing those endpoints
for new noise (the endpoints are teacher samples, themselves near the data distribution).  This draws ``--n``
samples from seeds no pair used and, for each, the pixel distance to its nearest endpoint among the pairs the model
trained on (``--trained``: the first K pairs) and among as many pairs it never saw (the next K of the same folder,
the same teacher and sampler): a model that generalises is as close to either set (about half its nearest
neighbours in each), a copying model much closer to the trained set.  It also prints how far the model lands from
the teacher's own endpoint of the same noise (RMSE), on trained pairs and on unseen ones: the gap between the two
is how much of the fitted map is specific to the training noise.

    python benchmarks/pair_copying.py --model M --pairs runs/reflow2/pairs --trained 10000 --grid 999,600,0
"""

from __future__ import annotations

import argparse

import torch


def nearest(x: torch.Tensor, refs: torch.Tensor, chunk: int = 2000) -> torch.Tensor:
    """Euclidean distance of each row of ``x`` to its nearest row of ``refs`` (both flattened)."""
    x = x.flatten(1).double()
    best = torch.full((len(x),), float("inf"), dtype=torch.float64)
    for i in range(0, len(refs), chunk):
        r = refs[i:i + chunk].flatten(1).double()
        best = torch.minimum(best, torch.cdist(x, r).min(dim=1).values)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", action="append", required=True, help="repeatable")
    ap.add_argument("--pairs", required=True)
    ap.add_argument("--trained", type=int, required=True, help="the first K pairs were trained on; the next K were not")
    ap.add_argument("--solver", default="euler")
    ap.add_argument("--nfe", type=int, default=2)
    ap.add_argument("--grid", default=None, help="explicit times such as 999,600,0 (default: the model's)")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=100000)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    import fewstep
    from fewstep.commands._plan import parse_times
    from fewstep.reflow import load_pairs

    noise, ends, _ = load_pairs(args.pairs, 2 * args.trained)
    if len(ends) < 2 * args.trained:
        raise SystemExit(f"{args.pairs} holds {len(ends)} pairs; need {2 * args.trained} (trained + as many unseen)")
    trained, unseen = ends[:args.trained], ends[args.trained:]
    grid = parse_times(args.grid) if args.grid else None
    print(f"n = {args.n} samples (seeds {args.seed}..), nearest of {args.trained} trained vs {args.trained} unseen "
          f"endpoints (pixel L2, images in [-1, 1])")
    print("| model | median to trained | median to unseen | ratio | nearest is a trained endpoint | RMSE to own "
          "endpoint, trained pairs | unseen pairs |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name in args.model:
        den = fewstep.load_model(name)
        x = fewstep.generate(den, den.sample_shape, range(args.seed, args.seed + args.n), args.solver, args.nfe, grid)
        d_tr, d_un = nearest(x, trained), nearest(x, unseen)
        frac = float((d_tr < d_un).double().mean())
        plan = fewstep.make_plan(den, args.solver, args.nfe, grid)
        rmse = []
        for lo in (0, args.trained):
            z, x1 = noise[lo:lo + args.n], ends[lo:lo + args.n]
            out = torch.cat([fewstep.sample(den, den.process.prior_std * z[i:i + 250], plan)
                             for i in range(0, len(z), 250)])
            rmse.append(float((out - x1).square().mean().sqrt()))
        print(f"| {name} | {float(d_tr.median()):.3f} | {float(d_un.median()):.3f} | "
              f"{float(d_tr.median() / d_un.median()):.3f} | {100 * frac:.1f}% | {rmse[0]:.3f} | {rmse[1]:.3f} |")


if __name__ == "__main__":
    main()
