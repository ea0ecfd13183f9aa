"""Tile binning and alpha compositing compiled with numba, with its backward: the fast CPU path of ``rasterize``.

gsplat's algorithm with the loops turned for a CPU: a thread takes whole tiles, and within a tile it walks the
depth-sorted list once, each Gaussian against all the tile's pixels in one SIMD-friendly loop (gsplat: one GPU thread
per pixel). Per pixel the semantics are gsplat's: alphas under 1/255 skipped, stop before the Gaussian that would
bring the transmittance to 1e-4, and remember how far it went; the backward pass walks the list back to front from
there, recovering the transmittance in front of each Gaussian by division and keeping the colour behind it as a
running sum, as gsplat does. A Gaussian's gradient is summed over the tile's pixels before it is written, into the
thread's own buffer; buffers are added at the end (worker w always takes tiles w, w + workers, ...: the same split,
so the same sums, every run with the same thread count).

float32 throughout, as gsplat. ``exp(-sigma)`` is a polynomial (degree 9 on sigma / 32, squared five times: relative
error under 3e-6 on the range that matters) because the library ``exp`` keeps the loop from vectorising.
Measured on the 2-core VM (bench/rasterizer_bench.py): see bench/RESULTS.md.
"""

from __future__ import annotations

import functools
import math
import os
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np
import torch
from torch import Tensor

from reconstruct import _torch_rasterizer as _tr
from reconstruct._torch_rasterizer import (
    ALPHA_THRESHOLD,
    MAX_ALPHA,
    TRANSMITTANCE_STOP,
    Intersections,
)

# cache: compiled once per machine (about 3 s), then loaded; fastmath: lets sums be reordered into SIMD lanes;
# error_model numpy: x / 0 gives inf instead of raising, a branch that would keep the loops from vectorising.
# The cache is keyed on the kernel's own file: after changing a constant these kernels import from another module
# (_torch_rasterizer's thresholds), delete reconstruct/__pycache__/*.nbi so that they recompile.
JIT = {"cache": True, "fastmath": True, "error_model": "numpy"}

# Columns of the packed per-Gaussian rows.
MEAN_X, MEAN_Y, CONIC_A, CONIC_B, CONIC_C, OPACITY, RED, WIDTH = 0, 1, 2, 3, 4, 5, 6, 9

# Constants typed float32, so that numba keeps the arithmetic in float32.
_f = np.float32
ZERO, HALF, ONE = _f(0.0), _f(0.5), _f(1.0)
MAX_ALPHA32, ALPHA_THRESHOLD32, TRANSMITTANCE_STOP32 = _f(MAX_ALPHA), _f(ALPHA_THRESHOLD), _f(TRANSMITTANCE_STOP)
SIGMA_CAP = _f(20.0)  # exp(-20) < 1/255 / 1e5: any larger sigma gives an alpha that is skipped
E0, E1, E2, E3, E4, E5, E6, E7, E8, E9 = (_f(1 / math.factorial(i)) for i in range(10))
INV32 = _f(1 / 32)
TILE = 8  # pixels: the tile size of intersect_tiles for the CPU (_tile_compositor.TILE_SIZE), fixed at compile time
PIXELS = TILE * TILE


@numba.njit(**JIT, inline="always")
def _exp_neg(sigma):
    """exp(-sigma) for sigma >= 0: Taylor to degree 9 at -sigma / 32 (error < 3e-9), raised to the 32nd power."""
    x = -min(sigma, SIGMA_CAP) * INV32
    p = (((((((((E9 * x + E8) * x + E7) * x + E6) * x + E5) * x + E4) * x + E3) * x + E2) * x + E1) * x) + E0
    p *= p
    p *= p
    p *= p
    p *= p
    return p * p


def composite(
    means2d: Tensor,  # [C, N, 2]
    conics: Tensor,  # [C, N, 3]
    colors: Tensor,  # [C, N, 3]
    opacities: Tensor,  # [C, N]
    backgrounds: Tensor | None,  # [C, 3]
    isect: Intersections,
    width: int,
    height: int,
    absgrad: bool = False,
) -> tuple[Tensor, Tensor]:
    """Differentiable compositing of float32 CPU tensors: images [C, H, W, 3] and alphas [C, H, W, 1].

    Inputs and semantics are those of ``_tile_compositor.composite`` (the pure-PyTorch twin, for other devices and
    float64), with ``isect`` binned in ``TILE`` px tiles.
    """
    return _Composite.apply(means2d, conics, colors, opacities, backgrounds, isect, width, height, absgrad)


