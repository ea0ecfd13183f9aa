"""A ``ViewScene`` drawn in a viser server (nerfstudio's viewer library; its browser client ships in the wheel), and
the camera conversions between viser and orbit4d.

viser's cameras are OpenCV's, as orbit4d's: a pose is ``world_from_cam`` given as a wxyz quaternion and a position,
with a vertical field of view in radians. Its splats take centres, 3x3 covariances, RGB and opacity (no SH: a splat
shows its DC colour from every side).

Every time step of a scene becomes its own splat node, uploaded once; playing a sequence only switches which node is
visible (a few bytes per frame, nothing re-sent).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import PIL.Image

from multiview.camera import Camera
from multiview.conventions import qvec_from_rotmat, rotmat_from_qvec
from reconstruct.splats import SH_C0, Splats, camera_extent, view_volume

if TYPE_CHECKING:
    import viser

THUMBNAIL_PX = 160  # longest side of the photo drawn in a camera frustum
MAX_POINTS = 200_000  # sparse points drawn at most (evenly subsampled beyond)


@dataclass
class SceneNodes:
    """The viser handles of a drawn scene, for the GUI to toggle."""

    frames: list = field(default_factory=list)  # one splat node per time step
    cameras: list = field(default_factory=list)  # frustums
    points: object | None = None
    mesh: object | None = None
    shown_frame: int = 0
    splats_visible: bool = True

    def show_frame(self, index: int) -> None:
        """Make time step ``index`` the visible one (visibility only: nothing is uploaded again)."""
        index = int(np.clip(index, 0, len(self.frames) - 1))
        if index != self.shown_frame:
            self.frames[index].visible = self.splats_visible
            self.frames[self.shown_frame].visible = False
            self.shown_frame = index

    def show_splats(self, visible: bool) -> None:
        self.splats_visible = visible
        self.frames[self.shown_frame].visible = visible


def quiet() -> contextlib.AbstractContextManager:
    """Keep viser's own banner and "Server stopped" off stdout (orbit4d says where the viewer is, on stderr)."""
    return contextlib.redirect_stdout(io.StringIO())


def splat_arrays(splats: Splats) -> dict[str, np.ndarray]:
    """viser's ``add_gaussian_splats`` arguments: centres [N, 3], covariances [N, 3, 3], rgbs [N, 3] in [0, 1] (the
    DC colour), opacities [N, 1]."""
    t = {name: value.detach().cpu().double().numpy() for name, value in splats.tensors().items()}
    quats = t["quats"]
    norm = np.linalg.norm(quats, axis=1, keepdims=True)
    quats = np.where(norm > 0, quats / np.where(norm > 0, norm, 1.0), [1.0, 0.0, 0.0, 0.0])
    R = rotmat_from_qvec(quats) if len(quats) else np.zeros((0, 3, 3))
    variances = np.exp(2.0 * t["scales"])
    covariances = np.einsum("nij,nj,nkj->nik", R, variances, R)
    return {
        "centers": t["means"].astype(np.float32),
        "covariances": covariances.astype(np.float32),
        "rgbs": np.clip(0.5 + SH_C0 * t["sh0"][:, 0], 0.0, 1.0).astype(np.float32),
        "opacities": (1.0 / (1.0 + np.exp(-t["opacities"])))[:, None].astype(np.float32),
    }


def viser_pose(camera: Camera) -> tuple[np.ndarray, np.ndarray]:
    """(wxyz [4], position [3]) of ``camera`` as viser places cameras (``world_from_cam``, OpenCV axes)."""
    world_from_cam = camera.world_from_cam
    return qvec_from_rotmat(world_from_cam[:3, :3]), world_from_cam[:3, 3].copy()


def vertical_fov(camera: Camera) -> float:
    """The vertical field of view of ``camera`` in radians."""
    return 2.0 * math.atan2(camera.height / 2.0, camera.fy)


def camera_from_viser(wxyz: np.ndarray, position: np.ndarray, fov: float, width: int, height: int) -> Camera:
    """The orbit4d ``Camera`` of a viser view: pose ``world_from_cam`` (wxyz, position), vertical ``fov`` in radians,
    an image of ``width`` x ``height`` pixels with square pixels and the principal point at its centre."""
    world_from_cam = np.eye(4)
    world_from_cam[:3, :3] = rotmat_from_qvec(np.asarray(wxyz, dtype=np.float64))
    world_from_cam[:3, 3] = position
    focal = (height / 2.0) / math.tan(fov / 2.0)
    K = np.array([[focal, 0.0, width / 2.0 - 0.5], [0.0, focal, height / 2.0 - 0.5], [0.0, 0.0, 1.0]])
    return Camera(K=K, cam_from_world=np.linalg.inv(world_from_cam), width=width, height=height)


def frustum_scale(cameras: tuple[Camera, ...]) -> float:
    """Depth of the camera frustums drawn: 6% of the cameras' spread (``camera_extent``)."""
    return 0.06 * camera_extent(list(cameras)) if cameras else 0.06


