"""Video probing and decoding: counts, real timestamps, rotation metadata, damaged and wrong inputs."""

from __future__ import annotations

import shutil
from pathlib import Path

import av
import numpy as np
import pytest

from multiview import video
from multiview.errors import InputError
from multiview.video import iter_frames, probe_video, write_video

WIDTH, HEIGHT = 64, 48


def marked_frames(num: int, width: int = WIDTH, height: int = HEIGHT) -> list[np.ndarray]:
    """[H, W, 3] frames: dark grey with a white block in the top-left corner and a per-frame brightness stripe."""
    frames = []
    for i in range(num):
        image = np.full((height, width, 3), 40, dtype=np.uint8)
        image[: height // 4, : width // 4] = 255
        image[-4:, :] = (i * 20) % 200
        frames.append(image)
    return frames


def bright_block_corner(image: np.ndarray) -> str:
    """Which quadrant of [H, W, 3] ``image`` holds the white block: 'top-left', 'top-right', ..."""
    gray = image.mean(axis=2)
    rows, cols = np.nonzero(gray > 200)
    height, width = gray.shape
    vertical = "top" if rows.mean() < height / 2 else "bottom"
    horizontal = "left" if cols.mean() < width / 2 else "right"
    return f"{vertical}-{horizontal}"


def noisy_frames(num: int, width: int = 160, height: int = 120) -> list[np.ndarray]:
    """Random frames: every frame costs about the same number of bytes, so half the file is about half the frames."""
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(num)]


@pytest.fixture
def warnings(monkeypatch) -> list[str]:
    """Messages passed to ``multiview.video.warn`` during the test."""
    messages: list[str] = []
    monkeypatch.setattr(video, "warn", messages.append)
    return messages


def test_probe_plain_video(tmp_path: Path) -> None:
    path = write_video(tmp_path / "plain.mp4", marked_frames(12), fps=12)
    info = probe_video(path)
    assert (info.width, info.height) == (WIDTH, HEIGHT)
    assert info.num_frames == 12
    assert info.fps == pytest.approx(12, rel=0.01)
    assert info.duration_s == pytest.approx(1.0, abs=0.1)
    assert info.rotation_deg == 0 and not info.mirrored
    assert info.codec == "h264"


@pytest.mark.parametrize("codec", ["libx264", "mpeg4"])
def test_iter_frames_counts_indices_and_times(tmp_path: Path, codec: str) -> None:
    path = write_video(tmp_path / f"{codec}.mp4", marked_frames(10), fps=10, codec=codec)
    frames = list(iter_frames(path))
    assert [f.index for f in frames] == list(range(10))
    assert [f.time_s for f in frames] == pytest.approx([i / 10 for i in range(10)])
    assert all(f.image.shape == (HEIGHT, WIDTH, 3) and f.image.dtype == np.uint8 for f in frames)
    assert bright_block_corner(frames[0].image) == "top-left"
    every_third = list(iter_frames(path, every=3))
    assert [f.index for f in every_third] == [0, 3, 6, 9]


def test_iter_frames_indices_and_downscale(tmp_path: Path) -> None:
    path = write_video(tmp_path / "plain.mp4", marked_frames(10), fps=10)
    frames = list(iter_frames(path, indices={2, 5}, max_side=32))
    assert [f.index for f in frames] == [2, 5]
    assert frames[0].image.shape == (24, 32, 3)
    assert list(iter_frames(path, indices=[])) == []


