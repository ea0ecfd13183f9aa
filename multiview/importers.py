"""Captures made elsewhere, into orbit4d's capture format: COLMAP models, nerfstudio / instant-ngp, LLFF.

``import_capture(src, out_dir)`` finds out what ``src`` is, writes ``images/``, ``transforms.json``, ``points3D.ply``
(when the source has points), ``sparse/0`` (COLMAP sources) and ``report.json`` into ``out_dir``. Distorted
sources are undistorted to pinhole with pycolmap, as the capture format asks.
"""

from __future__ import annotations

import PIL.Image  # isort: skip  (before pycolmap; see multiview.capture)
import PIL.ExifTags  # isort: skip

import json
import os
import shutil
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from multiview.camera import Camera
from multiview.capture import (
    IMAGES_DIR,
    MAX_COORDINATE,
    MAX_FOCAL_PER_SIDE,
    POINTS_FILE,
    REPORT_FILE,
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
from multiview.console import track, warn
from multiview.conventions import cam_from_world_from_llff, opencv_K_from_colmap_K
from multiview.errors import InputError, OutputExistsError
from multiview.npy import load_npy
from multiview.outputs import write_json
from multiview.paths import check_relative, destination_names, exists, inside_folder, is_within

if TYPE_CHECKING:
    import pycolmap

# Where a COLMAP model may sit inside a project folder, in the order they are tried.
COLMAP_MODEL_DIRS = (".", "sparse/0", "sparse", "colmap/sparse/0", "distorted/sparse/0")
LLFF_FILE = "poses_bounds.npy"
LLFF_IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
# COLMAP and imgs2poses write rotations in float64 (orthonormal to ~1e-15, float32 copies to ~1e-7): worse is no pose.
ROTATION_TOLERANCE = 1e-3
MASKS_DIR = "masks"
_UNDECODABLE_IMAGE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, PIL.Image.DecompressionBombError)


def import_capture(src: Path, out_dir: Path, image_dir: Path | None = None, undistort: bool = True,
                   allow_outside: bool = False) -> Path:  # fmt: skip
    """Write a capture into ``out_dir`` (created if absent, must be empty) from ``src``; return ``out_dir``.

    ``src`` is a COLMAP model folder or project folder (model in sparse/0, images in images/), a nerfstudio or
    instant-ngp ``transforms.json`` or its folder, or an LLFF ``poses_bounds.npy`` or its folder. ``image_dir``
    overrides where COLMAP and LLFF images are looked for. ``undistort=False`` keeps a distorted transforms.json
    source as it is (OPENCV camera model) instead of undistorting its images.

    Images (and masks, depth maps, points) the source names outside its folder (the transforms.json's folder, the
    COLMAP or LLFF image folder) are refused unless ``allow_outside``; then they are copied into the capture's
    ``images/`` under their own file names (made unique), beside the others, which keep their names.
    """
    src, out_dir = Path(src).absolute(), Path(out_dir).absolute()
    _prepare_out_dir(out_dir)
    source_format, path = detect_source(src)
    if source_format == "colmap":
        return _import_colmap(path, out_dir, image_dir, allow_outside)
    if source_format == "transforms":
        return _import_transforms(path, out_dir, undistort, allow_outside)
    return _import_llff(path, out_dir, image_dir, allow_outside)


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


def find_colmap_images(model_dir: Path, reconstruction: "pycolmap.Reconstruction | None" = None) -> Path:
    """The image folder of a COLMAP model: an ``images/`` beside the model or up to three levels above it that
    holds at least one of the model's registered images. ``reconstruction``: the model, when already read."""
    model_dir = Path(model_dir).absolute()
    if reconstruction is None:
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


# --- COLMAP ----------------------------------------------------------------------------------------------------


