"""Frame selection from videos (blur, duplicates, spacing, count) and photo folders (corrupt, EXIF, empty)."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile, ImageFilter

from multiview import frames as frames_module
from multiview.errors import InputError, OutputExistsError
from multiview.frames import (
    FrameScores,
    FrameSelectConfig,
    blur_mask,
    choose_frames,
    load_image_folder,
    select_frames,
)
from multiview.video import write_video

WIDTH, HEIGHT = 160, 120
FPS = 10


def panning_frames(num: int, static_first: int = 0, step_px: int = 4, seed: int = 0) -> list[np.ndarray]:
    """[H, W, 3] crops of a random texture sliding ``step_px`` per frame (a panning camera); the first
    ``static_first`` frames do not move (a camera held still)."""
    rng = np.random.default_rng(seed)
    texture = rng.integers(0, 256, (HEIGHT // 2, (WIDTH + step_px * num) // 2, 3), dtype=np.uint8)
    texture = texture.repeat(2, axis=0).repeat(2, axis=1)  # 2x2 blocks survive chroma subsampling and compression
    offsets = [step_px * max(0, i - max(static_first - 1, 0)) for i in range(num)]
    return [np.ascontiguousarray(texture[:, x : x + WIDTH]) for x in offsets]


def box_blur(image: np.ndarray, radius: int = 2) -> np.ndarray:
    """[H, W, 3] uint8 -> the same, box-filtered (a camera shake / defocus stand-in)."""
    return np.asarray(Image.fromarray(image).filter(ImageFilter.BoxBlur(radius)))


def make_video(path: Path, images: list[np.ndarray]) -> Path:
    return write_video(path, images, fps=FPS, crf=4)


@pytest.fixture
def no_warnings(monkeypatch) -> list[str]:
    messages: list[str] = []
    monkeypatch.setattr(frames_module, "warn", messages.append)
    return messages


# ---------------------------------------------------------------------------------------------- videos


def test_blurred_frames_are_dropped_and_reported(tmp_path: Path) -> None:
    images = panning_frames(60)
    blurred = {10, 25, 26, 40}
    images = [box_blur(image) if i in blurred else image for i, image in enumerate(images)]
    video = make_video(tmp_path / "shaky.mp4", images)

    selection = select_frames(FrameSelectConfig(num_frames=60), video, tmp_path / "out")
    kept_indices = [frame.source_index for frame in selection.kept]
    assert set(kept_indices) == set(range(60)) - blurred
    assert {(frame.source_index, frame.reason) for frame in selection.dropped} == {(i, "blur") for i in blurred}
    assert selection.summary()["dropped_by_reason"] == {"blur": 4}

    fewer = select_frames(FrameSelectConfig(num_frames=15), video, tmp_path / "fewer")
    assert not blurred & {frame.source_index for frame in fewer.kept}
    assert len(fewer.kept) == 15


def test_uniformly_soft_video_keeps_its_frames(tmp_path: Path) -> None:
    video = make_video(tmp_path / "soft.mp4", [box_blur(image) for image in panning_frames(30)])
    selection = select_frames(FrameSelectConfig(num_frames=30), video, tmp_path / "out")
    assert len(selection.kept) == 30 and selection.dropped == ()


def test_still_camera_frames_are_dropped_as_duplicates(tmp_path: Path) -> None:
    video = make_video(tmp_path / "still_start.mp4", panning_frames(60, static_first=15))

    selection = select_frames(FrameSelectConfig(num_frames=60), video, tmp_path / "out")
    assert {frame.source_index for frame in selection.dropped if frame.reason == "duplicate"} == set(range(1, 15))
    assert [frame.source_index for frame in selection.kept] == [0, *range(15, 60)]


def test_budget_moves_to_the_moving_part(tmp_path: Path) -> None:
    """With a still first quarter, the target is still (almost) met, with one frame from the still part."""
    video = make_video(tmp_path / "still_start.mp4", panning_frames(80, static_first=20))
    selection = select_frames(FrameSelectConfig(num_frames=20), video, tmp_path / "out")
    kept = [frame.source_index for frame in selection.kept]
    assert 18 <= len(kept) <= 20
    assert sum(index < 20 for index in kept) == 1


def test_target_count_order_spacing_and_files(tmp_path: Path) -> None:
    video = make_video(tmp_path / "pan.mp4", panning_frames(100))
    config = FrameSelectConfig(num_frames=25, max_image_size=80)
    selection = select_frames(config, video, tmp_path / "out")

    kept = selection.kept
    assert len(kept) == 25
    indices = [frame.source_index for frame in kept]
    assert indices == sorted(set(indices))
    gaps = np.diff([frame.time_s for frame in kept])
    assert gaps.max() <= 2.5 * (9.9 / 25)  # spread over the clip: no hole much larger than a bin
    assert kept[0].time_s < 0.5 and kept[-1].time_s > 9.4
    names = sorted(path.name for path in (tmp_path / "out").iterdir())
    assert names == [f"frame_{i:05d}.jpg" for i in range(1, 26)] == [frame.file_name for frame in kept]
    with Image.open(tmp_path / "out" / names[0]) as image:
        assert image.format == "JPEG" and image.size == (80, 60) and image.mode == "RGB"
    assert (kept[0].width, kept[0].height) == (80, 60)
    json.dumps(selection.summary())


def test_too_few_usable_frames(tmp_path: Path) -> None:
    video = make_video(tmp_path / "tripod.mp4", panning_frames(20, static_first=20))
    with pytest.raises(InputError, match=r"tripod\.mp4.*--frames") as caught:
        select_frames(FrameSelectConfig(num_frames=10), video, tmp_path / "out")
    assert "\n" not in str(caught.value)


def test_non_empty_output_folder_is_refused(tmp_path: Path) -> None:
    video = make_video(tmp_path / "pan.mp4", panning_frames(10))
    out = tmp_path / "out"
    out.mkdir()
    (out / "frame_00099.jpg").write_bytes(b"old")
    with pytest.raises(OutputExistsError):
        select_frames(FrameSelectConfig(num_frames=5), video, out)


def test_choice_on_scores_alone() -> None:
    """The choice works on scores, not pixels: one sharp frame per bin, never more than asked."""
    times = np.arange(40) / 10.0
    sharpness = np.ones(40)
    sharpness[[3, 13, 23, 33]] = 2.0  # the sharpest of each 1-second bin
    thumbnails = np.random.default_rng(0).integers(0, 256, (40, 6, 8), dtype=np.uint8)  # all distinct
    scores = FrameScores(np.arange(40), times, sharpness, thumbnails)
    choice = choose_frames(FrameSelectConfig(num_frames=4), scores)
    assert choice.kept == (3, 13, 23, 33) and choice.blurred == () and choice.duplicates == ()


def test_exposure_drift_is_still_a_duplicate() -> None:
    thumbnail = np.random.default_rng(0).integers(0, 200, (36, 64), dtype=np.uint8)
    brighter = thumbnail + np.uint8(12)
    assert frames_module.thumbnail_difference(thumbnail, brighter) < 1e-6
    assert frames_module.thumbnail_difference(thumbnail, np.roll(thumbnail, 1, axis=1)) > 0.1


def test_blur_mask_is_local() -> None:
    times = np.arange(100) / 10.0
    sharpness = np.where(times < 5, 1.0, 0.1)  # focus lost half-way: a slow change, not a blurred frame
    sharpness[20] = 0.2
    mask = blur_mask(times, sharpness, threshold=0.5, window_s=1.0)
    assert np.flatnonzero(mask).tolist() == [20]


def test_real_video_forty_frames(shared_data: Path, tmp_path: Path) -> None:
    video = shared_data / "videos" / "great_wall_aerial.mp4"
    start = time.perf_counter()
    selection = select_frames(FrameSelectConfig(num_frames=40), video, tmp_path / "out")
    seconds = time.perf_counter() - start
    assert seconds < 15, f"selecting 40 frames of a 288-frame 640x360 clip took {seconds:.1f} s"
    assert 35 <= len(selection.kept) <= 40
    indices = [frame.source_index for frame in selection.kept]
    assert indices == sorted(indices) and indices[0] < 12 and indices[-1] > 275
    assert len(list((tmp_path / "out").glob("frame_*.jpg"))) == len(selection.kept)
    with Image.open(tmp_path / "out" / "frame_00001.jpg") as image:
        assert image.size == (640, 360)
    summary = json.loads(json.dumps(selection.summary()))
    assert summary["kept"] == len(selection.kept) and summary["source_frame_count"] == 288


# ---------------------------------------------------------------------------------------------- photos


@pytest.fixture
def sacre_coeur(shared_data: Path) -> list[Path]:
    return sorted((shared_data / "captures" / "sacre_coeur" / "mapping").glob("*.jpg"))


def test_image_folder_skips_corrupt_and_keeps_the_rest(sacre_coeur: list[Path], tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    for path in sacre_coeur[:4]:
        shutil.copy(path, folder / path.name)
    data = sacre_coeur[4].read_bytes()
    (folder / "broken.JPG").write_bytes(data[: len(data) // 2])  # truncated: must not be padded with grey
    (folder / "notes.txt").write_text("not an image")
    (folder / "._IMG_0001.jpg").write_bytes(b"macOS resource fork")
    Image.new("RGBA", (300, 200), (255, 0, 0, 0)).save(folder / "cutout.png")

    selection = load_image_folder(FrameSelectConfig(max_image_size=500), folder, tmp_path / "out")

    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    assert [frame.source_name for frame in selection.kept] == [p.name for p in sacre_coeur[:4]] + ["cutout.png"]
    assert len(selection.dropped) == 1
    assert selection.dropped[0].source_name == "broken.JPG"
    assert selection.dropped[0].reason.startswith("corrupt: ")
    assert selection.summary()["dropped_by_reason"] == {"corrupt": 1}
    written = sorted(path.name for path in (tmp_path / "out").iterdir())
    assert written == sorted([p.stem + ".jpg" for p in sacre_coeur[:4]] + ["cutout.jpg"])
    for frame in selection.kept:
        with Image.open(tmp_path / "out" / frame.file_name) as image:
            assert image.format == "JPEG" and image.mode == "RGB" and max(image.size) <= 500
            assert image.size == (frame.width, frame.height)
    with Image.open(tmp_path / "out" / "cutout.jpg") as image:
        assert image.getpixel((10, 10)) == pytest.approx((255, 255, 255), abs=2)  # transparent -> white
    json.dumps(selection.summary())


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    stored = np.full((60, 80, 3), 30, dtype=np.uint8)
    stored[:15, :20] = 255  # top-left as stored; orientation 6 means "rotate 90 degrees clockwise to view"
    exif = Image.Exif()
    exif[0x0112] = 6
    exif.get_ifd(0x8769)[0xA405] = 28  # focal length in 35 mm film: must survive for SfM
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        Image.fromarray(stored).save(folder / name, exif=exif.tobytes(), quality=98)
    load_image_folder(FrameSelectConfig(), folder, tmp_path / "out")
    with Image.open(tmp_path / "out" / "a.jpg") as image:
        assert image.size == (60, 80)
        upright = np.asarray(image.convert("L"))
        assert upright[:20, -15:].mean() > 200 and upright[-20:, :15].mean() < 60  # now top-right
        written_exif = image.getexif()
        assert 0x0112 not in written_exif or written_exif[0x0112] == 1
        assert written_exif.get_ifd(0x8769).get(0xA405) == 28


def test_image_folder_natural_order_and_name_clashes(tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("img10.jpg", "img2.jpg", "img1.jpg", "img1.PNG"):
        Image.fromarray(panning_frames(1)[0]).save(folder / name)
    selection = load_image_folder(FrameSelectConfig(), folder, tmp_path / "out")
    assert [f.source_name for f in selection.kept] == ["img1.jpg", "img1.PNG", "img2.jpg", "img10.jpg"]
    assert [f.file_name for f in selection.kept] == ["img1.jpg", "img1_png.jpg", "img2.jpg", "img10.jpg"]


def test_empty_folder(tmp_path: Path) -> None:
    folder = tmp_path / "empty"
    folder.mkdir()
    (folder / "readme.txt").write_text("no photos here")
    with pytest.raises(InputError, match=r"no images \(\.jpg, \.jpeg, \.png.*empty") as caught:
        load_image_folder(FrameSelectConfig(), folder, tmp_path / "out")
    assert "\n" not in str(caught.value)


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        load_image_folder(FrameSelectConfig(), tmp_path / "nowhere", tmp_path / "out")


def test_fewer_than_three_readable_images(tmp_path: Path, no_warnings: list[str]) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("a.jpg", "b.jpg"):
        Image.fromarray(panning_frames(1)[0]).save(folder / name)
    (folder / "c.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(InputError, match=r"photos: only 2 readable image\(s\) of 3"):
        load_image_folder(FrameSelectConfig(), folder, tmp_path / "out")
    assert len(no_warnings) == 1 and "c.jpg" in no_warnings[0]
