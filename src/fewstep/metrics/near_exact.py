"""Near-exact solutions of a model's probability-flow ODE for given seeds, cached on disk.

The point every deterministic solver converges to as its NFE grows, from the same ``x_T`` that
:func:`fewstep.generate` draws for a seed: with a clean end, a solver's last evaluation is at
the grid point just above ``t_min`` and lands on its data prediction, so the limit is

    x_ref = x0_hat( x(t_min), t_min ),   x(t_min) the exact ODE solution from x_T at t_start (the
    process's default start, its t_max unless the schedule's end is singular).

:func:`near_exact_batch` computes it with a high-order solver stopping at ``t_min``
(``fewstep.generate(..., clean_end=False)`` with ``nfe - 1`` evaluations) plus one data
prediction at ``t_min``: the solver's own order holds over the whole interval, no first-order
jump to ``sigma = 0`` at the end.

:class:`NearExact` is that solution as a function ``seeds -> images`` over one seed range, kept
in ``<cache_dir>/<key>/<start>-<stop>.safetensors`` chunk files (``images`` float32
``(stop - start, C, H, W)``; metadata: format, key, the key's description).  The key hashes the
model (:func:`model_fingerprint`), the sample shape and the solver settings; each chunk is
written atomically when it is done, so a killed run loses at most one chunk, and a rerun (or
another seed range overlapping it) reads finished chunks back.  A chunk file that cannot be read
or does not match is recomputed.
"""

from __future__ import annotations

import hashlib
import json
import re
import warnings
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from .._io import atomic_write_bytes

__all__ = ["FORMAT", "ReferenceSettings", "model_fingerprint", "near_exact_batch", "NearExact",
           "reference_solutions"]

FORMAT = "fewstep-near-exact-1"


@dataclass(frozen=True)
class ReferenceSettings:
    """How the near-exact solution is computed: ``solver`` at ``nfe`` evaluations on ``grid``
    (``None``: the process's default grid), in ``dtype`` (the dtype of ``x_T``).

    The defaults (DPM-Solver++(3M), 200 NFE, logSNR grid) change by about 4e-4 RMSE from 200 to
    400 NFE on ``bundled:fashion``, where 5-10 NFE solvers are 0.05-0.15 away
    (``benchmarks/reference_accuracy.py``; docs/evaluation.md, "Error to the near-exact solution")."""

    solver: str = "dpm++3m"
    nfe: int = 200
    grid: str | None = "logsnr"
    dtype: str = "float32"

    def __post_init__(self) -> None:
        from .. import solvers

        spec = solvers.get(self.solver)  # raises with the valid names
        if spec.stochastic or not spec.fixed_nfe:
            raise ValueError(f"the near-exact reference needs a deterministic fixed-NFE solver, not {self.solver!r} "
                             f"(e.g. dpm++3m or dpm++2m)")
        if not isinstance(self.nfe, int) or self.nfe < 2:
            raise ValueError(f"the near-exact reference needs at least 2 evaluations, got nfe={self.nfe!r}")
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"reference dtype must be float32 or float64, got {self.dtype!r}")

    def describe(self, process: Any) -> dict[str, Any]:
        """The settings with the grid resolved to a name (for keys and reports)."""
        return {**asdict(self), "grid": self.grid or process.default_grid}


def _feed(h: "hashlib._Hash", value: Any, depth: int = 0) -> None:
    """Hash ``value``'s content: plain values, tensors and arrays, containers, and the public
    attributes of plain objects (networks are skipped: :func:`model_fingerprint` hashes their weights)."""
    from ..denoisers import NFECounter

    if isinstance(value, (torch.nn.Module, NFECounter)):
        return
    if isinstance(value, Tensor):
        t = value.detach().to("cpu").contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif isinstance(value, np.ndarray):
        h.update(f"A{value.dtype}{value.shape}".encode() + np.ascontiguousarray(value).tobytes())
    elif value is None or isinstance(value, (str, int, float, bool)):
        h.update(repr(value).encode())
    elif isinstance(value, (list, tuple)):
        h.update(b"[")
        for v in value:
            _feed(h, v, depth)
        h.update(b"]")
    elif isinstance(value, dict):
        h.update(b"{")
        for k in sorted(value, key=str):
            h.update(str(k).encode())
            _feed(h, value[k], depth)
        h.update(b"}")
    elif depth < 4 and hasattr(value, "__dict__"):
        h.update(type(value).__qualname__.encode())
        for k in sorted(vars(value)):
            if not k.startswith("_"):
                h.update(k.encode())
                _feed(h, vars(value)[k], depth + 1)
    else:
        h.update(type(value).__qualname__.encode())


