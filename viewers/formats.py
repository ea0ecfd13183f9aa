"""Splat files for viewers: the 3DGS ``.ply``, antimatter15's ``.splat`` and Niantic's ``.spz``, read and written.

``.ply`` and the ``.splat`` writer are ``reconstruct.ply``'s; this module adds the ``.splat`` reader and ``.spz``.

``.spz`` (Niantic's compressed layout, version 3, as their ``load-spz.cc`` packs it; Spark, SuperSplat and Scaniverse
read it): a gzip stream of a 16-byte little-endian header (magic ``NGSP`` = 0x5053474e, version 3, N, SH degree,
fractional bits, flags, a zero byte), then per attribute, splat after splat:

    positions  N x 3 x 24-bit signed fixed point (``fractional_bits`` after the point)
    alphas     N x u8, sigmoid(opacity) x 255
    colours    N x 3 x u8, SH DC x 0.15 x 255 + 127.5
    scales     N x 3 x u8, (log scale + 10) x 16
    rotations  N x u32, "smallest three": index of the largest |component| of the unit xyzw quaternion in the top
               2 bits, then the other three (in order x, y, z, w) as sign bit + 9-bit magnitude / (1 / sqrt 2)
    SH         N x (K - 1) x 3 x u8 (coefficient-major, RGB), x x 128 + 128, rounded to buckets of 8 (degree 1)
               or 16 (degrees 2 and 3)

every value rounded to the nearest and clamped to 0..255. SPZ's axes are right-up-back (RUB); orbit4d's splats are
right-down-front as 3DGS's ``.ply`` (RDF): y and z flip on the way in and out, the quaternion's y and z with them,
and the SH coefficients odd in y or z. The quantisation steps (what a round trip keeps): positions 2^-bits (bits = 12,
a quarter millimetre for metres, fewer for scenes beyond +-2048), log scales 1/16, opacity and DC colour 1/255 of
their ranges, rotations about 0.1 degree.
"""

from __future__ import annotations

import gzip
import math
import zlib
from pathlib import Path

import numpy as np
import torch

from multiview.errors import InputError, OutputExistsError
from reconstruct.ply import SPLAT_RECORD, _write_atomic, read_ply, splat_bytes, write_ply
from reconstruct.splats import SH_C0, Splats, num_sh_bases

FORMATS = ("ply", "splat", "spz")
SPZ_MAGIC = 0x5053474E  # "NGSP"
SPZ_VERSION = 3
SPZ_COLOR_SCALE = 0.15
SPZ_MAX_FRACTIONAL_BITS = 12
SPZ_HEADER = np.dtype([("magic", "<u4"), ("version", "<u4"), ("count", "<u4"), ("sh_degree", "u1"),
                       ("fractional_bits", "u1"), ("flags", "u1"), ("reserved", "u1")])  # fmt: skip
RDF_FROM_RUB = np.array([1.0, -1.0, -1.0])  # the axis flips between SPZ's frame and orbit4d's (self-inverse)
# Sign of each SH basis function (3DGS order, degrees 1..3) under y -> -y, z -> -z.
SH_FLIPS = np.array([-1, -1, 1, -1, 1, 1, -1, 1, -1, 1, -1, -1, 1, -1, 1], dtype=np.float64)
_SQRT1_2 = math.sqrt(0.5)
_MAGNITUDE = (1 << 9) - 1


# --- reading any splat file --------------------------------------------------------------------------------------


