"""COLMAP's binary model files checked against their own sizes before pycolmap reads them.

pycolmap (COLMAP's C++ reader) trusts every count in ``cameras.bin``, ``images.bin``, ``points3D.bin``, ``rigs.bin``
and ``frames.bin``: it loops as many times as a header says and reserves what it promises, reading zeros past the end
of the file, and reads an image name until a NUL byte that a truncated file never gives. A 2 KB truncated
``points3D.bin`` that promises a billion points made it allocate gigabytes for minutes. ``check_binary_model`` walks
each file's records (the layout of COLMAP's ``reconstruction_io_binary.cc``, little-endian) without allocating
anything a record promises, and raises InputError naming the file and the record where a count or a name runs past
the end of the file, a camera model is unknown, or bytes are left over.
"""

from __future__ import annotations

import mmap
import struct
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

from multiview.errors import InputError

_FIX = "the file is truncated or corrupt: re-export the model from COLMAP"


class _Reader:
    """Reads little-endian values from ``data`` (the file ``path``), never past its end."""

    def __init__(self, data, path: Path):
        self.data, self.path, self.offset, self.size = data, path, 0, len(data)

    def take(self, fmt: str, what: str) -> tuple:
        size = struct.calcsize("<" + fmt)
        if self.offset + size > self.size:
            raise InputError(f"{self.path} ends inside {what} (byte {self.offset:,} of {self.size:,}): {_FIX}")
        values = struct.unpack_from("<" + fmt, self.data, self.offset)
        self.offset += size
        return values

    def count(self, what: str, record_bytes: int, fmt: str = "Q") -> int:
        """A count of records of at least ``record_bytes`` each, refused when the rest of the file cannot hold them."""
        (value,) = self.take(fmt, f"the count of {what}")
        room = (self.size - self.offset) // max(record_bytes, 1)
        if value > room:
            raise InputError(f"{self.path} promises {value:,} {what} where its remaining {self.size - self.offset:,} "
                             f"bytes hold at most {room:,}: {_FIX}")  # fmt: skip
        return value

    def skip(self, count: int, record_bytes: int, what: str) -> None:
        if count * record_bytes > self.size - self.offset:
            raise InputError(f"{self.path} promises {count:,} {what} ({count * record_bytes:,} bytes) where "
                             f"{self.size - self.offset:,} bytes remain: {_FIX}")  # fmt: skip
        self.offset += count * record_bytes

    def name(self, what: str) -> None:
        end = self.data.find(b"\0", self.offset)
        if end < 0:
            raise InputError(f"{self.path}: {what} runs to the end of the file without its NUL terminator: {_FIX}")
        self.offset = end + 1

    def finish(self) -> None:
        if self.offset != self.size:
            raise InputError(f"{self.path} has {self.size - self.offset:,} bytes after its last record: {_FIX}")


def check_binary_model(model_dir: Path) -> None:
    """InputError naming the file when any binary file of the COLMAP model in ``model_dir`` is inconsistent with its
    size; a model in text files (``*.txt``) is left to pycolmap, whose text reader is bounded by the file."""
    for name, walk in _WALKERS.items():
        path = Path(model_dir) / name
        if path.is_file():
            _check_file(path, walk)


def _check_file(path: Path, walk: Callable[[_Reader], None]) -> None:
    try:
        with open(path, "rb") as file:
            if path.stat().st_size == 0:
                raise InputError(f"{path} is empty: {_FIX}")
            with mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as data:
                reader = _Reader(data, path)
                walk(reader)
                reader.finish()
    except OSError as error:
        raise InputError(f"{path} is not readable ({error.strerror or error}): check the file") from None


def _walk_cameras(reader: _Reader) -> None:
    for index in range(reader.count("cameras", 4 + 4 + 8 + 8)):
        _, model_id, _, _ = reader.take("IiQQ", f"camera {index}")
        params = _num_params().get(model_id)
        if params is None:
            raise InputError(f"{reader.path}: camera {index} has the unknown camera model id {model_id}: {_FIX}")
        reader.skip(params, 8, f"parameters of camera {index}")


def _walk_images(reader: _Reader) -> None:
    for index in range(reader.count("images", 4 + 7 * 8 + 4 + 1 + 8)):
        reader.take("I7dI", f"image {index}")
        reader.name(f"the name of image {index}")
        points = reader.count(f"2D points of image {index}", 24)
        reader.skip(points, 24, f"2D points of image {index}")


def _walk_points3d(reader: _Reader) -> None:
    """Records of id, xyz, rgb, error (51 bytes) and a track of ``track_length`` (image id, point2D index) pairs:
    only the track lengths are read, in a tight loop (models hold millions of points)."""
    count = reader.count("3D points", _POINT_BYTES)
    data, offset, size = reader.data, reader.offset, reader.size
    track_length = struct.Struct("<Q").unpack_from
    for index in range(count):
        if offset + _POINT_BYTES > size:
            reader.offset = offset
            reader.take(f"{_POINT_BYTES}x", f"3D point {index}")  # raises, naming where
        (track,) = track_length(data, offset + _POINT_BYTES - 8)
        if track * 8 > size - offset - _POINT_BYTES:
            raise InputError(f"{reader.path}: 3D point {index} promises {track:,} track elements where "
                             f"{size - offset - _POINT_BYTES:,} bytes remain: {_FIX}")  # fmt: skip
        offset += _POINT_BYTES + 8 * track
    reader.offset = offset


_POINT_BYTES = 8 + 3 * 8 + 3 + 8 + 8  # point3D_id, xyz, rgb, error, track_length


def _walk_rigs(reader: _Reader) -> None:
    for index in range(reader.count("rigs", 4 + 4)):
        _, sensors = reader.take("II", f"rig {index}")
        if sensors > 0:
            reader.take("iI", f"the reference sensor of rig {index}")
        for sensor in range(max(sensors - 1, 0)):
            _, _, has_pose = reader.take("iIB", f"sensor {sensor + 1} of rig {index}")
            if has_pose:
                reader.take("7d", f"the pose of sensor {sensor + 1} of rig {index}")


def _walk_frames(reader: _Reader) -> None:
    for index in range(reader.count("frames", 4 + 4 + 7 * 8 + 4)):
        reader.take("II7d", f"frame {index}")
        data = reader.count(f"data ids of frame {index}", 16, "I")
        reader.skip(data, 16, f"data ids of frame {index}")


_WALKERS = {
    "rigs.bin": _walk_rigs,
    "cameras.bin": _walk_cameras,
    "frames.bin": _walk_frames,
    "images.bin": _walk_images,
    "points3D.bin": _walk_points3d,
}


@lru_cache(maxsize=1)
def _num_params() -> dict[int, int]:
    """COLMAP camera model id -> number of parameters, as the installed pycolmap knows them."""
    import pycolmap

    counts = {}
    for model in pycolmap.CameraModelId.__members__.values():
        if int(model) < 0:
            continue
        camera = pycolmap.Camera.create_from_model_id(1, model, 1.0, 1, 1)
        counts[int(model)] = len(camera.params)
    return counts
