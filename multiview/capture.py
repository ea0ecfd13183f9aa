"""The capture format on disk (DESIGN.md, "capture/") and its readers and writers.

```
capture/
  images/            undistorted pinhole images
  transforms.json    nerfstudio layout: OpenGL camera-to-world per frame, intrinsics top-level or per frame
  sparse/0/          COLMAP model (binary, PINHOLE) when SfM ran or the capture came from a COLMAP model
  points3D.ply       sparse points: binary little-endian, x y z float, red green blue uchar
  report.json        what made the capture: source, registered / total, skipped images, seconds
```

``transforms.json`` stores intrinsics in the pixel-corner convention that nerfstudio, instant-ngp and COLMAP share;
``Camera.K`` in memory is OpenCV's pixel-centre convention (see ``multiview.conventions``). Poses, points and the
COLMAP model share one world frame (no ``applied_transform``).
"""

from __future__ import annotations

# PIL before pycolmap, always: when pycolmap 4.2.1 is loaded first, PIL's PNG encoder binds to the zlib that
# pycolmap exports and aborts the process (free(): invalid pointer) on the first PNG save.
import PIL.Image  # isort: skip

import json
import math
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from multiview.camera import Camera
from multiview.colmap_files import check_binary_model
from multiview.console import info, warn
from multiview.conventions import (
    cam_from_world_from_opengl_c2w,
    colmap_K_from_opencv_K,
    opencv_K_from_colmap_K,
    opengl_c2w_from_cam_from_world,
)
from multiview.errors import InputError
from multiview.outputs import write_json
from multiview.paths import exists, inside_folder

if TYPE_CHECKING:
    import pycolmap

TRANSFORMS_FILE = "transforms.json"
POINTS_FILE = "points3D.ply"
IMAGES_DIR = "images"
SPARSE_DIR = "sparse/0"
REPORT_FILE = "report.json"

# Tried in this order when a ``file_path`` has no extension (instant-ngp's NeRF-synthetic files do this).
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".PNG", ".JPG", ".JPEG", ".webp")

_INTRINSIC_KEYS = (
    "camera_model", "is_fisheye", "fl_x", "fl_y", "camera_angle_x", "camera_angle_y",
    "cx", "cy", "w", "h", "k1", "k2", "k3", "k4", "p1", "p2",
)  # fmt: skip
_SUPPORTED_MODELS = {None, "PINHOLE", "SIMPLE_PINHOLE", "OPENCV"}  # nerfstudio names; fisheye / 360 are not
_ROTATION_TOLERANCE = 1e-3  # instant-ngp files are orthonormal to ~1e-6; anything worse is not a pose
MAX_FOCAL_PER_SIDE = 1e4  # focal length / image side: a 0.006 degree field of view; beyond it a number is broken
MAX_COORDINATE = 1e15  # camera positions beyond this leave float32 no room for the scene's squared distances
_REQUIRED = object()


_OPTIONAL_FILES = {"mask_path": "mask_path", "depth_file_path": "depth_path", "normal_file_path": "normal_path"}
"""transforms.json key -> Frame field, for the per-frame files beside the image (nerfstudio's names)."""


@dataclass(frozen=True, eq=False)
class Frame:
    """One posed image of a capture."""

    image_path: Path  # absolute
    camera: Camera
    mask_path: Path | None = None  # absolute; white = keep
    depth_path: Path | None = None  # absolute; float32 .npy of planar camera-z depth, 0 = no surface
    normal_path: Path | None = None  # absolute; .npy [H, W, 3] world-space unit normals, 0 = no surface

    def __post_init__(self) -> None:
        for name in ("image_path", "mask_path", "depth_path", "normal_path"):
            value = getattr(self, name)
            if value is None:
                continue
            if not Path(value).is_absolute():
                raise ValueError(f"Frame.{name} must be absolute, got {value}")
            object.__setattr__(self, name, Path(value))


@dataclass(frozen=True, eq=False)
class Capture:
    """A capture folder in memory: its frames and optional sparse points."""

    root: Path
    frames: list[Frame]
    points: np.ndarray | None = None  # [P, 3] float32, world coordinates
    colors: np.ndarray | None = None  # [P, 3] uint8, sRGB


@dataclass(frozen=True, eq=False)
class TransformsListing:
    """What a transforms.json lists: the frames whose images exist, the ones that don't, the point cloud."""

    frames: list[Frame]
    missing: list[str]  # file_path entries with no image on disk
    ply_path: Path | None  # ply_file_path resolved, when it exists


# --- transforms.json: writing ----------------------------------------------------------------------------------


