"""Noise processes ``x_t = alpha(t) * x0 + sigma(t) * eps``.

Every process gives ``alpha``, ``sigma``, the half log-SNR ``lam = log(alpha / sigma)``
(DPM-Solver, Lu et al. 2022, eq. 3.2), its inverse ``t_of_lambda``, the valid time range
``[t_min, t_max]``, ``model_time(t)``, the value the network was trained to see, and ``t_start``,
the time sampling starts at by default (``t_max`` unless the schedule's end is singular, see
:func:`well_conditioned_start`).

All time arithmetic is float64.  Methods accept python floats or tensors and return float64
tensors (0-d for scalar input).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "NoiseProcess",
    "VPDiscrete",
    "VPLinear",
    "VPCosine",
    "VE",
    "EDM",
    "PFGMPP",
    "RectifiedFlow",
    "process_from_config",
    "START_LAMBDA_FLOOR",
    "SINGULAR_START_LAMBDA",
    "well_conditioned_start",
    "check_start",
    "rescale_zero_terminal_snr",
]

TimeLike = float | Tensor


def _f64(t: TimeLike) -> Tensor:
    return torch.as_tensor(t, dtype=torch.float64)


class NoiseProcess(ABC):
    """A forward noising process; subclasses define ``log_alpha`` and ``log_sigma``."""

    t_min: float
    t_max: float
    #: Whether the perturbation kernel (:meth:`noise`) is Gaussian: stochastic solvers and the teleported start
    #: (the data Gaussian's exact flow) assume it; ``make_plan`` refuses them otherwise (PFGM++ with finite D).
    gaussian_kernel: bool = True
    #: The time grid used when none is given (``fewstep.grids``): the one the process's own paper
    #: samples with, checked by measurement (docs/solvers.md, "Default grids").
    default_grid: str = "uniform"

    @abstractmethod
    def log_alpha(self, t: TimeLike) -> Tensor: ...

    @abstractmethod
    def log_sigma(self, t: TimeLike) -> Tensor: ...

    @abstractmethod
    def t_of_lambda(self, lam: TimeLike) -> Tensor:
        """Inverse of :meth:`lam` on ``[t_min, t_max]``."""

    def alpha(self, t: TimeLike) -> Tensor:
        return self.log_alpha(t).exp()

    def sigma(self, t: TimeLike) -> Tensor:
        return self.log_sigma(t).exp()

    def lam(self, t: TimeLike) -> Tensor:
        """Half log signal-to-noise ratio ``log(alpha / sigma)``."""
        return self.log_alpha(t) - self.log_sigma(t)

    def alpha_sigma(self, t: float) -> tuple[float, float]:
        """``(alpha(t), sigma(t))`` as python floats, memoised: solvers query the same grid times."""
        cache = self.__dict__.setdefault("_alpha_sigma_cache", {})
        value = cache.get(t)
        if value is None:
            value = (float(self.alpha(t)), float(self.sigma(t)))
            if len(cache) < 65536:
                cache[t] = value
        return value

    def model_time(self, t: TimeLike) -> Tensor:
        """The conditioning value the network sees at time ``t`` (default: ``t`` itself)."""
        return _f64(t)

    @property
    def t_start(self) -> float:
        """The time sampling starts at by default: ``t_max``, unless set by :meth:`set_start` (``load_model`` sets
        it for a discrete schedule whose end is singular for the model's prediction type, see
        :func:`well_conditioned_start`).  The prior draw there is still ``N(0, prior_std^2)``."""
        return float(self.__dict__.get("_t_start", self.t_max))

    @property
    def start_reason(self) -> str:
        """Why sampling starts at :attr:`t_start` (one sentence, shown by ``fewstep info`` and recorded with plans)."""
        return self.__dict__.get("_start_reason", "the process's t_max")

    def set_start(self, t: float, reason: str) -> "NoiseProcess":
        """Make ``t`` (inside ``[t_min, t_max]``) the default start, for ``reason``; returns the process."""
        t = float(t)
        self.check_time(t)
        self._t_start, self._start_reason = t, str(reason)
        return self

    @property
    def prior_std(self) -> float:
        """Standard deviation of the Gaussian that ``x`` at ``t_max`` is drawn from."""
        return float(self.sigma(self.t_max))

    def noise(self, shape: tuple[int, ...] | torch.Size, generator: torch.Generator | None = None, *,
              dtype: torch.dtype = torch.float32, device: str | torch.device | None = None) -> Tensor:
        """A unit-scale draw of the perturbation kernel, batch first: ``x_t = alpha(t) x0 + sigma(t) * noise``.

        The kernel is a property of the process: Gaussian (``torch.randn``) here; a heavy-tailed one for
        :class:`PFGMPP`.  Training noise (``training.losses.draw_noising``) and the prior draw at ``t_max``
        (``fewstep.prior_noise``) both come from it; each row of ``shape[0]`` is one sample.
        """
        if device is None and generator is not None:
            device = generator.device
        return torch.randn(tuple(shape), generator=generator, dtype=dtype, device=device)

    def derivatives(self, t: TimeLike) -> tuple[Tensor, Tensor]:
        """``(d alpha / dt, d sigma / dt)`` by a float64 central difference (override if exact)."""
        t = _f64(t)
        h = 1e-6 * max(1.0, abs(self.t_max - self.t_min))
        lo = torch.clamp(t - h, min=self.t_min)
        hi = torch.clamp(t + h, max=self.t_max)
        return (
            (self.alpha(hi) - self.alpha(lo)) / (hi - lo),
            (self.sigma(hi) - self.sigma(lo)) / (hi - lo),
        )

    def t_of_sigma_hat(self, sigma_hat: TimeLike) -> Tensor:
        """Time at which ``sigma / alpha`` equals ``sigma_hat`` (the EDM noise level)."""
        return self.t_of_lambda(-torch.log(_f64(sigma_hat)))

    def check_time(self, t: float) -> None:
        tol = 1e-9 * max(1.0, abs(self.t_max))
        if not (self.t_min - tol <= t <= self.t_max + tol):
            raise ValueError(
                f"time {t} is outside {type(self).__name__}'s range "
                f"[{self.t_min}, {self.t_max}]; pass times inside it"
            )

    @abstractmethod
    def config(self) -> dict[str, Any]:
        """A JSON-serialisable description; ``process_from_config`` rebuilds the process."""

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k != "kind")
        return f"{type(self).__name__}({args})"


class VPDiscrete(NoiseProcess):
    """Variance-preserving process from DDPM betas (Ho et al. 2020).

    Time is the training-step index ``t in [0, T-1]`` exactly as diffusers passes it to the
    network, with ``alpha_bar[i] = prod_{j<=i} (1 - beta_j)``.  ``log alpha`` is linearly
    interpolated between integer steps so every real ``t`` is valid (as in DPM-Solver's
    discrete schedule).

    ``zero_terminal_snr=True`` rescales the betas so that ``alpha(T-1) = 0`` exactly (Lin et al. 2024,
    "Common diffusion noise schedules and sample steps are flawed", Algorithm 1; diffusers'
    ``rescale_betas_zero_snr``).  The last beta is then 1; on the last segment ``[T-2, T-1]`` ``alpha`` (not
    its log, which reaches ``-inf``) is interpolated linearly down to 0.

    ``t_start`` defaults to :func:`well_conditioned_start` for an eps-prediction network (``T-1`` unless the end's
    log-SNR is below :data:`START_LAMBDA_FLOOR`; 967 on the capped cosine schedule) or, at zero terminal SNR, for a
    v/x0 one (one step below ``T-1``); ``load_model`` sets it for the model's own prediction type.
    """

    def __init__(self, betas: Tensor | list[float], schedule: str = "custom", *, zero_terminal_snr: bool = False,
                 **meta: Any):
        betas = torch.as_tensor(betas, dtype=torch.float64)
        if betas.ndim != 1 or len(betas) < 2:
            raise ValueError("betas must be a 1-D sequence of at least 2 values")
        if zero_terminal_snr:
            betas = rescale_zero_terminal_snr(betas)
        inner_ok = bool(((betas[:-1] > 0) & (betas[:-1] < 1)).all())
        if not inner_ok or not 0 < float(betas[-1]) <= 1:
            raise ValueError("every beta must lie in (0, 1) (the last may be 1: zero terminal SNR)")
        self.betas = betas
        self.schedule = schedule
        self.meta = meta
        #: alpha(T-1) = 0 exactly: the last beta is 1 (zero terminal SNR).
        self.zero_terminal_snr = float(betas[-1]) == 1.0
        self._log_alpha = 0.5 * torch.cumsum(torch.log1p(-betas), 0)
        self.num_train_timesteps = len(betas)
        self.t_min = 0.0
        self.t_max = float(len(betas) - 1)
        self._flag_zero_snr = bool(zero_terminal_snr) and schedule != "custom"

    @classmethod
    def linear(cls, num_train_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02,
               zero_terminal_snr: bool = False) -> "VPDiscrete":
        """DDPM's linear betas (diffusers ``beta_schedule="linear"``)."""
        betas = torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float64)
        return cls(betas, "linear", zero_terminal_snr=zero_terminal_snr, beta_start=beta_start, beta_end=beta_end)

    @classmethod
    def scaled_linear(cls, num_train_timesteps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012,
                      zero_terminal_snr: bool = False) -> "VPDiscrete":
        """Stable Diffusion's betas, linear in sqrt(beta) (diffusers ``"scaled_linear"``)."""
        betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float64) ** 2
        return cls(betas, "scaled_linear", zero_terminal_snr=zero_terminal_snr, beta_start=beta_start,
                   beta_end=beta_end)

    @classmethod
    def cosine(cls, num_train_timesteps: int = 1000, s: float = 0.008, max_beta: float = 0.999,
               zero_terminal_snr: bool = False) -> "VPDiscrete":
        """Improved-DDPM cosine betas (Nichol & Dhariwal 2021, eq. 17; diffusers ``"squaredcos_cap_v2"``).

        The last beta is clipped at ``max_beta``: alpha drops 1000x in the last training step, to 4.9e-5 at
        ``T-1``, so an eps network's data prediction there is not to be trusted and ``t_start`` is below ``T-1``
        (967 for T = 1000).
        """
        def f(u: float) -> float:
            return math.cos((u + s) / (1 + s) * math.pi / 2) ** 2

        n = num_train_timesteps
        betas = [min(1 - f((i + 1) / n) / f(i / n), max_beta) for i in range(n)]
        return cls(betas, "cosine", zero_terminal_snr=zero_terminal_snr, s=s, max_beta=max_beta)

    @classmethod
    def sigmoid(cls, num_train_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02,
                zero_terminal_snr: bool = False) -> "VPDiscrete":
        """GeoDiff's sigmoid betas (Xu et al. 2022): ``beta_start + (beta_end - beta_start) sigmoid(u)``, ``u`` from
        -6 to 6 (diffusers ``"sigmoid"``)."""
        u = torch.linspace(-6, 6, num_train_timesteps, dtype=torch.float64)
        betas = torch.sigmoid(u) * (beta_end - beta_start) + beta_start
        return cls(betas, "sigmoid", zero_terminal_snr=zero_terminal_snr, beta_start=beta_start, beta_end=beta_end)

    @property
    def t_start(self) -> float:
        if "_t_start" not in self.__dict__:
            # eps prediction is the common case; at zero terminal SNR it is refused (Lin et al. 2024), so v/x0's start
            self.set_start(*well_conditioned_start(self, "v" if self.zero_terminal_snr else "eps"))
        return float(self.__dict__["_t_start"])

    @property
    def start_reason(self) -> str:
        self.t_start  # noqa: B018 - computes the default on first use
        return self.__dict__["_start_reason"]

    def _table_on(self, device: torch.device) -> Tensor:
        """The ``log alpha_bar`` table on ``device`` (copied once per device): training moves times to the GPU."""
        if device == self._log_alpha.device:
            return self._log_alpha
        cache = self.__dict__.setdefault("_tables", {})
        if device not in cache:
            cache[device] = self._log_alpha.to(device)
        return cache[device]

    def log_alpha(self, t: TimeLike) -> Tensor:
        t = _f64(t)
        i0 = torch.clamp(torch.floor(t), 0, self.t_max - 1).long()
        w = t - i0
        la = self._table_on(t.device)
        if not self.zero_terminal_snr:
            return la[i0] * (1 - w) + la[i0 + 1] * w
        # zero terminal SNR: log alpha(T-1) = -inf; alpha itself falls linearly to 0 on the last segment
        last = len(la) - 2
        finite = torch.cat([la[:-1], la[-2:-1]])
        inner = finite[i0] * (1 - w) + finite[i0 + 1] * w
        tail = la[last] + torch.log1p(-w.clamp(max=1.0))
        return torch.where(i0 == last, tail, inner)

    def log_sigma(self, t: TimeLike) -> Tensor:
        return 0.5 * torch.log(-torch.expm1(2 * self.log_alpha(t)))

    def t_of_lambda(self, lam: TimeLike) -> Tensor:
        lam = _f64(lam)
        # log alpha from lambda (VP: alpha^2 + sigma^2 = 1), then invert the piecewise-linear table.
        log_alpha = (-0.5 * torch.nn.functional.softplus(-2 * lam)).reshape(-1)
        table = self._table_on(lam.device)
        finite = table[:-1] if self.zero_terminal_snr else table
        la = finite.flip(0)  # increasing
        idx = torch.clamp(torch.searchsorted(la, log_alpha), 1, len(la) - 1)
        lo, hi = la[idx - 1], la[idx]
        w = (log_alpha - lo) / (hi - lo)
        t = (len(la) - 1) - ((idx - 1) + w)
        if self.zero_terminal_snr:  # below alpha(T-2): the linear-alpha last segment
            tail = (len(la) - 1) + 1 - torch.exp(log_alpha - finite[-1])
            t = torch.where(log_alpha < finite[-1], tail, t)
        return torch.clamp(t, self.t_min, self.t_max).reshape(lam.shape)

    @property
    def prior_std(self) -> float:
        return 1.0

    def config(self) -> dict[str, Any]:
        if self.schedule == "custom":
            return {"kind": "vp_discrete", "schedule": "custom", "betas": self.betas.tolist()}
        extra = {"zero_terminal_snr": True} if self._flag_zero_snr else {}
        return {"kind": "vp_discrete", "schedule": self.schedule,
                "num_train_timesteps": self.num_train_timesteps, **self.meta, **extra}


