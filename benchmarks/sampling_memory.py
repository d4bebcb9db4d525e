"""Peak memory of sampling with and without an autograd graph.

`fewstep.sample` runs under `torch.inference_mode` by default; `grad=True` keeps autograd on (what
sampling did before, silently, whenever the caller forgot `torch.no_grad`).  Each mode runs in its
own process so the peak resident set sizes are not mixed:

    python benchmarks/sampling_memory.py --n 64 --nfe 10
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys


def measure(n: int, nfe: int, grad: bool) -> dict:
    import torch

    import fewstep

    torch.set_num_threads(2)
    den = fewstep.load_model("bundled:fashion-v1")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    x = fewstep.generate(den, den.sample_shape, range(n), "dpm++2m", nfe, grad=grad)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"grad": grad, "requires_grad": bool(x.requires_grad), "peak_mb": peak / 1024,
            "sampling_mb": (peak - before) / 1024}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--nfe", type=int, default=10)
    p.add_argument("--child", choices=["grad", "nograd"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(measure(args.n, args.nfe, args.child == "grad")))
        return
    print(f"bundled:fashion-v1, dpm++2m, {args.n} images at {args.nfe} NFE, one process per mode")
    print(f"{'mode':<28} {'requires_grad':>13} {'peak RSS MB':>12} {'added by sampling MB':>21}")
    for mode, label in [("nograd", "default (inference mode)"), ("grad", "grad=True (autograd graph)")]:
        out = subprocess.run([sys.executable, __file__, "--n", str(args.n), "--nfe", str(args.nfe), "--child", mode],
                             check=True, capture_output=True, text=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        print(f"{label:<28} {str(r['requires_grad']):>13} {r['peak_mb']:>12.0f} {r['sampling_mb']:>21.0f}")


if __name__ == "__main__":
    main()
