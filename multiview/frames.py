"""From a video or a photo folder to a folder of frames ready for structure from motion.

Videos: one streaming pass scores every analysed frame (sharpness and a small thumbnail, never the full
frame), the choice is made on those scores, and a second decoding pass writes only the chosen frames. Memory
stays at a few KB per analysed frame whatever the length or resolution of the clip; the price is decoding
twice, which is cheap next to SfM (the second pass stops at the last chosen frame).

Choice: about ``num_frames`` frames spread evenly in time, the sharpest of each time bin, skipping frames much
blurrier than their temporal neighbours and frames nearly identical to the previous kept frame.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from multiview.console import track, warn
from multiview.errors import InputError, OutputExistsError
from multiview.video import iter_frames, probe_video

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp")
JPEG_QUALITY = 95
MIN_FRAMES = 3  # SfM needs at least this many views
ANALYSIS_SIDE = 480  # sharpness is measured at this longest side, so scores compare across frames and clips
THUMBNAIL_SIDE = 64  # longest side of the grayscale thumbnails compared for near-duplicates
MAX_REBIN_ROUNDS = 6  # rounds of adding bins to make up for duplicates (static segments) before settling
_EXIF_IFD = 0x8769
_FOCAL_PLANE_RESOLUTION_TAGS = (0xA20E, 0xA20F, 0xA210)  # pixels per unit: wrong once the image is resized
_CORRUPT_IMAGE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)


@dataclass(frozen=True)
class FrameSelectConfig:
    """How frames are picked from a video and how photos and frames are written."""

    num_frames: int = 100
    """Target number of frames from a video (an upper bound: fewer when the clip is short, static or blurred).
    SfM time on 2 CPU cores grows at least linearly with it (exhaustive matching quadratically)."""

    max_image_size: int = 1600
    """Longest side in pixels of the written frames and photos; larger inputs are downscaled, never upscaled."""

    blur_threshold: float = 0.5
    """A video frame is dropped as blurred when its sharpness (variance of the Laplacian) is below this fraction of
    the median sharpness within ``blur_window_s`` around it. Relative, so a uniformly soft video is kept. 0 disables."""

    blur_window_s: float = 1.0
    """Width in seconds of the temporal window, centred on each frame, that the blur test compares against."""

    duplicate_threshold: float = 0.004
    """A video frame is dropped as a near-duplicate when the mean absolute difference of its grayscale thumbnail
    (intensities in [0, 1], mean removed) to the previous kept frame's is below this, e.g. while the camera is
    still. Measured: consecutive frames of a slow aerial clip (great_wall_aerial.mp4) differ by about 0.003, frames
    three apart by 0.007, a handheld indoor clip's consecutive frames by 0.015; codec noise on a still camera stays
    below that. 0 disables."""

    candidates_per_frame: int = 10
    """Long videos are analysed every k-th frame so that at most ``num_frames`` times this many frames are scored."""

    def __post_init__(self) -> None:
        if self.num_frames < 1 or self.max_image_size < 1 or self.candidates_per_frame < 1:
            raise ValueError(f"num_frames, max_image_size and candidates_per_frame must be >= 1: {self}")
        if self.blur_threshold < 0 or self.blur_window_s < 0 or self.duplicate_threshold < 0:
            raise ValueError(f"blur_threshold, blur_window_s and duplicate_threshold must be >= 0: {self}")


@dataclass(frozen=True)
class KeptFrame:
    """A frame or photo written to the output folder."""

    file_name: str  # name inside the output folder, e.g. "frame_00001.jpg" or "IMG_0042.jpg"
    source_index: int  # frame index in the video, or position of the photo in the sorted folder listing
    width: int  # written size in pixels
    height: int
    time_s: float | None = None  # presentation time in the video; None for photos
    sharpness: float | None = None  # variance of the Laplacian at ANALYSIS_SIDE px; None for photos
    source_name: str | None = None  # the photo's original file name; None for video frames


@dataclass(frozen=True)
class DroppedFrame:
    """A frame or photo left out, and why."""

    source_index: int
    reason: str  # "blur", "duplicate", or "corrupt: <short message>" for unreadable photos
    time_s: float | None = None
    source_name: str | None = None


@dataclass(frozen=True)
class FrameSelection:
    """What ``select_frames`` / ``load_image_folder`` wrote, in output order (temporal order for videos)."""

    source: Path  # the video file or the photo folder
    kind: str  # "video" or "image_folder"
    num_inputs: int  # video frames scored, or image files found
    kept: tuple[KeptFrame, ...]
    dropped: tuple[DroppedFrame, ...]
    analysed_every: int = 1  # videos: every k-th frame was scored
    source_frame_count: int | None = None  # videos: frames the container lists (or an estimate)

    @property
    def file_names(self) -> list[str]:
        return [frame.file_name for frame in self.kept]

    def dropped_counts(self) -> dict[str, int]:
        """Number dropped per reason ("blur", "duplicate", "corrupt")."""
        counts: dict[str, int] = {}
        for frame in self.dropped:
            reason = frame.reason.split(":")[0]
            counts[reason] = counts.get(reason, 0) + 1
        return counts

    def summary(self) -> dict:
        """JSON-ready description for report.json; ``kept`` and ``dropped`` are counts, details follow."""
        return {
            "source": str(self.source),
            "kind": self.kind,
            "inputs": self.num_inputs,
            "source_frame_count": self.source_frame_count,
            "analysed_every": self.analysed_every,
            "kept": len(self.kept),
            "dropped": len(self.dropped),
            "dropped_by_reason": self.dropped_counts(),
            "kept_frames": [_drop_none(vars(frame)) for frame in self.kept],
            "dropped_frames": [_drop_none(vars(frame)) for frame in self.dropped],
        }


@dataclass(frozen=True)
class FrameScores:
    """Per analysed frame of a video: what the choice needs, nothing bigger. F analysed frames."""

    indices: np.ndarray  # [F] int64 source frame index
    times_s: np.ndarray  # [F] float64 presentation time, increasing
    sharpness: np.ndarray  # [F] float64 variance of the Laplacian of the grayscale frame in [0, 1]
    thumbnails: np.ndarray = field(repr=False)  # [F, h, w] uint8 grayscale, longest side THUMBNAIL_SIDE


@dataclass(frozen=True)
class Choice:
    """Positions into a ``FrameScores`` (not source indices), each sorted in temporal order."""

    kept: tuple[int, ...]
    blurred: tuple[int, ...]
    duplicates: tuple[int, ...]


# ---------------------------------------------------------------------------------------------- videos


def select_frames(config: FrameSelectConfig, video_path: Path, out_dir: Path) -> FrameSelection:
    """Choose about ``config.num_frames`` sharp, distinct frames of ``video_path``; write them to ``out_dir``.

    Files are ``frame_00001.jpg``, ``frame_00002.jpg``, ... in temporal order (JPEG quality 95, longest side at most
    ``config.max_image_size``). ``out_dir`` must be absent or empty. ``InputError`` when fewer than 3 frames survive.
    """
    video_path = Path(video_path)
    info = probe_video(video_path)
    every = max(1, math.ceil(info.num_frames / (config.num_frames * config.candidates_per_frame)))
    scores = score_frames(video_path, every, info.num_frames)
    choice = choose_frames(config, scores)
    if len(choice.kept) < MIN_FRAMES:
        raise InputError(
            f"{video_path}: only {len(choice.kept)} usable frames (of {len(scores.indices)} analysed, "
            f"{len(choice.blurred)} blurred, {len(choice.duplicates)} near-duplicates): "
            f"use a longer or sharper clip, or a larger --frames"
        )
    out_dir = _prepare_out_dir(out_dir)
    kept = _write_chosen_frames(config, video_path, scores, choice, out_dir)
    dropped = [DroppedFrame(int(scores.indices[p]), "blur", float(scores.times_s[p])) for p in choice.blurred]
    dropped += [DroppedFrame(int(scores.indices[p]), "duplicate", float(scores.times_s[p])) for p in choice.duplicates]
    return FrameSelection(
        source=video_path,
        kind="video",
        num_inputs=len(scores.indices),
        kept=tuple(kept),
        dropped=tuple(sorted(dropped, key=lambda frame: frame.source_index)),
        analysed_every=every,
        source_frame_count=info.num_frames,
    )


def score_frames(video_path: Path, every: int = 1, expected_frames: int | None = None) -> FrameScores:
    """Decode ``video_path`` once (every ``every``-th frame, at ANALYSIS_SIDE px) and score each frame."""
    indices, times, sharpness, thumbnails = [], [], [], []
    thumbnail_size = None
    total = math.ceil(expected_frames / every) if expected_frames else None
    for frame in track(iter_frames(video_path, every, max_side=ANALYSIS_SIDE), "Scoring frames", total=total):
        gray = grayscale(frame.image)
        thumbnail_size = thumbnail_size or _fit_size(gray.shape[1], gray.shape[0], THUMBNAIL_SIDE)
        indices.append(frame.index)
        times.append(frame.time_s)
        sharpness.append(laplacian_variance(gray))
        thumbnails.append(_thumbnail(gray, thumbnail_size))
    return FrameScores(
        indices=np.asarray(indices, dtype=np.int64),
        times_s=np.asarray(times, dtype=np.float64),
        sharpness=np.asarray(sharpness, dtype=np.float64),
        thumbnails=np.stack(thumbnails),
    )


def grayscale(image: np.ndarray) -> np.ndarray:
    """[H, W, 3] uint8 RGB -> [H, W] float32 luma (Rec. 601 weights) in [0, 1]."""
    weights = np.array([0.299, 0.587, 0.114], dtype=np.float32) / 255.0
    return image.astype(np.float32) @ weights


def laplacian_variance(gray: np.ndarray) -> float:
    """Sharpness of a [H, W] grayscale image: variance of its 4-neighbour Laplacian (interior pixels)."""
    center = gray[1:-1, 1:-1]
    laplacian = gray[:-2, 1:-1] + gray[2:, 1:-1] + gray[1:-1, :-2] + gray[1:-1, 2:] - 4.0 * center
    return float(laplacian.var(dtype=np.float64))


def choose_frames(config: FrameSelectConfig, scores: FrameScores) -> Choice:
    """Drop blurred frames, then pick the sharpest distinct frame per time bin.

    Bins are ``num_frames`` equal slices of the clip's duration. When near-duplicates (a still camera) empty some
    bins, the bins are made finer and the pick repeated, so the frame budget goes to the moving part of the clip;
    the result never exceeds ``num_frames``.
    """
    blurred = blur_mask(scores.times_s, scores.sharpness, config.blur_threshold, config.blur_window_s)
    candidates = np.flatnonzero(~blurred)
    num_bins = config.num_frames
    kept, duplicates = _pick_per_bin(scores, candidates, num_bins, config.duplicate_threshold)
    for _ in range(MAX_REBIN_ROUNDS):
        if len(kept) >= config.num_frames or num_bins >= len(candidates):
            break
        num_bins = min(len(candidates), num_bins + config.num_frames - len(kept))
        finer = _pick_per_bin(scores, candidates, num_bins, config.duplicate_threshold)
        if len(finer[0]) > config.num_frames:
            break
        kept, duplicates = finer
    return Choice(kept=tuple(kept), blurred=tuple(np.flatnonzero(blurred).tolist()), duplicates=tuple(duplicates))


def blur_mask(times_s: np.ndarray, sharpness: np.ndarray, threshold: float, window_s: float) -> np.ndarray:
    """[F] bool: frames whose sharpness is below ``threshold`` x the median sharpness within ``window_s`` around them.

    ``times_s`` [F] increasing, ``sharpness`` [F]. The comparison is local, so a clip that is soft throughout,
    or a slow change of focus, keeps its frames; only frames much blurrier than their neighbours go.
    """
    if threshold <= 0 or len(sharpness) == 0:
        return np.zeros(len(sharpness), dtype=bool)
    starts = np.searchsorted(times_s, times_s - window_s / 2, side="left")
    stops = np.searchsorted(times_s, times_s + window_s / 2, side="right")
    local_median = np.array([np.median(sharpness[a:b]) for a, b in zip(starts, stops)])
    return sharpness < threshold * local_median


def thumbnail_difference(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference of two [h, w] uint8 thumbnails in [0, 1], after removing each one's mean.

    Removing the mean keeps a still camera a still camera while auto-exposure drifts.
    """
    a32, b32 = a.astype(np.float32), b.astype(np.float32)
    return float(np.abs((a32 - a32.mean()) - (b32 - b32.mean())).mean() / 255.0)