class VPLinear(NoiseProcess):
    """Continuous VP SDE with linear beta(t) (Song et al. 2021): log alpha = -beta_d t^2/4 - beta_0 t/2."""

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, t_min: float = 1e-3, t_max: float = 1.0):
        self.beta_0, self.beta_1 = beta_min, beta_max
        self.t_min, self.t_max = t_min, t_max

    def log_alpha(self, t: TimeLike) -> Tensor:
        t = _f64(t)
        return -0.25 * t**2 * (self.beta_1 - self.beta_0) - 0.5 * t * self.beta_0

    def log_sigma(self, t: TimeLike) -> Tensor:
        return 0.5 * torch.log(-torch.expm1(2 * self.log_alpha(t)))

    def t_of_lambda(self, lam: TimeLike) -> Tensor:
        lam = _f64(lam)
        # -2 log alpha = softplus(-2 lam) = beta_0 t + (beta_1 - beta_0) t^2 / 2 ; solve the quadratic stably.
        c = torch.nn.functional.softplus(-2 * lam)
        a = self.beta_1 - self.beta_0
        return 2 * c / (self.beta_0 + torch.sqrt(self.beta_0**2 + 2 * a * c))

    def derivatives(self, t: TimeLike) -> tuple[Tensor, Tensor]:
        t = _f64(t)
        dla = -0.5 * t * (self.beta_1 - self.beta_0) - 0.5 * self.beta_0
        a, s = self.alpha(t), self.sigma(t)
        return a * dla, -(a**2) * dla / s

    @property
    def prior_std(self) -> float:
        return 1.0

    def config(self) -> dict[str, Any]:
        return {"kind": "vp_linear", "beta_min": self.beta_0, "beta_max": self.beta_1,
                "t_min": self.t_min, "t_max": self.t_max}


