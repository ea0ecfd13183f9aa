"""What a viewer shows, read from disk: splats over time, the cameras (and photos) they came from, points and a mesh.

``load_view_scene(path)`` takes any of:

- a splat file: ``.ply`` (3DGS layout), ``.splat`` or ``.spz``;
- a scene folder (``orbit4d train --out``): ``splats.ply``, and through its ``metrics.json`` the capture it was
  trained on (cameras, photos, ``points3D.ply``); ``mesh.glb`` when there is one;
- a 4D scene folder: ``splats4d.ply`` (read by ``reconstruct.splats4d`` where that module exists) or
  ``sequence/frame_NNNN.ply``;
- a folder of per-frame ``.ply`` files, played in name order.

Time is anything with ``times`` ([T] seconds) and ``at(t) -> Splats`` (``Timeline``): a still scene has one time.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from multiview.camera import Camera
from multiview.console import warn
from multiview.errors import InputError
from reconstruct.splats import Splats
from viewers.formats import read_splats

SPLAT_SUFFIXES = (".ply", ".splat", ".spz")


class Timeline(Protocol):
    """Splats that change over time (``reconstruct.splats4d.Splats4D`` has this shape)."""

    @property
    def times(self) -> np.ndarray:  # [T] seconds, increasing
        ...

    def at(self, t: float) -> Splats: ...


@dataclass(frozen=True, eq=False)
class StillTimeline:
    """One set of splats at time 0."""

    splats: Splats

    @property
    def times(self) -> np.ndarray:
        return np.zeros(1)

    def at(self, t: float) -> Splats:
        return self.splats


@dataclass(frozen=True, eq=False)
class FrameSequence:
    """Per-frame splat files, frame i shown from i / fps seconds; each file is read once, when first asked for."""

    paths: tuple[Path, ...]
    fps: float = 10.0
    _cache: dict = field(default_factory=dict, repr=False)

    @property
    def times(self) -> np.ndarray:
        return np.arange(len(self.paths)) / self.fps

    def at(self, t: float) -> Splats:
        index = int(np.clip(np.floor(t * self.fps + 1e-6), 0, len(self.paths) - 1))
        if index not in self._cache:
            self._cache[index] = read_splats(self.paths[index])
        return self._cache[index]


@dataclass(frozen=True, eq=False)
class ViewScene:
    """Everything a viewer draws of one scene."""

    source: Path
    """The file or folder it was read from."""
    timeline: Timeline
    """The splats over time (one time for a still scene)."""
    cameras: tuple[Camera, ...] = ()
    """The training cameras (OpenCV, ``cam_from_world``), when the capture is known."""
    images: tuple[Path, ...] = ()
    """Each camera's photo (same order as ``cameras``)."""
    points: np.ndarray | None = None
    """[P, 3] the capture's sparse points, if any."""
    point_colors: np.ndarray | None = None
    """[P, 3] uint8 colours of ``points``."""
    mesh: Path | None = None
    """A mesh of the scene (``mesh.glb``), if any."""

    @property
    def num_frames(self) -> int:
        return len(self.timeline.times)

    def frames(self) -> list[Splats]:
        """The splats at each of the timeline's times."""
        return [self.timeline.at(float(t)) for t in self.timeline.times]

    def up(self) -> np.ndarray:
        """[3] the world's up: the cameras' mean up (-y) axis, else -y (COLMAP's and 3DGS's usual world)."""
        if not self.cameras:
            return np.array([0.0, -1.0, 0.0])
        up = -np.mean([camera.world_from_cam[:3, 1] for camera in self.cameras], axis=0)
        norm = np.linalg.norm(up)
        return up / norm if norm > 1e-9 else np.array([0.0, -1.0, 0.0])


def load_view_scene(path: Path, fps: float = 10.0) -> ViewScene:
    """The ``ViewScene`` of a splat file, a scene folder, a 4D scene or a folder of per-frame ``.ply`` files (see the
    module docstring); InputError naming ``path`` and what to give otherwise."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path} does not exist: give a scene folder (orbit4d train --out), a folder of per-frame "
                         ".ply files, or a .ply / .splat / .spz file")
    if not fps > 0:
        raise InputError(f"--fps {fps}: give a positive number of frames per second")
    if path.is_file():
        if path.suffix.lower() not in SPLAT_SUFFIXES:
            raise InputError(f"{path} is not a splat file: give a .ply, .splat or .spz file or a scene folder")
        return ViewScene(path, StillTimeline(read_splats(path)))
    timeline = _folder_timeline(path, fps)
    cameras, images, points, colors = _capture_of(path)
    mesh = path / "mesh.glb" if (path / "mesh.glb").is_file() else None
    return ViewScene(path, timeline, tuple(cameras), tuple(images), points, colors, mesh)


def _folder_timeline(path: Path, fps: float) -> Timeline:
    """The splats of a scene folder, a 4D scene folder or a folder of per-frame files."""
    if (path / "splats4d.ply").is_file():
        timeline = _splats4d(path / "splats4d.ply")
        if timeline is not None:
            return timeline
    sequence = _frame_files(path / "sequence") if (path / "sequence").is_dir() else []
    if sequence:
        return _checked_sequence(sequence, fps)
    if (path / "splats.ply").is_file():
        return StillTimeline(read_splats(path / "splats.ply"))
    if (path / "transforms.json").is_file():
        raise InputError(f"{path} is a capture, not a scene: train it first (orbit4d train {path} --out SCENE), "
                         "then view the scene")
    frames = _frame_files(path)
    if not frames:
        raise InputError(f"{path} is not a scene: it holds no splats.ply, splats4d.ply, sequence/ or per-frame "
                         ".ply files; give a scene folder (orbit4d train --out) or a .ply / .splat / .spz file")
    return _checked_sequence(frames, fps)


def _frame_files(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in SPLAT_SUFFIXES
                   and not p.name.startswith(".")), key=lambda p: p.name)  # fmt: skip


def _checked_sequence(paths: Sequence[Path], fps: float) -> FrameSequence:
    """A ``FrameSequence`` whose first frame has been read (a folder of point clouds fails here, naming one)."""
    sequence = FrameSequence(tuple(paths), fps)
    sequence.at(0.0)
    return sequence


def _splats4d(path: Path) -> Timeline | None:
    """The 4D scene at ``path`` through ``reconstruct.splats4d``, or None where that module is not installed."""
    try:
        from reconstruct.splats4d import read_splats4d  # the 4D stage's reader, where it exists
    except ImportError:
        return None
    return read_splats4d(path)


def _capture_of(scene_dir: Path) -> tuple[list[Camera], list[Path], np.ndarray | None, np.ndarray | None]:
    """The cameras, photos and points of the capture a scene was trained on (its metrics.json names it); nothing,
    with a warning, when it is named but cannot be read."""
    metrics = scene_dir / "metrics.json"
    try:
        capture_dir = json.loads(metrics.read_text()).get("capture") if metrics.is_file() else None
    except (OSError, ValueError, AttributeError):
        capture_dir = None
    if not capture_dir:
        return [], [], None, None
    from multiview.capture import read_capture

    try:
        capture = read_capture(Path(capture_dir))
    except InputError as error:
        warn(f"showing the splats without their cameras: {error}")
        return [], [], None, None
    frames = sorted(capture.frames, key=lambda frame: frame.image_path.name)
    return [f.camera for f in frames], [f.image_path for f in frames], capture.points, capture.colors