def read_splats(path: Path) -> Splats:
    """Splats from a ``.ply``, ``.splat`` or ``.spz`` file (by its suffix); InputError naming the file otherwise."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".ply":
        return read_ply(path)
    if suffix not in (".splat", ".spz"):
        raise InputError(f"{path} is not a splat file: give a .ply, .splat or .spz file or a scene folder")
    data = _read_bytes(path)
    return read_splat_bytes(data, path) if suffix == ".splat" else read_spz_bytes(data, path)


def _read_bytes(path: Path) -> bytes:
    if not path.is_file():
        raise InputError(f"{path} does not exist: give a .ply, .splat or .spz file or a scene folder")
    try:
        return path.read_bytes()
    except OSError as error:
        raise InputError(f"{path} is not readable ({error.strerror}): check its permissions") from None


def read_splat_bytes(data: bytes, path: Path) -> Splats:
    """Splats from antimatter15's ``.splat`` encoding (``reconstruct.ply``'s layout; SH degree 0)."""
    if len(data) % SPLAT_RECORD.itemsize or not data:
        raise InputError(f"{path} is {len(data)} bytes, not a whole number of 32-byte .splat records: the file is "
                         "truncated or not a .splat file")
    records = np.frombuffer(data, dtype=SPLAT_RECORD)
    rgba = records["rgba"].astype(np.float64) / 255.0
    alpha = rgba[:, 3].clip(0.5 / 255.0, 1.0 - 0.5 / 255.0)
    quats = (records["rot"].astype(np.float64) - 128.0) / 128.0
    splats = _splats(
        means=records["position"].astype(np.float64),
        quats=np.where(np.linalg.norm(quats, axis=1, keepdims=True) > 0, quats, [1.0, 0.0, 0.0, 0.0]),
        scales=np.log(np.maximum(records["scale"].astype(np.float64), 1e-30)),
        opacities=np.log(alpha / (1.0 - alpha)),
        sh0=((rgba[:, :3] - 0.5) / SH_C0)[:, None],
        shN=np.zeros((len(records), 0, 3)),
    )
    return _checked(splats, path)


# --- .spz --------------------------------------------------------------------------------------------------------


def spz_bytes(splats: Splats) -> bytes:
    """The gzip-compressed ``.spz`` (version 3) encoding of ``splats`` (see the module docstring)."""
    t = {name: value.detach().cpu().double().numpy() for name, value in splats.tensors().items()}
    n, degree = len(splats), splats.sh_degree
    means = t["means"] * RDF_FROM_RUB
    bits = _fractional_bits(float(np.abs(means).max()) if n else 0.0)
    fixed = np.round(means * (1 << bits)).astype(np.int32).reshape(-1)
    positions = np.stack([fixed & 0xFF, (fixed >> 8) & 0xFF, (fixed >> 16) & 0xFF], axis=-1).astype(np.uint8)
    alphas = _to_u8(255.0 / (1.0 + np.exp(-t["opacities"])))
    colors = _to_u8(t["sh0"][:, 0] * (SPZ_COLOR_SCALE * 255.0) + 127.5)
    scales = _to_u8((t["scales"] + 10.0) * 16.0)
    rotations = _pack_smallest_three(t["quats"])
    sh = _pack_sh(t["shN"] * SH_FLIPS[: t["shN"].shape[1], None])
    header = np.array([(SPZ_MAGIC, SPZ_VERSION, n, degree, bits, 0, 0)], dtype=SPZ_HEADER)
    body = b"".join(part.tobytes() for part in (header, positions, alphas, colors, scales, rotations, sh))
    return gzip.compress(body, compresslevel=6, mtime=0)


def write_spz(path: Path, splats: Splats) -> Path:
    """Write ``splats`` as a ``.spz`` file, atomically; return ``path``. InputError for a scene too large for the
    format's 24-bit positions."""
    path = Path(path)
    _write_atomic(path, spz_bytes(splats))
    return path


