"""Choose the plans shipped with ``bundled:fashion-v1`` (``grid="tuned"`` / ``--plan tuned``) on seeds no choice used.

Candidates: the plans ``fewstep tune`` kept (``benchmarks/results/tune_fashion/plans.json``: each won on error
against the best standard solver on validation seeds 20000..20127, interval below 1) and the entries shipped
before (teleported grids at 8 and 10 NFE, tuned on seeds 0..127).  A candidate ships only if it also does not
lose FID: its FID (n samples from seeds 50000.., which neither tuning, validation nor the hold-out check used)
must not exceed the FID of the same solver on the model's default grid from t_max at the same NFE.

    python benchmarks/ship_plans_fashion.py fid  [--n 1000]   # FID of every candidate and its default-grid twin
    python benchmarks/ship_plans_fashion.py ship             # write src/fewstep/assets/fashion-v1/grids.json

Another model (its own ``fewstep tune`` output; no runner-up or earlier file then):

    python benchmarks/ship_plans_fashion.py fid --model bundled:fashion --plans runs/tune/plans.json \
        --results benchmarks/results/ship_plans_fashion_v2
    python benchmarks/ship_plans_fashion.py ship --model bundled:fashion --plans runs/tune/plans.json \
        --results benchmarks/results/ship_plans_fashion_v2 --dest src/fewstep/assets/fashion/grids.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

ROOT = Path(__file__).parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "ship_plans_fashion"
TUNED = ROOT / "benchmarks" / "results" / "tune_fashion" / "plans.json"
PREVIOUS = RESULTS / "previous_grids.json"  # the file shipped before plans were validated (kept for the record)
SHIPPED = ROOT / "src" / "fewstep" / "assets" / "fashion-v1" / "grids.json"
FID_SEED = 50_000
MODEL = "bundled:fashion-v1"


RUNNER_UP = RESULTS / "runner_up.json"  # tune's next-best kept candidates, where its plan loses FID


def runner_up() -> None:
    """Write tune's second-best kept candidate of dc_solver at 5 NFE (without TimeTuner; its plan with TimeTuner
    loses FID) as a plan file, from tune's report."""
    from fewstep.grids.files import GridEntry, write_grid_file
    from fewstep.loading import load_model

    report = json.loads((TUNED.parent / "plans.report.json").read_text())
    step = next(s for s in report["steps"] if (s["solver"], s["nfe"]) == ("dc_solver", 5))
    c = next(c for c in step["candidates"] if c["name"] == "teleport + searched grid + DC ratios")
    v = c["validation"]
    e = GridEntry(c["solver"], 5, step["steps"], c["times"], "tune", c.get("tuning_score"), c["net_times"],
                  {"candidate": c["name"], "validation": v}, c["options"], c["teleport"])
    write_grid_file(RUNNER_UP, load_model("bundled:fashion-v1").process, [e], {"from": str(TUNED.parent)})


def candidates() -> list[tuple[str, object]]:
    """``(source label, GridEntry)``: tune's plans, then the previous file's entries at NFEs tune did not cover."""
    from fewstep.grids.files import read_grid_file

    tuned = [("tune", e) for e in read_grid_file(TUNED).entries]
    if MODEL != "bundled:fashion-v1":  # the runner-up and the earlier file belong to v1's history
        return tuned
    if not RUNNER_UP.exists():
        runner_up()
    tuned += [("runner-up", e) for e in read_grid_file(RUNNER_UP).entries]
    covered = {(e.solver, e.nfe) for _, e in tuned}
    previous = [("previous", e) for e in read_grid_file(PREVIOUS).entries if (e.solver, e.nfe) not in covered]
    return tuned + previous


def _twin(solver: str) -> str:
    """The untuned twin: DC-Solver without tuned ratios is UniPC's loop with no compensation, i.e. UniPC."""
    return "unipc" if solver == "dc_solver" else solver


def _path(source: str) -> Path:
    return {"tune": TUNED, "runner-up": RUNNER_UP}.get(source, PREVIOUS)


