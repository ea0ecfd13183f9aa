"""Scenes with known surfaces for the mesh tests: splats lying on a triangle mesh, and captures of it rendered
exactly by ray casting (images, masks, transforms.json), with a scene folder as ``orbit4d train`` writes one; a 4D one
(``moving_scene4d``: a cone sliding past a box that stands still)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import PIL.Image
import torch

from multiview.camera import Camera
from multiview.conventions import qvec_from_rotmat
from reconstruct.mesh import surface_samples
from reconstruct.splats import Splats, rgb_to_sh0


def cone(segments: int = 48, radius: float = 0.4, height: float = 0.8) -> tuple[np.ndarray, np.ndarray]:
    """A closed cone standing on z = -height / 2 with its apex at +height / 2 (up is +z): ([V, 3], [F, 3])."""
    import trimesh

    mesh = trimesh.creation.cone(radius=radius, height=height, sections=segments)
    vertices = np.asarray(mesh.vertices) - [0.0, 0.0, height / 2]
    return vertices, np.asarray(mesh.faces)


def octant_colors(points: np.ndarray) -> np.ndarray:
    """[P, 3] sRGB colours that tell the sides apart: red grows with x, green with y, blue with z."""
    return np.clip(0.5 + 0.9 * points, 0.05, 0.95)


def splats_on_mesh(vertices: np.ndarray, faces: np.ndarray, count: int, seed: int = 0) -> Splats:
    """``count`` opaque, flat Gaussians lying on the mesh (uniform by area), each as wide as the area it stands for,
    coloured by ``octant_colors``."""
    points = surface_samples(vertices, faces, count, seed)
    corners = vertices[faces]
    face_normals = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    area = 0.5 * np.linalg.norm(face_normals, axis=1).sum()
    import open3d as o3d

    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(o3d.core.Tensor(vertices.astype(np.float32)), o3d.core.Tensor(faces.astype(np.uint32)))
    nearest = scene.compute_closest_points(o3d.core.Tensor(points.astype(np.float32)))["primitive_ids"].numpy()
    normals = face_normals[nearest] / np.linalg.norm(face_normals[nearest], axis=1, keepdims=True)
    tangent = np.cross(normals, [0.3, 0.5, 0.8])
    tangent /= np.linalg.norm(tangent, axis=1, keepdims=True)
    rotations = np.stack([tangent, np.cross(normals, tangent), normals], axis=2)  # columns: the Gaussian's axes
    size = np.sqrt(area / count)
    f32 = dict(dtype=torch.float32)
    return Splats(
        means=torch.tensor(points, **f32),
        quats=torch.tensor(qvec_from_rotmat(rotations), **f32),
        scales=torch.tensor(np.log([size, size, size * 0.05]), **f32).repeat(count, 1),
        opacities=torch.full((count,), 5.0),
        sh0=rgb_to_sh0(torch.tensor(octant_colors(points), **f32))[:, None],
        shN=torch.zeros(count, 0, 3),
    )


def raycast_capture(root: Path, vertices: np.ndarray, faces: np.ndarray, cameras: list[Camera]) -> Path:
    """A capture of the mesh: RGBA images (``octant_colors`` of the surface hit through each pixel centre, alpha 0
    where none), masks and transforms.json in ``root``."""
    from multiview.capture import write_transforms

    frames = [raycast_view(root, f"{index:03d}", vertices, faces, camera) for index, camera in enumerate(cameras)]
    write_transforms(root / "transforms.json", frames, root)
    return root


def raycast_view(root: Path, name: str, vertices: np.ndarray, faces: np.ndarray, camera: Camera):
    """One view of the mesh as ``raycast_capture`` makes them: ``root``/images/NAME.png (RGBA) and
    ``root``/masks/NAME.png; the capture's ``Frame``."""
    import open3d as o3d

    from multiview.capture import Frame

    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(o3d.core.Tensor(vertices.astype(np.float32)), o3d.core.Tensor(faces.astype(np.uint32)))
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(exist_ok=True)
    rows, cols = np.indices((camera.height, camera.width))
    directions = np.stack([cols, rows, np.ones_like(cols)], -1).reshape(-1, 3) @ np.linalg.inv(camera.K).T
    directions = directions @ camera.world_from_cam[:3, :3].T
    rays = np.concatenate([np.broadcast_to(camera.center, directions.shape), directions], axis=1)
    t = scene.cast_rays(o3d.core.Tensor(rays.astype(np.float32)))["t_hit"].numpy()
    hit = np.isfinite(t)
    points = camera.center + directions * np.where(hit, t, 0.0)[:, None]
    rgba = np.concatenate([octant_colors(points), hit[:, None]], axis=1).reshape(camera.height, camera.width, 4)
    image, mask = root / "images" / f"{name}.png", root / "masks" / f"{name}.png"
    PIL.Image.fromarray(np.round(rgba * 255).astype(np.uint8)).save(image)
    PIL.Image.fromarray((hit.reshape(camera.height, camera.width) * 255).astype(np.uint8)).save(mask)
    return Frame(image, camera, mask_path=mask)


