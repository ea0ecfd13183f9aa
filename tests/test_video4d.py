"""multiview.video4d and multiview.motion: videos into 4D captures (times, camera ids, what moves masked for SfM), and
the synchronized sets that are refused; orbit4d video-to-4d from a real video."""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest
from scipy.ndimage import gaussian_filter, shift

from multiview.capture import read_capture
from multiview.errors import InputError
from multiview.motion import motion_masks
from multiview.video4d import check_synchronized, frame_indices

pytestmark = pytest.mark.usefixtures("one_thread")


def write_clip(path: Path, frames: int, fps: int = 15, size: tuple[int, int] = (64, 48), seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        for _ in range(frames):
            image = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())
    return path


def cli(capsys, *argv) -> tuple[int, str]:
    from orbit4d.cli import main

    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def error_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if "error" in line]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# --- synchronized sets ---------------------------------------------------------------------------------------------


def test_videos_of_different_lengths_or_rates_are_refused_naming_them(tmp_path, capsys):
    lengths = tmp_path / "lengths"
    lengths.mkdir()
    write_clip(lengths / "cam_a.mp4", 12)
    write_clip(lengths / "cam_b.mp4", 20)
    code, err = cli(capsys, "video-to-4d", lengths, "--out", tmp_path / "out")
    line = error_line(err)
    assert code == 1 and "cam_b.mp4 has 20 frames but cam_a.mp4 12" in line and "same span" in line
    rates = tmp_path / "rates"
    rates.mkdir()
    write_clip(rates / "left.mp4", 12, fps=15)
    write_clip(rates / "right.mp4", 12, fps=25)
    code, err = cli(capsys, "video-to-4d", rates, "--out", tmp_path / "out")
    assert code == 1 and "right.mp4 runs at 25 fps but left.mp4 at 15 fps" in error_line(err)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))


def test_a_set_one_frame_apart_is_synchronized_and_frames_are_spread_evenly(tmp_path):
    clips = check_synchronized([write_clip(tmp_path / "a.mp4", 12), write_clip(tmp_path / "b.mp4", 13)])
    assert [c.num_frames for c in clips] == [12, 13]
    assert frame_indices(12, 4) == [0, 4, 7, 11] and frame_indices(3, 24) == [0, 1, 2]


def test_folders_without_videos_and_single_time_steps_are_one_line(tmp_path, capsys):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.png").write_bytes(b"not really")
    code, err = cli(capsys, "video-to-4d", tmp_path / "photos", "--out", tmp_path / "out")
    assert code == 1 and "holds no video files" in error_line(err)
    write_clip(tmp_path / "one.mp4", 1)
    code, err = cli(capsys, "video-to-4d", tmp_path / "one.mp4", "--out", tmp_path / "out")
    assert code == 1 and "one.mp4 holds 1 frame(s)" in error_line(err)
    code, err = cli(capsys, "video-to-4d", tmp_path / "one.mp4", "--out", tmp_path / "out", "--time-steps", "1")
    assert code == 1 and "--time-steps 1" in error_line(err)
    with pytest.raises(InputError, match="missing.mp4 does not exist"):
        from multiview.video4d import Video4DConfig, run

        run(Video4DConfig(), tmp_path / "missing.mp4", tmp_path / "out")


# --- what moves ----------------------------------------------------------------------------------------------------


def _scene(step: int, camera_shift: float, size: int = 160) -> tuple[np.ndarray, np.ndarray]:
    """A textured wall seen by a camera panning ``camera_shift`` px per step, and a square that rises 6 px per
    step (its own motion); (image [H, W, 3] uint8, where the square is [H, W] bool)."""
    rng = np.random.default_rng(0)
    wall = gaussian_filter(rng.normal(size=(size, size + 100)), 2.0)
    wall = shift(wall, (0, -camera_shift * step), order=1, mode="nearest")[:, :size]
    image = 120 + 60 * wall / wall.std()
    square = np.zeros((size, size), dtype=bool)
    top = 90 - 6 * step
    square[top : top + 30, 60:90] = True
    patch = gaussian_filter(np.random.default_rng(1).normal(size=(size, size)), 2.0)
    image = np.where(square, 150 + 50 * np.roll(patch / patch.std(), -6 * step, axis=0), image)
    return np.repeat(np.clip(image, 0, 255).astype(np.uint8)[..., None], 3, axis=-1), square


@pytest.mark.parametrize("camera_shift", [0.0, 3.0], ids=["still camera", "panning camera"])
def test_motion_masks_cover_what_moves_and_leave_the_background(camera_shift):
    frames = [_scene(step, camera_shift) for step in range(4)]
    masks = motion_masks([image for image, _ in frames])
    for mask, (_, square) in zip(masks[1:-1], frames[1:-1]):
        assert mask[square].mean() > 0.8  # the square is masked
        assert mask[~square].mean() < 0.3  # most of the wall is kept for SfM


