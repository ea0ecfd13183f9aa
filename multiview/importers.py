"""Captures made elsewhere, into orbit4d's capture format: COLMAP models, nerfstudio / instant-ngp, LLFF.

``import_capture(src, out_dir)`` finds out what ``src`` is, writes ``images/``, ``transforms.json``, ``points3D.ply``
(when the source has points), ``sparse/0`` (COLMAP sources) and ``report.json`` into ``out_dir``. Distorted
sources are undistorted to pinhole with pycolmap, as the capture format asks.
"""

from __future__ import annotations

import PIL.Image  # isort: skip  (before pycolmap; see multiview.capture)

import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from multiview.camera import Camera
from multiview.capture import (
    IMAGES_DIR,
    POINTS_FILE,
    TRANSFORMS_FILE,
    Frame,
    capture_from_colmap,
    load_transforms,
    read_colmap_model,
    read_points_ply,
    undistort_frames,
    warn_skipped,
    write_points_ply,
    write_report,
    write_transforms,
)
from multiview.console import track
from multiview.conventions import cam_from_world_from_llff, opencv_K_from_colmap_K
from multiview.errors import InputError, OutputExistsError

# Where a COLMAP model may sit inside a project folder, in the order they are tried.
COLMAP_MODEL_DIRS = (".", "sparse/0", "sparse", "colmap/sparse/0", "distorted/sparse/0")
LLFF_FILE = "poses_bounds.npy"
LLFF_IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
MASKS_DIR = "masks"


def import_capture(src: Path, out_dir: Path, image_dir: Path | None = None, undistort: bool = True) -> Path:
    """Write a capture into ``out_dir`` (created if absent, must be empty) from ``src``; return ``out_dir``.

    ``src`` is a COLMAP model folder or project folder (model in sparse/0, images in images/), a nerfstudio or
    instant-ngp ``transforms.json`` or its folder, or an LLFF ``poses_bounds.npy`` or its folder. ``image_dir``
    overrides where COLMAP and LLFF images are looked for. ``undistort=False`` keeps a distorted transforms.json
    source as it is (OPENCV camera model) instead of undistorting its images.
    """
    src, out_dir = Path(src).absolute(), Path(out_dir).absolute()
    _prepare_out_dir(out_dir)
    source_format, path = detect_source(src)
    if source_format == "colmap":
        images = Path(image_dir).absolute() if image_dir is not None else find_colmap_images(path)
        return capture_from_colmap(path, images, out_dir)
    if source_format == "transforms":
        return _import_transforms(path, out_dir, undistort)
    return _import_llff(path, out_dir, image_dir)


def detect_source(src: Path) -> tuple[str, Path]:
    """("colmap", model folder) | ("transforms", transforms.json) | ("llff", poses_bounds.npy) for ``src``.

    A folder is searched in this order: transforms.json, poses_bounds.npy, then a COLMAP model in
    ``COLMAP_MODEL_DIRS``.
    """
    src = Path(src).absolute()
    if src.is_file():
        if src.name == LLFF_FILE:
            return "llff", src
        if src.suffix == ".json":
            return "transforms", src
        raise InputError(f"{src} is not a transforms.json or {LLFF_FILE}: pass one of those, or a COLMAP model folder")
    if not src.is_dir():
        raise InputError(f"{src} does not exist: pass a COLMAP model or project, a transforms.json or {LLFF_FILE}")
    if (src / TRANSFORMS_FILE).is_file():
        return "transforms", src / TRANSFORMS_FILE
    if (src / LLFF_FILE).is_file():
        return "llff", src / LLFF_FILE
    for relative in COLMAP_MODEL_DIRS:
        if _is_colmap_model(src / relative):
            return "colmap", Path(os.path.normpath(src / relative))
    looked_for = ", ".join([TRANSFORMS_FILE, LLFF_FILE] + [f"{d}/cameras.bin|txt" for d in COLMAP_MODEL_DIRS])
    raise InputError(f"{src}: no capture found (looked for {looked_for}): pass the folder that holds one of those")


def find_colmap_images(model_dir: Path) -> Path:
    """The image folder of a COLMAP model: an ``images/`` beside the model or up to three levels above it that
    holds at least one of the model's registered images."""
    model_dir = Path(model_dir).absolute()
    reconstruction = read_colmap_model(model_dir)
    names = [image.name for image in reconstruction.images.values() if image.has_pose]
    candidates = [model_dir / IMAGES_DIR] + [parent / IMAGES_DIR for parent in model_dir.parents[:3]]
    for candidate in candidates:
        if candidate.is_dir() and any((candidate / name).is_file() for name in names):
            return candidate
    looked_in = ", ".join(str(c) for c in candidates)
    raise InputError(f"{model_dir}: no folder holds its images (looked in {looked_in}): pass the image folder")


def _is_colmap_model(folder: Path) -> bool:
    return all(any((folder / f"{name}{ext}").is_file() for ext in (".bin", ".txt")) for name in ("cameras", "images"))


def _prepare_out_dir(out_dir: Path) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputExistsError(f"{out_dir} exists and is not a folder: choose another output")
    out_dir.mkdir(parents=True, exist_ok=True)
    if any(out_dir.iterdir()):
        raise OutputExistsError(f"{out_dir} is not empty: pass an empty or new output folder")


# --- nerfstudio / instant-ngp ----------------------------------------------------------------------------------