def read_spz_bytes(data: bytes, path: Path) -> Splats:
    """Splats from a ``.spz`` file's bytes (versions 2 and 3, gzip); InputError naming ``path`` when they are not."""
    try:
        body = gzip.decompress(data)
    except (OSError, EOFError, zlib.error):
        raise InputError(f"{path} is not gzip-compressed: not a .spz file, or a damaged one") from None
    if len(body) < SPZ_HEADER.itemsize:
        raise InputError(f"{path} is too short for a .spz header: the file is damaged")
    header = np.frombuffer(body[: SPZ_HEADER.itemsize], dtype=SPZ_HEADER)[0]
    version, n, degree = int(header["version"]), int(header["count"]), int(header["sh_degree"])
    if int(header["magic"]) != SPZ_MAGIC or version not in (2, 3) or degree > 3 or header["flags"] & 0x2:
        raise InputError(f"{path}: not a .spz file of version 2 or 3 without extensions (version {version}, SH "
                         f"degree {degree}): re-export it with orbit4d export --format spz")
    rotation_bytes, rest = (4 if version == 3 else 3), num_sh_bases(degree) - 1
    sizes = [9 * n, n, 3 * n, 3 * n, rotation_bytes * n, 3 * rest * n]
    if len(body) != SPZ_HEADER.itemsize + sum(sizes):
        raise InputError(f"{path} holds {len(body)} bytes where {n:,} splats take "
                         f"{SPZ_HEADER.itemsize + sum(sizes)}: the file is truncated or damaged")
    parts = np.split(np.frombuffer(body, dtype=np.uint8, offset=SPZ_HEADER.itemsize), np.cumsum(sizes)[:-1])
    positions, alphas, colors, scales, rotations, sh = parts
    bytes3 = positions.reshape(-1, 3).astype(np.int32)
    fixed = bytes3[:, 0] | (bytes3[:, 1] << 8) | (bytes3[:, 2] << 16)
    fixed = np.where(fixed & 0x800000, fixed - (1 << 24), fixed)
    alpha = (alphas.astype(np.float64) / 255.0).clip(0.5 / 255.0, 1.0 - 0.5 / 255.0)
    if version == 3:
        quats = _unpack_smallest_three(rotations.view("<u4"))
    else:
        xyz = rotations.reshape(-1, 3).astype(np.float64) / 127.5 - 1.0
        quats = np.concatenate([np.sqrt(np.maximum(0.0, 1.0 - (xyz**2).sum(1)))[:, None], xyz], axis=1)
    splats = _splats(
        means=fixed.reshape(n, 3) / float(1 << int(header["fractional_bits"])) * RDF_FROM_RUB,
        quats=quats * np.array([1.0, 1.0, -1.0, -1.0]),
        scales=scales.reshape(n, 3) / 16.0 - 10.0,
        opacities=np.log(alpha / (1.0 - alpha)),
        sh0=((colors.reshape(n, 3) / 255.0 - 0.5) / SPZ_COLOR_SCALE)[:, None],
        shN=(sh.reshape(n, rest, 3).astype(np.float64) - 128.0) / 128.0 * SH_FLIPS[:rest, None],
    )
    return _checked(splats, path)


def _fractional_bits(largest: float) -> int:
    """The most fractional bits (at most 12) that keep ``largest`` within 24-bit signed fixed point."""
    if not math.isfinite(largest):
        raise InputError("splats with non-finite positions cannot be written as .spz")
    bits = SPZ_MAX_FRACTIONAL_BITS
    while bits >= 0 and round(largest * (1 << bits)) > (1 << 23) - 1:
        bits -= 1
    if bits < 0:
        raise InputError(f"a splat lies {largest:g} from the origin, beyond the {(1 << 23) - 1:,} units .spz's "
                         "24-bit positions hold: export as --format ply")
    return bits


def _to_u8(values: np.ndarray) -> np.ndarray:
    return np.clip(np.round(values), 0, 255).astype(np.uint8)


def _pack_smallest_three(quats_wxyz: np.ndarray) -> np.ndarray:
    """[N] u32: unit quaternions (given [N, 4] wxyz, RDF) as SPZ's smallest-three code (xyzw, RUB)."""
    q = quats_wxyz[:, [1, 2, 3, 0]] * np.array([1.0, -1.0, -1.0, 1.0])
    norm = np.linalg.norm(q, axis=1, keepdims=True)
    q = np.where(norm > 0, q / np.where(norm > 0, norm, 1.0), [0.0, 0.0, 0.0, 1.0])
    largest = np.abs(q).argmax(axis=1)
    q = q * np.where(q[np.arange(len(q)), largest] < 0, -1.0, 1.0)[:, None]  # -q is the same rotation
    code = largest.astype(np.uint32)
    for axis in range(4):
        magnitude = (_MAGNITUDE * np.abs(q[:, axis]) / _SQRT1_2 + 0.5).astype(np.uint32)
        field = ((q[:, axis] < 0).astype(np.uint32) << 9) | np.minimum(magnitude, _MAGNITUDE)
        code = np.where(largest == axis, code, (code << 10) | field)
    return code.astype("<u4")