def _import_colmap(model_dir: Path, out_dir: Path, image_dir: Path | None, allow_outside: bool = False) -> Path:
    """``capture_from_colmap`` once the model's cameras, poses and image names are known to be sound; registered
    images that do not decode are left out (one warning), and images named outside the image folder (allowed by
    ``allow_outside``) renamed, through a copy of the model."""
    reconstruction = read_colmap_model(model_dir)
    check_colmap_model(reconstruction, model_dir, allow_outside)
    images = Path(image_dir).absolute() if image_dir is not None else find_colmap_images(model_dir, reconstruction)
    registered = sorted(image.name for image in reconstruction.images.values() if image.has_pose)
    paths = {name: inside_folder(images, name, model_dir, "image name", allow_outside) for name in registered}
    present = [name for name in registered if exists(paths[name])]
    unreadable = _undecodable(paths[name] for name in present)
    outside = [name for name in present if not is_within(paths[name], images) and paths[name] not in unreadable]
    if not unreadable and not outside:
        return capture_from_colmap(model_dir, images, out_dir)
    _warn_undecodable(unreadable, len(registered), images)
    if len(unreadable) == len(present):
        raise _no_readable_images(images, len(registered))
    missing = sorted(set(registered) - set(present))
    warn_skipped(missing, len(registered), model_dir)
    left_out = missing + [name for name in present if paths[name] in unreadable]
    for frame_id in {reconstruction.find_image_with_name(name).frame_id for name in left_out}:
        reconstruction.deregister_frame(frame_id)
    readable_model = out_dir / ".readable_model"
    readable_model.mkdir()
    if outside:  # every image linked into one folder under a name inside it, as pycolmap reads them from one
        images = _linked_images(reconstruction, paths, images, readable_model / "images")
    reconstruction.write(readable_model)
    capture_from_colmap(readable_model, images, out_dir)
    shutil.rmtree(readable_model)
    report_path = out_dir / REPORT_FILE  # as if made from model_dir: its source, total and skipped images
    report = json.loads(report_path.read_text())
    skipped = sorted(set(report["skipped"]) | set(left_out))
    report |= {"source": str(model_dir), "total": reconstruction.num_images(), "skipped": skipped}
    write_json(report_path, report)
    return out_dir


def _linked_images(reconstruction: "pycolmap.Reconstruction", paths: dict[str, Path], images: Path,
                   folder: Path) -> Path:  # fmt: skip
    """Link every registered image of ``reconstruction`` (at ``paths`` by name) into ``folder``: those in the image
    folder ``images`` under their names, those outside it under their file names (made unique), renamed so in the
    model; return ``folder``."""
    registered = [image for image in reconstruction.images.values() if image.has_pose and exists(paths[image.name])]
    names = destination_names([paths[image.name] for image in registered], images)
    for image, name in zip(registered, names):
        link = folder / name
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(paths[image.name], link)
        image.name = name.as_posix()
    return folder


def check_colmap_model(reconstruction: "pycolmap.Reconstruction", model_dir: Path, allow_outside: bool = False) -> None:
    """InputError naming ``model_dir`` and the first registered image whose camera has a non-finite or non-positive
    focal length or size, whose pose is not a finite rigid transform, or whose name leads out of the image folder
    (an absolute path, ``..``; unless ``allow_outside``)."""
    for image in sorted(reconstruction.images.values(), key=lambda image: image.name):
        if not image.has_pose:
            continue
        check_relative(image.name, model_dir, "image name", allow_outside)
        camera = reconstruction.cameras[image.camera_id]
        where = f"{model_dir}: image {image.name} (camera {image.camera_id})"
        params = np.asarray(camera.params, dtype=np.float64)
        if not np.isfinite(params).all():
            raise InputError(f"{where} has non-finite camera parameters {params.tolist()}: re-export the model")
        focal = params[list(camera.focal_length_idxs())]
        largest = MAX_FOCAL_PER_SIDE * max(camera.width, camera.height)
        if (focal <= 0).any() or (focal > largest).any() or camera.width < 1 or camera.height < 1:
            raise InputError(
                f"{where} has focal length {focal.tolist()} and size {camera.width}x{camera.height}: both must be "
                f"positive, the focal length at most {MAX_FOCAL_PER_SIDE:g} times the size: re-export the model"
            )
        pose = np.asarray(image.cam_from_world().matrix(), dtype=np.float64)
        if not _is_rotation(pose[:3, :3], ROTATION_TOLERANCE) or not np.isfinite(pose).all():
            raise InputError(f"{where}: its pose is not a finite rigid transform: re-export the model")
        if np.abs(pose[:3, 3]).max() > MAX_COORDINATE:
            raise InputError(f"{where}: its pose is {np.abs(pose[:3, 3]).max():.3g} from the origin, beyond "
                             f"{MAX_COORDINATE:g}: re-export the model")  # fmt: skip


# --- nerfstudio / instant-ngp ----------------------------------------------------------------------------------


def _import_transforms(path: Path, out_dir: Path, undistort: bool, allow_outside: bool = False) -> Path:
    start = time.perf_counter()
    listing = load_transforms(path, allow_outside)
    total = len(listing.frames) + len(listing.missing)
    warn_skipped(listing.missing, total, path)
    unreadable = _undecodable(frame.image_path for frame in listing.frames)
    _warn_undecodable(unreadable, total, path.parent)
    readable = [frame for frame in listing.frames if frame.image_path not in unreadable]
    if not readable:
        raise _no_readable_images(path, total)
    _check_sizes(readable, path)
    distorted = any(not frame.camera.is_pinhole for frame in readable)
    if distorted and undistort:
        frames = _undistorted(readable, path.parent, out_dir)
    else:
        frames = _copy_frames(readable, path.parent, out_dir)
    ply_name = None
    if listing.ply_path is not None:
        xyz, rgb = read_points_ply(listing.ply_path)
        write_points_ply(out_dir / POINTS_FILE, xyz, rgb)
        ply_name = POINTS_FILE
    write_transforms(out_dir / TRANSFORMS_FILE, frames, out_dir, ply_name)
    seconds = time.perf_counter() - start
    skipped = listing.missing + [_relative_name(image, path.parent) for image in unreadable]
    write_report(out_dir, "transforms", path, total, len(frames), skipped, seconds, undistorted=distorted and undistort)
    return out_dir


