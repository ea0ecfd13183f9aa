"""Training splats for surfaces (``orbit4d train --surface``): two regularisers from the surface-reconstruction
branch of Gaussian splatting, for meshes (``reconstruct.mesh``) that follow the object instead of its blobs.

- Flattening (PGSR, NeuSG): each Gaussian's smallest scale pulled towards zero, as a share of its middle one, so that
  Gaussians become discs lying on the surface and have a normal (their shortest axis).
- Depth-normal consistency (2DGS, PGSR): the normals the Gaussians composite to in a view should be those of the
  depth map they composite to (its finite differences), so that the discs line up into a surface instead of
  stacking at angles. It costs one more rasterization per step (normals as colours, with expected depth), so it
  starts after ``NORMAL_FROM`` of the steps, when the geometry has formed (2DGS: 7k of 30k).

Both act on the trainer's parameters (log-scales, quaternions, means) and add to its loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from reconstruct._torch_rasterizer import quat_to_rotmat

NORMAL_FROM = 0.3  # share of the steps after which depth-normal consistency starts
MIN_ALPHA = 0.5  # pixels (and their neighbours) less covered than this are left out of the normal loss


def flatten_loss(log_scales: Tensor) -> Tensor:
    """Mean over Gaussians of smallest / middle scale (0 for discs, 1 for balls); ``log_scales`` [N, 3]."""
    ordered = torch.sort(log_scales, dim=-1).values
    return torch.exp(ordered[:, 0] - ordered[:, 1]).mean()


def gaussian_normals(quats: Tensor, log_scales: Tensor) -> Tensor:
    """[N, 3] unit world-space normals: each Gaussian's shortest axis (``quats`` [N, 4] wxyz, ``log_scales`` [N, 3])."""
    rotation = quat_to_rotmat(quats)  # [N, 3, 3], columns are the axes
    shortest = torch.argmin(log_scales, dim=-1)
    return torch.gather(rotation, 2, shortest[:, None, None].expand(-1, 3, 1))[..., 0]


def depth_normals(depth: Tensor, K: Tensor) -> Tensor:
    """[H, W, 3] camera-space unit normals of a planar depth map [H, W] (K: [3, 3], OpenCV pixel centres), from
    central differences of the back-projected points, facing the camera; zero on the image border."""
    height, width = depth.shape
    rows = torch.arange(height, dtype=depth.dtype, device=depth.device)
    cols = torch.arange(width, dtype=depth.dtype, device=depth.device)
    x = (cols[None, :] - K[0, 2]) / K[0, 0]
    y = (rows[:, None] - K[1, 2]) / K[1, 1]
    points = torch.stack([x * depth, y * depth, depth], dim=-1)  # [H, W, 3]
    dx = points[1:-1, 2:] - points[1:-1, :-2]
    dy = points[2:, 1:-1] - points[:-2, 1:-1]
    normals = F.normalize(torch.cross(dy, dx, dim=-1), dim=-1)  # y down x right: dy x dx faces the camera (-z)
    return F.pad(normals, (0, 0, 1, 1, 1, 1))


def normal_consistency_loss(params: dict[str, Tensor], viewmat: Tensor, K: Tensor, width: int, height: int,
                            backend: str = "auto", antialiased: bool = False) -> Tensor:  # fmt: skip
    """Mean over well-covered pixels of 1 - (rendered normal . depth normal), alpha-weighted: the Gaussians' normals
    (facing the camera, in camera space) composited as colours, against the normals of the expected depth composited
    in the same pass. ``params``: the trainer's (means, quats, log-scales, opacity logits)."""
    from reconstruct.rasterize import rasterize

    means, quats, log_scales = params["means"], params["quats"], params["scales"]
    normals = gaussian_normals(quats, log_scales) @ viewmat[:3, :3].T  # camera space
    centres = means @ viewmat[:3, :3].T + viewmat[:3, 3]
    normals = torch.where(((normals * centres).sum(-1, keepdim=True) > 0), -normals, normals)  # facing the camera
    image, alpha, _ = rasterize(means, quats, torch.exp(log_scales), torch.sigmoid(params["opacities"]), normals,
                                viewmat[None], K[None], width, height, backend=backend, check_finite=False,
                                render_mode="RGB+ED",
                                rasterize_mode="antialiased" if antialiased else "classic")  # fmt: skip
    rendered = F.normalize(image[0, ..., :3], dim=-1)
    from_depth = depth_normals(image[0, ..., 3], K)
    coverage = alpha[0, ..., 0]
    covered = (coverage > MIN_ALPHA).float()
    weight = (F.max_pool2d(-covered[None, None], 3, stride=1, padding=1)[0, 0] * -1.0) * coverage.detach()
    weight[0, :], weight[-1, :], weight[:, 0], weight[:, -1] = 0.0, 0.0, 0.0, 0.0
    return (weight * (1.0 - (rendered * from_depth).sum(-1))).sum() / weight.sum().clamp_min(1.0)