class VPCosine(NoiseProcess):
    """Continuous cosine VP schedule: alpha(t) = cos(pi/2 (t+s)/(1+s)) / cos(pi/2 s/(1+s))."""

    def __init__(self, s: float = 0.008, t_min: float = 1e-3, t_max: float = 0.9946):
        self.s, self.t_min, self.t_max = s, t_min, t_max
        self._log_alpha_0 = math.log(math.cos(math.pi / 2 * s / (1 + s)))

    def log_alpha(self, t: TimeLike) -> Tensor:
        t = _f64(t)
        return torch.log(torch.cos(math.pi / 2 * (t + self.s) / (1 + self.s))) - self._log_alpha_0

    def log_sigma(self, t: TimeLike) -> Tensor:
        return 0.5 * torch.log(-torch.expm1(2 * self.log_alpha(t)))

    def t_of_lambda(self, lam: TimeLike) -> Tensor:
        log_alpha = -0.5 * torch.nn.functional.softplus(-2 * _f64(lam))
        u = torch.acos(torch.exp(log_alpha + self._log_alpha_0))
        return 2 * (1 + self.s) / math.pi * u - self.s

    @property
    def prior_std(self) -> float:
        return 1.0

    def config(self) -> dict[str, Any]:
        return {"kind": "vp_cosine", "s": self.s, "t_min": self.t_min, "t_max": self.t_max}


