"""Tile-based alpha compositing in PyTorch with a hand-written backward (the CPU path of ``rasterize``).

The image is cut into 16x16 tiles; each tile holds its Gaussians sorted by depth (``intersect_tiles``). All tiles
advance together through their lists ``CHUNK`` Gaussians at a time, as batched tensors [tiles, CHUNK, 256 pixels]
processed ``BLOCK`` tiles at a time so that the temporaries stay in cache; a tile drops out once its list ends or all
its pixels have stopped (T <= 1e-4), as the threads of gsplat's kernel do. Within a tile the log-alpha of every pair
is one small matrix product, because a Gaussian's exponent is a quadratic polynomial in the pixel's tile-local
coordinates (u, v):

    log(o * exp(-sigma)) = coef[g] . [1, u, v, u^2, uv, v^2]

The backward pass replays the same front-to-back traversal (no per-pair tensor outlives its block) and gets the
colour behind each Gaussian as (total colour) - (colour of the Gaussians in front and itself) instead of walking back
to front; the per-Gaussian sums over pixels of the conic and mean gradients come from one more small product with the
same pixel monomials.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import Tensor

from reconstruct._torch_rasterizer import ALPHA_THRESHOLD, MAX_ALPHA, TILE_SIZE, TRANSMITTANCE_STOP, Intersections

CHUNK = 32  # Gaussians per tile per step
BLOCK = 32  # tiles per batched tensor: [BLOCK, CHUNK, 256] float32 is 1 MiB
PIXELS = TILE_SIZE * TILE_SIZE
LOG_ALPHA_THRESHOLD = math.log(ALPHA_THRESHOLD)
EMPTY_DISTANCE = 1e5  # pixels: the padding slot's alpha is exp(-5e9) = 0
# Columns of the packed per-Gaussian rows.
MEAN, CONIC, OPACITY, COLOR, WIDTH = slice(0, 2), slice(2, 5), 5, slice(6, 9), 9


def composite(
    means2d: Tensor,  # [C, N, 2]
    conics: Tensor,  # [C, N, 3]
    colors: Tensor,  # [C, N, 3]
    opacities: Tensor,  # [C, N]
    backgrounds: Tensor | None,  # [C, 3]
    isect: Intersections,
    width: int,
    height: int,
) -> tuple[Tensor, Tensor]:
    """Differentiable compositing: images [C, H, W, 3] and alphas [C, H, W, 1]."""
    return _Composite.apply(means2d, conics, colors, opacities, backgrounds, isect, width, height)


class _Layout:
    """Where tiles sit in the images and which Gaussians (flat index into C * N, + 1 empty slot) each one holds."""

    def __init__(self, isect: Intersections, C: int, N: int, width: int, height: int, device, dtype):
        tw, th = isect.tile_width, isect.tile_height
        self.C, self.width, self.height, self.tw, self.th = C, width, height, tw, th
        self.n_tiles = C * th * tw
        self.camera = torch.arange(self.n_tiles, device=device) // (th * tw)
        self.starts = isect.isect_offsets.reshape(-1).to(torch.int64)
        M = isect.flatten_ids.numel()
        self.counts = torch.diff(self.starts, append=torch.tensor([M], device=device))
        self.empty_slot = M
        self.flatten_ids = torch.cat([isect.flatten_ids.to(torch.int64), torch.tensor([C * N], device=device)])
        t = torch.arange(self.n_tiles, device=device)
        tx, ty = t % tw, (t // tw) % th
        self.centres = torch.stack([tx, ty], -1).to(dtype) * TILE_SIZE + TILE_SIZE / 2  # gsplat pixel coordinates
        r = torch.arange(TILE_SIZE, device=device, dtype=dtype) - (TILE_SIZE - 1) / 2  # pixel centre - tile centre
        v, u = torch.meshgrid(r, r, indexing="ij")
        u, v = u.reshape(-1), v.reshape(-1)
        self.monomials = torch.stack([torch.ones_like(u), u, v, u * u, u * v, v * v])  # [6, 256]
        i = torch.arange(TILE_SIZE, device=device)
        px, py = tx[:, None] * TILE_SIZE + i, ty[:, None] * TILE_SIZE + i  # [T, 16]
        self.outside = ((py[:, :, None] >= height) | (px[:, None, :] >= width)).reshape(-1, PIXELS)

    def gather(self, tiles: Tensor, k: int) -> Tensor:
        """[A, CHUNK] flat Gaussian ids in slots k .. k + CHUNK of each tile (the empty slot past a list's end)."""
        slot = k + torch.arange(CHUNK, device=tiles.device)
        idx = torch.where(slot < self.counts[tiles, None], self.starts[tiles, None] + slot, self.empty_slot)
        return self.flatten_ids[idx]

    def to_images(self, per_tile: Tensor) -> Tensor:
        """[T, 256, D] -> [C, H, W, D]."""
        D = per_tile.shape[-1]
        x = per_tile.reshape(self.C, self.th, self.tw, TILE_SIZE, TILE_SIZE, D).permute(0, 1, 3, 2, 4, 5)
        return x.reshape(self.C, self.th * TILE_SIZE, self.tw * TILE_SIZE, D)[:, : self.height, : self.width]

    def from_images(self, images: Tensor) -> Tensor:
        """[C, H, W, D] -> [T, 256, D], zero beyond the image."""
        D = images.shape[-1]
        pad = images.new_zeros(self.C, self.th * TILE_SIZE, self.tw * TILE_SIZE, D)
        pad[:, : self.height, : self.width] = images
        x = pad.reshape(self.C, self.th, TILE_SIZE, self.tw, TILE_SIZE, D).permute(0, 1, 3, 2, 4, 5)
        return x.reshape(self.n_tiles, PIXELS, D)


def _pack(means2d: Tensor, conics: Tensor, colors: Tensor, opacities: Tensor) -> Tensor:
    """[C * N + 1, 9] rows (mean xy, conic, opacity, rgb); the last row pads lists: a unit Gaussian far away."""
    rows = torch.cat([means2d, conics, opacities[..., None], colors], -1).reshape(-1, WIDTH)
    empty = rows.new_tensor([[EMPTY_DISTANCE, EMPTY_DISTANCE, 1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0]])
    return torch.cat([rows.detach(), empty])


def _log_alpha_coefs(rows: Tensor, centres: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """[A, B, 6] coefficients of log(o) - sigma over [1, u, v, u^2, uv, v^2], and the tile-local means [A, B, 2]."""
    m = rows[..., MEAN] - centres[:, None, :]
    mx, my = m.unbind(-1)
    a, b, c = rows[..., CONIC].unbind(-1)
    gx, gy = a * mx + b * my, b * mx + c * my
    const = torch.log(rows[..., OPACITY]) - 0.5 * (mx * gx + my * gy)
    return torch.stack([const, gx, gy, -0.5 * a, -b, -0.5 * c], -1), m


class _Pairs:
    """Alphas, transmittances and weights of a block of [A tiles, B Gaussians, 256 pixels] pairs.

    Masks are kept as float 0/1 and applied by multiplication: on the CPU, comparisons into bool tensors and
    multiplications by them cost several times a float operation.
    """

    def __init__(self, coefs: Tensor, monomials: Tensor, T_in: Tensor, done: Tensor):
        alpha = (coefs @ monomials).exp_().clamp_max_(MAX_ALPHA)  # min(0.999, o * exp(-sigma))
        F.threshold(alpha, _below(ALPHA_THRESHOLD, alpha.dtype), 0.0, inplace=True)  # skip alpha < 1/255
        self.alpha = alpha
        self.one_minus = 1 - alpha
        T_incl = torch.cumprod(self.one_minus, 1).mul_((T_in * ~done)[:, None, :])  # T after each Gaussian
        # A pixel stops before the first Gaussian that would bring T to 1e-4: the kept ones are a prefix of the list.
        self.keep = torch.gt(T_incl, TRANSMITTANCE_STOP, out=torch.empty_like(T_incl))
        self.T_excl = T_incl / self.one_minus  # T in front of each Gaussian
        self.weights = self.T_excl * alpha
        self.weights.mul_(self.keep)
        n_kept = self.keep.sum(1, keepdim=True)
        last_kept = T_incl.gather(1, (n_kept - 1).clamp_min_(0).long()).squeeze(1)
        self.T_out = torch.where(n_kept.squeeze(1) > 0, last_kept, T_in)
        self.stopped = T_incl[:, -1] <= TRANSMITTANCE_STOP  # met the Gaussian that stops it (or was done)


@functools.cache
def _below(value: float, dtype: torch.dtype) -> float:
    """The largest number of ``dtype`` below ``value``: ``threshold(x, _below(v))`` keeps x >= v."""
    v = torch.tensor(value, dtype=dtype)
    return torch.nextafter(v, torch.zeros_like(v)).item()


def _traverse(layout: _Layout, rows: Tensor, visit) -> Tensor:
    """Front to back over all tiles; ``visit(span, tiles, gids, rows, T, done)`` composites one block and returns
    its ``_Pairs``. Per-tile state [A, ...] of the visitor is compacted with the traversal's. Returns T_final."""
    device = layout.starts.device
    tiles = torch.nonzero(layout.counts > 0).squeeze(1)
    tiles = tiles[torch.argsort(layout.counts[tiles], descending=True, stable=True)]  # lists end in order
    T_final = torch.ones(layout.n_tiles, PIXELS, device=device, dtype=rows.dtype)
    T, done = T_final[tiles], layout.outside[tiles]
    visit.start(tiles)
    max_count = int(layout.counts.max()) if layout.n_tiles else 0
    for k in range(0, max_count, CHUNK):
        alive = (layout.counts[tiles] > k) & ~done.all(1)
        if not bool(alive.all()):
            T_final[tiles[~alive]] = T[~alive]
            tiles, T, done = tiles[alive], T[alive], done[alive]
            visit.compact(alive)
        if tiles.numel() == 0:
            break
        gids = layout.gather(tiles, k)
        chunk_rows = rows[gids]
        for s in range(0, tiles.numel(), BLOCK):
            span = slice(s, s + BLOCK)
            pairs = visit(span, tiles[span], gids[span], chunk_rows[span], T[span], done[span])
            T[span] = pairs.T_out
            done[span] |= pairs.stopped
    T_final[tiles] = T
    return T_final


class _ForwardVisit:
    def __init__(self, layout: _Layout, rows: Tensor):
        self.layout = layout
        self.colour = rows.new_zeros(layout.n_tiles, PIXELS, 3)

    def start(self, tiles: Tensor) -> None:
        pass

    def compact(self, alive: Tensor) -> None:
        pass

    def __call__(self, span, tiles, gids, rows, T, done) -> _Pairs:
        coefs, _ = _log_alpha_coefs(rows, self.layout.centres[tiles])
        pairs = _Pairs(coefs, self.layout.monomials, T, done)
        self.colour.index_add_(0, tiles, torch.bmm(pairs.weights.transpose(1, 2), rows[..., COLOR]))
        return pairs


class _BackwardVisit:
    """Replays the forward traversal and accumulates per-Gaussian gradients (rows of ``_pack``'s layout)."""

    def __init__(self, layout: _Layout, rows: Tensor, v_colour: Tensor, colour: Tensor, G_bg: Tensor):
        self.layout = layout
        self.grads = torch.zeros_like(rows)  # d/d(mean xy, conic, opacity, rgb) per flat Gaussian
        self.v_colour = v_colour  # [T, 256, 3]
        # dL/dalpha_i = T_i (c_i . g) - (colour behind i . g + T_final (bg . g - dL/dalpha_out)) / (1 - alpha_i),
        # with colour behind i = total - in front of i - c_i w_i.
        self.total = (colour * v_colour).sum(-1) + G_bg  # [T, 256]
        self.front = None  # [A, 256]: sum over Gaussians so far of w (c . g)

    def start(self, tiles: Tensor) -> None:
        self.front = self.total.new_zeros(tiles.numel(), PIXELS)

    def compact(self, alive: Tensor) -> None:
        self.front = self.front[alive]

    def __call__(self, span, tiles, gids, rows, T, done) -> _Pairs:
        coefs, m = _log_alpha_coefs(rows, self.layout.centres[tiles])
        p = _Pairs(coefs, self.layout.monomials, T, done)
        g = self.v_colour[tiles]  # [A, 256, 3]
        cg = torch.bmm(rows[..., COLOR], g.transpose(1, 2))  # [A, B, 256] c_i . g
        front = torch.cumsum(p.weights * cg, 1).add_(self.front[span][:, None, :])
        self.front[span] = front[:, -1]
        v_alpha = front.sub_(self.total[tiles][:, None, :]).div_(p.one_minus).add_(p.T_excl.mul_(cg))
        # d alpha / d sigma = -alpha where alpha is not clamped at 0.999 (gsplat: o * vis <= 0.999).
        minus_alpha = F.threshold(p.alpha.neg(), -MAX_ALPHA, 0.0)
        v_sigma = v_alpha.mul_(minus_alpha).mul_(p.keep)
        S = v_sigma @ self.layout.monomials.T  # [A, B, 6] sums of v_sigma * [1, u, v, u^2, uv, v^2]
        S0, Su, Sv, Suu, Suv, Svv = S.unbind(-1)
        mx, my = m.unbind(-1)  # dx = mean - pixel = mx - u
        Sdx, Sdy = mx * S0 - Su, my * S0 - Sv
        Sdxdx = mx * mx * S0 - 2 * mx * Su + Suu
        Sdxdy = mx * my * S0 - mx * Sv - my * Su + Suv
        Sdydy = my * my * S0 - 2 * my * Sv + Svv
        a, b, c = rows[..., CONIC].unbind(-1)
        grads = torch.cat(
            [
                torch.stack([a * Sdx + b * Sdy, b * Sdx + c * Sdy], -1),  # mean
                torch.stack([0.5 * Sdxdx, Sdxdy, 0.5 * Sdydy], -1),  # conic
                (-S0 / rows[..., OPACITY])[..., None],  # opacity: d alpha / d o = alpha / o
                torch.bmm(p.weights, g),  # rgb
            ],
            -1,
        )
        self.grads.index_add_(0, gids.reshape(-1), grads.reshape(-1, WIDTH))
        return p


class _Composite(torch.autograd.Function):
    @staticmethod
    def forward(ctx, means2d, conics, colors, opacities, backgrounds, isect, width, height):
        C, N = means2d.shape[:2]
        layout = _Layout(isect, C, N, width, height, means2d.device, means2d.dtype)
        rows = _pack(means2d, conics, colors, opacities)
        visit = _ForwardVisit(layout, rows)
        T_final = _traverse(layout, rows, visit)
        image = visit.colour
        if backgrounds is not None:
            image = image + T_final[..., None] * backgrounds[layout.camera][:, None, :]
        ctx.layout = layout
        ctx.save_for_backward(means2d, conics, colors, opacities, backgrounds, visit.colour, T_final)
        return layout.to_images(image), layout.to_images(1 - T_final[..., None])

    @staticmethod
    def backward(ctx, v_image, v_alpha):
        means2d, conics, colors, opacities, backgrounds, colour, T_final = ctx.saved_tensors
        layout = ctx.layout
        C, N = means2d.shape[:2]
        v_colour = layout.from_images(v_image)
        G_bg = -T_final * layout.from_images(v_alpha)[..., 0]
        if backgrounds is not None:
            G_bg = G_bg + T_final * (v_colour * backgrounds[layout.camera][:, None, :]).sum(-1)
        rows = _pack(means2d, conics, colors, opacities)
        visit = _BackwardVisit(layout, rows, v_colour, colour, G_bg)
        _traverse(layout, rows, visit)
        grads = visit.grads[:-1].reshape(C, N, WIDTH)
        v_bg = None
        if backgrounds is not None and ctx.needs_input_grad[4]:
            v_bg = torch.zeros_like(backgrounds).index_add_(0, layout.camera, (v_colour * T_final[..., None]).sum(1))
        return (
            grads[..., MEAN], grads[..., CONIC], grads[..., COLOR], grads[..., OPACITY], v_bg, None, None, None
        )  # fmt: skip
