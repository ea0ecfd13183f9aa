"""Pure-PyTorch twin of gsplat 1.5.3's ``rasterization`` (unpacked): projection, SH, tile binning.

Numbers follow gsplat's CUDA kernels rather than its ``_torch_impl.py`` where the two differ (the CUDA projection
uses an opacity-aware extent and culls on ``opacity < 1/255``; ``_torch_impl`` does not), because the CUDA kernels
are what the ``gsplat`` backend runs and what the two backends are tested against.

All pixel coordinates in this module are gsplat's: the centre of pixel (i, j) is (j + 0.5, i + 0.5).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

ALPHA_THRESHOLD = 1.0 / 255.0  # a Gaussian with a smaller alpha at a pixel is skipped there
MAX_ALPHA = 0.999  # alpha is clamped to this
TRANSMITTANCE_STOP = 1e-4  # a pixel stops at the first Gaussian that would bring T to this or below (exclusive)
EPS2D = 0.3  # low-pass dilation added to the projected covariance's diagonal, in pixels^2
MAX_EXTENT = 3.33  # radius in standard deviations, before the opacity-aware bound
TILE_SIZE = 16  # gsplat's tile; the CPU compositor bins with its own (any size gives the same image, see below)
SH_C0 = 0.2820947917738781


@dataclass(frozen=True)
class Projected:
    """Gaussians seen by C cameras; entries with ``radii == 0`` are culled and carry zeros."""

    means2d: Tensor  # [C, N, 2] pixels (gsplat convention), differentiable
    conics: Tensor  # [C, N, 3] inverse 2D covariance (xx, xy, yy), differentiable
    depths: Tensor  # [C, N] camera z, differentiable
    radii: Tensor  # [C, N, 2] int32 half extents in pixels, 0 when culled
    compensations: Tensor | None = None  # [C, N] antialiasing's opacity factors (``project(antialiased=True)``)


def quat_to_rotmat(quats: Tensor) -> Tensor:
    """[N, 4] wxyz, any norm -> [N, 3, 3] rotation matrices."""
    w, x, y, z = F.normalize(quats, p=2, dim=-1).unbind(-1)
    R = torch.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    )  # fmt: skip
    return R.reshape(quats.shape[:-1] + (3, 3))


def project(
    means: Tensor,  # [N, 3]
    quats: Tensor,  # [N, 4]
    scales: Tensor,  # [N, 3]
    opacities: Tensor,  # [N]
    viewmats: Tensor,  # [C, 4, 4]
    Ks: Tensor,  # [C, 3, 3] gsplat convention (pixel centres at +0.5)
    width: int,
    height: int,
    near_plane: float,
    far_plane: float,
    antialiased: bool = False,
) -> Projected:
    """EWA projection with gsplat's culling (``projection_ewa_3dgs_fused_fwd``), differentiable by autograd.

    ``antialiased`` (gsplat's ``rasterize_mode="antialiased"``, Mip-Splatting's 2D filter): also the factor
    sqrt(det(cov2d) / det(cov2d + 0.3 I)) by which the opacity is multiplied, so that the dilation spreads a
    Gaussian's weight instead of adding to it; culling and extents use the multiplied opacity.

    Written entry by entry on [C, N] tensors rather than with [N, 3, 3] matrix products: batched 3x3 products are
    slow in PyTorch on the CPU, and the 2D covariance needs only V = J R_cam R(q) S, a 2x3 matrix per Gaussian, as
    V V^T (3x faster forward and backward at 80k Gaussians than the matrix form).
    """
    w, qx, qy, qz = F.normalize(quats, p=2, dim=-1).unbind(-1)
    rot = (  # R(q), row by row
        (1 - 2 * (qy * qy + qz * qz), 2 * (qx * qy - w * qz), 2 * (qx * qz + w * qy)),
        (2 * (qx * qy + w * qz), 1 - 2 * (qx * qx + qz * qz), 2 * (qy * qz - w * qx)),
        (2 * (qx * qz - w * qy), 2 * (qy * qz + w * qx), 1 - 2 * (qx * qx + qy * qy)),
    )
    sx, sy, sz = scales.unbind(-1)
    M = [[rot[i][0] * sx, rot[i][1] * sy, rot[i][2] * sz] for i in range(3)]  # R(q) S, [N] entries
    Rc = [[viewmats[:, i, j, None] for j in range(3)] for i in range(3)]  # [C, 1] entries of the view rotation
    mx, my, mz = means.unbind(-1)
    x, y, z = (Rc[i][0] * mx + Rc[i][1] * my + Rc[i][2] * mz + viewmats[:, i, 3, None] for i in range(3))
    W = [[Rc[i][0] * M[0][j] + Rc[i][1] * M[1][j] + Rc[i][2] * M[2][j] for j in range(3)] for i in range(3)]

    depths = z
    in_depth = (z >= near_plane) & (z <= far_plane)
    z = torch.where(in_depth, z, torch.ones_like(z))  # keeps culled entries finite, also in backward
    fx, fy = Ks[:, 0, 0, None], Ks[:, 1, 1, None]
    cx, cy = Ks[:, 0, 2, None], Ks[:, 1, 2, None]
    # The Jacobian is taken at a point clamped to 1.3x the field of view, as gsplat (and 3DGS) do.
    lim_x_pos = (width - cx) / fx + 0.3 * (0.5 * width / fx)
    lim_x_neg = cx / fx + 0.3 * (0.5 * width / fx)
    lim_y_pos = (height - cy) / fy + 0.3 * (0.5 * height / fy)
    lim_y_neg = cy / fy + 0.3 * (0.5 * height / fy)
    tx = z * torch.minimum(torch.maximum(x / z, -lim_x_neg), lim_x_pos)
    ty = z * torch.minimum(torch.maximum(y / z, -lim_y_neg), lim_y_pos)
    j00, j02 = fx / z, -fx * tx / (z * z)  # J = [[j00, 0, j02], [0, j11, j12]]
    j11, j12 = fy / z, -fy * ty / (z * z)
    V0 = [j00 * W[0][k] + j02 * W[2][k] for k in range(3)]
    V1 = [j11 * W[1][k] + j12 * W[2][k] for k in range(3)]
    means2d = torch.stack([fx * x / z + cx, fy * y / z + cy], dim=-1)

    a = V0[0] * V0[0] + V0[1] * V0[1] + V0[2] * V0[2] + EPS2D
    b = V0[0] * V1[0] + V0[1] * V1[1] + V0[2] * V1[2]
    c = V1[0] * V1[0] + V1[1] * V1[1] + V1[2] * V1[2] + EPS2D
    det = a * c - b * b
    valid = in_depth & (det > 0)
    det = torch.where(valid, det, torch.ones_like(det))
    conics = torch.stack([c / det, -b / det, a / det], dim=-1)
    compensations = None
    if antialiased:
        ratio = ((a - EPS2D) * (c - EPS2D) - b * b) / det  # det of the covariance before the dilation / after
        positive = valid & (ratio > 0)
        compensations = torch.where(positive, torch.where(positive, ratio, 1.0).sqrt(), 0.0)  # no NaN gradient at 0

    with torch.no_grad():
        opacity = opacities.detach().expand_as(z)
        if compensations is not None:
            opacity = opacity * compensations.detach()
        valid = valid & (opacity >= ALPHA_THRESHOLD)
        # Opacity-aware bound (gsplat 1.5 / arXiv 2402.00525 B.2): beyond it alpha < 1/255 anyway.
        ratio = (opacity / ALPHA_THRESHOLD).clamp_min(1.0)
        extent = torch.sqrt(2.0 * torch.log(ratio)).clamp_max(MAX_EXTENT)
        rx = torch.ceil(extent * torch.sqrt(a.detach().clamp_min(0)))
        ry = torch.ceil(extent * torch.sqrt(c.detach().clamp_min(0)))
        valid = valid & ((rx > 0) | (ry > 0))
        mx, my = means2d.detach().unbind(-1)
        valid = valid & (mx + rx > 0) & (mx - rx < width) & (my + ry > 0) & (my - ry < height)
        radii = torch.where(valid[..., None], torch.stack([rx, ry], dim=-1), 0).to(torch.int32)

    keep = valid[..., None]
    return Projected(
        means2d=torch.where(keep, means2d, 0),
        conics=torch.where(keep, conics, 0),
        depths=depths,
        radii=radii,
        compensations=None if compensations is None else torch.where(valid, compensations, 0),
    )


def eval_sh(sh_degree: int, dirs: Tensor, coeffs: Tensor) -> Tensor:
    """gsplat's real SH (Sloan's fast form) at [..., 3] directions of any norm, [..., K, 3] coefficients -> [..., 3].

    Returns the raw sum; the caller adds 0.5 and clamps at 0 as gsplat's ``rasterization`` does.
    """
    x, y, z = F.normalize(dirs, p=2, dim=-1).unbind(-1)
    bases = [torch.full_like(x, SH_C0)]
    if sh_degree >= 1:
        bases += [-0.48860251190292 * y, 0.48860251190292 * z, -0.48860251190292 * x]
    if sh_degree >= 2:
        z2 = z * z
        c1, s1 = x * x - y * y, 2 * x * y
        bases += [
            0.5462742152960395 * s1,
            -1.092548430592079 * z * y,
            0.9461746957575601 * z2 - 0.3153915652525201,
            -1.092548430592079 * z * x,
            0.5462742152960395 * c1,
        ]
    if sh_degree >= 3:
        tmp_c = -2.285228997322329 * z2 + 0.4570457994644658
        c2, s2 = x * c1 - y * s1, x * s1 + y * c1
        bases += [
            -0.5900435899266435 * s2,
            1.445305721320277 * z * s1,
            tmp_c * y,
            z * (1.865881662950577 * z2 - 1.119528997770346),
            tmp_c * x,
            1.445305721320277 * z * c1,
            -0.5900435899266435 * c2,
        ]
    if sh_degree >= 4:
        tmp_d = z * (-4.683325804901025 * z2 + 2.007139630671868)
        tmp_c = 3.31161143515146 * z2 - 0.47308734787878
        c3, s3 = x * c2 - y * s2, x * s2 + y * c2
        bases += [
            0.6258357354491763 * s3,
            -1.770130769779931 * z * s2,
            tmp_c * s1,
            tmp_d * y,
            1.984313483298443 * z2 * (1.865881662950577 * z2 - 1.119528997770346)
            - 1.006230589874905 * (0.9461746957575601 * z2 - 0.3153915652525201),
            tmp_d * x,
            tmp_c * c1,
            -1.770130769779931 * z * c2,
            0.6258357354491763 * c3,
        ]
    if sh_degree > 4:
        raise ValueError(f"sh_degree must be at most 4 (gsplat's limit), got {sh_degree}")
    basis = torch.stack(bases, dim=-1)  # [..., (d+1)^2]
    return torch.einsum("...k,...kc->...c", basis, coeffs[..., : basis.shape[-1], :])


def view_colors(
    colors: Tensor, means: Tensor, viewmats: Tensor, radii: Tensor, sh_degree: int | None
) -> Tensor:
    """Per-camera RGB [C, N, 3]: ``colors`` as given, or SH seen from each camera centre, +0.5, clamped at 0."""
    C = viewmats.shape[0]
    if sh_degree is None:
        return colors.expand(C, *colors.shape)
    campos = torch.linalg.inv(viewmats)[:, :3, 3]  # [C, 3]
    dirs = means[None] - campos[:, None]  # [C, N, 3]
    rgb = eval_sh(sh_degree, dirs, colors[None])
    rgb = torch.where((radii > 0).all(-1, keepdim=True), rgb, 0)  # gsplat masks culled entries to 0
    return torch.clamp_min(rgb + 0.5, 0.0)


@dataclass(frozen=True)
class Intersections:
    """Gaussian-tile pairs sorted by (camera, tile, depth), as gsplat's ``isect_tiles`` + ``isect_offset_encode``."""

    tiles_per_gauss: Tensor  # [C, N] int32
    isect_ids: Tensor  # [M] int64: (camera << (32 + tile bits)) | (tile << 32) | depth bits
    flatten_ids: Tensor  # [M] int32 index into C * N
    isect_offsets: Tensor  # [C, tile_height, tile_width] int32 start of each tile's range
    tile_size: int
    tile_width: int
    tile_height: int