def write_transforms(
    path: Path, frames: Sequence[Frame], root: Path, ply_file_path: str | None = None
) -> Path:
    """Write ``frames`` as a nerfstudio ``transforms.json`` at ``path`` (atomically); return ``path``.

    Intrinsics go top-level when every frame shares them, per frame otherwise. File paths are written relative to
    ``root`` (the folder of ``path`` for a capture); every image must lie inside it.
    """
    if not frames:
        raise ValueError("write_transforms needs at least one frame")
    root = Path(root).absolute()
    intrinsics = [_intrinsics_entry(frame.camera) for frame in frames]
    shared = all(entry == intrinsics[0] for entry in intrinsics)
    meta: dict = dict(intrinsics[0]) if shared else {}
    if ply_file_path is not None:
        meta["ply_file_path"] = ply_file_path
    meta["frames"] = [
        _frame_entry(frame, root, None if shared else entry) for frame, entry in zip(frames, intrinsics)
    ]
    write_json(Path(path), meta)
    return Path(path)


def _intrinsics_entry(camera: Camera) -> dict:
    """nerfstudio intrinsics of ``camera`` (pixel-corner principal point); OPENCV when distorted, else PINHOLE."""
    K = colmap_K_from_opencv_K(camera.K)
    if abs(K[0, 1]) > 1e-9:
        raise ValueError("transforms.json cannot store a skewed K (K[0, 1] != 0)")
    dist = np.zeros(5)
    dist[: min(5, camera.dist.size)] = camera.dist[:5]
    if np.any(camera.dist[5:]):
        raise ValueError("transforms.json stores k1, k2, p1, p2, k3 only; this camera has rational terms k4..k6")
    entry = {
        "camera_model": "OPENCV" if np.any(dist) else "PINHOLE",
        "fl_x": float(K[0, 0]),
        "fl_y": float(K[1, 1]),
        "cx": float(K[0, 2]),
        "cy": float(K[1, 2]),
        "w": camera.width,
        "h": camera.height,
    }
    if np.any(dist):
        entry.update(k1=float(dist[0]), k2=float(dist[1]), p1=float(dist[2]), p2=float(dist[3]))
        if dist[4]:
            entry["k3"] = float(dist[4])
    return entry


def _frame_entry(frame: Frame, root: Path, intrinsics: dict | None) -> dict:
    camera = frame.camera
    entry: dict = {
        "file_path": _relative_name(frame.image_path, root),
        "transform_matrix": opengl_c2w_from_cam_from_world(camera.cam_from_world).tolist(),
    }
    if intrinsics is not None:
        entry.update(intrinsics)
    if camera.time is not None:
        entry["time"] = float(camera.time)
    if camera.camera_id is not None:
        entry["camera_id"] = int(camera.camera_id)
    for key, value in _OPTIONAL_FILES.items():
        if getattr(frame, value) is not None:
            entry[key] = _relative_name(getattr(frame, value), root)
    return entry


def _relative_name(path: Path, root: Path) -> str:
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        raise ValueError(f"{path} is not inside the capture folder {root}") from None


# --- transforms.json: reading ----------------------------------------------------------------------------------


def read_transforms(path: Path, allow_outside: bool = False) -> list[Frame]:
    """Frames of a nerfstudio or instant-ngp ``transforms.json`` whose images exist (one warning for the rest).

    Raises InputError when the file is unreadable or none of its images exist. ``allow_outside``: see
    ``load_transforms``.
    """
    listing = load_transforms(path, allow_outside)
    warn_skipped(listing.missing, len(listing.frames) + len(listing.missing), Path(path))
    return listing.frames


def load_transforms(path: Path, allow_outside: bool = False) -> TransformsListing:
    """Parse a nerfstudio / instant-ngp ``transforms.json``; missing images are returned, not warned about.

    Understood: top-level or per-frame intrinsics (``fl_x``/``fl_y`` or ``camera_angle_x``/``camera_angle_y``, ``cx``,
    ``cy``, ``w``, ``h``, ``k1 k2 p1 p2 [k3]``), ``file_path`` with or without extension or a leading "./",
    ``transform_matrix`` 4x4 or 3x4, ``time``, ``camera_id``, ``mask_path``, ``depth_file_path``,
    ``normal_file_path``, ``ply_file_path``. Ignored:
    ``aabb_scale``, ``scale``, ``offset``, ``sharpness``, ``applied_transform`` and other keys.

    Every file it names must lie in its folder (``multiview.paths.inside_folder``: InputError for ``..``, absolute
    paths and links that lead out) unless ``allow_outside``; two frames naming one image are refused.
    """
    path = Path(path).absolute()
    meta = _load_transforms_json(path)
    frames: list[Frame] = []
    missing: list[str] = []
    missing_masks = 0
    first_use: dict[Path, int] = {}
    for index, entry in enumerate(meta["frames"]):
        if not isinstance(entry, dict) or "file_path" not in entry:
            raise InputError(f"{path}: frame {index} has no file_path: every frame needs one")
        image_path = _listed_file(path, entry["file_path"], f"frame {index}'s file_path", allow_outside)
        if image_path is None:
            missing.append(entry["file_path"])
            continue
        if image_path in first_use:
            raise InputError(f"{path}: frames {first_use[image_path]} and {index} both name the image "
                             f"{entry['file_path']!r}: remove the duplicate frame (each frame is its own photo)")
        first_use[image_path] = index
        extras = {field: _listed_file(path, entry[key], f"frame {index}'s {key}", allow_outside)
                  for key, field in _OPTIONAL_FILES.items() if entry.get(key)}  # fmt: skip
        missing_masks += "mask_path" in extras and extras["mask_path"] is None
        camera = _camera_from_entry(meta, entry, image_path, f"{path} (frame {index}, {entry['file_path']})")
        frames.append(Frame(image_path, camera, **extras))
    if not frames:
        raise InputError(
            f"{path}: none of its {len(missing)} images exist (first: {missing[0]}): "
            "put the images where file_path points, relative to the file"
        )
    if missing_masks:
        warn(f"{missing_masks} mask(s) listed in {path} are missing: those frames are used without a mask")
    return TransformsListing(frames, missing, _find_points(path, meta, allow_outside))