def _pick_per_bin(
    scores: FrameScores, candidates: np.ndarray, num_bins: int, duplicate_threshold: float
) -> tuple[list[int], list[int]]:
    """Per time bin, in order, the sharpest candidate that is not a near-duplicate of the last kept frame.

    Returns (kept positions, positions rejected as near-duplicates), both in temporal order.
    """
    kept: list[int] = []
    duplicates: list[int] = []
    last_thumbnail = None
    for members in _time_bins(scores.times_s, candidates, num_bins):
        for position in members[np.argsort(-scores.sharpness[members], kind="stable")]:
            thumbnail = scores.thumbnails[position]
            if last_thumbnail is not None and thumbnail_difference(thumbnail, last_thumbnail) < duplicate_threshold:
                duplicates.append(int(position))
                continue
            kept.append(int(position))
            last_thumbnail = thumbnail
            break
    return kept, sorted(duplicates)


def _time_bins(times_s: np.ndarray, candidates: np.ndarray, num_bins: int) -> list[np.ndarray]:
    """Split ``candidates`` (positions, temporal order) into ``num_bins`` equal time slices; one each if few."""
    if len(candidates) <= num_bins:
        return [candidates[i : i + 1] for i in range(len(candidates))]
    start, stop = times_s[0], times_s[-1]
    span = max(stop - start, 1e-9)
    bin_of = np.minimum(((times_s[candidates] - start) / span * num_bins).astype(np.int64), num_bins - 1)
    return [group for group in np.split(candidates, np.flatnonzero(np.diff(bin_of)) + 1) if len(group)]


