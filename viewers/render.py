"""Videos of a scene along a camera path (``orbit4d render``, and the viewer's render button), by orbit4d's own
rasterizer: the same pictures as training's turntable, whatever the browser.

Two paths: ``orbit`` (once round the scene: ``reconstruct.evaluate.turntable_cameras`` from the training cameras, or
round the splats' middle when there are none) and ``cameras`` (through the training cameras in name order, positions
interpolated linearly and orientations spherically between neighbours). A scene that changes over time plays its
timeline once over the video.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from multiview.camera import Camera
from multiview.conventions import qvec_from_rotmat, rotmat_from_qvec
from multiview.errors import InputError
from viewers.scene import ViewScene
from viewers.viser_scene import home_view

PATHS = ("orbit", "cameras")


@dataclass(frozen=True)
class RenderConfig:
    """How ``orbit4d render`` films a scene."""

    path: str = "orbit"
    """Camera path: orbit (once round the scene) or cameras (through the training cameras)."""
    frames: int = 120
    """Frames in the video."""
    fps: float = 30.0
    """Frames per second of the video."""
    background: str = "white"
    """Colour behind the splats: black, white or #rrggbb."""
    max_size: int = 1280
    """Longest side of the video in pixels (the first camera's image, scaled down to fit)."""

    def validate(self) -> None:
        if self.path not in PATHS:
            raise InputError(f"--path {self.path}: use one of {', '.join(PATHS)}")
        if not 2 <= self.frames <= 100_000:
            raise InputError(f"--frames {self.frames}: give 2 to 100,000 frames")
        if not (math.isfinite(self.fps) and 0 < self.fps <= 240):
            raise InputError(f"--fps {self.fps}: give a frame rate above 0 and at most 240")
        if not 16 <= self.max_size <= 8192:
            raise InputError(f"--max-size {self.max_size}: give 16 to 8192 pixels")


def path_cameras(scene: ViewScene, config: RenderConfig) -> list[Camera]:
    """The ``config.frames`` cameras of the video (even width and height, for H.264)."""
    if config.path == "cameras" and len(scene.cameras) < 2:
        raise InputError(f"{scene.source} has {len(scene.cameras)} training camera(s) known (its metrics.json names "
                         "no readable capture): use --path orbit")
    if config.path == "cameras":
        cameras = _through(list(scene.cameras), config.frames)
    elif scene.cameras:
        from reconstruct.evaluate import turntable_cameras

        cameras = turntable_cameras(list(scene.cameras), config.frames)
    else:
        cameras = _orbit_without_cameras(scene, config.frames)
    return [_fitted(camera, config.max_size) for camera in cameras]


def render_video(scene: ViewScene, config: RenderConfig, out: Path,
                 progress: Callable[[int, int], None] | None = None) -> Path:  # fmt: skip
    """Render ``scene`` along ``config.path`` into the H.264 video ``out`` (written under a temporary name, then
    renamed); ``progress(done, total)`` after each frame. Returns ``out``."""
    from multiview.video import write_video
    from reconstruct.evaluate import parse_background, render_camera, to_uint8

    config.validate()
    background = parse_background(config.background)
    cameras = path_cameras(scene, config)
    times = scene.timeline.times
    moments = np.linspace(float(times[0]), float(times[-1]), len(cameras)) if len(times) > 1 else np.zeros(len(cameras))

    def frames():
        for index, (camera, t) in enumerate(zip(cameras, moments)):
            yield to_uint8(render_camera(scene.timeline.at(float(t)), camera, background))
            if progress is not None:
                progress(index + 1, len(cameras))

    out = Path(out)
    tmp = out.with_name(f".{out.stem}.tmp{out.suffix}")
    try:
        write_video(tmp, frames(), fps=config.fps)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def _through(cameras: list[Camera], count: int) -> list[Camera]:
    """``count`` cameras along the polyline of ``cameras`` (positions linear, rotations slerped, intrinsics of the
    nearest), evenly in the camera index."""
    rotations = [qvec_from_rotmat(c.world_from_cam[:3, :3]) for c in cameras]
    result = []
    for s in np.linspace(0.0, len(cameras) - 1, count):
        i = min(int(s), len(cameras) - 2)
        f = s - i
        q = _slerp(rotations[i], rotations[i + 1], f)
        world_from_cam = np.eye(4)
        world_from_cam[:3, :3] = rotmat_from_qvec(q)
        world_from_cam[:3, 3] = (1 - f) * cameras[i].center + f * cameras[i + 1].center
        nearest = cameras[i] if f < 0.5 else cameras[i + 1]
        result.append(nearest.replace(cam_from_world=np.linalg.inv(world_from_cam)))
    return result


def _slerp(q0: np.ndarray, q1: np.ndarray, f: float) -> np.ndarray:
    if np.dot(q0, q1) < 0:
        q1 = -q1
    angle = math.acos(float(np.clip(np.dot(q0, q1), -1.0, 1.0)))
    if angle < 1e-6:
        return q0
    return (math.sin((1 - f) * angle) * q0 + math.sin(f * angle) * q1) / math.sin(angle)


def _orbit_without_cameras(scene: ViewScene, count: int, width: int = 640, height: int = 480) -> list[Camera]:
    """Once round the splats' middle about the world's up, from ``home_view``, 50 degrees of vertical view."""
    up = scene.up()
    position, look_at = home_view(scene.timeline.at(float(scene.timeline.times[0])), (), up)
    focal = (height / 2) / math.tan(math.radians(25.0))
    K = np.array([[focal, 0.0, width / 2 - 0.5], [0.0, focal, height / 2 - 0.5], [0.0, 0.0, 1.0]])
    cameras = []
    for angle in np.linspace(0.0, 2 * math.pi, count, endpoint=False):
        axis = up * math.sin(angle / 2)
        R = rotmat_from_qvec(np.array([math.cos(angle / 2), *axis]))
        eye = look_at + R @ (position - look_at)
        cameras.append(Camera(K=K, cam_from_world=look_at_pose(eye, look_at, up), width=width, height=height))
    return cameras


def look_at_pose(eye: np.ndarray, target: np.ndarray, up: np.ndarray) -> np.ndarray:
    """[4, 4] ``cam_from_world`` of an OpenCV camera at ``eye`` looking at ``target`` with ``up`` pointing up."""
    forward = target - eye
    forward = forward / np.linalg.norm(forward)
    right = np.cross(forward, up)
    if np.linalg.norm(right) < 1e-9:  # looking straight along up: any right will do
        right = np.cross(forward, np.array([1.0, 0.0, 0.0]) if abs(forward[0]) < 0.9 else np.array([0.0, 1.0, 0.0]))
    right = right / np.linalg.norm(right)
    down = np.cross(forward, right)
    world_from_cam = np.eye(4)
    world_from_cam[:3, :3] = np.stack([right, down, forward], axis=1)
    world_from_cam[:3, 3] = eye
    return np.linalg.inv(world_from_cam)


def _fitted(camera: Camera, max_size: int) -> Camera:
    """``camera`` scaled to at most ``max_size`` on its longest side, width and height cut to even numbers."""
    longest = max(camera.width, camera.height)
    if longest > max_size:
        camera = camera.scaled(max_size / longest)
    return camera.replace(width=camera.width - camera.width % 2, height=camera.height - camera.height % 2)
