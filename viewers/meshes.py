"""Mesh files for Blender and other tools (glTF binary, OBJ, PLY), and ``export_scene_mesh``: a trained scene's mesh.

Axes and units of the files:

- ``.glb``: glTF 2.0, +Y up, metres (as glTF says). Blender's importer stands it +Z up. ``COLOR_0`` holds the vertex
  colours in linear light (glTF's rule; Blender reads them as linear), and the one material is glTF's default,
  white, multiplied by them. The asset's ``extras.orbit4d`` records how the file sits in the scene:
  ``file_from_scene`` (4x4), ``metres_per_unit`` (null when the scene's scale is unknown) and where the frame came from.
- ``.obj``: the same coordinates as the ``.glb`` (+Y up, -Z forward: what Blender's OBJ importer assumes by default,
  and Maya, three.js and most tools too), with ``v x y z r g b`` vertex colours in sRGB (what Blender's importer
  assumes for them); the header comments record the frame and scale.
- ``.ply``: the scene's own (the capture's) world frame and units, like ``splats.ply``, so that the mesh overlays the
  splats in any viewer and can be measured against the capture's ground truth; 8-bit sRGB vertex colours;
  the header comments record the frame in which the ``.glb`` would stand.

The file frame (``ExportFrame``): for a capture rendered from a 3D asset (``orbit4d render-asset``), the asset's own
frame and units (its ``ground_truth/normalization.json`` undone; metres for a glTF asset), so the mesh lands where the
asset was; otherwise
the cameras' mean up direction becomes +Y, the first camera looks along -Z, the mesh stands on y = 0 centred over
the origin, and the scale is the capture's (structure from motion does not know metres: ``metres_per_unit`` null)
unless given.
"""

from __future__ import annotations

import json
import math
import os
import struct
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from multiview.camera import Camera
from multiview.errors import InputError, OutputExistsError
from reconstruct.mesh import Mesh, MeshConfig, MeshReport, MeshView, extract_mesh, scene_up

MESH_KINDS = ("glb", "obj", "ply")
GENERATOR = "orbit4d"


@dataclass(frozen=True)
class ExportFrame:
    """Where a scene's mesh goes in a file: +Y up, in metres when the scale is known."""

    file_from_scene: np.ndarray
    """[4, 4] similarity (rotation, uniform scale, translation): scene (capture world) -> file coordinates."""
    metres_per_unit: float | None
    """Metres per file unit when known (an asset's glTF: 1); None when the capture's scale is unknown (SfM)."""
    source: str
    """How the frame was chosen, in words."""

    @property
    def scale(self) -> float:
        """File units per scene unit."""
        return float(np.cbrt(abs(np.linalg.det(self.file_from_scene[:3, :3]))))

    def to_json(self) -> dict:
        return {"file_from_scene": np.round(self.file_from_scene, 12).tolist(), "scale": self.scale,
                "metres_per_unit": self.metres_per_unit, "up": "+Y", "frame": self.source}  # fmt: skip


def export_frame(mesh: Mesh, cameras: Sequence[Camera], capture_root: Path | None = None,
                 metres_per_unit: float | None = None) -> ExportFrame:  # fmt: skip
    """The file frame of ``mesh`` (scene coordinates) for a capture with ``cameras`` (see the module docstring);
    ``metres_per_unit``: the scene's scale when the user knows it (the mesh is then written in metres)."""
    normalization = None if capture_root is None else Path(capture_root) / "ground_truth" / "normalization.json"
    if metres_per_unit is None and normalization is not None and normalization.is_file():
        world_from_asset = _world_from_asset(normalization)
        if world_from_asset is not None:
            metres = 1.0 if _asset_suffix(Path(capture_root)) in (".gltf", ".glb") else None  # glTF is in metres
            return ExportFrame(np.linalg.inv(world_from_asset), metres, "the rendered asset's own frame and units "
                               f"({normalization.relative_to(capture_root)} undone)")
    up = scene_up(cameras)
    forward = cameras[0].world_from_cam[:3, 2]
    forward = forward - (forward @ up) * up
    if np.linalg.norm(forward) < 1e-6:  # the first camera looks straight down or up
        forward = np.cross(up, [1.0, 0.0, 0.0] if abs(up[0]) < 0.9 else [0.0, 1.0, 0.0])
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, up)
    rotation = np.stack([right, up, -forward])  # rows: file x, y, z in scene coordinates; the first view looks -Z
    scale = 1.0 if metres_per_unit is None else float(metres_per_unit)
    turned = (mesh.vertices @ rotation.T) * scale
    low, high = turned.min(0), turned.max(0)
    file_from_scene = np.eye(4)
    file_from_scene[:3, :3] = rotation * scale
    file_from_scene[:3, 3] = -np.array([(low[0] + high[0]) / 2, low[1], (low[2] + high[2]) / 2])
    units = "metres as given" if metres_per_unit is not None else "the capture's units (scale unknown)"
    return ExportFrame(file_from_scene, metres_per_unit, f"the cameras' mean up as +Y, standing on y = 0; {units}")


