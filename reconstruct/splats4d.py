"""Time-varying (4D) Gaussian splats: canonical 3D Gaussians plus a closed-form motion per Gaussian.

A ``Splats4D`` holds N canonical Gaussians (a ``reconstruct.Splats``, the 3DGS parametrisation) and, per Gaussian,
the coefficients of its trajectory over a basis of smooth functions of time, the coefficients of its rotation's
change, and a lifespan (its opacity over time), in the spirit of SpacetimeGaussians (per-Gaussian polynomial
motion, temporal radial-basis opacity) with a B-spline basis by default. ``Splats4D.at(t)`` evaluates it into the
plain 3D Gaussians at time t, which every 3D tool then renders, writes (``reconstruct.write_ply``) or meshes.

The motion, for a time t in seconds (``times`` [T] are the capture's frame times)::

    u(t)        = clamp((t - times[0]) / (times[-1] - times[0]), 0, 1)          normalised time
    xyz(t)      = xyz + sum_m B_m(u) motion_m                                    m = 0 .. M-1, motion_m [3]
    rot(t)      = rot + sum_r B'_r(u) drot_r                                     r = 0 .. R-1, drot_r [4] (wxyz);
                                                                                 renderers normalise quaternions
    opacity(t)  = sigmoid(opacity) * exp(-t_rate * (u - t_center)^2)             t_rate >= 0: 0 = always there
    scales, colours (SH): constant, as stored

``B`` (M functions) and ``B'`` (R functions) are the same family, named by the file's ``basis``:

- ``bspline`` (default): the uniform cubic B-spline with M >= 4 control points over [0, 1]: ``s = u (M - 3)``,
  ``i = min(floor(s), M - 4)``, ``f = s - i``; only ``B_i .. B_{i+3}`` are non-zero, equal to ``(1 - f)^3 / 6``,
  ``(3 f^3 - 6 f^2 + 4) / 6``, ``(-3 f^3 + 3 f^2 + 3 f + 1) / 6`` and ``f^3 / 6``. Smooth (C2), local (a
  coefficient moves a Gaussian over 4 of the M - 3 segments only) and summing to 1, so a constant offset of all
  coefficients is a translation.
- ``poly``: powers of ``s = 2 u - 1``: ``B_m(u) = s^(m+1)`` (SpacetimeGaussians' polynomial motion, centred).

The file, ``splats4d.ply`` in a 4D scene folder: a binary little-endian PLY whose ``vertex`` element starts with the
standard 3DGS properties of the canonical Gaussians (``reconstruct.ply``: x y z nx ny nz f_dc_* f_rest_* opacity
scale_* rot_*), so any 3DGS viewer opens it as the canonical (static) scene, followed by::

    motion_{m}_{0,1,2}   m = 0 .. M-1      float, world units
    drot_{r}_{0,1,2,3}   r = 0 .. R-1      float, quaternion offsets (wxyz)
    t_center             float, normalised time of the Gaussian's peak opacity
    t_rate               float >= 0, how fast its opacity falls away from t_center

Its header starts with ``comment orbit4d splats4d 1`` (format and version; what marks a file as 4D), then
``comment basis bspline`` (or ``poly``) and ``comment times t_0 t_1 ... t_{T-1}`` (seconds, increasing, T >= 2).
A browser evaluates a time with the formulas above and about 50 lines of JavaScript; nothing is stored per frame.
Size: (62 + 3 M + 4 R + 2) floats per Gaussian against 62 for one frame's ``.ply`` at SH degree 3 (M = 8, R = 4: 1.8x).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from multiview.capture import ply_vertices
from multiview.errors import InputError
from reconstruct.ply import ply_property_names, read_ply, splats_to_array
from reconstruct.splats import Splats

MAGIC = "orbit4d splats4d"
VERSION = 1
BASES = ("bspline", "poly")
MOTION_NAMES = ("motion", "drot", "t_center", "t_rate")
"""The per-Gaussian motion parameters, beside ``reconstruct.splats.PARAMETER_NAMES`` when training."""
MIN_OPACITY = 1e-7  # the smallest opacity ``at`` writes as a logit (an absent Gaussian, not -inf)


def basis_weights(basis: str, count: int, u: Tensor | float) -> Tensor:
    """[..., count] values of the basis functions ``B_0 .. B_{count-1}`` at normalised times ``u`` [...] in [0, 1].

    Example:
        >>> basis_weights("bspline", 4, 0.0).tolist()  # a cubic B-spline's weights at its start
        [0.1666666716337204, 0.6666666865348816, 0.1666666716337204, 0.0]
        >>> [round(w, 3) for w in basis_weights("poly", 3, 1.0).tolist()]
        [1.0, 1.0, 1.0]
    """
    u = torch.as_tensor(u, dtype=torch.float32).clamp(0.0, 1.0)
    if basis == "poly":
        s = 2.0 * u - 1.0
        return torch.stack([s ** (m + 1) for m in range(count)], dim=-1) if count else u[..., None][..., :0]
    if basis != "bspline":
        raise ValueError(f"basis must be one of {BASES}, got {basis!r}")
    if count < 4:
        raise ValueError(f"a cubic B-spline needs at least 4 control points, got {count}")
    s = u * (count - 3)
    i = torch.clamp(torch.floor(s), max=count - 4)
    f = s - i
    local = torch.stack([(1 - f) ** 3, 3 * f**3 - 6 * f**2 + 4, -3 * f**3 + 3 * f**2 + 3 * f + 1, f**3], -1) / 6.0
    offsets = i.long()[..., None] + torch.arange(4)  # [..., 4] control points i .. i+3
    weights = torch.zeros(*u.shape, count, dtype=u.dtype)
    return weights.scatter(-1, offsets, local)


def gaussians_at(params: Mapping[str, Tensor], basis: str, u: Tensor | float) -> dict[str, Tensor]:
    """The 3D Gaussians of 4D parameters at normalised time ``u``, differentiably.

    ``params``: ``Splats.tensors()`` names (means [N, 3], quats [N, 4], scales [N, 3] log, opacities [N] logit,
    sh0, shN) plus motion [N, M, 3], drot [N, R, 4], t_center [N], t_rate [N]. Returns means, quats (not normalised),
    scales (log) and ``opacity`` [N] (linear, in [0, 1]: the rasterizer's input; the logit of a vanished Gaussian
    would be -inf).
    """
    device = params["means"].device
    w_motion = basis_weights(basis, params["motion"].shape[1], u).to(device)
    w_rot = basis_weights(basis, params["drot"].shape[1], u).to(device)
    u_value = torch.as_tensor(u, dtype=torch.float32).clamp(0.0, 1.0).to(device)
    fade = torch.exp(-params["t_rate"].clamp_min(0.0) * (u_value - params["t_center"]) ** 2)
    return {
        "means": params["means"] + torch.einsum("m,nmk->nk", w_motion, params["motion"]),
        "quats": params["quats"] + torch.einsum("r,nrk->nk", w_rot, params["drot"]),
        "scales": params["scales"],
        "opacity": torch.sigmoid(params["opacities"]) * fade,
    }


@dataclass(frozen=True, eq=False)
class Splats4D:
    """N Gaussians that move: canonical ``Splats`` plus per-Gaussian motion (see the module docstring)."""

    canonical: Splats  # N Gaussians; their means and rotations are offset by the motion
    motion: Tensor  # [N, M, 3] position coefficients of the basis functions
    drot: Tensor  # [N, R, 4] rotation (wxyz quaternion) coefficients
    t_center: Tensor  # [N] normalised time of peak opacity
    t_rate: Tensor  # [N] >= 0 opacity fall-off away from t_center (0: visible at every time)
    times: np.ndarray  # [T] the frame times in seconds, increasing
    basis: str = "bspline"  # "bspline" or "poly"

    def __post_init__(self) -> None:
        n = len(self.canonical)
        times = np.asarray(self.times, dtype=np.float64).reshape(-1)
        object.__setattr__(self, "times", times)
        if len(times) < 2 or not np.all(np.isfinite(times)) or not np.all(np.diff(times) > 0):
            raise ValueError(f"Splats4D.times must be at least 2 finite, increasing seconds, got {times.tolist()}")
        if self.basis not in BASES:
            raise ValueError(f"Splats4D.basis must be one of {BASES}, got {self.basis!r}")
        for name, tail in (("motion", 3), ("drot", 4)):
            value = getattr(self, name)
            if value.dim() != 3 or value.shape[0] != n or value.shape[2] != tail:
                raise ValueError(f"Splats4D.{name} must be [N, count, {tail}] with N = {n}, got {tuple(value.shape)}")
            if self.basis == "bspline" and value.shape[1] < 4:
                raise ValueError(f"Splats4D.{name}: a cubic B-spline needs at least 4 control points, got "
                                 f"{value.shape[1]}")
        for name in ("t_center", "t_rate"):
            if tuple(getattr(self, name).shape) != (n,):
                raise ValueError(f"Splats4D.{name} must be [N] with N = {n}, got {tuple(getattr(self, name).shape)}")
        if any(t.dtype != self.canonical.means.dtype for t in (self.motion, self.drot, self.t_center, self.t_rate)):
            raise ValueError("Splats4D tensors must share the canonical splats' dtype")

    def __len__(self) -> int:
        return len(self.canonical)

    @property
    def device(self) -> torch.device:
        return self.canonical.device

    def normalized_time(self, t: float) -> float:
        """u(t): 0 at the first frame time, 1 at the last, clamped."""
        span = float(self.times[-1] - self.times[0])
        return min(max((float(t) - float(self.times[0])) / span, 0.0), 1.0)

    def tensors(self) -> dict[str, Tensor]:
        """The canonical tensors (``Splats.tensors()`` names) and the motion ones (``MOTION_NAMES``) by name."""
        return {**self.canonical.tensors(), **{name: getattr(self, name) for name in MOTION_NAMES}}

    def at(self, t: float) -> Splats:
        """The 3D Gaussians at time ``t`` (seconds; outside the frame times: the nearest end), in the 3D
        parametrisation (log scales, logit opacities: a vanished Gaussian gets the logit of ``MIN_OPACITY``)."""
        with torch.no_grad():
            state = gaussians_at(self.tensors(), self.basis, self.normalized_time(t))
            p = state["opacity"].double().clamp(MIN_OPACITY, 1.0 - MIN_OPACITY)
            dtype = self.canonical.means.dtype
            opacities = torch.where(self.t_rate > 0, (torch.log(p) - torch.log1p(-p)).to(dtype),
                                    self.canonical.opacities)  # exact where nothing fades  # fmt: skip
            c = self.canonical
            return Splats(state["means"], state["quats"], c.scales.clone(), opacities, c.sh0.clone(), c.shN.clone())

    def frame(self, index: int) -> Splats:
        """``at(times[index])``: the Gaussians at the capture's ``index``-th frame time."""
        return self.at(float(self.times[index]))

    def to(self, device: torch.device | str) -> Splats4D:
        moved = {name: getattr(self, name).to(device) for name in MOTION_NAMES}
        return Splats4D(self.canonical.to(device), **moved, times=self.times, basis=self.basis)

    def select(self, index: Tensor) -> Splats4D:
        """The Gaussians at ``index`` (a boolean mask or integer indices)."""
        picked = {name: getattr(self, name)[index] for name in MOTION_NAMES}
        return Splats4D(self.canonical.select(index), **picked, times=self.times, basis=self.basis)

    @classmethod
    def from_parameters(cls, params: Mapping[str, Tensor], times: np.ndarray, basis: str) -> Splats4D:
        """Detached copies of trained parameters (``tensors()`` names; ``t_rate`` clamped at 0 as it acts)."""
        canonical = Splats.from_parameters(dict(params))
        motion = {name: params[name].detach().clone() for name in MOTION_NAMES}
        motion["t_rate"] = motion["t_rate"].clamp_min(0.0)
        return cls(canonical, **motion, times=times, basis=basis)