class VE(NoiseProcess):
    """Variance-exploding SDE (Song et al. 2021): alpha = 1, sigma = sigma_min (sigma_max/sigma_min)^t, t in [0, 1]."""

    default_grid = "karras"  # EDM (Karras et al. 2022, Table 1) improves VE sampling with rho = 7

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0):
        if not 0 < sigma_min < sigma_max:
            raise ValueError("VE needs 0 < sigma_min < sigma_max")
        self.sigma_min, self.sigma_max = sigma_min, sigma_max
        self.t_min, self.t_max = 0.0, 1.0
        self._log_ratio = math.log(sigma_max / sigma_min)

    def log_alpha(self, t: TimeLike) -> Tensor:
        return torch.zeros_like(_f64(t))

    def log_sigma(self, t: TimeLike) -> Tensor:
        return math.log(self.sigma_min) + _f64(t) * self._log_ratio

    def t_of_lambda(self, lam: TimeLike) -> Tensor:
        return (-_f64(lam) - math.log(self.sigma_min)) / self._log_ratio

    def model_time(self, t: TimeLike) -> Tensor:
        """NCSN-style networks are conditioned on sigma."""
        return self.sigma(t)

    def config(self) -> dict[str, Any]:
        return {"kind": "ve", "sigma_min": self.sigma_min, "sigma_max": self.sigma_max}


