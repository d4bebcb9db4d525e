"""Per-step overhead of fewstep's solvers vs diffusers' ``scheduler.step`` with a free denoiser.

The "network" returns its input as the eps prediction, so the time is the solver's own work
(coefficients, tensor updates, bookkeeping).  Both sides run the same number of steps on the
same tensor, including their per-call setup (``set_timesteps`` / the schedule).

    python benchmarks/step_overhead.py [--shape 4,4,64,64] [--steps 50] [--repeats 20]
"""

from __future__ import annotations

import argparse
import time

import torch

import fewstep
from fewstep.processes import VPDiscrete

BETAS = dict(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear")


def _best_time(fn, repeats: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    import diffusers

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="4,4,64,64")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()
    torch.set_num_threads(1)
    shape = tuple(int(v) for v in args.shape.split(","))
    x = torch.randn(shape)
    process = VPDiscrete.linear()
    den = fewstep.Denoiser(lambda x, t: x, process, "eps")
    n = args.steps
    pairs = {
        "ddim": (lambda: diffusers.DDIMScheduler(**BETAS, timestep_spacing="trailing", clip_sample=False), n, n),
        "euler": (lambda: diffusers.EulerDiscreteScheduler(**BETAS, timestep_spacing="trailing"), n, n),
        "heun": (lambda: diffusers.HeunDiscreteScheduler(**BETAS, timestep_spacing="trailing"), n, 2 * n - 1),
        "dpm++2m": (lambda: diffusers.DPMSolverMultistepScheduler(**BETAS, timestep_spacing="trailing"), n, n),
    }
    print(f"free denoiser, x of shape {shape}, {n} steps, best of {args.repeats} (1 thread)")
    print(f"{'solver':<10}{'fewstep us/eval':>18}{'diffusers us/eval':>20}{'ratio':>8}")
    for name, (make, steps, nfe) in pairs.items():
        sched = make()

        def run_diffusers():
            sched.set_timesteps(steps)
            y = x * sched.init_noise_sigma
            for t in sched.timesteps:
                eps = sched.scale_model_input(y, t)
                y = sched.step(eps, t, y).prev_sample
            return y

        def run_fewstep():
            return fewstep.sample(den, x, name, nfe, "uniform")

        t_ours = _best_time(run_fewstep, args.repeats) / nfe * 1e6
        t_theirs = _best_time(run_diffusers, args.repeats) / nfe * 1e6
        print(f"{name:<10}{t_ours:>18.1f}{t_theirs:>20.1f}{t_ours / t_theirs:>8.2f}")


if __name__ == "__main__":
    main()
