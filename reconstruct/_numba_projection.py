"""EWA projection and SH colours compiled with numba, with hand-written backward passes: the numba backend's
``_torch_rasterizer.project`` and ``view_colors``.

Written entry by entry in PyTorch, the projection is about 150 elementwise operations forward and 300 in autograd's
backward, each a pass over [C, N] floats and a dispatch: at 80k Gaussians projection and SH colours took as long as
compositing. Here one loop over the Gaussians does each, with every intermediate in registers; the backward passes
recompute the forward quantities they need rather than storing them.

Values and gradients are the twin's (hence gsplat's), down to which gradients pass the Jacobian's field-of-view clamp
and the colour clamp; tests compare both with the twin in float64. The arithmetic is float64 inside the kernels
(scalar code: no slower than float32), inputs and outputs float32.
"""

from __future__ import annotations

import math

import numba
import numpy as np
import torch
from torch import Tensor

from reconstruct._numba_kernels import JIT, _array, _in_workers
from reconstruct._torch_rasterizer import ALPHA_THRESHOLD, EPS2D, MAX_EXTENT, SH_C0, Projected

NORMALIZE_EPS = 1e-12  # F.normalize's


def project(means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor, viewmats: Tensor, Ks: Tensor,
            width: int, height: int, near_plane: float, far_plane: float, antialiased: bool = False) -> Projected:
    """``_torch_rasterizer.project`` for float32 CPU tensors, antialiasing's compensations included; differentiable
    in means, quats, scales and the cameras (``viewmats``, for pose refinement)."""
    means2d, conics, depths, radii, compensations = _Project.apply(
        means, quats, scales, opacities, viewmats, Ks, width, height, near_plane, far_plane, antialiased
    )
    return Projected(means2d=means2d, conics=conics, depths=depths, radii=radii,
                     compensations=compensations if antialiased else None)  # fmt: skip


def view_colors(colors: Tensor, means: Tensor, viewmats: Tensor, radii: Tensor, sh_degree: int | None) -> Tensor:
    """``_torch_rasterizer.view_colors`` for float32 CPU tensors (SH degree at most 3); differentiable in the
    cameras too (through their centres)."""
    if sh_degree is None:
        return colors.expand(viewmats.shape[0], *colors.shape)
    campos = torch.linalg.inv(viewmats)[:, :3, 3]  # [C, 3]
    return _ViewColors.apply(colors, means, campos, radii, sh_degree)


