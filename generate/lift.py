"""A first guess of every orbit view from the input view alone: the silhouette lifted to a solid and re-rendered.

The generator is told where things are before it is asked what they look like. Each run of foreground pixels along a
row of the input view is taken as a horizontal slice of a solid standing on the orbit's vertical axis (the world's
up, not the input camera's, which leans by the elevation): a voxel belongs to the solid when it projects into the
silhouette and its horizontal depth from the vertical plane through the orbit's centre is within the thickness read
where its foot on that plane projects. The thickness is the thinner of two guesses, a disc of the run's length (a
solid of revolution) and a sphere-like inflation of the silhouette (so that a long, low object stays thin). Voxels
take the colour of the input pixel they project to (so the back shows the front's colours, mirrored, as a symmetric
object's would), and the solid is drawn from every camera of the orbit with a depth buffer.

It is right for surfaces of revolution and close for most compact objects; where it is wrong (a box seen at 45°, a
flat card from the side, the colours of the back), the network learns the difference. Alone, on the 43 held-out
objects of bench/generator_quality.py (``--lift-only``), it scores 17.0 dB and mask IoU 0.63 (the input copied:
18.2 dB, 0.61; mirrored 18.5, 0.62): a guess of where things are, not a result. The views are one more input of the
UNet per frame (``Architecture.lift``), like SV3D's concatenated input latent but drawn from each frame's camera.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from generate.cameras import Orbit
from multiview.layouts import WORLD_UP

FOREGROUND_THRESHOLD = 0.1
"""Input pixels that differ from the background colour by more than this, in some channel, are the object."""


def background_colour(image: Tensor) -> Tensor:
    """[3] the median colour of the image's border pixels (the plain background the framing composites on)."""
    border = torch.cat([image[:, 0, :], image[:, -1, :], image[:, :, 0], image[:, :, -1]], dim=1)
    return border.median(dim=1).values


def lift_views(image: Tensor, orbit: Orbit, grid: int = 96, extent: float = 0.6) -> Tensor:
    """[F, 3, S, S] in [0, 1]: the lifted solid of ``image`` ([3, S, S], plain background, the orbit's input view)
    drawn from each of ``orbit``'s cameras on the input's background colour. ``grid`` voxels a side over
    [-extent, extent]^3 (the framing puts the object within [-0.5, 0.5])."""
    image = image.float()
    background = background_colour(image)
    mask = (image - background[:, None, None]).abs().amax(dim=0) > FOREGROUND_THRESHOLD
    camera = orbit.cameras[orbit.input_index]
    points = _voxel_centres(grid, extent)
    size = image.shape[-1]
    right = torch.from_numpy(camera.cam_from_world[0, :3]).float()  # horizontal: the orbit's cameras do not roll
    forward = torch.cross(torch.from_numpy(WORLD_UP).float(), right, dim=0)  # horizontal, away from the camera
    depth = points @ forward  # each voxel's horizontal distance from the vertical plane through the orbit's centre
    foot = points - depth[:, None] * forward  # ... and its foot on that plane, where its slice of silhouette is read
    uf, vf, zf = _pixels(foot, camera)
    u, v, _ = _pixels(points, camera)
    inside = _within(uf, vf, size) & _within(u, v, size)
    uf, vf, u, v = (x.clamp(0, size - 1) for x in (uf, vf, u, v))
    half = torch.from_numpy(_half_thickness(mask.numpy()))[vf, uf] * zf / float(camera.K[0, 0])  # pixels to world
    solid = inside & mask[vf, uf] & mask[v, u] & (depth.abs() <= half)
    colours = image[:, v[solid], u[solid]].T  # [N, 3]
    return torch.stack([_draw(points[solid], colours, c, background, size) for c in orbit.cameras])


def _within(u: Tensor, v: Tensor, size: int) -> Tensor:
    return (u >= 0) & (u < size) & (v >= 0) & (v < size)


