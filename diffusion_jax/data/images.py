"""Images in and out: [-1, 1] floats <-> uint8, sample grids, PNG files.

grid = images.make_grid(samples, ncol=8)       # [N, H, W, C] in [-1, 1] -> uint8 [H', W', C]
images.save_grid(samples, "samples/step_0001000.png", scale=4)
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np


def to_uint8(x: np.ndarray) -> np.ndarray:
    """[-1, 1] floats -> uint8 by round((x + 1) * 127.5), clipped (DDPM's convention)."""
    return np.clip(np.round((np.asarray(x, np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def make_grid(x: np.ndarray, ncol: int | None = None, pad: int = 1) -> np.ndarray:
    """Tiles N images [N, H, W, C] (floats in [-1, 1] or uint8) into one uint8 image, row-major,
    `ncol` per row (default: a near-square grid), `pad` white pixels between tiles."""
    x = np.asarray(x)
    if x.ndim != 4:
        raise ValueError(f"make_grid needs images [N, H, W, C], got shape {x.shape}.")
    if x.dtype != np.uint8:
        x = to_uint8(x)
    n, h, w, c = x.shape
    ncol = ncol or math.ceil(math.sqrt(n))
    nrow = math.ceil(n / ncol)
    grid = np.full((nrow * (h + pad) + pad, ncol * (w + pad) + pad, c), 255, np.uint8)
    for i in range(n):
        r, col = divmod(i, ncol)
        top, left = pad + r * (h + pad), pad + col * (w + pad)
        grid[top : top + h, left : left + w] = x[i]
    return grid


def save_grid(x: np.ndarray, path: str | Path, ncol: int | None = None, scale: int = 0) -> Path:
    """Saves `make_grid(x)` as a PNG; small images are enlarged (nearest) to >= 32 px per tile
    unless `scale` is given."""
    from PIL import Image

    x = np.asarray(x)
    if not scale:
        scale = max(1, math.ceil(32 / x.shape[1]))
    grid = make_grid(x, ncol)
    if scale > 1:
        grid = grid.repeat(scale, axis=0).repeat(scale, axis=1)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid).save(path)
    return path