def _check_sizes(frames: Sequence[Frame], path: Path) -> None:
    """InputError naming the first image whose size (as stored, or as its EXIF orientation turns it) is not the one
    ``path`` gives its camera: training would refuse it, and undistortion would work at the wrong size."""
    for frame in frames:
        expected = (frame.camera.width, frame.camera.height)
        with PIL.Image.open(frame.image_path) as image:
            sizes = {image.size}
            if image.getexif().get(PIL.ExifTags.Base.Orientation, 1) in (5, 6, 7, 8):  # stored on its side
                sizes.add(image.size[::-1])
        if expected not in sizes:
            raise InputError(f"{path}: {frame.image_path.name} is {image.size[0]}x{image.size[1]} but the file says "
                             f"{expected[0]}x{expected[1]}: fix w and h (or remove them), or use the images the "
                             "cameras were made for")  # fmt: skip


def _undistorted(frames: Sequence[Frame], folder: Path, out_dir: Path) -> list[Frame]:
    """``undistort_frames`` into ``out_dir``; images outside ``folder`` (allowed) are gathered beside the others
    first, as pycolmap undistorts from one folder."""
    if all(is_within(frame.image_path, folder) for frame in frames):
        return undistort_frames(frames, _common_folder(frame.image_path for frame in frames), out_dir)
    gathered = out_dir / ".sources"
    copies = _copy_frames(frames, folder, gathered)
    undistorted = undistort_frames(copies, gathered / IMAGES_DIR, out_dir)
    shutil.rmtree(gathered)
    return undistorted


def _common_folder(paths) -> Path:
    return Path(os.path.commonpath([str(Path(p).parent) for p in paths]))


def _copy_frames(frames: Sequence[Frame], folder: Path, out_dir: Path) -> list[Frame]:
    """Copy images to ``out_dir/images`` and masks to ``out_dir/masks``: those in the source's ``folder`` keep their
    names relative to the folder that holds them all, those outside it (as allowed) their file names, made unique."""
    images = _destinations([frame.image_path for frame in frames], folder, out_dir / IMAGES_DIR)
    masks = _destinations([frame.mask_path for frame in frames if frame.mask_path is not None], folder,
                          out_dir / MASKS_DIR)  # fmt: skip
    copied = []
    for frame in track(frames, "copying images"):
        image = _copy_to(frame.image_path, images[frame.image_path])
        mask = _copy_to(frame.mask_path, masks[frame.mask_path]) if frame.mask_path is not None else None
        copied.append(Frame(image, frame.camera, mask))
    return copied


def _destinations(paths: Sequence[Path], folder: Path, destination_root: Path) -> dict[Path, Path]:
    """Where each of ``paths`` is copied under ``destination_root`` (``destination_names`` relative to the folder
    that holds those inside ``folder``)."""
    inside = [path for path in paths if is_within(path, folder)]
    root = _common_folder(inside) if inside else folder
    return {path: destination_root / name for path, name in zip(paths, destination_names(paths, root))}


def _copy_to(path: Path, destination: Path) -> Path:
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


def _import_llff(path: Path, out_dir: Path, image_dir: Path | None, allow_outside: bool = False) -> Path:
    start = time.perf_counter()
    poses_bounds = _load_poses_bounds(path)
    image_dir = Path(image_dir).absolute() if image_dir is not None else path.parent / IMAGES_DIR
    images = _llff_images(image_dir, len(poses_bounds), path)
    for image in images:  # links that lead out of the image folder
        inside_folder(image_dir, image.name, image_dir, "image", allow_outside)
    check_poses_bounds(poses_bounds, path, [image.name for image in images])
    unreadable = _undecodable(images)
    _warn_undecodable(unreadable, len(images), image_dir)
    keep = [index for index, image in enumerate(images) if image not in unreadable]
    if not keep:
        raise _no_readable_images(image_dir, len(images))
    images, poses_bounds = [images[index] for index in keep], poses_bounds[keep]
    sizes = [_image_size(image) for image in images]
    cameras = cameras_from_llff(poses_bounds, sizes, path)
    frames = _copy_frames([Frame(image, camera) for image, camera in zip(images, cameras)], image_dir, out_dir)
    write_transforms(out_dir / TRANSFORMS_FILE, frames, out_dir)
    near_far = [float(poses_bounds[:, 15].min()), float(poses_bounds[:, 16].max())]
    skipped = [_relative_name(image, image_dir) for image in unreadable]
    total = len(frames) + len(skipped)
    write_report(out_dir, "llff", path, total, len(frames), skipped, time.perf_counter() - start, near_far=near_far)
    return out_dir