def warn_skipped(names: Sequence[str], total: int, source: Path) -> None:
    """One warning for all listed-but-missing images (never one per file)."""
    if not names:
        return
    shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
    warn(f"{len(names)} of {total} images listed in {source} are missing on disk and were skipped: {shown}")


def _load_transforms_json(path: Path) -> dict:
    if not path.is_file():
        raise InputError(f"{path} does not exist: pass a transforms.json or the folder that holds it")
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(f"{path} is not readable JSON ({error}): re-export it from its tool") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("frames"), list) or not meta["frames"]:
        raise InputError(f"{path} has no 'frames' list: expected a nerfstudio or instant-ngp transforms.json")
    return meta


def _listed_file(transforms: Path, name: object, what: str, allow_outside: bool) -> Path | None:
    """The file ``name`` (an entry ``what`` of ``transforms``) names, inside the file's folder unless
    ``allow_outside``; tries common extensions when the file itself is absent; None when there is none."""
    inside_folder(transforms.parent, name, transforms, what, allow_outside)
    for candidate in (name, *(f"{name}{extension}" for extension in IMAGE_EXTENSIONS)):
        path = inside_folder(transforms.parent, candidate, transforms, what, allow_outside)
        if exists(path):
            return path
    return None


def _find_points(path: Path, meta: dict, allow_outside: bool) -> Path | None:
    name = meta.get("ply_file_path")
    if not name:
        return None
    ply = inside_folder(path.parent, name, path, "ply_file_path", allow_outside)
    if not exists(ply):
        warn(f"{path} names ply_file_path {name}, which does not exist: continuing without points")
        return None
    return ply


def _camera_from_entry(meta: dict, entry: dict, image_path: Path, where: str) -> Camera:
    """One frame's Camera: per-frame keys override top-level ones; ``where`` names the frame in errors."""
    params = {key: entry.get(key, meta.get(key)) for key in _INTRINSIC_KEYS}
    if params["camera_model"] not in _SUPPORTED_MODELS or params["is_fisheye"]:
        raise InputError(
            f"{where}: camera model {params['camera_model'] or 'fisheye'} is not supported: "
            "undistort the images to a pinhole camera first (e.g. COLMAP's image_undistorter)"
        )
    width, height = _image_size(params, image_path, where)
    fx, fy = _focal_lengths(params, width, height, where)
    cx = _number(params, "cx", where, default=width / 2)
    cy = _number(params, "cy", where, default=height / 2)
    if max(abs(cx) / width, abs(cy) / height) > MAX_FOCAL_PER_SIDE:
        raise InputError(f"{where}: principal point ({cx:g}, {cy:g}) lies far outside the {width}x{height} image: fix "
                         "cx and cy in the file")  # fmt: skip
    K = opencv_K_from_colmap_K(np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]]))
    camera_id = _number(entry, "camera_id", where, default=None)
    return Camera(
        K=K,
        cam_from_world=_pose(entry, where),
        width=width,
        height=height,
        dist=_distortion(params, where),
        time=_number(entry, "time", where, default=None),
        camera_id=None if camera_id is None else int(camera_id),
    )


def _number(params: dict, key: str, where: str, default: object = _REQUIRED) -> float | None:
    """``params[key]`` as a finite float; ``default`` when absent (InputError when absent and required)."""
    value = params.get(key)
    if value is None:
        if default is _REQUIRED:
            raise InputError(f"{where}: '{key}' is missing: add it to the file")
        return default
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{where}: '{key}' is {value!r}, not a number: fix the file") from None
    if not math.isfinite(number):
        raise InputError(f"{where}: '{key}' is {value!r}: fix the file")
    return number


def _image_size(params: dict, image_path: Path, where: str) -> tuple[int, int]:
    """(w, h) from the file, else from the image header (PIL reads it without decoding pixels)."""
    if params["w"] is not None and params["h"] is not None:
        width, height = _number(params, "w", where), _number(params, "h", where)
        if width < 1 or height < 1:
            raise InputError(f"{where}: w and h must be positive: fix the file")
        return round(width), round(height)
    try:
        with PIL.Image.open(image_path) as image:
            return image.size
    except (OSError, PIL.Image.DecompressionBombError) as error:
        raise InputError(f"{image_path} is not a readable image ({error}): replace or remove it") from None


