"""Dataset-native FID of a Fashion-MNIST model for every fewstep solver, next to diffusers' schedulers.

    PYTHONPATH=src python benchmarks/fashion_fid.py --n 10000 --nfe 5,10,20 --compile --out fashion_fid

A rerun with the same ``--out`` resumes: entries already in ``results.json`` (same sampler, NFE,
grid, n and model) are kept, so the table can be filled over several sessions; the reported wall
time is the sum of every entry's sampling and feature time plus this run's setup.

For each NFE: ``n`` samples from seeds ``0 .. n-1`` per sampler (the same initial noise for
fewstep and diffusers), FID / KID / precision / recall against the shipped Fashion-MNIST
test-set statistics of the shipped classifier, and the wall time of the whole evaluation.
diffusers' DDIM, DPM-Solver++(2M) and UniPC drive the same network through a standard
``set_timesteps`` / ``step`` loop with ``timestep_spacing="trailing"``, no clipping and the last
step onto sigma = 0 (each spends one network evaluation per step; only possible for a
discrete-time VP model).  ``--standin`` swaps in a
random tiny network for a smoke test.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import fewstep
from fewstep import solvers
from fewstep._io import atomic_write_text
from fewstep.metrics.distributed import default_batch_size, default_device
from fewstep.metrics.evaluate import DivergedError, compare, sample_stats
from fewstep.metrics.extractors import get_extractor
from fewstep.metrics.models import load_denoiser, reference_stats, sample_shape
from fewstep.processes import VPDiscrete

# Matched to fewstep's defaults: no clipping or thresholding, last step onto sigma = 0.
DIFFUSERS = {"diffusers DDIM": ("DDIMScheduler", {"clip_sample": False, "set_alpha_to_one": True}),
             "diffusers DPM-Solver++(2M)": ("DPMSolverMultistepScheduler",
                                            {"algorithm_type": "dpmsolver++", "solver_order": 2,
                                             "final_sigmas_type": "zero", "lower_order_final": True}),
             "diffusers UniPC": ("UniPCMultistepScheduler", {"solver_order": 2, "final_sigmas_type": "zero"})}


class StandIn(torch.nn.Module):
    """A random 3x3 convolution as eps-network: for smoke tests only (its FIDs mean nothing)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(1, 1, 3, padding=1)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return 0.5 * self.conv(x) + 0.5 * x


