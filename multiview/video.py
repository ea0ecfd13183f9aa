"""Video decoding with PyAV: probe a file, stream its frames upright with their real timestamps.

Rotation: phones store portrait video as landscape frames plus a display matrix (FFmpeg's
``AV_PKT_DATA_DISPLAYMATRIX``). With av >= 13 (FFmpeg >= 6.1) the decoder attaches that matrix to every
frame as side data; we read the matrix itself rather than ``VideoFrame.rotation`` because the latter
reports a horizontal mirror as a 180 degree rotation. Files whose frames carry no matrix fall back to
the legacy ``rotate`` stream tag that older FFmpeg builds exported. Only multiples of 90 degrees are
applied (the nearest one is used).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from multiview.console import warn
from multiview.errors import InputError

# Demuxers FFmpeg picks for a single still image (a JPEG or PNG renamed .mp4 opens as a 1-frame "video").
_STILL_IMAGE_FORMATS = ("image2", "mjpeg", "gif_pipe", "webp_pipe")


@dataclass(frozen=True)
class VideoInfo:
    """What a video file holds, as displayed (width and height are after rotation)."""

    width: int  # displayed width in pixels
    height: int  # displayed height in pixels
    num_frames: int  # from the container when it says, else duration * fps (an estimate); 0 when unknown
    duration_s: float  # 0.0 when unknown
    fps: float  # average frame rate; variable frame rate videos have irregular timestamps around it
    rotation_deg: int  # counter-clockwise rotation applied for display (FFmpeg sign; -90 for most portrait phone clips)
    codec: str  # FFmpeg decoder name, e.g. "h264", "hevc"
    mirrored: bool = False  # the display matrix also mirrors the picture horizontally


@dataclass(frozen=True)
class DecodedFrame:
    """One decoded frame, upright."""

    index: int  # 0-based position among all frames of the stream, in presentation order
    time_s: float  # pts * time_base: the frame's real time, correct for variable frame rate
    image: np.ndarray  # [H, W, 3] uint8 RGB


@dataclass(frozen=True)
class _Orientation:
    """How stored pixels map to displayed ones: optional transpose, then flips (see ``_apply_orientation``)."""

    transpose: bool = False
    flip_rows: bool = False
    flip_cols: bool = False

    @property
    def rotation_deg(self) -> int:
        """Counter-clockwise display rotation once a horizontal mirror, if any, is taken out."""
        flip_cols = self.flip_cols != self.mirrored
        if not self.transpose:
            return 180 if flip_cols else 0
        return -90 if flip_cols else 90

    @property
    def mirrored(self) -> bool:
        """A transpose or a single flip reverses handedness; a transpose plus one flip is a pure rotation."""
        return (int(self.transpose) + int(self.flip_rows) + int(self.flip_cols)) % 2 == 1


def probe_video(path: Path) -> VideoInfo:
    """Open ``path``, check it holds a decodable video stream and describe it.

    Decodes the first frame only (the display matrix lives on decoded frames).
    Raises ``InputError`` for a missing file, a file that is not a video, or a file without a video stream.
    """
    path = Path(path)
    with _open_video(path) as container:
        stream = container.streams.video[0]
        first = _first_frame(container, stream, path)
        orientation = _orientation(first, stream)
        width, height = first.width, first.height
        if orientation.transpose:
            width, height = height, width
        fps = _average_fps(stream)
        duration_s = _duration_s(container, stream)
        num_frames = stream.frames or round(duration_s * fps)
        return VideoInfo(
            width=width,
            height=height,
            num_frames=int(num_frames),
            duration_s=duration_s,
            fps=fps,
            rotation_deg=orientation.rotation_deg,
            codec=stream.codec_context.name,
            mirrored=orientation.mirrored,
        )


def iter_frames(
    path: Path,
    every: int = 1,
    *,
    max_side: int | None = None,
    indices: Collection[int] | None = None,
) -> Iterator[DecodedFrame]:
    """Yield every ``every``-th frame of ``path`` upright, as [H, W, 3] uint8 RGB, in presentation order.

    ``max_side``: downscale (in FFmpeg, before conversion to RGB) so the longest side is at most this.
    ``indices``: only these frame indices (combined with ``every``); decoding stops after the largest.
    A truncated or corrupt file yields the frames decoded before the damage and warns once;
    ``InputError`` if no frame decodes at all.
    """
    if every < 1:
        raise ValueError(f"every must be >= 1, got {every}")
    path = Path(path)
    wanted = None if indices is None else frozenset(indices)
    if wanted is not None and not wanted:
        return
    last_wanted = None if wanted is None else max(wanted)
    with _open_video(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"  # frame threading: several frames decode in parallel
        num_decoded = 0
        frames = _decode_until_error(container, stream, path)
        try:
            for index, frame in enumerate(frames):
                num_decoded = index + 1
                if last_wanted is not None and index > last_wanted:
                    break
                if index % every or (wanted is not None and index not in wanted):
                    continue
                image = _to_rgb(frame, stream, max_side)
                yield DecodedFrame(index=index, time_s=_time_s(frame, index, stream), image=image)
        finally:
            frames.close()
        if num_decoded == 0:
            raise InputError(f"{path}: no frame could be decoded: the file is damaged; re-export or re-copy the video")


def _open_video(path: Path) -> av.container.InputContainer:
    """Open ``path`` for reading and check it has a video stream; every failure is one ``InputError`` line."""
    if not path.exists():
        raise InputError(f"{path} does not exist: check the path to the video")
    if path.is_dir():
        raise InputError(f"{path} is a folder, not a video: pass a video file (.mp4, .mov, ...)")
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or type(error).__name__
        raise InputError(
            f"{path} is not a readable video ({reason}): pass an .mp4/.mov/.mkv file, or re-export it"
        ) from None
    if container.format.name in _STILL_IMAGE_FORMATS or container.format.name.endswith("_pipe"):
        container.close()
        raise InputError(f"{path} is a still image, not a video: put photos in a folder and pass the folder")
    if not container.streams.video:
        container.close()
        raise InputError(f"{path} has no video stream (audio only?): pass a file that contains video")
    return container


def _decode_until_error(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream, path: Path
) -> Iterator[av.VideoFrame]:
    """Decoded frames of ``stream``; on a demux/decode error, warn once with the count so far and stop."""
    num_decoded = 0
    last_time_s = 0.0
    iterator = container.decode(stream)
    while True:
        try:
            frame = next(iterator)
        except StopIteration:
            break
        except av.error.FFmpegError as error:
            if num_decoded:
                reason = error.strerror or type(error).__name__
                warn(f"{path}: decoding stopped after {num_decoded} frames ({reason}); the file looks truncated")
            return
        num_decoded += 1
        last_time_s = _time_s(frame, num_decoded - 1, stream)
        yield frame
    if num_decoded and _ended_early(container, stream, num_decoded, last_time_s):
        warn(f"{path}: decoding stopped after {num_decoded} frames, short of what the file lists; it looks truncated")


def _ended_early(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream, num_decoded: int, last_time_s: float
) -> bool:
    """Whether a stream that ended without an error stopped well short of its listed length.

    Some truncated files (MP4 with the index first, MKV) end cleanly: the demuxer just meets the end of the data.
    """
    if stream.frames:
        return num_decoded < 0.95 * stream.frames
    duration_s = _duration_s(container, stream)
    start_s = float(stream.start_time * stream.time_base) if stream.start_time and stream.time_base else 0.0
    frame_s = 1.0 / (_average_fps(stream) or 1.0)
    return duration_s > 0 and last_time_s - start_s + 2 * frame_s < 0.9 * duration_s


def _first_frame(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream, path: Path
) -> av.VideoFrame:
    """The first decodable frame; ``InputError`` if there is none."""
    frames = _decode_until_error(container, stream, path)
    try:
        return next(frames)
    except StopIteration:
        raise InputError(
            f"{path}: no frame could be decoded: the file is damaged; re-export or re-copy the video"
        ) from None
    finally:
        frames.close()


def _orientation(frame: av.VideoFrame, stream: av.video.stream.VideoStream) -> _Orientation:
    """Display orientation from the frame's display matrix, else from the legacy ``rotate`` tag."""
    matrix = _display_matrix(frame)
    if matrix is not None:
        return _orientation_from_matrix(matrix)
    try:
        clockwise = int(float(stream.metadata.get("rotate", 0)))
    except ValueError:
        clockwise = 0
    return _orientation_from_rotation(-clockwise)


