"""Where sampling should start on a discrete (diffusers-style) schedule: the start rule, measured.

    PYTHONPATH=src python benchmarks/diffusers_start.py exact --n 2000
    PYTHONPATH=src python benchmarks/diffusers_start.py trained --n 2000 --train-steps 4000
    PYTHONPATH=src python benchmarks/diffusers_start.py folder --model DIR --n 500 --solvers dpm++2m --nfe 10,20 \
        --grids uniform,logsnr

fewstep starts at the process's ``t_start``: for an eps-prediction network the last training step whose half
log-SNR is at least -5.1 (:func:`fewstep.processes.well_conditioned_start`).  Each table scans the start over
the training steps where ``lambda`` crosses ``--floors`` (and ``t_max``) and prints the Frechet distance of ``--n``
samples to the data's moments (64-d, pixel space; the same seeds for every start), per solver and NFE on the default
(time-uniform) grid.  ``*`` marks the rule's start.

``exact``: the data Gaussian of sklearn's digits (8x8, in [-1, 1]) as an exact model whose network output is
perturbed by a fixed smooth error field of size ``--delta`` (``out + delta tanh(W x)``, W random with unit-norm rows),
the error a trained network makes, in its native output (eps or v), on the linear, scaled-linear, capped-cosine,
sigmoid, cosine T=500 and zero-terminal-SNR schedules.  ``trained``: small MLP denoisers trained on the digits
themselves (eps on capped cosine, eps on linear, eps on sigmoid, v on capped cosine), their own errors.
``folder``: a diffusers folder trained on the digits upscaled to its resolution (benchmarks/digits_diffusers.py),
FD in pixel space to the upscaled digits' moments.  Each trained model also prints its network error against the
training set's optimal denoiser at a few times (what decides how far below ``t_max`` it can be trusted).
"""

from __future__ import annotations

import argparse
import math
import os
import time

import torch

import fewstep
from fewstep.denoisers import DenoiserWrapper
from fewstep.metrics import frechet_distance_to_moments
from fewstep.parametrization import Prediction, parametrization
from fewstep.processes import VPDiscrete, well_conditioned_start


def digits() -> torch.Tensor:
    from sklearn.datasets import load_digits

    x = torch.tensor(load_digits().data, dtype=torch.float64)  # 1797 x 64, values 0..16
    return x / 8.0 - 1.0


SCHEDULES = {
    "linear": lambda: VPDiscrete.linear(),
    "scaled_linear": lambda: VPDiscrete.scaled_linear(),
    "cosine": lambda: VPDiscrete.cosine(),
    "sigmoid": lambda: VPDiscrete.sigmoid(),
    "cosine T=500": lambda: VPDiscrete.cosine(500),
    "scaled_linear zero-SNR": lambda: VPDiscrete.scaled_linear(zero_terminal_snr=True),
}


def starts(process: VPDiscrete, floors: list[float]) -> list[float]:
    steps = torch.arange(process.num_train_timesteps, dtype=torch.float64)
    lam = process.lam(steps)
    out = {process.t_max} if math.isfinite(float(lam[-1])) else set()
    for f in floors:
        ok = torch.nonzero(torch.isfinite(lam) & (lam >= f))
        if len(ok):
            out.add(float(ok.max()))
    return sorted(out, reverse=True)


class NativeError(DenoiserWrapper):
    """An exact denoiser whose native output (eps or v) is off by ``delta tanh(W x)``: a smooth, bounded error."""

    def __init__(self, inner, prediction: str, delta: float, dim: int, seed: int = 0):
        super().__init__(inner)
        g = torch.Generator().manual_seed(seed)
        w = torch.randn(dim, dim, generator=g, dtype=torch.float64)
        self.w = w / w.norm(dim=1, keepdim=True)
        self.prediction, self.delta = prediction, delta

    def predict(self, x, t, *, ctx=None, **cond):
        p = self.inner.predict(x, t, ctx=ctx, **cond)
        a, s = self.coefficients(x, t)
        err = self.delta * torch.tanh(x.double() @ self.w.T).to(x.dtype)
        if self.prediction == "eps":
            eps = p.eps + err
            return Prediction((x - s * eps) / a, eps)
        v = a * p.eps - s * p.x0 + err
        return Prediction(a * x - s * v, s * x + a * v)


def estimation_floor(mean: torch.Tensor, cov: torch.Tensor, n: int) -> float:
    """The FD of ``n`` exact draws from the data moments: what the estimate gives for a perfect sampler."""
    g = torch.Generator().manual_seed(123)
    z = torch.randn(n, len(mean), generator=g, dtype=torch.float64)
    return frechet_distance_to_moments(mean + z @ torch.linalg.cholesky(cov).T, mean, cov)


