"""Points inside an object's visual hull: where splats should start on an orbit of masked views.

A point belongs to the hull when it projects inside the object's mask in (almost) every view. On a generated orbit
the views do not quite agree, so ``max_misses`` views may see a point outside their mask and it is still kept: one
wrong silhouette then cannot carve away what the others see. Each point takes its colour from the view that looks
at it most squarely from outside (the camera nearest the direction from the hull's centre to the point), the view
most likely to see that side of the object.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from multiview.camera import Camera

BATCH = 20_000  # candidate points projected at once
MAX_ROUNDS = 200  # batches drawn at most: a hull of 1/4000 of the sampled cube still fills 1,000 points
EMPTY_ROUNDS = 10  # batches without a single hull point after which the masks are taken to share no volume


def visual_hull_points(cameras: Sequence[Camera], masks: Sequence[np.ndarray], images: Sequence[np.ndarray],
                       num_points: int, max_misses: int = 1,
                       seed: int = 0) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """([P, 3] float32 points, [P, 3] uint8 colours), P <= ``num_points``, uniform in the hull of ``masks``.

    cameras: C views; masks: C arrays [H, W] (float or bool, > 0.5 = object) at each camera's size; images: C
    arrays [H, W, 3] uint8. Points are drawn in the cube around the cameras' common view ball
    (``look_centre``) and kept when at most ``max_misses`` views see them outside their mask or image. Fewer than
    ``num_points`` come back when the hull is small or the masks disagree (none at all when they share nothing).
    """
    if not (len(cameras) == len(masks) == len(images)) or not cameras:
        raise ValueError(f"visual_hull_points needs as many masks and images as cameras, got {len(cameras)}, "
                         f"{len(masks)}, {len(images)}")
    centre, radius = look_centre(cameras)
    generator = np.random.default_rng(seed)
    kept: list[np.ndarray] = []
    count = 0
    for round_ in range(MAX_ROUNDS):
        candidates = centre + radius * generator.uniform(-1.0, 1.0, (BATCH, 3))
        inside = _views_inside(cameras, masks, candidates)
        hull = candidates[(len(cameras) - inside.sum(axis=0)) <= max_misses]
        kept.append(hull)
        count += len(hull)
        if count >= num_points or (count == 0 and round_ + 1 >= EMPTY_ROUNDS):
            break
    points = np.concatenate(kept)[:num_points]
    return points.astype(np.float32), _colours(cameras, images, points, centre)


def look_centre(cameras: Sequence[Camera]) -> tuple[np.ndarray, float]:
    """(centre [3], radius): the point nearest every optical axis (least squares; the cameras' centroid moved one
    mean distance ahead when the axes are near parallel) and the largest ball about it inside every view."""
    centres = np.stack([c.center for c in cameras])
    forwards = np.stack([c.world_from_cam[:3, 2] for c in cameras])
    off_axis = np.eye(3)[None] - forwards[:, :, None] * forwards[:, None, :]
    system, target = off_axis.sum(0), np.einsum("cij,cj->i", off_axis, centres)
    values = np.linalg.svd(system, compute_uv=False)
    if len(cameras) >= 2 and values[-1] > 1e-3 * values[0]:
        centre = np.linalg.solve(system, target)
    else:
        centre = centres.mean(0) + forwards.mean(0) * max(float(np.linalg.norm(centres - centres.mean(0), axis=1)
                                                                 .mean()), 1.0)  # fmt: skip
    radii = []
    for camera, forward, position in zip(cameras, forwards, centres):
        half = min(math.atan2(camera.width / 2, camera.fx), math.atan2(camera.height / 2, camera.fy))
        radii.append(max(float(np.dot(centre - position, forward)), 1e-6) * math.sin(half))
    return centre, min(radii)


def _views_inside(cameras: Sequence[Camera], masks: Sequence[np.ndarray], points: np.ndarray) -> np.ndarray:
    """[C, P] bool: whether each point projects inside each view's image and mask, in front of the camera."""
    inside = np.zeros((len(cameras), len(points)), bool)
    for index, (camera, mask) in enumerate(zip(cameras, masks)):
        local = points @ camera.cam_from_world[:3, :3].T + camera.cam_from_world[:3, 3]
        ahead = local[:, 2] > 1e-6
        uv = camera.project(points)
        u, v = np.round(uv[:, 0]).astype(np.int64), np.round(uv[:, 1]).astype(np.int64)
        within = ahead & (u >= 0) & (v >= 0) & (u < mask.shape[1]) & (v < mask.shape[0])
        inside[index, within] = np.asarray(mask)[v[within], u[within]] > 0.5
    return inside


def _colours(cameras: Sequence[Camera], images: Sequence[np.ndarray], points: np.ndarray,
             centre: np.ndarray) -> np.ndarray:  # fmt: skip
    """[P, 3] uint8: each point's pixel in the view whose camera direction from ``centre`` is nearest its own."""
    if len(points) == 0:
        return np.zeros((0, 3), np.uint8)
    outward = points - centre
    outward /= np.maximum(np.linalg.norm(outward, axis=1, keepdims=True), 1e-12)
    views = np.stack([c.center - centre for c in cameras])
    views /= np.maximum(np.linalg.norm(views, axis=1, keepdims=True), 1e-12)
    best = np.argmax(outward @ views.T, axis=1)
    colours = np.zeros((len(points), 3), np.uint8)
    for index, (camera, image) in enumerate(zip(cameras, images)):
        chosen = best == index
        uv = camera.project(points[chosen])
        u = np.clip(np.round(uv[:, 0]).astype(np.int64), 0, image.shape[1] - 1)
        v = np.clip(np.round(uv[:, 1]).astype(np.int64), 0, image.shape[0] - 1)
        colours[chosen] = image[v, u]
    return colours
