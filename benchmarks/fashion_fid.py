"""Dataset-native FID of a Fashion-MNIST model for every fewstep solver, next to diffusers' schedulers.

    PYTHONPATH=src python benchmarks/fashion_fid.py --n 10000 --nfe 5,10,20 --compile --out fashion_fid

A rerun with the same ``--out`` resumes: ``results.json`` holds every finished evaluation in
fewstep's one resume format (``fewstep.metrics.resume``, keyed by model, sampler description, n,
seed, extractor hash and reference hash, the same file ``fewstep bench model`` keeps), so the
table can be filled over several sessions; the reported wall time is the sum of every entry's
sampling and feature time plus the setup time.

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
from typing import Any, Callable

import torch

import fewstep
from fewstep import solvers
from fewstep._io import atomic_write_text
from fewstep.metrics.distributed import default_batch_size, default_device
from fewstep.metrics.evaluate import DivergedError, evaluate
from fewstep.metrics.extractors import get_extractor
from fewstep.metrics.models import load_denoiser, reference_id, reference_stats, sample_shape
from fewstep.metrics.resume import FORMAT, EvalStore, evaluation_key, finished
from fewstep.metrics.sampling import solver_sample_fn
from fewstep.processes import VPDiscrete

# Matched to fewstep's defaults: no clipping or thresholding, last step onto sigma = 0.
DIFFUSERS = {"diffusers DDIM": ("DDIMScheduler", {"clip_sample": False, "set_alpha_to_one": True}),
             "diffusers DPM-Solver++(2M)": ("DPMSolverMultistepScheduler",
                                            {"algorithm_type": "dpmsolver++", "solver_order": 2,
                                             "final_sigmas_type": "zero", "lower_order_final": True}),
             "diffusers UniPC": ("UniPCMultistepScheduler", {"solver_order": 2, "final_sigmas_type": "zero"})}
FLOOR = "Fashion-MNIST train images (floor)"
FLOOR_MODEL = "fashion-mnist:train (real images)"
FLOOR_SAMPLER = {"data": "fashion-mnist:train", "pick": "randperm(60000, seed 0)[seed]"}
LIMIT_SOLVER = "dpm++2m"


class StandIn(torch.nn.Module):
    """A random 3x3 convolution as eps-network: for smoke tests only (its FIDs mean nothing)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(1, 1, 3, padding=1)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return 0.5 * self.conv(x) + 0.5 * x


def diffusers_sampler(denoiser, shape, nfe: int, scheduler_name: str, options: dict, device):
    """A sample function ``sampler(seeds) -> images`` running a diffusers scheduler on ``denoiser``'s eps
    predictions."""
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


def diffusers_description(label: str, nfe: int) -> dict[str, Any]:
    """The sampler description (resume key) of one of diffusers' schedulers at ``nfe``."""
    name, options = DIFFUSERS[label]
    return {"diffusers": name, "nfe": nfe, "timestep_spacing": "trailing", **options}


def limit_label(nfe: int) -> str:
    return f"ODE limit: {LIMIT_SOLVER}, {nfe} NFE"


def floor_sample_fn(n: int) -> Callable[[list[int]], torch.Tensor]:
    """Real training images as a sample function: seed ``s`` is the ``s``-th of a seeded random order."""
    from fewstep.metrics.data import fashion_mnist

    train = fashion_mnist("train")[0]
    pick = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))
    return lambda seeds: train[pick[torch.as_tensor(seeds)]]


