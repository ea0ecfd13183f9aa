"""The capture format: transforms.json, points3D.ply, and captures made from COLMAP models."""

from __future__ import annotations

import PIL.Image  # isort: skip  (before pycolmap: pycolmap 4.2.1 breaks PIL's PNG encoder when loaded first)

import json
import math
from pathlib import Path

import numpy as np
import pycolmap
import pytest

from synthetic import random_pose, synthetic_colmap_project, write_noise_image

from multiview import capture as capture_module
from multiview.camera import Camera
from multiview.capture import (
    Capture,
    Frame,
    capture_from_colmap,
    read_capture,
    read_points_ply,
    read_transforms,
    write_capture,
    write_points_ply,
    write_transforms,
)
from multiview.conventions import opengl_c2w_from_cam_from_world
from multiview.errors import InputError

# --- helpers ---------------------------------------------------------------------------------------------------



def _camera(seed: int, fx: float = 50.0, dist=(), **kwargs) -> Camera:
    K = np.array([[fx, 0.0, 31.5], [0.0, fx * 1.01, 23.25], [0.0, 0.0, 1.0]])
    return Camera(K=K, cam_from_world=random_pose(seed), width=64, height=48, dist=np.array(dist), **kwargs)



def _assert_same_camera(actual: Camera, expected: Camera, atol: float = 1e-9) -> None:
    np.testing.assert_allclose(actual.K, expected.K, atol=atol)
    np.testing.assert_allclose(actual.cam_from_world, expected.cam_from_world, atol=atol)
    np.testing.assert_allclose(actual.dist, expected.dist, atol=atol)
    assert (actual.width, actual.height) == (expected.width, expected.height)
    assert (actual.time, actual.camera_id) == (expected.time, expected.camera_id)


def _collect_warnings(monkeypatch) -> list[str]:
    messages: list[str] = []
    monkeypatch.setattr(capture_module, "warn", messages.append)
    return messages



# --- transforms.json -------------------------------------------------------------------------------------------


def test_transforms_round_trip_with_shared_intrinsics(tmp_path: Path):
    frames = [
        Frame(write_noise_image(tmp_path / "images" / f"frame_{i:05d}.jpg"), _camera(i, dist=[0.1, -0.02, 0.001, 0.002]))
        for i in range(3)
    ]
    write_transforms(tmp_path / "transforms.json", frames, tmp_path, ply_file_path="points3D.ply")
    meta = json.loads((tmp_path / "transforms.json").read_text())
    assert meta["camera_model"] == "OPENCV" and meta["ply_file_path"] == "points3D.ply"
    assert (meta["w"], meta["h"], meta["k1"]) == (64, 48, 0.1)
    assert (meta["cx"], meta["cy"]) == (32.0, 23.75)  # nerfstudio's pixel-corner convention: ours + 0.5
    assert "fl_x" not in meta["frames"][0] and meta["frames"][0]["file_path"] == "images/frame_00000.jpg"
    np.testing.assert_allclose(
        meta["frames"][1]["transform_matrix"], opengl_c2w_from_cam_from_world(frames[1].camera.cam_from_world)
    )
    for read, written in zip(read_transforms(tmp_path / "transforms.json"), frames):
        assert read.image_path == written.image_path
        _assert_same_camera(read.camera, written.camera)


def test_transforms_round_trip_with_per_frame_intrinsics_time_rig_and_masks(tmp_path: Path):
    frames = [
        Frame(
            write_noise_image(tmp_path / "images" / f"cam{i % 2}" / f"{i}.png"),
            _camera(i, fx=40.0 + i, time=0.5 * i, camera_id=i % 2),
            write_noise_image(tmp_path / "masks" / f"{i}.png"),
        )
        for i in range(4)
    ]
    write_transforms(tmp_path / "transforms.json", frames, tmp_path)
    meta = json.loads((tmp_path / "transforms.json").read_text())
    assert "fl_x" not in meta and "ply_file_path" not in meta
    assert [f["fl_x"] for f in meta["frames"]] == [40.0, 41.0, 42.0, 43.0]
    assert meta["frames"][3]["camera_model"] == "PINHOLE" and "k1" not in meta["frames"][3]
    assert meta["frames"][1]["mask_path"] == "masks/1.png" and meta["frames"][1]["camera_id"] == 1
    for read, written in zip(read_transforms(tmp_path / "transforms.json"), frames):
        assert (read.image_path, read.mask_path) == (written.image_path, written.mask_path)
        _assert_same_camera(read.camera, written.camera)