def _focal_lengths(params: dict, width: int, height: int, where: str) -> tuple[float, float]:
    """fl_x and fl_y, from the angles (instant-ngp) when the focal lengths are absent; fl_y defaults to fl_x."""
    if params["fl_x"] is not None:
        fx = _number(params, "fl_x", where)
    elif params["camera_angle_x"] is not None:
        fx = 0.5 * width / math.tan(0.5 * _field_of_view(params, "camera_angle_x", where))
    else:
        raise InputError(f"{where}: no focal length (fl_x or camera_angle_x): add one to the file")
    if params["fl_y"] is not None:
        fy = _number(params, "fl_y", where)
    elif params["camera_angle_y"] is not None:
        fy = 0.5 * height / math.tan(0.5 * _field_of_view(params, "camera_angle_y", where))
    else:
        fy = fx
    if not (0 < fx <= MAX_FOCAL_PER_SIDE * max(width, height) and 0 < fy <= MAX_FOCAL_PER_SIDE * max(width, height)):
        raise InputError(f"{where}: focal lengths (fl_x, fl_y) {fx:g}, {fy:g} px for a {width}x{height} image: they "
                         f"must be positive and at most {MAX_FOCAL_PER_SIDE:g} times the image size: fix the file")
    return fx, fy


def _field_of_view(params: dict, key: str, where: str) -> float:
    """The angle ``params[key]`` in radians, strictly between 0 and pi (instant-ngp's camera_angle_x / _y)."""
    angle = _number(params, key, where)
    if not 0.0 < angle < math.pi:
        raise InputError(f"{where}: {key} {angle:g} is not a field of view in radians (between 0 and pi): fix the file")
    return angle


def _distortion(params: dict, where: str) -> np.ndarray:
    """[0], [4] or [5] OpenCV coefficients (k1, k2, p1, p2[, k3])."""
    if _number(params, "k4", where, default=0.0):
        raise InputError(f"{where}: k4 is a fisheye coefficient: undistort the images to a pinhole camera first")
    dist = np.array([_number(params, key, where, default=0.0) for key in ("k1", "k2", "p1", "p2", "k3")])
    if not np.any(dist):
        return np.zeros(0)
    return dist if dist[4] else dist[:4]


def _pose(entry: dict, where: str) -> np.ndarray:
    """[4, 4] cam_from_world from a ``transform_matrix`` (OpenGL camera-to-world, 4x4 or 3x4)."""
    try:
        c2w = np.asarray(entry.get("transform_matrix"), dtype=np.float64)
    except (TypeError, ValueError):
        c2w = np.zeros(0)
    if c2w.shape == (3, 4):
        c2w = np.concatenate([c2w, [[0.0, 0.0, 0.0, 1.0]]])
    if c2w.shape != (4, 4) or not np.isfinite(c2w).all():
        raise InputError(f"{where}: transform_matrix must be a finite 4x4 (or 3x4) matrix: fix the file")
    R = c2w[:3, :3]
    with np.errstate(all="ignore"):  # a rotation of 1e300s overflows: not a rotation, said below in one line
        is_rigid = (
            np.abs(R @ R.T - np.eye(3)).max() < _ROTATION_TOLERANCE
            and np.linalg.det(R) > 0
            and np.allclose(c2w[3], [0.0, 0.0, 0.0, 1.0])
        )
    if not is_rigid:
        raise InputError(f"{where}: transform_matrix is not a rigid camera-to-world transform: fix the file")
    if np.abs(c2w[:3, 3]).max() > MAX_COORDINATE:
        raise InputError(f"{where}: transform_matrix puts the camera at {np.abs(c2w[:3, 3]).max():.3g}, beyond "
                         f"{MAX_COORDINATE:g} from the origin: fix the file")  # fmt: skip
    return cam_from_world_from_opengl_c2w(c2w)


# --- points3D.ply ----------------------------------------------------------------------------------------------

_PLY_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "i2", "int16": "i2",
    "ushort": "u2", "uint16": "u2", "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}  # fmt: skip


