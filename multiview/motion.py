"""What moves in a video, without a learned model: masks that keep structure from motion on the static background.

SfM assumes a rigid world; people walking through a video give it matches that move with them, which bend or break
the poses. For each frame, dense optical flow (OpenCV's Farneback) to its neighbours in time is tested against the
camera's own motion:

- a camera that stands still (a rig's camera: the background's flow is under ``STILL_FLOW_PX``): a pixel moves when
  its flow does;
- a moving camera: the flow of the static background obeys one epipolar geometry, a fundamental matrix fitted to the
  flow with RANSAC (the background is most of the picture); a pixel whose flow leaves its epipolar line by more
  than ``EPIPOLAR_PX`` (Sampson distance) moves. Motion along the epipolar lines is not caught: SfM's own RANSAC
  then handles what is left. Where a homography explains the background as well (a camera turning without moving,
  a flat scene: the fundamental matrix is then ill-determined), a pixel moves when the homography does not carry
  it where its flow goes.

The union over both neighbours is dilated (a moving silhouette's blur) and written as COLMAP masks: black where
features are ignored. Flow runs at ``FLOW_SIDE`` pixels on the longest side, so a frame costs tens of milliseconds.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

FLOW_SIDE = 320  # longest side at which flow is computed
STILL_FLOW_PX = 0.5  # median background flow (at FLOW_SIDE) under which the camera counts as still
MOVING_FLOW_PX = 1.0  # a still camera: flow above this moves
EPIPOLAR_PX = 1.5  # a moving camera: Sampson distance (or homography transfer error) above this moves
HOMOGRAPHY_SHARE = 0.95  # a homography explaining this share of F's inliers stands for the background's motion
DILATE_FRACTION = 0.02  # of the longest side: how far masks grow around what moves


def motion_masks(images: Sequence[np.ndarray]) -> list[np.ndarray]:
    """[H, W] bool per image of a video's frames in time order (True = moving); a lone frame has nothing to compare.

    ``images``: [H, W, 3] uint8 RGB frames of one camera, all of one size.
    """
    import cv2

    if len(images) < 2:
        return [np.zeros(image.shape[:2], dtype=bool) for image in images]
    height, width = images[0].shape[:2]
    scale = min(1.0, FLOW_SIDE / max(height, width))
    size = (max(8, round(width * scale)), max(8, round(height * scale)))
    grays = [cv2.cvtColor(cv2.resize(image, size, interpolation=cv2.INTER_AREA), cv2.COLOR_RGB2GRAY)
             for image in images]  # fmt: skip
    masks = []
    for i in range(len(grays)):
        moving = np.zeros(grays[0].shape, dtype=bool)
        for j in (i - 1, i + 1):
            if 0 <= j < len(grays):
                moving |= moving_pixels(grays[i], grays[j])
        radius = max(1, round(DILATE_FRACTION * max(size)))
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
        grown = cv2.dilate(moving.astype(np.uint8), kernel) > 0
        masks.append(cv2.resize(grown.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST) > 0)
    return masks


def moving_pixels(gray: np.ndarray, other: np.ndarray) -> np.ndarray:
    """[H, W] bool: pixels of ``gray`` whose flow to ``other`` (both [H, W] uint8) the camera's motion does not
    explain (see the module docstring)."""
    import cv2

    flow = cv2.calcOpticalFlowFarneback(gray, other, None, pyr_scale=0.5, levels=4, winsize=15, iterations=3,
                                        poly_n=5, poly_sigma=1.2, flags=0)  # fmt: skip
    magnitude = np.linalg.norm(flow, axis=-1)
    if np.median(magnitude) < STILL_FLOW_PX:
        return magnitude > MOVING_FLOW_PX
    height, width = gray.shape
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    source = np.stack([xs, ys], axis=-1).reshape(-1, 2)
    target = source + flow.reshape(-1, 2)
    step = max(1, len(source) // 4000)  # RANSAC on a grid of samples
    F, f_inliers = cv2.findFundamentalMat(source[::step], target[::step], cv2.FM_RANSAC, EPIPOLAR_PX, 0.999)
    H, h_inliers = cv2.findHomography(source[::step], target[::step], cv2.RANSAC, EPIPOLAR_PX)
    if H is not None and (F is None or F.shape != (3, 3) or h_inliers.sum() >= HOMOGRAPHY_SHARE * f_inliers.sum()):
        # a homography explains the background (a pan, a flat scene): F is then ill-determined; use its transfer error
        mapped = cv2.perspectiveTransform(source[None], H)[0]
        return np.linalg.norm(target - mapped, axis=-1).reshape(height, width) > EPIPOLAR_PX
    if F is None or F.shape != (3, 3):
        return np.abs(magnitude - np.median(magnitude)) > 2 * MOVING_FLOW_PX
    return sampson_distance(F, source, target).reshape(height, width) > EPIPOLAR_PX


def sampson_distance(F: np.ndarray, source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """[P] first-order geometric distance (pixels) of correspondences ``source`` -> ``target`` [P, 2] from the
    epipolar geometry ``F`` [3, 3] (x_target^T F x_source = 0)."""
    ones = np.ones((len(source), 1))
    x1, x2 = np.hstack([source, ones]), np.hstack([target, ones])
    Fx1, Ftx2 = x1 @ F.T, x2 @ F
    numerator = np.einsum("ij,ij->i", x2, Fx1) ** 2
    denominator = Fx1[:, 0] ** 2 + Fx1[:, 1] ** 2 + Ftx2[:, 0] ** 2 + Ftx2[:, 1] ** 2
    return np.sqrt(numerator / np.maximum(denominator, 1e-12))