@torch.no_grad()
def intersect_tiles(
    means2d: Tensor, radii: Tensor, depths: Tensor, width: int, height: int, tile_size: int = TILE_SIZE
) -> Intersections:
    """Every (Gaussian, tile) pair whose tile meets the Gaussian's box [mean - radius, mean + radius].

    Outside that box a Gaussian's alpha is below 1/255 (the radius is ceil(extent * sigma) with the opacity-aware
    extent sqrt(2 log(255 o)), always < 3.33 for o <= 1), so the tile size changes which pairs are tried, not the
    image: gsplat's 16 px tiles and smaller ones render the same.
    """
    C, N = radii.shape[:2]
    device = means2d.device
    tile_width = math.ceil(width / tile_size)
    tile_height = math.ceil(height / tile_size)
    tiles_per_camera = tile_width * tile_height
    tmin, tmax = tile_ranges(means2d, radii, tile_width, tile_height, tile_size)
    spans = (tmax - tmin).clamp_min(0)
    visible = (radii > 0).all(-1)
    counts = torch.where(visible, spans[..., 0] * spans[..., 1], 0)  # [C, N]

    # Gaussians in (camera, float32 depth, index) order, gsplat's sort key; a stable sort by tile keeps it.
    depth32 = depths.detach().to(torch.float32)
    order = torch.sort(torch.where(visible, depth32, torch.inf), dim=1, stable=True).indices
    order = (order + N * torch.arange(C, device=device)[:, None]).reshape(-1)
    n = counts.reshape(-1)[order]
    # Per Gaussian, repeated once per tile it touches (int32 and few temporaries: these arrays are the big ones).
    first_tile = tmin[..., 1] * tile_width + tmin[..., 0] + tiles_per_camera * torch.arange(C, device=device)[:, None]
    repeat = torch.repeat_interleave(torch.arange(order.numel(), device=device, dtype=torch.int32), n)
    local = torch.arange(repeat.numel(), device=device, dtype=torch.int32)
    local -= (torch.cumsum(n, 0) - n).to(torch.int32)[repeat]
    span_x = spans[..., 0].reshape(-1)[order].to(torch.int32).clamp_min_(1)[repeat]
    row = torch.div(local, span_x, rounding_mode="floor")
    tile = first_tile.reshape(-1)[order].to(torch.int32)[repeat]
    tile += local
    tile += row * (tile_width - span_x)
    tile, perm = torch.sort(tile, stable=True)
    flatten_ids = order[repeat[perm]]

    per_tile = torch.bincount(tile, minlength=C * tiles_per_camera)
    offsets = (torch.cumsum(per_tile, 0) - per_tile).reshape(C, tile_height, tile_width)
    # gsplat's 64-bit keys: camera | tile | float32 depth bits
    tile_bits = tiles_per_camera.bit_length()
    camera = torch.div(tile, tiles_per_camera, rounding_mode="floor")
    key = ((camera << tile_bits) | (tile - camera * tiles_per_camera)).to(torch.int64) << 32
    isect_ids = key | (depth32.reshape(-1)[flatten_ids].view(torch.int32).to(torch.int64) & 0xFFFFFFFF)
    return Intersections(
        tiles_per_gauss=counts.to(torch.int32),
        isect_ids=isect_ids,
        flatten_ids=flatten_ids.to(torch.int32),
        isect_offsets=offsets.to(torch.int32),
        tile_size=tile_size,
        tile_width=tile_width,
        tile_height=tile_height,
    )


def tile_ranges(
    means2d: Tensor, radii: Tensor, tile_width: int, tile_height: int, tile_size: int
) -> tuple[Tensor, Tensor]:
    """[C, N, 2] inclusive min and exclusive max tile (x, y) of each Gaussian's box, as gsplat's kernel clamps them."""
    centre = means2d.detach().to(torch.float32) / tile_size
    extent = radii.to(torch.float32) / tile_size
    limit = torch.tensor([tile_width, tile_height], device=means2d.device)
    tmin = torch.minimum(torch.floor(centre - extent).clamp_min(0).to(torch.int64), limit)
    tmax = torch.minimum(torch.ceil(centre + extent).clamp_min(0).to(torch.int64), limit)
    return tmin, tmax