@torch.no_grad()
def intersect_tiles(means2d: Tensor, radii: Tensor, depths: Tensor, width: int, height: int, tile_size: int = TILE,
                    conics: Tensor | None = None, opacities: Tensor | None = None) -> Intersections:  # fmt: skip
    """``_torch_rasterizer.intersect_tiles`` with the pairs binned by a compiled counting sort (one pass to count
    per tile, one to place, Gaussians in depth order) instead of a sort of all pairs: the same ``Intersections``.

    With ``conics`` [C, N, 3] and ``opacities`` [N] (or [C, N]) given, a pair is kept only if the Gaussian's alpha
    can reach 1/255 somewhere in the tile (its exponent's minimum over the tile's rectangle of pixel centres, with a
    margin for float32 rounding): about 30% of the box's tiles are corners the ellipse misses, where every pixel
    would skip the Gaussian anyway, so the image and gradients are unchanged and compositing has less to try.
    ``tiles_per_gauss`` counts the tiles listed.
    """
    C, N = radii.shape[:2]
    tile_width, tile_height = math.ceil(width / tile_size), math.ceil(height / tile_size)
    tmin, tmax = _tr.tile_ranges(means2d, radii, tile_width, tile_height, tile_size)
    spans = (tmax - tmin).clamp_min(0)
    visible = (radii > 0).all(-1)
    counts = torch.where(visible, spans[..., 0] * spans[..., 1], 0)  # [C, N]
    depth32 = depths.detach().to(torch.float32)
    keys = torch.where(visible, depth32, torch.inf).view(torch.int32)  # visible depths are > 0: bits sort as floats
    order = torch.from_numpy(_radix_argsort(keys.numpy()))  # = torch.sort(..., stable=True).indices, gsplat's order
    order = (order + N * torch.arange(C)[:, None]).reshape(-1)
    depth_bits = depth32.reshape(-1).view(torch.int32).numpy()
    exact = conics is not None and opacities is not None
    if exact:  # the last column: the exponent below which alpha reaches 1/255, log(255 o), plus a margin
        limits = torch.log(opacities.detach().to(torch.float64).expand(C, N) / ALPHA_THRESHOLD) + SIGMA_MARGIN
        ellipses = torch.cat([means2d.detach(), conics.detach(), limits[..., None]], -1)
    else:
        ellipses = torch.zeros(C, N, 6)
    flatten_ids, isect_ids, offsets, kept = _bin(
        order.numpy(), tmin.reshape(-1, 2).numpy(), tmax.reshape(-1, 2).numpy(), counts.reshape(-1).numpy(),
        depth_bits, N, tile_width, tile_height, C, _array(ellipses.to(torch.float64)).reshape(-1, 6), exact,
        tile_size,
    )  # fmt: skip
    return Intersections(
        tiles_per_gauss=torch.from_numpy(kept).reshape(C, N),
        isect_ids=torch.from_numpy(isect_ids),
        flatten_ids=torch.from_numpy(flatten_ids),
        isect_offsets=torch.from_numpy(offsets).to(torch.int32).reshape(C, tile_height, tile_width),
        tile_size=tile_size,
        tile_width=tile_width,
        tile_height=tile_height,
    )


@numba.njit(**JIT)
def _radix_argsort(keys):
    """Stable argsort of each row of non-negative int32 keys [C, N]: three passes of 11 bits (31-bit keys), 10x
    faster than a comparison sort at 80k keys."""
    C, N = keys.shape
    out = np.empty((C, N), np.int64)
    scratch = np.empty(N, np.int64)
    for c in range(C):
        order = out[c]
        for i in range(N):
            order[i] = i
        for shift in (0, 11, 22):
            counts = np.zeros(2049, np.int64)
            for i in range(N):
                counts[((keys[c, order[i]] >> shift) & 2047) + 1] += 1
            for b in range(2048):
                counts[b + 1] += counts[b]
            for i in range(N):
                bucket = (keys[c, order[i]] >> shift) & 2047
                scratch[counts[bucket]] = order[i]
                counts[bucket] += 1
            order[:] = scratch
    return out