def _unpack_smallest_three(code: np.ndarray) -> np.ndarray:
    """[N, 4] wxyz unit quaternions (still RUB) from SPZ's smallest-three codes [N] u32."""
    code = code.astype(np.uint64)
    largest = (code >> 30).astype(np.int64)
    q = np.zeros((len(code), 4))
    for axis in range(3, -1, -1):
        stored = largest != axis
        value = _SQRT1_2 * (code & _MAGNITUDE).astype(np.float64) / _MAGNITUDE
        value = np.where((code >> 9) & 1, -value, value)
        q[:, axis] = np.where(stored, value, 0.0)
        code = np.where(stored, code >> 10, code)
    q[np.arange(len(q)), largest] = np.sqrt(np.maximum(0.0, 1.0 - (q**2).sum(axis=1)))
    return q[:, [3, 0, 1, 2]]


def _pack_sh(shN: np.ndarray) -> np.ndarray:
    """[N, K-1, 3] higher SH coefficients -> u8 as SPZ stores them (5 bits for degree 1, 4 for the rest)."""
    q = np.round(shN * 128.0) + 128.0
    bucket = np.where(np.arange(shN.shape[1]) < 3, 8, 16)[None, :, None]
    return np.clip((q + bucket // 2) // bucket * bucket, 0, 255).astype(np.uint8)


# --- shared ------------------------------------------------------------------------------------------------------


def _splats(**arrays: np.ndarray) -> Splats:
    return Splats(**{name: torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32))
                     for name, value in arrays.items()})  # fmt: skip


def _checked(splats: Splats, path: Path) -> Splats:
    if not all(torch.isfinite(t).all() for t in splats.tensors().values()):
        raise InputError(f"{path} has non-finite splat values (NaN or Inf): the file is corrupt; re-export it")
    return splats


def write_splats(path: Path, splats: Splats, fmt: str | None = None) -> Path:
    """Write ``splats`` in ``fmt`` (default: ``path``'s suffix), atomically; return ``path``."""
    fmt = fmt or Path(path).suffix.lower().lstrip(".")
    if fmt == "ply":
        return write_ply(path, splats)
    if fmt == "splat":
        _write_atomic(Path(path), splat_bytes(splats))
        return Path(path)
    if fmt == "spz":
        return write_spz(path, splats)
    raise InputError(f"--format {fmt}: use one of {', '.join(FORMATS)}")


def splats_source(scene_or_file: Path) -> Path:
    """The splat file of a scene folder (its splats.ply) or the file itself; InputError when there is none."""
    path = Path(scene_or_file)
    if path.is_dir():
        if not (path / "splats.ply").is_file():
            raise InputError(f"{path} holds no splats.ply: give a scene folder (orbit4d train --out) or a "
                             ".ply / .splat / .spz file")
        return path / "splats.ply"
    if not path.exists():
        raise InputError(f"{path} does not exist: give a scene folder or a .ply / .splat / .spz file")
    return path


def export_splats(scene_or_file: Path, fmt: str, out: Path | None = None, *, overwrite: bool = False) -> Path:
    """Write the splats of a scene folder (its splats.ply) or of a splat file as ``fmt`` (ply, splat or spz) to
    ``out`` (default: beside the source, ``splats.FMT`` in a scene, ``NAME.FMT`` beside a file); return ``out``.

    Refuses an ``out`` that is the source, or exists unless ``overwrite`` (OutputExistsError); the file is written
    under a temporary name and renamed, so an existing one is replaced only by a complete export.
    """
    if fmt not in FORMATS:
        raise InputError(f"--format {fmt}: use one of {', '.join(FORMATS)}")
    source = splats_source(scene_or_file)
    out = Path(out) if out is not None else source.with_name(f"{source.stem}.{fmt}")
    if out.suffix.lower() != f".{fmt}":
        raise InputError(f"--out {out} does not end in .{fmt}: name it NAME.{fmt}, as viewers pick the format by it")
    if out.exists() and out.resolve() == source.resolve():
        raise OutputExistsError(f"--out {out} is the input itself: choose another --out")
    if out.is_dir() or (out.exists() and not overwrite):
        raise OutputExistsError(f"{out} already exists: pass --overwrite or choose another --out")
    if not out.parent.is_dir():
        raise OutputExistsError(f"--out {out}: its folder {out.parent} does not exist")
    return write_splats(out, read_splats(source), fmt)
