"""A 4D scene's meshes: one per time step, ``scene/meshes/mesh_NNNN.glb``, and ``scene/meshes.blend`` playing them.

``export_scene_meshes4d(scene_dir)`` meshes ``splats4d.ply`` at each of its frame times with ``reconstruct.mesh``
(the 3D export's extraction, ``viewers.meshes``), writes each mesh as a ``.glb`` (``NNNN`` is the time index, as
``sequence/frame_NNNN.ply``) and, where Blender's Python module is installed, a ``.blend`` with the sequence animated
(``viewers.blend.write_blend_sequence``).

The views a time step is meshed from: the capture's views at that time, with their masks; for a capture that moves
its camera (one camera, a video), also up to ``MAX_PATH_VIEWS`` of its poses at the other times, without masks (the
splats at time k render from any pose, but another time's mask outlines the object where it was then). A rig sees
each time from all its cameras already. A video sees each time from one pose, and the mesh's own orbit views
(``MeshConfig.extra_views``, added in both cases) are placed from the cameras given: from one camera they circle a
point one unit ahead of it (``view_volume`` cannot intersect one optical axis), while the path's poses put them
around what the camera looked at, as training saw it. On a cone sliding past a box filmed by one camera over a
quarter turn (8 time steps, 64 px), the meshes came within 4 voxels of 89% of the true surface with the path's poses
against 39% without (a rig of 6 cameras: 99.7%), at the same distance from it (2 voxels), in 2.3 s a time step
against 0.6 s.

All the meshes share one file frame (``viewers.meshes.export_frame`` of every time step's vertices together), so that
what moves moves in the files and what stands still stays put: the sequence as a whole stands on y = 0.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from multiview.camera import Camera
from multiview.errors import InputError, OutputExistsError
from reconstruct.mesh import Mesh, MeshConfig, MeshReport, MeshView, extract_mesh
from viewers.meshes import ExportFrame, export_frame, write_mesh

MESHES_DIR = "meshes"
BLEND_NAME = "meshes.blend"
SPLATS4D_NAME = "splats4d.ply"
DEFAULT_CONFIG = MeshConfig(resolution=128)
"""Half the 3D export's voxels along each side: about a second a time step on two CPU cores for the Fox rig (12k
Gaussians, 9 cameras at 256 px, 20k triangles; bench/RESULTS.md); 256 takes several times as long."""
MAX_PATH_VIEWS = 16  # a moving camera's poses at other times, at most this many (evenly over the path)
TIME_TOLERANCE = 1e-6  # seconds: a view belongs to the frame time it is this close to


@dataclass(frozen=True, eq=False)
class SceneMeshes4D:
    """A 4D scene's meshes, one per time step, with what exports need."""

    meshes: list[Mesh]
    """One mesh per time step, in the scene's (capture's) world frame."""
    reports: list[MeshReport]
    """How each was extracted."""
    times: np.ndarray
    """[T] the frame times in seconds."""
    frame: ExportFrame
    """Where every mesh goes in a file (one frame for the whole sequence)."""
    cameras: dict[int, list[tuple[float, Camera]]]
    """The capture's cameras by camera id: (time, camera) at the capture's resolution, by time."""
    capture: Path
    """The capture the scene was trained on."""


def is_scene4d(scene_dir: Path) -> bool:
    """Whether ``scene_dir`` is a 4D scene folder (holds ``splats4d.ply``)."""
    return (Path(scene_dir) / SPLATS4D_NAME).is_file()


def scene4d_files(scene_dir: Path) -> tuple[Path, Path, int]:
    """(splats4d.ply, capture folder, training downscale) of the 4D scene at ``scene_dir``; InputError naming what
    is missing and what to do."""
    from reconstruct.evaluate import read_trained_scene

    scene_dir = Path(scene_dir)
    if not scene_dir.is_dir():
        raise InputError(f"{scene_dir} is not a folder: give a 4D scene folder (orbit4d video-to-4d --out DIR: "
                         "DIR/scene)")
    splats = scene_dir / SPLATS4D_NAME
    if not splats.is_file():
        raise InputError(f"{scene_dir} holds no {SPLATS4D_NAME}, so it is not a 4D scene: make one with orbit4d "
                         "video-to-4d")
    trained = read_trained_scene(scene_dir)
    if trained.capture is None:
        raise InputError(f"{scene_dir}/metrics.json does not name the capture the scene was trained on")
    if not (trained.capture / "transforms.json").is_file():
        raise InputError(f"{trained.capture}, the capture of {scene_dir}, is not there (no transforms.json): put it "
                         "back where metrics.json says")
    return splats, trained.capture, trained.config.downscale


def mesh_views_at(views: Sequence[MeshView], view_times: np.ndarray, time_index: int, times: np.ndarray,
                  moving_camera: bool) -> list[MeshView]:  # fmt: skip
    """The views time step ``time_index`` is meshed from (see the module docstring): ``views`` at that time with
    their masks, and for a ``moving_camera`` up to ``MAX_PATH_VIEWS`` of its other poses, evenly, without masks."""
    now = np.abs(view_times - times[time_index]) <= TIME_TOLERANCE
    chosen = [view for view, here in zip(views, now) if here]
    if moving_camera:
        others = [view for view, here in zip(views, now) if not here and not any(
            np.allclose(view.camera.cam_from_world, mine.camera.cam_from_world, atol=1e-9) for mine in chosen)]
        picks = np.unique(np.linspace(0, len(others) - 1, min(MAX_PATH_VIEWS, len(others))).round().astype(int))
        chosen += [MeshView(others[i].camera) for i in picks] if others else []
    return chosen