# Exponent margin of the exact tile test: the compositor's float32 exponent and polynomial exp differ from this
# float64 test by far less (relative 1e-5 on exponents below log(255) ~ 5.5).
SIGMA_MARGIN = 1e-3


@numba.njit(**JIT, inline="always")
def _sigma_min(mx, my, a, b, c, x_lo, x_hi, y_lo, y_hi):
    """Minimum over the rectangle [x_lo, x_hi] x [y_lo, y_hi] of sigma = (a dx^2 + c dy^2) / 2 + b dx dy (d = p -
    mean; a positive definite conic): 0 when the mean is inside, else the least of the four edges' minima (on an
    edge, the 1D quadratic's minimum clamped to the edge)."""
    if x_lo <= mx <= x_hi and y_lo <= my <= y_hi:
        return 0.0
    dx0, dx1, dy0, dy1 = x_lo - mx, x_hi - mx, y_lo - my, y_hi - my
    slope_y, slope_x = -b / c, -b / a  # the minimising dy for a given dx, and dx for a given dy
    best = math.inf
    for dx in (dx0, dx1):  # vertical edges
        dy = min(max(slope_y * dx, dy0), dy1)
        best = min(best, 0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy)
    for dy in (dy0, dy1):  # horizontal edges
        dx = min(max(slope_x * dy, dx0), dx1)
        best = min(best, 0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy)
    return best


