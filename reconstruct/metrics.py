"""Image metrics and losses as 3DGS computes them: PSNR, SSIM (11 x 11 Gaussian window, sigma 1.5), D-SSIM; colour
correction for PSNR on photos of other exposures (``color_corrected``); and the depth error of a render against
ground truth (AbsRel, as depth estimation reports it).

Images are channels-last ``[..., H, W, 3]`` floats in [0, 1], what ``rasterize`` returns. SSIM follows the reference
3DGS code (``utils/loss_utils.py``): the window is applied per channel with zero padding, C1 = 0.01^2, C2 = 0.03^2,
and the SSIM map is averaged over pixels and channels.

LPIPS (AlexNet, v0.1; ``reconstruct.lpips``) needs pretrained weights that this project does not ship and never
downloads: ``lpips`` computes it when they are present locally (``$ORBIT4D_LPIPS_WEIGHTS`` or
``~/.cache/orbit4d/lpips_alex.safetensors``) and reports ``None`` otherwise, ``lpips_status`` saying why.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
LPIPS_UNAVAILABLE = (
    "no local LPIPS weights: set ORBIT4D_LPIPS_WEIGHTS or write ~/.cache/orbit4d/lpips_alex.safetensors (orbit4d "
    "downloads nothing); convert them once where the lpips package is installed: import lpips, safetensors.torch; "
    "safetensors.torch.save_model(lpips.LPIPS(net='alex'), 'lpips_alex.safetensors')"
)


def mse(image: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean squared error over [..., H, W, C]; ``mask`` [..., H, W, 1] (weights in [0, 1]) restricts it."""
    _check_pair(image, target)
    error = (image - target) ** 2
    if mask is None:
        return error.mean()
    weights = mask.expand_as(error)
    return (error * weights).sum() / weights.sum().clamp_min(1e-12)


def psnr(image: Tensor, target: Tensor, mask: Tensor | None = None) -> float:
    """Peak signal-to-noise ratio in dB for a peak of 1 (``inf`` for identical images).

    >>> round(psnr(torch.zeros(4, 4, 3), torch.full((4, 4, 3), 0.1)), 3)  # 0.1 in float32
    20.0
    """
    error = float(mse(image.detach().double(), target.detach().double(), mask))
    return math.inf if error == 0.0 else -10.0 * math.log10(error)


def color_corrected(image: Tensor, target: Tensor) -> Tensor:
    """``image`` [H, W, 3] after the affine colour map (3 x 3 matrix and offset) that brings it closest to ``target``
    in least squares, clamped to [0, 1]: what PSNR then measures is the geometry and texture, not the exposure or
    white balance a held-out photo was taken with (gsplat's ``cc_psnr`` for in-the-wild captures). Zip-NeRF and
    gsplat fit a quadratic map on the unclipped pixels only; on an object over a white background that map, fitted
    on the object, sends the clipped background anywhere (the Avocado: 5.2 dB "corrected" against 36.6 plain), so
    this fits an affine one on every pixel.

    >>> image = torch.rand(8, 8, 3, generator=torch.Generator().manual_seed(0))
    >>> psnr(color_corrected(image, 0.5 * image + 0.2), 0.5 * image + 0.2) > 60
    True
    """
    _check_pair(image, target)
    x = image.detach().reshape(-1, 3).double()
    design = torch.cat([x, torch.ones_like(x[:, :1])], dim=1)  # [N, 4]
    fit = torch.linalg.lstsq(design.cpu(), target.detach().reshape(-1, 3).double().cpu()).solution.to(x.device)
    return (design @ fit).clamp(0.0, 1.0).to(image.dtype).reshape(image.shape)


