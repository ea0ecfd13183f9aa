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
