"""3D Gaussian splats in the parametrisation they are trained and stored in (gsplat's, 3DGS's ``.ply``).

A ``Splats`` is a frozen record of six tensors. Training turns it into a dict of ``nn.Parameter`` (``parameters()``)
so that gsplat's strategies can do their surgery on it, and back (``Splats.from_parameters``).

Two initialisations:

- ``splats_from_points``: one Gaussian per SfM point, as 3DGS does: isotropic scale = root mean square distance to
  the 3 nearest neighbours, colour to the SH DC term, opacity 0.1, identity rotation.
- ``random_splats``: for captures without points (generated orbits, synthetic renders). Points are uniform in the
  ball that every camera sees (``view_volume``): centred where the cameras' optical axes pass closest to each other,
  with the largest radius that fits inside every camera's field of view at its distance from that centre. Colours are
  uniform random, then the same rule as above for scales and opacities.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np
import torch
from torch import Tensor

from multiview.camera import Camera

SH_C0 = 0.28209479177387814  # Y_0^0: rgb = 0.5 + SH_C0 * f_dc, the rule 3DGS, gsplat and every viewer share
MAX_SH_DEGREE = 3
PARAMETER_NAMES = ("means", "quats", "scales", "opacities", "sh0", "shN")


def num_sh_bases(degree: int) -> int:
    """K = (degree + 1)^2 spherical-harmonic coefficients per colour channel."""
    return (degree + 1) ** 2


def rgb_to_sh0(rgb: Tensor) -> Tensor:
    """[..., 3] colour in [0, 1] -> [..., 3] SH DC coefficient."""
    return (rgb - 0.5) / SH_C0


def sh0_to_rgb(sh0: Tensor) -> Tensor:
    """[..., 3] SH DC coefficient -> [..., 3] colour (not clamped)."""
    return sh0 * SH_C0 + 0.5


@dataclass(frozen=True, eq=False)
class Splats:
    """N Gaussians; parameter names and encodings as gsplat's trainer and the 3DGS ``.ply`` use them."""

    means: Tensor  # [N, 3] centres, world coordinates
    quats: Tensor  # [N, 4] rotations wxyz, not necessarily unit length
    scales: Tensor  # [N, 3] log of the standard deviations along the rotated axes
    opacities: Tensor  # [N] logit of the opacity
    sh0: Tensor  # [N, 1, 3] SH DC term
    shN: Tensor  # [N, K-1, 3] higher SH terms, K = (degree + 1)^2; [N, 0, 3] for degree 0

    def __post_init__(self) -> None:
        n = self.means.shape[0] if self.means.dim() == 2 else -1
        expected = {
            "means": (n, 3),
            "quats": (n, 4),
            "scales": (n, 3),
            "opacities": (n,),
            "sh0": (n, 1, 3),
        }
        for name, shape in expected.items():
            value = getattr(self, name)
            if tuple(value.shape) != shape:
                raise ValueError(f"Splats.{name} must have shape {shape} (N from means), got {tuple(value.shape)}")
        bases = self.shN.shape[1] + 1 if self.shN.dim() == 3 else -1
        if self.shN.dim() != 3 or self.shN.shape[0] != n or self.shN.shape[2] != 3 or not _is_sh_count(bases):
            raise ValueError(
                f"Splats.shN must be [N, K-1, 3] with K = 1, 4, 9 or 16, got {tuple(self.shN.shape)} for N = {n}"
            )
        if len({v.dtype for v in self.tensors().values()}) != 1 or not self.means.is_floating_point():
            raise ValueError("Splats tensors must share one floating-point dtype")

    def __len__(self) -> int:
        return self.means.shape[0]

    @property
    def sh_degree(self) -> int:
        """Highest SH degree stored (0..3)."""
        return math.isqrt(self.shN.shape[1] + 1) - 1

    @property
    def device(self) -> torch.device:
        return self.means.device

    def tensors(self) -> dict[str, Tensor]:
        """The six tensors by name (gsplat's parameter names)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def parameters(self) -> dict[str, torch.nn.Parameter]:
        """Fresh trainable copies, keyed like gsplat's strategies expect (means, scales, quats, opacities, ...)."""
        return {name: torch.nn.Parameter(value.detach().clone()) for name, value in self.tensors().items()}

    @classmethod
    def from_parameters(cls, params: dict[str, Tensor]) -> Splats:
        """Detached copies of trained parameters (extra keys are ignored)."""
        return cls(**{name: params[name].detach().clone() for name in PARAMETER_NAMES})

    def to(self, device: torch.device | str) -> Splats:
        return Splats(**{name: value.to(device) for name, value in self.tensors().items()})

    def select(self, index: Tensor) -> Splats:
        """The splats at ``index`` (a boolean mask or integer indices)."""
        return Splats(**{name: value[index] for name, value in self.tensors().items()})

    def colors(self) -> Tensor:
        """[N, K, 3] all SH coefficients (DC first), what ``rasterize`` takes with ``sh_degree``."""
        return torch.cat([self.sh0, self.shN], dim=1)

    def rgb(self) -> Tensor:
        """[N, 3] view-independent colour in [0, 1] (the DC term only)."""
        return sh0_to_rgb(self.sh0[:, 0]).clamp(0.0, 1.0)

    def with_sh_degree(self, degree: int) -> Splats:
        """Same splats with room for SH up to ``degree`` (new terms zero, dropped terms discarded)."""
        if not 0 <= degree <= MAX_SH_DEGREE:
            raise ValueError(f"SH degree must be 0..{MAX_SH_DEGREE}, got {degree}")
        rest = num_sh_bases(degree) - 1
        shN = self.shN[:, :rest]
        if shN.shape[1] < rest:
            pad = shN.new_zeros(len(self), rest - shN.shape[1], 3)
            shN = torch.cat([shN, pad], dim=1)
        return Splats(self.means, self.quats, self.scales, self.opacities, self.sh0, shN)