def _asset_suffix(capture_root: Path) -> str:
    """The suffix of the asset a render-asset capture was made from (its report.json's "asset"), or ""."""
    try:
        return Path(str(json.loads((capture_root / "report.json").read_text()).get("asset", ""))).suffix.lower()
    except (OSError, ValueError, AttributeError):
        return ""


def _world_from_asset(path: Path) -> np.ndarray | None:
    try:
        matrix = np.asarray(json.loads(path.read_text())["world_from_asset"], dtype=np.float64)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if matrix.shape != (4, 4) or not np.isfinite(matrix).all() or abs(np.linalg.det(matrix[:3, :3])) < 1e-12:
        return None
    return matrix


# --- writers ---------------------------------------------------------------------------------------------------


def write_mesh(path: Path, mesh: Mesh, frame: ExportFrame) -> Path:
    """Write ``mesh`` (scene coordinates) as ``path``'s kind (.glb, .obj or .ply, see the module docstring),
    atomically; return ``path``."""
    path = Path(path)
    kind = path.suffix.lower().lstrip(".")
    if kind not in MESH_KINDS:
        raise InputError(f"{path}: '{path.suffix or 'no extension'}' is not a mesh format orbit4d writes: use "
                         f"{', '.join('.' + k for k in MESH_KINDS)}")
    if kind == "ply":
        payload = ply_bytes(mesh, frame)
    else:
        in_file = mesh.transformed(frame.file_from_scene)
        payload = glb_bytes(in_file, frame) if kind == "glb" else obj_text(in_file, frame).encode()
    _write_atomic(path, payload)
    return path


def srgb_to_linear(srgb: np.ndarray) -> np.ndarray:
    """sRGB-encoded values in [0, 1] -> linear light (the IEC 61966-2-1 curve)."""
    srgb = np.clip(np.asarray(srgb, dtype=np.float64), 0.0, 1.0)
    return np.where(srgb <= 0.04045, srgb / 12.92, ((srgb + 0.055) / 1.055) ** 2.4)


def vertex_normals(mesh: Mesh) -> np.ndarray:
    """[V, 3] float32 unit normals: each vertex's faces' normals weighted by their areas (+Z where none)."""
    v = mesh.vertices
    face_normals = np.cross(v[mesh.faces[:, 1]] - v[mesh.faces[:, 0]], v[mesh.faces[:, 2]] - v[mesh.faces[:, 0]])
    normals = np.zeros_like(v)
    for corner in range(3):
        np.add.at(normals, mesh.faces[:, corner], face_normals)
    length = np.linalg.norm(normals, axis=1, keepdims=True)
    return np.where(length > 1e-20, normals / np.maximum(length, 1e-30), [0.0, 0.0, 1.0]).astype(np.float32)


_FLOAT, _UINT = 5126, 5125  # glTF componentType
_ARRAY_BUFFER, _ELEMENT_ARRAY_BUFFER = 34962, 34963


