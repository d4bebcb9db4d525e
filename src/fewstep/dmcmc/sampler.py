"""Denoising MCMC sampling: Langevin-Gibbs chains, then an ODE solve from each emitted chain state.

Kim & Ye (2022, sec. 3): MCMC on (data, noise level) stays near the data manifold, so each state it emits
needs only a short reverse-ODE solve from its own noise level to become a clean sample.  Chain ``c`` runs
``burn_in`` steps, then emits one state every ``stride`` steps, ``per_chain`` states in all; image seed ``s`` is
state ``s % per_chain`` of chain ``s // per_chain`` (whose randomness comes from a generator seeded with ``c``),
so the same seed gives the same image in any batch.  Each emitted state ``(x, l)`` is solved by an existing
solver with ``ode_nfe`` evaluations on a grid from ``t_l`` down to clean data.

Network evaluations per image, exactly: ``ode_nfe + stride + burn_in / per_chain`` (the chain's evaluations
shared among the images it emits; :meth:`DMCMCConfig.nfe_per_image`).  Noise-level estimator calls (a much
smaller network) are counted apart.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from fractions import Fraction
from typing import Any, Iterable

import torch
from torch import Tensor

from ..api import generators, prior_noise, sample
from ..latent import require_pixel_space
from .chain import gibbs_step
from .posterior import LevelPosterior

__all__ = ["DMCMCConfig", "dmcmc_generate"]


@dataclass(frozen=True)
class DMCMCConfig:
    """``solver`` / ``ode_nfe`` / ``grid``: the solve from each emitted state; the chain's ``burn_in``, ``stride``,
    ``per_chain`` and Langevin ``step_scale`` (module docstring)."""

    solver: str = "dpm++2m"
    ode_nfe: int = 4
    grid: str | None = None
    burn_in: int = 10
    stride: int = 1
    per_chain: int = 16
    step_scale: float = 0.05

    def __post_init__(self) -> None:
        if self.ode_nfe < 1 or self.burn_in < 0 or self.stride < 1 or self.per_chain < 1:
            raise ValueError("DMCMC needs ode_nfe >= 1, burn_in >= 0, stride >= 1 and per_chain >= 1")
        if not 0 < self.step_scale <= 1:
            raise ValueError(f"step_scale = {self.step_scale:g} must lie in (0, 1] (the Langevin step as a fraction "
                             f"of the noise variance)")

    def nfe_per_image(self) -> Fraction:
        """Network evaluations per image, exactly: ``ode_nfe + stride + burn_in / per_chain``."""
        return self.ode_nfe + self.stride + Fraction(self.burn_in, self.per_chain)

    def describe(self) -> dict[str, Any]:
        return {**asdict(self), "nfe_per_image": float(self.nfe_per_image())}


def dmcmc_generate(denoiser, shape, seeds: Iterable[int], posterior: LevelPosterior, config: DMCMCConfig, *,
                   device: str | torch.device = "cpu", stats: dict | None = None) -> Tensor:
    """Images for ``seeds`` by Denoising MCMC (module docstring), float ``(n, *shape)``.

    ``stats``, if given, receives the evaluations spent: ``chain_evals`` and ``ode_evals`` (per sample, summed
    over samples) and ``estimator_calls``."""
    require_pixel_space(denoiser, "Denoising MCMC")
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("dmcmc_generate: seeds is empty")
    if min(seeds) < 0:
        raise ValueError("seeds must be >= 0 (seed s is state s % per_chain of chain s // per_chain)")
    cfg, levels = config, posterior.levels
    chains = sorted({s // cfg.per_chain for s in seeds})
    gens = generators(chains)
    x = prior_noise(denoiser.process, shape, gens, device=device)
    level = torch.zeros(len(chains), dtype=torch.long)
    want = {}  # (chain row, position) -> output rows
    for i, s in enumerate(seeds):
        want.setdefault((chains.index(s // cfg.per_chain), s % cfg.per_chain), []).append(i)
    last = max(pos for _, pos in want)
    out_x = torch.empty((len(seeds), *shape), dtype=x.dtype, device=x.device)
    out_level = torch.empty(len(seeds), dtype=torch.long)
    chain_evals = 0
    with torch.inference_mode():
        for step in range(cfg.burn_in + (last + 1) * cfg.stride):
            x, level = gibbs_step(denoiser, x, level, posterior, gens, step_scale=cfg.step_scale)
            chain_evals += len(chains)
            done = step + 1 - cfg.burn_in
            if done > 0 and done % cfg.stride == 0:
                pos = done // cfg.stride - 1
                for row in range(len(chains)):
                    for i in want.get((row, pos), ()):
                        out_x[i], out_level[i] = x[row], level[row]
    images = torch.empty_like(out_x)
    ode_evals = 0
    for lv in out_level.unique().tolist():
        rows = (out_level == lv).nonzero().reshape(-1)
        t = float(levels.times[lv])
        sub = out_x[rows]
        images[rows] = sample(denoiser, sub, cfg.solver, cfg.ode_nfe, cfg.grid, generators([seeds[i] for i in rows]),
                              t_start=t)
        ode_evals += cfg.ode_nfe * len(rows)
    if stats is not None:
        stats.update(chain_evals=chain_evals, ode_evals=ode_evals,
                     estimator_calls=getattr(posterior, "calls", None), chains=len(chains), images=len(seeds))
    return images
