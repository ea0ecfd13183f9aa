"""The cameras of a generated orbit, and how the model is told about them.

SV3D's convention (``scripts/sampling/simple_video_sample.py``): F frames at azimuths 360 (k + 1) / F degrees for
k = 0 .. F-1, so the last frame (azimuth 360 = 0) is the input view; the model sees the polar angle (90 degrees minus
the elevation) and the azimuth relative to the input view, in radians. Here the cameras are the multiview layouts'
(Z-up world, object at the origin, OpenCV), so a generated clip is a capture ``orbit4d train`` reads directly: the
input view sits at azimuth 0 on the +x side.

Ray maps (CAT3D, CameraCtrl): per latent pixel, the Plücker coordinates of its ray through the pixel centre,
direction d (unit) and moment o x d, both in the world frame: [F, 6, h, w].
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from multiview.camera import Camera
from multiview.errors import InputError
from multiview.layouts import intrinsics, look_at, spherical_eye


@dataclass(frozen=True)
class Orbit:
    """One orbit clip's cameras and the values the model is conditioned on, frame by frame."""

    cameras: list[Camera]
    elevations_deg: np.ndarray  # [F]
    azimuths_deg: np.ndarray  # [F] absolute; the input view is the frame at 0

    @property
    def num_frames(self) -> int:
        return len(self.cameras)

    def polar_rad(self) -> Tensor:
        """[F] SV3D's polar angle: 90 degrees minus the elevation, in radians."""
        return torch.from_numpy(np.radians(90.0 - self.elevations_deg)).float()

    def relative_azimuth_rad(self) -> Tensor:
        """[F] azimuth relative to the input view, in [0, 2 pi)."""
        return torch.from_numpy(np.radians(np.mod(self.azimuths_deg - self.azimuths_deg[self.input_index], 360.0)))\
            .float()  # fmt: skip

    @property
    def input_index(self) -> int:
        """The frame that shows the input view (SV3D: the last)."""
        return int(np.argmin(np.abs(np.mod(self.azimuths_deg + 180.0, 360.0) - 180.0)))


def sv3d_orbit(num_frames: int = 21, elevation_deg: float = 10.0, radius: float = 2.0, fov_deg: float = 33.8,
               size: int = 576) -> Orbit:  # fmt: skip
    """SV3D's orbit: ``num_frames`` evenly spaced azimuths at one elevation, the input view last.

    Defaults follow SV3D's training renders (camera distance 2, field of view 33.8 degrees, 576 x 576).
    """
    if num_frames < 2:
        raise InputError(f"--frames {num_frames}: an orbit needs at least 2 frames")
    if not -90.0 < elevation_deg < 90.0:
        raise InputError(f"--elevation {elevation_deg}: use a value strictly between -90 and 90 degrees")
    azimuths = np.mod(360.0 * np.arange(1, num_frames + 1) / num_frames, 360.0)
    K = intrinsics(fov_deg, size, size)
    cameras = [Camera(K, look_at(spherical_eye(float(a), elevation_deg, radius)), size, size) for a in azimuths]
    return Orbit(cameras, np.full(num_frames, float(elevation_deg)), azimuths)


def plucker_rays(cameras: list[Camera], height: int, width: int) -> Tensor:
    """[F, 6, height, width] Plücker ray maps (direction, moment) sampled at a ``height`` x ``width`` grid.

    The grid covers the image like a downscaled copy: cell (i, j) looks through the image point at the centre of
    that cell, so the latent grid of a VAE (8x smaller) gets the rays of its own pixels.
    """
    maps = []
    for camera in cameras:
        sx, sy = camera.width / width, camera.height / height
        v, u = torch.meshgrid(torch.arange(height, dtype=torch.float64), torch.arange(width, dtype=torch.float64),
                              indexing="ij")  # fmt: skip
        pixels = torch.stack([(u + 0.5) * sx - 0.5, (v + 0.5) * sy - 0.5, torch.ones_like(u)], dim=-1)
        K_inv = torch.from_numpy(np.linalg.inv(camera.K))
        world_from_cam = torch.from_numpy(camera.world_from_cam)
        directions = pixels @ K_inv.T @ world_from_cam[:3, :3].T
        directions = directions / directions.norm(dim=-1, keepdim=True)
        origin = world_from_cam[:3, 3].expand_as(directions)
        moment = torch.cross(origin, directions, dim=-1)
        maps.append(torch.cat([directions, moment], dim=-1).permute(2, 0, 1))
    return torch.stack(maps).float()


def triangular_guidance(orbit: Orbit, min_scale: float, max_scale: float) -> Tensor:
    """[F] classifier-free guidance per frame: ``min_scale`` at the input view rising linearly with the azimuth
    distance to ``max_scale`` opposite it (SV3D: 1 and 2.5)."""
    distance = np.abs(np.mod(orbit.azimuths_deg - orbit.azimuths_deg[orbit.input_index] + 180.0, 360.0) - 180.0)
    return torch.from_numpy(min_scale + (max_scale - min_scale) * distance / 180.0).float()
