"""The near-exact solutions of a model's probability-flow ODE for given seeds, cached on disk.

The solution is :func:`fewstep.tuning.reference.near_exact_batch` (``x0_hat(x(t_min), t_min)`` from the
``x_T`` that :func:`fewstep.generate` draws for a seed, solved from the process's default start ``t_start``;
see :mod:`fewstep.tuning.reference`).

:class:`NearExact` is that solution as a function ``seeds -> images`` over one seed range, kept
in ``<cache_dir>/<key>/<start>-<stop>.safetensors`` chunk files (``images`` float32
``(stop - start, C, H, W)``; metadata: format, key, the key's description).  The key hashes the
model (:func:`fewstep.fingerprint.model_fingerprint`), the sample shape and the solver settings; each chunk is
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
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .._io import atomic_write_bytes
from ..fingerprint import model_fingerprint
from .reference import ReferenceSettings, near_exact_batch

__all__ = ["FORMAT", "NearExact", "reference_solutions"]

FORMAT = "fewstep-near-exact-1"

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