def scene_meshes4d(scene_dir: Path, config: MeshConfig = DEFAULT_CONFIG) -> SceneMeshes4D:
    """Extract the mesh of the 4D scene at ``scene_dir`` at each of its frame times, on the CPU."""
    from multiview.console import info
    from reconstruct.data import load_scene
    from reconstruct.splats4d import read_splats4d

    config.validate()
    splats_path, capture, downscale = scene4d_files(scene_dir)
    splats = read_splats4d(splats_path)
    if len(splats) == 0:
        raise InputError(f"{splats_path} holds no Gaussians: there is no surface to mesh")
    data = load_scene(capture, downscale, test_every=0)
    untimed = [view for view in data.train if view.camera.time is None]
    if untimed:
        raise InputError(f"{capture}/transforms.json: {len(untimed)} frames have no 'time': it is not the 4D capture "
                         f"{scene_dir} was trained on")
    views = [MeshView(view.camera, None if view.mask is None else view.mask[..., 0].numpy() >= 128)
             for view in data.train]  # fmt: skip
    view_times = np.array([float(view.camera.time) for view in data.train])
    moving = len({view.camera.camera_id or 0 for view in data.train}) == 1
    meshes, reports = [], []
    tic = time.perf_counter()
    for index in range(len(splats.times)):  # a line each, not a bar: extract_mesh shows its own
        chosen = mesh_views_at(views, view_times, index, splats.times, moving)
        if not chosen:
            raise InputError(f"{capture} has no view at {splats.times[index]:g} s, a frame time of {splats_path}: "
                             "it is not the capture the scene was trained on")
        try:
            mesh, report = extract_mesh(splats.at(float(splats.times[index])), chosen, config)
        except InputError as error:
            raise InputError(f"time step {index} ({splats.times[index]:g} s): {error}") from None
        meshes.append(mesh)
        reports.append(report)
        info(f"time step {index + 1}/{len(splats.times)}: {report.faces:,} triangles in {report.seconds:.1f} s")
    info(f"meshed {len(meshes)} time steps in {time.perf_counter() - tic:.0f} s")
    cameras: dict[int, list[tuple[float, Camera]]] = {}
    for frame in sorted(data.capture.frames, key=lambda frame: float(frame.camera.time)):
        cameras.setdefault(frame.camera.camera_id or 0, []).append((float(frame.camera.time), frame.camera))
    together = Mesh(np.concatenate([mesh.vertices for mesh in meshes]), np.zeros((0, 3), np.int64),
                    np.concatenate([mesh.colors for mesh in meshes]))  # fmt: skip
    frame = export_frame(together, [frame.camera for frame in data.capture.frames], capture)
    return SceneMeshes4D(meshes, reports, splats.times, frame, dict(sorted(cameras.items())), capture)


def mesh_name(index: int) -> str:
    """The file of time step ``index`` in ``meshes/``."""
    return f"mesh_{index:04d}.glb"


def export_scene_meshes4d(scene_dir: Path, *, overwrite: bool = False, config: MeshConfig | None = None,
                          blend: bool | None = None) -> list[Path]:  # fmt: skip
    """Mesh the 4D scene at ``scene_dir`` at each frame time: ``scene_dir``/meshes/mesh_NNNN.glb and, with
    ``blend`` (None: where bpy is installed, a warning otherwise), ``scene_dir``/meshes.blend; return the files
    written. ``config``: the extraction's (default ``DEFAULT_CONFIG``). The folder is written beside and renamed into
    place when complete; existing meshes are replaced only with ``overwrite``.
    """
    from rich.markup import escape

    from multiview.console import warn
    from multiview.outputs import output_lock, replace_dir

    scene_dir = Path(scene_dir).absolute()
    config = config or DEFAULT_CONFIG
    config.validate()
    scene4d_files(scene_dir)
    out_dir, blend_path = scene_dir / MESHES_DIR, scene_dir / BLEND_NAME
    missing_bpy = blend is None and not _has_bpy()
    blend = not missing_bpy if blend is None else blend
    if blend:
        from multiview.blender import import_bpy

        import_bpy()  # InputError with the install hint, before the work
    with output_lock(out_dir):
        for path in (out_dir, blend_path) if blend else (out_dir,):
            if path.exists() and not overwrite:
                raise OutputExistsError(f"{path} already exists: pass --overwrite to replace it")
        result = scene_meshes4d(scene_dir, config)
        staging = scene_dir / f".{MESHES_DIR}.partial"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        try:
            for index, mesh in enumerate(result.meshes):
                write_mesh(staging / mesh_name(index), mesh, result.frame)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        replace_dir(staging, out_dir)
        written = [out_dir / mesh_name(index) for index in range(len(result.meshes))]
        if blend:
            from viewers.blend import write_blend_sequence

            written.append(write_blend_sequence(blend_path, result))
    if missing_bpy:
        warn(escape(f"{BLEND_NAME} not written: it needs Blender's Python module, the render extra (pip install "
                    f"'orbit4d[render]'); the meshes are the .glb files in {out_dir}"))
    return written


def _has_bpy() -> bool:
    try:
        import bpy  # noqa: F401
    except ImportError:
        return False
    return True