def test_write_transforms_refuses_images_outside_root(tmp_path: Path):
    frame = Frame(tmp_path / "elsewhere" / "a.jpg", _camera(0))
    with pytest.raises(ValueError, match="not inside"):
        write_transforms(tmp_path / "capture" / "transforms.json", [frame], tmp_path / "capture")


def test_read_instant_ngp_layout(tmp_path: Path):
    """camera_angle_x only, no w/h (read from the header), ./ paths without extension, aabb_scale ignored."""
    write_noise_image(tmp_path / "train" / "r_0.png", width=40, height=30)
    c2w = opengl_c2w_from_cam_from_world(random_pose(3))
    meta = {
        "camera_angle_x": 0.69,
        "aabb_scale": 16,
        "scale": 0.33,
        "frames": [{"file_path": "./train/r_0", "rotation": 0.1, "transform_matrix": c2w[:3].tolist()}],
    }
    (tmp_path / "transforms_train.json").write_text(json.dumps(meta))
    [frame] = read_transforms(tmp_path / "transforms_train.json")
    assert frame.image_path == tmp_path / "train" / "r_0.png"
    focal = 0.5 * 40 / math.tan(0.5 * 0.69)
    expected_K = [[focal, 0, 19.5], [0, focal, 14.5], [0, 0, 1]]  # centred principal point, OpenCV pixels
    np.testing.assert_allclose(frame.camera.K, expected_K)
    assert (frame.camera.width, frame.camera.height) == (40, 30) and frame.camera.is_pinhole
    np.testing.assert_allclose(frame.camera.cam_from_world, random_pose(3), atol=1e-12)


def test_missing_images_are_skipped_with_one_warning(tmp_path: Path, monkeypatch):
    warnings = _collect_warnings(monkeypatch)
    write_noise_image(tmp_path / "images" / "a.jpg")
    c2w = np.eye(4).tolist()
    names = ["images/a.jpg"] + [f"images/missing_{i}.jpg" for i in range(5)]
    meta = {"fl_x": 50.0, "w": 64, "h": 48, "frames": [{"file_path": n, "transform_matrix": c2w} for n in names]}
    (tmp_path / "transforms.json").write_text(json.dumps(meta))
    frames = read_transforms(tmp_path / "transforms.json")
    assert [f.image_path.name for f in frames] == ["a.jpg"]
    assert len(warnings) == 1
    assert "5 of 6" in warnings[0] and "missing_0.jpg" in warnings[0] and "missing_4.jpg" not in warnings[0]


def _one_frame(matrix=np.eye(4).tolist(), file_path="images/a.jpg", **top) -> str:
    return json.dumps({"frames": [{"file_path": file_path, "transform_matrix": matrix}], **top})


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not readable JSON"),
        ('{"fl_x": 5}', "no 'frames' list"),
        (_one_frame(file_path="images/gone.jpg", fl_x=5), "none of its 1 images exist"),
        (_one_frame([[1, 0]], fl_x=5), "finite 4x4"),
        (_one_frame(np.diag([2.0, 1, 1, 1]).tolist(), fl_x=5), "not a rigid"),
        (_one_frame(np.diag([1.0, 1, -1, 1]).tolist(), fl_x=5), "not a rigid"),  # a reflection
        (_one_frame(fl_x=5, camera_model="OPENCV_FISHEYE"), "not supported"),
        (_one_frame(), "no focal length"),
        (_one_frame(fl_x="wide"), "not a number"),
        (_one_frame(camera_angle_x=0), "camera_angle_x 0 is not a field of view"),
    ],
)
def test_bad_transforms_raise_input_error_naming_the_file(tmp_path: Path, content: str, message: str):
    write_noise_image(tmp_path / "images" / "a.jpg")
    (tmp_path / "transforms.json").write_text(content)
    with pytest.raises(InputError, match=message) as error:
        read_transforms(tmp_path / "transforms.json")
    assert str(tmp_path / "transforms.json") in str(error.value) and "\n" not in str(error.value)


