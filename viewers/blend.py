"""A ``.blend`` file of a scene, written with Blender's own Python module (``bpy``, the ``render`` extra).

``write_blend(path, scene_mesh)`` saves a Blender file that opens ready to render:

- the mesh (object ``orbit4d_mesh``) in Blender's Z-up world, where Blender's glTF importer puts ``mesh.glb``
  (``viewers.meshes``: the file frame, +Y up, turned +Z up), with its vertex colours as a colour attribute ("Color",
  linear, as Blender keeps them) feeding the base colour of a Principled BSDF material (``orbit4d_vertex_colors``);
- one camera per view of the capture, named after its image, with its pose and intrinsics (focal length, principal
  point as lens shift, non-square pixels as the pixel aspect ratio); the render resolution is the capture's (the most
  common image size, when they differ), and the first view is the active camera (make another one active, Ctrl-Numpad
  0, to render from it);
- Cycles on the CPU, a transparent film and the "Standard" view transform under a uniform white world light of
  strength 1, as ``orbit4d render-asset`` renders its captures: a view renders like its photo's object.

``write_blend_sequence(path, scene_meshes)`` does the same for a 4D scene's meshes, one per time step, played as an
animation (frame k shows time step k; a moving camera follows its path).

Blender is driven in this process, as ``multiview.blender`` does for ``render-asset``; its global scene is reset.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from multiview.blender import import_bpy, quiet_blender
from multiview.camera import Camera
from multiview.conventions import ZUP_FROM_YUP, blender_world_from_cam
from reconstruct.mesh import Mesh
from viewers.meshes import SceneMesh, srgb_to_linear

if TYPE_CHECKING:
    from viewers.meshes4d import SceneMeshes4D

MESH_NAME = "orbit4d_mesh"
MESHES_COLLECTION = "orbit4d_meshes"
MATERIAL_NAME = "orbit4d_vertex_colors"
COLOR_ATTRIBUTE = "Color"  # the name Blender's glTF importer gives COLOR_0
SENSOR_WIDTH = 36.0  # millimetres; Blender's default, with sensor_fit HORIZONTAL as multiview.blender.set_camera


def blender_from_scene(scene_mesh: SceneMesh) -> np.ndarray:
    """[4, 4] scene (capture world) -> Blender's world: the file frame, then glTF's +Y up turned +Z up."""
    return ZUP_FROM_YUP @ scene_mesh.frame.file_from_scene


def write_blend(path: Path, scene_mesh: SceneMesh, samples: int = 32) -> Path:
    """Save ``scene_mesh`` (mesh, material, one camera per capture view, render settings) as a ``.blend`` at
    ``path``, atomically; return ``path``. InputError when bpy is not installed."""
    bpy = _fresh_blender()
    scene = bpy.context.scene
    to_blender = blender_from_scene(scene_mesh)
    mesh = scene_mesh.mesh.transformed(to_blender)
    mesh_object = _add_mesh(bpy, scene.collection, mesh, MESH_NAME, _vertex_color_material(bpy))
    width, height = Counter((camera.width, camera.height) for _, camera in scene_mesh.cameras).most_common(1)[0][0]
    centre = np.asarray(mesh_object.matrix_world @ _centre_of(mesh_object))
    cameras = [_add_camera(bpy, scene, name, camera, to_blender, width, centre)
               for name, camera in scene_mesh.cameras]  # fmt: skip
    _configure(bpy, scene, width, height, samples, scene_mesh.cameras[0][1])
    scene.camera = cameras[0]
    scene["orbit4d_frame"] = str(scene_mesh.frame.to_json())
    return _save(bpy, path)


def write_blend_sequence(path: Path, meshes: SceneMeshes4D, samples: int = 32) -> Path:
    """Save a 4D scene's meshes (``viewers.meshes4d``) as a ``.blend`` at ``path`` that plays them, atomically;
    return ``path``. InputError when bpy is not installed.

    Frame k (0 .. T-1, the scene's frame range) shows time step k: one mesh object per time step
    (``orbit4d_mesh_NNNN``, in the collection ``orbit4d_meshes``; their triangles differ, so shape keys cannot
    morph one into the next), each hidden in the viewport and the render (keyframed ``hide_viewport`` and
    ``hide_render``) on every other frame. One camera per capture camera (``camera_ID``), animated along its path
    when it moves (a video) and standing still otherwise (a rig). The frame rate is the times' when they are evenly
    spaced (Blender's default 24 otherwise); ``scene["orbit4d_times"]`` holds the times in seconds. The material,
    render settings and the file frame are ``write_blend``'s.
    """
    bpy = _fresh_blender()
    scene = bpy.context.scene
    to_blender = ZUP_FROM_YUP @ meshes.frame.file_from_scene
    material = _vertex_color_material(bpy)
    collection = bpy.data.collections.new(MESHES_COLLECTION)
    scene.collection.children.link(collection)
    count = len(meshes.meshes)
    scene.frame_start, scene.frame_end = 0, count - 1
    low, high = np.full(3, np.inf), np.full(3, -np.inf)
    for index, mesh in enumerate(meshes.meshes):
        moved = mesh.transformed(to_blender)
        low, high = np.minimum(low, moved.vertices.min(0)), np.maximum(high, moved.vertices.max(0))
        _show_only_on(_add_mesh(bpy, collection, moved, f"{MESH_NAME}_{index:04d}", material), index, count)
    views = [camera for path in meshes.cameras.values() for _, camera in path]
    width, height = Counter((camera.width, camera.height) for camera in views).most_common(1)[0][0]
    cameras = [_add_camera_path(bpy, scene, f"camera_{camera_id}", path, meshes.times, to_blender, width,
                                (low + high) / 2) for camera_id, path in meshes.cameras.items()]  # fmt: skip
    _configure(bpy, scene, width, height, samples, views[0])
    fps = regular_fps(meshes.times)
    if fps is not None:
        scene.render.fps = max(1, round(fps))
        scene.render.fps_base = scene.render.fps / fps
    scene.camera = cameras[0]
    scene.frame_set(0)
    scene["orbit4d_frame"] = str(meshes.frame.to_json())
    scene["orbit4d_times"] = [float(t) for t in meshes.times]
    return _save(bpy, path)


def regular_fps(times: np.ndarray) -> float | None:
    """Frames per second of evenly spaced ``times`` (steps equal within 1%), else None."""
    steps = np.diff(np.asarray(times, dtype=np.float64))
    if len(steps) == 0 or steps.min() <= 0 or (steps.max() - steps.min()) > 0.01 * steps.mean():
        return None
    return float(1.0 / steps.mean())


def _show_only_on(obj, frame: int, count: int) -> None:
    """Keyframe ``obj`` visible on ``frame`` and hidden on its neighbours (booleans hold their last keyframe, so it
    stays hidden on every other frame of 0 .. count - 1)."""
    for at in (frame - 1, frame, frame + 1):
        if 0 <= at < count:
            obj.hide_viewport = obj.hide_render = at != frame
            obj.keyframe_insert("hide_viewport", frame=at)
            obj.keyframe_insert("hide_render", frame=at)


def _fresh_blender():
    """bpy with an empty scene (InputError when bpy is not installed)."""
    bpy = import_bpy()
    with quiet_blender():
        bpy.ops.wm.read_factory_settings(use_empty=True)
    return bpy


def _save(bpy, path: Path) -> Path:
    """Save the open Blender file as ``path`` (compressed), atomically; return ``path``."""
    path = Path(path).absolute()
    tmp = path.with_name(f".{path.stem}.tmp.blend")
    try:
        with quiet_blender():
            bpy.ops.wm.save_as_mainfile(filepath=str(tmp), check_existing=False, compress=True)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
        Path(f"{tmp}1").unlink(missing_ok=True)  # a backup Blender may keep of an earlier save
    return path


def _centre_of(obj):
    from mathutils import Vector

    corners = [Vector(corner) for corner in obj.bound_box]
    return sum(corners, Vector()) / 8.0


def _add_mesh(bpy, collection, mesh: Mesh, name: str, material):
    """A mesh object named ``name`` of ``mesh`` (in Blender's world), its colour attribute and ``material``, linked
    into ``collection``."""
    data = bpy.data.meshes.new(name)
    data.vertices.add(len(mesh.vertices))
    data.vertices.foreach_set("co", mesh.vertices.astype(np.float32).reshape(-1))
    data.loops.add(3 * len(mesh.faces))
    data.loops.foreach_set("vertex_index", mesh.faces.astype(np.int32).reshape(-1))
    data.polygons.add(len(mesh.faces))
    data.polygons.foreach_set("loop_start", np.arange(0, 3 * len(mesh.faces), 3, dtype=np.int32))
    data.update(calc_edges=True)
    data.validate(clean_customdata=False)
    colors = data.color_attributes.new(COLOR_ATTRIBUTE, "FLOAT_COLOR", "POINT")
    rgba = np.concatenate([srgb_to_linear(mesh.colors), np.ones((len(mesh.colors), 1))], axis=1)
    colors.data.foreach_set("color", rgba.astype(np.float32).reshape(-1))
    data.color_attributes.active_color = colors
    data.color_attributes.render_color_index = data.color_attributes.active_color_index
    data.shade_smooth()
    data.materials.append(material)
    obj = bpy.data.objects.new(name, data)
    collection.objects.link(obj)
    return obj


def _vertex_color_material(bpy):
    """Principled BSDF whose base colour is the mesh's colour attribute (what the glTF importer builds for COLOR_0),
    fully rough and not metallic: the colours as the photos showed them under even light."""
    material = bpy.data.materials.new(MATERIAL_NAME)
    nodes, links = material.node_tree.nodes, material.node_tree.links
    shader = next(node for node in nodes if node.bl_idname == "ShaderNodeBsdfPrincipled")
    attribute = nodes.new("ShaderNodeVertexColor")
    attribute.layer_name = COLOR_ATTRIBUTE
    links.new(attribute.outputs["Color"], shader.inputs["Base Color"])
    shader.inputs["Roughness"].default_value = 1.0
    shader.inputs["Metallic"].default_value = 0.0
    return material


def _add_camera(bpy, scene, name: str, camera: Camera, to_blender: np.ndarray, width: int, target: np.ndarray):
    """A Blender camera object with ``camera``'s pose (moved by the similarity ``to_blender``) and intrinsics, for a
    render ``width`` pixels wide (the lens shift is in units of it); clipping scaled to its distance from ``target``
    (the mesh's centre, in Blender's world)."""
    from mathutils import Matrix

    data = bpy.data.cameras.new(name)
    data.type, data.sensor_fit, data.sensor_width = "PERSP", "HORIZONTAL", SENSOR_WIDTH
    matrix = _camera_matrix(camera, to_blender)
    _set_intrinsics(data, camera)
    distance = float(np.linalg.norm(matrix[:3, 3] - target))
    data.clip_start, data.clip_end = max(distance * 1e-3, 1e-6), max(distance * 100.0, 1e-3)
    obj = bpy.data.objects.new(name, data)
    obj.matrix_world = Matrix(matrix.tolist())
    scene.collection.objects.link(obj)
    return obj


def _add_camera_path(bpy, scene, name: str, path: list[tuple[float, Camera]], times: np.ndarray,
                     to_blender: np.ndarray, width: int, target: np.ndarray):  # fmt: skip
    """``_add_camera`` of a camera's first view, keyframed at each of its views' frames (the index of its time in
    ``times``) with their poses and intrinsics when they change (a moving camera)."""
    from mathutils import Matrix

    obj = _add_camera(bpy, scene, name, path[0][1], to_blender, width, target)
    matrices = [_camera_matrix(camera, to_blender) for _, camera in path]
    intrinsics = {(camera.fx, camera.fy, camera.cx, camera.cy, camera.width) for _, camera in path}
    if all(np.allclose(matrix, matrices[0], atol=1e-9) for matrix in matrices) and len(intrinsics) == 1:
        return obj  # a camera of a rig: it stands still
    obj.rotation_mode = "QUATERNION"  # no Euler flips between keyframes
    for (time, camera), matrix in zip(path, matrices):
        frame = int(np.argmin(np.abs(np.asarray(times) - time)))
        obj.matrix_world = Matrix(matrix.tolist())
        obj.keyframe_insert("location", frame=frame)
        obj.keyframe_insert("rotation_quaternion", frame=frame)
        if len(intrinsics) > 1:
            _set_intrinsics(obj.data, camera)
            for field in ("lens", "shift_x", "shift_y"):
                obj.data.keyframe_insert(field, frame=frame)
    return obj


def _camera_matrix(camera: Camera, to_blender: np.ndarray) -> np.ndarray:
    """[4, 4] the Blender camera object's matrix_world of ``camera`` moved by the similarity ``to_blender`` (its
    scale taken out: a camera keeps unit axes)."""
    if not camera.is_pinhole:
        raise ValueError("Blender cameras are pinhole cameras: the capture's images must be undistorted")
    scale = float(np.cbrt(abs(np.linalg.det(to_blender[:3, :3]))))
    world_from_cam = blender_world_from_cam(camera.cam_from_world)  # Blender camera axes, scene world
    matrix = np.eye(4)
    matrix[:3, :3] = to_blender[:3, :3] / scale @ world_from_cam[:3, :3]
    matrix[:3, 3] = to_blender[:3, :3] @ world_from_cam[:3, 3] + to_blender[:3, 3]
    return matrix


def _set_intrinsics(data, camera: Camera) -> None:
    """Focal length and principal point (as lens shift, in units of the width) of ``camera``."""
    data.lens = camera.fx * SENSOR_WIDTH / camera.width  # a view of another size than the render's keeps its field
    # of view
    data.shift_x = (camera.width / 2.0 - (camera.cx + 0.5)) / camera.width
    data.shift_y = ((camera.cy + 0.5) - camera.height / 2.0) / camera.width * camera.fx / camera.fy


def _configure(bpy, scene, width: int, height: int, samples: int, first: Camera) -> None:
    """Cycles on the CPU, the capture's resolution and pixel aspect, transparent film, Standard view transform,
    uniform white world light."""
    render = scene.render
    render.engine = "CYCLES"
    render.resolution_x, render.resolution_y, render.resolution_percentage = width, height, 100
    aspect = first.fx / first.fy  # Blender's pixel height / width; both aspects must be >= 1
    render.pixel_aspect_x, render.pixel_aspect_y = max(1.0, 1.0 / aspect), max(1.0, aspect)
    render.film_transparent = True
    scene.cycles.device = "CPU"
    scene.cycles.samples = samples
    scene.view_settings.view_transform = "Standard"
    scene.view_settings.look = "None"
    world = bpy.data.worlds.new("orbit4d_world")
    background = world.node_tree.nodes.get("Background") or world.node_tree.nodes.new("ShaderNodeBackground")
    background.inputs["Color"].default_value = (1.0, 1.0, 1.0, 1.0)
    background.inputs["Strength"].default_value = 1.0
    scene.world = world