def write_points_ply(path: Path, xyz: np.ndarray, rgb: np.ndarray | None = None) -> Path:
    """Write points as a binary little-endian PLY (x y z float, red green blue uchar), atomically.

    xyz: [P, 3] float; rgb: [P, 3] uint8 or None (no colour properties then). Readable by Open3D and nerfstudio.
    """
    xyz = np.asarray(xyz)
    if xyz.ndim != 2 or xyz.shape[1] != 3 or not np.isfinite(xyz).all():
        raise ValueError(f"xyz must be a finite [P, 3] array, got shape {xyz.shape}")
    fields = [("x", "<f4"), ("y", "<f4"), ("z", "<f4")]
    if rgb is not None:
        rgb = np.asarray(rgb)
        if rgb.shape != xyz.shape or rgb.dtype != np.uint8:
            raise ValueError(f"rgb must be uint8 [P, 3] like xyz {xyz.shape}, got {rgb.dtype} {rgb.shape}")
        fields += [("red", "u1"), ("green", "u1"), ("blue", "u1")]
    vertices = np.empty(len(xyz), dtype=fields)
    for axis, name in enumerate("xyz"):
        vertices[name] = xyz[:, axis]
    if rgb is not None:
        for channel, name in enumerate(("red", "green", "blue")):
            vertices[name] = rgb[:, channel]
    properties = "".join(
        f"property {'float' if kind == '<f4' else 'uchar'} {name}\n" for name, kind in fields
    )
    header = f"ply\nformat binary_little_endian 1.0\nelement vertex {len(xyz)}\n{properties}end_header\n"
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as file:
        file.write(header.encode("ascii"))
        file.write(vertices.tobytes())
    os.replace(tmp, path)
    return path