def glb_bytes(mesh: Mesh, frame: ExportFrame) -> bytes:
    """A binary glTF 2.0 of ``mesh`` (file coordinates): positions, normals, linear ``COLOR_0``, uint32 indices, one
    double-sided default material, ``frame`` in ``asset.extras.orbit4d``."""
    positions = mesh.vertices.astype(np.float32)
    arrays = [  # (data, accessor type, target)
        (positions, "VEC3", _ARRAY_BUFFER),
        (vertex_normals(mesh), "VEC3", _ARRAY_BUFFER),
        (srgb_to_linear(mesh.colors).astype(np.float32), "VEC3", _ARRAY_BUFFER),
        (mesh.faces.astype(np.uint32).reshape(-1), "SCALAR", _ELEMENT_ARRAY_BUFFER),
    ]
    blob, views, accessors = bytearray(), [], []
    for index, (data, kind, target) in enumerate(arrays):
        raw = np.ascontiguousarray(data).astype(data.dtype.newbyteorder("<")).tobytes()
        views.append({"buffer": 0, "byteOffset": len(blob), "byteLength": len(raw), "target": target})
        blob += raw + b"\0" * (-len(raw) % 4)
        accessor = {"bufferView": index, "componentType": _UINT if data.dtype == np.uint32 else _FLOAT,
                    "count": int(len(data)), "type": kind}  # fmt: skip
        accessors.append(accessor)
    accessors[0]["min"] = positions.min(0).tolist() if len(positions) else [0.0] * 3
    accessors[0]["max"] = positions.max(0).tolist() if len(positions) else [0.0] * 3
    document = {
        "asset": {"version": "2.0", "generator": GENERATOR, "extras": {"orbit4d": frame.to_json()}},
        "scene": 0,
        "scenes": [{"nodes": [0]}],
        "nodes": [{"name": "orbit4d_mesh", "mesh": 0}],
        "meshes": [{"name": "orbit4d_mesh", "primitives": [
            {"attributes": {"POSITION": 0, "NORMAL": 1, "COLOR_0": 2}, "indices": 3, "material": 0, "mode": 4}]}],
        "materials": [{"name": "orbit4d_vertex_colors", "doubleSided": True,
                       "pbrMetallicRoughness": {"baseColorFactor": [1.0, 1.0, 1.0, 1.0], "metallicFactor": 0.0,
                                                "roughnessFactor": 1.0}}],
        "accessors": accessors,
        "bufferViews": views,
        "buffers": [{"byteLength": len(blob)}],
    }  # fmt: skip
    text = json.dumps(document, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 4)
    total = 12 + 8 + len(text) + 8 + len(blob)
    return b"".join([struct.pack("<4sII", b"glTF", 2, total), struct.pack("<I4s", len(text), b"JSON"), text,
                     struct.pack("<I4s", len(blob), b"BIN\0"), bytes(blob)])  # fmt: skip


def obj_text(mesh: Mesh, frame: ExportFrame) -> str:
    """A Wavefront OBJ of ``mesh`` (file coordinates) with sRGB vertex colours; the frame in comments."""
    lines = [f"# {GENERATOR} mesh: +Y up, -Z forward (Blender's OBJ import default); vertex colours sRGB",
             f"# frame: {json.dumps(frame.to_json())}", "o orbit4d_mesh"]  # fmt: skip
    rows = np.concatenate([mesh.vertices, mesh.colors.astype(np.float64)], axis=1)
    lines += [f"v {x:.7g} {y:.7g} {z:.7g} {r:.4f} {g:.4f} {b:.4f}" for x, y, z, r, g, b in rows]
    lines += [f"f {a} {b} {c}" for a, b, c in (mesh.faces + 1)]
    return "\n".join(lines) + "\n"