def static_splats4d(splats: Splats, times: np.ndarray, basis: str = "bspline", motion_count: int = 8,
                    rotation_count: int = 4) -> Splats4D:  # fmt: skip
    """``splats`` standing still at every time (zero motion, always visible): the start of 4D training."""
    n, dtype = len(splats), splats.means.dtype
    zeros = splats.means.new_zeros
    return Splats4D(splats, zeros(n, motion_count, 3), zeros(n, rotation_count, 4), torch.full((n,), 0.5, dtype=dtype),
                    zeros(n), times=times, basis=basis)  # fmt: skip


# --- the file ------------------------------------------------------------------------------------------------------


def motion_property_names(motion_count: int, rotation_count: int) -> list[str]:
    """The motion properties after the 3DGS ones, in file order."""
    return ([f"motion_{m}_{k}" for m in range(motion_count) for k in range(3)]
            + [f"drot_{r}_{k}" for r in range(rotation_count) for k in range(4)] + ["t_center", "t_rate"])  # fmt: skip


def write_splats4d(path: Path, splats: Splats4D) -> Path:
    """Write ``splats`` as an orbit4d 4D ``.ply`` (see the module docstring), atomically; return ``path``."""
    path = Path(path)
    m, r = splats.motion.shape[1], splats.drot.shape[1]
    names = ply_property_names(splats.canonical.sh_degree) + motion_property_names(m, r)
    times = " ".join(repr(float(t)) for t in splats.times)
    header = (
        "ply\nformat binary_little_endian 1.0\n"
        f"comment {MAGIC} {VERSION}\ncomment basis {splats.basis}\ncomment times {times}\n"
        f"element vertex {len(splats)}\n"
        + "".join(f"property float {name}\n" for name in names)
        + "end_header\n"
    )
    n = len(splats)
    motion = [splats.motion.reshape(n, 3 * m), splats.drot.reshape(n, 4 * r), splats.t_center[:, None],
              splats.t_rate[:, None]]  # fmt: skip
    extra = torch.cat([value.detach().float().cpu() for value in motion], dim=1).numpy()
    data = np.concatenate([splats_to_array(splats.canonical), extra], axis=1).astype("<f4")
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(header.encode("ascii") + data.tobytes())
    tmp.replace(path)
    return path


