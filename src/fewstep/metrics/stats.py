"""Streaming feature statistics: mean and covariance in float64, plus a capped feature sample.

Batches are merged with the pairwise update of Chan, Golub & LeVeque (1979), so features are
never all held in memory and no ``E[xx^T] - mu mu^T`` cancellation occurs.  KID and precision/
recall need the features themselves: the first ``max_features`` are kept (generated samples
come from independent seeds and ``fewstep stats`` shuffles data sets, so they are a uniform
random subset).  Saved as ``.npz`` with pytorch-fid's ``mu`` and ``sigma`` plus the extractor's
name and fingerprint, which :meth:`FeatureStats.check_compatible` compares before any metric.
"""

from __future__ import annotations

import io
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from torch import Tensor

from .._io import atomic_write_bytes

__all__ = ["FeatureStats"]

FORMAT = "fewstep-stats-1"


@dataclass
class FeatureStats:
    """Running ``n``, mean and centred scatter ``M2 = sum (x - mean)(x - mean)^T`` of ``dim``-d features."""

    extractor: str
    fingerprint: str
    dim: int
    max_features: int = 10_000
    n: int = 0
    mean: np.ndarray = field(default=None, repr=False)  # type: ignore[assignment]
    m2: np.ndarray = field(default=None, repr=False)  # type: ignore[assignment]
    kept: list[np.ndarray] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        if self.mean is None:
            self.mean = np.zeros(self.dim)
        if self.m2 is None:
            self.m2 = np.zeros((self.dim, self.dim))

    @classmethod
    def like(cls, extractor, max_features: int = 10_000) -> "FeatureStats":
        """Empty statistics for a :class:`~fewstep.metrics.features.FeatureExtractor`."""
        return cls(extractor.name, extractor.fingerprint(), int(extractor.num_features), max_features)

    def _empty(self) -> "FeatureStats":
        return FeatureStats(self.extractor, self.fingerprint, self.dim, self.max_features)

    @property
    def n_kept(self) -> int:
        return sum(len(k) for k in self.kept)

    def update(self, features: Tensor | np.ndarray) -> "FeatureStats":
        """Add a batch ``(b, dim)`` of features."""
        x = features.detach().cpu().double().numpy() if isinstance(features, Tensor) else np.asarray(features, np.float64)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"expected features of shape (batch, {self.dim}), got {x.shape}")
        if not np.isfinite(x).all():
            raise ValueError("features contain NaN or infinity; check the samples and the feature extractor")
        if len(x) == 0:
            return self
        batch = self._empty()
        batch.n, batch.mean = len(x), x.mean(0)
        c = x - batch.mean
        batch.m2 = c.T @ c
        batch.kept = [x.astype(np.float32)]
        self._absorb(batch)
        return self

    def _absorb(self, other: "FeatureStats") -> None:
        n = self.n + other.n
        if other.n == 0:
            return
        delta = other.mean - self.mean
        self.m2 = self.m2 + other.m2 + np.outer(delta, delta) * (self.n * other.n / n)
        self.mean = self.mean + delta * (other.n / n)
        self.n = n
        room = self.max_features - self.n_kept
        for k in other.kept:
            if room <= 0:
                break
            self.kept.append(k[:room])
            room -= len(self.kept[-1])

    def merge(self, other: "FeatureStats") -> "FeatureStats":
        """Statistics of the union of both sets (``self``'s kept features first)."""
        self.check_compatible(other)
        out = self._empty()
        out._absorb(self)
        out._absorb(other)
        return out

    @property
    def mu(self) -> np.ndarray:
        return self.mean.copy()

    @property
    def sigma(self) -> np.ndarray:
        """Unbiased covariance (``numpy.cov``'s, as pytorch-fid)."""
        if self.n < 2:
            raise ValueError(f"a covariance needs at least 2 samples, these statistics hold {self.n}")
        return self.m2 / (self.n - 1)

    @property
    def features(self) -> np.ndarray:
        """The kept features, ``(min(n, max_features), dim)`` float32."""
        return np.concatenate(self.kept) if self.kept else np.zeros((0, self.dim), np.float32)

    def check_compatible(self, other: "FeatureStats") -> None:
        """Refuse to compare statistics of different feature extractors."""
        if "unknown" in (self.extractor, other.extractor):
            raise ValueError("statistics without an extractor name (e.g. pytorch-fid's .npz) cannot be checked; "
                             "recompute them with `fewstep stats --data ... --out ref.npz`")
        if (self.extractor, self.fingerprint, self.dim) != (other.extractor, other.fingerprint, other.dim):
            raise ValueError(
                f"statistics come from different feature extractors: {self.extractor} "
                f"(hash {self.fingerprint[:12]}, {self.dim}-d) vs {other.extractor} (hash {other.fingerprint[:12]}, "
                f"{other.dim}-d); recompute the reference with the same extractor (`fewstep stats --extractor ...`)")

    def save(self, path: str | Path) -> None:
        """Write an ``.npz`` atomically: ``mu``, ``sigma`` (pytorch-fid's keys), ``n``, extractor, features."""
        buf = io.BytesIO()
        np.savez(buf, mu=self.mu, sigma=self.sigma, n=np.int64(self.n), extractor=np.str_(self.extractor),
                 fingerprint=np.str_(self.fingerprint), features=self.features, format=np.str_(FORMAT))
        atomic_write_bytes(path, buf.getvalue())

    @classmethod
    def load(cls, path: str | Path) -> "FeatureStats":
        """Read statistics saved by :meth:`save` (or pytorch-fid's ``mu``/``sigma`` ``.npz``).

        A missing, truncated or foreign file, or one holding NaN or infinite statistics, raises one clear error
        naming it and how to remake it.
        """
        path = Path(path)
        remake = f"regenerate it with `fewstep stats --data ... --out {path}`"
        if not path.is_file():
            raise FileNotFoundError(f"statistics file {path} not found; make one with `fewstep stats --data ... --out {path}`")
        try:
            loaded = np.load(path, allow_pickle=False)
            if not isinstance(loaded, np.lib.npyio.NpzFile):
                raise KeyError("it holds a single array, not an .npz archive")
            with loaded as z:
                missing = [k for k in ("mu", "sigma") if k not in z.files]
                if missing:
                    raise KeyError(f"it has no {' or '.join(repr(k) for k in missing)} array (keys: "
                                   f"{', '.join(z.files) or 'none'})")
                mu, sigma = z["mu"].astype(np.float64), z["sigma"].astype(np.float64)
                n = int(z["n"]) if "n" in z.files else 0
                feats = z["features"] if "features" in z.files else np.zeros((0, len(mu)), np.float32)
                name = str(z["extractor"]) if "extractor" in z.files else "unknown"
                fp = str(z["fingerprint"]) if "fingerprint" in z.files else ""
        except KeyError as err:
            raise ValueError(f"{path} is not a fewstep statistics file: {err.args[0]}; {remake}") from None
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error):
            raise ValueError(f"{path} is not a readable statistics file (truncated, corrupt or not an .npz "
                             f"archive); {remake}") from None
        if mu.ndim != 1 or sigma.shape != (len(mu), len(mu)):
            raise ValueError(f"{path}: sigma has shape {sigma.shape} for mu of shape {mu.shape}, expected "
                             f"{(len(mu), len(mu))}; {remake}")
        bad = [k for k, v in (("mu", mu), ("sigma", sigma), ("features", feats)) if not np.isfinite(v).all()]
        if bad:  # a metric computed from them would be NaN (and "fid": NaN is not valid JSON)
            raise ValueError(f"{path}: {' and '.join(bad)} hold{'s' if len(bad) == 1 else ''} NaN or infinite values; "
                             f"{remake}")
        stats = cls(name, fp, len(mu), max(len(feats), 1), n, mu, sigma * max(n - 1, 1))
        stats.kept = [feats] if len(feats) else []
        if n == 0:  # pytorch-fid file: no count; keep sigma exact
            stats.n, stats.m2 = 2, sigma.copy()
        return stats
