"""Similarity alignment of camera trajectories and pose errors against reference cameras.

SfM poses are known up to a similarity (scale, rotation, translation), so estimated cameras are compared
with a reference after the least-squares similarity that maps estimated centres onto reference centres
(Umeyama 1991). Used by the SfM tests and benchmarks.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from multiview.camera import Camera
from multiview.errors import InputError


@dataclass(frozen=True, eq=False)
class Similarity:
    """``x -> scale * rotation @ x + translation`` (a world_from_world transform)."""

    scale: float
    rotation: np.ndarray  # [3, 3]
    translation: np.ndarray  # [3]

    def apply(self, points: np.ndarray) -> np.ndarray:
        """Transform [..., 3] points."""
        return self.scale * np.asarray(points) @ self.rotation.T + self.translation

    def matrix(self) -> np.ndarray:
        """[4, 4] homogeneous matrix."""
        out = np.eye(4)
        out[:3, :3] = self.scale * self.rotation
        out[:3, 3] = self.translation
        return out


def umeyama(source: np.ndarray, target: np.ndarray, with_scale: bool = True) -> Similarity:
    """Least-squares similarity mapping ``source`` [N, 3] onto ``target`` [N, 3] (Umeyama 1991).

    Minimises ``sum |target_i - (s R source_i + t)|^2`` over rotations R (det +1), t and, when
    ``with_scale``, s > 0 (else s = 1). Raises ValueError for fewer than 3 points or points that are
    all at one place.

    >>> src = np.array([[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]])
    >>> sim = umeyama(src, 2 * src + 1)
    >>> round(sim.scale, 6), np.allclose(sim.translation, 1)
    (2.0, True)
    """
    src, dst = np.asarray(source, dtype=np.float64), np.asarray(target, dtype=np.float64)
    if src.ndim != 2 or src.shape[1] != 3 or src.shape != dst.shape:
        raise ValueError(f"umeyama needs two [N, 3] arrays of one shape, got {src.shape} and {dst.shape}")
    if len(src) < 3:
        raise ValueError(f"umeyama needs at least 3 point pairs, got {len(src)}")
    mu_src, mu_dst = src.mean(0), dst.mean(0)
    src_c, dst_c = src - mu_src, dst - mu_dst
    var_src = (src_c**2).sum() / len(src)
    if var_src <= 1e-24:
        raise ValueError("umeyama source points all coincide: the similarity is undetermined")
    cov = dst_c.T @ src_c / len(src)
    u, d, vt = np.linalg.svd(cov)
    sign = np.ones(3)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[2] = -1.0
    rotation = u @ np.diag(sign) @ vt
    scale = float((d * sign).sum() / var_src) if with_scale else 1.0
    translation = mu_dst - scale * rotation @ mu_src
    return Similarity(scale, rotation, translation)


def rotation_angle_deg(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Angle in degrees of the rotation between [..., 3, 3] rotations ``a`` and ``b`` (that of aᵀb)."""
    rel = np.swapaxes(np.asarray(a), -1, -2) @ np.asarray(b)
    cos = (np.trace(rel, axis1=-2, axis2=-1) - 1.0) / 2.0
    return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))


@dataclass(frozen=True, eq=False)
class PoseErrors:
    """Per-camera errors of estimated cameras against reference cameras, after similarity alignment."""

    center_errors: np.ndarray  # [C] distance of aligned to reference centres, reference units
    rotation_errors_deg: np.ndarray  # [C] angle between aligned and reference orientations (world_from_cam)
    similarity: Similarity  # reference_from_estimated
    reference_extent: float  # largest distance between two reference centres

    def summary(self) -> dict:
        """JSON-ready medians and maxima; centre errors also relative to ``reference_extent``."""
        return {
            "num_cameras": int(len(self.center_errors)),
            "median_center_error": float(np.median(self.center_errors)),
            "median_center_error_relative": float(np.median(self.center_errors) / self.reference_extent),
            "max_center_error_relative": float(self.center_errors.max() / self.reference_extent),
            "median_rotation_error_deg": float(np.median(self.rotation_errors_deg)),
            "max_rotation_error_deg": float(self.rotation_errors_deg.max()),
        }


def compare_poses(estimated: np.ndarray, reference: np.ndarray) -> PoseErrors:
    """Errors of ``estimated`` [C, 4, 4] against ``reference`` [C, 4, 4] ``cam_from_world`` poses (paired by index).

    Centres are compared after the Umeyama similarity of estimated onto reference centres, so scale and
    gauge do not count. Orientations are compared after their own best global rotation (chordal mean):
    centres alone leave that rotation ill-conditioned when the cameras lie near a line or a plane
    (Herz-Jesus-P8: 0.47 deg of error from that alone, 0.07 deg after). For :class:`Camera` lists pass
    ``np.stack([c.cam_from_world for c in cameras])``.
    """
    est, ref = np.asarray(estimated, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    if est.ndim != 3 or est.shape[1:] != (4, 4) or est.shape != ref.shape:
        raise ValueError(f"compare_poses needs two [C, 4, 4] arrays of one shape, got {est.shape} and {ref.shape}")
    est_rot, ref_rot = np.swapaxes(est[:, :3, :3], 1, 2), np.swapaxes(ref[:, :3, :3], 1, 2)  # world_from_cam
    est_centers = -(est_rot @ est[:, :3, 3:4])[..., 0]
    ref_centers = -(ref_rot @ ref[:, :3, 3:4])[..., 0]
    sim = umeyama(est_centers, ref_centers)
    extent = float(np.max(np.linalg.norm(ref_centers[:, None] - ref_centers[None], axis=-1)))
    offset = _closest_rotation((ref_rot @ np.swapaxes(est_rot, 1, 2)).sum(0))
    return PoseErrors(
        center_errors=np.linalg.norm(sim.apply(est_centers) - ref_centers, axis=-1),
        rotation_errors_deg=rotation_angle_deg(offset @ est_rot, ref_rot),
        similarity=sim,
        reference_extent=extent,
    )


def _closest_rotation(matrix: np.ndarray) -> np.ndarray:
    """The rotation nearest to a [3, 3] matrix in the Frobenius norm (det +1)."""
    u, _, vt = np.linalg.svd(matrix)
    sign = np.diag([1.0, 1.0, np.sign(np.linalg.det(u @ vt))])
    return u @ sign @ vt


def read_strecha_camera(path: Path) -> Camera:
    """A camera of the Strecha benchmark format (``*.camera``): K, distortion, R (world_from_cam), C, w h.

    26 numbers: K (3x3), 3 zero distortion terms, R (3x3), centre C (3), width and height. The projection
    is P = K [Rᵀ | -Rᵀ C], so ``cam_from_world`` is [Rᵀ | -Rᵀ C].
    """
    path = Path(path)
    try:
        values = np.array(path.read_text().split(), dtype=np.float64)
    except (OSError, ValueError) as error:
        raise InputError(f"cannot read Strecha camera {path} ({error}): expected 26 numbers") from None
    if values.size != 26:
        raise InputError(f"{path} holds {values.size} numbers, a Strecha camera has 26 (K, dist, R, C, w h)")
    world_from_cam_rot, center = values[12:21].reshape(3, 3), values[21:24]
    cam_from_world = np.eye(4)
    cam_from_world[:3, :3] = world_from_cam_rot.T
    cam_from_world[:3, 3] = -world_from_cam_rot.T @ center
    width, height = values[24:26]
    return Camera(K=values[:9].reshape(3, 3), cam_from_world=cam_from_world, width=int(width), height=int(height))