def _pixels(points: Tensor, camera) -> tuple[Tensor, Tensor, Tensor]:
    """The nearest pixel column and row of each of ``points`` [N, 3] seen by ``camera``, and its depth."""
    R = torch.from_numpy(camera.cam_from_world[:3, :3]).float()
    t = torch.from_numpy(camera.cam_from_world[:3, 3]).float()
    K = torch.from_numpy(camera.K).float()
    local = points @ R.T + t
    z = local[:, 2]
    u = (K[0, 0] * local[:, 0] / z + K[0, 2]).round().long()
    v = (K[1, 1] * local[:, 1] / z + K[1, 2]).round().long()
    return u, v, z


def _voxel_centres(grid: int, extent: float) -> Tensor:
    axis = (torch.arange(grid, dtype=torch.float32) + 0.5) / grid * 2 * extent - extent
    return torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1).reshape(-1, 3)


def _half_thickness(mask: np.ndarray) -> np.ndarray:
    """[S, S] half the guessed depth of the solid at each foreground pixel, in pixels: the thinner of two guesses.

    Rows: the run's disc (a solid of revolution about the vertical axis through the run's middle). Inflation: a disc
    across the silhouette's local width (the distance to its edge d under the largest d within ~0.4 of the image,
    r: sqrt(d (2r - d)), a sphere's profile), which keeps a long, low object (an animal from the side) thin."""
    from scipy import ndimage

    centre, radius = _row_runs(mask)
    columns = np.arange(mask.shape[1], dtype=np.float32)[None, :]
    rows = np.sqrt(np.clip(radius**2 - (columns - centre) ** 2, 0, None))
    d = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    r = np.maximum(ndimage.maximum_filter(d, size=max(3, round(0.4 * mask.shape[0]) | 1)), d)
    return np.minimum(rows, np.sqrt(np.clip(d * (2 * r - d), 0, None))).astype(np.float32)


def _row_runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel of each run of foreground pixels along a row: the run's middle column and half its length (in
    pixels, +0.5 for the pixel's own width); zeros elsewhere."""
    centre = np.zeros(mask.shape, dtype=np.float32)
    radius = np.zeros(mask.shape, dtype=np.float32)
    padded = np.pad(mask.astype(np.int8), ((0, 0), (1, 1)))
    edges = np.diff(padded, axis=1)
    for row in np.flatnonzero(mask.any(axis=1)):
        starts = np.flatnonzero(edges[row] == 1)
        ends = np.flatnonzero(edges[row] == -1)  # exclusive
        for a, b in zip(starts, ends):
            centre[row, a:b] = (a + b - 1) / 2
            radius[row, a:b] = (b - a) / 2
    return centre, radius


def _draw(points: Tensor, colours: Tensor, camera, background: Tensor, size: int) -> Tensor:
    """[3, S, S]: ``points`` coloured ``colours`` seen from ``camera``, the nearest one per pixel, on ``background``."""
    u, v, z = _pixels(points, camera)
    keep = (z > 0) & _within(u, v, size)
    pixel, z, colours = (v * size + u)[keep], z[keep], colours[keep]
    nearest = torch.full((size * size,), float("inf")).scatter_reduce(0, pixel, z, reduce="amin")
    front = z <= nearest[pixel]
    out = background[:, None].expand(3, size * size).clone()
    out[:, pixel[front]] = colours[front].T
    return out.reshape(3, size, size)


def with_lift_input(unet):
    """``unet`` (an OrbitUNet without lifted views) widened to take them: the same weights, zero weights for the new
    input channels, so it computes what it did until training moves them."""
    from generate.models.unet import OrbitUNet

    config = dict(unet.config)
    latent = unet.config.out_channels
    config.update(in_channels=unet.config.in_channels + latent, lift_channels=latent)
    widened = OrbitUNet.from_config({k: v for k, v in config.items() if not k.startswith("_")})
    state = unet.state_dict()
    old = state["conv_in.weight"]
    at = 2 * latent  # after the noisy latents and the input view's latent, before any ray maps
    new = torch.zeros(old.shape[0], old.shape[1] + latent, *old.shape[2:], dtype=old.dtype)
    new[:, :at], new[:, at + latent :] = old[:, :at], old[:, at:]
    state["conv_in.weight"] = new
    widened.load_state_dict(state)
    return torch.nn.Module.to(widened, old.device, old.dtype)  # diffusers' own .to warns about float32 modules