def home_view(splats: Splats, cameras: tuple[Camera, ...], up: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(position, look_at) to open on: just ahead of the first training camera (past its own frustum and photo,
    which would fill the view from where it stands), looking at what the cameras see; or, without cameras, a point
    2.5 radii behind the splats' middle (down the world's z, the way COLMAP's cameras look)."""
    if cameras:
        center, _ = view_volume(list(cameras))
        forward = cameras[0].world_from_cam[:3, 2]
        return cameras[0].center + 1.5 * frustum_scale(cameras) * forward, center
    means = splats.means.detach().cpu().double().numpy()
    if len(means) == 0:
        return np.array([0.0, 0.0, -3.0]), np.zeros(3)
    middle = np.median(means, axis=0)
    radius = float(np.percentile(np.linalg.norm(means - middle, axis=1), 90)) or 1.0
    return middle - np.array([0.0, 0.0, 2.5 * radius]), middle


def draw_scene(server: "viser.ViserServer", frames: list[Splats], cameras: tuple[Camera, ...] = (),
               images: tuple[Path, ...] = (), points: np.ndarray | None = None,
               point_colors: np.ndarray | None = None, mesh: Path | None = None) -> SceneNodes:  # fmt: skip
    """Add the splats (one node per time step, the first visible), camera frustums with their photos, the sparse
    points and the mesh to ``server``'s scene; return their handles."""
    nodes = SceneNodes()
    for index, splats in enumerate(frames):
        nodes.frames.append(server.scene.add_gaussian_splats(f"/splats/t{index:04d}", **splat_arrays(splats),
                                                             visible=index == 0))  # fmt: skip
    depth = frustum_scale(cameras)
    for index, camera in enumerate(cameras):
        wxyz, position = viser_pose(camera)
        image = _thumbnail(images[index]) if index < len(images) else None
        nodes.cameras.append(server.scene.add_camera_frustum(
            f"/cameras/c{index:04d}", fov=vertical_fov(camera), aspect=camera.width / camera.height,
            scale=depth, thickness=depth / 30, image=image, format="jpeg", wxyz=wxyz,
            position=position, color=(40, 110, 220), cast_shadow=False, receive_shadow=False))  # fmt: skip
    if points is not None and len(points):
        step = max(1, len(points) // MAX_POINTS)
        colors = point_colors[::step] if point_colors is not None else np.full((len(points[::step]), 3), 128)
        nodes.points = server.scene.add_point_cloud("/points", points[::step].astype(np.float32),
                                                    colors.astype(np.uint8), point_size=depth / 15,
                                                    visible=False)  # fmt: skip
    if mesh is not None:
        data = mesh.read_bytes()
        wxyz, position, scale = mesh_placement(data)
        nodes.mesh = server.scene.add_glb("/mesh", data, scale=scale, wxyz=wxyz, position=position, visible=False,
                                          cast_shadow=False, receive_shadow=False)  # shadows: slow, no use here
    return nodes


def mesh_placement(glb: bytes) -> tuple[np.ndarray, np.ndarray, float]:
    """(wxyz, position, scale) that put a ``.glb`` back into the scene's world: the inverse of the similarity
    ``file_from_scene`` that orbit4d's mesh export records in ``asset.extras.orbit4d`` (glTF is +Y up, the scene
    is the capture's frame); identity for a ``.glb`` without it."""
    identity = (np.array([1.0, 0.0, 0.0, 0.0]), np.zeros(3), 1.0)
    try:
        length, kind = struct.unpack_from("<II", glb, 12)
        document = json.loads(glb[20 : 20 + length]) if kind == 0x4E4F534A else {}  # "JSON"
        file_from_scene = np.asarray(document["asset"]["extras"]["orbit4d"]["file_from_scene"], dtype=np.float64)
    except (struct.error, ValueError, KeyError, TypeError):
        return identity
    if file_from_scene.shape != (4, 4) or not np.isfinite(file_from_scene).all():
        return identity
    linear = file_from_scene[:3, :3]
    scale = float(np.cbrt(abs(np.linalg.det(linear))))
    if scale <= 0:
        return identity
    scene_rotation = (linear / scale).T  # scene_from_file = [R^T / s | -R^T t / s]
    position = -scene_rotation @ file_from_scene[:3, 3] / scale
    return qvec_from_rotmat(scene_rotation), position, 1.0 / scale


def _thumbnail(path: Path) -> np.ndarray | None:
    """[h, w, 3] uint8 photo at most ``THUMBNAIL_PX`` on its longest side, or None when it does not open."""
    try:
        with PIL.Image.open(path) as image:
            image.draft("RGB", (THUMBNAIL_PX, THUMBNAIL_PX))
            image = image.convert("RGB")
            image.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
            return np.asarray(image)
    except (OSError, ValueError, PIL.Image.DecompressionBombError):
        return None