class EDM(NoiseProcess):
    """Karras et al. 2022: alpha = 1, sigma = t, t in [sigma_min, sigma_max]."""

    default_grid = "karras"  # EDM eq. 5, rho = 7

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0):
        if not 0 < sigma_min < sigma_max:
            raise ValueError("EDM needs 0 < sigma_min < sigma_max")
        self.sigma_min, self.sigma_max = sigma_min, sigma_max
        self.t_min, self.t_max = sigma_min, sigma_max

    def log_alpha(self, t: TimeLike) -> Tensor:
        return torch.zeros_like(_f64(t))

    def log_sigma(self, t: TimeLike) -> Tensor:
        return torch.log(_f64(t))

    def t_of_lambda(self, lam: TimeLike) -> Tensor:
        return torch.exp(-_f64(lam))

    def derivatives(self, t: TimeLike) -> tuple[Tensor, Tensor]:
        t = _f64(t)
        return torch.zeros_like(t), torch.ones_like(t)

    def config(self) -> dict[str, Any]:
        return {"kind": "edm", "sigma_min": self.sigma_min, "sigma_max": self.sigma_max}


class PFGMPP(EDM):
    """PFGM++ (Xu et al. 2023): the data augmented by ``D`` extra dimensions, aligned with EDM by ``r = sigma sqrt(D)``.

    With that alignment the backward ODE is EDM's in ``sigma`` with the same denoiser ``E[x0 | x_t]`` (Xu et al.
    2023, sec. 4, eq. 10), so every solver applies unchanged; what changes is the perturbation kernel
    ``p_r(x | y) ~ (||x - y||^2 + r^2)^(-(N + D) / 2)`` (eq. 4), for training noise and for the prior at ``r_max``.
    Its radius is drawn by the paper's construction (Appendix B): ``R1 ~ Beta(N/2, D/2)``, ``R2 = R1 / (1 - R1)``,
    ``R = r sqrt(R2)``, direction uniform on the sphere.  ``R2`` is a ratio ``chi2_N / chi2_D`` of independent
    chi-square draws and the direction is ``z / |z|`` of the same ``z ~ N(0, I_N)``, so (with integer ``D``)
    ``noise = z / sqrt(chi2_D / D)``, ``chi2_D = |w|^2``, ``w ~ N(0, I_D)``: the multivariate t with ``D`` degrees
    of freedom, from normal draws of a seeded generator.  ``D = inf`` is EDM exactly (the same draws).
    """

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0, D: float = 128):
        super().__init__(sigma_min, sigma_max)
        D = float(D)
        if not (D == math.inf or (D >= 1 and D == int(D))):
            raise ValueError(f"PFGM++ needs D, the number of augmented dimensions, to be a positive integer or inf "
                             f"(the paper uses 64 to 3072); got {D}")
        self.D = D
        self.gaussian_kernel = D == math.inf

    def noise(self, shape: tuple[int, ...] | torch.Size, generator: torch.Generator | None = None, *,
              dtype: torch.dtype = torch.float32, device: str | torch.device | None = None) -> Tensor:
        """``z / sqrt(chi2_D / D)`` per sample (batch first): ``sigma`` times it has the PFGM++ kernel at
        ``r = sigma sqrt(D)``; ``z`` is drawn first, so ``D = inf`` draws exactly EDM's Gaussian."""
        z = super().noise(shape, generator, dtype=dtype, device=device)
        if self.D == math.inf:
            return z
        w = super().noise((z.shape[0], int(self.D)), generator, dtype=torch.float64, device=z.device)
        scale = torch.rsqrt(w.square().mean(dim=1)).to(dtype)
        return z * scale.reshape(-1, *([1] * (z.dim() - 1)))

    def config(self) -> dict[str, Any]:
        return {"kind": "pfgmpp", "sigma_min": self.sigma_min, "sigma_max": self.sigma_max, "D": self.D}