def model_fingerprint(denoiser: Any) -> str:
    """SHA-256 of what a denoiser computes: its networks' weights and buffers (``_orig_mod.`` of
    ``torch.compile`` removed), and the plain attributes of the denoiser and its wrappers (process,
    prediction type, config, an exact model's parameters).  :class:`~fewstep.denoisers.NFECounter`
    is transparent, so counting evaluations does not change the key."""
    from ..denoisers import NFECounter

    h = hashlib.sha256()
    node = denoiser
    while node is not None:
        if not isinstance(node, NFECounter):
            h.update(type(node).__qualname__.encode())
            _feed(h, {k: v for k, v in vars(node).items() if k != "inner"})
        node = getattr(node, "inner", None)
    for net in denoiser.networks():
        state = {k.replace("_orig_mod.", ""): v for k, v in net.state_dict().items()}
        _feed(h, state)
    return h.hexdigest()


def near_exact_batch(denoiser: Any, shape: Sequence[int], seeds: Sequence[int], settings: ReferenceSettings,
                     device: str | torch.device = "cpu") -> Tensor:
    """``x0_hat(x(t_min), t_min)`` for ``seeds``: ``settings.nfe - 1`` solver evaluations from the
    ``x_T`` of :func:`fewstep.generate` to ``t_min``, plus one data prediction there (float32, CPU)."""
    from ..api import generate
    from ..solvers._common import NonFiniteError
    from .sampling import DivergedError

    dtype = getattr(torch, settings.dtype)
    what = f"the near-exact reference ({settings.solver}, {settings.nfe} NFE)"
    try:
        x = generate(denoiser, shape, seeds, settings.solver, settings.nfe - 1, settings.grid, device=device,
                     dtype=dtype, clean_end=False)
    except NonFiniteError as err:
        raise DivergedError(f"{what} diverged: {err}") from err
    with torch.inference_mode():
        x0 = denoiser.predict(x, float(denoiser.process.t_min)).x0
    if not bool(torch.isfinite(x0).all()):
        raise DivergedError(f"{what} is not finite (seeds {seeds[0]}..{seeds[-1]})")
    return x0.detach().to("cpu", torch.float32).clone()


_CHUNK_NAME = re.compile(r"^(-?\d+)-(-?\d+)\.safetensors$")