def depth_abs_rel(depth: Tensor, alpha: Tensor, target: Tensor, min_alpha: float = 0.5) -> tuple[float, float]:
    """(mean |depth - target| / target, coverage) over the pixels where ``target`` [H, W] has a surface (> 0).

    ``depth`` [H, W]: the render's expected depth, compared where its ``alpha`` [H, W] exceeds ``min_alpha`` (it is
    undefined where nothing was drawn); ``coverage``: the fraction of surface pixels compared. AbsRel is NaN when
    none is.

    >>> error, coverage = depth_abs_rel(torch.full((2, 2), 1.1), torch.ones(2, 2), torch.tensor([[1.0, 1.0], [1.0, 0.0]]))
    >>> round(error, 6), coverage
    (0.1, 1.0)
    """
    surface = target > 0
    compared = surface & (alpha > min_alpha) & torch.isfinite(depth)
    if not compared.any():
        return math.nan, 0.0
    error = ((depth[compared].double() - target[compared].double()).abs() / target[compared].double()).mean()
    return float(error), float(compared.sum() / surface.sum())


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> Tensor:
    """[size, size] normalised Gaussian kernel (float64)."""
    x = torch.arange(size, dtype=torch.float64) - size // 2
    g = torch.exp(-(x**2) / (2.0 * sigma**2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim_map(image: Tensor, target: Tensor, size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> Tensor:
    """[..., H, W, C] per-pixel SSIM (zero-padded 'same' convolution, as 3DGS); differentiable by autograd."""
    _check_pair(image, target)
    terms = _ssim_terms(_channels_first(image), _channels_first(target), size, sigma)
    return terms[0].permute(0, 2, 3, 1).reshape(image.shape)


def ssim(image: Tensor, target: Tensor) -> Tensor:
    """Mean SSIM of [..., H, W, C] images (1 for identical images); differentiable.

    Gradients reach ``image`` through a closed-form backward pass (three blurs of per-pixel partial derivatives, as
    fused-ssim does on CUDA) rather than autograd's trace of the forward: 2x faster forward and backward together
    on a 256 x 256 CPU image. A ``target`` that needs gradients goes through autograd instead.
    """
    _check_pair(image, target)
    if target.requires_grad:
        return ssim_map(image, target).mean()
    return _MeanSSIM.apply(image, target.detach())


def _channels_first(image: Tensor) -> Tensor:
    """[..., H, W, C] -> [B, C, H, W]."""
    return image.reshape(-1, *image.shape[-3:]).permute(0, 3, 1, 2)


def _blur(maps: Tensor, size: int, sigma: float) -> Tensor:
    """[B, K, H, W] convolved with the SSIM window, zero-padded 'same': a row pass and a column pass of the 1D
    Gaussian on all K channels at once (equal to the 2D window, 3-4x faster forward and backward). The window is
    symmetric, so this is also its own adjoint."""
    g = gaussian_window(size, sigma)[size // 2].to(maps)
    g = g / g.sum()  # the 1D factor of the 2D window
    groups = maps.shape[1]
    maps = F.conv2d(maps, g.expand(groups, 1, 1, size).contiguous(), padding=(0, size // 2), groups=groups)
    return F.conv2d(maps, g[:, None].expand(groups, 1, size, 1).contiguous(), padding=(size // 2, 0), groups=groups)


SSIM_C1, SSIM_C2 = 0.01**2, 0.03**2


def _ssim_terms(x: Tensor, y: Tensor, size: int, sigma: float) -> tuple[Tensor, ...]:
    """SSIM of [B, C, H, W] images per pixel, with the parts the backward pass needs: (S, mu_x, mu_y, A1, A2, B1,
    B2) for S = A1 A2 / (B1 B2), A1 = 2 mu_x mu_y + C1, A2 = 2 sigma_xy + C2, B1 = mu_x^2 + mu_y^2 + C1,
    B2 = sigma_x^2 + sigma_y^2 + C2 (local moments under the window)."""
    channels = x.shape[1]
    mu_x, mu_y, xx, yy, xy = _blur(torch.cat([x, y, x * x, y * y, x * y], 1), size, sigma).split(channels, 1)
    a1 = 2 * mu_x * mu_y + SSIM_C1
    a2 = 2 * (xy - mu_x * mu_y) + SSIM_C2
    b1 = mu_x**2 + mu_y**2 + SSIM_C1
    b2 = (xx - mu_x**2) + (yy - mu_y**2) + SSIM_C2
    return (a1 * a2) / (b1 * b2), mu_x, mu_y, a1, a2, b1, b2


class _MeanSSIM(torch.autograd.Function):
    """Mean SSIM with its gradient in closed form. As a function of the local moments mu_x, E[x^2] and E[xy]
    (the target's are constants), with D = B1 B2:

        dS/dmu_x = 2 mu_y (A2 - A1) / D - 2 mu_x S (1 / B1 - 1 / B2),  dS/dE[x^2] = -S / B2,  dS/dE[xy] = 2 A1 / D

    and a moment's gradient reaches pixel x(p) through the (self-adjoint) blur: dL/dx = blur(g dS/dmu_x)
    + 2 x blur(g dS/dE[x^2]) + y blur(g dS/dE[xy]), g = dL/dS per pixel.
    """

    @staticmethod
    def forward(ctx, image, target):
        x, y = _channels_first(image), _channels_first(target)
        s, mu_x, mu_y, a1, a2, b1, b2 = _ssim_terms(x, y, SSIM_WINDOW, SSIM_SIGMA)
        ctx.save_for_backward(image, target, s, mu_x, mu_y, a1, a2, b1, b2)
        return s.mean()

    @staticmethod
    def backward(ctx, grad):
        image, target, s, mu_x, mu_y, a1, a2, b1, b2 = ctx.saved_tensors
        x, y = _channels_first(image), _channels_first(target)
        g = grad / s.numel()
        inv_d = g / (b1 * b2)
        d_mu = 2 * mu_y * (a2 - a1) * inv_d - 2 * mu_x * (g * s) * (1 / b1 - 1 / b2)
        d_xx = -(g * s) / b2
        d_xy = 2 * a1 * inv_d
        channels = x.shape[1]
        b_mu, b_xx, b_xy = _blur(torch.cat([d_mu, d_xx, d_xy], 1), SSIM_WINDOW, SSIM_SIGMA).split(channels, 1)
        d_x = b_mu + 2 * x * b_xx + y * b_xy
        return d_x.permute(0, 2, 3, 1).reshape(image.shape), None


def dssim_loss(image: Tensor, target: Tensor) -> Tensor:
    """D-SSIM as the 3DGS loss uses it: 1 - SSIM (0 for identical images, at most 2)."""
    return 1.0 - ssim(image, target)


def photometric_loss(image: Tensor, target: Tensor, ssim_weight: float = 0.2) -> Tensor:
    """The 3DGS training loss: (1 - w) L1 + w D-SSIM."""
    l1 = (image - target).abs().mean()
    return (1.0 - ssim_weight) * l1 + ssim_weight * dssim_loss(image, target)


def lpips(image: Tensor, target: Tensor) -> float | None:
    """LPIPS (AlexNet, v0.1) of [..., H, W, 3] images in [0, 1], averaged over the leading dims (0 for identical
    images); ``None`` when no weights are present locally (``lpips_status`` says why) or the images are under
    32 pixels on a side (AlexNet's pooling needs at least 31).
    """
    from reconstruct.lpips import load_lpips

    _check_pair(image, target)
    model = load_lpips()
    if model is None or min(image.shape[-3:-1]) < 32:
        return None
    if image.shape[-1] != 3:
        raise ValueError(f"LPIPS compares RGB images [..., H, W, 3], got {tuple(image.shape)}")

    def batch(x: Tensor) -> Tensor:  # [N, 3, H, W] in [-1, 1], float32 as the weights
        return x.detach().reshape(-1, *x.shape[-3:]).permute(0, 3, 1, 2).float() * 2.0 - 1.0

    model.to(image.device)
    with torch.no_grad():
        return float(model(batch(image), batch(target)).mean())


def lpips_status() -> str | None:
    """None when ``lpips`` can compute LPIPS, else the reason it reports ``None`` (``LPIPS_UNAVAILABLE``)."""
    from reconstruct.lpips import load_lpips

    return None if load_lpips() is not None else LPIPS_UNAVAILABLE


def _check_pair(image: Tensor, target: Tensor) -> None:
    if image.shape != target.shape or image.dim() < 3:
        raise ValueError(f"images must be [..., H, W, C] of one shape, got {tuple(image.shape)} and "
                         f"{tuple(target.shape)}")