def _load_poses_bounds(path: Path) -> np.ndarray:
    try:
        poses_bounds = load_npy(path)
    except (OSError, ValueError) as error:
        raise InputError(f"{path} is not a readable .npy array ({error}): re-export it with imgs2poses") from None
    if poses_bounds.ndim != 2 or poses_bounds.shape[1] != 17 or len(poses_bounds) == 0:
        raise InputError(f"{path} has shape {poses_bounds.shape}, LLFF's is [N, 17]: pass an LLFF poses_bounds.npy")
    poses_bounds = poses_bounds.astype(np.float64)
    if not np.isfinite(poses_bounds).all():
        raise InputError(f"{path} holds non-finite values: re-export it")
    return poses_bounds


def check_poses_bounds(poses_bounds: np.ndarray, path: Path, image_names: Sequence[str] = ()) -> None:
    """InputError naming ``path`` and the first row (and its image, from ``image_names``) of ``poses_bounds``
    [N, 17] (finite) whose height, width or focal length is not positive or whose rotation is not a rotation."""
    poses = poses_bounds[:, :15].reshape(-1, 3, 5)
    for index, pose in enumerate(poses):
        row = f"{path}: row {index}" + (f" ({image_names[index]})" if index < len(image_names) else "")
        height, width, focal = pose[:, 4]
        if min(height, width, focal) <= 0 or focal > MAX_FOCAL_PER_SIDE * max(height, width):
            raise InputError(
                f"{row} has height {height:g}, width {width:g}, focal length {focal:g}: all three must be positive, "
                f"the focal length at most {MAX_FOCAL_PER_SIDE:g} times the size (LLFF rows are [R | t | h w f], "
                "near, far): fix the file or re-export it with imgs2poses"
            )
        if not _is_rotation(pose[:, :3], ROTATION_TOLERANCE):
            raise InputError(
                f"{row}: its 3x3 rotation is not orthonormal with determinant +1 (a scaled, mirrored or empty pose): "
                "fix the file or re-export it with imgs2poses"
            )
        if np.abs(pose[:, 3]).max() > MAX_COORDINATE:
            raise InputError(f"{row}: its camera is {np.abs(pose[:, 3]).max():.3g} from the origin, beyond "
                             f"{MAX_COORDINATE:g}: fix the file or re-export it with imgs2poses")  # fmt: skip


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


# --- checks shared by the formats ------------------------------------------------------------------------------


def _is_rotation(matrix: np.ndarray, tolerance: float) -> bool:
    """Whether the finite [3, 3] ``matrix`` is orthonormal within ``tolerance`` with determinant +1."""
    if not np.isfinite(matrix).all():
        return False
    with np.errstate(all="ignore"):  # entries of 1e300 overflow: not a rotation, which the caller says in one line
        return bool(np.abs(matrix @ matrix.T - np.eye(3)).max() < tolerance and np.linalg.det(matrix) > 0)


def _undecodable(paths: Iterable[Path]) -> dict[Path, str]:
    """The images among ``paths`` that do not decode (empty, truncated, not an image), with PIL's reason.

    JPEGs are decoded at an eighth of their size (PIL's draft mode), which still reads every byte of the file.
    """
    failures = {}
    for path in paths:
        try:
            with PIL.Image.open(path) as image:
                image.draft(image.mode, (max(1, image.width // 8), max(1, image.height // 8)))
                image.load()
        except PIL.UnidentifiedImageError:
            failures[Path(path)] = "empty or not an image"
        except _UNDECODABLE_IMAGE_ERRORS as error:
            lines = str(error).strip().splitlines()
            failures[Path(path)] = lines[0] if lines else type(error).__name__
    return failures


def _warn_undecodable(unreadable: dict[Path, str], total: int, where: Path) -> None:
    """One warning for all images that do not decode, naming each source file and the first reason."""
    if not unreadable:
        return
    shown = ", ".join(_relative_name(image, where) for image in list(unreadable)[:3])
    shown += ", ..." if len(unreadable) > 3 else ""
    reason = next(iter(unreadable.values()))
    warn(f"skipped {len(unreadable)} of {total} images in {where} that do not decode ({reason}): {shown}")


def _no_readable_images(source: Path, total: int) -> InputError:
    return InputError(
        f"{source}: none of its {total} images decode (empty, truncated or not images): replace the image files"
    )


def _relative_name(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` when it lies under it, else as it is."""
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return str(path)
