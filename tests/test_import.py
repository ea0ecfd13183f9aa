"""Importing captures made elsewhere: instant-ngp / nerfstudio, COLMAP and LLFF."""

from __future__ import annotations

import PIL.Image  # isort: skip  (before pycolmap: pycolmap 4.2.1 breaks PIL's PNG encoder when loaded first)

import json
import warnings
from pathlib import Path

import numpy as np
import pycolmap
import pytest

from synthetic import random_pose, synthetic_colmap_project, write_noise_image

from multiview import capture as capture_module
from multiview import importers
from multiview.camera import Camera
from multiview.capture import read_capture, read_points_ply, write_points_ply
from multiview.conventions import (
    cam_from_world_from_opengl_c2w,
    llff_from_cam_from_world,
    opengl_c2w_from_cam_from_world,
)
from multiview.errors import InputError, OutputExistsError
from multiview.importers import detect_source, import_capture
from orbit4d.cli import EXIT_USER_ERROR, main




def _report(out: Path) -> dict:
    return json.loads((out / "report.json").read_text())


def _cli_error(capsys, *argv) -> str:
    """The one error line of a failed ``orbit4d`` run, which must be a user error, not an internal one."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # numpy's divide-by-zero warnings are bugs here
        code = main([str(arg) for arg in argv])
    err = capsys.readouterr().err
    assert code == EXIT_USER_ERROR, err
    assert "internal error" not in err and "Traceback" not in err
    lines = [line for line in err.strip().splitlines() if "error" in line]
    assert len(lines) == 1, err
    return lines[0]


def _damage(path: Path, how: str) -> None:
    """An image that does not decode: empty, or cut in half."""
    path.write_bytes(b"" if how == "empty" else path.read_bytes()[: path.stat().st_size // 2])


# --- instant-ngp / nerfstudio ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fox(shared_data: Path) -> Path:
    return shared_data / "captures" / "ingp_fox"


def _fox_poses(fox: Path) -> dict[str, np.ndarray]:
    meta = json.loads((fox / "transforms.json").read_text())
    return {Path(f["file_path"]).name: np.array(f["transform_matrix"]) for f in meta["frames"]}


def test_import_ingp_fox_keeps_poses_and_reports_missing_images(fox: Path, tmp_path: Path, monkeypatch):
    warnings: list[str] = []
    monkeypatch.setattr(capture_module, "warn", warnings.append)
    out = import_capture(fox, tmp_path / "capture", undistort=False)

    meta = json.loads((out / "transforms.json").read_text())
    source = _fox_poses(fox)
    present = sorted(p.name for p in (fox / "images").iterdir())
    assert sorted(Path(f["file_path"]).name for f in meta["frames"]) == present
    assert len(present) == 50 and len(source) == 67
    for frame in meta["frames"]:
        assert frame["file_path"].startswith("images/") and (out / frame["file_path"]).is_file()
        np.testing.assert_allclose(frame["transform_matrix"], source[Path(frame["file_path"]).name], atol=1e-6)
    assert (meta["fl_x"], meta["cx"], meta["k1"], meta["w"]) == (1375.52, 554.558, 0.0578421, 1080)
    report = _report(out)
    assert (report["source_format"], report["registered"], report["total"]) == ("transforms", 50, 67)
    assert len(report["skipped"]) == 17 and not set(report["skipped"]) & {f"images/{n}" for n in present}
    assert len(warnings) == 1 and "17 of 67" in warnings[0]


@pytest.mark.slow
def test_import_ingp_fox_undistorted(fox: Path, tmp_path: Path):
    out = import_capture(fox, tmp_path / "capture")
    capture = read_capture(out)
    source = _fox_poses(fox)
    assert len(capture.frames) == 50 and all(frame.camera.is_pinhole for frame in capture.frames)
    for frame in capture.frames:
        c2w = opengl_c2w_from_cam_from_world(frame.camera.cam_from_world)
        np.testing.assert_allclose(c2w, source[frame.image_path.name], atol=1e-6)
        with PIL.Image.open(frame.image_path) as image:
            assert image.size == (frame.camera.width, frame.camera.height)
    assert _report(out)["undistorted"] is True


def _distorted_transforms(root: Path, count: int = 3, with_points: bool = False) -> list[np.ndarray]:
    """A nerfstudio transforms.json with an OPENCV camera and 64x48 images under root/rgb; returns the c2w."""
    c2ws = [opengl_c2w_from_cam_from_world(random_pose(i)) for i in range(count)]
    frames = []
    for i, c2w in enumerate(c2ws):
        write_noise_image(root / "rgb" / f"{i:03d}.png", seed=i)
        write_noise_image(root / "mask" / f"{i:03d}.png", seed=i)
        entry = {"file_path": f"rgb/{i:03d}.png", "mask_path": f"mask/{i:03d}.png", "time": 0.1 * i}
        frames.append({**entry, "transform_matrix": c2w.tolist()})
    intrinsics = {"fl_x": 60.0, "fl_y": 61.0, "cx": 32.0, "cy": 24.0, "w": 64, "h": 48}
    distortion = {"k1": -0.1, "k2": 0.01, "p1": 0.0, "p2": 0.0}
    meta = {"camera_model": "OPENCV", **intrinsics, **distortion, "frames": frames}
    if with_points:
        write_points_ply(root / "sparse_pc.ply", np.ones((5, 3)), np.full((5, 3), 7, np.uint8))
        meta["ply_file_path"] = "sparse_pc.ply"
    (root / "transforms.json").write_text(json.dumps(meta))
    return c2ws


def test_import_distorted_transforms_undistorts_to_pinhole(tmp_path: Path):
    c2ws = _distorted_transforms(tmp_path / "source", with_points=True)
    out = import_capture(tmp_path / "source" / "transforms.json", tmp_path / "capture")
    capture = read_capture(out)
    names = [f.image_path.relative_to(out).as_posix() for f in capture.frames]
    assert names == ["images/000.png", "images/001.png", "images/002.png"]
    for frame, c2w in zip(capture.frames, c2ws):
        assert frame.camera.is_pinhole and frame.mask_path is None
        np.testing.assert_allclose(frame.camera.cam_from_world, cam_from_world_from_opengl_c2w(c2w), atol=1e-12)
        with PIL.Image.open(frame.image_path) as image:
            assert image.size == (frame.camera.width, frame.camera.height)
    assert [f.camera.time for f in capture.frames] == [0.0, 0.1, 0.2]
    assert json.loads((out / "transforms.json").read_text())["camera_model"] == "PINHOLE"
    np.testing.assert_array_equal(capture.colors, np.full((5, 3), 7, np.uint8))
    assert _report(out)["undistorted"] is True


def test_import_transforms_without_undistortion_copies_images_and_masks(tmp_path: Path):
    c2ws = _distorted_transforms(tmp_path / "source")
    out = import_capture(tmp_path / "source", tmp_path / "capture", undistort=False)
    capture = read_capture(out)
    for i, frame in enumerate(capture.frames):
        assert frame.image_path == out / "images" / f"{i:03d}.png"
        assert frame.mask_path == out / "masks" / f"{i:03d}.png" and frame.mask_path.is_file()
        assert frame.image_path.read_bytes() == (tmp_path / "source" / "rgb" / f"{i:03d}.png").read_bytes()
        np.testing.assert_allclose(frame.camera.dist, [-0.1, 0.01, 0.0, 0.0])
        np.testing.assert_allclose(opengl_c2w_from_cam_from_world(frame.camera.cam_from_world), c2ws[i], atol=1e-12)
    assert not (out / "points3D.ply").exists()


# --- COLMAP ----------------------------------------------------------------------------------------------------



def _assert_matches_model(out: Path, model: "pycolmap.Reconstruction") -> None:
    capture = read_capture(out)
    assert sorted(f.image_path.name for f in capture.frames) == sorted(i.name for i in model.images.values())
    for frame in capture.frames:
        image = model.find_image_with_name(frame.image_path.name)
        np.testing.assert_allclose(frame.camera.cam_from_world[:3], image.cam_from_world().matrix(), atol=1e-9)
        K = model.cameras[image.camera_id].calibration_matrix()
        K[:2, 2] -= 0.5  # COLMAP's pixel-corner principal point -> OpenCV's pixel centres
        np.testing.assert_allclose(frame.camera.K, K, atol=1e-9)
    np.testing.assert_allclose(capture.points, [p.xyz for _, p in sorted(model.points3D.items())], atol=1e-5)


@pytest.mark.parametrize("text", [False, True])
def test_import_colmap_project_folder(tmp_path: Path, text: bool):
    model = synthetic_colmap_project(tmp_path / "project", text=text)
    out = import_capture(tmp_path / "project", tmp_path / "capture")
    _assert_matches_model(out, model)
    assert (out / "sparse" / "0" / "cameras.bin").is_file()
    report = _report(out)
    assert (report["source_format"], report["registered"], report["total"], report["skipped"]) == ("colmap", 5, 5, [])


def test_import_colmap_model_folder_finds_images_above_it(tmp_path: Path):
    model = synthetic_colmap_project(tmp_path / "project")
    out = import_capture(tmp_path / "project" / "sparse" / "0", tmp_path / "capture")
    _assert_matches_model(out, model)


def test_import_colmap_without_images_names_where_it_looked(tmp_path: Path):
    synthetic_colmap_project(tmp_path / "project")
    (tmp_path / "project" / "images").rename(tmp_path / "project" / "photos")
    with pytest.raises(InputError, match="no folder holds its images"):
        import_capture(tmp_path / "project", tmp_path / "capture")
    model = synthetic_colmap_project(tmp_path / "other")
    out = import_capture(tmp_path / "project", tmp_path / "capture", image_dir=tmp_path / "project" / "photos")
    _assert_matches_model(out, model)


# --- LLFF ------------------------------------------------------------------------------------------------------


def _llff_scene(root: Path, cameras: list[Camera], file_size: tuple[int, int]) -> None:
    """poses_bounds.npy for ``cameras`` as LLFF writes it, claiming images of ``file_size`` (w, h)."""
    width, height = file_size
    rows = []
    for camera in cameras:
        focal = camera.fx * width / camera.width
        pose = np.concatenate([llff_from_cam_from_world(camera.cam_from_world), [[height], [width], [focal]]], axis=1)
        rows.append(np.concatenate([pose.ravel(), [0.5, 20.0]]))
    root.mkdir(parents=True)
    np.save(root / "poses_bounds.npy", np.array(rows))


def test_import_llff_scales_focal_to_the_image_size(tmp_path: Path):
    K = np.array([[80.0, 0.0, 31.5], [0.0, 80.0, 23.5], [0.0, 0.0, 1.0]])  # centred, OpenCV pixels, 64x48
    cameras = [Camera(K, random_pose(i), 64, 48) for i in range(3)]
    _llff_scene(tmp_path / "llff", cameras, file_size=(32, 24))  # poses made at half the size of the images
    for i in range(3):
        write_noise_image(tmp_path / "llff" / "images" / f"IMG_{i:04d}.JPG", seed=i)
    out = import_capture(tmp_path / "llff", tmp_path / "capture")
    capture = read_capture(out)
    assert [f.image_path.name for f in capture.frames] == ["IMG_0000.JPG", "IMG_0001.JPG", "IMG_0002.JPG"]
    for frame, camera in zip(capture.frames, cameras):
        np.testing.assert_allclose(frame.camera.K, camera.K, atol=1e-9)
        np.testing.assert_allclose(frame.camera.cam_from_world, camera.cam_from_world, atol=1e-9)
        assert (frame.camera.width, frame.camera.height) == (64, 48)
    report = _report(out)
    assert (report["source_format"], report["registered"], report["near_far"]) == ("llff", 3, [0.5, 20.0])


def test_llff_errors(tmp_path: Path):
    cameras = [Camera(np.diag([50.0, 50.0, 1.0]), random_pose(i), 64, 48) for i in range(2)]
    _llff_scene(tmp_path / "llff", cameras, file_size=(64, 48))
    write_noise_image(tmp_path / "llff" / "images" / "a.png")
    with pytest.raises(InputError, match="2 poses but .* holds 1 images"):
        import_capture(tmp_path / "llff", tmp_path / "out1")
    write_noise_image(tmp_path / "llff" / "images" / "b.png", width=48, height=48)
    with pytest.raises(InputError, match="different aspect ratio"):
        import_capture(tmp_path / "llff", tmp_path / "out2")
    np.save(tmp_path / "llff" / "poses_bounds.npy", np.zeros((2, 15)))
    with pytest.raises(InputError, match=r"shape \(2, 15\)"):
        import_capture(tmp_path / "llff" / "poses_bounds.npy", tmp_path / "out3")


def _llff_two_images(root: Path) -> Path:
    cameras = [Camera(np.diag([50.0, 50.0, 1.0]), random_pose(i), 64, 48) for i in range(2)]
    _llff_scene(root, cameras, file_size=(64, 48))
    for i, name in enumerate(("a.png", "b.png")):
        write_noise_image(root / "images" / name, seed=i)
    return root / "poses_bounds.npy"


ROTATION = [0, 1, 2, 5, 6, 7, 10, 11, 12]  # where the 3x3 rotation sits in a poses_bounds row


@pytest.mark.parametrize(
    ("damage", "needle"),
    [
        (lambda row: row.__setitem__([4, 9, 14], 0.0), "height 0, width 0, focal length 0"),
        (lambda row: row.__setitem__(14, -row[14]), "focal length -"),
        (lambda row: row.__setitem__(ROTATION, 0.0), "not orthonormal"),
        (lambda row: row.__setitem__(ROTATION, 1.1 * row[ROTATION]), "not orthonormal"),
        (lambda row: row.__setitem__([0, 5, 10], -row[[0, 5, 10]]), "determinant +1"),
    ],
    ids=["zero size and focal", "negative focal", "empty rotation", "scaled rotation", "mirrored rotation"],
)
def test_llff_bad_row_is_one_input_error_naming_the_file_and_row(tmp_path: Path, capsys, damage, needle: str):
    path = _llff_two_images(tmp_path / "llff")
    poses_bounds = np.load(path)
    damage(poses_bounds[1])
    np.save(path, poses_bounds)
    line = _cli_error(capsys, "import", tmp_path / "llff", "--out", tmp_path / "out")
    assert "poses_bounds.npy: row 1 (b.png)" in line and needle in line
    assert not (tmp_path / "out").exists()


def test_llff_float32_poses_pass_the_rotation_check(tmp_path: Path):
    path = _llff_two_images(tmp_path / "llff")
    np.save(path, np.load(path).astype(np.float32))
    assert len(read_capture(import_capture(tmp_path / "llff", tmp_path / "out")).frames) == 2


def _damage_colmap_camera(model: "pycolmap.Reconstruction", params: list[float]) -> str:
    camera_id = next(iter(model.cameras))
    model.cameras[camera_id].params = params
    return min(image.name for image in model.images.values())


def _damage_colmap_pose(model: "pycolmap.Reconstruction") -> str:
    image = min(model.images.values(), key=lambda image: image.name)
    frame = model.frames[image.frame_id]
    frame.rig_from_world = pycolmap.Rigid3d(frame.rig_from_world.rotation, np.array([np.nan, 0.0, 0.0]))
    return image.name


@pytest.mark.parametrize(
    ("damage", "needle"),
    [
        (lambda model: _damage_colmap_camera(model, [0.0, 0.0, 31.0, 25.0]), "focal length [0.0, 0.0]"),
        (lambda model: _damage_colmap_camera(model, [-50.0, 51.0, 31.0, 25.0]), "focal length [-50.0, 51.0]"),
        (lambda model: _damage_colmap_camera(model, [np.nan, 51.0, 31.0, 25.0]), "non-finite camera parameters"),
        (_damage_colmap_pose, "not a finite rigid transform"),
    ],
    ids=["zero focal", "negative focal", "nan focal", "nan pose"],
)
def test_colmap_bad_camera_or_pose_is_one_input_error_naming_the_model(tmp_path: Path, capsys, damage, needle):
    model = synthetic_colmap_project(tmp_path / "project")
    name = damage(model)
    model.write_binary(tmp_path / "project" / "sparse" / "0")
    line = _cli_error(capsys, "import", tmp_path / "project", "--out", tmp_path / "out")
    assert f"{tmp_path / 'project' / 'sparse' / '0'}: image {name}" in line and needle in line


# --- images that do not decode ---------------------------------------------------------------------------------


def _pinhole_transforms(root: Path, count: int = 3) -> list[Path]:
    frames = []
    for i in range(count):
        write_noise_image(root / "images" / f"{i}.png", seed=i)
        c2w = opengl_c2w_from_cam_from_world(random_pose(i))
        frames.append({"file_path": f"images/{i}.png", "transform_matrix": c2w.tolist()})
    meta = {"fl_x": 50.0, "fl_y": 50.0, "cx": 32.0, "cy": 24.0, "w": 64, "h": 48, "frames": frames}
    (root / "transforms.json").write_text(json.dumps(meta))
    return [root / "images" / f"{i}.png" for i in range(count)]


def _source_with_images(kind: str, root: Path) -> list[Path]:
    """A capture of 3 (LLFF, transforms.json) or 5 (COLMAP) 64x48 noise images; their paths, in name order."""
    if kind == "transforms":
        return _pinhole_transforms(root)
    if kind == "llff":
        cameras = [Camera(np.diag([50.0, 50.0, 1.0]), random_pose(i), 64, 48) for i in range(3)]
        _llff_scene(root, cameras, file_size=(64, 48))
        return [write_noise_image(root / "images" / f"{i}.png", seed=i) for i in range(3)]
    synthetic_colmap_project(root)
    return sorted((root / "images").iterdir())


@pytest.mark.parametrize("kind", ["transforms", "llff", "colmap"])
def test_images_that_do_not_decode_are_skipped_and_named(tmp_path: Path, monkeypatch, kind: str):
    said: list[str] = []
    monkeypatch.setattr(importers, "warn", said.append)
    images = _source_with_images(kind, tmp_path / "source")
    _damage(images[0], "empty")
    _damage(images[1], "truncated")
    out = import_capture(tmp_path / "source", tmp_path / "capture")

    capture = read_capture(out)
    assert sorted(frame.image_path.name for frame in capture.frames) == [image.name for image in images[2:]]
    report = _report(out)
    assert (report["registered"], report["total"]) == (len(images) - 2, len(images))
    assert {Path(name).name for name in report["skipped"]} == {images[0].name, images[1].name}
    assert len(said) == 1 and images[0].name in said[0] and images[1].name in said[0]
    assert str(tmp_path / "source") in said[0] and ".partial" not in said[0]
    if kind == "llff":  # the poses stay with their images
        np.testing.assert_allclose(capture.frames[0].camera.cam_from_world, random_pose(2), atol=1e-9)
    if kind == "colmap":
        assert report["source"] == str(tmp_path / "source" / "sparse" / "0")


@pytest.mark.parametrize("kind", ["transforms", "llff", "colmap"])
def test_no_image_that_decodes_is_one_input_error(tmp_path: Path, capsys, kind: str):
    for image in _source_with_images(kind, tmp_path / "source"):
        _damage(image, "empty")
    line = _cli_error(capsys, "import", tmp_path / "source", "--out", tmp_path / "out")
    assert str(tmp_path / "source") in line and "images decode" in line
    assert not (tmp_path / "out").exists()


# --- layouts ---------------------------------------------------------------------------------------------------


def test_unknown_layout_lists_what_was_looked_for(tmp_path: Path):
    (tmp_path / "stuff").mkdir()
    with pytest.raises(InputError) as error:
        import_capture(tmp_path / "stuff", tmp_path / "capture")
    message = str(error.value)
    assert all(name in message for name in ("transforms.json", "poses_bounds.npy", "sparse/0/cameras.bin"))
    assert "\n" not in message
    with pytest.raises(InputError, match="does not exist"):
        detect_source(tmp_path / "nowhere")


def test_detect_source_kinds(tmp_path: Path):
    synthetic_colmap_project(tmp_path / "colmap")
    assert detect_source(tmp_path / "colmap") == ("colmap", tmp_path / "colmap" / "sparse" / "0")
    assert detect_source(tmp_path / "colmap" / "sparse" / "0") == ("colmap", tmp_path / "colmap" / "sparse" / "0")
    _distorted_transforms(tmp_path / "ns")
    assert detect_source(tmp_path / "ns") == ("transforms", tmp_path / "ns" / "transforms.json")


def test_refuses_non_empty_output(tmp_path: Path):
    _distorted_transforms(tmp_path / "source")
    (tmp_path / "capture").mkdir()
    (tmp_path / "capture" / "keep.txt").write_text("mine")
    with pytest.raises(OutputExistsError):
        import_capture(tmp_path / "source", tmp_path / "capture")
    assert (tmp_path / "capture" / "keep.txt").read_text() == "mine"


def test_points_referenced_by_transforms_are_copied(tmp_path: Path):
    _distorted_transforms(tmp_path / "source", with_points=True)
    out = import_capture(tmp_path / "source", tmp_path / "capture", undistort=False)
    xyz, rgb = read_points_ply(out / "points3D.ply")
    np.testing.assert_array_equal(xyz, np.ones((5, 3), np.float32))
    assert json.loads((out / "transforms.json").read_text())["ply_file_path"] == "points3D.ply"