def _is_sh_count(bases: int) -> bool:
    return bases in {num_sh_bases(d) for d in range(MAX_SH_DEGREE + 1)}


# --- initialisation --------------------------------------------------------------------------------------------


def splats_from_points(
    points: np.ndarray | Tensor,
    colors: np.ndarray | Tensor | None = None,
    sh_degree: int = MAX_SH_DEGREE,
    init_opacity: float = 0.1,
    init_scale: float = 1.0,
) -> Splats:
    """One Gaussian per point, as 3DGS initialises from SfM points.

    points: [P, 3] world coordinates; colors: [P, 3] uint8 sRGB (or floats in [0, 1]); None gives grey.
    Scale: ``init_scale`` x root mean square distance to the 3 nearest other points (isotropic), identity rotation.
    """
    xyz = torch.as_tensor(np.asarray(points, dtype=np.float32))
    if xyz.dim() != 2 or xyz.shape[1] != 3 or len(xyz) == 0:
        raise ValueError(f"points must be [P, 3] with P >= 1, got {tuple(xyz.shape)}")
    if colors is None:
        rgb = torch.full_like(xyz, 0.5)
    else:
        rgb_np = np.asarray(colors)
        rgb = torch.as_tensor(rgb_np.astype(np.float32) / (255.0 if rgb_np.dtype == np.uint8 else 1.0))
        if rgb.shape != xyz.shape:
            raise ValueError(f"colors must be [P, 3] like points {tuple(xyz.shape)}, got {tuple(rgb.shape)}")
    n = len(xyz)
    distance = nearest_neighbour_distance(xyz, k=3)
    scales = torch.log(distance * init_scale).unsqueeze(-1).repeat(1, 3)
    quats = torch.zeros(n, 4)
    quats[:, 0] = 1.0
    opacities = torch.full((n,), math.log(init_opacity / (1.0 - init_opacity)))
    sh0 = rgb_to_sh0(rgb).unsqueeze(1)
    shN = torch.zeros(n, num_sh_bases(sh_degree) - 1, 3)
    return Splats(xyz, quats, scales, opacities, sh0, shN)


