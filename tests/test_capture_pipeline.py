"""`orbit4d capture` end to end on real data: what lands in the capture folder is right, not only what SfM saw; and
the options it refuses before any work starts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from multiview import process
from multiview.align import compare_poses, read_strecha_camera
from multiview.capture import read_capture
from orbit4d.cli import EXIT_USER_ERROR, main

MAX_SIDE = 1024


def _noise_photos(folder: Path, sizes: list[tuple[int, int]]) -> Path:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i, (width, height) in enumerate(sizes):
        Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


def _error_line(capsys, *argv) -> str:
    code = main([str(arg) for arg in argv])
    err = capsys.readouterr().err
    assert code == EXIT_USER_ERROR and "internal error" not in err, err
    return err.strip().splitlines()[-1]


@pytest.mark.parametrize("threads", ["0", "-7"])
def test_bad_thread_count_is_refused_before_any_work(tmp_path: Path, capsys, threads: str) -> None:
    photos = _noise_photos(tmp_path / "photos", [(64, 48)] * 3)
    line = _error_line(capsys, "capture", photos, "--out", tmp_path / "out", "--threads", threads)
    assert f"--threads {threads}: use -1 (all cores)" in line
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.*"))


def test_single_camera_for_photos_of_different_sizes_names_the_photo_folder(tmp_path: Path, capsys) -> None:
    photos = _noise_photos(tmp_path / "photos", [(64, 48), (48, 64), (64, 48)])
    line = _error_line(capsys, "capture", photos, "--out", tmp_path / "out", "--camera", "single")
    assert f"the images of {photos} have 2 different sizes" in line and "--camera per-image" in line
    assert ".partial" not in line and not (tmp_path / "out").exists()


def test_herz_jesus_capture_matches_ground_truth(shared_data: Path, tmp_path: Path) -> None:
    """8/8 registered; cameras read back from transforms.json agree with Strecha's ground truth.

    Goes through frame loading, SfM, undistortion and the nerfstudio writer, so a convention slip anywhere
    (OpenGL flip, COLMAP quaternion, principal point) fails here.
    """
    source = shared_data / "captures" / "herz_jesus_p8"
    config = process.CaptureConfig.from_options(max_size=MAX_SIDE)
    out = process.run(config, source / "images", tmp_path / "capture")

    report = json.loads((out / "report.json").read_text())
    assert (report["registered"], report["total"]) == (8, 8)
    assert report["mean_reprojection_error_px"] < 1.0
    assert report["seconds"]["total"] >= report["seconds"]["mapping"] > 0

    capture = read_capture(out)
    names = [frame.image_path.stem for frame in capture.frames]
    assert sorted(names) == [f"{k:04d}" for k in range(8)]
    reference = [read_strecha_camera(source / "gt_dense_cameras" / f"{name}.jpg.camera") for name in names]
    errors = compare_poses(
        np.stack([frame.camera.cam_from_world for frame in capture.frames]),
        np.stack([camera.cam_from_world for camera in reference]),
    )
    assert np.median(errors.center_errors) <= 0.01 * errors.reference_extent
    assert np.median(errors.rotation_errors_deg) <= 1.0

    scale = MAX_SIDE / reference[0].width
    for frame, truth in zip(capture.frames, reference):
        assert frame.camera.is_pinhole
        assert frame.camera.fx == pytest.approx(truth.fx * scale, rel=0.01)
    assert capture.points is not None and len(capture.points) > 1000


def test_great_wall_video_capture(shared_data: Path, tmp_path: Path) -> None:
    """At least 90% of the frames selected from the aerial video register; frames and report agree."""
    config = process.CaptureConfig.from_options(frames=40)
    out = process.run(config, shared_data / "videos" / "great_wall_aerial.mp4", tmp_path / "capture")

    report = json.loads((out / "report.json").read_text())
    assert report["input_kind"] == "video" and report["frames"]["kept"] == report["total"]
    assert 30 <= report["total"] <= 40
    assert report["registered"] >= 0.9 * report["total"]
    assert report["sfm"]["matcher"] == "sequential"

    capture = read_capture(out)
    assert len(capture.frames) == report["registered"]
    assert len({frame.camera.fx for frame in capture.frames}) == 1  # one shared camera for a video
    times = [kept["time_s"] for kept in report["frames"]["kept_frames"]]
    assert times == sorted(times) and times[-1] - times[0] > 10.0  # spread over the 12-second clip