def _display_matrix(frame: av.VideoFrame) -> np.ndarray | None:
    """[3, 3] FFmpeg display matrix (16.16 fixed point in the 2x2 part) attached to ``frame``, if any."""
    try:
        side_data = frame.side_data.get("DISPLAYMATRIX")
    except (AttributeError, KeyError, ValueError):
        return None
    if side_data is None or len(bytes(side_data)) != 36:
        return None
    return np.frombuffer(bytes(side_data), dtype=np.int32).reshape(3, 3)


def _orientation_from_matrix(matrix: np.ndarray) -> _Orientation:
    """Read a display matrix [[a, b, u], [c, d, v], [x, y, w]].

    FFmpeg maps a stored pixel (x, y) (image coordinates, y down) to the displayed (x', y') = (x, y) @ [[a, b],
    [c, d]]. Entries are rounded to -1/0/1, i.e. to the nearest multiple of 90 degrees.
    """
    linear = matrix[:2, :2].astype(np.float64)
    scale = np.linalg.norm(linear, axis=0)
    a, b, c, d = np.round(linear / np.where(scale > 0, scale, 1)).astype(int).ravel()
    if a != 0 or d != 0:  # x' depends on x only: no transpose
        return _Orientation(transpose=False, flip_rows=bool(d < 0), flip_cols=bool(a < 0))
    # x' = c * y, y' = b * x: transpose, then flip rows if b < 0 and columns if c < 0
    return _Orientation(transpose=True, flip_rows=bool(b < 0), flip_cols=bool(c < 0))