def _write_chosen_frames(
    config: FrameSelectConfig, video_path: Path, scores: FrameScores, choice: Choice, out_dir: Path
) -> list[KeptFrame]:
    """Second decoding pass: write the chosen frames as frame_00001.jpg, ... in temporal order."""
    position_of = {int(scores.indices[p]): p for p in choice.kept}
    kept: list[KeptFrame] = []
    frames = iter_frames(video_path, max_side=config.max_image_size, indices=position_of.keys())
    for frame in track(frames, "Writing frames", total=len(position_of)):
        position = position_of[frame.index]
        file_name = f"frame_{len(kept) + 1:05d}.jpg"
        Image.fromarray(frame.image).save(out_dir / file_name, "JPEG", quality=JPEG_QUALITY)
        height, width = frame.image.shape[:2]
        kept.append(
            KeptFrame(
                file_name=file_name,
                source_index=frame.index,
                width=width,
                height=height,
                time_s=frame.time_s,
                sharpness=float(scores.sharpness[position]),
            )
        )
    if len(kept) < len(position_of):
        warn(f"{video_path}: {len(position_of) - len(kept)} chosen frames did not decode the second time; left out")
    return kept


def _thumbnail(gray: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """[H, W] float in [0, 1] -> [h, w] uint8 box-filtered thumbnail of ``size`` = (w, h)."""
    image = Image.fromarray(np.clip(gray * 255.0 + 0.5, 0, 255).astype(np.uint8))
    return np.asarray(image.resize(size, Image.Resampling.BOX))


# ---------------------------------------------------------------------------------------------- photos


def load_image_folder(config: FrameSelectConfig, folder: Path, out_dir: Path) -> FrameSelection:
    """Copy the photos of ``folder`` into ``out_dir`` upright, RGB, downscaled, as JPEG quality 95.

    Photos (.jpg .jpeg .png .tif .tiff .bmp .webp, any case) are taken in natural name order (img2 before img10)
    and keep their stem (``IMG_0042.png`` -> ``IMG_0042.jpg``). Each is fully decoded so that damaged files are
    caught, skipped and listed; EXIF orientation is applied, other EXIF (focal length for SfM) is kept.
    ``InputError`` for a missing folder, a folder without photos, or fewer than 3 readable ones.
    """
    folder = Path(folder)
    paths = list_images(folder)
    out_dir = _prepare_out_dir(out_dir)
    kept: list[KeptFrame] = []
    dropped: list[DroppedFrame] = []
    used_names: set[str] = set()
    for position, path in enumerate(track(paths, "Reading images", total=len(paths))):
        try:
            image, exif_bytes = read_upright_rgb(path, config.max_image_size)
        except _CORRUPT_IMAGE_ERRORS as error:
            dropped.append(DroppedFrame(position, f"corrupt: {_short_message(error)}", source_name=path.name))
            continue
        file_name = _unique_name(path, used_names)
        image.save(out_dir / file_name, "JPEG", quality=JPEG_QUALITY, exif=exif_bytes)
        kept.append(KeptFrame(file_name, position, image.width, image.height, source_name=path.name))
    if dropped:
        names = ", ".join(frame.source_name or "" for frame in dropped)
        warn(f"skipped {len(dropped)} unreadable image(s) in {folder}: {names}")
    if len(kept) < MIN_FRAMES:
        raise InputError(
            f"{folder}: only {len(kept)} readable image(s) of {len(paths)}: "
            f"structure from motion needs at least {MIN_FRAMES} overlapping photos"
        )
    return FrameSelection(folder, "image_folder", len(paths), tuple(kept), tuple(dropped))


def list_images(folder: Path) -> list[Path]:
    """Image files directly in ``folder`` (hidden files excluded), in natural name order; ``InputError`` if none."""
    if not folder.exists():
        raise InputError(f"{folder} does not exist: check the path to the photo folder")
    if not folder.is_dir():
        raise InputError(f"{folder} is not a folder: pass a folder of photos, or a video file")
    paths = [
        path
        for path in folder.iterdir()
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")
    ]
    if not paths:
        raise InputError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found in {folder}: put the photos directly in it")
    return sorted(paths, key=_natural_key)


def read_upright_rgb(path: Path, max_side: int) -> tuple[Image.Image, bytes]:
    """Fully decode ``path``; return it upright (EXIF orientation applied), RGB, longest side <= ``max_side``.

    Also returns the EXIF to write with it (orientation reset, focal-plane resolution removed when resized),
    (b"" when there is none). Raises PIL's errors (OSError, ...) for damaged files: truncated files are not padded.
    """
    with Image.open(path) as opened:
        opened.load()
        upright = _exif_upright(opened)
    exif = upright.getexif()
    image = _to_rgb(upright)
    width, height = _fit_size(image.width, image.height, max_side)
    if (width, height) != image.size:
        image = image.resize((width, height), Image.Resampling.LANCZOS, reducing_gap=3.0)
        exif_ifd = exif.get_ifd(_EXIF_IFD)
        for tag in _FOCAL_PLANE_RESOLUTION_TAGS:
            exif_ifd.pop(tag, None)
    return image, (exif.tobytes() if len(exif) else b"")


def _exif_upright(image: Image.Image) -> Image.Image:
    """``image`` rotated/flipped as its EXIF orientation says; unchanged when the EXIF itself is unreadable."""
    try:
        return ImageOps.exif_transpose(image)
    except (OSError, ValueError, SyntaxError, KeyError, TypeError):
        warn(f"{getattr(image, 'filename', 'image')}: unreadable EXIF, orientation not applied")
        return image


def to_8bit(image: Image.Image) -> Image.Image:
    """``image`` with 16-bit, 32-bit and float greyscale rescaled to 8 bits (PIL's ``convert`` clips them at 255:
    a white picture); other modes as they are."""
    if image.mode not in ("I;16", "I;16B", "I;16L", "I", "F"):
        return image
    values = np.asarray(image, dtype=np.float64)
    peak = 65535.0 if values.max(initial=0) > 255 else 255.0
    if image.mode == "F":
        peak = max(float(values.max(initial=0)), 1e-12)
    return Image.fromarray(np.clip(values / peak * 255.0 + 0.5, 0, 255).astype(np.uint8))


def _to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB: transparency composited over white, 16-bit and float greyscale rescaled instead of clipped."""
    image = to_8bit(image)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


# ---------------------------------------------------------------------------------------------- helpers


def _prepare_out_dir(out_dir: Path) -> Path:
    """Create ``out_dir``; refuse a non-empty one, whose old frames would mix with the new."""
    out_dir = Path(out_dir)
    if out_dir.is_dir() and any(out_dir.iterdir()):
        raise OutputExistsError(f"{out_dir} is not empty: frames are written to an empty folder; choose another")
    out_dir.mkdir(parents=True, exist_ok=True)
    return out_dir


def _fit_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """(w, h) scaled down so that the longest side is at most ``max_side``; unchanged when already small."""
    scale = min(1.0, max_side / max(width, height, 1))
    return max(1, round(width * scale)), max(1, round(height * scale))


def _unique_name(path: Path, used: set[str]) -> str:
    """``stem.jpg``, or ``stem_png.jpg`` (then ``stem_png_2.jpg``) when another photo already took it."""
    candidates = [f"{path.stem}.jpg", f"{path.stem}_{path.suffix.lstrip('.').lower()}.jpg"]
    candidates += [f"{path.stem}_{path.suffix.lstrip('.').lower()}_{n}.jpg" for n in range(2, len(used) + 3)]
    name = next(candidate for candidate in candidates if candidate.lower() not in used)
    used.add(name.lower())
    return name


def _natural_key(path: Path) -> list:
    """Sort key comparing digit runs as numbers: img2 < img10."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name.lower())]


def _short_message(error: Exception) -> str:
    """First line of an exception message, at most 80 characters."""
    lines = str(error).strip().splitlines()
    message = lines[0] if lines else type(error).__name__
    return message if len(message) <= 80 else message[:77] + "..."


def _drop_none(values: dict) -> dict:
    return {key: value for key, value in values.items() if value is not None}


__all__ = [
    "DroppedFrame",
    "FrameSelectConfig",
    "FrameSelection",
    "KeptFrame",
    "list_images",
    "load_image_folder",
    "select_frames",
]