def table(title: str, den_for, process: VPDiscrete, prediction: str, data_mean, data_cov, args,
          dtype: torch.dtype = torch.float64, shape: tuple[int, ...] = (64,)) -> None:
    rule, _ = well_conditioned_start(process, prediction)
    ts = sorted(set(starts(process, [float(v) for v in args.floors.split(",")])) | {rule}, reverse=True)
    lams = [float(process.lam(t)) for t in ts]
    print(f"\n### {title} ({prediction}): rule t_start = {rule:g}\n", flush=True)
    print("| solver | grid | NFE | " + " | ".join(f"{'*' if t == rule else ''}t={t:g} (lam {lam:.2f})"
                                          for t, lam in zip(ts, lams)) + " |")
    print("|---|---|---:|" + "---:|" * len(ts))
    gens = fewstep.generators(range(args.n))
    x_T = fewstep.prior_noise(process, shape, gens, dtype=dtype)
    den = den_for(process)
    rows = [(s, g, int(n)) for s in args.solvers.split(",") for g in args.grids.split(",") for n in args.nfe.split(",")]
    for solver, grid, nfe in rows:
        cells = []
        for t in ts:
            try:
                x = fewstep.sample(den, x_T, solver, nfe, grid, grid_options={"t_max": t},
                                   generator=fewstep.generators(range(args.n)))
                fd = frechet_distance_to_moments(x.double().reshape(len(x), -1), data_mean, data_cov)
                cells.append(f"{fd:.3g}" if fd < 1e4 else f"{fd:.1e}")
            except FloatingPointError:
                cells.append("nan")
        best = min(range(len(ts)), key=lambda i: float(cells[i]) if cells[i] != "nan" else math.inf)
        cells[best] = f"**{cells[best]}**"
        print(f"| {solver} | {grid} | {nfe} | " + " | ".join(cells) + " |", flush=True)


def exact(args: argparse.Namespace) -> None:
    from fewstep.exact import GaussianMixture

    data = digits()
    mean, cov = data.mean(0), torch.cov(data.T) + 1e-4 * torch.eye(64, dtype=torch.float64)
    gm = GaussianMixture.from_covariances(mean[None], cov[None])
    print(f"exact digits Gaussian, native-output error delta = {args.delta}; cells: FD to the data moments "
          f"(n = {args.n}; exact draws give {estimation_floor(mean, cov, args.n):.3f}); bold: the best start of the row")
    for name, make in SCHEDULES.items():
        for prediction in ("eps", "v"):
            proc = make()
            if prediction == "eps" and proc.zero_terminal_snr:
                continue
            if prediction == "v" and name not in ("cosine", "scaled_linear zero-SNR"):
                continue
            table(name, lambda p: NativeError(gm.denoiser(p), prediction, args.delta, 64), proc, prediction,
                  mean, cov, args)


class MLP(torch.nn.Module):
    """A small time-conditioned MLP denoiser for 64-d data (the network sees the training step index)."""

    def __init__(self, dim: int = 64, width: int = 256, steps: int = 1000):
        super().__init__()
        self.steps = steps
        self.embed = torch.nn.Sequential(torch.nn.Linear(32, width), torch.nn.SiLU(), torch.nn.Linear(width, width))
        self.inp = torch.nn.Linear(dim, width)
        self.body = torch.nn.ModuleList(torch.nn.Linear(width, width) for _ in range(3))
        self.out = torch.nn.Linear(width, dim)

    def forward(self, x, t):
        t = t.reshape(-1).to(x.dtype) / self.steps
        freqs = torch.exp(torch.linspace(0, math.log(1000), 16, dtype=x.dtype, device=x.device))
        e = self.embed(torch.cat([torch.sin(t[:, None] * freqs), torch.cos(t[:, None] * freqs)], 1))
        h = self.inp(x) + e
        for layer in self.body:
            h = h + layer(torch.nn.functional.silu(h))
        return self.out(torch.nn.functional.silu(h))


def train(process: VPDiscrete, prediction: str, data: torch.Tensor, steps: int, seed: int = 0) -> MLP:
    torch.manual_seed(seed)
    net = MLP(steps=process.num_train_timesteps)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    param = parametrization(prediction, process)
    x_all = data.float()
    for _ in range(steps):
        x0 = x_all[torch.randint(0, len(x_all), (128,))]
        t = torch.randint(0, process.num_train_timesteps, (128,)).double()  # training steps, as diffusers trains
        eps = torch.randn_like(x0)
        a = process.alpha(t).float()[:, None]
        s = process.sigma(t).float()[:, None]
        target = param.target(x0, eps, t).float()
        loss = (net(a * x0 + s * eps, t.float()) - target).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return net.eval()


