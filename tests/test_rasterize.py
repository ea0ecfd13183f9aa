"""reconstruct.rasterize: the PyTorch and numba backends against a float64 every-pair reference, gsplat's strategy on
their meta, edge cases, input validation; on CUDA, the PyTorch backend against gsplat's kernels."""

from __future__ import annotations

import math

import pytest
import torch

from reconstruct.rasterize import rasterize

ALPHA_THRESHOLD = 1.0 / 255.0
GAUSSIAN_PARAMS = ("means", "quats", "scales", "opacities", "colors")


def look_at(eye, target, up=(0.0, -1.0, 0.0)) -> torch.Tensor:
    """OpenCV cam_from_world [4, 4] for a camera at ``eye`` looking at ``target`` (y down)."""
    eye, target, up = (torch.tensor(v, dtype=torch.float64) for v in (eye, target, up))
    z = torch.nn.functional.normalize(target - eye, dim=0)
    x = torch.nn.functional.normalize(torch.linalg.cross(-up, z), dim=0)
    y = torch.linalg.cross(z, x)
    R = torch.stack([x, y, z])
    T = torch.eye(4, dtype=torch.float64)
    T[:3, :3] = R
    T[:3, 3] = -R @ eye
    return T


def make_scene(
    num: int = 200,
    width: int = 32,
    height: int = 24,
    sh_degree: int | None = None,
    cameras: int = 2,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    backgrounds: bool = True,
    scale: tuple[float, float] = (0.02, 0.15),
) -> dict:
    """Gaussians in a unit cube seen by ``cameras`` cameras on a circle of radius 3, some outside the view."""
    g = torch.Generator().manual_seed(seed)
    means = (torch.rand(num, 3, generator=g, dtype=torch.float64) * 2 - 1) * 1.2
    quats = torch.randn(num, 4, generator=g, dtype=torch.float64) * 2
    lo, hi = scale
    scales = torch.exp(torch.rand(num, 3, generator=g, dtype=torch.float64) * math.log(hi / lo)) * lo
    opacities = torch.rand(num, generator=g, dtype=torch.float64) * 0.98 + 0.01
    if sh_degree is None:
        colors = torch.rand(num, 3, generator=g, dtype=torch.float64)
    else:
        colors = torch.randn(num, (sh_degree + 1) ** 2 + 1, 3, generator=g, dtype=torch.float64) * 0.3
    viewmats = torch.stack(
        [look_at((3 * math.sin(a), 0.4 * i, -3 * math.cos(a)), (0.0, 0.0, 0.0)) for i, a in
         enumerate(torch.linspace(0, 1.5, cameras).tolist())]
    )  # fmt: skip
    f = 0.9 * width
    K = torch.tensor([[f, 0, (width - 1) / 2 + 0.3], [0, 1.1 * f, (height - 1) / 2 - 0.2], [0, 0, 1]])
    scene = {
        "means": means, "quats": quats, "scales": scales, "opacities": opacities, "colors": colors,
        "viewmats": viewmats, "Ks": K[None].repeat(cameras, 1, 1).to(torch.float64), "width": width, "height": height,
        "sh_degree": sh_degree,
    }  # fmt: skip
    if backgrounds:
        scene["backgrounds"] = torch.rand(cameras, 3, generator=g, dtype=torch.float64)
    return {k: v.to(dtype) if isinstance(v, torch.Tensor) else v for k, v in scene.items()}


# --- float64 reference: every Gaussian-pixel pair, gsplat 1.5.3's CUDA semantics --------------------------------


