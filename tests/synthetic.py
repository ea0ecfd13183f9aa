"""Small synthetic inputs shared by the tests: random poses, noise images, COLMAP projects with known answers."""

from __future__ import annotations

import PIL.Image  # isort: skip  (before pycolmap: pycolmap 4.2.1 breaks PIL's PNG encoder when loaded first)

from pathlib import Path

import numpy as np
import pycolmap

from multiview.conventions import rigid_from_rotation_translation, rotmat_from_qvec

COLMAP_PARAMS = {"SIMPLE_RADIAL": [50.0, 32.0, 24.0, 0.1], "PINHOLE": [50.0, 51.0, 31.0, 25.0]}


def random_pose(seed: int) -> np.ndarray:
    """[4, 4] a random rigid cam_from_world, reproducible from ``seed``."""
    rng = np.random.default_rng(seed)
    return rigid_from_rotation_translation(rotmat_from_qvec(rng.normal(size=4)), rng.normal(size=3) * 3)


def write_noise_image(path: Path, width: int = 64, height: int = 48, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    PIL.Image.fromarray(pixels).save(path)
    return path


def synthetic_colmap_project(
    root: Path, model: str = "PINHOLE", text: bool = False, num_images: int = 5, seed: int = 0
) -> "pycolmap.Reconstruction":
    """A pycolmap synthetic scene written as ``root/sparse/0``, with 64x48 noise images in ``root/images``."""
    options = pycolmap.SyntheticDatasetOptions(
        num_rigs=1,
        num_cameras_per_rig=1,
        num_frames_per_rig=num_images,
        num_points3D=40,
        camera_width=64,
        camera_height=48,
        camera_model_id=getattr(pycolmap.CameraModelId, model),
        camera_params=COLMAP_PARAMS[model],
    )
    pycolmap.set_random_seed(seed)
    reconstruction = pycolmap.synthesize_dataset(options)
    (root / "sparse" / "0").mkdir(parents=True)
    (reconstruction.write_text if text else reconstruction.write_binary)(root / "sparse" / "0")
    for index, image in enumerate(reconstruction.images.values()):
        write_noise_image(root / "images" / image.name, seed=index)
    return reconstruction


def textured_plane_capture(root: Path, num_views: int = 10, size: int = 320, seed: int = 0) -> Path:
    """A capture of the plane z = 0 (a 2 x 2 square of multi-scale noise, grey around it) seen from ``num_views``
    cameras on a ring at 55 degrees elevation, rendered exactly by ray casting; writes images/ and transforms.json.

    The answer is known: every surface point has z = 0 and |x|, |y| <= 1.
    """
    from scipy.ndimage import gaussian_filter, map_coordinates

    from multiview.capture import Frame, write_transforms
    from multiview.layouts import orbit

    rng = np.random.default_rng(seed)
    texture = sum(gaussian_filter(rng.normal(size=(1024, 1024)), sigma) * sigma for sigma in (1.5, 4.0, 12.0))
    texture = np.clip(128 + 60 * texture / texture.std(), 0, 255)
    frames = []
    (root / "images").mkdir(parents=True, exist_ok=True)
    for index, camera in enumerate(orbit(num_views, (55.0,), radius=3.0, fov_deg=50.0, width=size, height=size)):
        v, u = np.mgrid[0:size, 0:size].astype(np.float64)
        rays_cam = np.stack([u, v, np.ones_like(u)], axis=-1) @ np.linalg.inv(camera.K).T
        world_from_cam = camera.world_from_cam
        rays = rays_cam @ world_from_cam[:3, :3].T
        origin = world_from_cam[:3, 3]
        t = -origin[2] / np.where(np.abs(rays[..., 2]) > 1e-9, rays[..., 2], -1e-9)
        hit = origin + t[..., None] * rays
        inside = (t > 0) & (np.abs(hit[..., 0]) <= 1) & (np.abs(hit[..., 1]) <= 1)
        coords = [(hit[..., 1] + 1) / 2 * 1023, (hit[..., 0] + 1) / 2 * 1023]
        gray = np.where(inside, map_coordinates(texture, coords, order=1, mode="nearest"), 128.0)
        path = root / "images" / f"{index:03d}.png"
        PIL.Image.fromarray(np.repeat(gray[..., None], 3, axis=-1).astype(np.uint8)).save(path)
        frames.append(Frame(path, camera))
    write_transforms(root / "transforms.json", frames, root)
    return root
