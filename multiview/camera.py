"""The one camera type of orbit4d: OpenCV convention, ``cam_from_world``, intrinsics in pixels."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np


@dataclass(frozen=True, eq=False)
class Camera:
    """A pinhole camera (optionally with OpenCV distortion) in the OpenCV convention.

    x right, y down, z forward; ``cam_from_world`` maps world points to camera coordinates
    (what COLMAP calls ``cam_from_world`` and gsplat calls ``viewmats``).

    Pixel coordinates are OpenCV's too: the centre of the top-left pixel is (0, 0). COLMAP, nerfstudio,
    instant-ngp and gsplat put it at (0.5, 0.5), so their principal point is ours + 0.5: files keep their
    own convention and ``multiview.conventions.colmap_K_from_opencv_K`` converts (a rasterizer that
    follows gsplat takes ``colmap_K_from_opencv_K(camera.K)``).
    """

    K: np.ndarray  # [3, 3] intrinsics in pixels
    cam_from_world: np.ndarray  # [4, 4] rigid transform, world -> camera
    width: int
    height: int
    dist: np.ndarray = field(default_factory=lambda: np.zeros(0))  # OpenCV order k1, k2, p1, p2[, k3, ...]
    time: float | None = None  # seconds, for 4D captures
    camera_id: int | None = None  # which physical camera of a rig

    def __post_init__(self) -> None:
        K = np.asarray(self.K, dtype=np.float64)
        T = np.asarray(self.cam_from_world, dtype=np.float64)
        if K.shape != (3, 3):
            raise ValueError(f"Camera.K must be 3x3, got shape {K.shape}")
        if T.shape != (4, 4):
            raise ValueError(f"Camera.cam_from_world must be 4x4, got shape {T.shape}")
        if not (np.isfinite(K).all() and np.isfinite(T).all()):
            raise ValueError("Camera has non-finite intrinsics or pose")
        object.__setattr__(self, "K", K)
        object.__setattr__(self, "cam_from_world", T)
        object.__setattr__(self, "dist", np.asarray(self.dist, dtype=np.float64).reshape(-1))
        object.__setattr__(self, "width", int(self.width))
        object.__setattr__(self, "height", int(self.height))

    @property
    def world_from_cam(self) -> np.ndarray:
        """[4, 4] camera -> world (OpenCV axes)."""
        R, t = self.cam_from_world[:3, :3], self.cam_from_world[:3, 3]
        out = np.eye(4)
        out[:3, :3] = R.T
        out[:3, 3] = -R.T @ t
        return out

    @property
    def center(self) -> np.ndarray:
        """[3] camera centre in world coordinates."""
        return self.world_from_cam[:3, 3]

    @property
    def fx(self) -> float:
        return float(self.K[0, 0])

    @property
    def fy(self) -> float:
        return float(self.K[1, 1])

    @property
    def cx(self) -> float:
        return float(self.K[0, 2])

    @property
    def cy(self) -> float:
        return float(self.K[1, 2])

    @property
    def is_pinhole(self) -> bool:
        return not np.any(self.dist)

    def replace(self, **changes) -> "Camera":
        return replace(self, **changes)

    def scaled(self, factor: float) -> "Camera":
        """The same camera for images resized by ``factor`` (pixel-centre convention: x' = (x + 0.5) f - 0.5)."""
        K = self.K.copy()
        K[:2, :2] *= factor
        K[:2, 2] = (K[:2, 2] + 0.5) * factor - 0.5
        return replace(self, K=K, width=round(self.width * factor), height=round(self.height * factor))

    def project(self, points_world: np.ndarray) -> np.ndarray:
        """Pinhole projection of [..., 3] world points to [..., 2] pixels (distortion ignored)."""
        p = points_world @ self.cam_from_world[:3, :3].T + self.cam_from_world[:3, 3]
        uv = p @ self.K.T
        return uv[..., :2] / uv[..., 2:3]