def test_variable_frame_rate_times_are_the_written_pts(tmp_path: Path) -> None:
    times = [0.0, 0.04, 0.05, 0.13, 0.3, 0.31, 0.32, 0.7, 0.733, 1.0]
    path = write_video(tmp_path / "vfr.mp4", marked_frames(len(times)), times_s=times)
    decoded = list(iter_frames(path))
    assert [f.time_s for f in decoded] == pytest.approx(times, abs=1e-6)
    # frames keep their content order too: the stripe brightness encodes the written position
    stripes = [int(f.image[-2, WIDTH // 2, 0]) for f in decoded]
    assert stripes == pytest.approx([(i * 20) % 200 for i in range(len(times))], abs=6)
    assert probe_video(path).num_frames == len(times)


# A phone holding the camera upright stores the picture rotated a quarter turn in landscape and asks the player to
# turn it back; FFmpeg reports the counter-clockwise angle, -90 for the usual case.
@pytest.mark.parametrize("rotation", [-90, 90, 180])
def test_rotation_metadata_gives_upright_frames(tmp_path: Path, rotation: int) -> None:
    upright = marked_frames(6, width=48, height=64)  # portrait, block top-left
    stored = [np.ascontiguousarray(np.rot90(image, k=-rotation // 90)) for image in upright]
    path = write_video(tmp_path / "phone.mp4", stored, fps=10, display_rotation_deg=rotation)

    info = probe_video(path)
    assert info.rotation_deg == rotation
    assert (info.width, info.height) == (48, 64)
    frames = list(iter_frames(path))
    assert len(frames) == 6
    assert frames[0].image.shape == (64, 48, 3)
    assert bright_block_corner(frames[0].image) == "top-left"
    assert np.abs(frames[0].image.astype(int) - upright[0]).mean() < 3


def test_mirrored_display_matrix(tmp_path: Path) -> None:
    """A horizontal mirror in the matrix is undone as a mirror, not (as ``VideoFrame.rotation`` says) a 180 turn."""
    upright = marked_frames(4)
    path = tmp_path / "mirror.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        stream.set_display_rotation(0, hflip=True)
        for i, image in enumerate(upright):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image[:, ::-1]), format="rgb24")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    info = probe_video(path)
    assert info.mirrored and info.rotation_deg == 0
    assert bright_block_corner(next(iter_frames(path)).image) == "top-left"


def test_truncated_video_decodes_what_it_can_and_warns_once(tmp_path: Path, warnings: list[str]) -> None:
    path = write_video(tmp_path / "full.mp4", noisy_frames(60), fps=30)  # index first
    data = path.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])

    frames = list(iter_frames(cut))
    assert 5 < len(frames) < 60
    assert [f.index for f in frames] == list(range(len(frames)))
    assert len(warnings) == 1 and "cut.mp4" in warnings[0] and str(len(frames)) in warnings[0]


def test_decode_error_midway_stops_with_one_warning(tmp_path: Path, warnings: list[str], monkeypatch) -> None:
    """Whether FFmpeg raises on the damaged packet or just ends depends on the file; this is the raising case."""
    path = write_video(tmp_path / "plain.mp4", marked_frames(10), fps=10)
    real_decode = av.container.InputContainer.decode

    def decode_then_fail(container, *streams):
        for count, frame in enumerate(real_decode(container, *streams)):
            if count == 4:
                raise av.error.InvalidDataError(1094995529, "Invalid data found when processing input")
            yield frame

    monkeypatch.setattr(av.container.InputContainer, "decode", decode_then_fail)
    frames = list(iter_frames(path))
    assert len(frames) == 4
    assert len(warnings) == 1 and "after 4 frames" in warnings[0]


def test_truncated_mkv_warns(tmp_path: Path, warnings: list[str]) -> None:
    path = write_video(tmp_path / "full.mkv", noisy_frames(60), fps=30)
    data = path.read_bytes()
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(data[: len(data) // 2])
    frames = list(iter_frames(cut))
    assert 5 < len(frames) < 60
    assert len(warnings) == 1


def test_truncated_without_index_is_an_input_error(tmp_path: Path) -> None:
    """MP4 with its index at the end, cut in half: nothing can be decoded."""
    path = write_video(tmp_path / "full.mp4", noisy_frames(30), fps=30, faststart=False)
    data = path.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="cut.mp4"):
        probe_video(cut)
    with pytest.raises(InputError, match="cut.mp4"):
        list(iter_frames(cut))


def test_complete_video_does_not_warn(tmp_path: Path, warnings: list[str]) -> None:
    path = write_video(tmp_path / "plain.mkv", marked_frames(20), fps=20)
    assert len(list(iter_frames(path))) == 20
    assert len(list(iter_frames(path, indices={3}))) == 1
    assert warnings == []


def _assert_one_line_input_error(path: Path) -> str:
    with pytest.raises(InputError) as caught:
        probe_video(path)
    message = str(caught.value)
    assert "\n" not in message and path.name in message
    with pytest.raises(InputError):
        list(iter_frames(path))
    return message


def test_text_file_named_mp4(tmp_path: Path) -> None:
    path = tmp_path / "notes.mp4"
    path.write_text("this is not a video\n" * 20)
    assert "not a readable video" in _assert_one_line_input_error(path)


def test_jpeg_named_mp4(tmp_path: Path) -> None:
    from PIL import Image

    path = tmp_path / "photo.mp4"
    Image.fromarray(marked_frames(1)[0]).save(path, "JPEG")
    assert "still image" in _assert_one_line_input_error(path)


def test_missing_video(tmp_path: Path) -> None:
    assert "does not exist" in _assert_one_line_input_error(tmp_path / "missing.mp4")


def test_folder_instead_of_video(tmp_path: Path) -> None:
    folder = tmp_path / "clip.mp4"
    folder.mkdir()
    assert "folder" in _assert_one_line_input_error(folder)


def test_audio_only_file(tmp_path: Path) -> None:
    path = tmp_path / "voice.m4a"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=44100)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate, frame.pts = 44100, 0
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    assert "no video stream" in _assert_one_line_input_error(path)


def test_real_video_probe_and_times(shared_data: Path, tmp_path: Path) -> None:
    source = shared_data / "videos" / "great_wall_aerial.mp4"
    info = probe_video(source)
    assert (info.width, info.height, info.num_frames) == (640, 360, 288)
    assert info.fps == pytest.approx(24)
    frames = list(iter_frames(source, every=48, max_side=320))
    assert [f.index for f in frames] == list(range(0, 288, 48))
    assert [f.time_s for f in frames] == pytest.approx([i / 24 for i in range(0, 288, 48)])
    assert frames[0].image.shape == (180, 320, 3)
    # a path with spaces and unicode
    odd = tmp_path / "mur de Chine é.mp4"
    shutil.copy(source, odd)
    assert probe_video(odd).num_frames == 288
