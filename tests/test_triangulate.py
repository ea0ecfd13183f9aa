"""Points triangulated from known cameras lie on the surface the images show (``orbit4d import --triangulate``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from multiview.camera import Camera
from multiview.capture import read_capture, write_points_ply
from multiview.conventions import opengl_c2w_from_cam_from_world
from multiview.layouts import orbit
from multiview.triangulate import camera_pairs
from orbit4d.cli import EXIT_USER_ERROR, main
from synthetic import random_pose, textured_plane_capture, write_noise_image


def test_camera_pairs_link_each_camera_to_its_nearest():
    """On one orbit ring, each camera's neighbours are the ones beside it, never the one opposite."""
    cameras = orbit(24, (20.0,), radius=3.0, width=64, height=64)
    pairs = camera_pairs(cameras, neighbours=4)
    assert all(i < j for i, j in pairs) and len(set(pairs)) == len(pairs)
    for i in range(24):
        linked = {j for a, b in pairs for j in (a, b) if i in (a, b) and j != i}
        assert {(i + k) % 24 for k in (-2, -1, 1, 2)} <= linked
        assert (i + 12) % 24 not in linked


def test_camera_pairs_of_few_cameras():
    cameras = orbit(3, (0.0,), radius=2.0, width=32, height=32)
    assert camera_pairs(cameras, neighbours=10) == [(0, 1), (0, 2), (1, 2)]
    assert camera_pairs(cameras[:1], neighbours=10) == []


def test_triangulated_points_lie_on_the_surface(tmp_path):
    """A textured plane seen from 10 known cameras: the points land on it (z = 0) in the capture's world frame."""
    from multiview import process

    root = textured_plane_capture(tmp_path / "plane")
    process.add_points(root)
    capture = read_capture(root)
    assert capture.points is not None and len(capture.points) >= 500
    assert np.median(np.abs(capture.points[:, 2])) < 0.005  # the plane is 2 units wide
    assert np.mean(np.abs(capture.points[:, 2]) < 0.02) > 0.95
    assert np.all(np.abs(capture.points[:, :2]) < 1.05)
    assert json.loads((root / "report.json").read_text())["triangulation"]["points"] == len(capture.points)


def test_import_triangulate_on_a_capture_with_known_cameras(shared_data, tmp_path):
    """The cli path: an instant-ngp capture without points gets points3D.ply inside the cameras' view."""
    source = shared_data / "captures" / "ingp_fox"
    if not source.is_dir():
        pytest.skip("ingp_fox missing from the shared data")
    small = _small_copy(source, tmp_path / "fox_small", keep=12)
    from multiview import process

    out = process.run_import(small, tmp_path / "fox", triangulate=True)
    capture = read_capture(out)
    assert capture.points is not None and len(capture.points) > 300
    visible = np.mean([_in_view(frame.camera, capture.points) for frame in capture.frames], axis=0)
    assert np.median(visible) > 0.5, "points should project into most of the views that made them"
    assert not (out / ".triangulation").exists()


def _small_copy(source: Path, out: Path, keep: int) -> Path:
    """The first ``keep`` present frames of an instant-ngp capture, images halved (faster SIFT)."""
    from PIL import Image

    meta = json.loads((source / "transforms.json").read_text())
    frames = [f for f in meta["frames"] if (source / f["file_path"]).is_file()][:keep]
    (out / "images").mkdir(parents=True)
    for frame in frames:
        with Image.open(source / frame["file_path"]) as image:
            image.resize((image.width // 2, image.height // 2), Image.Resampling.BOX).save(out / frame["file_path"])
    for key in ("fl_x", "fl_y", "cx", "cy", "w", "h"):
        meta[key] = meta[key] / 2
    meta["frames"] = frames
    (out / "transforms.json").write_text(json.dumps(meta))
    return out


def _in_view(camera: Camera, points: np.ndarray) -> np.ndarray:
    cam = points @ camera.cam_from_world[:3, :3].T + camera.cam_from_world[:3, 3]
    uv = cam[:, :2] / np.maximum(cam[:, 2:], 1e-9) * np.diag(camera.K)[:2] + camera.K[:2, 2]
    return (cam[:, 2] > 0) & (uv[:, 0] >= 0) & (uv[:, 0] < camera.width) & (uv[:, 1] >= 0) & (uv[:, 1] < camera.height)


def test_import_triangulate_failure_names_the_source_not_the_staging_folder(tmp_path, capsys):
    """Noise images under known cameras give no point: one SfmError line naming what was imported and what to try."""
    source = tmp_path / "noise"
    frames = []
    for i in range(3):
        write_noise_image(source / "images" / f"{i}.png", seed=i)
        c2w = opengl_c2w_from_cam_from_world(random_pose(i))
        frames.append({"file_path": f"images/{i}.png", "transform_matrix": c2w.tolist()})
    meta = {"fl_x": 50.0, "fl_y": 50.0, "cx": 32.0, "cy": 24.0, "w": 64, "h": 48, "frames": frames}
    (source / "transforms.json").write_text(json.dumps(meta))
    code = main(["import", str(source), "--out", str(tmp_path / "out"), "--triangulate"])
    err = capsys.readouterr().err
    assert code == EXIT_USER_ERROR and "internal error" not in err
    line = err.strip().splitlines()[-1]
    assert f"error: {source}: no point could be triangulated" in line
    assert ".partial" not in err and "--no-triangulate" in line
    assert not (tmp_path / "out").exists()


def test_import_triangulate_of_a_capture_with_points_names_the_source(tmp_path, monkeypatch):
    from multiview import process

    said: list[str] = []
    monkeypatch.setattr(process, "info", said.append)
    source = textured_plane_capture(tmp_path / "plane", num_views=3, size=32)
    write_points_ply(source / "points3D.ply", np.zeros((4, 3)))
    meta = json.loads((source / "transforms.json").read_text())
    (source / "transforms.json").write_text(json.dumps({**meta, "ply_file_path": "points3D.ply"}))
    process.run_import(source, tmp_path / "out", triangulate=True)
    assert said[0] == f"{source} already has 4 points: not triangulating"