def _orientation_from_rotation(ccw_degrees: float) -> _Orientation:
    """Orientation for a counter-clockwise display rotation (nearest multiple of 90 degrees)."""
    quarter_turns = round(ccw_degrees / 90) % 4
    return {
        0: _Orientation(),
        1: _Orientation(transpose=True, flip_rows=True),  # rot90 counter-clockwise
        2: _Orientation(flip_rows=True, flip_cols=True),
        3: _Orientation(transpose=True, flip_cols=True),  # rot90 clockwise
    }[quarter_turns]


def _apply_orientation(image: np.ndarray, orientation: _Orientation) -> np.ndarray:
    """[H, W, 3] stored -> displayed; a contiguous copy only when something moved."""
    if orientation == _Orientation():
        return image
    if orientation.transpose:
        image = image.transpose(1, 0, 2)
    if orientation.flip_rows:
        image = image[::-1]
    if orientation.flip_cols:
        image = image[:, ::-1]
    return np.ascontiguousarray(image)


def _to_rgb(frame: av.VideoFrame, stream: av.video.stream.VideoStream, max_side: int | None) -> np.ndarray:
    """[H, W, 3] uint8 RGB, downscaled so the longest side is at most ``max_side``, then made upright."""
    width, height = frame.width, frame.height
    longest = max(width, height)
    if max_side is not None and longest > max_side:
        scale = max_side / longest
        width, height = max(1, round(width * scale)), max(1, round(height * scale))
        image = frame.to_ndarray(format="rgb24", width=width, height=height, interpolation="AREA")
    else:
        image = frame.to_ndarray(format="rgb24")
    return _apply_orientation(image, _orientation(frame, stream))


def _time_s(frame: av.VideoFrame, index: int, stream: av.video.stream.VideoStream) -> float:
    """Presentation time in seconds; frame index / fps for the rare stream without timestamps."""
    if frame.pts is not None and frame.time_base is not None:
        return float(frame.pts * frame.time_base)
    return index / (_average_fps(stream) or 1.0)


def _average_fps(stream: av.video.stream.VideoStream) -> float:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    return float(rate) if rate else 0.0


def _duration_s(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> float:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    return 0.0


def write_video(
    path: Path,
    images: Iterable[np.ndarray],
    *,
    fps: float = 30.0,
    times_s: Sequence[float] | None = None,
    codec: str = "libx264",
    crf: int = 18,
    display_rotation_deg: int = 0,
    faststart: bool = True,
) -> Path:
    """Encode [H, W, 3] uint8 RGB images (even H and W) into a video file; returns ``path``.

    ``times_s``: one presentation time per image (increasing; variable frame rate), rounded to milliseconds;
    default ``i / fps``. ``crf`` is x264's quality (0 lossless, 18 visually lossless; ignored by other codecs).
    ``display_rotation_deg``: counter-clockwise display rotation written as display-matrix metadata, as phones do;
    the pixels are stored as given. ``faststart``: put the MP4 index first (playable while downloading).
    """
    path = Path(path)
    time_base = Fraction(1, 1000)
    options = {"movflags": "faststart"} if faststart and path.suffix.lower() in (".mp4", ".mov") else {}
    with av.open(str(path), "w", options=options) as container:
        stream = None
        for position, image in enumerate(images):
            if stream is None:
                stream = _add_video_stream(container, image.shape, codec, fps, crf, display_rotation_deg)
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            seconds = times_s[position] if times_s is not None else position / fps
            frame.pts, frame.time_base = round(seconds * 1000), time_base
            container.mux(stream.encode(frame))
        if stream is None:
            raise ValueError(f"write_video({path}): no images given")
        container.mux(stream.encode(None))
    return path


def _add_video_stream(
    container: av.container.OutputContainer, shape: tuple[int, ...], codec: str, fps: float, crf: int, rotation: int
) -> av.video.stream.VideoStream:
    """A yuv420p stream for [H, W, 3] images with a millisecond time base."""
    if len(shape) != 3 or shape[2] != 3 or shape[0] % 2 or shape[1] % 2:
        raise ValueError(f"write_video needs [H, W, 3] images with even H and W (yuv420p), got shape {shape}")
    stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
    stream.height, stream.width = shape[0], shape[1]
    stream.pix_fmt = "yuv420p"
    stream.codec_context.time_base = Fraction(1, 1000)
    if codec == "libx264":
        stream.options = {"crf": str(crf)}
    if rotation:
        stream.set_display_rotation(rotation)
    return stream


__all__ = ["DecodedFrame", "VideoInfo", "iter_frames", "probe_video", "write_video"]