def error_profile(net, process: VPDiscrete, prediction: str, data: torch.Tensor,
                  shape: tuple[int, ...] = (64,)) -> None:
    """RMS error of the network's native output against the training set's optimal denoiser (the empirical
    posterior mean, Karras et al. 2022 eq. 3) at noisy training points, and the data-prediction error it makes."""
    from fewstep.exact import EmpiricalData

    opt = EmpiricalData(data).denoiser(process)
    param = parametrization(prediction, process)
    g = torch.Generator().manual_seed(5)
    x0 = data[torch.randint(0, len(data), (512,), generator=g)]
    eps = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    cells = []
    for t in (999.0, 995.0, 990.0, 980.0, 950.0, 900.0, 500.0):
        a, s = float(process.alpha(t)), float(process.sigma(t))
        x = a * x0 + s * eps
        best = opt.predict(x, t)
        with torch.no_grad():
            out = net(x.float().reshape(-1, *shape), torch.full((len(x),), t))
            out = getattr(out, "sample", out).double().reshape(len(x), -1)
        target = {"eps": best.eps, "v": a * best.eps - s * best.x0}[prediction]
        x0_hat = param.prediction(x, t, out).x0
        cells.append(f"t={t:g}: {float((out - target).pow(2).mean().sqrt()):.3g} / "
                     f"{float((x0_hat - best.x0).pow(2).mean().sqrt()):.3g}")
    print("network error against the optimal denoiser, RMS native / RMS x0: " + "; ".join(cells), flush=True)


def trained(args: argparse.Namespace) -> None:
    data = digits()
    mean, cov = data.mean(0), torch.cov(data.T)
    print(f"MLP denoisers trained on the digits ({args.train_steps} steps); cells: FD to the data moments "
          f"(n = {args.n}; exact draws give {estimation_floor(mean, cov + 1e-4 * torch.eye(64, dtype=torch.float64), args.n):.3f}); "
          f"bold: the best start of the row")
    from safetensors.torch import load_file, save_file

    for name, prediction in [("cosine", "eps"), ("linear", "eps"), ("sigmoid", "eps"), ("cosine", "v")]:
        proc = SCHEDULES[name]()
        tic = time.time()
        path = f"{args.cache}/mlp-{name}-{prediction}-{args.train_steps}.safetensors" if args.cache else None
        if path and os.path.exists(path):
            net = MLP(steps=proc.num_train_timesteps)
            net.load_state_dict(load_file(path))
            net.eval()
        else:
            net = train(proc, prediction, data, args.train_steps)
            if path:
                os.makedirs(args.cache, exist_ok=True)
                save_file(net.state_dict(), path)
        print(f"\n(trained {name}/{prediction}: {time.time() - tic:.0f} s)", flush=True)
        error_profile(net, proc, prediction, data)
        with torch.no_grad():
            table(f"{name}, trained MLP", lambda p: fewstep.Denoiser(net, p, prediction), proc, prediction,
                  mean, cov, args, torch.float32)


def folder(args: argparse.Namespace) -> None:
    den = fewstep.load_model(args.model)
    shape = tuple(den.sample_shape)
    x8 = (digits() + 1) / 2  # in [0, 1]
    up = torch.nn.functional.interpolate(x8.reshape(-1, 1, 8, 8).float(), size=shape[1:], mode="bilinear",
                                         align_corners=False)
    data = ((up * 255).round() / 127.5 - 1).double().reshape(len(x8), -1)
    mean, cov = data.mean(0), torch.cov(data.T) + 1e-4 * torch.eye(data.shape[1], dtype=torch.float64)
    print(f"{args.model}: {den.process!r}, {den.prediction}; cells: FD to the upscaled digits' moments "
          f"(n = {args.n}, {data.shape[1]}-d; exact draws give {estimation_floor(mean, cov, args.n):.3f}); bold: the "
          f"best start of the row")
    net = den.net
    error_profile(net, den.process, den.prediction, data, shape)
    with torch.no_grad():
        table(args.model, lambda p: den, den.process, den.prediction, mean, cov, args, torch.float32, shape)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["exact", "trained", "folder"])
    parser.add_argument("--model", default=None, help="folder: the diffusers folder")
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--delta", type=float, default=0.03)
    parser.add_argument("--floors", default="-7,-6,-5.5,-5.1,-4.5,-4,-3.5,-3,-2.5,-2")
    parser.add_argument("--solvers", default="dpm++2m,unipc,ddim")
    parser.add_argument("--nfe", default="5,10,20")
    parser.add_argument("--grids", default="uniform", help="time grids, e.g. uniform,logsnr (fewstep.grids.GRIDS)")
    parser.add_argument("--train-steps", type=int, default=4000)
    parser.add_argument("--cache", default=None, help="a folder keeping the trained MLPs (safetensors) for reruns")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    {"exact": exact, "trained": trained, "folder": folder}[args.what](args)


if __name__ == "__main__":
    main()