class RectifiedFlow(NoiseProcess):
    """Rectified flow / flow matching (Liu et al. 2023): alpha = 1 - t, sigma = t."""

    def __init__(self, t_min: float = 1e-3, t_max: float = 1.0 - 1e-3):
        self.t_min, self.t_max = t_min, t_max

    def log_alpha(self, t: TimeLike) -> Tensor:
        return torch.log1p(-_f64(t))

    def log_sigma(self, t: TimeLike) -> Tensor:
        return torch.log(_f64(t))

    def t_of_lambda(self, lam: TimeLike) -> Tensor:
        return torch.sigmoid(-_f64(lam))

    def derivatives(self, t: TimeLike) -> tuple[Tensor, Tensor]:
        t = _f64(t)
        return -torch.ones_like(t), torch.ones_like(t)

    @property
    def prior_std(self) -> float:
        return 1.0

    def config(self) -> dict[str, Any]:
        return {"kind": "rectified_flow", "t_min": self.t_min, "t_max": self.t_max}


_KINDS = {
    "vp_linear": VPLinear,
    "vp_cosine": VPCosine,
    "ve": VE,
    "edm": EDM,
    "pfgmpp": PFGMPP,
    "rectified_flow": RectifiedFlow,
}


def process_from_config(cfg: dict[str, Any]) -> NoiseProcess:
    """Rebuild a process from :meth:`NoiseProcess.config`."""
    cfg = dict(cfg)
    kind = cfg.pop("kind", None)
    if kind == "vp_discrete":
        schedule = cfg.pop("schedule")
        if schedule == "custom":
            return VPDiscrete(cfg["betas"])
        factory = {"linear": VPDiscrete.linear, "scaled_linear": VPDiscrete.scaled_linear,
                   "cosine": VPDiscrete.cosine, "sigmoid": VPDiscrete.sigmoid}.get(schedule)
        if factory is None:
            raise ValueError(f"unknown VPDiscrete schedule {schedule!r}; valid: linear, scaled_linear, cosine, "
                             f"sigmoid, custom")
        return factory(**cfg)
    if kind not in _KINDS:
        raise ValueError(f"unknown process kind {kind!r}; valid: vp_discrete, {', '.join(_KINDS)}")
    return _KINDS[kind](**cfg)