# --- points3D.ply ----------------------------------------------------------------------------------------------


def test_points_ply_round_trip(tmp_path: Path):
    rng = np.random.default_rng(0)
    xyz = rng.normal(size=(100, 3)).astype(np.float32)
    rgb = rng.integers(0, 256, (100, 3), dtype=np.uint8)
    write_points_ply(tmp_path / "points3D.ply", xyz, rgb)
    read_xyz, read_rgb = read_points_ply(tmp_path / "points3D.ply")
    np.testing.assert_array_equal(read_xyz, xyz)
    np.testing.assert_array_equal(read_rgb, rgb)
    write_points_ply(tmp_path / "plain.ply", xyz)
    plain_xyz, plain_rgb = read_points_ply(tmp_path / "plain.ply")
    np.testing.assert_array_equal(plain_xyz, xyz)
    assert plain_rgb is None


def test_points_ply_is_read_by_open3d_and_reads_open3d_files(tmp_path: Path):
    o3d = pytest.importorskip("open3d")
    rng = np.random.default_rng(1)
    xyz = rng.normal(size=(50, 3)).astype(np.float32)
    rgb = rng.integers(0, 256, (50, 3), dtype=np.uint8)
    write_points_ply(tmp_path / "ours.ply", xyz, rgb)
    cloud = o3d.io.read_point_cloud(str(tmp_path / "ours.ply"))
    np.testing.assert_allclose(np.asarray(cloud.points), xyz, atol=1e-6)
    np.testing.assert_allclose(np.asarray(cloud.colors) * 255, rgb, atol=0.5)
    for ascii in (False, True):  # Open3D writes doubles and normals
        cloud.normals = o3d.utility.Vector3dVector(np.tile([0.0, 0.0, 1.0], (50, 1)))
        path = tmp_path / f"open3d_{ascii}.ply"
        o3d.io.write_point_cloud(str(path), cloud, write_ascii=ascii)
        read_xyz, read_rgb = read_points_ply(path)
        np.testing.assert_allclose(read_xyz, xyz, atol=1e-4 if ascii else 1e-6)  # ASCII keeps ~6 digits
        np.testing.assert_array_equal(read_rgb, rgb)


@pytest.mark.parametrize(
    "corrupt",
    [
        lambda data: data[: len(data) - 7],  # truncated body
        lambda data: data[:40],  # truncated header
        lambda data: b"PNG" + data[3:],  # not a PLY
        lambda data: data.replace(b"float x", b"quad x"),  # unknown type
        lambda data: data.replace(b"binary_little_endian", b"binary_middle_endian"),
    ],
)
def test_corrupt_ply_raises_input_error_naming_the_file(tmp_path: Path, corrupt):
    path = write_points_ply(tmp_path / "points3D.ply", np.zeros((10, 3)), np.zeros((10, 3), np.uint8))
    path.write_bytes(corrupt(path.read_bytes()))
    with pytest.raises(InputError) as error:
        read_points_ply(path)
    assert str(path) in str(error.value)


def test_capture_round_trip(tmp_path: Path):
    frames = [Frame(write_noise_image(tmp_path / "images" / f"{i}.jpg"), _camera(i)) for i in range(2)]
    points = np.arange(12, dtype=np.float32).reshape(4, 3)
    colors = np.full((4, 3), 200, np.uint8)
    write_capture(Capture(tmp_path, frames, points, colors))
    capture = read_capture(tmp_path)
    assert [f.image_path for f in capture.frames] == [f.image_path for f in frames]
    np.testing.assert_array_equal(capture.points, points)
    np.testing.assert_array_equal(capture.colors, colors)
    with pytest.raises(InputError, match="no transforms.json"):
        read_capture(tmp_path / "images")


# --- captures from COLMAP models -------------------------------------------------------------------------------


def _projection_errors(capture: Capture, model: "pycolmap.Reconstruction") -> list[float]:
    """|our projection of each 3D point - (COLMAP's observation - 0.5)| over every observation of ``model``."""
    errors = []
    for frame in capture.frames:
        image = model.find_image_with_name(frame.image_path.name)
        for point2D in image.points2D:
            if point2D.has_point3D():
                xyz = model.points3D[point2D.point3D_id].xyz
                errors.append(np.abs(frame.camera.project(xyz) - (point2D.xy - 0.5)).max())
    return errors