def reference_rasterize(
    scene: dict, near: float = 0.01, far: float = 1e10, render_mode: str = "RGB", rasterize_mode: str = "classic"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Dense reference built on gsplat's own PyTorch projection and SH twins, with the CUDA kernels' culling; depth
    as gsplat's ``rasterization`` makes it: camera z as one more colour channel, with a zero background; antialiased
    as its ``add_blur``: opacities times sqrt(det(cov2d) / det(cov2d + 0.3 I)), culled and bounded by the product.
    Returns images, alphas and gsplat's radii [C, N, 2] (0 where culled)."""
    from gsplat.cuda._torch_impl import (
        _eval_sh_bases_fast,
        _persp_proj,
        _quat_scale_to_covar_preci,
        _world_to_cam,
    )

    means, viewmats, W, H = scene["means"], scene["viewmats"], scene["width"], scene["height"]
    Ks = scene["Ks"].clone()
    Ks[:, :2, 2] += 0.5  # orbit4d -> gsplat pixel convention
    covars, _ = _quat_scale_to_covar_preci(scene["quats"], scene["scales"], True, False)
    means_c, covars_c = _world_to_cam(means, covars, viewmats)
    means2d, cov2d = _persp_proj(means_c, covars_c, Ks, W, H)
    det_before = cov2d[..., 0, 0] * cov2d[..., 1, 1] - cov2d[..., 0, 1] * cov2d[..., 1, 0]
    cov2d = cov2d + 0.3 * torch.eye(2, dtype=cov2d.dtype)
    det = cov2d[..., 0, 0] * cov2d[..., 1, 1] - cov2d[..., 0, 1] * cov2d[..., 1, 0]
    conic = torch.stack([cov2d[..., 1, 1], -cov2d[..., 0, 1], cov2d[..., 0, 0]], -1) / det[..., None]
    opac = scene["opacities"].expand(len(viewmats), -1)
    if rasterize_mode == "antialiased":
        opac = opac * torch.sqrt((det_before / det).clamp_min(0))
    extent = torch.sqrt(2 * torch.log(opac.detach().clamp_min(ALPHA_THRESHOLD) / ALPHA_THRESHOLD)).clamp_max(3.33)
    radii = torch.ceil(extent[..., None] * torch.sqrt(torch.diagonal(cov2d.detach(), dim1=-2, dim2=-1)))
    z = means_c[..., 2].detach()
    m = means2d.detach()
    visible = (z >= near) & (z <= far) & (det.detach() > 0) & (opac.detach() >= ALPHA_THRESHOLD)
    visible &= (m + radii > 0).all(-1) & (m[..., 0] - radii[..., 0] < W) & (m[..., 1] - radii[..., 1] < H)

    if scene["sh_degree"] is None:
        rgb = scene["colors"].expand(len(viewmats), -1, -1)
    else:
        d = scene["sh_degree"]
        campos = torch.linalg.inv(viewmats)[:, :3, 3]
        dirs = torch.nn.functional.normalize(means[None] - campos[:, None], dim=-1)
        bases = _eval_sh_bases_fast((d + 1) ** 2, dirs)
        rgb = torch.clamp_min((bases[..., None] * scene["colors"][None, :, : (d + 1) ** 2]).sum(-2) + 0.5, 0)

    backgrounds = scene.get("backgrounds")
    if render_mode != "RGB":
        depth = means_c[..., 2:3]  # differentiable, unlike z
        rgb = depth if render_mode in ("D", "ED") else torch.cat([rgb, depth], -1)
        if backgrounds is not None:
            zero = backgrounds.new_zeros(len(backgrounds), 1)
            backgrounds = zero if render_mode in ("D", "ED") else torch.cat([backgrounds, zero], -1)
    image, alpha = reference_composite(means2d, conic, opac, rgb, backgrounds, visible, radii, z, W, H)
    if render_mode.endswith("ED"):
        image = torch.cat([image[..., :-1], image[..., -1:] / alpha.clamp_min(1e-10)], -1)
    return image, alpha, torch.where(visible[..., None], radii, 0).int()


def reference_composite(means2d, conics, opacities, rgb, backgrounds, visible, radii, depths, W, H):
    """Every pair of a visible Gaussian (depth order, gsplat's 16 px tiles) and a pixel, composited front to back."""
    tiles_w, tiles_h = math.ceil(W / 16), math.ceil(H / 16)
    ys, xs = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    pix = torch.stack([xs, ys], -1).reshape(-1, 2)
    m = means2d.detach()
    images, alphas = [], []
    for c in range(len(means2d)):
        ids = torch.nonzero(visible[c]).squeeze(1)
        ids = ids[torch.sort(depths[c, ids].float(), stable=True).indices]  # gsplat sorts float32 depths
        tmin = torch.floor(m[c, ids] / 16 - radii[c, ids] / 16).clamp_min(0)
        tmax = torch.ceil(m[c, ids] / 16 + radii[c, ids] / 16).clamp_min(0)
        tmin = torch.minimum(tmin, torch.tensor([tiles_w, tiles_h]))
        tmax = torch.minimum(tmax, torch.tensor([tiles_w, tiles_h]))
        tile = (pix // 16)[:, None]
        in_tile = ((tile >= tmin[None]) & (tile < tmax[None])).all(-1)  # [P, G]
        delta = means2d[c, ids][None] - (pix[:, None] + 0.5)
        q = conics[c, ids]
        sigma = 0.5 * (q[:, 0] * delta[..., 0] ** 2 + q[:, 2] * delta[..., 1] ** 2) + q[:, 1] * delta[..., 0] * delta[..., 1]
        alpha = torch.clamp_max(opacities[c, ids] * torch.exp(-sigma), 0.999)
        a = torch.where(in_tile & (sigma >= 0) & (alpha >= ALPHA_THRESHOLD), alpha, 0)
        a = torch.where(torch.cumprod(1 - a.detach(), 1) > 1e-4, a, 0)  # stop before T <= 1e-4
        T = torch.cumprod(torch.cat([a.new_ones(a.shape[0], 1), 1 - a], 1), 1)
        img = (a * T[:, :-1]) @ rgb[c, ids]
        if backgrounds is not None:
            img = img + T[:, -1:] * backgrounds[c]
        images.append(img.reshape(H, W, -1))
        alphas.append((1 - T[:, -1]).reshape(H, W, 1))
    return torch.stack(images), torch.stack(alphas)


def projected_2d_scene(num: int = 40, W: int = 20, H: int = 12, seed: int = 0) -> dict:
    """Float64 screen-space Gaussians (as after projection) with their tile lists, for the compositor alone."""
    from reconstruct import _tile_compositor, _torch_rasterizer

    g = torch.Generator().manual_seed(seed)
    C = 2
    means2d = torch.rand(C, num, 2, generator=g, dtype=torch.float64) * torch.tensor([W + 6.0, H + 6.0]) - 3
    L = torch.randn(C, num, 2, 2, generator=g, dtype=torch.float64) * 1.5
    cov = L @ L.transpose(-1, -2) + 0.3 * torch.eye(2, dtype=torch.float64)
    inv = torch.linalg.inv(cov)
    conics = torch.stack([inv[..., 0, 0], inv[..., 0, 1], inv[..., 1, 1]], -1)
    opacities = torch.rand(C, num, generator=g, dtype=torch.float64) * 0.9 + 0.05
    extent = torch.sqrt(2 * torch.log(opacities / ALPHA_THRESHOLD)).clamp_max(3.33)
    radii = torch.ceil(extent[..., None] * torch.sqrt(torch.diagonal(cov, dim1=-2, dim2=-1)))
    visible = (means2d + radii > 0).all(-1) & (means2d[..., 0] - radii[..., 0] < W) & (means2d[..., 1] - radii[..., 1] < H)
    radii = (radii * visible[..., None]).int()
    depths = torch.rand(C, num, generator=g, dtype=torch.float64) + 1
    isect = _torch_rasterizer.intersect_tiles(means2d, radii, depths, W, H, _tile_compositor.TILE_SIZE)
    return {
        "means2d": means2d, "conics": conics, "opacities": opacities, "rgb": torch.rand(C, num, 3, generator=g, dtype=torch.float64),
        "backgrounds": torch.rand(C, 3, generator=g, dtype=torch.float64), "visible": visible, "radii": radii,
        "depths": depths, "isect": isect, "W": W, "H": H,
    }  # fmt: skip


def call(scene: dict, **kwargs):
    return rasterize(**scene, **kwargs)


def leaf_scene(scene: dict, names=GAUSSIAN_PARAMS + ("viewmats", "backgrounds")) -> dict:
    out = dict(scene)
    for k in names:
        if out.get(k) is not None:
            out[k] = out[k].detach().clone().requires_grad_(True)
    return out


def grads_of(fn, scene: dict, weights: tuple[torch.Tensor, torch.Tensor], names=GAUSSIAN_PARAMS + ("viewmats",
             "backgrounds")) -> tuple[torch.Tensor, torch.Tensor, dict]:  # fmt: skip
    s = leaf_scene(scene, names)
    img, alpha = fn(s)[:2]
    ((img * weights[0]).sum() + (alpha * weights[1]).sum()).backward()
    grads = {k: s[k].grad for k in names if s.get(k) is not None}
    return img.detach(), alpha.detach(), grads


def assert_close_and_finite(ours: torch.Tensor, ref: torch.Tensor, atol: float, rtol: float, name: str) -> None:
    assert ours is not None, f"{name}: no gradient"
    assert torch.isfinite(ours).all(), f"{name} has NaN/Inf"
    torch.testing.assert_close(ours, ref, atol=atol, rtol=rtol, msg=lambda m: f"{name}: {m}")


# --- forward and gradients against the reference ---------------------------------------------------------------


@pytest.mark.parametrize(
    "sh_degree, num, seed, backgrounds",
    [(None, 150, 0, True), (0, 60, 1, False), (3, 300, 2, True), (None, 300, 3, False)],
)
def test_matches_dense_reference_float64(sh_degree, num, seed, backgrounds):
    scene = make_scene(num=num, sh_degree=sh_degree, seed=seed, backgrounds=backgrounds)
    g = torch.Generator().manual_seed(seed + 100)
    weights = (torch.randn(2, 24, 32, 3, generator=g, dtype=torch.float64),
               torch.randn(2, 24, 32, 1, generator=g, dtype=torch.float64))  # fmt: skip
    img, alpha, grads = grads_of(lambda s: call(s, backend="torch"), scene, weights)
    ref_img, ref_alpha, ref_grads = grads_of(reference_rasterize, scene, weights)
    assert ref_alpha.max() > 0.9 and (ref_alpha < 0.5).any(), "scene should have covered and empty pixels"
    assert_close_and_finite(img, ref_img, 1e-10, 1e-9, "image")
    assert_close_and_finite(alpha, ref_alpha, 1e-10, 1e-9, "alpha")
    for name, ref in ref_grads.items():
        assert_close_and_finite(grads[name], ref, 1e-8, 1e-7, f"d/d{name}")


@pytest.mark.parametrize("backend, camera_grads", [("torch", True), ("numba", True), ("numba", False)])
@pytest.mark.parametrize("seed, sh_degree", [(4, 2), (14, None), (24, 3)])
def test_matches_dense_reference_float32(backend, camera_grads, seed, sh_degree):
    """camera_grads: the cameras are optimised too (the numba backend then projects with the twin's PyTorch code);
    without, the numba backend's compiled projection and SH colours run."""
    scene = make_scene(num=250, sh_degree=sh_degree, seed=seed)
    names = GAUSSIAN_PARAMS + (("viewmats", "backgrounds") if camera_grads else ("backgrounds",))
    weights = (torch.rand(2, 24, 32, 3, dtype=torch.float64), torch.rand(2, 24, 32, 1, dtype=torch.float64))
    ref_img, ref_alpha, ref_grads = grads_of(reference_rasterize, scene, weights, names)
    s32 = {k: v.float() if isinstance(v, torch.Tensor) else v for k, v in scene.items()}
    img, alpha, grads = grads_of(lambda s: call(s, backend=backend), s32, tuple(w.float() for w in weights), names)
    assert_close_and_finite(img.double(), ref_img, 2e-4, 1e-3, "image")
    assert_close_and_finite(alpha.double(), ref_alpha, 2e-4, 1e-3, "alpha")
    for name, ref in ref_grads.items():
        scale = ref.abs().max().item()
        assert_close_and_finite(grads[name].double(), ref, 2e-3 * scale, 1e-2, f"d/d{name}")


@pytest.mark.parametrize("backend, dtype", [("torch", torch.float64), ("numba", torch.float32)])
@pytest.mark.parametrize("sh_degree, render_mode", [(None, "RGB"), (2, "RGB+ED")])
def test_antialiased_matches_dense_reference(backend, dtype, sh_degree, render_mode):
    """gsplat's rasterize_mode="antialiased": values and gradients (through the compensation too) against the
    reference; small Gaussians (down to a fraction of a pixel), where the compensation matters, and large ones."""
    scene = make_scene(num=300, sh_degree=sh_degree, seed=11, scale=(0.002, 0.15))
    channels = 4 if render_mode == "RGB+ED" else 3
    g = torch.Generator().manual_seed(12)
    weights = (torch.randn(2, 24, 32, channels, generator=g, dtype=torch.float64),
               torch.randn(2, 24, 32, 1, generator=g, dtype=torch.float64))  # fmt: skip
    names = GAUSSIAN_PARAMS + ("viewmats", "backgrounds")
    ref_img, ref_alpha, ref_grads = grads_of(
        lambda s: reference_rasterize(s, render_mode=render_mode, rasterize_mode="antialiased"), scene, weights, names
    )
    classic, _, classic_radii = reference_rasterize(scene, render_mode=render_mode)
    assert (classic - ref_img).abs().max() > 0.05, "the compensation should change this scene"
    radii = reference_rasterize(scene, render_mode=render_mode, rasterize_mode="antialiased")[2]
    assert (radii != classic_radii).any(), "the compensated opacity should shrink some extents"
    s = {k: v.to(dtype) if isinstance(v, torch.Tensor) else v for k, v in scene.items()}
    img, alpha, grads = grads_of(
        lambda s: call(s, backend=backend, render_mode=render_mode, rasterize_mode="antialiased"), s,
        tuple(w.to(dtype) for w in weights), names,
    )  # fmt: skip
    meta = call(s, backend=backend, render_mode=render_mode, rasterize_mode="antialiased")[2]
    assert torch.equal(meta["radii"], radii), "radii (the strategy's visibility) as gsplat bounds them"
    covered = (ref_alpha > 0.5).expand_as(ref_img).clone()
    covered[..., :3] = True  # the expected depth is compared where it is defined
    tight = dtype == torch.float64
    atol, rtol = (1e-10, 1e-9) if tight else (2e-3, 1e-3)
    assert_close_and_finite(img.double()[covered], ref_img[covered], atol, rtol, "image")
    assert_close_and_finite(alpha.double(), ref_alpha, atol, rtol, "alpha")
    for name, ref in ref_grads.items():
        scale = ref.abs().max().item()
        assert_close_and_finite(grads[name].double(), ref, (1e-8 if tight else 2e-3) * scale, 1e-7 if tight else 1e-2,
                                f"d/d{name}")  # fmt: skip


@pytest.mark.parametrize(
    "backend, dtype, camera_grads", [("torch", torch.float64, True), ("numba", torch.float32, False),
                                     ("numba", torch.float32, True)],
)  # fmt: skip
@pytest.mark.parametrize("render_mode", ["D", "ED", "RGB+D", "RGB+ED"])
def test_depth_matches_dense_reference(render_mode, backend, dtype, camera_grads):
    """Depth as gsplat renders it: values and gradients (through the depth channel and, for the expected depth,
    the alpha it is divided by) against the reference, in float64 for the twin and float32 for numba."""
    scene = make_scene(num=200, sh_degree=1, seed=7)
    channels = {"D": 1, "ED": 1, "RGB+D": 4, "RGB+ED": 4}[render_mode]
    g = torch.Generator().manual_seed(8)
    weights = (torch.randn(2, 24, 32, channels, generator=g, dtype=torch.float64),
               torch.randn(2, 24, 32, 1, generator=g, dtype=torch.float64))  # fmt: skip
    names = GAUSSIAN_PARAMS + (("viewmats", "backgrounds") if camera_grads else ("backgrounds",))
    ref_img, ref_alpha, ref_grads = grads_of(lambda s: reference_rasterize(s, render_mode=render_mode), scene,
                                             weights, names)  # fmt: skip
    covered = ref_alpha[..., 0] > 0.5
    assert covered.any() and (~covered).any()
    depth = ref_img[..., -1][covered] / (1.0 if render_mode.endswith("ED") else ref_alpha[..., 0][covered])
    assert 1.5 < depth.min() and depth.max() < 4.5, "the scene sits 3 units in front of the cameras"
    s = {k: v.to(dtype) if isinstance(v, torch.Tensor) else v for k, v in scene.items()}
    img, alpha, grads = grads_of(lambda s: call(s, backend=backend, render_mode=render_mode), s,
                                 tuple(w.to(dtype) for w in weights), names)  # fmt: skip
    assert img.shape == ref_img.shape
    tight = dtype == torch.float64
    # the expected depth divides by alphas near 0 at the silhouettes: compare it where pixels are covered
    where = covered[..., None] if render_mode.endswith("ED") else torch.ones_like(covered[..., None])
    assert_close_and_finite(img.double()[..., -1:][where], ref_img[..., -1:][where], 1e-9 if tight else 2e-3,
                            1e-9 if tight else 1e-3, "depth")  # fmt: skip
    atol, rtol = (1e-10, 1e-9) if tight else (2e-4, 1e-3)
    assert_close_and_finite(img.double()[..., :-1], ref_img[..., :-1], atol, rtol, "colour")
    assert_close_and_finite(alpha.double(), ref_alpha, atol, rtol, "alpha")
    for name, ref in ref_grads.items():
        if ref is None:  # colours and backgrounds, when only depth is rendered
            assert grads[name] is None or not grads[name].any(), f"d/d{name} should be zero"
            continue
        scale = ref.abs().max().item()
        assert_close_and_finite(grads[name].double(), ref, (1e-8 if tight else 2e-3) * scale, 1e-7 if tight else 1e-2,
                                f"d/d{name}")  # fmt: skip


@pytest.mark.parametrize(
    "sh_degree, antialiased", [(None, False), (0, False), (1, False), (2, False), (3, False), (None, True), (2, True)]
)
def test_numba_projection_and_colors_match_the_twin(sh_degree, antialiased):
    """The compiled projection and SH colours against the twin's PyTorch code in float64, values and gradients
    (means, quats, scales, SH coefficients, camera poses; antialiased: the compensations too), with Gaussians behind
    the near plane, beyond the far plane, outside the image, with the Jacobian's field-of-view clamp active, too
    transparent, and three cameras."""
    from reconstruct import _numba_projection, _torch_rasterizer

    g = torch.Generator().manual_seed(30 + (sh_degree or 0))
    N, C, W, H = 3000, 3, 80, 60
    means = torch.randn(N, 3, generator=g, dtype=torch.float64) * torch.tensor([2.5, 2.0, 2.0], dtype=torch.float64)
    quats = torch.randn(N, 4, generator=g, dtype=torch.float64)
    scales = torch.exp(torch.rand(N, 3, generator=g, dtype=torch.float64) * 4 - 5)
    opacities = torch.rand(N, generator=g, dtype=torch.float64)
    opacities[:50] = 0.5 / 255  # culled as transparent
    colors = torch.randn(N, 3 if sh_degree is None else 16, 3, generator=g, dtype=torch.float64) * 0.4
    colors = colors[:, 0] if sh_degree is None else colors
    viewmats = torch.stack([look_at((3 * math.sin(a), 0.5, -3 * math.cos(a)), (0.0, 0.0, 0.0)) for a in (0, 1, 2.5)])
    Ks = torch.tensor([[60.0, 0, 40.5], [0, 66.0, 30.5], [0, 0, 1]], dtype=torch.float64).repeat(C, 1, 1)
    inputs = {"means": means, "quats": quats, "scales": scales, "colors": colors, "viewmats": viewmats}
    weights = [torch.randn(shape, generator=g, dtype=torch.float64) for shape in ((C, N, 2), (C, N, 3), (C, N),
                                                                                   (C, N, 3), (C, N))]  # fmt: skip

    def run(module, dtype):
        x = {k: v.to(dtype).requires_grad_(True) for k, v in inputs.items()}
        proj = module.project(x["means"], x["quats"], x["scales"], opacities.to(dtype), x["viewmats"], Ks.to(dtype),
                              W, H, 0.01, 5.0, antialiased=antialiased)  # fmt: skip
        rgb = module.view_colors(x["colors"], x["means"], x["viewmats"], proj.radii, sh_degree)
        outputs = (proj.means2d, proj.conics, proj.depths, rgb) + ((proj.compensations,) if antialiased else ())
        sum((out * w.to(dtype)).sum() for out, w in zip(outputs, weights)).backward()
        return proj.radii, [out.detach().double() for out in outputs], {k: v.grad for k, v in x.items()}

    radii, outputs, grads = run(_numba_projection, torch.float32)
    ref_radii, ref_outputs, ref_grads = run(_torch_rasterizer, torch.float64)
    visible = (ref_radii > 0).all(-1)
    assert 0.2 < visible.float().mean() < 0.9, "the scene should have both culled and visible Gaussians"
    camera_x = torch.einsum("cj,nj->cn", viewmats[:, 0, :3], means) + viewmats[:, 0, None, 3]
    depth = ref_outputs[2]
    limit = max(W - 40.5, 40.5) / 60.0 + 0.3 * 0.5 * W / 60.0  # gsplat's: 1.3x the field of view, in x / z
    clamped = (camera_x / depth).abs() > limit
    assert (visible & clamped).sum() > 20, "the Jacobian's clamp should be active for some visible Gaussians"
    assert (radii != ref_radii).any(-1).float().mean() < 1e-3  # float32 rounding may move a ceil by one
    same = (radii == ref_radii).all(-1)
    if antialiased:
        compensations = ref_outputs[4][visible]
        assert compensations.min() < 0.5 < compensations.max() < 1.0, "small and large Gaussians on screen"
    for name, out, ref in zip(("means2d", "conics", "depths", "colours", "compensations"), outputs, ref_outputs):
        torch.testing.assert_close(out[same], ref[same], atol=1e-5 * ref.abs().max().item(), rtol=1e-5, msg=name)
    for name, ref in ref_grads.items():
        scale = ref.abs().max().item()
        assert_close_and_finite(grads[name].double(), ref, 1e-5 * scale, 1e-4, f"d/d{name}")


def test_compositor_gradcheck_float64():
    from reconstruct._tile_compositor import composite

    sc = projected_2d_scene(num=12, W=12, H=9, seed=11)
    inputs = [sc[k].clone().requires_grad_(True) for k in ("means2d", "conics", "rgb", "opacities", "backgrounds")]

    def fn(means2d, conics, rgb, opacities, backgrounds):
        return composite(means2d, conics, rgb, opacities, backgrounds, sc["isect"], sc["W"], sc["H"])

    assert torch.autograd.gradcheck(fn, inputs, eps=1e-7, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("compositor", ["torch", "numba"])
def test_compositor_matches_reference_and_absgrad(compositor):
    """Screen-space inputs against the every-pair reference; ``absgrad`` against per-pixel reference Jacobians.
    The numba compositor computes in float32 (as gsplat): its tolerances are float32's."""
    from reconstruct import _numba_kernels, _tile_compositor

    composite = {"torch": _tile_compositor.composite, "numba": _numba_kernels.composite}[compositor]
    dtype = {"torch": torch.float64, "numba": torch.float32}[compositor]
    atol, rtol = {"torch": (1e-12, 1e-10), "numba": (2e-6, 1e-4)}[compositor]
    sc = projected_2d_scene(num=60, W=20, H=12, seed=12)
    names = ("means2d", "conics", "rgb", "opacities", "backgrounds")
    ours = {k: sc[k].to(dtype).clone().requires_grad_(True) for k in names}
    ref = {k: sc[k].clone().requires_grad_(True) for k in names}
    img, alpha = composite(ours["means2d"], ours["conics"], ours["rgb"], ours["opacities"], ours["backgrounds"],
                           sc["isect"], sc["W"], sc["H"], absgrad=True)  # fmt: skip
    ref_img, ref_alpha = reference_composite(ref["means2d"], ref["conics"], ref["opacities"], ref["rgb"],
                                             ref["backgrounds"], sc["visible"], sc["radii"], sc["depths"], sc["W"],
                                             sc["H"])  # fmt: skip
    torch.testing.assert_close(img.double(), ref_img, atol=atol, rtol=rtol)
    torch.testing.assert_close(alpha.double(), ref_alpha, atol=atol, rtol=rtol)
    w_img = torch.randn(ref_img.shape, dtype=torch.float64)
    w_alpha = torch.randn(ref_alpha.shape, dtype=torch.float64)
    ((img * w_img.to(dtype)).sum() + (alpha * w_alpha.to(dtype)).sum()).backward()
    per_pixel = torch.cat([(ref_img * w_img).sum(-1, keepdim=True) + ref_alpha * w_alpha], -1).reshape(-1)
    eye = torch.eye(per_pixel.numel(), dtype=per_pixel.dtype)
    (jac,) = torch.autograd.grad(per_pixel, ref["means2d"], eye, retain_graph=True, is_grads_batched=True)
    grad_atol, grad_rtol = (1e-10, 1e-9) if dtype == torch.float64 else (1e-4, 1e-3)
    scale = jac.abs().sum(0).max()
    torch.testing.assert_close(ours["means2d"].grad.double(), jac.sum(0), atol=grad_atol * scale, rtol=grad_rtol)
    torch.testing.assert_close(ours["means2d"].absgrad.double(), jac.abs().sum(0), atol=grad_atol * scale,
                               rtol=grad_rtol)  # fmt: skip
    per_pixel.sum().backward()
    for k in names:
        scale = ref[k].grad.abs().max()
        torch.testing.assert_close(ours[k].grad.double(), ref[k].grad, atol=grad_atol * scale, rtol=grad_rtol)


def test_numba_backend_is_deterministic_and_thread_count_only_reorders_sums():
    """Tiles go to workers round-robin: the same threads give the same bits; other thread counts differ only by
    float32 summation order (here and in torch's projection)."""
    scene = make_scene(num=400, seed=15, dtype=torch.float32, width=64, height=40)
    weights = (torch.rand(2, 40, 64, 3), torch.rand(2, 40, 64, 1))
    runs, before = {}, torch.get_num_threads()
    try:
        for threads in (1, 2, 2):
            torch.set_num_threads(threads)
            runs.setdefault(threads, []).append(grads_of(lambda s: call(s, backend="numba"), scene, weights))
    finally:
        torch.set_num_threads(before)
    (img_a, alpha_a, grads_a), (img_b, alpha_b, grads_b) = runs[2]
    assert torch.equal(img_a, img_b) and torch.equal(alpha_a, alpha_b)
    assert all(torch.equal(grads_a[k], grads_b[k]) for k in grads_a)
    img_1, _, grads_1 = runs[1][0]
    torch.testing.assert_close(img_1, img_a, atol=1e-6, rtol=0)
    for k in grads_a:
        torch.testing.assert_close(grads_1[k], grads_a[k], atol=1e-6 * grads_a[k].abs().max().item(), rtol=1e-5)


@pytest.mark.parametrize("cameras, num, width, height", [(1, 2000, 64, 48), (3, 5000, 100, 70), (2, 0, 32, 32)])
def test_numba_tile_binning_equals_the_twins(cameras, num, width, height):
    """Counting sort by tile against the twin's sort of all pairs: every field identical, depth ties included;
    boxes partly outside the image, culled Gaussians."""
    from reconstruct import _numba_kernels, _torch_rasterizer

    g = torch.Generator().manual_seed(num)
    size = torch.tensor([width, height])
    means2d = torch.rand(cameras, num, 2, generator=g) * size * 1.4 - size * 0.2
    radii = (torch.rand(cameras, num, 2, generator=g) * 20).to(torch.int32)
    radii[torch.rand(cameras, num, generator=g) < 0.1] = 0
    depths = torch.rand(cameras, num, generator=g)
    depths[:, : num // 10] = 0.5
    ours = _numba_kernels.intersect_tiles(means2d, radii, depths, width, height)
    twin = _torch_rasterizer.intersect_tiles(means2d, radii, depths, width, height, _numba_kernels.TILE)
    for field in ("tiles_per_gauss", "isect_ids", "flatten_ids", "isect_offsets"):
        a, b = getattr(ours, field), getattr(twin, field)
        assert a.dtype == b.dtype and torch.equal(a, b), field
    assert (ours.tile_width, ours.tile_height) == (twin.tile_width, twin.tile_height)
    assert num == 0 or ours.flatten_ids.numel() > num  # boxes span several tiles


def test_numba_exact_tile_culling_drops_only_tiles_the_gaussian_cannot_reach():
    """With conics and opacities the numba binning keeps a box tile only where alpha can reach 1/255: the kept pairs
    are the box's in the same order, every dropped tile has alpha < 1/255 at each of its pixels (float64, brute
    force), many are dropped, and compositing gives the same bits, forward and backward."""
    from reconstruct import _numba_kernels

    sc = projected_2d_scene(num=400, W=70, H=45, seed=21)
    W, H, tile = sc["W"], sc["H"], _numba_kernels.TILE
    f32 = {k: sc[k].float() for k in ("means2d", "conics", "opacities", "rgb", "backgrounds")}
    box = _numba_kernels.intersect_tiles(f32["means2d"], sc["radii"], sc["depths"], W, H)
    exact = _numba_kernels.intersect_tiles(f32["means2d"], sc["radii"], sc["depths"], W, H, tile, f32["conics"],
                                           f32["opacities"])  # fmt: skip
    C, N = sc["radii"].shape[:2]

    def pairs(isect):  # tile -> Gaussian ids in list order
        ends = torch.cat([isect.isect_offsets.reshape(-1)[1:].long(), torch.tensor([isect.flatten_ids.numel()])])
        return [isect.flatten_ids[s:e].tolist() for s, e in zip(isect.isect_offsets.reshape(-1).tolist(), ends)]

    kept_total = dropped_total = 0
    ys, xs = torch.meshgrid(torch.arange(tile, dtype=torch.float64), torch.arange(tile, dtype=torch.float64),
                            indexing="ij")  # fmt: skip
    for t, (in_box, kept) in enumerate(zip(pairs(box), pairs(exact))):
        assert kept == [g for g in in_box if g in set(kept)], "kept pairs keep the box's order"
        tx, ty = t % box.tile_width, (t // box.tile_width) % box.tile_height
        px, py = (tx * tile + xs + 0.5).flatten(), (ty * tile + ys + 0.5).flatten()
        inside = (px < W) & (py < H)
        for g in set(in_box) - set(kept):
            (mx, my), (a, b, c) = sc["means2d"].reshape(-1, 2)[g], sc["conics"].reshape(-1, 3)[g]
            dx, dy = px[inside] - mx, py[inside] - my
            alpha = sc["opacities"].reshape(-1)[g] * torch.exp(-(0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy))
            assert alpha.max() < ALPHA_THRESHOLD, (t, g)
        kept_total, dropped_total = kept_total + len(kept), dropped_total + len(in_box) - len(kept)
    assert kept_total == exact.flatten_ids.numel() == int(exact.tiles_per_gauss.sum())
    assert dropped_total > 0.15 * (kept_total + dropped_total)
    renders = []
    for isect in (box, exact):
        inputs = {k: v.clone().requires_grad_(True) for k, v in f32.items()}
        img, alpha = _numba_kernels.composite(inputs["means2d"], inputs["conics"], inputs["rgb"], inputs["opacities"],
                                              inputs["backgrounds"], isect, W, H)  # fmt: skip
        (img.square().sum() + alpha.sum()).backward()
        renders.append((img, alpha, {k: v.grad for k, v in inputs.items()}))
    (img_box, alpha_box, grads_box), (img_exact, alpha_exact, grads_exact) = renders
    assert torch.equal(img_box, img_exact) and torch.equal(alpha_box, alpha_exact)
    for k in grads_box:
        assert torch.equal(grads_box[k], grads_exact[k]), k


@pytest.mark.parametrize("cameras, num", [(1, 5000), (3, 700), (2, 1), (1, 0)])
def test_numba_depth_order_is_torchs_stable_sort(cameras, num):
    """The radix argsort behind the binning: equal to ``torch.sort(stable=True)`` with ties and culled (inf) depths."""
    from reconstruct._numba_kernels import _radix_argsort

    g = torch.Generator().manual_seed(num)
    depths = torch.rand(cameras, num, generator=g) * 10
    depths[:, : num // 5] = 1.5
    depths[:, num // 5 : num // 3] = torch.inf
    expected = torch.sort(depths, dim=1, stable=True).indices
    assert torch.equal(torch.from_numpy(_radix_argsort(depths.view(torch.int32).numpy())), expected)


def test_auto_backend_on_the_cpu_is_numba_for_float32_and_torch_for_float64(monkeypatch):
    import reconstruct.rasterize as R

    used = []
    monkeypatch.setattr(R, "_cpu_kernels", lambda backend, *_: used.append(backend) or (
        R._tr.project, R._tr.view_colors, R._twin_bins, R._tc.composite))
    call(make_scene(num=20, seed=16, dtype=torch.float32))
    call(make_scene(num=20, seed=16, dtype=torch.float64))
    assert used == ["numba", "torch"]


# --- meta works with gsplat's DefaultStrategy ------------------------------------------------------------------


def test_meta_drives_gsplat_default_strategy():
    from gsplat.strategy import DefaultStrategy

    scene = make_scene(num=120, seed=5, dtype=torch.float32)
    params = torch.nn.ParameterDict({k: torch.nn.Parameter(scene[k].clone()) for k in GAUSSIAN_PARAMS})
    optimizers = {k: torch.optim.Adam([p], lr=1e-3) for k, p in params.items()}
    strategy = DefaultStrategy(refine_start_iter=1000, verbose=False)
    strategy.check_sanity(params, optimizers)
    state = strategy.initialize_state(scene_scale=1.0)
    for step in range(2):
        img, _, meta = rasterize(
            params["means"], params["quats"], params["scales"], params["opacities"], params["colors"],
            scene["viewmats"], scene["Ks"], scene["width"], scene["height"], backgrounds=scene["backgrounds"],
        )  # fmt: skip
        assert meta["means2d"].shape == (2, 120, 2) and not meta["means2d"].is_leaf
        assert meta["radii"].shape == (2, 120, 2) and meta["radii"].dtype == torch.int32
        assert meta["depths"].shape == (2, 120) and meta["n_cameras"] == 2
        strategy.step_pre_backward(params, optimizers, state, step, meta)
        img.mean().backward()
        strategy.step_post_backward(params, optimizers, state, step, meta, packed=False)
    visible = (meta["radii"] > 0).all(-1).sum(0)
    assert visible.sum() > 0
    torch.testing.assert_close(state["count"], 2 * visible.float())
    assert torch.isfinite(state["grad2d"]).all() and (state["grad2d"] > 0).any()
    assert (state["grad2d"][visible == 0] == 0).all()


def test_meta_drives_gsplat_default_strategy_with_absgrad():
    from gsplat.strategy import DefaultStrategy

    scene = make_scene(num=80, seed=13, dtype=torch.float32)
    params = torch.nn.ParameterDict({k: torch.nn.Parameter(scene[k].clone()) for k in GAUSSIAN_PARAMS})
    optimizers = {k: torch.optim.Adam([p], lr=1e-3) for k, p in params.items()}
    states = {}
    for absgrad in (False, True):
        strategy = DefaultStrategy(refine_start_iter=1000, absgrad=absgrad, verbose=False)
        state = strategy.initialize_state()
        img, _, meta = rasterize(**{**scene, **params}, absgrad=absgrad)
        strategy.step_pre_backward(params, optimizers, state, 0, meta)
        img.mean().backward()
        strategy.step_post_backward(params, optimizers, state, 0, meta, packed=False)
        states[absgrad] = state["grad2d"]
    assert (states[True] >= states[False] * (1 - 1e-5)).all() and (states[True] > states[False]).any()


# --- edge cases ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])  # float32: the numba backend
def test_zero_gaussians_render_background(dtype):
    scene = make_scene(num=0, seed=6, dtype=dtype)
    img, alpha, meta = call(scene)
    torch.testing.assert_close(img, scene["backgrounds"][:, None, None, :].expand(2, 24, 32, 3))
    assert (alpha == 0).all() and meta["radii"].shape == (2, 0, 2)


def test_behind_camera_outside_image_and_transparent_gaussians_are_culled():
    scene = make_scene(num=4, seed=7, backgrounds=False)
    scene["viewmats"] = torch.eye(4, dtype=torch.float64)[None].repeat(2, 1, 1)
    scene["means"] = leaf = torch.tensor(
        [[0.0, 0.0, -2.0], [0.0, 0.0, 0.005], [50.0, 0.0, 2.0], [0.0, 0.0, 2.0]], dtype=torch.float64
    ).requires_grad_(True)
    scene["opacities"] = torch.tensor([0.9, 0.9, 0.9, 0.0], dtype=torch.float64)
    img, alpha, meta = call(scene)
    assert (meta["radii"] == 0).all()
    assert (img == 0).all() and (alpha == 0).all()
    img.sum().backward()
    assert torch.isfinite(leaf.grad).all() and (leaf.grad == 0).all()


def test_non_square_image_and_float32():
    scene = make_scene(num=100, width=48, height=20, seed=8, dtype=torch.float32)
    img, alpha, _ = call(scene)
    assert img.shape == (2, 20, 48, 3) and alpha.shape == (2, 20, 48, 1) and img.dtype == torch.float32
    ref_img, ref_alpha, _ = reference_rasterize({k: v.double() if isinstance(v, torch.Tensor) else v
                                              for k, v in scene.items()})  # fmt: skip
    torch.testing.assert_close(img.double(), ref_img, atol=2e-4, rtol=1e-3)
    torch.testing.assert_close(alpha.double(), ref_alpha, atol=2e-4, rtol=1e-3)


def test_near_far_planes_cull_by_depth():
    scene = make_scene(num=200, seed=9, backgrounds=False)
    full = call(scene)[1]
    clipped = call(scene, near_plane=2.9, far_plane=3.1)[1]
    ref = reference_rasterize(scene, near=2.9, far=3.1)[1]
    torch.testing.assert_close(clipped, ref)
    assert clipped.sum() < 0.8 * full.sum()


@pytest.mark.parametrize(
    "change, match",
    [
        ({"means": torch.zeros(5, 2)}, r"means must have shape \[N, 3\]"),
        ({"quats": torch.zeros(4, 4)}, r"quats must have shape \[5, 4\]"),
        ({"colors": torch.zeros(5, 3, 3)}, r"colors must have shape \[N, 3\]"),
        ({"colors": torch.zeros(5, 3, 3), "sh_degree": 1}, r"K >= \(sh_degree \+ 1\)\^2 = 4"),
        ({"viewmats": torch.zeros(2, 3, 4)}, r"viewmats must have shape \[C, 4, 4\]"),
        ({"Ks": torch.zeros(1, 3, 3)}, r"Ks must have shape \[2, 3, 3\]"),
        ({"backgrounds": torch.zeros(2, 4)}, r"backgrounds must have shape \[2, 3\]"),
        ({"width": 0}, "width must be a positive int"),
        ({"near_plane": 0.0}, "0 < near_plane < far_plane"),
        ({"backend": "cuda"}, "backend must be one of"),
        ({"means": torch.full((5, 3), float("nan"))}, "means has NaN or Inf"),
        ({"scales": torch.ones(5, 3, dtype=torch.float64)}, "share one floating dtype"),
        ({"backend": "gsplat"}, "gsplat needs CUDA; use backend='torch'"),
        ({"backend": "numba", **{k: torch.ones(5, 3, dtype=torch.float64) for k in ("means", "scales", "colors")},
          "quats": torch.ones(5, 4, dtype=torch.float64), "opacities": torch.ones(5, dtype=torch.float64),
          "viewmats": torch.eye(4, dtype=torch.float64).repeat(2, 1, 1),
          "Ks": torch.eye(3, dtype=torch.float64).repeat(2, 1, 1),
          "backgrounds": torch.zeros(2, 3, dtype=torch.float64)},
         "the numba backend takes float32 tensors"),
    ],
)
def test_bad_inputs_raise_clear_errors(change, match):
    scene = make_scene(num=5, seed=10, dtype=torch.float32)
    scene.update(change)
    with pytest.raises(ValueError, match=match):
        call(scene)


# --- CUDA: the PyTorch backend against gsplat's kernels --------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (gsplat's kernels)")
@pytest.mark.parametrize(
    "num, width, height, sh_degree, render_mode, rasterize_mode",
    [(1000, 64, 48, None, "RGB", "classic"), (5000, 128, 96, 3, "RGB", "classic"),
     (10000, 256, 256, 1, "RGB", "classic"), (10000, 200, 120, None, "RGB", "classic"),
     (5000, 128, 96, 2, "RGB+D", "classic"), (5000, 128, 96, None, "ED", "classic"),
     (5000, 128, 96, 1, "RGB", "antialiased")],
)  # fmt: skip
def test_torch_backend_matches_gsplat_on_cuda(num, width, height, sh_degree, render_mode, rasterize_mode):
    scene = make_scene(num=num, width=width, height=height, sh_degree=sh_degree, seed=num, dtype=torch.float32,
                       scale=(0.005, 0.05))  # fmt: skip
    scene = {k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in scene.items()}
    channels = {"RGB": 3, "RGB+D": 4, "ED": 1}[render_mode]
    weights = (torch.rand(2, height, width, channels, device="cuda"), torch.rand(2, height, width, 1, device="cuda"))
    out = {}
    for backend in ("gsplat", "torch"):
        s = leaf_scene(scene)
        img, alpha, meta = rasterize(**s, backend=backend, render_mode=render_mode, rasterize_mode=rasterize_mode)
        if render_mode == "ED":  # compare the expected depth where it is defined (alpha near 0 at silhouettes)
            img = torch.where(alpha > 0.5, img, 0.0)
        ((img * weights[0]).sum() + (alpha * weights[1]).sum()).backward()
        out[backend] = (img.detach(), alpha.detach(), meta,
                        {k: s[k].grad for k in GAUSSIAN_PARAMS + ("backgrounds", "viewmats")
                         if s[k].grad is not None})  # fmt: skip
    (g_img, g_alpha, g_meta, g_grads), (t_img, t_alpha, t_meta, t_grads) = out["gsplat"], out["torch"]
    same_radii = (g_meta["radii"] == t_meta["radii"]).all(-1).float().mean().item()
    report = [f"radii equal for {100 * same_radii:.3f}% of Gaussian views"]
    for name, a, b in [("image", t_img, g_img), ("alpha", t_alpha, g_alpha)] + [
        (f"d/d{k}", t_grads[k], g_grads[k]) for k in g_grads
    ]:
        assert torch.isfinite(a).all(), f"{name} has NaN/Inf"
        diff = (a - b).abs()
        scale = b.abs().max().item()
        report.append(f"{name}: max |diff| {diff.max().item():.2e}, mean {diff.mean().item():.2e}, max |gsplat| {scale:.2e}")
        assert diff.max().item() <= 2e-3 * max(scale, 1.0), report[-1]
        assert diff.mean().item() <= 1e-4 * max(scale, 1.0), report[-1]
    print("\n".join(report))
    assert same_radii > 0.999


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (gsplat's kernels)")
@pytest.mark.parametrize("backend", ["gsplat", "torch"])
def test_non_finite_inputs_raise_on_cuda(backend):
    scene = make_scene(num=50, seed=14, dtype=torch.float32)
    scene = {k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in scene.items()}
    scene["scales"][3, 1] = float("inf")
    with pytest.raises(ValueError, match="scales has NaN or Inf"):
        rasterize(**scene, backend=backend)
