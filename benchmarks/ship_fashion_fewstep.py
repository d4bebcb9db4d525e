"""Ship ``bundled:fashion-fewstep``: a few-step generator checkpoint (``fewstep reflow`` / ``fewstep distill``) as a
bundled model whose 2-NFE intermediate time is its default.

    python benchmarks/ship_fashion_fewstep.py --checkpoint runs/reflow/checkpoints/step-00000450 --mid 300 \\
        --provenance docs/training.md

Copies the EMA weights and config (``fewstep.checkpoint.export_ema``) into ``src/fewstep/assets/fashion-fewstep``,
sets ``"sampling": {"grid": "tuned"}`` in its config and writes ``grids.json`` with entries at 2 NFE through
``t_start, MID, t_min`` for the solvers in ``--solvers``: ``fewstep sample --model bundled:fashion-fewstep --nfe 2``
uses them without ``--plan`` (at 2 NFE with a clean end every listed solver is Euler's step twice).  The choice of
checkpoint and ``MID`` is made before this script, on validation seeds (docs/training.md).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEST = ROOT / "src" / "fewstep" / "assets" / "fashion-fewstep"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--mid", type=float, required=True, help="the 2-NFE intermediate time")
    ap.add_argument("--solvers", default="unipc,euler,ddim,dpm++2m")
    ap.add_argument("--note", default="", help="provenance text (command, steps, wall time, FID)")
    ap.add_argument("--dest", type=Path, default=DEST)
    ap.add_argument("--chosen-by", default="2-NFE FID on validation seeds 100000..100999 (n = 1000), docs/training.md",
                    help="how the checkpoint and MID were chosen (recorded in grids.json)")
    ap.add_argument("--meant-nfe", default="", help="NFEs the model is meant for, e.g. 1,2 (config sampling.nfe: "
                                                    "sampling it at any other NFE warns); default none declared")
    args = ap.parse_args()

    from fewstep._io import atomic_write_text
    from fewstep.checkpoint import export_ema
    from fewstep.grids.files import GridEntry, write_grid_file
    from fewstep.loading import load_model

    dest = export_ema(args.checkpoint, args.dest, {"checkpoint": str(args.checkpoint), "note": args.note})
    cfg = json.loads((dest / "config.json").read_text())
    cfg["sampling"] = {"grid": "tuned"}
    if args.meant_nfe:
        cfg["sampling"]["nfe"] = [int(k) for k in args.meant_nfe.split(",")]
    atomic_write_text(dest / "config.json", json.dumps(cfg, indent=2))
    process = load_model(str(dest)).process
    times = [float(process.t_start), args.mid, float(process.t_min)]
    entries = [GridEntry(s, 2, 2, times, "validation FID", None, None,
                         {"chosen_by": args.chosen_by})
               for s in args.solvers.split(",")]
    write_grid_file(dest / "grids.json", process, entries, {"model": "bundled:fashion-fewstep"})
    print(f"{dest}: {', '.join(args.solvers.split(','))} at 2 NFE through {times}")


if __name__ == "__main__":
    main()