def rescale_zero_terminal_snr(betas: Tensor) -> Tensor:
    """Betas rescaled to zero terminal SNR (Lin et al. 2024, Algorithm 1): ``sqrt(alpha_bar)`` is shifted so its
    last value is 0 and scaled so its first is unchanged; the last beta becomes 1."""
    root = torch.exp(0.5 * torch.cumsum(torch.log1p(-torch.as_tensor(betas, dtype=torch.float64)), 0))
    first, last = root[0].clone(), root[-1].clone()
    root = (root - last) * (first / (first - last))
    alpha_bar = root**2
    steps = torch.cat([alpha_bar[:1], alpha_bar[1:] / alpha_bar[:-1]])
    return 1 - steps


#: The data prediction's error scale ``k(t)`` (``x0_hat - x0 = k(t) (out - target)``; ``sigma / alpha =
#: exp(-lam)`` for an eps network) is trusted up to ``exp(-START_LAMBDA_FLOOR)``: ``lam >= -5.1`` for eps.
#: DDPM's linear schedule, which samples well from its last step, ends at -5.06; -5.1 is also DPM-Solver's clip of
#: lambda (diffusers' ``lambda_min_clipped``).
START_LAMBDA_FLOOR = -5.1
#: From a *collapsing* end - alpha falls more than e-fold in the last training step: a beta clipped near 1, as
#: improved-DDPM's cosine schedule (alpha 1000x down to 4.9e-5 at t = 999), or zero terminal SNR - the steps below it
#: still collapse (lambda falls ~1 / (T - t) per step) and a network is trained too sparsely there: sampling starts at
#: the last training step with ``k <= exp(-SINGULAR_START_LAMBDA)``, ``lam >= -3`` for eps (alpha = 0.05, below
#: Stable Diffusion's own terminal 0.068).  Measured on three models of the capped cosine schedule, where -5.1 left
#: FDs 5-300x the best start's (benchmarks/diffusers_start.py; docs/diffusers.md, "Where sampling starts").
SINGULAR_START_LAMBDA = -3.0


def data_error_scale(lam: Tensor, prediction: str) -> Tensor:
    """``k(t)`` of :meth:`~fewstep.parametrization.Parametrization.x0_error_scale` on a VP process from its log-SNR
    ``lam`` (stated here, below the parametrizations, for the start rule; a test holds the two equal):
    ``sigma / alpha = exp(-lam)`` for eps; ``sigma`` for v, 1 for x0, at most 1 for EDM's preconditioning."""
    if prediction == "eps":
        return torch.exp(-lam)
    if prediction == "v":
        return torch.sigmoid(-2 * lam).sqrt()  # sigma = 1 / sqrt(1 + e^{2 lam}) on a VP process
    return torch.ones_like(lam)


