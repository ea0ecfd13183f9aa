"""Mesh files (``viewers.meshes``): what the .glb, .obj and .ply hold, in which frame, with which colours; the frame
a scene's mesh is written in."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from multiview.layouts import orbit
from reconstruct.mesh import Mesh
from tests.mesh_scenes import cone, octant_colors
from viewers.meshes import ExportFrame, export_frame, glb_bytes, srgb_to_linear, write_mesh


@pytest.fixture
def mesh() -> Mesh:
    vertices, faces = cone(segments=12)
    return Mesh(vertices, faces, octant_colors(vertices))


def _turn(frame_rotation: np.ndarray, scale: float = 1.0, shift=(0.0, 0.0, 0.0)) -> ExportFrame:
    matrix = np.eye(4)
    matrix[:3, :3], matrix[:3, 3] = frame_rotation * scale, shift
    return ExportFrame(matrix, None, "test")


def read_glb(path) -> tuple[dict, dict[str, np.ndarray]]:
    """(the JSON document, the primitive's arrays by attribute name and "indices") of a one-mesh .glb."""
    data = path.read_bytes()
    magic, version, total = struct.unpack_from("<4sII", data)
    assert (magic, version, total) == (b"glTF", 2, len(data))
    length, kind = struct.unpack_from("<I4s", data, 12)
    document = json.loads(data[20 : 20 + length])
    blob_at = 20 + length
    blob_length, blob_kind = struct.unpack_from("<I4s", data, blob_at)
    assert (kind, blob_kind) == (b"JSON", b"BIN\0") and length % 4 == 0
    blob = data[blob_at + 8 : blob_at + 8 + blob_length]
    primitive = document["meshes"][0]["primitives"][0]
    arrays = {}
    for name, index in [*primitive["attributes"].items(), ("indices", primitive["indices"])]:
        accessor = document["accessors"][index]
        view = document["bufferViews"][accessor["bufferView"]]
        dtype = {5126: "<f4", 5125: "<u4"}[accessor["componentType"]]
        width = {"VEC3": 3, "SCALAR": 1}[accessor["type"]]
        arrays[name] = np.frombuffer(blob, dtype, accessor["count"] * width, view["byteOffset"]).reshape(-1, width)
    return document, arrays


def test_glb_holds_the_mesh_in_the_file_frame_with_linear_colours(mesh, tmp_path):
    rotation = np.array([[1.0, 0, 0], [0, 0, 1.0], [0, -1.0, 0]])  # scene z up -> file y up
    frame = _turn(rotation, scale=2.0, shift=(0.0, 0.8, 0.0))
    path = write_mesh(tmp_path / "mesh.glb", mesh, frame)
    document, arrays = read_glb(path)
    expected = mesh.vertices @ (2.0 * rotation).T + [0.0, 0.8, 0.0]
    assert np.allclose(arrays["POSITION"], expected, atol=1e-6)
    assert arrays["POSITION"][:, 1].min() == pytest.approx(0.0, abs=1e-6)  # the cone stands on y = 0, apex up
    assert np.allclose(document["accessors"][0]["min"], expected.min(0), atol=1e-6)
    assert np.allclose(arrays["COLOR_0"], srgb_to_linear(mesh.colors), atol=1e-6)
    assert np.array_equal(arrays["indices"].reshape(-1, 3), mesh.faces)
    normals = arrays["NORMAL"]
    assert np.allclose(np.linalg.norm(normals, axis=1), 1.0, atol=1e-5)
    apex = np.argmax(arrays["POSITION"][:, 1])
    assert normals[apex][1] > 0.9  # outward: winding kept
    assert document["asset"]["extras"]["orbit4d"]["scale"] == pytest.approx(2.0)
    assert not list(tmp_path.glob(".*"))  # nothing left of the temporary file


def test_mirroring_frames_keep_faces_facing_out(mesh, tmp_path):
    mirror = _turn(np.diag([-1.0, 1.0, 1.0]))
    _, arrays = read_glb(write_mesh(tmp_path / "m.glb", mesh, mirror))
    apex = np.argmax(arrays["POSITION"][:, 2])
    assert arrays["NORMAL"][apex][2] > 0.9


def test_obj_has_the_glb_coordinates_and_srgb_colours(mesh, tmp_path):
    frame = _turn(np.array([[1.0, 0, 0], [0, 0, 1.0], [0, -1.0, 0]]))
    text = write_mesh(tmp_path / "mesh.obj", mesh, frame).read_text()
    vertices = np.array([[float(x) for x in line.split()[1:]] for line in text.splitlines() if line.startswith("v ")])
    faces = np.array([[int(x) for x in line.split()[1:]] for line in text.splitlines() if line.startswith("f ")])
    _, arrays = read_glb(write_mesh(tmp_path / "mesh.glb", mesh, frame))
    assert np.allclose(vertices[:, :3], arrays["POSITION"], atol=1e-5)
    assert np.allclose(vertices[:, 3:], mesh.colors, atol=1e-4)
    assert np.array_equal(faces - 1, mesh.faces)
    assert "+Y up" in text.splitlines()[0]


def test_ply_stays_in_the_scene_frame(mesh, tmp_path):
    import trimesh

    frame = _turn(np.array([[1.0, 0, 0], [0, 0, 1.0], [0, -1.0, 0]]), scale=3.0)
    loaded = trimesh.load(write_mesh(tmp_path / "mesh.ply", mesh, frame), process=False)
    assert np.allclose(loaded.vertices, mesh.vertices, atol=1e-6)
    assert np.array_equal(loaded.faces, mesh.faces)
    assert np.abs(loaded.visual.vertex_colors[:, :3] / 255.0 - mesh.colors).max() <= 0.5 / 255 + 1e-6


def test_unknown_suffix_is_refused(mesh, tmp_path):
    from multiview.errors import InputError

    with pytest.raises(InputError, match=r"\.stl"):
        write_mesh(tmp_path / "mesh.stl", mesh, _turn(np.eye(3)))


def test_a_real_capture_stands_up_along_its_cameras_up(mesh):
    """A capture whose world has its up along -x (SfM frames are arbitrary): the cameras' mean up becomes +Y, the
    mesh stands on y = 0 centred over the origin, and the scale is recorded as unknown."""
    up = np.array([-1.0, 0.0, 0.0])
    cameras = []
    for camera in orbit(8, (20.0,), radius=3.0, fov_deg=40.0, width=32, height=32):
        turned = np.eye(4)  # world z up -> world -x up: rotate the whole rig
        turned[:3, :3] = np.array([[0.0, 0, -1], [0, 1, 0], [1, 0, 0]])
        cameras.append(camera.replace(cam_from_world=camera.cam_from_world @ np.linalg.inv(turned)))
    turned_mesh = Mesh(mesh.vertices @ np.array([[0.0, 0, -1], [0, 1, 0], [1, 0, 0]]).T, mesh.faces, mesh.colors)
    frame = export_frame(turned_mesh, cameras)
    in_file = turned_mesh.transformed(frame.file_from_scene)
    assert frame.metres_per_unit is None and frame.scale == pytest.approx(1.0)
    assert np.allclose(frame.file_from_scene[:3, :3] @ up, [0.0, 1.0, 0.0], atol=1e-9)
    low, high = in_file.bounds()
    assert low[1] == pytest.approx(0.0, abs=1e-9) and high[1] == pytest.approx(0.8, abs=1e-6)  # apex up
    assert (low + high)[[0, 2]] == pytest.approx([0.0, 0.0], abs=1e-9)
    assert export_frame(turned_mesh, cameras, metres_per_unit=0.25).scale == pytest.approx(0.25)


def test_a_rendered_asset_goes_back_to_its_own_frame(mesh, tmp_path):
    """render-asset's normalization.json undone: the mesh is written where (and as large as) the asset was."""
    world_from_asset = np.eye(4)
    world_from_asset[:3, :3] = 0.5 * np.array([[1.0, 0, 0], [0, 0, -1.0], [0, 1.0, 0]])  # Y-up asset, halved
    world_from_asset[:3, 3] = [0.1, 0.2, 0.3]
    (tmp_path / "ground_truth").mkdir()
    (tmp_path / "ground_truth" / "normalization.json").write_text(json.dumps({"world_from_asset":
                                                                               world_from_asset.tolist()}))  # fmt: skip
    cameras = [orbit(1, (20.0,), radius=3.0, fov_deg=40.0, width=32, height=32)[0]]
    frame = export_frame(mesh, cameras, tmp_path)
    assert np.allclose(frame.file_from_scene @ world_from_asset, np.eye(4), atol=1e-12)
    assert frame.metres_per_unit is None and frame.scale == pytest.approx(2.0)  # units unknown: no report.json
    (tmp_path / "report.json").write_text(json.dumps({"asset": "Avocado.gltf"}))
    assert export_frame(mesh, cameras, tmp_path).metres_per_unit == 1.0  # a glTF asset is in metres