def ply_bytes(mesh: Mesh, frame: ExportFrame) -> bytes:
    """A binary little-endian PLY of ``mesh`` in scene coordinates with 8-bit sRGB vertex colours."""
    header = "\n".join([
        "ply", "format binary_little_endian 1.0",
        f"comment {GENERATOR} mesh in the scene's (capture's) world frame, like splats.ply; colours sRGB",
        f"comment glb frame: {json.dumps(frame.to_json())}",
        f"element vertex {len(mesh.vertices)}",
        "property float x", "property float y", "property float z",
        "property uchar red", "property uchar green", "property uchar blue",
        f"element face {len(mesh.faces)}", "property list uchar int vertex_indices", "end_header",
    ]) + "\n"  # fmt: skip
    vertex = np.empty(len(mesh.vertices), dtype=[("xyz", "<f4", 3), ("rgb", "u1", 3)])
    vertex["xyz"] = mesh.vertices
    vertex["rgb"] = np.round(np.clip(mesh.colors, 0.0, 1.0) * 255.0).astype(np.uint8)
    face = np.empty(len(mesh.faces), dtype=[("n", "u1"), ("ids", "<i4", 3)])
    face["n"], face["ids"] = 3, mesh.faces
    return header.encode("ascii") + vertex.tobytes() + face.tobytes()


def _write_atomic(path: Path, payload: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as file:
            file.write(payload)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise



# --- a trained scene's mesh ------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class SceneMesh:
    """A trained scene's mesh with what exports need: its file frame and the capture's cameras."""

    mesh: Mesh
    """The mesh in the scene's (capture's) world frame."""
    report: MeshReport
    """How it was extracted."""
    frame: ExportFrame
    """Where it goes in a file."""
    cameras: list[tuple[str, Camera]]
    """The capture's views by image name, at the capture's resolution."""
    capture: Path
    """The capture the scene was trained on."""


def scene_files(scene_dir: Path, capture: Path | None = None) -> tuple[Path, Path, int]:
    """(splats.ply, capture folder, training downscale) of the scene at ``scene_dir``; InputError naming what is
    missing and what to do."""
    from reconstruct.evaluate import read_trained_scene

    scene_dir = Path(scene_dir)
    if not scene_dir.exists():
        raise InputError(f"{scene_dir} does not exist: give a scene folder (orbit4d train --out SCENE)")
    if not scene_dir.is_dir():
        raise InputError(f"{scene_dir} is a file: give the scene folder that holds splats.ply (orbit4d train --out)")
    splats = scene_dir / "splats.ply"
    if not splats.is_file():
        partial = scene_dir.parent / f".{scene_dir.name}.partial"
        hint = (f"an interrupted training run is in {partial}: finish it with orbit4d train --resume"
                if partial.is_dir() else "train one with orbit4d train CAPTURE --out SCENE")
        raise InputError(f"{scene_dir} holds no splats.ply, so it is not a trained scene: {hint}")
    trained = read_trained_scene(scene_dir)
    capture = capture or trained.capture
    if capture is None:
        raise InputError(f"{scene_dir}/metrics.json does not name the capture the scene was trained on: pass --capture")
    if not (Path(capture) / "transforms.json").is_file():
        raise InputError(f"{capture}, the capture of {scene_dir}, is not there (no transforms.json): pass --capture "
                         "with where it is now")
    return splats, Path(capture), trained.config.downscale


def scene_mesh(scene_dir: Path, config: MeshConfig = MeshConfig(), capture: Path | None = None,
               metres_per_unit: float | None = None) -> SceneMesh:  # fmt: skip
    """Extract the mesh of the trained scene at ``scene_dir`` (its splats.ply, seen from its capture's cameras at
    the training resolution, with the capture's masks when ``config.use_masks``), on the CPU."""
    from reconstruct.data import load_scene
    from reconstruct.ply import read_ply

    config.validate()
    if metres_per_unit is not None and not 0 < metres_per_unit < math.inf:
        raise InputError(f"--scale {metres_per_unit}: give the metres one scene unit spans, a positive number")
    splats_path, capture, downscale = scene_files(scene_dir, capture)
    splats = read_ply(splats_path)
    if len(splats) == 0:
        raise InputError(f"{splats_path} holds no Gaussians: there is no surface to mesh")
    data = load_scene(capture, downscale, test_every=0)
    views = [MeshView(view.camera, None if view.mask is None else view.mask[..., 0].numpy() >= 128)
             for view in data.train]  # fmt: skip
    mesh, report = extract_mesh(splats, views, config)
    full_size = [(frame.image_path.relative_to(data.capture.root).as_posix() if frame.image_path.is_relative_to(
        data.capture.root) else frame.image_path.name, frame.camera) for frame in data.capture.frames]  # fmt: skip
    frame = export_frame(mesh, [camera for _, camera in full_size], capture, metres_per_unit)
    return SceneMesh(mesh, report, frame, sorted(full_size, key=lambda item: item[0]), capture)


def check_output_file(path: Path, overwrite: bool, inputs: Sequence[Path] = ()) -> Path:
    """``path`` made absolute once it is known that it can be written: its kind is known, it is none of ``inputs``,
    no folder stands there, it does not exist (unless ``overwrite``), and the folder it goes in is (or can be made)
    writable. The error names the file and what to try."""
    path = Path(path).absolute()
    for source in inputs:
        if path.resolve() == Path(source).resolve():
            raise OutputExistsError(f"--out {path} is an input of this export: choose another file")
    if path.is_dir():
        raise OutputExistsError(f"--out {path} is a folder: give a file name ending in {path.suffix or '.glb'}")
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path} already exists: pass --overwrite to replace it, or choose another --out")
    folder = next(parent for parent in path.parents if parent.exists())
    if not folder.is_dir():
        raise OutputExistsError(f"--out {path}: {folder} is a file, not a folder: choose another --out")
    try:  # permission bits are not the whole story (root, read-only file systems): try it
        probe, probe_path = tempfile.mkstemp(prefix=f".{path.name}.probe-", dir=folder)
        os.close(probe)
        os.unlink(probe_path)
    except OSError as error:
        raise OutputExistsError(f"--out {path}: {folder} is not writable ({error.strerror}): choose a folder you "
                                "can write to") from None
    return path


