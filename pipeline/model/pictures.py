"""Pictures a run logs: a grid of grey images as a PNG (the GAN's samples per epoch)."""

from __future__ import annotations

import numpy as np


def write_grid_png(images: np.ndarray, path: str, zoom: int = 4) -> None:
    """``images`` (rows, columns, height, width), values in [0, 1], as one PNG grid; each
    pixel becomes ``zoom`` x ``zoom`` (8x8 digits are too small to see otherwise)."""
    from PIL import Image

    rows, cols, h, w = images.shape
    grid = images.transpose(0, 2, 1, 3).reshape(rows * h, cols * w)
    pixels = (np.clip(grid, 0, 1) * 255).astype(np.uint8)
    Image.fromarray(pixels, mode="L").resize(
        (cols * w * zoom, rows * h * zoom), Image.Resampling.NEAREST
    ).save(path)