def is_splats4d(path: Path) -> bool:
    """Whether ``path`` is a PLY whose header marks it as an orbit4d 4D file (reads the first 4 KiB only)."""
    try:
        with open(path, "rb") as file:
            head = file.read(4096)
    except OSError:
        return False
    return head.startswith(b"ply") and f"comment {MAGIC} ".encode() in head.split(b"end_header")[0]


def read_splats4d(path: Path) -> Splats4D:
    """Read an orbit4d 4D ``.ply``; InputError naming the file for anything else (a plain 3DGS ``.ply``, a corrupt
    or truncated file, a newer version, missing motion properties, non-finite values)."""
    path = Path(path)
    canonical = read_ply(path)  # the 3DGS part, with read_ply's checks and messages
    data = path.read_bytes()
    header = data[: data.find(b"end_header")].decode("ascii", errors="replace")
    comments = {line.split()[1]: line.split()[2:] for line in header.splitlines()
                if line.startswith("comment ") and len(line.split()) >= 2}  # fmt: skip
    magic = MAGIC.split()
    if comments.get(magic[0], [])[:1] != magic[1:]:
        raise InputError(f"{path} is a 3D splat file, not an orbit4d 4D one (no 'comment {MAGIC}' line): open it as a "
                         "3D scene, or pass a 4D scene's splats4d.ply")
    version = comments[magic[0]][1:2]
    if version != [str(VERSION)]:
        raise InputError(f"{path} is orbit4d 4D format version {' '.join(version) or '?'}, this orbit4d reads "
                         f"version {VERSION}: update orbit4d")
    basis = (comments.get("basis") or ["?"])[0]
    if basis not in BASES:
        raise InputError(f"{path}: unknown motion basis {basis!r} (known: {', '.join(BASES)}): the file is corrupt")
    try:
        times = np.array([float(v) for v in comments.get("times", [])])
    except ValueError:
        times = np.array([math.nan])
    if len(times) < 2 or not np.all(np.isfinite(times)) or not np.all(np.diff(times) > 0):
        raise InputError(f"{path}: its 'comment times' line does not hold 2 or more increasing times: the file "
                         "is corrupt; re-export it")
    return _with_motion(path, canonical, ply_vertices(data, path), times, basis)


