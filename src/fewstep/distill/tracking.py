"""FID of a generator tracked during distillation, logged and plotted against generator images seen.

The SiD losses oscillate and say little about sample quality (Zhou et al. 2024, sec. 5), so the
run's signal is the FID of the EMA generator, measured every ``sample_every_steps`` on ``fid_n``
samples from fixed seeds (a small ``fid_n`` is biased upwards but comparable along one run).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor

from .._io import atomic_write_bytes
from ..metrics.evaluate import evaluate
from ..metrics.extractors import get_extractor
from ..metrics.models import reference_stats
from ..training import runlog

__all__ = ["FIDTracker", "plot_fid_curve"]


class FIDTracker:
    """Scores a sample function with :func:`fewstep.metrics.evaluate.evaluate`; loads the extractor once."""

    def __init__(self, n: int, extractor: str = "fashion", ref: str = "", seed: int = 10_000_000):
        self.n, self.extractor_name, self.ref, self.seed = int(n), extractor, ref or None, seed
        self._extractor: Any = None
        self._stats: Any = None

    def _setup(self, device: torch.device) -> None:
        if self._extractor is None:
            self._extractor = get_extractor(self.extractor_name, None, device)
            self._stats = reference_stats(self.ref, self._extractor)

    def __call__(self, sample_fn: Callable[[list[int]], Tensor], device: torch.device) -> dict[str, float]:
        self._setup(device)
        t0 = time.perf_counter()
        out = evaluate(sample_fn, self.n, self._extractor, self._stats, seed=self.seed, batch_size=250,
                       progress=False, desc="fid")
        return {"fid": float(out["fid"]), "fid_n": self.n, "fid_seconds": time.perf_counter() - t0}

    def record(self, out_dir: Path, step: int, images_seen: int, result: dict[str, float]) -> Path | None:
        """Append ``{"step", "images_seen", "fid", ...}`` to ``log.jsonl`` and redraw ``fid_vs_images.png``."""
        runlog.append(out_dir / "log.jsonl", {"step": step, "images_seen": images_seen, **result, "time": time.time()})
        return plot_fid_curve(out_dir)


def plot_fid_curve(out_dir: str | Path) -> Path | None:
    """``OUT/fid_vs_images.png``: FID against generator images seen, from the FID records of ``OUT/log.jsonl``."""
    out_dir = Path(out_dir)
    recs = [r for r in runlog.read(out_dir / "log.jsonl") if "fid" in r and "images_seen" in r]
    if not recs:
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # plotting is optional; the numbers are in log.jsonl
        return None

    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot([r["images_seen"] for r in recs], [r["fid"] for r in recs], marker="o", ms=3)
    ax.set_xlabel("generator images seen")
    ax.set_ylabel(f"FID ({recs[-1].get('fid_n', '?')} samples)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    path = out_dir / "fid_vs_images.png"
    atomic_write_bytes(path, buf.getvalue())
    return path
