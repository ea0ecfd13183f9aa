"""Splat files: the standard 3DGS ``.ply`` (write and read) and antimatter15's ``.splat`` (write).

``.ply`` (what the reference 3DGS code writes, and SuperSplat, Spark, gsplat and the Blender add-ons read):
binary little-endian, one ``vertex`` element of float properties in this order::

    x y z  nx ny nz  f_dc_0 f_dc_1 f_dc_2  f_rest_0 .. f_rest_{3(K-1)-1}  opacity  scale_0 scale_1 scale_2
    rot_0 rot_1 rot_2 rot_3

``f_rest`` is channel-major (all K-1 red coefficients, then green, then blue), opacity a logit, scales logs,
rotation wxyz. Normals are written as zeros.

``.splat`` (antimatter15/splat's ``convert.py``): 32 bytes per splat, no header: position 3 x f32, scale 3 x f32
(linear), colour RGBA 4 x u8 (DC colour and sigmoid opacity, x 255, clipped, truncated), rotation 4 x u8
(q / |q| x 128 + 128, clipped, truncated); splats sorted by decreasing exp(sum of log scales) x opacity.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch

from multiview.capture import ply_vertices
from multiview.errors import InputError
from reconstruct.splats import SH_C0, Splats, num_sh_bases

SPLAT_RECORD = np.dtype([("position", "<f4", 3), ("scale", "<f4", 3), ("rgba", "u1", 4), ("rot", "u1", 4)])


def ply_property_names(sh_degree: int) -> list[str]:
    """The vertex properties of a 3DGS ``.ply`` with SH up to ``sh_degree``, in file order."""
    rest = 3 * (num_sh_bases(sh_degree) - 1)
    return (
        ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
        + [f"f_rest_{i}" for i in range(rest)]
        + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    )


def splats_to_array(splats: Splats) -> np.ndarray:
    """[N, P] float32 rows in ``ply_property_names(splats.sh_degree)`` order."""
    n = len(splats)
    t = {name: value.detach().float().cpu() for name, value in splats.tensors().items()}
    f_rest = t["shN"].transpose(1, 2).reshape(n, 3 * t["shN"].shape[1])  # [N, K-1, 3] -> channel-major
    columns = [t["means"], torch.zeros(n, 3), t["sh0"][:, 0], f_rest,
               t["opacities"][:, None], t["scales"], t["quats"]]  # fmt: skip
    return torch.cat(columns, dim=1).numpy().astype(np.float32)


def write_ply(path: Path, splats: Splats) -> Path:
    """Write ``splats`` as a 3DGS ``.ply`` (binary little-endian), atomically; return ``path``."""
    path = Path(path)
    names = ply_property_names(splats.sh_degree)
    header = (
        "ply\nformat binary_little_endian 1.0\n"
        f"element vertex {len(splats)}\n"
        + "".join(f"property float {name}\n" for name in names)
        + "end_header\n"
    )
    data = splats_to_array(splats).astype("<f4")
    _write_atomic(path, header.encode("ascii") + data.tobytes())
    return path


def read_ply(path: Path) -> Splats:
    """Read a 3DGS ``.ply`` (any SH degree 0..3, any scalar property types, binary either endianness).

    Extra properties are ignored; missing ones, an unreadable, truncated or non-finite file raise InputError.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path} does not exist: pass a .ply written by orbit4d train or another 3DGS tool")
    try:
        data = path.read_bytes()
    except OSError as error:
        raise InputError(f"{path} is not readable ({error.strerror}): check its permissions") from None
    vertices = ply_vertices(data, path)
    names = set(vertices.dtype.names)
    rest = sorted((n for n in names if n.startswith("f_rest_")), key=lambda n: int(n[7:]) if n[7:].isdigit() else -1)
    bases = len(rest) // 3 + 1
    if len(rest) % 3 or bases not in (1, 4, 9, 16) or rest != [f"f_rest_{i}" for i in range(len(rest))]:
        raise InputError(f"{path}: {len(rest)} f_rest_* properties is not 3 x (K - 1) for SH degree 0..3: "
                         "not a 3DGS splat file")
    degree = math.isqrt(bases) - 1
    missing = [n for n in ply_property_names(degree) if n not in names and not n.startswith("n")]
    if missing:
        raise InputError(f"{path} lacks the splat properties {', '.join(missing[:4])}: not a 3DGS splat file "
                         "(a point cloud? use it as a capture's points3D.ply instead)")
    def column(*keys: str) -> torch.Tensor:
        return torch.from_numpy(np.stack([vertices[k].astype(np.float32) for k in keys], axis=-1))

    n = len(vertices)
    sh0 = column("f_dc_0", "f_dc_1", "f_dc_2")[:, None, :]
    shN = column(*rest).reshape(n, 3, bases - 1).transpose(1, 2).contiguous() if rest else torch.zeros(n, 0, 3)
    splats = Splats(
        means=column("x", "y", "z"),
        quats=column("rot_0", "rot_1", "rot_2", "rot_3"),
        scales=column("scale_0", "scale_1", "scale_2"),
        opacities=column("opacity")[:, 0],
        sh0=sh0,
        shN=shN,
    )
    if not all(torch.isfinite(t).all() for t in splats.tensors().values()):
        raise InputError(f"{path} has non-finite splat values (NaN or Inf): the file is corrupt; re-export it")
    if not torch.isfinite(splats.scales.exp()).all():  # a log-scale past ~88: no float32 can hold the size
        raise InputError(f"{path} has Gaussians of infinite size (log-scale {float(splats.scales.max()):g}): the file "
                         "is corrupt, or not in the 3DGS layout (log-scales); re-export it")
    return splats


def splat_bytes(splats: Splats) -> bytes:
    """The ``.splat`` encoding of ``splats`` (see the module docstring), byte for byte as antimatter15's converter."""
    t = {name: value.detach().cpu().double().numpy() for name, value in splats.tensors().items()}
    opacity = 1.0 / (1.0 + np.exp(-t["opacities"]))
    order = np.argsort(-np.exp(t["scales"].sum(axis=1)) * opacity, kind="stable")
    records = np.empty(len(splats), dtype=SPLAT_RECORD)
    records["position"] = t["means"][order]
    records["scale"] = np.exp(t["scales"][order].astype(np.float32))
    rgba = np.concatenate([0.5 + SH_C0 * t["sh0"][:, 0], opacity[:, None]], axis=1)[order]
    records["rgba"] = (rgba * 255).clip(0, 255).astype(np.uint8)
    quats = t["quats"][order].astype(np.float32)
    norm = np.linalg.norm(quats, axis=1, keepdims=True)
    records["rot"] = (quats / np.where(norm > 0, norm, 1.0) * 128 + 128).clip(0, 255).astype(np.uint8)
    return records.tobytes()


def write_splat(path: Path, splats: Splats) -> Path:
    """Write ``splats`` as an antimatter15 ``.splat`` file, atomically; return ``path``."""
    path = Path(path)
    _write_atomic(path, splat_bytes(splats))
    return path


def _write_atomic(path: Path, payload: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as file:
        file.write(payload)
    os.replace(tmp, path)