def _chunks(kernel, n: int) -> None:
    """``kernel(lo, hi)`` over contiguous ranges of 0 .. n - 1, one per worker thread."""
    _in_workers(lambda first, step: kernel(first * n // step, (first + 1) * n // step))


# --- projection ------------------------------------------------------------------------------------------------


class _Project(torch.autograd.Function):
    @staticmethod
    def forward(ctx, means, quats, scales, opacities, viewmats, Ks, width, height, near, far, antialiased):
        C, N = viewmats.shape[0], means.shape[0]
        means2d = np.zeros((C, N, 2), np.float32)
        conics = np.zeros((C, N, 3), np.float32)
        depths = np.zeros((C, N), np.float32)
        radii = np.zeros((C, N, 2), np.int32)
        compensations = np.zeros((C, N), np.float32)  # stays zero unless antialiased
        inputs = (_array(means), _array(quats), _array(scales), _array(opacities), _array(viewmats), _array(Ks))
        _chunks(lambda lo, hi: _project_forward(*inputs, width, height, near, far, antialiased, means2d, conics,
                                                depths, radii, compensations, lo, hi), N)  # fmt: skip
        radii = torch.from_numpy(radii)
        ctx.mark_non_differentiable(radii)
        ctx.save_for_backward(means, quats, scales, viewmats, Ks, radii)
        ctx.size = (width, height, near, far)
        return (torch.from_numpy(means2d), torch.from_numpy(conics), torch.from_numpy(depths), radii,
                torch.from_numpy(compensations))  # fmt: skip

    @staticmethod
    def backward(ctx, v_means2d, v_conics, v_depths, _v_radii, v_compensations):
        means, quats, scales, viewmats, Ks, radii = ctx.saved_tensors
        N = means.shape[0]
        v_means = np.zeros((N, 3), np.float32)
        v_quats = np.zeros((N, 4), np.float32)
        v_scales = np.zeros((N, 3), np.float32)
        # each Gaussian's share of d/d viewmats[:, :3] (summed below: no races, the same sums every run)
        with_cameras = ctx.needs_input_grad[4]
        v_cameras = np.zeros((*radii.shape[:2], 3, 4) if with_cameras else (0, 0, 3, 4), np.float32)
        args = (_array(means), _array(quats), _array(scales), _array(viewmats), _array(Ks), radii.numpy(),
                *ctx.size, _grad(v_means2d, radii.shape), _grad(v_conics, (*radii.shape[:2], 3)),
                _grad(v_depths, radii.shape[:2]), _grad(v_compensations, radii.shape[:2]), v_means, v_quats,
                v_scales, with_cameras, v_cameras)  # fmt: skip
        _chunks(lambda lo, hi: _project_backward(*args, lo, hi), N)
        v_viewmats = None
        if with_cameras:
            v_viewmats = torch.zeros_like(viewmats)
            v_viewmats[:, :3] = torch.from_numpy(v_cameras).sum(1, dtype=torch.float64).to(viewmats.dtype)
        return (torch.from_numpy(v_means), torch.from_numpy(v_quats), torch.from_numpy(v_scales),
                None, v_viewmats, None, None, None, None, None, None)  # fmt: skip


def _grad(grad: Tensor | None, shape: tuple) -> np.ndarray:
    return np.zeros(shape, np.float32) if grad is None else _array(grad)


@numba.njit(**JIT, inline="always")
def _rotation(q):
    """R(q / |q|) as a tuple of 9 (row-major), the normalized quaternion, and 1 / max(|q|, eps)."""
    inv = 1.0 / max(math.sqrt(q[0] * q[0] + q[1] * q[1] + q[2] * q[2] + q[3] * q[3]), NORMALIZE_EPS)
    w, x, y, z = q[0] * inv, q[1] * inv, q[2] * inv, q[3] * inv
    R = (
        1.0 - 2.0 * (y * y + z * z), 2.0 * (x * y - w * z), 2.0 * (x * z + w * y),
        2.0 * (x * y + w * z), 1.0 - 2.0 * (x * x + z * z), 2.0 * (y * z - w * x),
        2.0 * (x * z - w * y), 2.0 * (y * z + w * x), 1.0 - 2.0 * (x * x + y * y),
    )  # fmt: skip
    return R, (w, x, y, z), inv


@numba.njit(**JIT, inline="always")
def _camera_terms(m, M, vm, K, width, height, near, far, W):
    """Camera-space mean, whether its depth is in range, the clamped Jacobian and V = J W (W = R_cam R(q) S, written
    to the [3, 3] scratch ``W``), as the twin computes them."""
    px = vm[0, 0] * m[0] + vm[0, 1] * m[1] + vm[0, 2] * m[2] + vm[0, 3]
    py = vm[1, 0] * m[0] + vm[1, 1] * m[1] + vm[1, 2] * m[2] + vm[1, 3]
    pz = vm[2, 0] * m[0] + vm[2, 1] * m[1] + vm[2, 2] * m[2] + vm[2, 3]
    for r in range(3):
        for k in range(3):
            W[r, k] = vm[r, 0] * M[0, k] + vm[r, 1] * M[1, k] + vm[r, 2] * M[2, k]
    in_depth = near <= pz <= far
    zz = pz if in_depth else 1.0
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    lim_x_pos = (width - cx) / fx + 0.3 * (0.5 * width / fx)
    lim_x_neg = cx / fx + 0.3 * (0.5 * width / fx)
    lim_y_pos = (height - cy) / fy + 0.3 * (0.5 * height / fy)
    lim_y_neg = cy / fy + 0.3 * (0.5 * height / fy)
    ux, uy = px / zz, py / zz
    cux, cuy = min(max(ux, -lim_x_neg), lim_x_pos), min(max(uy, -lim_y_neg), lim_y_pos)
    tx, ty = zz * cux, zz * cuy
    j00, j02 = fx / zz, -fx * tx / (zz * zz)
    j11, j12 = fy / zz, -fy * ty / (zz * zz)
    v00, v01, v02 = j00 * W[0, 0] + j02 * W[2, 0], j00 * W[0, 1] + j02 * W[2, 1], j00 * W[0, 2] + j02 * W[2, 2]
    v10, v11, v12 = j11 * W[1, 0] + j12 * W[2, 0], j11 * W[1, 1] + j12 * W[2, 1], j11 * W[1, 2] + j12 * W[2, 2]
    a = v00 * v00 + v01 * v01 + v02 * v02 + EPS2D
    b = v00 * v10 + v01 * v11 + v02 * v12
    c = v10 * v10 + v11 * v11 + v12 * v12 + EPS2D
    clamped_x = not (-lim_x_neg <= ux <= lim_x_pos)
    clamped_y = not (-lim_y_neg <= uy <= lim_y_pos)
    return (px, py, pz, in_depth, zz, cux, cuy, tx, ty, clamped_x, clamped_y, j00, j02, j11, j12,
            (v00, v01, v02), (v10, v11, v12), a, b, c)  # fmt: skip


@numba.njit(**JIT, nogil=True)
def _project_forward(means, quats, scales, opacities, viewmats, Ks, width, height, near, far, antialiased,
                     means2d, conics, depths, radii, compensations, lo, hi):  # fmt: skip
    C = viewmats.shape[0]
    M, W = np.empty((3, 3)), np.empty((3, 3))
    for i in range(lo, hi):
        R, _, _ = _rotation(quats[i])
        for r in range(3):
            for k in range(3):
                M[r, k] = R[3 * r + k] * scales[i, k]
        opacity = opacities[i]
        for cam in range(C):
            K = Ks[cam]
            px, py, pz, in_depth, zz, _, _, _, _, _, _, _, _, _, _, _, _, a, b, c = _camera_terms(
                means[i], M, viewmats[cam], K, width, height, near, far, W)
            depths[cam, i] = pz
            det = a * c - b * b
            if not (in_depth and det > 0.0):
                continue
            compensation = _compensation(a, b, c, det) if antialiased else 1.0
            seen = opacity * compensation  # antialiased: culling and extent from the compensated opacity, as gsplat
            if not seen >= ALPHA_THRESHOLD:
                continue
            mx, my = K[0, 0] * px / zz + K[0, 2], K[1, 1] * py / zz + K[1, 2]
            # Opacity-aware bound (gsplat 1.5 / arXiv 2402.00525 B.2): beyond it alpha < 1/255 anyway.
            extent = min(math.sqrt(2.0 * math.log(max(seen / ALPHA_THRESHOLD, 1.0))), MAX_EXTENT)
            rx, ry = math.ceil(extent * math.sqrt(max(a, 0.0))), math.ceil(extent * math.sqrt(max(c, 0.0)))
            if not ((rx > 0 or ry > 0) and mx + rx > 0 and mx - rx < width and my + ry > 0 and my - ry < height):
                continue
            means2d[cam, i, 0], means2d[cam, i, 1] = mx, my
            conics[cam, i, 0], conics[cam, i, 1], conics[cam, i, 2] = c / det, -b / det, a / det
            radii[cam, i, 0], radii[cam, i, 1] = rx, ry
            if antialiased:
                compensations[cam, i] = compensation


@numba.njit(**JIT, inline="always")
def _compensation(a, b, c, det):
    """Antialiasing's opacity factor sqrt(det(cov2d) / det(cov2d + eps I)), given the dilated entries and det."""
    ratio = ((a - EPS2D) * (c - EPS2D) - b * b) / det
    return math.sqrt(ratio) if ratio > 0.0 else 0.0


@numba.njit(**JIT, nogil=True)
def _project_backward(means, quats, scales, viewmats, Ks, radii, width, height, near, far, v_means2d, v_conics,
                      v_depths, v_compensations, v_means, v_quats, v_scales, with_cameras, v_cameras,
                      lo, hi):  # fmt: skip
    C = viewmats.shape[0]
    M, W, vM = np.empty((3, 3)), np.empty((3, 3)), np.empty((3, 3))
    vW = np.empty((3, 3))
    for i in range(lo, hi):
        R, qn, inv = _rotation(quats[i])
        for r in range(3):
            for k in range(3):
                M[r, k] = R[3 * r + k] * scales[i, k]
                vM[r, k] = 0.0
        gm0 = gm1 = gm2 = 0.0
        for cam in range(C):
            vm, K = viewmats[cam], Ks[cam]
            vpz = np.float64(v_depths[cam, i])  # depths are the raw camera z, culled or not
            if radii[cam, i, 0] == 0 and radii[cam, i, 1] == 0:  # culled: means2d and conics are constant zeros
                gm0 += vm[2, 0] * vpz
                gm1 += vm[2, 1] * vpz
                gm2 += vm[2, 2] * vpz
                if with_cameras:  # pz = viewmat[2] . (mean, 1)
                    for k in range(3):
                        v_cameras[cam, i, 2, k] = vpz * means[i, k]
                    v_cameras[cam, i, 2, 3] = vpz
                continue
            (px, py, pz, in_depth, zz, cux, cuy, tx, ty, clamped_x, clamped_y, j00, j02, j11, j12,
             V0, V1, a, b, c) = _camera_terms(means[i], M, vm, K, width, height, near, far, W)  # fmt: skip
            fx, fy = K[0, 0], K[1, 1]
            # conic = (c, -b, a) / det, det = a c - b^2
            det = a * c - b * b
            id1 = 1.0 / det
            id2 = id1 * id1
            g0, g1, g2 = v_conics[cam, i, 0], v_conics[cam, i, 1], v_conics[cam, i, 2]
            ga = -g0 * c * c * id2 + g1 * b * c * id2 + g2 * (id1 - a * c * id2)
            gb = 2.0 * g0 * b * c * id2 - g1 * (id1 + 2.0 * b * b * id2) + 2.0 * g2 * a * b * id2
            gc = g0 * (id1 - a * c * id2) + g1 * a * b * id2 - g2 * a * a * id2
            vcomp = np.float64(v_compensations[cam, i])
            compensation = _compensation(a, b, c, det) if vcomp != 0.0 else 0.0
            if compensation > 0.0:  # d sqrt(r) with r = ((a - eps)(c - eps) - b^2) / det: each dr / 2 sqrt(r)
                ratio, half = compensation * compensation, 0.5 * vcomp / compensation * id1
                ga += half * (c - EPS2D - ratio * c)
                gb += half * (-2.0 * b * (1.0 - ratio))
                gc += half * (a - EPS2D - ratio * a)
            # a = V0.V0 + eps, b = V0.V1, c = V1.V1 + eps; V0 = j00 W0 + j02 W2, V1 = j11 W1 + j12 W2
            gj00 = gj02 = gj11 = gj12 = 0.0
            for k in range(3):
                gv0 = 2.0 * ga * V0[k] + gb * V1[k]
                gv1 = gb * V0[k] + 2.0 * gc * V1[k]
                vW[0, k] = j00 * gv0
                vW[1, k] = j11 * gv1
                vW[2, k] = j02 * gv0 + j12 * gv1
                gj00 += gv0 * W[0, k]
                gj02 += gv0 * W[2, k]
                gj11 += gv1 * W[1, k]
                gj12 += gv1 * W[2, k]
            z2 = zz * zz
            gzz = (-fx * gj00 - fy * gj11) / z2 + 2.0 * (fx * tx * gj02 + fy * ty * gj12) / (z2 * zz)
            gtx, gty = -fx * gj02 / z2, -fy * gj12 / z2
            gzz += gtx * cux + gty * cuy  # t = zz * clamp(p / zz)
            gux = 0.0 if clamped_x else gtx * zz
            guy = 0.0 if clamped_y else gty * zz
            vmx, vmy = v_means2d[cam, i, 0], v_means2d[cam, i, 1]
            gpx = gux / zz + vmx * fx / zz
            gpy = guy / zz + vmy * fy / zz
            gzz -= (gux * px + guy * py + vmx * fx * px + vmy * fy * py) / z2
            gpz = vpz + (gzz if in_depth else 0.0)
            gm0 += vm[0, 0] * gpx + vm[1, 0] * gpy + vm[2, 0] * gpz
            gm1 += vm[0, 1] * gpx + vm[1, 1] * gpy + vm[2, 1] * gpz
            gm2 += vm[0, 2] * gpx + vm[1, 2] * gpy + vm[2, 2] * gpz
            for r in range(3):  # W = R_cam M
                for k in range(3):
                    vM[r, k] += vm[0, r] * vW[0, k] + vm[1, r] * vW[1, k] + vm[2, r] * vW[2, k]
            if with_cameras:  # p = R_cam mean + t_cam, W = R_cam M
                for r, gp in ((0, gpx), (1, gpy), (2, gpz)):
                    for k in range(3):
                        v_cameras[cam, i, r, k] = (gp * means[i, k] + vW[r, 0] * M[k, 0] + vW[r, 1] * M[k, 1]
                                                   + vW[r, 2] * M[k, 2])  # fmt: skip
                    v_cameras[cam, i, r, 3] = gp
        v_means[i, 0], v_means[i, 1], v_means[i, 2] = gm0, gm1, gm2
        for k in range(3):  # M = R diag(s)
            v_scales[i, k] = vM[0, k] * R[k] + vM[1, k] * R[3 + k] + vM[2, k] * R[6 + k]
        s0, s1, s2 = scales[i, 0], scales[i, 1], scales[i, 2]
        r00, r01, r02 = vM[0, 0] * s0, vM[0, 1] * s1, vM[0, 2] * s2
        r10, r11, r12 = vM[1, 0] * s0, vM[1, 1] * s1, vM[1, 2] * s2
        r20, r21, r22 = vM[2, 0] * s0, vM[2, 1] * s1, vM[2, 2] * s2
        w, x, y, z = qn
        gw = 2.0 * (-z * r01 + y * r02 + z * r10 - x * r12 - y * r20 + x * r21)
        gx = 2.0 * (y * r01 + z * r02 + y * r10 - 2.0 * x * r11 - w * r12 + z * r20 + w * r21 - 2.0 * x * r22)
        gy = 2.0 * (-2.0 * y * r00 + x * r01 + w * r02 + x * r10 + z * r12 - w * r20 + z * r21 - 2.0 * y * r22)
        gz = 2.0 * (-2.0 * z * r00 - w * r01 + x * r02 + w * r10 - 2.0 * z * r11 + y * r12 + x * r20 + y * r21)
        # q / max(|q|, eps): the component along q drops out (when |q| > eps)
        dot = (w * gw + x * gx + y * gy + z * gz) if inv < 1.0 / NORMALIZE_EPS else 0.0
        v_quats[i, 0], v_quats[i, 1] = (gw - w * dot) * inv, (gx - x * dot) * inv
        v_quats[i, 2], v_quats[i, 3] = (gy - y * dot) * inv, (gz - z * dot) * inv


# --- SH colours ------------------------------------------------------------------------------------------------

C1 = 0.48860251190292
C2 = (0.5462742152960395, -1.092548430592079, 0.9461746957575601, -0.3153915652525201)
C3 = (-0.5900435899266435, 1.445305721320277, -2.285228997322329, 0.4570457994644658, 1.865881662950577,
      -1.119528997770346)  # fmt: skip
MAX_SH_DEGREE = 3


class _ViewColors(torch.autograd.Function):
    @staticmethod
    def forward(ctx, colors, means, campos, radii, sh_degree):
        C, N = radii.shape[:2]
        rgb = np.empty((C, N, 3), np.float32)
        inputs = (_array(colors), _array(means), _array(campos), radii.numpy(), sh_degree)
        _chunks(lambda lo, hi: _colors_forward(*inputs, rgb, lo, hi), N)
        rgb = torch.from_numpy(rgb)
        ctx.save_for_backward(colors, means, campos, radii, rgb)
        ctx.sh_degree = sh_degree
        return rgb

    @staticmethod
    def backward(ctx, v_rgb):
        colors, means, campos, radii, rgb = ctx.saved_tensors
        N = means.shape[0]
        v_colors = np.zeros(colors.shape, np.float32)
        v_means = np.zeros((N, 3), np.float32)
        # d/d(mean - campos) per camera and Gaussian, when the cameras are optimised: summed into d/d campos below
        with_cameras = ctx.needs_input_grad[2]
        v_dirs = np.zeros((*radii.shape[:2], 3) if with_cameras else (0, 0, 3), np.float32)
        args = (_array(colors), _array(means), _array(campos), radii.numpy(), ctx.sh_degree, rgb.numpy(),
                _array(v_rgb), v_colors, v_means, with_cameras, v_dirs)  # fmt: skip
        _chunks(lambda lo, hi: _colors_backward(*args, lo, hi), N)
        v_campos = -torch.from_numpy(v_dirs).sum(1, dtype=torch.float64).to(campos.dtype) if with_cameras else None
        return torch.from_numpy(v_colors), torch.from_numpy(v_means), v_campos, None, None


@numba.njit(**JIT, inline="always")
def _direction(mean, campos):
    """The unit direction from the camera centre to the mean, and 1 / max(|d|, eps)."""
    dx, dy, dz = mean[0] - campos[0], mean[1] - campos[1], mean[2] - campos[2]
    inv = 1.0 / max(math.sqrt(dx * dx + dy * dy + dz * dz), NORMALIZE_EPS)
    return dx * inv, dy * inv, dz * inv, inv


@numba.njit(**JIT, inline="always")
def _sh_basis(degree, x, y, z, basis):
    """gsplat's real SH basis (as ``_torch_rasterizer.eval_sh``) into ``basis[:(degree + 1)^2]``."""
    basis[0] = SH_C0
    if degree >= 1:
        basis[1], basis[2], basis[3] = -C1 * y, C1 * z, -C1 * x
    if degree >= 2:
        z2, c1, s1 = z * z, x * x - y * y, 2.0 * x * y
        basis[4], basis[5], basis[6] = C2[0] * s1, C2[1] * z * y, C2[2] * z2 + C2[3]
        basis[7], basis[8] = C2[1] * z * x, C2[0] * c1
        if degree >= 3:
            tmp_c = C3[2] * z2 + C3[3]
            c2, s2 = x * c1 - y * s1, x * s1 + y * c1
            basis[9], basis[10], basis[11] = C3[0] * s2, C3[1] * z * s1, tmp_c * y
            basis[12], basis[13] = z * (C3[4] * z2 + C3[5]), tmp_c * x
            basis[14], basis[15] = C3[1] * z * c1, C3[0] * c2


@numba.njit(**JIT, inline="always")
def _sh_basis_grad(degree, x, y, z, v_basis):
    """d/d(x, y, z) of sum_k v_basis[k] basis_k(x, y, z), each basis function taken as a polynomial in x, y, z."""
    gx = gy = gz = 0.0
    if degree >= 1:
        gx -= C1 * v_basis[3]
        gy -= C1 * v_basis[1]
        gz += C1 * v_basis[2]
    if degree >= 2:
        gx += 2.0 * C2[0] * (y * v_basis[4] + x * v_basis[8]) + C2[1] * z * v_basis[7]
        gy += 2.0 * C2[0] * (x * v_basis[4] - y * v_basis[8]) + C2[1] * z * v_basis[5]
        gz += C2[1] * (y * v_basis[5] + x * v_basis[7]) + 2.0 * C2[2] * z * v_basis[6]
        if degree >= 3:
            z2, c1, s1 = z * z, x * x - y * y, 2.0 * x * y
            tmp_c = C3[2] * z2 + C3[3]
            xx_yy = 3.0 * (x * x - y * y)  # d s2/dy = d c2/dx
            b9, b10, b11, b12 = v_basis[9], v_basis[10], v_basis[11], v_basis[12]
            b13, b14, b15 = v_basis[13], v_basis[14], v_basis[15]
            gx += C3[0] * (6.0 * x * y * b9 + xx_yy * b15) + 2.0 * C3[1] * z * (y * b10 + x * b14) + tmp_c * b13
            gy += C3[0] * (xx_yy * b9 - 6.0 * x * y * b15) + 2.0 * C3[1] * z * (x * b10 - y * b14) + tmp_c * b11
            gz += C3[1] * (s1 * b10 + c1 * b14) + 2.0 * C3[2] * z * (y * b11 + x * b13)
            gz += (3.0 * C3[4] * z2 + C3[5]) * b12
    return gx, gy, gz


@numba.njit(**JIT, nogil=True)
def _colors_forward(coeffs, means, campos, radii, degree, rgb, lo, hi):
    C = campos.shape[0]
    count = (degree + 1) * (degree + 1)
    basis = np.empty(16)
    for i in range(lo, hi):
        for cam in range(C):
            if radii[cam, i, 0] <= 0 or radii[cam, i, 1] <= 0:  # the twin (and gsplat) colour culled entries 0
                rgb[cam, i, 0] = rgb[cam, i, 1] = rgb[cam, i, 2] = 0.5
                continue
            x, y, z, _ = _direction(means[i], campos[cam])
            _sh_basis(degree, x, y, z, basis)
            for ch in range(3):
                total = 0.0
                for k in range(count):
                    total += basis[k] * coeffs[i, k, ch]
                rgb[cam, i, ch] = max(total + 0.5, 0.0)


@numba.njit(**JIT, nogil=True)
def _colors_backward(coeffs, means, campos, radii, degree, rgb, v_rgb, v_coeffs, v_means, with_cameras, v_dirs,
                     lo, hi):  # fmt: skip
    C = campos.shape[0]
    count = (degree + 1) * (degree + 1)
    basis, v_basis = np.empty(16), np.empty(16)
    for i in range(lo, hi):
        for cam in range(C):
            if radii[cam, i, 0] <= 0 or radii[cam, i, 1] <= 0:
                continue
            x, y, z, inv = _direction(means[i], campos[cam])
            _sh_basis(degree, x, y, z, basis)
            # clamp_min(value, 0) passes the gradient where value >= 0; rgb = max(value, 0) tells which
            g0 = v_rgb[cam, i, 0] if rgb[cam, i, 0] > 0.0 else 0.0
            g1 = v_rgb[cam, i, 1] if rgb[cam, i, 1] > 0.0 else 0.0
            g2 = v_rgb[cam, i, 2] if rgb[cam, i, 2] > 0.0 else 0.0
            for k in range(count):
                v_coeffs[i, k, 0] += basis[k] * g0
                v_coeffs[i, k, 1] += basis[k] * g1
                v_coeffs[i, k, 2] += basis[k] * g2
                v_basis[k] = coeffs[i, k, 0] * g0 + coeffs[i, k, 1] * g1 + coeffs[i, k, 2] * g2
            gx, gy, gz = _sh_basis_grad(degree, x, y, z, v_basis)
            dot = x * gx + y * gy + z * gz  # d / d(d / |d|): the component along d drops out
            dx, dy, dz = (gx - x * dot) * inv, (gy - y * dot) * inv, (gz - z * dot) * inv
            v_means[i, 0] += dx
            v_means[i, 1] += dy
            v_means[i, 2] += dz
            if with_cameras:
                v_dirs[cam, i, 0], v_dirs[cam, i, 1], v_dirs[cam, i, 2] = dx, dy, dz