def export_scene_mesh(scene_dir: Path, out: Path | None = None, *, faces: int | None = None, use_masks: bool = True,
                      capture: Path | None = None, metres_per_unit: float | None = None, overwrite: bool = False,
                      config: MeshConfig | None = None) -> Path:  # fmt: skip
    """Extract the trained scene's mesh and write it to ``out`` (default ``scene_dir``/mesh.glb; .glb, .obj or .ply,
    see the module docstring); return the file's path.

    The one call for the pipelines (``video-to-3d``, ``image-to-3d``, 4D time steps): ``faces`` decimates to at most
    that many triangles; ``use_masks`` respects the capture's masks (object captures); ``capture`` overrides the
    capture named in the scene's metrics.json; ``metres_per_unit`` gives the scene's scale when known. The output is
    checked before the minute of work and written atomically; an existing file is replaced only with ``overwrite``.
    About 5-30 s on two CPU cores for a scene of 50k Gaussians and 50 views (bench/RESULTS.md).
    """
    from dataclasses import replace

    out = Path(scene_dir) / "mesh.glb" if out is None else Path(out)
    if out.suffix.lower().lstrip(".") not in MESH_KINDS:
        raise InputError(f"{out}: '{out.suffix or 'no extension'}' is not a mesh format orbit4d writes: use "
                         f"{', '.join('.' + k for k in MESH_KINDS)}")
    config = replace(config or MeshConfig(), faces=faces if faces is not None else (config.faces if config else None),
                     use_masks=use_masks)  # fmt: skip
    config.validate()
    splats_path, capture_dir, _ = scene_files(scene_dir, capture)
    out = check_output_file(out, overwrite, [splats_path, capture_dir / "transforms.json"])
    result = scene_mesh(scene_dir, config, capture, metres_per_unit)
    return write_output(out, lambda path: write_mesh(path, result.mesh, result.frame))


def write_output(path: Path, write) -> Path:
    """``write(path)`` after making the folders above ``path``; an OSError (disk full, permissions changed since
    ``check_output_file``) is one line naming the file."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return write(path)
    except OSError as error:
        raise OutputExistsError(f"{path} could not be written ({error.strerror or error}): nothing was written "
                                "there; free some space or choose another --out") from None