def diffusers_sampler(denoiser, shape, nfe: int, scheduler_name: str, options: dict, device):
    """``sampler(seeds) -> images`` running a diffusers scheduler on ``denoiser``'s eps predictions."""
    import diffusers

    process = denoiser.process
    if not isinstance(process, VPDiscrete):
        raise ValueError(f"diffusers' schedulers need a discrete-time VP model, this one is {type(process).__name__}")
    scheduler = getattr(diffusers, scheduler_name)(num_train_timesteps=process.num_train_timesteps,
                                                   trained_betas=process.betas.float().numpy(),
                                                   prediction_type="epsilon", timestep_spacing="trailing", **options)

    def sampler(seeds):
        gens = fewstep.generators(seeds)
        x = fewstep.prior_noise(process, shape, gens, device=device)  # the same x_T as fewstep.generate
        scheduler.set_timesteps(nfe)
        x = x * scheduler.init_noise_sigma
        for t in scheduler.timesteps:
            eps = denoiser.eps(scheduler.scale_model_input(x, t), float(t))
            x = scheduler.step(eps, t, x).prev_sample
        return x

    return sampler


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="bundled:fashion")
    ap.add_argument("--standin", action="store_true", help="use a random tiny network (smoke test)")
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--nfe", default="5,10,20")
    ap.add_argument("--solvers", default="all", help="comma-separated fewstep solvers in the order to run them; "
                                                      "'diffusers' places diffusers' three schedulers, 'limit' a "
                                                      "near-exact ODE solve (dpm++2m at --limit-nfe)")
    ap.add_argument("--grid", default=None, help="time grid of fewstep's solvers (default: the process's)")
    ap.add_argument("--limit-nfe", type=int, default=100,
                    help="NFE of the near-exact ODE solve that the 'limit' entry of --solvers adds (default 100)")
    ap.add_argument("--no-diffusers", action="store_true")
    ap.add_argument("--no-floor", action="store_true", help="skip scoring real training images (the FID floor)")
    ap.add_argument("--batch-size", type=int, default=None, help="default: 64 on a CPU, 500 on a GPU")
    ap.add_argument("--compile", action="store_true", help="run the network through torch.compile")
    ap.add_argument("--report-only", action="store_true", help="print the table of the saved entries, sample nothing")
    ap.add_argument("--device", default=None)
    ap.add_argument("--out", default="benchmarks/results/fashion_fid",
                    help="folder for results.json and results.md (the shipped one holds the measured table)")
    args = ap.parse_args()

    t_start = time.perf_counter()
    device = torch.device(args.device) if args.device else default_device()
    nfes = [int(v) for v in args.nfe.split(",")]
    batch_size = args.batch_size or default_batch_size(device)
    out = Path(args.out)
    results_path = out / "results.json"
    extractor = get_extractor("fashion", device=device)
    ref = reference_stats(None, extractor)
    if args.standin:
        denoiser = fewstep.Denoiser(StandIn().to(device), VPDiscrete.linear(), "eps")
        shape = (1, 28, 28)
    else:
        denoiser = load_denoiser(args.model, device)
        shape = sample_shape(denoiser, args.model)
    args.grid = args.grid or denoiser.process.default_grid
    same = {"model": "standin" if args.standin else args.model, "n": args.n, "grid": args.grid}
    saved_rows: list[dict] = []  # every entry ever saved here, whatever its model, n or grid
    saved: dict = {}
    if results_path.is_file():
        saved = json.loads(results_path.read_text())
        saved_rows = saved["rows"]
    done = {(r["sampler"], r["nfe"]): r for r in saved_rows if all(r.get(k) == v for k, v in same.items())}
    if done:
        print(f"resuming: {len(done)} entries already in {results_path}")
    rows: list[dict] = []

    def save(wall: float) -> None:
        """Write this run's rows and keep every saved entry this run did not redo (never lose work)."""
        out.mkdir(parents=True, exist_ok=True)
        mine = {(r["sampler"], r["nfe"]) for r in rows}
        kept = [r for r in saved_rows if not (all(r.get(k) == v for k, v in same.items())
                                              and (r["sampler"], r["nfe"]) in mine)]
        atomic_write_text(results_path, json.dumps({"args": vars(args), "setup_seconds": wall,
                                                    "rows": [{**same, **r} for r in rows] + kept}, indent=2) + "\n")
    if args.compile:
        fewstep.compile_denoiser(denoiser)
    names = solvers.available() + ["diffusers"] if args.solvers == "all" else args.solvers.split(",")
    if "diffusers" not in names and not args.no_diffusers:
        names.append("diffusers")
    samplers = []  # in the order asked for; "diffusers" stands for its three schedulers
    for name in names:
        if name == "limit":
            samplers.append((f"ODE limit: dpm++2m, {args.limit_nfe} NFE", "limit"))
        elif name != "diffusers":
            samplers.append((name, None))
        elif not args.no_diffusers:
            samplers += list(DIFFUSERS.items())
    if args.report_only:  # the table of what is saved, in the order asked for, without sampling
        order = {label: i for i, (label, _) in enumerate(samplers)}
        rows = sorted((r for r in done.values() if r["sampler"] in order or "floor" in r["sampler"]),
                      key=lambda r: (order.get(r["sampler"], -1), r["nfe"]))
        samplers = []
        args.no_floor = True
        t_start = time.perf_counter() - saved.get("setup_seconds", 0.0)
        run_args = saved.get("args", {})
        args.compile, batch_size = run_args.get("compile", False), run_args.get("batch_size") or batch_size
        device = ", ".join(sorted({r["device"] for r in rows if "device" in r})) or run_args.get("device") or "cpu"
    if not args.no_floor:  # the data floor: real training images scored exactly like samples
        from fewstep.metrics.data import fashion_mnist
        from fewstep.metrics.evaluate import images_stats

        train = fashion_mnist("train")[0]
        pick = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:args.n]
        m = compare(images_stats(extractor.to(device), train[pick], 250, shuffle_seed=None), ref)
        for nfe in nfes:
            rows.append({"sampler": "Fashion-MNIST train images (floor)", "nfe": nfe, **m, "sample_s": 0.0})
        print(f"data floor ({args.n} training images): FID {m['fid']:.3f}  KID {m['kid']:.4f}  "
              f"P {m['precision']:.3f} R {m['recall']:.3f}", flush=True)
    setup_seconds = time.perf_counter() - t_start
    for label, dspec in samplers:
        if dspec == "limit":  # one converged solve, shown in every NFE column
            if all((label, nfe) in done for nfe in nfes):
                rows.extend(done[(label, nfe)] for nfe in nfes)
                continue
            run = sample_stats(denoiser, shape, args.n, extractor, "dpm++2m", args.limit_nfe, args.grid,
                               batch_size=batch_size, device=device)
            m = compare(run.stats, ref)
            for i, nfe in enumerate(nfes):
                rows.append({"sampler": label, "nfe": nfe, **m, "sample_s": run.sample_seconds if i == 0 else 0.0,
                             "feature_s": run.feature_seconds if i == 0 else 0.0})
            save(setup_seconds)
            print(f"{label:>28s} FID {m['fid']:8.3f}  KID {m['kid']:.4f}  P {m['precision']:.3f} "
                  f"R {m['recall']:.3f}  ({run.sample_seconds:.1f}s sampling)", flush=True)
            continue
        for nfe in nfes:
            if dspec is None and nfe < solvers.get(label).min_nfe:
                continue
            if (label, nfe) in done:
                rows.append(done[(label, nfe)])
                continue
            sampler = diffusers_sampler(denoiser, shape, nfe, *dspec, device) if dspec else None
            try:
                run = sample_stats(denoiser, shape, args.n, extractor, label, nfe, args.grid,
                                   batch_size=batch_size, device=device, sampler=sampler)
            except (DivergedError, RuntimeError) as err:  # diverged: inf; could not run (e.g. budget): nan
                print(f"warning: {label} nfe={nfe}: {err}")
                rows.append({"sampler": label, "nfe": nfe, "note": str(err),
                             "fid": float("inf") if isinstance(err, DivergedError) else float("nan")})
                continue
            m = compare(run.stats, ref)
            rows.append({"sampler": label, "nfe": nfe, **m, **run.extra, "sample_s": run.sample_seconds,
                         "feature_s": run.feature_seconds, "device": str(device)})
            save(setup_seconds)
            used = f" (used {run.extra['nfe_used']:.1f})" if "nfe_used" in run.extra and run.extra["nfe_used"] != nfe else ""
            print(f"{label:>28s} nfe={nfe:<3d}{used} FID {m['fid']:8.3f}  KID {m['kid']:.4f}  P {m['precision']:.3f} "
                  f"R {m['recall']:.3f}  ({run.sample_seconds:.1f}s sampling)", flush=True)
    wall = setup_seconds + sum(r.get("sample_s", 0.0) + r.get("feature_s", 0.0) for r in rows)
    table = ["| sampler | " + " | ".join(f"FID @ NFE {n}" for n in nfes) + " |", "|---" * (len(nfes) + 1) + "|"]
    for label in dict.fromkeys(r["sampler"] for r in rows):
        cells = {r["nfe"]: f"{r['fid']:.2f}" if r["fid"] == r["fid"] else "n/a" for r in rows if r["sampler"] == label}
        table.append(f"| {label} | " + " | ".join(cells.get(n, "-") for n in nfes) + " |")
    note = (f"\n{args.n} samples per entry against the Fashion-MNIST test set (10k), features of "
            f"{extractor.name} ({extractor.fingerprint()[:12]}); grid {args.grid}; device {device}"
            f"{' (torch.compile)' if args.compile else ''}, batch {batch_size}; total wall time "
            f"{wall / 60:.1f} min (sampling and features of every entry plus setup).\n")
    text = "\n".join(table) + "\n" + note
    print("\n" + text)
    if not args.report_only:
        save(setup_seconds)
    atomic_write_text(out / "results.md", text)


if __name__ == "__main__":
    main()