def random_splats(
    cameras: Sequence[Camera],
    num: int,
    sh_degree: int = MAX_SH_DEGREE,
    seed: int = 0,
    init_opacity: float = 0.1,
) -> Splats:
    """``num`` Gaussians uniform in the ball every camera sees (``view_volume``), random colours."""
    if num < 1:
        raise ValueError(f"random_splats needs num >= 1, got {num}")
    center, radius = view_volume(cameras)
    generator = torch.Generator().manual_seed(seed)
    direction = torch.nn.functional.normalize(torch.randn(num, 3, generator=generator), dim=-1)
    distance = radius * torch.rand(num, 1, generator=generator) ** (1.0 / 3.0)  # uniform in volume
    points = torch.as_tensor(center, dtype=torch.float32) + direction * distance
    colors = torch.rand(num, 3, generator=generator)
    return splats_from_points(points, colors, sh_degree=sh_degree, init_opacity=init_opacity)


def nearest_neighbour_distance(points: Tensor, k: int = 3) -> Tensor:
    """[P] root mean square distance of each point to its ``k`` nearest other points (floored at 1e-7).

    scipy's KD-tree when scipy is importable (1M points in seconds); otherwise chunked brute force in torch
    (fine up to ~50k points).
    """
    points = points.detach().float().cpu()
    n = len(points)
    k_eff = min(k, n - 1)
    if k_eff < 1:
        return torch.ones(n)
    try:
        from scipy.spatial import cKDTree
    except ImportError:
        squared = torch.cat([
            torch.cdist(points[i : i + 2048], points).topk(k_eff + 1, largest=False).values[:, 1:] ** 2
            for i in range(0, n, 2048)
        ])
    else:
        distances, _ = cKDTree(points.numpy()).query(points.numpy(), k=k_eff + 1)
        squared = torch.as_tensor(distances[:, 1:], dtype=torch.float32) ** 2
    return squared.mean(dim=-1).sqrt().clamp_min(1e-7)


def view_volume(cameras: Sequence[Camera]) -> tuple[np.ndarray, float]:
    """(centre [3], radius): the ball the cameras look at.

    Centre: the point closest (least squares) to all optical axes; for (nearly) parallel axes, a point one camera
    spread ahead of the cameras' centroid. Radius: the largest ball about that centre inside every camera's field of
    view (narrower side) at its distance from the centre.
    """
    if not cameras:
        raise ValueError("view_volume needs at least one camera")
    centers = np.stack([c.center for c in cameras])
    forwards = np.stack([c.world_from_cam[:3, 2] for c in cameras])
    projector = np.eye(3)[None] - forwards[:, :, None] * forwards[:, None, :]  # [C, 3, 3] off-axis part
    A, b = projector.sum(0), np.einsum("cij,cj->i", projector, centers)
    singular_values = np.linalg.svd(A, compute_uv=False)
    if len(cameras) >= 2 and singular_values[-1] > 1e-3 * singular_values[0]:
        center = np.linalg.solve(A, b)
    else:
        ahead = max(camera_extent(cameras), 1.0)
        center = centers.mean(0) + forwards.mean(0) / max(np.linalg.norm(forwards.mean(0)), 1e-9) * ahead
    radii = []
    for camera, forward, position in zip(cameras, forwards, centers):
        depth = float(np.dot(center - position, forward))
        half_fov = min(math.atan2(camera.width / 2, camera.fx), math.atan2(camera.height / 2, camera.fy))
        radii.append(max(depth, 1e-6) * math.sin(half_fov))
    return center, float(max(min(radii), 1e-6))


def camera_extent(cameras: Sequence[Camera]) -> float:
    """3DGS's scene radius: 1.1 x the largest distance of a camera centre from their mean (1.0 for one camera)."""
    centers = np.stack([c.center for c in cameras])
    radius = float(np.linalg.norm(centers - centers.mean(0), axis=1).max()) * 1.1
    return radius if radius > 1e-6 else 1.0