def _with_motion(path: Path, canonical: Splats, vertices: np.ndarray, times: np.ndarray, basis: str) -> Splats4D:
    names = set(vertices.dtype.names)
    m = _count(names, "motion_{}_0")
    r = _count(names, "drot_{}_0")
    expected = motion_property_names(m, r)
    missing = [name for name in expected if name not in names]
    if missing or (basis == "bspline" and min(m, r) < 4):
        raise InputError(f"{path} lacks motion properties ({', '.join(missing[:3]) or 'fewer than 4 control points'}):"
                         " the file is corrupt or truncated; re-export it")
    n = len(vertices)

    def column(*keys: str) -> Tensor:
        return torch.from_numpy(np.stack([vertices[k].astype(np.float32) for k in keys], axis=-1).reshape(n, -1))

    motion = column(*expected[: 3 * m]).reshape(n, m, 3)
    drot = column(*expected[3 * m : 3 * m + 4 * r]).reshape(n, r, 4)
    t_center, t_rate = column("t_center")[:, 0], column("t_rate")[:, 0]
    if not all(torch.isfinite(t).all() for t in (motion, drot, t_center, t_rate)):
        raise InputError(f"{path} has non-finite motion values (NaN or Inf): the file is corrupt; re-export it")
    if (t_rate < 0).any():
        raise InputError(f"{path} has negative t_rate values (opacity growing without bound away from t_center): the "
                         "file is corrupt; re-export it")
    return Splats4D(canonical, motion, drot, t_center, t_rate, times=times, basis=basis)


def _count(names: set[str], pattern: str) -> int:
    count = 0
    while pattern.format(count) in names:
        count += 1
    return count


__all__ = [
    "BASES", "Splats4D", "basis_weights", "gaussians_at", "is_splats4d", "read_splats4d", "static_splats4d",
    "write_splats4d",
]  # fmt: skip