def _import_transforms(path: Path, out_dir: Path, undistort: bool) -> Path:
    start = time.perf_counter()
    listing = load_transforms(path)
    total = len(listing.frames) + len(listing.missing)
    warn_skipped(listing.missing, total, path)
    image_root = _common_folder(frame.image_path for frame in listing.frames)
    distorted = any(not frame.camera.is_pinhole for frame in listing.frames)
    if distorted and undistort:
        frames = undistort_frames(listing.frames, image_root, out_dir)
    else:
        frames = _copy_frames(listing.frames, image_root, out_dir)
    ply_name = None
    if listing.ply_path is not None:
        xyz, rgb = read_points_ply(listing.ply_path)
        write_points_ply(out_dir / POINTS_FILE, xyz, rgb)
        ply_name = POINTS_FILE
    write_transforms(out_dir / TRANSFORMS_FILE, frames, out_dir, ply_name)
    seconds = time.perf_counter() - start
    write_report(
        out_dir, "transforms", path, total, len(frames), listing.missing, seconds, undistorted=distorted and undistort
    )
    return out_dir


def _common_folder(paths) -> Path:
    return Path(os.path.commonpath([str(Path(p).parent) for p in paths]))


def _copy_frames(frames: Sequence[Frame], image_root: Path, out_dir: Path) -> list[Frame]:
    """Copy images to ``out_dir/images`` and masks to ``out_dir/masks``, keeping names relative to their roots."""
    masks = [frame.mask_path for frame in frames if frame.mask_path is not None]
    mask_root = _common_folder(masks) if masks else None
    copied = []
    for frame in track(frames, "copying images"):
        image = _copy_into(frame.image_path, image_root, out_dir / IMAGES_DIR)
        mask = _copy_into(frame.mask_path, mask_root, out_dir / MASKS_DIR) if frame.mask_path is not None else None
        copied.append(Frame(image, frame.camera, mask))
    return copied


def _copy_into(path: Path, root: Path, destination_root: Path) -> Path:
    destination = destination_root / Path(path).relative_to(root)
    destination.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(path, destination)
    return destination


# --- LLFF ------------------------------------------------------------------------------------------------------


def cameras_from_llff(poses_bounds: np.ndarray, image_sizes: Sequence[tuple[int, int]], source: Path) -> list[Camera]:
    """Cameras from LLFF ``poses_bounds`` [N, 17] and the (width, height) of the N images, in the same order.

    Each row is a 3x5 matrix [R | t | (h, w, f)] (camera-to-world, camera axes [down, right, back]) flattened
    row-major, then near and far. As LLFF's loader does, images larger or smaller than (h, w) scale the focal
    length by width / w; the principal point is the image centre.
    """
    poses = poses_bounds[:, :15].reshape(-1, 3, 5)
    cam_from_world = cam_from_world_from_llff(poses[:, :, :4])
    cameras = []
    for index, ((height, width, focal), (image_width, image_height)) in enumerate(zip(poses[:, :, 4], image_sizes)):
        scale = image_width / width
        if abs(image_height / height - scale) > 0.01 * scale:
            raise InputError(
                f"{source}: image {index} is {image_width}x{image_height} but the file says {width:g}x{height:g} "
                "(different aspect ratio): use the images the poses were made for"
            )
        K_corner = np.array(
            [[focal * scale, 0.0, image_width / 2], [0.0, focal * scale, image_height / 2], [0.0, 0.0, 1.0]]
        )
        cameras.append(Camera(opencv_K_from_colmap_K(K_corner), cam_from_world[index], image_width, image_height))
    return cameras


def _import_llff(path: Path, out_dir: Path, image_dir: Path | None) -> Path:
    start = time.perf_counter()
    poses_bounds = _load_poses_bounds(path)
    image_dir = Path(image_dir).absolute() if image_dir is not None else path.parent / IMAGES_DIR
    images = _llff_images(image_dir, len(poses_bounds), path)
    sizes = [_image_size(image) for image in images]
    cameras = cameras_from_llff(poses_bounds, sizes, path)
    frames = _copy_frames([Frame(image, camera) for image, camera in zip(images, cameras)], image_dir, out_dir)
    write_transforms(out_dir / TRANSFORMS_FILE, frames, out_dir)
    near_far = [float(poses_bounds[:, 15].min()), float(poses_bounds[:, 16].max())]
    write_report(out_dir, "llff", path, len(frames), len(frames), [], time.perf_counter() - start, near_far=near_far)
    return out_dir


def _load_poses_bounds(path: Path) -> np.ndarray:
    try:
        poses_bounds = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise InputError(f"{path} is not a readable .npy array ({error}): re-export it with imgs2poses") from None
    if poses_bounds.ndim != 2 or poses_bounds.shape[1] != 17 or len(poses_bounds) == 0:
        raise InputError(f"{path} has shape {poses_bounds.shape}, LLFF's is [N, 17]: pass an LLFF poses_bounds.npy")
    poses_bounds = poses_bounds.astype(np.float64)
    if not np.isfinite(poses_bounds).all():
        raise InputError(f"{path} holds non-finite values: re-export it")
    return poses_bounds


def _llff_images(image_dir: Path, count: int, path: Path) -> list[Path]:
    """The LLFF images, sorted by name as LLFF's loader pairs them with the poses."""
    if not image_dir.is_dir():
        raise InputError(f"{path}: no {image_dir} folder beside it: LLFF keeps its images in images/")
    images = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in LLFF_IMAGE_EXTENSIONS)
    if len(images) != count:
        raise InputError(
            f"{path} has {count} poses but {image_dir} holds {len(images)} images: "
            "LLFF pairs them in sorted order, so the counts must match"
        )
    return images


def _image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the image header, without decoding the pixels."""
    try:
        with PIL.Image.open(path) as image:
            return image.size
    except OSError as error:
        raise InputError(f"{path} is not a readable image ({error}): replace or remove it") from None
