"""Sampling wall time per image: a one-step generator against its teacher's solver at several NFE.

    PYTHONPATH=src python benchmarks/sid_walltime.py --generator bundled:fashion-sid --teacher bundled:fashion-v1 \
        --nfe 5,10,20 --threads 1

Both are sampled with ``fewstep.generate`` (per-sample seeds, batch ``--batch``) after a warm-up;
the configurations are timed in turns (``--rounds`` rounds, the median kept), so that load from
other processes on a shared machine hits them alike.  Prints a markdown table and writes it to
``--out`` if given.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import fewstep
from fewstep.metrics.models import load_denoiser, sample_shape


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--generator", default="bundled:fashion-sid")
    ap.add_argument("--teacher", default="bundled:fashion-v1")
    ap.add_argument("--solver", default="dpm++2m")
    ap.add_argument("--nfe", default="5,10,20")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    gen, teacher = load_denoiser(args.generator, "cpu"), load_denoiser(args.teacher, "cpu")
    shape = sample_shape(teacher)
    seeds = list(range(args.batch))
    configs = [("one-step generator", gen, "ddim", 1)] + [
        (f"teacher {args.solver}", teacher, args.solver, int(n)) for n in args.nfe.split(",")]
    times: dict[int, list[float]] = {i: [] for i in range(len(configs))}
    for _, den, solver, nfe in configs:  # warm-up
        fewstep.generate(den, shape, seeds, solver, nfe)
    for _ in range(args.rounds):
        for i, (_, den, solver, nfe) in enumerate(configs):
            t0 = time.perf_counter()
            fewstep.generate(den, shape, seeds, solver, nfe)
            times[i].append(1000 * (time.perf_counter() - t0) / args.batch)
    one = statistics.median(times[0])
    lines = ["| sampler | NFE | ms per image (median) | vs one-step |", "|---|---|---|---|"]
    for i, (name, _, solver, nfe) in enumerate(configs):
        ms = statistics.median(times[i])
        lines.append(f"| {name} ({solver}) | {nfe} | {ms:.2f} | {ms / one:.1f}x |")
    text = "\n".join(lines) + (f"\n\nbatch {args.batch}, {args.threads} torch thread(s), CPU, median of "
                               f"{args.rounds} interleaved rounds\n")
    print(text)
    if args.out:
        from fewstep._io import atomic_write_text

        atomic_write_text(args.out, text)


if __name__ == "__main__":
    main()