def well_conditioned_start(process: NoiseProcess, prediction: str = "eps", *, floor: float = START_LAMBDA_FLOOR,
                           landing: float = SINGULAR_START_LAMBDA, sigma_data: float = 0.5) -> tuple[float, str]:
    """``(t_start, reason)``: the time sampling of a ``prediction``-type network on ``process`` starts at by default.

    For a discrete VP schedule, with ``k(t)`` the data prediction's error scale
    (:meth:`~fewstep.parametrization.Parametrization.x0_error_scale`: ``exp(-lam)`` for eps, at most 1 for v-,
    x0- and EDM-prediction), always at a training step (a time the network was trained at):

    * ``t_max`` when ``k(t_max) <= exp(-floor)``;
    * zero terminal SNR (``alpha(t_max) = 0``: no finite log-SNR) with a well-conditioned prediction type: one
      training step below ``t_max``;
    * a collapsing end (alpha falls more than e-fold in the last training step, e.g. a beta clipped at 0.999):
      the last step with ``k <= exp(-landing)``;
    * any other end: the last step with ``k <= exp(-floor)`` (DPM-Solver's clip).

    Every other process starts at its ``t_max`` (chosen well already, e.g. :class:`VPCosine`'s 0.9946).
    """
    if not isinstance(process, VPDiscrete):
        return process.t_max, "the process's t_max"
    steps = torch.arange(process.num_train_timesteps, dtype=torch.float64)
    lam = process.lam(steps)
    scale = data_error_scale(lam, prediction)
    last = int(process.t_max)
    lam_end, scale_end = float(lam[last]), float(scale[last])
    if math.isfinite(lam_end) and scale_end <= math.exp(-floor):
        why = (f"lambda({last}) = {lam_end:.3g} is above the floor {floor:g}" if prediction == "eps" else
               f"{prediction}-prediction's data prediction is well-conditioned up to t_max")
        return float(last), f"{why}: sampling starts at t_max = {last}"
    if not math.isfinite(lam_end) and float(scale[last - 1]) <= math.exp(-floor):
        i = last - 1
        return float(i), (f"zero terminal SNR: alpha({last}) = 0 has no finite log-SNR; sampling starts one training "
                          f"step below, at t = {i} (alpha = {float(process.alpha(float(i))):.2g}), where x_T ~ N(0, 1) "
                          f"is the marginal up to alpha * x0")
    collapsing = float(lam[last - 1] - lam[last]) > 1.0
    bound = landing if collapsing else floor
    ok = torch.isfinite(lam) & (scale <= math.exp(-bound))
    i = int(torch.nonzero(ok).max()) if bool(ok.any()) else 0
    at_end = (f"alpha({last}) = 0 leaves the data prediction undefined there" if not math.isfinite(lam_end) else
              f"lambda({last}) = {lam_end:.3g} is below the floor {floor:g}: the data prediction's error is "
              f"{scale_end:.3g}x the network's error there")
    where = (f"alpha collapses in the last training step (lambda falls {float(lam[last - 1] - lam[last]):.3g}), so "
             f"sampling starts at t = {i}, the last training step where it is at most {math.exp(-bound):.3g}x"
             if collapsing else f"t = {i} is the last training step where it is at most {math.exp(-bound):.3g}x")
    return float(i), (f"{at_end}; {where} (lambda = {float(lam[i]):.3g}, alpha = "
                      f"{float(process.alpha(float(i))):.2g})")


def check_start(process: NoiseProcess, t: float, setting: str = "start") -> str | None:
    """A warning (one line naming ``setting``) when sampling is forced to start at ``t`` above the process's
    well-conditioned :attr:`~NoiseProcess.t_start`; ``None`` when ``t`` is at or below it."""
    t, start = float(t), process.t_start
    if t <= start + 1e-9 * max(1.0, abs(process.t_max)):
        return None
    lam = float(process.lam(t))
    where = "alpha = 0: no finite log-SNR" if not math.isfinite(lam) else f"lambda = {lam:.3g}"
    return (f"{setting}={t:g} is above the well-conditioned start t={start:g} ({where} at t={t:g}): the model's data "
            f"prediction cannot be trusted there; leave {setting} unset to start at {start:g} (fewstep info shows why)")