def scene_folder(root: Path, splats: Splats, capture: Path) -> Path:
    """A scene folder as ``orbit4d train`` leaves one: splats.ply and a metrics.json naming its capture."""
    from reconstruct.ply import write_ply

    root.mkdir(parents=True)
    write_ply(root / "splats.ply", splats)
    (root / "metrics.json").write_text(json.dumps({"capture": str(capture), "config": {"downscale": 1}}))
    return root


def moving_scene4d(root: Path, times: np.ndarray, slide: np.ndarray, cameras: list[Camera], count: int = 3000,
                   one_camera: bool = False) -> tuple[Path, Path]:  # fmt: skip
    """A 4D capture and scene in ``root`` (capture/, scene/ as ``orbit4d video-to-4d`` leaves them): a cone (the
    ``cone()``) sliding along ``slide`` [3] from ``-slide`` at the first time to ``+slide`` at the last, past a box
    that stands still at y = -0.8; the rig of ``cameras`` films it at ``times`` (camera_id = their index), or with
    ``one_camera`` a camera moving through ``cameras``, one per time (a video: camera_id 0). The scene's
    splats lie on the surfaces and move exactly so (a ``poly`` motion with one coefficient: ``(2u - 1) slide``)."""
    import trimesh

    from multiview.capture import write_transforms
    from reconstruct.splats4d import Splats4D, write_splats4d

    cone_vertices, cone_faces = cone()
    box = trimesh.creation.box(extents=(0.3, 0.3, 0.3))
    box_vertices, box_faces = np.asarray(box.vertices) + [0.0, -0.8, -0.25], np.asarray(box.faces)
    vertices = np.concatenate([cone_vertices, box_vertices])
    faces = np.concatenate([cone_faces, box_faces + len(cone_vertices)])
    on_cone = np.arange(len(vertices)) < len(cone_vertices)
    frames = []
    for step, t in enumerate(times):
        u = (t - times[0]) / (times[-1] - times[0])
        moved = vertices + on_cone[:, None] * (2 * u - 1) * np.asarray(slide)
        rig = [(0, cameras[step])] if one_camera else list(enumerate(cameras))
        frames += [raycast_view(root / "capture", f"t{step:02d}_c{k}", moved, faces,
                                camera.replace(time=float(t), camera_id=k)) for k, camera in rig]
    write_transforms(root / "capture" / "transforms.json", frames, root / "capture")
    splats = splats_on_mesh(vertices, faces, count)
    n = len(splats)
    moving = (splats.means[:, 1] > -0.5).float()[:, None]  # the cone's side of the gap
    motion = (moving * torch.tensor(slide, dtype=torch.float32))[:, None, :]
    splats4d = Splats4D(splats, motion, torch.zeros(n, 1, 4), torch.full((n,), 0.5), torch.zeros(n), times=times,
                        basis="poly")  # fmt: skip
    (root / "scene").mkdir(parents=True)
    write_splats4d(root / "scene" / "splats4d.ply", splats4d)
    (root / "scene" / "metrics.json").write_text(json.dumps({"capture": str(root / "capture"),
                                                             "config": {"downscale": 1}}))  # fmt: skip
    return root / "capture", root / "scene"