@pytest.mark.parametrize("text", [False, True])
def test_capture_from_distorted_colmap_model(tmp_path: Path, text: bool):
    source = synthetic_colmap_project(tmp_path / "project", "SIMPLE_RADIAL", text)
    out = tmp_path / "capture"
    out.mkdir()
    capture_from_colmap(tmp_path / "project" / "sparse" / "0", tmp_path / "project" / "images", out)

    undistorted = pycolmap.Reconstruction(out / "sparse" / "0")  # binary PINHOLE model, registered images only
    assert (out / "sparse" / "0" / "cameras.bin").is_file()
    assert {c.model.name for c in undistorted.cameras.values()} == {"PINHOLE"}
    capture = read_capture(out)
    assert sorted(f.image_path.name for f in capture.frames) == sorted(i.name for i in source.images.values())
    for frame in capture.frames:
        assert frame.image_path.parent == out / "images" and frame.camera.is_pinhole
        with PIL.Image.open(frame.image_path) as image:
            assert image.size == (frame.camera.width, frame.camera.height)
        expected_pose = source.find_image_with_name(frame.image_path.name).cam_from_world().matrix()
        np.testing.assert_allclose(frame.camera.cam_from_world[:3], expected_pose, atol=1e-9)
    # Pose, K and the half-pixel shift together: every observation reprojects exactly.
    assert max(_projection_errors(capture, undistorted)) < 1e-6
    assert capture.points.shape == (len(source.points3D), 3)
    report = json.loads((out / "report.json").read_text())
    assert (report["registered"], report["total"], report["skipped"]) == (5, 5, [])


def test_capture_from_pinhole_model_keeps_intrinsics(tmp_path: Path):
    source = synthetic_colmap_project(tmp_path / "project", "PINHOLE")
    out = tmp_path / "capture"
    out.mkdir()
    capture_from_colmap(tmp_path / "project" / "sparse" / "0", tmp_path / "project" / "images", out)
    capture = read_capture(out)
    colmap_K = source.cameras[1].calibration_matrix()
    for frame in capture.frames:
        np.testing.assert_allclose(frame.camera.K, colmap_K - np.array([[0, 0, 0.5], [0, 0, 0.5], [0, 0, 0]]))
        assert (frame.camera.width, frame.camera.height) == (64, 48)
    assert max(_projection_errors(capture, source)) < 1e-6


def test_capture_from_colmap_skips_missing_images(tmp_path: Path, monkeypatch):
    warnings = _collect_warnings(monkeypatch)
    source = synthetic_colmap_project(tmp_path / "project", "PINHOLE")
    gone = sorted(image.name for image in source.images.values())[:2]
    for name in gone:
        (tmp_path / "project" / "images" / name).unlink()
    out = tmp_path / "capture"
    out.mkdir()
    capture_from_colmap(tmp_path / "project" / "sparse" / "0", tmp_path / "project" / "images", out)
    assert len(read_capture(out).frames) == 3
    assert pycolmap.Reconstruction(out / "sparse" / "0").num_reg_images() == 3
    report = json.loads((out / "report.json").read_text())
    assert (report["registered"], report["total"], report["skipped"]) == (3, 5, gone)
    assert len(warnings) == 1 and "2 of 5" in warnings[0]


def test_capture_from_colmap_errors(tmp_path: Path):
    synthetic_colmap_project(tmp_path / "project", "PINHOLE")
    out = tmp_path / "capture"
    out.mkdir()
    model = tmp_path / "project" / "sparse" / "0"
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="none of its registered images"):
        capture_from_colmap(model, tmp_path / "empty", out)
    with pytest.raises(InputError, match="holds no COLMAP model"):
        capture_from_colmap(tmp_path / "empty", tmp_path / "project" / "images", out)
    (model / "images.bin").write_bytes((model / "images.bin").read_bytes()[:50])
    with pytest.raises(InputError, match="images.bin promises 5 images where its remaining 42 bytes"):
        capture_from_colmap(model, tmp_path / "project" / "images", out)