@numba.njit(**JIT)
def _bin(order, tmin, tmax, counts, depth_bits, N, tw, th, C, ellipses, exact, tile_size):
    """Pairs (Gaussian, tile) sorted by tile, Gaussians within a tile in ``order``: flat ids (int32), gsplat's
    64-bit keys (camera | tile | depth bits), each tile's first pair and each Gaussian's number of pairs. With
    ``exact``, only the tiles of its box where the Gaussian's exponent gets down to its limit (``ellipses``: mean x,
    y, conic a, b, c, log(255 opacity) + margin); a one-tile box is kept as is."""
    per_camera = tw * th
    tile_bits = 0
    while (1 << tile_bits) <= per_camera:  # int.bit_length()
        tile_bits += 1
    starts = np.zeros(C * per_camera, np.int64)
    kept = np.zeros(counts.shape[0], np.int32)
    # The first pass decides every candidate pair (in box order) and counts per tile; the second places them.
    first_candidate = np.zeros(counts.shape[0], np.int64)
    candidates = 0
    for g in order:
        first_candidate[g] = candidates
        candidates += counts[g]
    reached = np.ones(candidates if exact else 0, np.bool_)
    total = 0
    for g in order:
        if counts[g] == 0:
            continue
        base = (g // N) * per_camera
        test = exact and counts[g] > 1
        mx, my, a, b, c, limit = ellipses[g, 0], ellipses[g, 1], ellipses[g, 2], ellipses[g, 3], ellipses[g, 4], \
            ellipses[g, 5]  # fmt: skip
        j = first_candidate[g]
        for ty in range(tmin[g, 1], tmax[g, 1]):
            y_lo = ty * tile_size + 0.5  # pixel centres, gsplat's convention
            for tx in range(tmin[g, 0], tmax[g, 0]):
                x_lo = tx * tile_size + 0.5
                if test and _sigma_min(mx, my, a, b, c, x_lo, x_lo + tile_size - 1.0, y_lo,
                                       y_lo + tile_size - 1.0) > limit:  # fmt: skip
                    reached[j] = False
                else:
                    starts[base + ty * tw + tx] += 1
                    kept[g] += 1
                j += 1
        total += kept[g]
    running = 0
    for t in range(starts.shape[0]):  # counts -> exclusive prefix sums
        running, starts[t] = running + starts[t], running
    cursor = starts.copy()
    flatten_ids, keys = np.empty(total, np.int32), np.empty(total, np.int64)
    for g in order:
        if kept[g] == 0:
            continue
        camera = g // N
        depth = np.int64(depth_bits[g]) & 0xFFFFFFFF
        j = first_candidate[g]
        for ty in range(tmin[g, 1], tmax[g, 1]):
            for tx in range(tmin[g, 0], tmax[g, 0]):
                j += 1
                if exact and not reached[j - 1]:
                    continue
                local = ty * tw + tx
                t = camera * per_camera + local
                flatten_ids[cursor[t]] = g
                keys[cursor[t]] = (((np.int64(camera) << tile_bits) | local) << 32) | depth
                cursor[t] += 1
    return flatten_ids, keys, starts, kept


# Rows of a tile's per-pixel lanes [LANES, PIXELS]: one buffer with compile-time strides, so that the compiler can
# prove the rows apart and vectorise without run-time overlap checks (separate arrays need too many of them).
PX, PY, INSIDE, T_ROW, R_ROW, G_ROW, B_ROW, COUNT, BEHIND, LANES = 0, 1, 2, 3, 4, 5, 6, 7, 8, 9


@numba.njit(**JIT)
def _tile_lanes(t, tw, th, width, height):
    """Camera, first pixel x and y, and lanes with PX, PY and INSIDE (1/0) set, of tile ``t``."""
    cam, rest = t // (tw * th), t % (tw * th)
    y0, x0 = (rest // tw) * TILE, (rest % tw) * TILE
    lanes = np.zeros((LANES, PIXELS), np.float32)
    for p in range(PIXELS):
        x, y = x0 + p % TILE, y0 + p // TILE
        lanes[PX, p], lanes[PY, p] = _f(x) + HALF, _f(y) + HALF
        if x < width and y < height:
            lanes[INSIDE, p] = ONE
    return cam, x0, y0, lanes


@numba.njit(**JIT, nogil=True)
def _forward(rows, ids, starts, tw, th, width, height, colour, T_final, last, first, step):
    """Tiles first, first + step, ...: per pixel colour [C, H, W, 3] (premultiplied, no background), T_final
    [C, H, W] and last [C, H, W] (one past the last intersection the pixel composited)."""
    for t in range(first, starts.shape[0], step):
        start = starts[t]
        end = starts[t + 1] if t + 1 < starts.shape[0] else ids.shape[0]
        cam, x0, y0, lanes = _tile_lanes(t, tw, th, width, height)
        # Separate arrays here (compile-time length) vectorise better than the lanes' rows, unlike in the backward.
        px, py, live = lanes[PX].copy(), lanes[PY].copy(), lanes[INSIDE].copy()  # live: still compositing
        T = np.ones(PIXELS, np.float32)
        r, g, b = np.zeros(PIXELS, np.float32), np.zeros(PIXELS, np.float32), np.zeros(PIXELS, np.float32)
        count = np.zeros(PIXELS, np.float32)  # how far the pixel went: float32 lanes vectorise twice as wide as int64
        alive = live.sum()
        for k in range(start, end):
            if alive == ZERO:
                break
            position = _f(k - start + 1)
            row = rows[ids[k]]
            mx, my, ca, cb, cc, o = row[MEAN_X], row[MEAN_Y], row[CONIC_A], row[CONIC_B], row[CONIC_C], row[OPACITY]
            red, green, blue = row[RED], row[RED + 1], row[RED + 2]
            stopped = ZERO
            for p in range(PIXELS):  # vectorised: no early exit, selects instead of branches
                dx, dy = mx - px[p], my - py[p]
                sigma = HALF * (ca * dx * dx + cc * dy * dy) + cb * dx * dy
                alpha = min(MAX_ALPHA32, o * _exp_neg(sigma))
                ok = (live[p] > ZERO) & (sigma >= ZERO) & (alpha >= ALPHA_THRESHOLD32)
                next_T = T[p] * (ONE - alpha)
                use = ok & (next_T > TRANSMITTANCE_STOP32)
                stop = ok & (next_T <= TRANSMITTANCE_STOP32)
                weight = alpha * T[p] if use else ZERO
                r[p] += weight * red
                g[p] += weight * green
                b[p] += weight * blue
                T[p] = next_T if use else T[p]
                count[p] = position if use else count[p]
                live[p] = ZERO if stop else live[p]
                stopped += ONE if stop else ZERO
            alive -= stopped
        for p in range(PIXELS):
            x, y = x0 + p % TILE, y0 + p // TILE
            if x < width and y < height:
                colour[cam, y, x, 0], colour[cam, y, x, 1], colour[cam, y, x, 2] = r[p], g[p], b[p]
                T_final[cam, y, x] = T[p]
                last[cam, y, x] = start + int(count[p])


@numba.njit(**JIT, nogil=True)
def _backward(rows, ids, starts, tw, th, width, height, T_final, last, v_colour, v_T, grads, absgrads, with_abs,
              first, step):  # fmt: skip
    """Tiles first, first + step, ...: per Gaussian, d/d(mean xy, conic, opacity, rgb) added to ``grads`` [C * N, 9]
    and, ``with_abs``, sums over pixels of |d/dmean| to ``absgrads`` [C * N, 2]. ``v_T`` [C, H, W] is dL/dT_final
    (the background and alpha terms)."""
    for t in range(first, starts.shape[0], step):
        start = starts[t]
        cam, x0, y0, lanes = _tile_lanes(t, tw, th, width, height)
        for p in range(PIXELS):  # R, G, B rows: dL/dcolour; COUNT: how far the pixel went; BEHIND: see below
            x, y = x0 + p % TILE, y0 + p // TILE
            if x < width and y < height:
                lanes[T_ROW, p] = T_final[cam, y, x]
                # d/dalpha_k of everything behind k (the background too), times (1 - alpha_k)
                lanes[BEHIND, p] = T_final[cam, y, x] * v_T[cam, y, x]
                lanes[R_ROW, p], lanes[G_ROW, p], lanes[B_ROW, p] = v_colour[cam, y, x]
                lanes[COUNT, p] = _f(last[cam, y, x] - start)
        for k in range(start + int(lanes[COUNT].max()) - 1, start - 1, -1):
            position = _f(k - start)
            gid = ids[k]
            row = rows[gid]
            mx, my, ca, cb, cc, o = row[MEAN_X], row[MEAN_Y], row[CONIC_A], row[CONIC_B], row[CONIC_C], row[OPACITY]
            red, green, blue = row[RED], row[RED + 1], row[RED + 2]
            s_x = s_y = s_a = s_b = s_c = s_sigma = s_r = s_g = s_bl = s_ax = s_ay = ZERO
            for p in range(PIXELS):  # vectorised, as the forward loop
                dx, dy = mx - lanes[PX, p], my - lanes[PY, p]
                sigma = HALF * (ca * dx * dx + cc * dy * dy) + cb * dx * dy
                vis = o * _exp_neg(sigma)
                alpha = min(MAX_ALPHA32, vis)
                ok = (position < lanes[COUNT, p]) & (sigma >= ZERO) & (alpha >= ALPHA_THRESHOLD32)
                ra = ONE / (ONE - alpha)
                T_front = lanes[T_ROW, p] * ra if ok else lanes[T_ROW, p]  # transmittance in front of k
                weight = alpha * T_front if ok else ZERO
                gr, gg, gb = lanes[R_ROW, p], lanes[G_ROW, p], lanes[B_ROW, p]
                cg = red * gr + green * gg + blue * gb
                v_alpha = T_front * cg - lanes[BEHIND, p] * ra
                lanes[BEHIND, p] += weight * cg
                lanes[T_ROW, p] = T_front
                v_sigma = -alpha * v_alpha if ok & (vis <= MAX_ALPHA32) else ZERO  # no gradient where clamped
                vx = v_sigma * (ca * dx + cb * dy)
                vy = v_sigma * (cb * dx + cc * dy)
                s_x += vx
                s_y += vy
                s_a += v_sigma * dx * dx
                s_b += v_sigma * dx * dy
                s_c += v_sigma * dy * dy
                s_sigma += v_sigma
                s_r += weight * gr
                s_g += weight * gg
                s_bl += weight * gb
                s_ax += abs(vx)
                s_ay += abs(vy)
            out = grads[gid]
            out[MEAN_X] += s_x
            out[MEAN_Y] += s_y
            out[CONIC_A] += HALF * s_a
            out[CONIC_B] += s_b
            out[CONIC_C] += HALF * s_c
            out[OPACITY] -= s_sigma / o  # d alpha / d o = alpha / o, and v_sigma = -alpha v_alpha
            out[RED] += s_r
            out[RED + 1] += s_g
            out[RED + 2] += s_bl
            if with_abs:
                absgrads[gid, 0] += s_ax
                absgrads[gid, 1] += s_ay


class _Composite(torch.autograd.Function):
    @staticmethod
    def forward(ctx, means2d, conics, colors, opacities, backgrounds, isect, width, height, absgrad):
        C = means2d.shape[0]
        rows = _pack(means2d, conics, colors, opacities)
        colour = np.zeros((C, height, width, 3), np.float32)
        T_final = np.ones((C, height, width), np.float32)
        last = np.zeros((C, height, width), np.int64)
        _in_workers(lambda first, step: _forward(rows, *_tile_args(isect), width, height, colour, T_final, last,
                                                 first, step))  # fmt: skip
        colour, T_final = torch.from_numpy(colour), torch.from_numpy(T_final)
        image = colour if backgrounds is None else colour + T_final[..., None] * backgrounds[:, None, None, :]
        ctx.isect, ctx.size, ctx.absgrad, ctx.last = isect, (width, height), absgrad, last
        ctx.save_for_backward(means2d, conics, colors, opacities, backgrounds, T_final)
        return image, 1.0 - T_final[..., None]

    @staticmethod
    def backward(ctx, v_image, v_alpha):
        means2d, conics, colors, opacities, backgrounds, T_final = ctx.saved_tensors
        isect, (width, height) = ctx.isect, ctx.size
        C, N = means2d.shape[:2]
        v_T = -v_alpha[..., 0]  # alpha = 1 - T_final
        if backgrounds is not None:
            v_T = v_T + (v_image * backgrounds[:, None, None, :]).sum(-1)
        workers = _workers()
        grads = np.zeros((workers, C * N, WIDTH), np.float32)
        absgrads = np.zeros((workers, C * N if ctx.absgrad else 0, 2), np.float32)
        args = (_pack(means2d, conics, colors, opacities), *_tile_args(isect), width, height, T_final.numpy(),
                ctx.last, _array(v_image), _array(v_T))  # fmt: skip
        _in_workers(lambda first, step: _backward(*args, grads[first], absgrads[first], ctx.absgrad, first, step))
        per_gaussian = torch.from_numpy(grads.sum(0)).reshape(C, N, WIDTH)
        if ctx.absgrad:  # as gsplat: an attribute of the means2d tensor
            means2d.absgrad = torch.from_numpy(absgrads.sum(0)).reshape(C, N, 2)
        v_bg = None
        if backgrounds is not None and ctx.needs_input_grad[4]:
            v_bg = (v_image * T_final[..., None]).sum((1, 2))
        return (
            per_gaussian[..., MEAN_X : MEAN_Y + 1],
            per_gaussian[..., CONIC_A : CONIC_C + 1],
            per_gaussian[..., RED : RED + 3],
            per_gaussian[..., OPACITY],
            v_bg, None, None, None, None,
        )  # fmt: skip


def _pack(means2d: Tensor, conics: Tensor, colors: Tensor, opacities: Tensor) -> np.ndarray:
    """[C * N, 9] float32 rows (mean xy, conic, opacity, rgb)."""
    return _array(torch.cat([means2d, conics, opacities[..., None], colors], -1).reshape(-1, WIDTH))


def _array(tensor: Tensor) -> np.ndarray:
    return tensor.detach().contiguous().numpy()


def _tile_args(isect: Intersections) -> tuple:
    """Flat Gaussian ids per intersection, each tile's first intersection, tiles per row and column."""
    if isect.tile_size != TILE:
        raise ValueError(f"the numba compositor takes {TILE} px tiles, got {isect.tile_size}")
    ids = isect.flatten_ids.to(torch.int64).contiguous().numpy()
    starts = isect.isect_offsets.reshape(-1).to(torch.int64).contiguous().numpy()
    return ids, starts, isect.tile_width, isect.tile_height


MAX_WORKERS = 8


def _workers() -> int:
    """Threads to composite with: torch's count (one in tests), at most ``MAX_WORKERS``."""
    return max(1, min(torch.get_num_threads(), MAX_WORKERS))


def _in_workers(kernel) -> None:
    """``kernel(first, step)`` for first in 0 .. workers - 1, each in its own thread (the kernels release the GIL).
    Worker w takes tiles w, w + workers, ...: balanced, and the same split, so the same sums, every run."""
    workers = _workers()
    if workers == 1:
        kernel(0, 1)
        return
    jobs = [_pool().submit(kernel, w, workers) for w in range(1, workers)]
    kernel(0, workers)  # this thread is worker 0
    for job in jobs:
        job.result()


@functools.cache
def _pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(MAX_WORKERS - 1, thread_name_prefix="orbit4d-composite")


os.register_at_fork(after_in_child=_pool.cache_clear)  # a forked child has none of the parent's threads
