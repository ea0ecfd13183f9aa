"""Camera layouts around an object at the origin of a Z-up world: orbits, random spheres of views, fixed rigs.

Every camera looks at the origin with the world's +z up in the image, and has square pixels, a horizontal
field of view ``fov_deg`` and the principal point at the image centre (OpenCV pixel centres: (W - 1) / 2).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from multiview.camera import Camera
from multiview.errors import InputError

WORLD_UP = np.array([0.0, 0.0, 1.0])


def intrinsics(fov_deg: float, width: int, height: int) -> np.ndarray:
    """[3, 3] K for a horizontal field of view, square pixels, centred principal point."""
    if not 0.0 < fov_deg < 180.0:  # NaN fails this too
        raise InputError(f"field of view {fov_deg} degrees: use a value between 0 and 180 (40 is a good default)")
    if width < 1 or height < 1:
        raise InputError(f"image size {width}x{height}: width and height must be at least 1 pixel")
    focal = 0.5 * width / math.tan(math.radians(fov_deg) / 2.0)
    return np.array([[focal, 0.0, (width - 1) / 2.0], [0.0, focal, (height - 1) / 2.0], [0.0, 0.0, 1.0]])


def check_elevations(elevations_deg: Sequence[float]) -> None:
    """InputError unless every elevation is a finite angle in [-90, 90] degrees (±90: straight above / below)."""
    for elevation in elevations_deg:
        if not -90.0 <= elevation <= 90.0:  # NaN fails this too
            raise InputError(f"elevation {elevation} degrees: use a value from -90 (below) to 90 (above), 20 is a good "
                             "default")


def check_radius(radius: float) -> None:
    """InputError unless ``radius`` is a finite distance greater than 0."""
    if not 0.0 < radius < math.inf:  # NaN fails this too
        raise InputError(f"radius {radius}: cameras need a finite distance greater than 0 (2.5 is a good default)")


def look_at(eye: np.ndarray, target: np.ndarray = np.zeros(3), up: np.ndarray = WORLD_UP) -> np.ndarray:
    """[4, 4] OpenCV ``cam_from_world`` of a camera at ``eye`` looking at ``target``, ``up`` up in the image.

    >>> np.round(look_at(np.array([0.0, -2.0, 0.0]))[:3, 3], 6).tolist()  # world origin 2 units ahead
    [0.0, 0.0, 2.0]
    """
    eye, target = np.asarray(eye, dtype=np.float64), np.asarray(target, dtype=np.float64)
    forward = target - eye
    if np.linalg.norm(forward) < 1e-12:
        raise InputError("a camera cannot sit on the point it looks at: use a radius greater than 0")
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, up)
    if np.linalg.norm(right) < 1e-9:  # looking straight up or down: any horizontal 'up' will do
        right = np.cross(forward, np.array([0.0, 1.0, 0.0]))
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    world_from_cam_rotation = np.stack([right, down, forward], axis=1)
    cam_from_world = np.eye(4)
    cam_from_world[:3, :3] = world_from_cam_rotation.T
    cam_from_world[:3, 3] = -world_from_cam_rotation.T @ eye
    return cam_from_world


def spherical_eye(azimuth_deg: float, elevation_deg: float, radius: float) -> np.ndarray:
    """[3] a point at ``radius`` from the origin; azimuth from +x towards +y, elevation above the xy plane."""
    azimuth, elevation = math.radians(azimuth_deg), math.radians(elevation_deg)
    return radius * np.array(
        [math.cos(elevation) * math.cos(azimuth), math.cos(elevation) * math.sin(azimuth), math.sin(elevation)]
    )


def orbit(
    num_views: int,
    elevations_deg: Sequence[float] = (20.0,),
    radius: float = 2.5,
    fov_deg: float = 40.0,
    width: int = 256,
    height: int = 256,
) -> list[Camera]:
    """Views evenly spaced in azimuth on one ring per elevation; the views are shared out over the rings.

    Ring k starts half a step further round than ring k-1, so stacked rings do not repeat azimuths.
    """
    if num_views < 1 or len(elevations_deg) < 1:
        raise InputError(f"an orbit needs at least one view and one elevation, got {num_views} and {elevations_deg}")
    check_elevations(elevations_deg)
    check_radius(radius)
    K = intrinsics(fov_deg, width, height)
    counts = [num_views // len(elevations_deg) + (k < num_views % len(elevations_deg)) for k in range(len(elevations_deg))]
    cameras = []
    for ring, (elevation, count) in enumerate(zip(elevations_deg, counts)):
        offset = 0.5 * ring * 360.0 / max(count, 1)
        for i in range(count):
            eye = spherical_eye(offset + 360.0 * i / count, elevation, radius)
            cameras.append(Camera(K, look_at(eye), width, height))
    return cameras


def sphere(
    num_views: int,
    radius: float = 2.5,
    fov_deg: float = 40.0,
    width: int = 256,
    height: int = 256,
    seed: int = 0,
    min_elevation_deg: float = -20.0,
    max_elevation_deg: float = 70.0,
) -> list[Camera]:
    """Views at random directions, uniform over the sphere's area between two elevations (reproducible by seed)."""
    if num_views < 1 or not -90.0 <= min_elevation_deg <= max_elevation_deg <= 90.0:
        raise InputError(
            f"a sphere of views needs at least one view and -90 <= min <= max elevation <= 90, got {num_views} views "
            f"and elevations {min_elevation_deg}..{max_elevation_deg}"
        )
    check_radius(radius)
    if seed < 0:
        raise InputError(f"seed {seed}: use a whole number from 0 up")
    rng = np.random.default_rng(seed)
    K = intrinsics(fov_deg, width, height)
    low, high = math.sin(math.radians(min_elevation_deg)), math.sin(math.radians(max_elevation_deg))
    elevations = np.degrees(np.arcsin(rng.uniform(low, high, num_views)))
    azimuths = rng.uniform(0.0, 360.0, num_views)
    return [Camera(K, look_at(spherical_eye(a, e, radius)), width, height) for a, e in zip(azimuths, elevations)]


def rig(
    num_cameras: int,
    elevation_deg: float = 20.0,
    radius: float = 2.5,
    fov_deg: float = 40.0,
    width: int = 256,
    height: int = 256,
) -> list[Camera]:
    """A fixed rig for multi-view video: ``num_cameras`` evenly round one ring, ``camera_id`` 0..K-1."""
    ring = orbit(num_cameras, (elevation_deg,), radius, fov_deg, width, height)
    return [camera.replace(camera_id=k) for k, camera in enumerate(ring)]
