"""``fewstep quantize``: int8 post-training quantization of a fewstep model, calibrated per sampling step."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("quantize", help="int8-quantize a model with per-step calibration (TFMQ-DM)", description=(
        "Post-training int8 quantization: weights per output channel, each layer's input with one static range "
        "per sampling step, calibrated on trajectories of --calib-solver at --calib-nfe from --calib-n seeds "
        "(the time-embedding path stays float). Writes a checkpoint folder that 'fewstep sample --model DIR' and "
        "fewstep.load_model read. Supports fewstep UNet and DiT checkpoints (not diffusers models). "
        "See docs/quantization.md."))
    p.add_argument("--model", required=True, help="a fewstep checkpoint folder, a run folder, or bundled:fashion")
    p.add_argument("--out", required=True, help="the folder to write (must not exist)")
    p.add_argument("--calib-solver", default="dpm++2m", help="solver of the calibration trajectories")
    p.add_argument("--calib-nfe", type=int, default=10, help="NFE of the calibration trajectories (sample at it)")
    p.add_argument("--calib-grid", default=None, help="time grid of the calibration trajectories (default: the "
                                                        "process's)")
    p.add_argument("--calib-n", type=int, default=64, help="number of calibration trajectories")
    p.add_argument("--calib-seed", type=int, default=1_000_000, help="first calibration seed (default far from the "
                                                                      "evaluation seeds 0..)")
    p.add_argument("--groups", type=int, default=None, help="timestep groups (default: one per calibrated step)")
    p.add_argument("--estimator", default="max", choices=["max", "mse", "percentile"],
                   help="activation range: the observed maximum (default), an MSE-optimal clip, or a percentile")
    p.add_argument("--percentile", type=float, default=99.99, help="percentile of --estimator percentile")
    p.add_argument("--activations", default="symmetric", choices=["symmetric", "asymmetric"],
                   help="activation grid: symmetric [-c, c], or asymmetric [lo, hi] with a zero point "
                        "(simulated kernels only)")
    p.add_argument("--keep-float", default="", help="comma-separated layers to keep float, e.g. conv_in,conv_out")
    p.add_argument("--bits", type=int, default=8, help="bits of weights and activations (2..8, int8 storage)")
    p.add_argument("--kernels", default="simulated", choices=["simulated", "int8"],
                   help="default execution: float kernels on quantized values, or torch._int_mm int8 matmuls")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=run)


def _check_source(spec: str) -> None:
    """Refuse a diffusers folder before loading it: only fewstep networks are quantized."""
    if spec.startswith("bundled:"):
        return
    from ..loading import _is_diffusers
    from ..quant.network import SUPPORTED

    folder = Path(spec)
    if folder.is_dir() and _is_diffusers(folder):
        raise ValueError(f"{spec} is a diffusers model; fewstep quantize supports {SUPPORTED}")


def run(args: argparse.Namespace) -> int:
    import torch

    from ..grids import GRIDS
    from ..loading import load_model
    from ..quant import CalibrationSettings, quantize_denoiser, save_quantized
    from ..quant.maths import qmax
    from ..solvers import get as get_solver

    # everything checkable without the model first: a mistake costs a second, not a calibration
    from ._destination import check_output

    out = Path(args.out)
    if out.exists():
        raise FileExistsError(f"--out {out} already exists; choose a new folder (quantized models are never overwritten)")
    check_output(out, "folder")
    qmax(args.bits)
    solver = get_solver(args.calib_solver)
    solver.steps_for(args.calib_nfe)
    if args.calib_grid is not None and args.calib_grid not in GRIDS:
        raise ValueError(f"--calib-grid {args.calib_grid}: unknown grid; valid grids: {', '.join(GRIDS)}")
    settings = CalibrationSettings(solver=solver.name, nfe=args.calib_nfe, grid=args.calib_grid, n=args.calib_n,
                                   seed=args.calib_seed, batch_size=args.batch_size, groups=args.groups,
                                   estimator=args.estimator, activations=args.activations,
                                   percentile=args.percentile)
    _check_source(args.model)
    if args.threads:
        torch.set_num_threads(args.threads)
    den = load_model(args.model)
    keep = [v for v in args.keep_float.split(",") if v]
    quantize_denoiser(den, settings, bits=args.bits, kernels=args.kernels, keep_float=keep,
                      progress=not args.no_progress)
    net = next(den.networks())
    print(f"quantized: {len(net.info['quantized_layers'])} int{args.bits} layers, {len(net.info['levels'])} "
          f"calibrated steps", flush=True)
    save_quantized(den, out, extra={"model": args.model})
    size = sum(f.stat().st_size for f in out.iterdir())
    print(f"wrote {out}: {size / 1e6:.2f} MB")
    return 0