def fid(args: argparse.Namespace) -> None:
    from fewstep.metrics.evaluate import evaluate
    from fewstep.metrics.extractors import get_extractor
    from fewstep.metrics.models import load_denoiser, reference_stats
    from fewstep.metrics.sampling import solver_sample_fn

    den = load_denoiser(MODEL, "cpu")
    shape = tuple(den.sample_shape)
    ext = get_extractor("fashion")
    ref = reference_stats(None, ext)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "fid.json"
    done = json.loads(out.read_text()) if out.exists() else {}
    jobs = []
    for source, e in candidates():
        jobs.append((f"{e.solver}|{e.nfe}|{source}|{args.n}", e.solver, e.nfe, str(_path(source))))
        twin = _twin(e.solver)
        jobs.append((f"{twin}|{e.nfe}|default|{args.n}", twin, e.nfe, None))
    for key, solver, nfe, grid in dict.fromkeys(jobs):
        if key in done:
            continue
        fn = solver_sample_fn(den, shape, solver, nfe, grid, "cpu")
        r = evaluate(fn, args.n, ext, ref, seed=FID_SEED, progress=not args.no_progress, desc=key)
        done[key] = {k: r[k] for k in ("fid", "kid", "precision", "recall")} | {"plan": fn.plan.describe()}
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(done, indent=1))
        tmp.replace(out)
        print(f"{key}: FID {r['fid']:.3f}", flush=True)
    table(done, args.n)


def table(done: dict, n: int) -> list[tuple[str, object, float, float]]:
    rows = []
    print(f"\nFID n={n}, seeds {FID_SEED}..{FID_SEED + n - 1} (fashion extractor)")
    print("| solver | NFE | plan from | start | FID plan | FID default grid | ships |\n|---|---:|---|---:|---:|---:|---|")
    for source, e in candidates():
        a, b = done.get(f"{e.solver}|{e.nfe}|{source}|{n}"), done.get(f"{_twin(e.solver)}|{e.nfe}|default|{n}")
        if a is None or b is None:
            continue
        ships = a["fid"] <= b["fid"]
        start = "t_max" if e.teleport is None else f"{e.teleport:.0f}"
        print(f"| {e.solver} | {e.nfe} | {source} | {start} | {a['fid']:.2f} | {b['fid']:.2f} | "
              f"{'yes' if ships else 'no: loses FID'} |")
        rows.append((source, e, a["fid"], b["fid"]))
    return rows


def ship(args: argparse.Namespace) -> None:
    from fewstep.grids.files import write_grid_file
    from fewstep.loading import load_model

    done = json.loads((RESULTS / "fid.json").read_text())
    entries = []
    for source, e, fid_plan, fid_default in table(done, args.n):  # the best-error candidate first per solver, NFE
        if fid_plan > fid_default or any((x.solver, x.nfe) == (e.solver, e.nfe) for x in entries):
            continue
        e.provenance = {**e.provenance, "fid": round(fid_plan, 3), "fid_default_grid": round(fid_default, 3),
                        "fid_n": args.n, "fid_seeds": f"{FID_SEED}..{FID_SEED + args.n - 1}", "from": source}
        entries.append(e)
    den = load_model(MODEL)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout
    write_grid_file(SHIPPED, den.process, entries, {"model": MODEL,
                                                     "made_by": "benchmarks/ship_plans_fashion.py ship",
                                                     "at_commit": commit.strip()})
    print(f"wrote {SHIPPED}: {', '.join(f'{e.solver} nfe={e.nfe}' for e in entries)}")


def main() -> None:
    global MODEL, TUNED, RESULTS, SHIPPED
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("mode", choices=["fid", "ship"])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--model", default=MODEL)
    ap.add_argument("--plans", type=Path, default=TUNED, help="fewstep tune's plans.json")
    ap.add_argument("--results", type=Path, default=RESULTS, help="folder of fid.json")
    ap.add_argument("--dest", type=Path, default=SHIPPED, help="the grids.json written by ship")
    args = ap.parse_args()
    MODEL, TUNED, RESULTS, SHIPPED = args.model, args.plans, args.results, args.dest
    {"fid": fid, "ship": ship}[args.mode](args)


if __name__ == "__main__":
    main()