# --- from a real video -----------------------------------------------------------------------------------------------


def test_a_video_becomes_a_4d_capture_and_scene(shared_data, tmp_path, capsys):
    """The bedroom video (children jumping, the camera panning): 8 time steps at 320 px, posed on the background,
    each frame with its time; then a short 4D training on it."""
    video = shared_data / "videos" / "bedroom_dynamic.mp4"
    out = tmp_path / "bedroom"
    code, err = cli(capsys, "video-to-4d", video, "--out", out, "--time-steps", "8", "--max-size", "320",
                    "--steps", "20", "--device", "cpu", "--sh-degree", "0")  # fmt: skip
    assert code == 0, err
    capture = read_capture(out / "capture")
    times = sorted(frame.camera.time for frame in capture.frames)
    assert len(times) >= 7 and times[0] == 0.0 and times[-1] == pytest.approx(199 / 30, abs=1e-3)
    assert {frame.camera.camera_id for frame in capture.frames} == {0}
    report = json.loads((out / "capture" / "report.json").read_text())
    assert 0.05 < report["moving_fraction"] < 0.7 and len(list((out / "capture" / "motion_masks").glob("*.png"))) == 8
    scene = json.loads((out / "scene" / "metrics.json").read_text())
    assert scene["evaluated_on"] == "test (held-out time steps)" and scene["per_time"][0]["time_index"] == 1
    assert (out / "scene" / "splats4d.ply").is_file()
    code, err = cli(capsys, "video-to-4d", video, "--out", out, "--resume", "--steps", "25", "--device", "cpu")
    assert code == 0 and "reusing the 4D capture" in err, err


@pytest.mark.slow  # structure from motion on 12 frames, exhaustive: about a minute
def test_synchronized_videos_become_one_capture_with_a_camera_each(shared_data, tmp_path, capsys):
    """A static rig of 4 synchronized cameras (the Herz-Jesus facade from 4 of its photos) filming a patch that slides
    across each picture: every frame posed, with its video's camera id and the shared times; each camera stays where
    it is over time; what moves is masked for SfM."""
    from PIL import Image

    from multiview.video import write_video

    folder = tmp_path / "rig"
    folder.mkdir()
    patch = np.random.default_rng(0).integers(0, 255, (60, 60, 3), dtype=np.uint8)
    photos = sorted((shared_data / "captures" / "herz_jesus_p8" / "images").glob("*.jpg"))[:4]
    for k, photo in enumerate(photos):
        image = Image.open(photo).convert("RGB")
        image.thumbnail((480, 480))
        still = np.asarray(image)[:320, :480]

        def frames(still=still):
            for t in range(12):
                frame = still.copy()
                frame[200:260, 40 + 25 * t : 100 + 25 * t] = patch
                yield frame

        write_video(folder / f"cam{k}.mp4", frames(), fps=15)
    out = tmp_path / "out"
    code, err = cli(capsys, "video-to-4d", folder, "--out", out, "--time-steps", "3", "--steps", "10",
                    "--device", "cpu", "--sh-degree", "0")  # fmt: skip
    assert code == 0, err
    capture = read_capture(out / "capture")
    assert len(capture.frames) == 12 and {f.camera.camera_id for f in capture.frames} == {0, 1, 2, 3}
    times = {k: sorted(f.camera.time for f in capture.frames if f.camera.camera_id == k) for k in range(4)}
    # frames 0, 6 and 11; write_video stamps frames in milliseconds (frame 11 is at 0.733 s)
    assert all(times[k] == times[0] for k in range(4)) and times[0] == pytest.approx([0, 6 / 15, 11 / 15], abs=1e-3)
    centres = {k: np.stack([f.camera.center for f in capture.frames if f.camera.camera_id == k]) for k in range(4)}
    baseline = np.linalg.norm(centres[0].mean(0) - centres[3].mean(0))
    assert max(np.ptp(c, axis=0).max() for c in centres.values()) < 0.01 * baseline  # a static rig stays put
    mask = np.asarray(Image.open(out / "capture" / "motion_masks" / "c00_t0001.png.png"))
    assert (mask[205:255, 190:250] == 0).mean() > 0.9 and (mask[:150] == 255).mean() > 0.9
    report = json.loads((out / "scene" / "metrics.json").read_text())
    assert report["test_camera"] == 3 and report["evaluated_on"] == "test (camera 3, every time step)"