class NearExact:
    """Near-exact solutions over ``seeds`` (a contiguous range) as a sample-like function
    ``ref(seeds) -> images``, computed in chunks of ``chunk_size`` seeds and cached on disk.

    With ``cache_dir=None`` nothing is written and finished chunks are kept in memory only.
    ``prepare()`` computes every missing chunk up front with a progress bar; calling the object
    computes the chunks it needs on the way.  Chunks are aligned to multiples of ``chunk_size``
    (clipped to the range), so overlapping seed ranges share their inner chunk files.
    """

    def __init__(self, denoiser: Any, shape: Sequence[int], seeds: range | Sequence[int],
                 settings: ReferenceSettings | None = None, *, cache_dir: str | Path | None = None,
                 chunk_size: int = 256, batch_size: int = 64, device: str | torch.device = "cpu",
                 progress: bool = True):
        seeds = list(seeds)
        if not seeds:
            raise ValueError("the near-exact reference needs at least one seed")
        if seeds != list(range(seeds[0], seeds[0] + len(seeds))):
            raise ValueError("the near-exact reference takes a contiguous range of seeds (e.g. range(0, 1000))")
        if chunk_size < 1 or batch_size < 1:
            raise ValueError(f"chunk_size and batch_size must be positive, got {chunk_size} and {batch_size}")
        self.denoiser, self.shape = denoiser, tuple(int(v) for v in shape)
        self.seeds = range(seeds[0], seeds[0] + len(seeds))
        self.settings = settings or ReferenceSettings()
        self.chunk_size, self.batch_size, self.device, self.progress = chunk_size, batch_size, device, progress
        self.description = {"format": FORMAT, "model": model_fingerprint(denoiser), "shape": list(self.shape),
                            **self.settings.describe(denoiser.process)}
        self.key = hashlib.sha256(json.dumps(self.description, sort_keys=True).encode()).hexdigest()[:20]
        self.folder = Path(cache_dir) / self.key if cache_dir is not None else None
        self._loaded: OrderedDict[tuple[int, int], Tensor] = OrderedDict()
        self._memory: dict[tuple[int, int], Tensor] = {}

    # -- chunks ---------------------------------------------------------------------------------
    def chunks(self, seeds: Iterable[int] | None = None) -> list[tuple[int, int]]:
        """The ``(start, stop)`` chunks holding ``seeds`` (default: the whole range), in order."""
        c, lo, hi = self.chunk_size, self.seeds.start, self.seeds.stop
        wanted = sorted({s // c for s in (self.seeds if seeds is None else seeds)})
        out = []
        for k in wanted:
            a, b = max(k * c, lo), min((k + 1) * c, hi)
            if a < b:
                out.append((a, b))
        return out

    def _path(self, a: int, b: int) -> Path:
        assert self.folder is not None
        return self.folder / f"{a}-{b}.safetensors"

    def _read(self, path: Path, a: int, b: int) -> Tensor | None:
        """The images of seeds ``a..b-1`` from chunk file ``path`` (which may cover more), or None if unusable."""
        from safetensors import safe_open

        m = _CHUNK_NAME.match(path.name)
        fa, fb = int(m.group(1)), int(m.group(2))
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                images = f.get_tensor("images")
        except Exception as err:  # truncated or foreign file: recompute it
            warnings.warn(f"near-exact cache file {path} is unreadable ({type(err).__name__}); recomputing it")
            return None
        if meta.get("format") != FORMAT or meta.get("key") != self.key \
                or tuple(images.shape) != (fb - fa, *self.shape) or not bool(torch.isfinite(images).all()):
            warnings.warn(f"near-exact cache file {path} does not match its key or shape; recomputing it")
            return None
        return images[a - fa:b - fa]

    def _find(self, a: int, b: int) -> Tensor | None:
        """A finished chunk: in memory, or a cache file covering seeds ``a..b-1``."""
        if (a, b) in self._memory:
            return self._memory[(a, b)]
        if self.folder is None or not self.folder.is_dir():
            return None
        exact = self._path(a, b)
        candidates = [exact] if exact.is_file() else []
        for p in sorted(self.folder.glob("*.safetensors")):
            m = _CHUNK_NAME.match(p.name)
            if m and p != exact and int(m.group(1)) <= a and b <= int(m.group(2)):
                candidates.append(p)
        for p in candidates:
            images = self._read(p, a, b)
            if images is not None:
                return images
        return None

    def _compute(self, a: int, b: int, bar: tqdm) -> Tensor:
        parts = []
        for s in range(a, b, self.batch_size):
            batch = list(range(s, min(s + self.batch_size, b)))
            parts.append(near_exact_batch(self.denoiser, self.shape, batch, self.settings, self.device))
            bar.update(len(batch))
        images = torch.cat(parts)
        if self.folder is None:
            self._memory[(a, b)] = images
        else:
            from safetensors.torch import save

            meta = {"format": FORMAT, "key": self.key, "description": json.dumps(self.description, sort_keys=True),
                    "seeds": f"{a}-{b}"}
            atomic_write_bytes(self._path(a, b), save({"images": images.contiguous()}, metadata=meta))
        return images

    def missing(self, seeds: Iterable[int] | None = None) -> list[tuple[int, int]]:
        """The chunks (of ``seeds``, default all) not finished yet."""
        return [c for c in self.chunks(seeds) if self._find(*c) is None]

    def prepare(self, seeds: Iterable[int] | None = None) -> int:
        """Compute the missing chunks of ``seeds`` (default: the whole range); returns the number of seeds computed."""
        todo = self.missing(seeds)
        total = sum(b - a for a, b in todo)
        if total:
            s = self.settings
            bar = tqdm(total=total, unit="img", disable=not self.progress, leave=False,
                       desc=f"near-exact reference ({s.solver}, {s.nfe} NFE)")
            for a, b in todo:
                self._compute(a, b, bar)
            bar.close()
        return total

    # -- lookup ---------------------------------------------------------------------------------
    def _chunk(self, a: int, b: int) -> Tensor:
        if (a, b) in self._loaded:
            self._loaded.move_to_end((a, b))
            return self._loaded[(a, b)]
        images = self._find(a, b)
        if images is None:
            self.prepare(range(a, b))
            images = self._find(a, b)
            assert images is not None
        self._loaded[(a, b)] = images
        while len(self._loaded) > 4:  # evaluation visits seeds in order: a few chunks suffice
            self._loaded.popitem(last=False)
        return images

    def __call__(self, seeds: Sequence[int]) -> Tensor:
        """The reference images of ``seeds`` (each inside the range), float32 ``(len(seeds), C, H, W)`` on the CPU."""
        seeds = [int(s) for s in seeds]
        outside = [s for s in seeds if s not in self.seeds]
        if outside:
            raise ValueError(f"seed {outside[0]} is outside the near-exact reference's seeds "
                             f"{self.seeds.start}..{self.seeds.stop - 1}")
        out = []
        for s in seeds:
            a, b = next(c for c in self.chunks([s]))
            out.append(self._chunk(a, b)[s - a])
        return torch.stack(out)

    def __len__(self) -> int:
        return len(self.seeds)


def reference_solutions(denoiser: Any, shape: Sequence[int], seeds: range | Sequence[int],
                        settings: ReferenceSettings | None = None, *, cache_dir: str | Path | None = None,
                        chunk_size: int = 256, batch_size: int = 64, device: str | torch.device = "cpu",
                        progress: bool = True) -> Tensor:
    """Near-exact ODE solutions ``(len(seeds), C, H, W)`` for a contiguous range of ``seeds`` from
    the ``x_T`` that :func:`fewstep.generate` draws; cached under ``cache_dir`` (see :class:`NearExact`)."""
    ref = NearExact(denoiser, shape, seeds, settings, cache_dir=cache_dir, chunk_size=chunk_size,
                    batch_size=batch_size, device=device, progress=progress)
    ref.prepare()
    return ref(list(ref.seeds))
