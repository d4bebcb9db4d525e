"""Self-contained HTML report of a model benchmark: metric table, plots and sample grids, with
every image embedded as a base64 data URI (the file opens anywhere, offline)."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor

from .._io import atomic_write_bytes, atomic_write_text

__all__ = ["image_grid_png", "data_uri", "write_html_report"]

_STYLE = """body{font-family:system-ui,sans-serif;margin:2em;color:#222}table{border-collapse:collapse;margin:1em 0}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#f3f3f3}img{image-rendering:pixelated}
.grids td{text-align:center;vertical-align:top}.grids img{width:200px}td:first-child,th:first-child{text-align:left}.plots img{max-width:48%;margin-right:1%}"""


def image_grid_png(images: Tensor, nrow: int = 8, scale: int = 2) -> bytes:
    """PNG bytes of a grid of images ``(k, C, H, W)`` in ``[-1, 1]`` (1-pixel gaps, nearest upscaling)."""
    from PIL import Image

    k, c, h, w = images.shape
    ncol = min(nrow, k)
    rows = -(-k // ncol)
    canvas = torch.ones(c, rows * (h + 1) + 1, ncol * (w + 1) + 1)
    for i, img in enumerate(images.float().clamp(-1, 1)):
        r, q = divmod(i, ncol)
        canvas[:, 1 + r * (h + 1):1 + r * (h + 1) + h, 1 + q * (w + 1):1 + q * (w + 1) + w] = img
    arr = ((canvas + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    pil = Image.fromarray(arr[..., 0] if c == 1 else arr)
    if scale > 1:
        pil = pil.resize((pil.width * scale, pil.height * scale), Image.NEAREST)
    buf = io.BytesIO()
    pil.save(buf, format="PNG")
    return buf.getvalue()


def data_uri(png: bytes | Path) -> str:
    data = Path(png).read_bytes() if isinstance(png, Path) else png
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return html.escape(str(v))


def write_html_report(path: str | Path, title: str, meta: dict[str, Any], rows: Sequence[dict[str, Any]],
                      columns: Sequence[str], plots: Sequence[Path], grids: dict[tuple[str, str, int], bytes]) -> None:
    """Write ``path``: a table of ``rows`` (``columns``), the ``plots`` and a solver x NFE matrix of sample grids per grid kind."""
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1><ul>"]
    parts += [f"<li><b>{html.escape(str(k))}</b>: {_fmt(v)}</li>" for k, v in meta.items()]
    parts.append("</ul><h2>Results</h2><table><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in columns) + "</tr>")
    for row in rows:
        parts.append("<tr>" + "".join(f"<td>{_fmt(row.get(c, ''))}</td>" for c in columns) + "</tr>")
    parts.append("</table><h2>Plots</h2><div class='plots'>")
    parts += [f"<img alt='{html.escape(p.stem)}' src='{data_uri(p)}'>" for p in plots]
    parts.append("</div><h2>Samples</h2><p>The same seeds in every cell.</p>")
    for grid in sorted({g for _, g, _ in grids}):
        solvers = list(dict.fromkeys(s for s, g, _ in grids if g == grid))
        nfes = sorted({n for _, g, n in grids if g == grid})
        parts.append(f"<h3>grid: {html.escape(grid)}</h3><table class='grids'><tr><th>solver</th>"
                     + "".join(f"<th>NFE {n}</th>" for n in nfes) + "</tr>")
        for s in solvers:
            cells = [f"<td><img class='sample-grid' alt='{html.escape(f'{s} {grid} nfe {n}')}' "
                     f"src='{data_uri(grids[(s, grid, n)])}'></td>" if (s, grid, n) in grids else "<td>-</td>"
                     for n in nfes]
            parts.append(f"<tr><th>{html.escape(s)}</th>{''.join(cells)}</tr>")
        parts.append("</table>")
    parts.append("</body></html>\n")
    atomic_write_text(path, "".join(parts))


def write_png(path: Path, png: bytes) -> None:
    atomic_write_bytes(path, png)