def read_points_ply(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """Read the vertices of a PLY point cloud: ([P, 3] float32 xyz, [P, 3] uint8 rgb or None).

    Accepts binary (either endianness) and ASCII PLYs with any scalar vertex properties (normals etc. are
    ignored), so COLMAP's, Open3D's and nerfstudio's files load too. Corrupt or truncated -> InputError.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise InputError(f"{path} is not readable ({error.strerror}): check the path") from None
    vertices = ply_vertices(data, path)
    names = vertices.dtype.names
    if not {"x", "y", "z"} <= set(names):
        raise InputError(f"{path} has no x, y, z vertex properties: not a point cloud")
    xyz = np.stack([vertices[axis] for axis in "xyz"], axis=-1).astype(np.float32)
    if not np.isfinite(xyz).all():
        raise InputError(f"{path} has non-finite point coordinates: the file is corrupt")
    if not {"red", "green", "blue"} <= set(names):
        return xyz, None
    rgb = np.stack([vertices[name] for name in ("red", "green", "blue")], axis=-1)
    if rgb.dtype.kind == "f":  # some writers store colours as floats in [0, 1]
        rgb = np.round(np.clip(rgb, 0.0, 1.0) * 255.0)
    return xyz, rgb.astype(np.uint8)


def ply_vertices(data: bytes, path: Path) -> np.ndarray:
    """The vertex element of a PLY file's bytes (binary or ASCII) as a structured array.

    A malformed header, unknown property types, repeated names or a truncated body raise InputError naming ``path``.
    """
    fmt, elements, body_start = _parse_ply_header(data, path)
    return _read_ply_vertices(data[body_start:], fmt, elements, path)


def _parse_ply_header(data: bytes, path: Path) -> tuple[str, list[tuple[str, int, list]], int]:
    """(format, [(element name, count, [(property, numpy type) or (property, None) for lists])], body offset)."""
    end = data.find(b"end_header")
    newline = data.find(b"\n", end)
    if not data.startswith(b"ply") or end < 0 or newline < 0:
        raise InputError(f"{path} is not a PLY file (no 'ply' ... 'end_header' header): check the file")
    fmt, elements = None, []
    for line in data[:end].decode("ascii", errors="replace").splitlines()[1:]:
        words = line.split()
        if not words or words[0] in ("comment", "obj_info"):
            continue
        if words[0] == "format" and len(words) >= 2:
            fmt = words[1]
        elif words[0] == "element" and len(words) == 3 and words[2].isdigit():
            elements.append((words[1], int(words[2]), []))
        elif words[0] == "property" and elements and len(words) >= 3:
            is_list = words[1] == "list"
            kind = None if is_list else _PLY_TYPES.get(words[1])
            if not is_list and kind is None:
                raise InputError(f"{path}: unknown PLY property type {words[1]!r}: the file is corrupt")
            elements[-1][2].append((words[-1], kind))
        else:
            raise InputError(f"{path}: malformed PLY header line {line.strip()!r}: the file is corrupt")
    if fmt not in ("binary_little_endian", "binary_big_endian", "ascii"):
        raise InputError(f"{path}: unsupported PLY format {fmt!r}: save it as binary or ASCII PLY")
    return fmt, elements, newline + 1


def _read_ply_vertices(body: bytes, fmt: str, elements: list, path: Path) -> np.ndarray:
    """The vertex element as a structured array; elements before it must have fixed-size records."""
    names = [name for name, _, _ in elements]
    if "vertex" not in names:
        raise InputError(f"{path} has no vertex element: not a point cloud")
    before = elements[: names.index("vertex")]
    _, count, properties = elements[names.index("vertex")]
    if any(kind is None for _, _, props in before + [elements[names.index("vertex")]] for _, kind in props):
        raise InputError(f"{path}: list properties before or in the vertex element are not supported")
    if fmt == "ascii":
        return _read_ply_ascii(body, sum(c for _, c, _ in before), count, properties, path)
    order = "<" if fmt == "binary_little_endian" else ">"
    try:
        dtype = np.dtype([(name, order + kind) for name, kind in properties])
    except ValueError:
        raise InputError(f"{path}: repeated PLY property names: the file is corrupt") from None
    offset = sum(c * np.dtype([(n, order + k) for n, k in props]).itemsize for _, c, props in before)
    if len(body) < offset + count * dtype.itemsize:
        raise InputError(f"{path} is truncated: its header promises {count} vertices: re-export the file")
    return np.frombuffer(body, dtype=dtype, count=count, offset=offset)


def _read_ply_ascii(body: bytes, skip_lines: int, count: int, properties: list, path: Path) -> np.ndarray:
    lines = body.decode("ascii", errors="replace").splitlines()[skip_lines : skip_lines + count]
    dtype = np.dtype([(name, kind) for name, kind in properties])
    try:
        rows = np.array([[float(v) for v in line.split()[: len(properties)]] for line in lines])
    except ValueError:
        raise InputError(f"{path}: non-numeric vertex values: the file is corrupt") from None
    if rows.shape != (count, len(properties)):
        raise InputError(f"{path} is truncated: its header promises {count} vertices: re-export the file")
    out = np.empty(count, dtype=dtype)
    for column, (name, _) in enumerate(properties):
        out[name] = rows[:, column]
    return out


# --- whole captures --------------------------------------------------------------------------------------------


def read_capture(root: Path, allow_outside: bool = False) -> Capture:
    """Read a capture folder (or its ``transforms.json``): frames from ``transforms.json``, points from its
    ``ply_file_path`` (or points3D.ply). ``allow_outside``: read files it names outside its folder (``load_transforms``
    refuses them otherwise)."""
    root = Path(root).absolute()
    if root.name == TRANSFORMS_FILE and root.is_file():
        root = root.parent
    transforms = root / TRANSFORMS_FILE
    if not root.exists():
        raise InputError(f"{root} does not exist: give a capture folder (orbit4d capture or import makes one)")
    if not transforms.is_file():
        raise InputError(f"{root} has no {TRANSFORMS_FILE}: not a capture folder; make one with `orbit4d import`")
    listing = load_transforms(transforms, allow_outside)
    warn_skipped(listing.missing, len(listing.frames) + len(listing.missing), transforms)
    ply = listing.ply_path or (root / POINTS_FILE if (root / POINTS_FILE).is_file() else None)
    points, colors = read_points_ply(ply) if ply is not None else (None, None)
    return Capture(root, listing.frames, points, colors)


def write_capture(capture: Capture) -> Path:
    """Write ``transforms.json`` (and ``points3D.ply`` when there are points) into ``capture.root``; return it.

    The images must already lie inside ``capture.root``.
    """
    root = Path(capture.root).absolute()
    ply_name = None
    if capture.points is not None and len(capture.points):
        write_points_ply(root / POINTS_FILE, capture.points, capture.colors)
        ply_name = POINTS_FILE
    write_transforms(root / TRANSFORMS_FILE, capture.frames, root, ply_name)
    return root


def write_report(
    root: Path,
    source_format: str,
    source: Path,
    total: int,
    registered: int,
    skipped: Sequence[str],
    seconds: float,
    **extra: object,
) -> Path:
    """Write ``report.json`` for a capture made from ``source``; ``extra`` adds stage-specific fields."""
    report = {
        "source_format": source_format,
        "source": str(source),
        "registered": int(registered),
        "total": int(total),
        "skipped": list(skipped),
        "seconds": round(float(seconds), 3),
        **extra,
    }
    path = Path(root) / REPORT_FILE
    write_json(path, report)
    return path


# --- COLMAP models ---------------------------------------------------------------------------------------------

# COLMAP camera models that are OpenCV's model with trailing coefficients fixed at zero:
# name -> (index of the first distortion parameter, how many of OpenCV's k1, k2, p1, p2, k3, k4, k5, k6 it has).
_COLMAP_DISTORTION = {
    "SIMPLE_PINHOLE": (3, 0),
    "PINHOLE": (4, 0),
    "SIMPLE_RADIAL": (3, 1),
    "RADIAL": (3, 2),
    "OPENCV": (4, 4),
    "FULL_OPENCV": (4, 8),
}


def read_colmap_model(model_dir: Path) -> "pycolmap.Reconstruction":
    """Read a COLMAP sparse model (binary or text, COLMAP 3.x or 4.x layout) with pycolmap."""
    import pycolmap

    model_dir = Path(model_dir)
    if not any((model_dir / f"{name}{ext}").is_file() for name in ("cameras", "images") for ext in (".bin", ".txt")):
        raise InputError(f"{model_dir} holds no COLMAP model (cameras.bin/.txt): pass the model folder, e.g. sparse/0")
    check_binary_model(model_dir)  # pycolmap trusts the counts in the files: a lying one costs gigabytes
    try:
        return pycolmap.Reconstruction(model_dir)
    except Exception as error:  # pycolmap raises assorted types (ValueError, RuntimeError) for corrupt models
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise InputError(f"{model_dir}: cannot read the COLMAP model ({reason}): re-export it from COLMAP") from None


def camera_from_colmap(
    colmap_camera: "pycolmap.Camera", cam_from_world: np.ndarray, camera_id: int | None = None
) -> Camera:
    """A Camera from a pycolmap camera and a [3, 4] or [4, 4] ``cam_from_world``; K shifted to OpenCV pixels."""
    model = colmap_camera.model.name
    if model not in _COLMAP_DISTORTION:
        raise InputError(f"COLMAP camera model {model} has no OpenCV equivalent: undistort the model first")
    first, count = _COLMAP_DISTORTION[model]
    dist = np.zeros(max(4, count))
    dist[:count] = np.asarray(colmap_camera.params, dtype=np.float64)[first : first + count]
    pose = np.eye(4)
    pose[:3, :] = np.asarray(cam_from_world)[:3, :]
    return Camera(
        K=opencv_K_from_colmap_K(colmap_camera.calibration_matrix()),
        cam_from_world=pose,
        width=colmap_camera.width,
        height=colmap_camera.height,
        dist=dist if np.any(dist) else np.zeros(0),
        camera_id=camera_id,
    )


def frames_from_reconstruction(
    reconstruction: "pycolmap.Reconstruction", image_dir: Path
) -> tuple[list[Frame], list[str]]:
    """Frames of the posed images whose files exist in ``image_dir`` (sorted by name), and the missing names.

    ``camera_id`` is set only for multi-camera rigs, where it tells the physical cameras apart.
    """
    image_dir = Path(image_dir).absolute()
    is_rig = any(rig.num_sensors() > 1 for rig in reconstruction.rigs.values())
    frames, missing = [], []
    for image in sorted(reconstruction.images.values(), key=lambda image: image.name):
        if not image.has_pose:
            continue
        path = image_dir / image.name
        if not path.is_file():
            missing.append(image.name)
            continue
        camera = reconstruction.cameras[image.camera_id]
        pose = image.cam_from_world().matrix()
        frames.append(Frame(path, camera_from_colmap(camera, pose, image.camera_id if is_rig else None)))
    return frames, missing


def points_from_reconstruction(reconstruction: "pycolmap.Reconstruction") -> tuple[np.ndarray, np.ndarray]:
    """([P, 3] float32 xyz, [P, 3] uint8 rgb) of the model's 3D points, in point-id order."""
    ids = sorted(reconstruction.points3D)
    xyz = np.array([reconstruction.points3D[i].xyz for i in ids], dtype=np.float32).reshape(-1, 3)
    rgb = np.array([reconstruction.points3D[i].color for i in ids], dtype=np.uint8).reshape(-1, 3)
    return xyz, rgb


def capture_from_colmap(model_dir: Path, image_dir: Path, out_dir: Path) -> Path:
    """Write a capture into ``out_dir`` (existing, empty) from a COLMAP model and the images it was made from.

    Undistorts the registered images to pinhole cameras with pycolmap (same file names), keeps the undistorted
    model in ``sparse/0`` (binary), and writes ``transforms.json``, ``points3D.ply`` and ``report.json``.
    Registered images missing from ``image_dir`` are deregistered and listed once in a warning and the report.
    """
    start = time.perf_counter()
    model_dir, image_dir, out_dir = Path(model_dir), Path(image_dir).absolute(), Path(out_dir).absolute()
    if not image_dir.is_dir():
        raise InputError(f"{image_dir} is not a folder: pass the image folder the COLMAP model was made from")
    reconstruction = read_colmap_model(model_dir)
    total = reconstruction.num_images()
    missing = _deregister_missing_images(reconstruction, image_dir)
    if reconstruction.num_reg_images() == 0:
        raise InputError(
            f"{model_dir}: none of its registered images are in {image_dir}: "
            "pass the image folder the model was made from"
        )
    warn_skipped(missing, total, model_dir)
    work = out_dir / ".undistort"
    (work / "model").mkdir(parents=True)
    reconstruction.write(work / "model")
    _undistort(work / "model", image_dir, work / "out")
    os.replace(work / "out" / IMAGES_DIR, out_dir / IMAGES_DIR)
    (out_dir / SPARSE_DIR).parent.mkdir(parents=True)
    os.replace(work / "out" / "sparse", out_dir / SPARSE_DIR)
    shutil.rmtree(work)

    undistorted = read_colmap_model(out_dir / SPARSE_DIR)
    frames, unreadable = frames_from_reconstruction(undistorted, out_dir / IMAGES_DIR)
    if not frames:
        raise InputError(f"{image_dir}: pycolmap could read none of the model's images: check the image files")
    warn_skipped(unreadable, len(frames) + len(unreadable), image_dir)
    points, colors = points_from_reconstruction(undistorted)
    write_capture(Capture(out_dir, frames, points, colors))
    unregistered = sorted(image.name for image in reconstruction.images.values() if not image.has_pose)
    skipped = sorted(set(missing) | set(unregistered) | set(unreadable))
    write_report(out_dir, "colmap", model_dir, total, len(frames), skipped, time.perf_counter() - start)
    return out_dir


def _deregister_missing_images(reconstruction: "pycolmap.Reconstruction", image_dir: Path) -> list[str]:
    """Deregister every frame (rig snapshot) that has a registered image missing on disk; return those names."""
    missing = sorted(
        image.name
        for image in reconstruction.images.values()
        if image.has_pose and not (image_dir / image.name).is_file()
    )
    frame_ids = {reconstruction.find_image_with_name(name).frame_id for name in missing}
    for frame_id in frame_ids:
        reconstruction.deregister_frame(frame_id)
    return missing


def _undistort(model_dir: Path, image_dir: Path, out_dir: Path) -> None:
    """pycolmap's undistorter, quietly: ``out_dir/images`` and ``out_dir/sparse`` (PINHOLE), plus stereo files."""
    import pycolmap

    info("undistorting images to pinhole")
    previous = pycolmap.logging.minloglevel
    pycolmap.logging.minloglevel = 1  # warnings and errors only
    try:
        pycolmap.undistort_images(out_dir, model_dir, image_dir, jpeg_quality=95)
    finally:
        pycolmap.logging.minloglevel = previous


# --- undistorting frames from other sources --------------------------------------------------------------------


def undistort_frames(frames: Sequence[Frame], image_root: Path, out_dir: Path) -> list[Frame]:
    """Undistort ``frames`` (images under ``image_root``) into ``out_dir/images`` with pycolmap; poses unchanged.

    Returns the frames with pinhole cameras (new K, width, height) and the new image paths, which keep their
    names relative to ``image_root``. Masks are not undistorted: frames come back without them.
    """
    image_root, out_dir = Path(image_root).absolute(), Path(out_dir).absolute()
    names = [_relative_name(frame.image_path, image_root) for frame in frames]
    if any(frame.mask_path is not None for frame in frames):
        warn("masks are not undistorted: the imported frames have no masks")
    work = out_dir / ".undistort"
    (work / "model").mkdir(parents=True)
    reconstruction_from_frames(frames, names).write(work / "model")
    _undistort(work / "model", image_root, work / "out")
    os.replace(work / "out" / IMAGES_DIR, out_dir / IMAGES_DIR)
    undistorted = read_colmap_model(work / "out" / "sparse")
    shutil.rmtree(work)
    result = []
    for frame, name in zip(frames, names):
        image = undistorted.find_image_with_name(name)
        if image is None or not (out_dir / IMAGES_DIR / name).is_file():
            raise InputError(f"{frame.image_path} could not be undistorted (unreadable image?): replace or remove it")
        pinhole = camera_from_colmap(undistorted.cameras[image.camera_id], frame.camera.cam_from_world)
        camera = replace(pinhole, time=frame.camera.time, camera_id=frame.camera.camera_id)
        result.append(Frame(out_dir / IMAGES_DIR / name, camera))
    return result


def reconstruction_from_frames(frames: Sequence[Frame], names: Sequence[str]) -> "pycolmap.Reconstruction":
    """A pycolmap model of ``frames`` (no points): one camera per distinct intrinsics, images named ``names``."""
    import pycolmap

    reconstruction = pycolmap.Reconstruction()
    camera_ids: dict[tuple, int] = {}
    for image_id, (frame, name) in enumerate(zip(frames, names), start=1):
        model, params = _colmap_camera_params(frame.camera)
        key = (model, frame.camera.width, frame.camera.height, tuple(params))
        if key not in camera_ids:
            camera_ids[key] = len(camera_ids) + 1
            reconstruction.add_camera_with_trivial_rig(
                pycolmap.Camera(model=model, width=key[1], height=key[2], params=params, camera_id=camera_ids[key])
            )
        image = pycolmap.Image(name=name, camera_id=camera_ids[key], image_id=image_id)
        reconstruction.add_image_with_trivial_frame(image, pycolmap.Rigid3d(frame.camera.cam_from_world[:3, :]))
    return reconstruction


def _colmap_camera_params(camera: Camera) -> tuple[str, list[float]]:
    K = colmap_K_from_opencv_K(camera.K)
    intrinsics = [K[0, 0], K[1, 1], K[0, 2], K[1, 2]]
    dist = camera.dist
    if not np.any(dist):
        return "PINHOLE", intrinsics
    if dist.size <= 4:
        return "OPENCV", intrinsics + list(np.pad(dist, (0, 4 - dist.size)))
    if dist.size > 8:
        raise ValueError(f"COLMAP's FULL_OPENCV holds 8 distortion coefficients, this camera has {dist.size}")
    return "FULL_OPENCV", intrinsics + list(np.pad(dist, (0, 8 - dist.size)))
