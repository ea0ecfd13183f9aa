"""The input view framed as the generator's training renders frame their objects.

Training clips (``generate.dataset``) show an asset centred, its largest bounding-box side 1, from ``radius`` with a
horizontal field of view ``fov_deg`` (the model's ``OrbitDefaults``). The object's 2D box then spans about
``EXTENT_PER_SIDE / (2 radius tan(fov / 2))`` of the image side: ``bench/framing_bench.py`` measured a median of
0.83 of the side (0.63-0.90 for 80% of the views) on four assets at radius 2 and 33.8 degrees, where the formula
gives 0.82. A photo's object is cropped to its box, centred, and scaled to fill that share (``frame_object``);
``Framing`` keeps the mapping, so a benchmark can put the result back into the photo's frame.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import PIL.Image

EXTENT_PER_SIDE = 1.0  # the object's 2D box side per unit of its largest 3D side, at the training distance (median)
MAX_FILL = 0.95  # of the image side: beyond it the object's edges would touch the frame


def training_fill(radius: float, fov_deg: float) -> float:
    """The share of the image side an object's larger 2D side fills in training renders from ``radius`` with a
    horizontal field of view ``fov_deg``.

    >>> round(training_fill(2.0, 33.8), 3)  # the generator's training renders (SV3D's too)
    0.823
    """
    return min(MAX_FILL, EXTENT_PER_SIDE / (2.0 * radius * math.tan(math.radians(fov_deg) / 2.0)))


@dataclass(frozen=True)
class Framing:
    """Where the model's image lies in the photo: model pixel (u, v) shows photo pixel
    ``(origin + (u + 0.5, v + 0.5) / scale - 0.5)``."""

    origin: tuple[float, float]  # photo coordinates (x, y) of the model image's top-left corner
    scale: float  # model pixels per photo pixel
    size: int  # the model image's side, pixels
    fill: float  # share of the side the object's box fills
    box: tuple[int, int, int, int]  # the object's box in the photo: left, top, right, bottom (exclusive)

    def to_json(self) -> dict:
        return asdict(self)


def frame_object(rgb: np.ndarray, alpha: np.ndarray, size: int, fill: float,
                 cut_out: bool = True) -> tuple[np.ndarray, np.ndarray, Framing]:  # fmt: skip
    """The object of ``rgb`` [H, W, 3] uint8 (``alpha`` [H, W] float in [0, 1]) centred in a ``size`` square, its
    box's larger side ``fill`` of it: ([size, size, 3] uint8, [size, size] float32 alpha, Framing).

    ``cut_out``: the object is composited on white (the generator's background); otherwise the photo is kept as it
    is and what lies beyond its edges is filled with the median colour of its border.
    """
    if not 0.0 < fill <= 1.0:
        raise ValueError(f"fill {fill} must lie in (0, 1]")
    inside = alpha > 0.5
    rows, cols = np.flatnonzero(inside.any(axis=1)), np.flatnonzero(inside.any(axis=0))
    if len(rows) == 0:
        raise ValueError("frame_object needs an alpha with at least one pixel above 0.5")
    box = (int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1)
    side = max(box[2] - box[0], box[3] - box[1]) / fill
    origin = ((box[0] + box[2] - side) / 2.0, (box[1] + box[3] - side) / 2.0)
    if cut_out:
        fill_colour = np.full(3, 255.0, np.float32)
    else:
        fill_colour = np.median(np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]]), axis=0).astype(np.float32)
    # only the part of the photo the square covers is converted (a 24-megapixel photo would cost seconds)
    left, top = max(0, math.floor(origin[0]) - 1), max(0, math.floor(origin[1]) - 1)
    right, bottom = math.ceil(origin[0] + side) + 1, math.ceil(origin[1] + side) + 1
    rgb, alpha = rgb[top:bottom, left:right], alpha[top:bottom, left:right, None].astype(np.float32)
    pixels = rgb.astype(np.float32)
    if cut_out:
        pixels = pixels * alpha + 255.0 * (1.0 - alpha)
    local = (origin[0] - left, origin[1] - top)
    image = _resample(pixels, local, side, size, fill_colour)
    mask = _resample(alpha, local, side, size, np.zeros(1, np.float32))[..., 0]
    scale = size / side
    framed = np.clip(image + 0.5, 0, 255).astype(np.uint8)
    return framed, np.clip(mask, 0.0, 1.0), Framing((float(origin[0]), float(origin[1])), float(scale), int(size),
                                                    float(fill), box)  # fmt: skip


def _resample(values: np.ndarray, origin: tuple[float, float], side: float, size: int,
              outside: np.ndarray) -> np.ndarray:  # fmt: skip
    """The square of ``values`` [H, W, C] float32 at ``origin`` with side ``side`` (photo pixels), ``outside``
    [C] beyond the photo, resampled to [size, size, C] (Lanczos; block means first where it shrinks more than 2x,
    so that a large photo costs memory in proportion to the model's image, not its own)."""
    height, width, channels = values.shape
    shrink = max(1, int(side // (2 * size)))
    x0, y0 = math.floor(origin[0]) - shrink, math.floor(origin[1]) - shrink
    n = shrink * math.ceil((math.ceil(side) + 3 * shrink) / shrink)
    canvas = np.empty((n, n, channels), np.float32)
    canvas[:] = outside
    top, left = max(y0, 0), max(x0, 0)
    bottom, right = min(y0 + n, height), min(x0 + n, width)
    if bottom > top and right > left:
        canvas[top - y0 : bottom - y0, left - x0 : right - x0] = values[top:bottom, left:right]
    if shrink > 1:
        canvas = canvas.reshape(n // shrink, shrink, n // shrink, shrink, channels).mean(axis=(1, 3))
    box = ((origin[0] - x0) / shrink, (origin[1] - y0) / shrink)
    out = np.empty((size, size, channels), np.float32)
    for c in range(channels):
        plane = PIL.Image.fromarray(np.ascontiguousarray(canvas[..., c]), mode="F")
        out[..., c] = np.asarray(plane.resize((size, size), PIL.Image.Resampling.LANCZOS,
                                              box=(box[0], box[1], box[0] + side / shrink, box[1] + side / shrink)))
    return out
