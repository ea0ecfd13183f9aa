"""One rasterization function for 3D Gaussian splats, three backends: gsplat's CUDA kernels, a pure-PyTorch twin,
and the twin's algorithm compiled by numba (the CPU default).

Semantics are those of ``gsplat.rasterization`` 1.5.3 with ``packed=False``, ``eps2d=0.3``, ``tile_size=16`` and no
radius clipping: EWA projection with a 0.3 px^2 low-pass dilation, an opacity-aware extent of at most 3.33 sigma,
culling outside [near, far], outside the image and below opacity 1/255; per pixel, Gaussians in depth order with alpha
= min(0.999, o exp(-sigma)) skipped below 1/255, stopping before the first one that would bring the transmittance T to
1e-4 or below; colours premultiplied, ``C = sum_i c_i a_i T_i + T_final * background``. SH colours are evaluated from
the camera centre to each mean, plus 0.5, clamped at 0.

``rasterize_mode="antialiased"`` (gsplat's, from Mip-Splatting) multiplies each opacity by
sqrt(det(cov2d) / det(cov2d + 0.3 I)), so that the dilation blurs a small Gaussian instead of inflating it.

Depth (``render_mode``, as gsplat's): "D" composites each Gaussian's camera z like a colour, ``sum_i z_i a_i T_i``,
with no background; "ED" divides that by the alpha, the expected depth; "RGB+D" and "RGB+ED" append it to the
colours as a fourth channel.

Intrinsics follow orbit4d (``multiview.Camera.K``: the centre of the top-left pixel is (0, 0)); all backends add
0.5 to cx and cy before following gsplat, so ``meta`` is in gsplat's pixel convention (``meta["means2d"]`` = ours
+ 0.5), which is what gsplat's strategies expect.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

from reconstruct import _tile_compositor as _tc
from reconstruct import _torch_rasterizer as _tr

BACKENDS = ("auto", "torch", "numba", "gsplat")
RENDER_MODES = ("RGB", "D", "ED", "RGB+D", "RGB+ED")
RASTERIZE_MODES = ("classic", "antialiased")


def rasterize(
    means: Tensor,  # [N, 3] world
    quats: Tensor,  # [N, 4] wxyz, not necessarily normalized
    scales: Tensor,  # [N, 3] linear scales
    opacities: Tensor,  # [N] in [0, 1]
    colors: Tensor,  # [N, 3] RGB, or [N, K, 3] SH coefficients when sh_degree is not None
    viewmats: Tensor,  # [C, 4, 4] cam_from_world, OpenCV
    Ks: Tensor,  # [C, 3, 3] orbit4d convention (pixel centres at integers)
    width: int,
    height: int,
    sh_degree: int | None = None,
    backgrounds: Tensor | None = None,  # [C, 3]
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    backend: str = "auto",
    absgrad: bool = False,
    check_finite: bool = True,
    render_mode: str = "RGB",
    rasterize_mode: str = "classic",
) -> tuple[Tensor, Tensor, dict]:
    """Render N Gaussians into C images; returns colors [C, H, W, X], alphas [C, H, W, 1] and gsplat's ``meta``.

    ``render_mode``: "RGB" (X = 3), "D" or "ED" (X = 1: accumulated or expected camera z), "RGB+D" or "RGB+ED"
    (X = 4), as gsplat's. Depth is differentiable (in the means and the cameras).
    ``rasterize_mode``: "classic" or "antialiased" (opacities multiplied by the dilation's compensation, as gsplat's;
    ``meta["opacities"]`` holds the multiplied ones).

    ``backend``: ``"auto"`` takes gsplat for CUDA tensors, numba for float32 CPU tensors (when numba is installed)
    and the PyTorch twin otherwise; ``"torch"`` runs anywhere (float32 or float64); ``"numba"`` renders float32 CPU
    tensors with compiled kernels (projection, SH colours, binning, compositing; when the cameras need gradients or
    ``sh_degree`` is 4, projection and colours are the twin's); ``"gsplat"`` needs CUDA float32 tensors.
    ``absgrad``: the backward pass also sets ``meta["means2d"].absgrad`` (sums of absolute per-pixel gradients), for
    ``DefaultStrategy(absgrad=True)``.
    ``check_finite``: raise ValueError when an input holds NaN or Inf (False: the caller checks, as the trainer does
    in its one read from the device per step; each check costs kernel launches on CUDA).
    On the CPU backends depth is a second compositing pass over the same tile lists (the colour kernels stay
    three-channel and no slower for "RGB"); ``absgrad`` then sums the colour pass's gradients only (gsplat: both).

    ``meta`` carries gsplat's keys for a ``packed=False`` call, so ``gsplat.strategy.DefaultStrategy`` works on it:
    ``means2d`` [C, N, 2] (a non-leaf tensor whose ``.grad`` gsplat's strategies read), ``radii`` [C, N, 2] int32,
    ``depths`` [C, N], ``conics`` [C, N, 3], ``opacities`` [C, N], ``width``, ``height``, ``n_cameras``,
    ``gaussian_ids`` (None), and the tile binning (``tile_size``, ``isect_ids``, ``flatten_ids``, ``isect_offsets``,
    ...): 16 px tiles from gsplat, 8 px tiles from the CPU backends, and from the numba backend only the tiles of a
    Gaussian's box where its alpha can reach 1/255 (the images depend on neither).

    The PyTorch backend runs on any device: on CUDA it is a correctness twin, about 300x slower than gsplat; on the
    CPU it composites tiles in ``torch.get_num_threads()`` Python threads (at most 4) and lowers the process-wide
    intra-op thread count meanwhile. The numba backend runs its kernels in ``torch.get_num_threads()`` threads (at
    most 8), 3-4x faster than the twin on the CPU; they compile once per machine (seconds, then cached).

    Example:
        >>> import torch
        >>> means = torch.tensor([[0.0, 0.0, 2.0]])
        >>> quats = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
        >>> scales = torch.full((1, 3), 0.05)
        >>> K = torch.tensor([[[50.0, 0, 16.0], [0, 50.0, 12.0], [0, 0, 1]]])  # mean lands on pixel (16, 12)
        >>> img, alpha, meta = rasterize(means, quats, scales, torch.ones(1), torch.ones(1, 3),
        ...                              torch.eye(4)[None], K, width=32, height=24)
        >>> img.shape, alpha.shape, meta["radii"].shape
        (torch.Size([1, 24, 32, 3]), torch.Size([1, 24, 32, 1]), torch.Size([1, 1, 2]))
        >>> round(alpha.max().item(), 3)
        0.999
    """
    tensors = _validate(
        means, quats, scales, opacities, colors, viewmats, Ks, width, height, sh_degree, backgrounds,
        near_plane, far_plane, backend, render_mode, rasterize_mode,
    )  # fmt: skip
    finite = _FiniteCheck(tensors) if check_finite else None
    if backend == "auto":
        backend = "gsplat" if means.is_cuda else "numba" if means.dtype == torch.float32 and _has_numba() else "torch"
    Ks = Ks + _pixel_centre_offset(Ks.device, Ks.dtype)  # orbit4d's pixel centres are at integers; gsplat's at +0.5
    args = (means, quats, scales, opacities, colors, viewmats, Ks, width, height, sh_degree, backgrounds)
    if backend == "gsplat":
        out = _rasterize_gsplat(*args, near_plane, far_plane, absgrad, render_mode, rasterize_mode)
    else:
        kernels = _cpu_kernels(backend, Ks.requires_grad, sh_degree,
                               rasterize_mode == "antialiased")  # fmt: skip
        out = _rasterize_torch(*args, near_plane, far_plane, absgrad, render_mode, *kernels)
    if finite is not None:
        finite.check()
    return out


@functools.cache
def _pixel_centre_offset(device: torch.device, dtype: torch.dtype) -> Tensor:
    """[3, 3] added to orbit4d's K to get gsplat's (cx, cy + 0.5); cached to spare a host-to-device copy per call."""
    offset = torch.zeros(3, 3, dtype=dtype)
    offset[0, 2] = offset[1, 2] = 0.5
    return offset.to(device)


@functools.cache
def _has_numba() -> bool:
    try:
        import numba  # noqa: F401
    except ImportError:
        return False
    return True


def _cpu_kernels(backend: str, intrinsics_need_grad: bool, sh_degree: int | None, antialiased: bool = False) -> tuple:
    """(projection, SH colours, tile binning, compositing) of the CPU backends: compiled (numba) or the pure-PyTorch
    twin's (torch). The numba projection and colours differentiate the cameras' poses but not their intrinsics, and
    stop at SH degree 3: the twin's stand in for those. Binning takes (projected, opacities [C, N], width, height)."""
    twin_project = functools.partial(_tr.project, antialiased=antialiased)
    if backend != "numba":
        return twin_project, _tr.view_colors, _twin_bins, _tc.composite
    from reconstruct import _numba_kernels, _numba_projection

    def bins(proj: _tr.Projected, opacities: Tensor, width: int, height: int) -> _tr.Intersections:
        return _numba_kernels.intersect_tiles(proj.means2d, proj.radii, proj.depths, width, height,
                                              _numba_kernels.TILE, proj.conics, opacities)  # fmt: skip

    if intrinsics_need_grad or (sh_degree or 0) > _numba_projection.MAX_SH_DEGREE:
        return twin_project, _tr.view_colors, bins, _numba_kernels.composite
    project = functools.partial(_numba_projection.project, antialiased=antialiased)
    return project, _numba_projection.view_colors, bins, _numba_kernels.composite


def _twin_bins(proj: _tr.Projected, opacities: Tensor, width: int, height: int) -> _tr.Intersections:
    """gsplat's binning: every tile of each Gaussian's box."""
    return _tr.intersect_tiles(proj.means2d, proj.radii, proj.depths, width, height, _tc.TILE_SIZE)


def _rasterize_torch(
    means, quats, scales, opacities, colors, viewmats, Ks, width, height, sh_degree, backgrounds, near, far, absgrad,
    render_mode, project, view_colors, intersect_tiles, composite,
) -> tuple[Tensor, Tensor, dict]:  # fmt: skip
    """``project``, ``view_colors``, ``intersect_tiles`` (binning, see ``_cpu_kernels``) and ``composite`` in turn;
    depth composites as a colour (z, 0, 0) in a second pass over the same tile lists."""
    C, N = viewmats.shape[0], means.shape[0]
    proj = project(means, quats, scales, opacities, viewmats, Ks, width, height, near, far)
    opacities = opacities.expand(C, N) if proj.compensations is None else opacities * proj.compensations
    isect = intersect_tiles(proj, opacities, width, height)
    passes = []
    if render_mode.startswith("RGB"):
        rgb = view_colors(colors, means, viewmats, proj.radii, sh_degree)
        image, alpha = composite(proj.means2d, proj.conics, rgb, opacities, backgrounds, isect, width, height, absgrad)
        passes.append(image)
    if render_mode.endswith("D"):
        z = torch.nn.functional.pad(proj.depths[..., None], (0, 2))  # [C, N, 3]
        depth, alpha = composite(proj.means2d, proj.conics, z, opacities, None, isect, width, height,
                                 absgrad and not passes)  # fmt: skip
        depth = depth[..., :1]
        passes.append(depth / alpha.clamp_min(1e-10) if render_mode.endswith("ED") else depth)
    image = torch.cat(passes, -1) if len(passes) > 1 else passes[0]
    meta = {
        "batch_ids": None,
        "camera_ids": None,
        "gaussian_ids": None,
        "radii": proj.radii,
        "means2d": proj.means2d,
        "depths": proj.depths,
        "conics": proj.conics,
        "opacities": opacities,
        "tile_width": isect.tile_width,
        "tile_height": isect.tile_height,
        "tiles_per_gauss": isect.tiles_per_gauss,
        "isect_ids": isect.isect_ids,
        "flatten_ids": isect.flatten_ids,
        "isect_offsets": isect.isect_offsets,
        "width": width,
        "height": height,
        "tile_size": isect.tile_size,
        "n_batches": 1,
        "n_cameras": C,
    }
    return image, alpha, meta


def _rasterize_gsplat(
    means, quats, scales, opacities, colors, viewmats, Ks, width, height, sh_degree, backgrounds, near, far, absgrad,
    render_mode, rasterize_mode,
) -> tuple[Tensor, Tensor, dict]:  # fmt: skip
    from gsplat import rasterization

    return rasterization(
        means, quats, scales, opacities, colors, viewmats, Ks, width, height,
        near_plane=near, far_plane=far, radius_clip=0.0, eps2d=_tr.EPS2D, sh_degree=sh_degree, packed=False,
        tile_size=_tr.TILE_SIZE, backgrounds=backgrounds, render_mode=render_mode,
        rasterize_mode=rasterize_mode,
        absgrad=absgrad,
    )  # fmt: skip


def _validate(
    means, quats, scales, opacities, colors, viewmats, Ks, width, height, sh_degree, backgrounds, near, far, backend,
    render_mode, rasterize_mode,
) -> dict[str, Tensor]:  # fmt: skip
    """Raises ValueError on bad shapes, dtypes, devices or options; returns the input tensors by name."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if render_mode not in RENDER_MODES:
        raise ValueError(f"render_mode must be one of {RENDER_MODES}, got {render_mode!r}")
    if rasterize_mode not in RASTERIZE_MODES:
        raise ValueError(f"rasterize_mode must be one of {RASTERIZE_MODES}, got {rasterize_mode!r}")
    tensors = {"means": means, "quats": quats, "scales": scales, "opacities": opacities, "colors": colors,
               "viewmats": viewmats, "Ks": Ks}  # fmt: skip
    if backgrounds is not None:
        tensors["backgrounds"] = backgrounds
    for name, t in tensors.items():
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if means.ndim != 2 or means.shape[1] != 3:
        raise ValueError(f"means must have shape [N, 3], got {tuple(means.shape)}")
    N = means.shape[0]
    if viewmats.ndim != 3 or viewmats.shape[1:] != (4, 4):
        raise ValueError(f"viewmats must have shape [C, 4, 4] (cam_from_world), got {tuple(viewmats.shape)}")
    C = viewmats.shape[0]
    if C == 0:
        raise ValueError("viewmats must hold at least one camera")
    expected = {"quats": (N, 4), "scales": (N, 3), "opacities": (N,), "Ks": (C, 3, 3)}
    if backgrounds is not None:
        expected["backgrounds"] = (C, 3)
    for name, shape in expected.items():
        if tuple(tensors[name].shape) != shape:
            raise ValueError(f"{name} must have shape {list(shape)}, got {list(tensors[name].shape)}")
    if sh_degree is None:
        if tuple(colors.shape) != (N, 3):
            raise ValueError(f"colors must have shape [N, 3] = [{N}, 3] without sh_degree, got {list(colors.shape)}")
    else:
        if not isinstance(sh_degree, int) or not 0 <= sh_degree <= 4:
            raise ValueError(f"sh_degree must be an int in 0..4 or None, got {sh_degree!r}")
        needed = (sh_degree + 1) ** 2
        if colors.ndim != 3 or colors.shape[0] != N or colors.shape[2] != 3 or colors.shape[1] < needed:
            raise ValueError(
                f"colors must have shape [N, K, 3] with N = {N} and K >= (sh_degree + 1)^2 = {needed} SH "
                f"coefficients, got {list(colors.shape)}"
            )
    for name, value in (("width", width), ("height", height)):
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if not (0 < near < far):
        raise ValueError(f"need 0 < near_plane < far_plane, got near_plane={near}, far_plane={far}")
    dtypes = {t.dtype for t in tensors.values()}
    if len(dtypes) != 1 or not next(iter(dtypes)).is_floating_point:
        raise ValueError(f"all tensors must share one floating dtype, got { {k: t.dtype for k, t in tensors.items()} }")
    devices = {t.device for t in tensors.values()}
    if len(devices) != 1:
        raise ValueError(f"all tensors must be on one device, got { {k: str(t.device) for k, t in tensors.items()} }")
    if backend == "gsplat":
        if not means.is_cuda:
            raise ValueError("gsplat needs CUDA; use backend='torch' for tensors on the CPU")
        if means.dtype != torch.float32:
            raise ValueError(f"gsplat's kernels take float32 tensors, got {means.dtype}; use backend='torch'")
    if backend == "numba":
        if means.device.type != "cpu":
            raise ValueError("the numba backend composites on the CPU; use backend='gsplat' or 'torch' on CUDA")
        if means.dtype != torch.float32:
            raise ValueError(f"the numba backend takes float32 tensors, got {means.dtype}; use backend='torch'")
        if not _has_numba():
            raise ValueError("backend='numba' needs the numba package: pip install numba, or use backend='torch'")
    if backend == "auto" and means.is_cuda and means.dtype != torch.float32:
        raise ValueError(f"backend='auto' on CUDA runs gsplat, which takes float32, got {means.dtype}")
    if math.prod((C, N)) >= 2**31:
        raise ValueError(f"C * N = {C * N} Gaussian views exceed gsplat's int32 indices")
    return tensors


class _FiniteCheck:
    """Whether every input is finite, computed on the inputs' device and read when ``check()`` is called.

    On CUDA the flags are copied to pinned memory without waiting and read after rendering, which synchronises the
    stream anyway (gsplat reads its intersection count): reading them first would add a host sync per call. Kernel
    launches are what this check costs there (measured on the lent H100, where one launch costs 35-70 us from
    Python: two kernels per tensor took 0.47 ms per call against 0.8-0.9 ms for a whole 100k-Gaussian gsplat
    forward), hence one multi-tensor reduction. Rendering NaNs does no harm; the error comes before any output.
    """

    def __init__(self, tensors: dict[str, Tensor]):
        # One multi-tensor kernel on CUDA (a max-abs per tensor, NaN-propagating) instead of two kernels per tensor:
        # kernel launches, not arithmetic, are what this check costs there.
        values = [t.detach() for t in tensors.values() if t.numel()]  # an empty tensor has no max
        flags = torch.stack(torch._foreach_norm(values, math.inf)) < math.inf  # NaN < inf is False: one kernel
        self.names = [name for name, t in tensors.items() if t.numel()]
        if flags.is_cuda:
            self.flags = torch.empty(flags.shape, dtype=torch.bool, pin_memory=True)
            self.flags.copy_(flags, non_blocking=True)
            self.ready = torch.cuda.Event()
            self.ready.record()
        else:
            self.flags, self.ready = flags, None
            self.check()

    def check(self) -> None:
        if self.ready is not None:
            self.ready.synchronize()
        if not bool(self.flags.all()):
            bad = [name for name, ok in zip(self.names, self.flags.tolist()) if not ok]
            raise ValueError(f"{', '.join(bad)} has NaN or Inf values")