def convert_rows(saved: dict[str, Any], extractor_id: str, ref_id: str) -> dict[str, Any]:
    """This script's results.json before the shared resume format (``{"args", "setup_seconds", "rows"}``,
    one row per sampler and NFE column) as an :class:`EvalStore` file; every number is kept.

    The floor and the ODE limit appeared once per NFE column; they are one evaluation each (the
    first row holds their time).  Old files used seeds 0 .. n-1, the shipped extractor and reference.
    """
    entries: dict[str, dict[str, Any]] = {}
    for row in saved["rows"]:
        label, nfe, grid = row["sampler"], row["nfe"], row["grid"]
        result = {k: v for k, v in row.items() if k not in ("model", "sampler", "nfe", "grid")}
        model = row["model"]
        if label == FLOOR:
            model, sampler = FLOOR_MODEL, FLOOR_SAMPLER
        elif label.startswith("ODE limit: "):
            sampler = {"solver": LIMIT_SOLVER, "nfe": int(label.split(", ")[1].split()[0]), "grid": grid}
        elif label in DIFFUSERS:
            sampler = diffusers_description(label, nfe)
        else:
            sampler = {"solver": label, "nfe": nfe, "grid": grid}
        key = evaluation_key(model, sampler, row["n"], 0, extractor_id, ref_id)
        entries.setdefault(json.dumps(key, sort_keys=True), {"key": key, "result": {"label": label, **result}})
    return {"format": FORMAT, "meta": {"args": saved.get("args", {}), "setup_seconds": saved.get("setup_seconds", 0.0)},
            "entries": list(entries.values())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="bundled:fashion-v1")
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
    extractor_id, ref_id = f"{extractor.name}:{extractor.fingerprint()}", reference_id(ref)
    if results_path.is_file() and "rows" in json.loads(results_path.read_text()):  # the layout before EvalStore
        atomic_write_text(results_path, json.dumps(convert_rows(json.loads(results_path.read_text()), extractor_id,
                                                                ref_id), indent=1) + "\n")
        print(f"converted {results_path} to the shared resume format ({FORMAT})")
    store = EvalStore(results_path)
    model = "standin" if args.standin else args.model
    if args.standin:
        denoiser = fewstep.Denoiser(StandIn().to(device), VPDiscrete.linear(), "eps")
        shape = (1, 28, 28)
    else:
        denoiser = load_denoiser(args.model, device)
        shape = sample_shape(denoiser)
    args.grid = args.grid or denoiser.process.default_grid
    if args.compile:
        fewstep.compile_denoiser(denoiser)

    def key(sampler: dict[str, Any], model_name: str = model) -> dict[str, Any]:
        return evaluation_key(model_name, sampler, args.n, 0, extractor_id, ref_id)

    names = solvers.available() + ["diffusers"] if args.solvers == "all" else args.solvers.split(",")
    if "diffusers" not in names and not args.no_diffusers:
        names.append("diffusers")
    # (label, NFE column, model, sampler description, sample-function factory), in the order asked for
    plan: list[tuple[str, int, str, dict[str, Any], Callable[[], Any]]] = []
    if not args.no_floor and not args.report_only:
        make_floor = floor_sample_fn
        plan += [(FLOOR, nfe, FLOOR_MODEL, FLOOR_SAMPLER, lambda: make_floor(args.n)) for nfe in nfes]
    elif args.report_only:
        plan += [(FLOOR, nfe, FLOOR_MODEL, FLOOR_SAMPLER, lambda: None) for nfe in nfes]
    for name in names:
        if name == "limit":
            fn = solver_sample_fn(denoiser, shape, LIMIT_SOLVER, args.limit_nfe, args.grid, device)
            plan += [(limit_label(args.limit_nfe), nfe, model, fn.description, lambda fn=fn: fn) for nfe in nfes]
        elif name == "diffusers":
            if not args.no_diffusers:
                plan += [(label, nfe, model, diffusers_description(label, nfe),
                          lambda label=label, nfe=nfe: diffusers_sampler(denoiser, shape, nfe, *DIFFUSERS[label], device))
                         for label in DIFFUSERS for nfe in nfes]
        else:
            for nfe in nfes:
                if nfe >= solvers.get(name).min_nfe:
                    fn = solver_sample_fn(denoiser, shape, name, nfe, args.grid, device)
                    plan.append((name, nfe, model, fn.description, lambda fn=fn: fn))
    rows: list[dict[str, Any]] = []
    distinct: dict[str, dict[str, Any]] = {}  # every evaluation once, however many NFE columns show it
    for label, nfe, model_name, sampler, make in plan:
        saved = store.get(key(sampler, model_name))
        if saved is not None and (finished(saved) or args.report_only):
            rows.append({"sampler": label, "nfe": nfe, **saved})
            distinct[json.dumps(key(sampler, model_name), sort_keys=True)] = saved
            continue
        if args.report_only:
            continue
        fn = make()
        try:
            result = evaluate(fn, args.n, extractor, ref, batch_size=batch_size if label != FLOOR else 250,
                              desc=f"{label} nfe={sampler.get('nfe', nfe)}")
        except (DivergedError, RuntimeError) as err:  # diverged: inf; could not run (e.g. budget): nan
            print(f"warning: {label} nfe={nfe}: {err}")
            result = {"n": args.n, "seed": 0, "note": str(err),
                      "fid": float("inf") if isinstance(err, DivergedError) else float("nan")}
        if label == FLOOR:
            result.pop("nfe_used", None)
            result["sample_s"] = 0.0  # reading images, not sampling
        store.put(key(sampler, model_name), {"label": label, **result, "device": str(device)})
        rows.append({"sampler": label, "nfe": nfe, **store.get(key(sampler, model_name))})
        distinct[json.dumps(key(sampler, model_name), sort_keys=True)] = rows[-1]
        if "precision" in result:
            used = f" (used {result['nfe_used']:.1f})" if result.get("nfe_used", nfe) != sampler.get("nfe", nfe) else ""
            print(f"{label:>28s} nfe={nfe:<3d}{used} FID {result['fid']:8.3f}  KID {result['kid']:.4f}  "
                  f"P {result['precision']:.3f} R {result['recall']:.3f}  ({result['sample_s']:.1f}s sampling)",
                  flush=True)
    setup_seconds = store.meta.get("setup_seconds", 0.0) if args.report_only else time.perf_counter() - t_start
    if not args.report_only:
        store.meta = {"args": vars(args), "setup_seconds": setup_seconds}
        store.save()
    run_args = store.meta.get("args", {}) if args.report_only else vars(args)
    wall = setup_seconds + sum(r.get("sample_s", 0.0) + r.get("feature_s", 0.0) for r in distinct.values())
    table = ["| sampler | " + " | ".join(f"FID @ NFE {n}" for n in nfes) + " |", "|---" * (len(nfes) + 1) + "|"]
    for label in dict.fromkeys(r["sampler"] for r in rows):
        cells = {r["nfe"]: f"{r['fid']:.2f}" if r["fid"] == r["fid"] else "n/a" for r in rows if r["sampler"] == label}
        table.append(f"| {label} | " + " | ".join(cells.get(n, "-") for n in nfes) + " |")
    devices = ", ".join(sorted({r["device"] for r in rows if "device" in r})) or str(device)
    note = (f"\n{args.n} samples per entry against the Fashion-MNIST test set (10k), features of "
            f"{extractor.name} ({extractor.fingerprint()[:12]}); grid {args.grid}; device {devices}"
            f"{' (torch.compile)' if run_args.get('compile') else ''}, batch "
            f"{run_args.get('batch_size') or batch_size}; total wall time "
            f"{wall / 60:.1f} min (sampling and features of every entry plus setup).\n")
    text = "\n".join(table) + "\n" + note
    print("\n" + text)
    atomic_write_text(out / "results.md", text)


if __name__ == "__main__":
    main()
