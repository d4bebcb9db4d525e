"""Denoisers: turn a network (or an exact model) into data and noise predictions.

A denoiser maps ``(x, t)`` to a :class:`Prediction` holding both ``x0_hat`` (data prediction)
and ``eps_hat`` (noise prediction), related by ``x = alpha x0_hat + sigma eps_hat``.  Each is
computed from the network's native output in the numerically best way, so noise-prediction
solvers on eps networks see the network's eps, and data-prediction solvers see its x0.

Wrappers (guidance, thresholding, counting, caching) are denoisers around a denoiser.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import Tensor

from .context import StepContext
from .parametrization import PREDICTION_TYPES, VARIANCE_TYPES, Prediction, alpha_sigma, parametrization, split_variance
from .processes import NoiseProcess

__all__ = [
    "wrapper_chain",
    "innermost",
    "find_attached",
    "Prediction",
    "DenoiserBase",
    "Denoiser",
    "DenoiserWrapper",
    "ClassifierFreeGuidance",
    "GuidanceInterval",
    "guidance_mix",
    "DynamicThresholding",
    "ClipDataPrediction",
    "NFECounter",
    "PREDICTION_TYPES",
    "accepts_context",
]

NetworkTransform = Callable[[torch.nn.Module], torch.nn.Module]


def accepts_context(net: Any) -> bool:
    """Whether ``net`` takes the sampling context as a ``ctx`` keyword (fewstep's UNet and DiT do)."""
    return bool(getattr(net, "accepts_step_context", False))


class DenoiserBase:
    """Anything with a ``process`` and ``predict(x, t, *, ctx=None, **cond) -> Prediction``.

    ``t`` is a python float shared by the batch or a float64 tensor of shape ``(batch,)``;
    ``ctx`` is the :class:`~fewstep.context.StepContext` of the evaluation (``None`` outside a
    solver), ``cond`` the conditioning (e.g. ``class_labels``).  Calling the denoiser returns the
    data prediction, like a k-diffusion denoiser.

    Metadata is declared once and read through any wrapper: ``sample_shape`` ``(C, H, W)`` of one
    sample (``None`` when unknown) and ``config`` (the checkpoint's config, if any).
    """

    process: NoiseProcess
    sample_shape: tuple[int, ...] | None = None
    config: dict[str, Any] | None = None

    def predict(self, x: Tensor, t: float | Tensor, *, ctx: StepContext | None = None, **cond: Any) -> Prediction:
        raise NotImplementedError

    def __call__(self, x: Tensor, t: float | Tensor, **cond: Any) -> Tensor:
        return self.predict(x, t, **cond).x0

    def eps(self, x: Tensor, t: float | Tensor, **cond: Any) -> Tensor:
        return self.predict(x, t, **cond).eps

    def coefficients(self, x: Tensor, t: float | Tensor) -> tuple[Tensor | float, Tensor | float]:
        """``(alpha(t), sigma(t))`` as floats or tensors broadcastable to ``x``."""
        return alpha_sigma(self.process, x, t)

    def networks(self) -> Iterator[torch.nn.Module]:
        """Every ``torch.nn.Module`` network this denoiser (and any denoiser it wraps) evaluates."""
        return iter(())

    def map_networks(self, transform: NetworkTransform) -> "DenoiserBase":
        """Replace each network ``net`` by ``transform(net)``, in place (compiling, quantizing and caching
        are such transforms); returns ``self``."""
        return self


class Denoiser(DenoiserBase):
    """Wrap ``net(x, t_model, **cond)`` trained with prediction type ``prediction``.

    The prediction-type maths (network input, output -> ``x0``/``eps``) is the
    :class:`~fewstep.parametrization.Parametrization` shared with the training loss:
    ``"eps"``, ``"x0"``, ``"v"``, ``"flow"`` or ``"edm"`` (Karras et al. 2022 preconditioning
    with ``sigma_data``).  A network with ``accepts_step_context = True`` also receives the
    sampling context as ``ctx``.  ``variance`` (``"learned_range"`` or ``"learned"``, improved-DDPM style) declares a
    network returning twice the input's channels: the first half is the prediction every solver uses, the second
    the learned variance that DDPM ancestral sampling uses (:class:`~fewstep.parametrization.LearnedVariance`).

    At zero terminal SNR (``alpha(t_max) = 0``) an eps network's data prediction is undefined, and it is refused
    (Lin et al. 2024 train such models with v-prediction).
    """

    def __init__(self, net: Callable[..., Tensor], process: NoiseProcess, prediction: str = "eps",
                 sigma_data: float = 0.5, *, sample_shape: Sequence[int] | None = None,
                 config: dict[str, Any] | None = None, variance: str | None = None):
        self.param = parametrization(prediction, process, sigma_data)
        if prediction == "eps" and getattr(process, "zero_terminal_snr", False):
            raise ValueError("an eps-prediction model on a zero-terminal-SNR process: its data prediction "
                             "(x - sigma eps) / alpha is undefined where alpha = 0; use a v- or x0-prediction model")
        if variance is not None and variance not in VARIANCE_TYPES:
            raise ValueError(f"unknown variance type {variance!r}; valid: {', '.join(VARIANCE_TYPES)} or None")
        self.variance = variance
        self.net = net
        self.process = process
        self.prediction = prediction
        self.sigma_data = sigma_data
        self.sample_shape = tuple(int(v) for v in sample_shape) if sample_shape is not None else None
        self.config = config

    def networks(self) -> Iterator[torch.nn.Module]:
        if isinstance(self.net, torch.nn.Module):
            yield self.net

    def map_networks(self, transform: NetworkTransform) -> "Denoiser":
        if isinstance(self.net, torch.nn.Module):
            self.net = transform(self.net)
        return self

    def _call_net(self, x: Tensor, t_model: Tensor, ctx: StepContext | None, cond: dict[str, Any]) -> Tensor:
        out = self.net(x, t_model, ctx=ctx, **cond) if ctx is not None and accepts_context(self.net) \
            else self.net(x, t_model, **cond)
        if not isinstance(out, Tensor):
            out = getattr(out, "sample", out)
        if isinstance(out, Tensor) and self.variance is not None:
            return out
        if isinstance(out, Tensor) and out.shape != x.shape:
            split_variance(out, x, None)  # a learned variance's 2C channels: name the setting
        if not isinstance(out, Tensor) or out.shape != x.shape:
            shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(
                f"the denoiser's network returned shape {shape} for input of shape {tuple(x.shape)}; "
                f"a '{self.prediction}'-prediction network must return a tensor shaped like its input"
            )
        return out

    def predict(self, x: Tensor, t: float | Tensor, *, ctx: StepContext | None = None, **cond: Any) -> Prediction:
        x_in, t_in = self.param.net_input(x, t)
        out = self._call_net(x_in, t_in, ctx, cond)
        if self.variance is None:
            return self.param.prediction(x, t, out)
        mean, var = split_variance(out, x, self.variance)
        p = self.param.prediction(x, t, mean)
        p.variance = var
        return p


class DenoiserWrapper(DenoiserBase):
    """Base class of wrappers: delegates to ``inner`` and reads its process and metadata through it."""

    def __init__(self, inner: DenoiserBase):
        self.inner = inner

    @property
    def process(self) -> NoiseProcess:  # type: ignore[override]
        return self.inner.process

    @property
    def sample_shape(self) -> tuple[int, ...] | None:  # type: ignore[override]
        return self.inner.sample_shape

    @property
    def config(self) -> dict[str, Any] | None:  # type: ignore[override]
        return self.inner.config

    def networks(self) -> Iterator[torch.nn.Module]:
        return self.inner.networks()

    def map_networks(self, transform: NetworkTransform) -> "DenoiserWrapper":
        self.inner.map_networks(transform)
        return self

    def predict(self, x: Tensor, t: float | Tensor, *, ctx: StepContext | None = None, **cond: Any) -> Prediction:
        return self.inner.predict(x, t, ctx=ctx, **cond)


class NFECounter(DenoiserWrapper):
    """Counts denoiser evaluations (one per ``predict`` call, whatever the batch size)."""

    def __init__(self, inner: DenoiserBase):
        super().__init__(inner)
        self.count = 0

    def predict(self, x: Tensor, t: float | Tensor, *, ctx: StepContext | None = None, **cond: Any) -> Prediction:
        self.count += 1
        return self.inner.predict(x, t, ctx=ctx, **cond)


@dataclass(frozen=True)
class GuidanceInterval:
    """Guide only where the noise level ``sigma_hat = sigma / alpha`` lies in ``(lo, hi]``.

    Kynkaanniemi et al. 2024, "Applying guidance in a limited interval", sec. 3: guidance is harmful
    at high noise (it collapses diversity) and unnecessary at low noise; outside the interval the
    guided denoiser is the plain conditional one.  ``sigma_hat`` is EDM's ``sigma`` under every
    process (``exp(-lambda(t))``), so an interval carries over between processes.
    """

    lo: float = 0.0
    hi: float = math.inf

    def __post_init__(self) -> None:
        if not (0.0 <= self.lo < self.hi):
            raise ValueError(f"a guidance interval needs 0 <= lo < hi (noise levels sigma/alpha), got ({self.lo}, {self.hi}]")

    @classmethod
    def parse(cls, spec: "GuidanceInterval | Sequence[float] | str | None") -> "GuidanceInterval | None":
        """``None``, an interval, a pair ``(lo, hi)`` or the text ``"lo,hi"`` (``inf`` allowed)."""
        if spec is None or isinstance(spec, GuidanceInterval):
            return spec
        parts = spec.split(",") if isinstance(spec, str) else list(spec)
        try:
            lo, hi = (float(v) for v in parts)
        except (TypeError, ValueError):
            raise ValueError(f"guidance interval {spec!r}: give two noise levels lo,hi (sigma/alpha), e.g. 0.3,5") from None
        return cls(lo, hi)

    def active(self, process: NoiseProcess, t: float | Tensor) -> bool | Tensor:
        """Whether guidance applies at ``t``: a bool for a float time, a bool ``(batch,)`` tensor otherwise."""
        sigma_hat = torch.exp(-process.lam(t))
        inside = (sigma_hat > self.lo) & (sigma_hat <= self.hi)
        return bool(inside) if isinstance(t, float) or inside.ndim == 0 else inside


def guidance_mix(guided: Prediction, plain: Prediction, active: bool | Tensor) -> Prediction:
    """``guided`` where ``active``, ``plain`` elsewhere (per sample when ``active`` is a tensor)."""
    if isinstance(active, bool):
        return guided if active else plain
    m = active.to(guided.x0.device).reshape(-1, *([1] * (guided.x0.ndim - 1)))
    return Prediction(torch.where(m, guided.x0, plain.x0), torch.where(m, guided.eps, plain.eps), guided.variance)


class ClassifierFreeGuidance(DenoiserWrapper):
    """Classifier-free guidance (Ho & Salimans 2022, eq. 6): ``D = D_u + w (D_c - D_u)``.

    ``uncond`` maps the conditioning keywords to their unconditional form: a tensor of the batch's
    size, or a number repeated over the batch (e.g. ``{"class_labels": num_classes}``, the null
    class).  The conditional and unconditional passes are batched into one network call.  Because
    the combination is linear and both predictions share ``(x, t)``, it applies equally to x0 and
    eps, hence to every solver.  With ``interval`` (a :class:`GuidanceInterval`, a pair or
    ``"lo,hi"``) guidance applies only where ``sigma/alpha`` lies in ``(lo, hi]`` and the denoiser is
    the conditional one elsewhere (one network pass there).  ``w = 1`` is the conditional denoiser.
    """

    def __init__(self, inner: DenoiserBase, scale: float, uncond: dict[str, Any],
                 interval: "GuidanceInterval | Sequence[float] | str | None" = None):
        super().__init__(inner)
        self.scale = float(scale)
        self.uncond = uncond
        self.interval = GuidanceInterval.parse(interval)

    def _uncond_value(self, key: str, value: Any) -> Any:
        u = self.uncond[key]
        if isinstance(u, Tensor):
            return u
        return torch.full_like(value, u) if isinstance(value, Tensor) else u

    def predict(self, x: Tensor, t: float | Tensor, *, ctx: StepContext | None = None, **cond: Any) -> Prediction:
        active = True if self.interval is None else self.interval.active(self.process, t)
        if self.scale == 1.0 or active is False:
            return self.inner.predict(x, t, ctx=ctx, **cond)
        both = {k: torch.cat([self._uncond_value(k, v), v]) if isinstance(v, Tensor) and k in self.uncond else
                (torch.cat([v, v]) if isinstance(v, Tensor) else v) for k, v in cond.items()}
        tt = t if not isinstance(t, Tensor) or t.ndim == 0 else torch.cat([t, t])
        p = self.inner.predict(torch.cat([x, x]), tt, ctx=ctx, **both)
        (x0_u, x0_c), (e_u, e_c) = p.x0.chunk(2), p.eps.chunk(2)
        w = self.scale
        var = p.variance.chunk(2)[1] if p.variance is not None else None  # GLIDE: the conditional pass's variance
        guided = Prediction(x0_u + w * (x0_c - x0_u), e_u + w * (e_c - e_u), var)
        return guidance_mix(guided, Prediction(x0_c, e_c, var), active)


class DynamicThresholding(DenoiserWrapper):
    """Dynamic thresholding of the data prediction (Imagen, Saharia et al. 2022; DPM-Solver++ sec. 5).

    Per sample, ``s = quantile(|x0|, ratio)`` clipped to ``[1, max_value]``; x0 is clipped to
    ``[-s, s]`` and divided by ``s``, and eps is recomputed from it.
    """

    def __init__(self, inner: DenoiserBase, ratio: float = 0.995, max_value: float = 1.0):
        super().__init__(inner)
        if not 0 < ratio <= 1:
            raise ValueError("ratio must lie in (0, 1]")
        self.ratio = ratio
        self.max_value = max_value

    def predict(self, x: Tensor, t: float | Tensor, *, ctx: StepContext | None = None, **cond: Any) -> Prediction:
        p = self.inner.predict(x, t, ctx=ctx, **cond)
        flat = p.x0.reshape(p.x0.shape[0], -1).abs().float()
        s = torch.quantile(flat, self.ratio, dim=1).clamp(min=1.0, max=self.max_value)
        s = s.to(p.x0.dtype).reshape(-1, *([1] * (x.ndim - 1)))
        x0 = p.x0.clamp(-s, s) / s
        a, sg = self.coefficients(x, t)
        return Prediction(x0, (x - a * x0) / sg, p.variance)


class ClipDataPrediction(DenoiserWrapper):
    """Static clipping of the data prediction to ``[-limit, limit]`` (DDPM's sampler, Ho et al. 2020; diffusers'
    ``clip_sample`` / ``clip_sample_range``), with eps recomputed from the clipped x0 (GLIDE's choice, and the
    same posterior mean as diffusers' ``DDPMScheduler``).  It changes the ODE being solved, so fewstep applies it
    only when asked (``load_model(..., clipping="config")``, docs/diffusers.md)."""

    def __init__(self, inner: DenoiserBase, limit: float = 1.0):
        super().__init__(inner)
        if not limit > 0:
            raise ValueError(f"the clipping limit must be positive, got {limit}")
        self.limit = float(limit)

    def predict(self, x: Tensor, t: float | Tensor, *, ctx: StepContext | None = None, **cond: Any) -> Prediction:
        p = self.inner.predict(x, t, ctx=ctx, **cond)
        x0 = p.x0.clamp(-self.limit, self.limit)
        a, sg = self.coefficients(x, t)
        return Prediction(x0, (x - a * x0) / sg, p.variance)


def wrapper_chain(denoiser: Any) -> Iterator[Any]:
    """``denoiser`` and every denoiser it wraps, outermost first (the ``.inner`` chain of :class:`DenoiserWrapper`):
    the one walk over wrappers that reading attached data, the base model or its fingerprint needs."""
    d = denoiser
    while d is not None:
        yield d
        d = getattr(d, "inner", None)


def innermost(denoiser: Any) -> Any:
    """The denoiser at the bottom of ``denoiser``'s wrapper chain (the model itself)."""
    for d in wrapper_chain(denoiser):
        last = d
    return last


def find_attached(denoiser: Any, name: str) -> Any:
    """The object attached to ``denoiser`` or to a denoiser it wraps (``.inner`` chain) under attribute ``name``
    (what ``load_model`` attaches next to the network, :mod:`fewstep.attachments`)."""
    for d in wrapper_chain(denoiser):
        found = vars(d).get(name) if hasattr(d, "__dict__") else None
        if found is not None:
            return found
    return None
