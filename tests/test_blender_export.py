"""Our mesh files and .blend in real Blender (bpy 5.0, the ``render`` extra): they import upright (+Z up) where the
file says, with their vertex colours as a colour attribute; the .blend opens with the mesh, its material and a camera
per capture view, and Cycles renders a view's silhouette onto the capture's mask."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("bpy", reason="bpy (Blender as a Python module) is not installed: pip install 'orbit4d[render]'")

from multiview.conventions import ZUP_FROM_YUP  # noqa: E402
from multiview.layouts import orbit  # noqa: E402
from reconstruct.mesh import Mesh  # noqa: E402
from tests.mesh_scenes import cone, octant_colors, raycast_capture, scene_folder, splats_on_mesh  # noqa: E402
from viewers.meshes import export_frame, srgb_to_linear, write_mesh  # noqa: E402


@pytest.fixture(scope="module")
def cone_files(tmp_path_factory):
    """A coloured cone, apex up (+z in its scene), written as .glb and .obj in the frame of cameras orbiting it."""
    root = tmp_path_factory.mktemp("files")
    vertices, faces = cone(segments=16)
    mesh = Mesh(vertices, faces, octant_colors(vertices))
    frame = export_frame(mesh, orbit(6, (20.0,), radius=2.5, fov_deg=40.0, width=32, height=32))
    return mesh, frame, write_mesh(root / "cone.glb", mesh, frame), write_mesh(root / "cone.obj", mesh, frame)


def _import(path: Path):
    """The one mesh object Blender makes of ``path``, and its world-space vertices [V, 3]."""
    import bpy

    from multiview.blender import quiet_blender

    with quiet_blender():
        bpy.ops.wm.read_factory_settings(use_empty=True)
        if path.suffix == ".glb":
            bpy.ops.import_scene.gltf(filepath=str(path))
        else:
            bpy.ops.wm.obj_import(filepath=str(path))  # Blender's defaults: forward -Z, up Y
    objects = [obj for obj in bpy.context.scene.objects if obj.type == "MESH"]
    assert len(objects) == 1
    obj = objects[0]
    local = np.array([vertex.co[:] for vertex in obj.data.vertices])
    matrix = np.array(obj.matrix_world)
    return obj, local @ matrix[:3, :3].T + matrix[:3, 3]


@pytest.mark.parametrize("kind", ["glb", "obj"])
def test_imports_upright_where_the_file_says_with_its_colours(kind, cone_files):
    mesh, frame, glb, obj_file = cone_files
    obj, world = _import(glb if kind == "glb" else obj_file)
    expected = mesh.transformed(ZUP_FROM_YUP @ frame.file_from_scene)  # the file, turned +Z up as Blender does
    assert np.allclose(world.min(0), expected.vertices.min(0), atol=1e-5)
    assert np.allclose(world.max(0), expected.vertices.max(0), atol=1e-5)
    apex = world[np.argmax(world[:, 2])]
    assert np.allclose(apex[:2], [0.0, 0.0], atol=1e-5) and world[:, 2].min() == pytest.approx(0.0, abs=1e-5)  # up
    attribute = obj.data.color_attributes.active_color
    assert attribute is not None and attribute.name == "Color"
    linear = np.array([value.color[:3] for value in attribute.data])
    if attribute.domain == "CORNER":  # the glTF importer: one colour per face corner
        vertex_of = np.array([loop.vertex_index for loop in obj.data.loops])
    else:
        vertex_of = np.arange(len(obj.data.vertices))
    order = _matching_rows(world[vertex_of], expected.vertices)
    assert np.abs(linear - srgb_to_linear(mesh.colors[order])).max() < 0.01  # colours arrive, as linear light


def _matching_rows(points: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Index into ``reference`` of the row each of ``points`` coincides with (importers reorder vertices)."""
    from scipy.spatial import cKDTree

    distance, index = cKDTree(reference).query(points)
    assert distance.max() < 1e-5
    return index


def test_blend_opens_ready_to_render_each_capture_view(tmp_path, capsys):
    """``orbit4d export SCENE --blend`` of splats on a cone with a 96 px capture: the .blend holds the mesh, its
    material and one camera per view; a Cycles render from two of them covers the capture's masks (IoU >= 0.9)."""
    import bpy
    from PIL import Image

    from multiview.blender import quiet_blender
    from orbit4d.cli import main
    from viewers.blend import MATERIAL_NAME, MESH_NAME

    vertices, faces = cone()
    cameras = orbit(8, (-25.0, 35.0), radius=1.8, fov_deg=40.0, width=96, height=96)
    capture = raycast_capture(tmp_path / "capture", vertices, faces, cameras)
    scene = scene_folder(tmp_path / "scene", splats_on_mesh(vertices, faces, 10_000), capture)
    assert main(["export", str(scene), "--blend", "--resolution", "96"]) == 0, capsys.readouterr().err
    path = scene / "scene.blend"
    assert "scene.blend" in capsys.readouterr().err and not list(scene.glob(".*"))  # no temporary file left
    with quiet_blender():
        bpy.ops.wm.open_mainfile(filepath=str(path))
    blender_scene = bpy.context.scene
    meshes = [obj for obj in blender_scene.objects if obj.type == "MESH"]
    views = {obj.name: obj for obj in blender_scene.objects if obj.type == "CAMERA"}
    assert [obj.name for obj in meshes] == [MESH_NAME] and meshes[0].data.materials[0].name == MATERIAL_NAME
    assert sorted(views) == [f"images/{i:03d}.png" for i in range(8)] and blender_scene.camera is not None
    blender_scene.cycles.samples = 2
    for index in (1, 6):  # from above and from below
        blender_scene.camera = views[f"images/{index:03d}.png"]
        blender_scene.render.filepath = str(tmp_path / f"render_{index}.png")
        with quiet_blender():
            bpy.ops.render.render(write_still=True)
        silhouette = np.asarray(Image.open(tmp_path / f"render_{index}.png"))[..., 3] > 127
        mask = np.asarray(Image.open(capture / "masks" / f"{index:03d}.png")) > 127
        iou = (silhouette & mask).sum() / (silhouette | mask).sum()
        assert iou >= 0.9, (index, iou)
