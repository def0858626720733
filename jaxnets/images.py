"""Generated images: PNG grids and the image statistics the image judge (jaxnets/evaluators) uses.

- `save_grid(images, path, ncol)`: (N, H, W, C) in [0, 1] -> one PNG (matplotlib, no display).
- `save_figure(panels, path)`: several titled grids side by side (e.g. AE vs VAE latent maps).
- `frechet_distance(feats_a, feats_b)`: ||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^1/2) of
  Gaussian fits, in float64 (FID's formula; here in the judge's feature space).
- `class_coverage(predicted)`: 1 - total variation between the predicted-class histogram and
  uniform (1 for balanced samples, 0.1 for total mode collapse).
PNGs are written atomically (a temporary file renamed over the target: never half a file, and a
symlink at the target is replaced, not followed).
"""
from __future__ import annotations

import io
import math
from typing import Sequence

import numpy as np

from jaxnets import storage


def _grid_array(images: np.ndarray, ncol: int, pad: int = 1) -> np.ndarray:
    images = np.clip(np.asarray(images, np.float32), 0.0, 1.0)
    n, h, w, c = images.shape
    nrow = math.ceil(n / ncol)
    grid = np.ones((nrow * (h + pad) + pad, ncol * (w + pad) + pad, c), np.float32)
    for k in range(n):
        r, q = divmod(k, ncol)
        grid[pad + r * (h + pad): pad + r * (h + pad) + h, pad + q * (w + pad): pad + q * (w + pad) + w] = images[k]
    return grid[..., 0] if c == 1 else grid


def save_figure(panels: Sequence[tuple[str, np.ndarray, int]], path: str, *,
                row_labels: Sequence[str] | None = None, scale: float = 0.18) -> str:
    """panels: (title, images (N, H, W, C) in [0, 1], ncol). Writes one PNG, returns its path."""
    import matplotlib  # heavy (~0.5 s): only when a report draws a figure
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after use("Agg"): no display backend

    grids = [(title, _grid_array(images, ncol)) for title, images, ncol in panels]
    widths = [g.shape[1] for _, g in grids]
    height = max(g.shape[0] for _, g in grids)
    fig, axes = plt.subplots(1, len(grids), figsize=(scale * sum(widths) / 8 + 0.6, scale * height / 8 + 0.6),
                             gridspec_kw={"width_ratios": widths}, squeeze=False)
    for ax, (title, grid) in zip(axes[0], grids):
        ax.imshow(grid, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        if row_labels is not None:
            rows = len(row_labels)
            ax.set_yticks([(i + 0.5) * grid.shape[0] / rows for i in range(rows)], list(row_labels), fontsize=7)
    fig.tight_layout()
    storage.makedirs(storage.resolve(path).parent)
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=100, format="png")
    plt.close(fig)
    storage.write_bytes(path, buffer.getvalue())
    return path


def save_grid(images: np.ndarray, path: str, ncol: int = 10, title: str = "",
              row_labels: Sequence[str] | None = None) -> str:
    return save_figure([(title, images, ncol)], path, row_labels=row_labels)


def frechet_distance(feats_a: np.ndarray, feats_b: np.ndarray) -> float:
    from scipy import linalg  # heavy: only when a judge scores samples

    a, b = np.asarray(feats_a, np.float64), np.asarray(feats_b, np.float64)
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = linalg.sqrtm(cov_a @ cov_b)
    if np.iscomplexobj(root):   # rounding can leave tiny imaginary parts
        root = root.real
    return float(np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a + cov_b - 2.0 * root))


def class_coverage(predicted: np.ndarray, num_classes: int = 10) -> float:
    share = np.bincount(np.asarray(predicted), minlength=num_classes) / max(len(predicted), 1)
    return float(np.minimum(share, 1.0 / num_classes).sum())
