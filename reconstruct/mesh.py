"""Meshes from trained splats: render depth and colour from many views, fuse them in a TSDF, extract and clean.

``extract_mesh(splats, views, config) -> Mesh`` does it all, in the splats' (the capture's) world frame:

1. The region: the box of the confident Gaussians (opacity >= 0.5) inside the ball the cameras look at
   (``scene_region``); its longest side over ``MeshConfig.resolution`` is the voxel size.
2. Views: the capture's cameras (training and held-out) plus ``extra_views`` on rings around the scene, between the
   capture's lowest and highest elevations (``orbit_views``).
3. Per view: colour (un-premultiplied, so that edges keep the surface's colour) and depth, the median (the depth
   where the transmittance falls to one half, RaDe-GS / 2DGS's choice for 3DGS: a half-transparent floater in front
   does not pull it, as it pulls the expected depth) or the expected depth. Pixels the splats cover less than
   ``min_alpha``, that fall outside the region, or (``use_masks``) outside the capture's mask, are not fused.
4. Open3D's scalable TSDF (``voxel_size``, truncation ``truncation`` voxels), marching cubes, vertex colours averaged
   over the views.
5. Cleaning: with masks, vertices that fall outside the (dilated) mask of a view that sees them are cut (the visual
   hull of the masks); then connected pieces smaller than ``min_component`` of the largest are dropped (floaters);
   then, with ``faces``, quadric decimation to that many triangles.

Colours are floats in [0, 1] in the images' sRGB encoding, as the splats' (DESIGN.md).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numba
import numpy as np
import torch

from multiview.camera import Camera
from multiview.console import track
from multiview.errors import InputError
from multiview.layouts import look_at
from reconstruct.splats import Splats, view_volume

DEPTH_KINDS = ("median", "expected")


@dataclass(frozen=True, eq=False)
class Mesh:
    """A triangle mesh with a colour per vertex."""

    vertices: np.ndarray  # [V, 3] float64, world coordinates
    faces: np.ndarray  # [F, 3] int64 vertex indices, counter-clockwise seen from outside
    colors: np.ndarray  # [V, 3] float32 in [0, 1], sRGB-encoded

    def __post_init__(self) -> None:
        vertices = np.asarray(self.vertices, dtype=np.float64).reshape(-1, 3)
        faces = np.asarray(self.faces, dtype=np.int64).reshape(-1, 3)
        colors = np.asarray(self.colors, dtype=np.float32).reshape(-1, 3)
        if len(colors) != len(vertices):
            raise ValueError(f"Mesh.colors must have one row per vertex ({len(vertices)}), got {len(colors)}")
        if faces.size and (faces.min() < 0 or faces.max() >= len(vertices)):
            raise ValueError("Mesh.faces index vertices that do not exist")
        object.__setattr__(self, "vertices", vertices)
        object.__setattr__(self, "faces", faces)
        object.__setattr__(self, "colors", colors)

    def __len__(self) -> int:
        return len(self.faces)

    def bounds(self) -> np.ndarray:
        """[2, 3] lowest and highest corner of the vertices' box."""
        return np.stack([self.vertices.min(0), self.vertices.max(0)])

    def transformed(self, to_from_here: np.ndarray) -> Mesh:
        """The mesh moved by a [4, 4] similarity (rotation, uniform scale, translation); a mirroring one flips the
        faces' winding so that they keep facing out."""
        matrix = np.asarray(to_from_here, dtype=np.float64)
        vertices = self.vertices @ matrix[:3, :3].T + matrix[:3, 3]
        faces = self.faces[:, ::-1] if np.linalg.det(matrix[:3, :3]) < 0 else self.faces
        return Mesh(vertices, faces.copy(), self.colors)


@dataclass(frozen=True)
class MeshConfig:
    """How ``extract_mesh`` turns splats into a mesh."""

    depth: str = "median"
    """Depth fused per pixel: "median" (of the Gaussian at which the transmittance falls to one half) or "expected"
    (the alpha-weighted mean depth)."""
    resolution: int = 256
    """Voxels along the longest side of the region fused; the voxel size is that side over this."""
    voxel_size: float | None = None
    """Voxel size in world units, overriding ``resolution``."""
    truncation: float = 4.0
    """TSDF truncation distance, in voxels."""
    extra_views: int = 24
    """Views added on three rings around the scene (between the capture's lowest and highest elevations), besides
    the capture's own cameras; 0: the capture's cameras only."""
    min_alpha: float = 0.5
    """Pixels the splats cover less than this are not fused (background, faint floaters)."""
    use_masks: bool = True
    """Respect the capture's masks (object captures): masked-out pixels are not fused, and the mesh is cut to the
    masks' visual hull."""
    mask_margin: int = 1
    """Pixels the masks are widened by before cutting (anti-aliased outlines, rounding)."""
    min_component: float = 0.05
    """Connected pieces with less surface area than this share of the largest are dropped (floaters)."""
    faces: int | None = None
    """Decimate to at most this many triangles (quadric error); None: keep every triangle."""
    backend: str = "auto"
    """Rasterizer (``reconstruct.rasterize``'s backends)."""

    def validate(self) -> None:
        """InputError naming the setting for values extraction cannot use."""
        if self.depth not in DEPTH_KINDS:
            raise InputError(f"depth {self.depth!r}: use one of {', '.join(DEPTH_KINDS)}")
        if not 16 <= self.resolution <= 2048:
            raise InputError(f"mesh resolution {self.resolution}: use 16 to 2048 voxels along the longest side")
        if self.voxel_size is not None and not 0 < self.voxel_size < math.inf:
            raise InputError(f"voxel size {self.voxel_size}: use a positive, finite size in scene units")
        if not 1.0 <= self.truncation <= 64.0:
            raise InputError(f"truncation {self.truncation}: use 1 to 64 voxels (4 is a good default)")
        if self.extra_views < 0:
            raise InputError(f"extra views {self.extra_views}: use 0 or more")
        if not 0.0 < self.min_alpha < 1.0:
            raise InputError(f"min_alpha {self.min_alpha}: use a value between 0 and 1 (0.5 is a good default)")
        if not 0.0 <= self.min_component < 1.0:
            raise InputError(f"min_component {self.min_component}: use a share from 0 to below 1")
        if self.faces is not None and self.faces < 4:
            raise InputError(f"--faces {self.faces}: use at least 4 triangles (or leave it out to keep them all)")


@dataclass(frozen=True, eq=False)
class MeshView:
    """A camera to render the splats from, with the capture's mask where it has one."""

    camera: Camera
    mask: np.ndarray | None = None  # [H, W] bool at the camera's resolution, True = object


@dataclass(frozen=True)
class MeshReport:
    """What extraction did, for summaries and benchmarks."""

    voxel_size: float
    region: tuple[tuple[float, ...], tuple[float, ...]]  # lowest and highest corner
    views: int
    fused_faces: int
    faces: int
    vertices: int
    components_dropped: int
    seconds: float


def extract_mesh(splats: Splats, views: Sequence[MeshView], config: MeshConfig = MeshConfig()) -> tuple[Mesh,
                                                                                                         MeshReport]:
    """A coloured triangle mesh of ``splats`` seen from ``views`` (the capture's cameras, with masks), and how it was
    made (see the module docstring). InputError when there is nothing to mesh."""
    config.validate()
    tic = time.perf_counter()
    if len(splats) == 0:
        raise InputError("the splats hold no Gaussians: there is no surface to mesh")
    if not views:
        raise InputError("no cameras to render the splats from: the capture has no frames")
    cameras = [view.camera for view in views]
    low, high = scene_region(splats, cameras)
    voxel = config.voxel_size or float((high - low).max()) / config.resolution
    all_views = list(views) + [MeshView(camera) for camera in orbit_views(cameras, config.extra_views)]
    volume = _fuse(splats, all_views, low, high, voxel, config)
    fused = volume.extract_triangle_mesh()
    fused_faces = len(fused.triangles)
    if fused_faces == 0:
        raise InputError("no surface was found in the splats' depth: the scene may be empty or all its Gaussians "
                         "faint; train longer, or check the capture's masks")
    fused = fused.crop(_o3d_box(low - 2 * voxel, high + 2 * voxel))
    if config.use_masks:
        fused = _cut_to_masks([view for view in views if view.mask is not None], fused, config.mask_margin)
    fused, dropped = _drop_small_components(fused, config.min_component)
    if config.faces is not None and len(fused.triangles) > config.faces:
        fused = fused.simplify_quadric_decimation(target_number_of_triangles=int(config.faces))
        fused = fused.remove_unreferenced_vertices()
    mesh = _from_open3d(fused)
    if len(mesh) == 0:
        raise InputError("the mesh came out empty after cleaning (every piece fell outside the masks or was too "
                         "small): check the capture's masks, or extract with use_masks off")
    report = MeshReport(voxel_size=voxel, region=(tuple(low.tolist()), tuple(high.tolist())), views=len(all_views),
                        fused_faces=fused_faces, faces=len(mesh), vertices=len(mesh.vertices),
                        components_dropped=dropped, seconds=round(time.perf_counter() - tic, 3))  # fmt: skip
    return mesh, report


# --- where and from where --------------------------------------------------------------------------------------


OPAQUE = 0.5  # Gaussians at least this opaque mark out the region to mesh
REGION_QUANTILE = 0.002  # the region's box leaves out this share of them on each side (stray ones)
REGION_MARGIN = 0.05  # and grows by this share of its diagonal on each side


def scene_region(splats: Splats, cameras: Sequence[Camera]) -> tuple[np.ndarray, np.ndarray]:
    """([3], [3]) the box to mesh: the confident Gaussians' box (``REGION_QUANTILE`` left out on each side, grown by
    ``REGION_MARGIN`` of its diagonal), within twice the radius of the ball the cameras look at (``view_volume``),
    so that a real capture's distant background stays out."""
    means = splats.means.detach().cpu().double().numpy()
    opacity = torch.sigmoid(splats.opacities.detach().cpu().double()).numpy()
    centre, radius = view_volume(cameras)
    near = np.linalg.norm(means - centre, axis=1) <= 2.0 * radius
    chosen = means[near & (opacity >= OPAQUE)]
    if len(chosen) < 4:
        chosen = means[near] if near.sum() >= 4 else means
    low, high = np.quantile(chosen, [REGION_QUANTILE, 1 - REGION_QUANTILE], axis=0)
    margin = REGION_MARGIN * max(float(np.linalg.norm(high - low)), 1e-9)
    return low - margin, high + margin


def scene_up(cameras: Sequence[Camera]) -> np.ndarray:
    """[3] unit vector: the cameras' mean up direction (people hold cameras upright; orbits' rolls cancel)."""
    up = -np.mean([camera.world_from_cam[:3, 1] for camera in cameras], axis=0)
    norm = float(np.linalg.norm(up))
    return up / norm if norm > 1e-9 else np.array([0.0, 0.0, 1.0])


def orbit_views(cameras: Sequence[Camera], count: int) -> list[Camera]:
    """``count`` cameras on three rings around the centre of ``view_volume``, at the cameras' median distance from
    it, between their lowest and highest elevation about ``scene_up``, looking at the centre upright, with the first
    camera's intrinsics. Empty for ``count`` 0."""
    if count <= 0:
        return []
    centre, _ = view_volume(cameras)
    up = scene_up(cameras)
    offsets = np.stack([camera.center for camera in cameras]) - centre
    distance = float(np.median(np.linalg.norm(offsets, axis=1)))
    elevations = np.arcsin(np.clip(offsets @ up / np.maximum(np.linalg.norm(offsets, axis=1), 1e-12), -1, 1))
    east = offsets[0] - (offsets[0] @ up) * up
    east = east / np.linalg.norm(east) if np.linalg.norm(east) > 1e-9 else _perpendicular(up)
    north = np.cross(up, east)
    rings = np.linspace(elevations.min(), elevations.max(), 3)
    first = cameras[0]
    views = []
    for k in range(count):
        ring = k % 3
        azimuth = 2 * math.pi * (k // 3 + 0.5 * (ring % 2)) / math.ceil(count / 3)
        elevation = float(np.clip(rings[ring], -math.radians(80), math.radians(80)))
        direction = math.cos(elevation) * (math.cos(azimuth) * east + math.sin(azimuth) * north) + math.sin(
            elevation) * up  # fmt: skip
        eye = centre + distance * direction
        views.append(first.replace(cam_from_world=look_at(eye, centre, up), dist=np.zeros(0)))
    return views


def _perpendicular(axis: np.ndarray) -> np.ndarray:
    other = np.array([1.0, 0.0, 0.0]) if abs(axis[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    side = np.cross(axis, other)
    return side / np.linalg.norm(side)


# --- rendering depth -------------------------------------------------------------------------------------------


@torch.no_grad()
def render_depth(splats: Splats, camera: Camera, depth: str = "median",
                 backend: str = "auto") -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """([H, W, 3] float32 colour un-premultiplied (the surface's own, no background), [H, W] float32 camera-z depth
    (``depth``: "median" or "expected"; 0 where nothing is seen), [H, W] float32 alpha) of ``splats`` from
    ``camera``."""
    from reconstruct.rasterize import rasterize

    device = splats.device
    viewmat = torch.as_tensor(camera.cam_from_world, dtype=torch.float32, device=device)[None]
    K = torch.as_tensor(camera.K, dtype=torch.float32, device=device)[None]
    mode = "RGB+ED" if depth == "expected" else "RGB"
    image, alpha, meta = rasterize(splats.means, splats.quats, torch.exp(splats.scales),
                                   torch.sigmoid(splats.opacities), splats.colors(), viewmat, K, camera.width,
                                   camera.height, sh_degree=splats.sh_degree, backend=backend,
                                   render_mode=mode)  # fmt: skip
    alpha = alpha[0, ..., 0].float().cpu().numpy()
    colour = (image[0, ..., :3].float().cpu().numpy() / np.maximum(alpha, 1e-6)[..., None]).clip(0.0, 1.0)
    if depth == "expected":
        z = image[0, ..., 3].float().cpu().numpy()
    else:
        z = median_depth(meta, camera.width, camera.height)
    return colour.astype(np.float32), np.where(alpha > 0, z, 0.0).astype(np.float32), alpha


def median_depth(meta: dict, width: int, height: int) -> np.ndarray:
    """[H, W] float32 median depth of a one-camera ``rasterize`` call: walking the rasterizer's depth-sorted tile
    lists with its alpha rule, the camera z of the Gaussian that brings the pixel's transmittance to one half or
    below (0 where none does).

    Tried and dropped: the depth where the pixel's ray meets that Gaussian (its density's peak along the ray, as
    Gaussian Opacity Fields and RaDe-GS take it) instead of its centre's. It is exact for small flat Gaussians on a
    smooth surface, but on trained scenes it was the worse of the two, with or without ``--surface`` (Avocado:
    Chamfer 0.71% against 0.30% of the diagonal trained with it, 0.82% against 0.45% without; bench/RESULTS.md).
    """
    if meta["n_cameras"] != 1:
        raise ValueError(f"median_depth takes the meta of one camera, got {meta['n_cameras']}")
    tile = int(meta["tile_size"])
    out = np.zeros((height, width), np.float32)
    _median_kernel(_numpy(meta["means2d"][0]), _numpy(meta["conics"][0]), _numpy(meta["opacities"][0]),
                   _numpy(meta["depths"][0]), meta["flatten_ids"].to(torch.int64).cpu().numpy(),
                   meta["isect_offsets"].reshape(-1).to(torch.int64).cpu().numpy(), tile, math.ceil(width / tile),
                   width, height, out)  # fmt: skip
    return out


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().float().cpu().contiguous().numpy()


@numba.njit(cache=True, nogil=True)
def _median_kernel(means2d, conics, opacities, depths, ids, offsets, tile, tiles_x, width, height, out):
    """Per pixel of each tile: gsplat's compositing walk (alpha = min(0.999, o exp(-sigma)), skipped below 1/255,
    stopping before T reaches 1e-4), recording the depth of the Gaussian that brings T to 0.5 or below."""
    for t in range(offsets.shape[0]):
        start = offsets[t]
        stop = offsets[t + 1] if t + 1 < offsets.shape[0] else ids.shape[0]
        ty, tx = t // tiles_x, t % tiles_x
        for y in range(ty * tile, min((ty + 1) * tile, height)):
            for x in range(tx * tile, min((tx + 1) * tile, width)):
                px, py = x + 0.5, y + 0.5  # gsplat's pixel centres, which means2d are in
                T = 1.0
                for k in range(start, stop):
                    g = ids[k]
                    dx, dy = means2d[g, 0] - px, means2d[g, 1] - py
                    sigma = 0.5 * (conics[g, 0] * dx * dx + conics[g, 2] * dy * dy) + conics[g, 1] * dx * dy
                    if sigma < 0.0:
                        continue
                    alpha = min(0.999, opacities[g] * math.exp(-sigma))
                    if alpha < 1.0 / 255.0:
                        continue
                    next_T = T * (1.0 - alpha)
                    if next_T <= 1e-4:
                        break
                    if next_T <= 0.5:
                        out[y, x] = depths[g]
                        break
                    T = next_T


# --- fusion and cleaning ---------------------------------------------------------------------------------------


def _fuse(splats: Splats, views: Sequence[MeshView], low: np.ndarray, high: np.ndarray, voxel: float,
          config: MeshConfig):  # fmt: skip
    """An Open3D ScalableTSDFVolume holding every view's depth and colour (pixels outside ``low``-``high``, under
    ``min_alpha`` or, with masks, outside the mask left out)."""
    import open3d as o3d

    integration = o3d.pipelines.integration
    volume = integration.ScalableTSDFVolume(voxel_length=voxel, sdf_trunc=config.truncation * voxel,
                                            color_type=integration.TSDFVolumeColorType.RGB8)  # fmt: skip
    corners = np.array(np.meshgrid(*zip(low, high), indexing="ij")).reshape(3, -1).T
    for view in track(views, "fusing depth into a TSDF"):
        camera = view.camera
        colour, depth, alpha = render_depth(splats, camera, config.depth, config.backend)
        keep = (alpha >= config.min_alpha) & (depth > 0)
        if config.use_masks and view.mask is not None:
            keep &= view.mask
        keep[keep] = _inside(camera, depth, keep, low, high)
        if not keep.any():
            continue
        far = float(np.max((corners @ camera.cam_from_world[:3, :3].T + camera.cam_from_world[:3, 3])[:, 2])) * 1.01
        rgbd = o3d.geometry.RGBDImage.create_from_color_and_depth(
            o3d.geometry.Image(np.ascontiguousarray((colour * 255.0 + 0.5).astype(np.uint8))),
            o3d.geometry.Image(np.where(keep, depth, 0.0).astype(np.float32)),
            depth_scale=1.0, depth_trunc=max(far, 1e-6), convert_rgb_to_intensity=False,
        )  # fmt: skip
        intrinsic = o3d.camera.PinholeCameraIntrinsic(camera.width, camera.height, camera.fx, camera.fy, camera.cx,
                                                      camera.cy)  # fmt: skip
        volume.integrate(rgbd, intrinsic, camera.cam_from_world)
    return volume


def _inside(camera: Camera, depth: np.ndarray, pixels: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """[P] bool: whether the depth of each of the P ``pixels`` (an [H, W] bool mask) lands inside the box
    ``low``-``high``."""
    rows, cols = np.nonzero(pixels)
    rays = np.stack([cols, rows, np.ones_like(cols)], axis=-1) @ np.linalg.inv(camera.K).T
    points = (rays * depth[rows, cols, None]) @ camera.world_from_cam[:3, :3].T + camera.world_from_cam[:3, 3]
    return ((points >= low) & (points <= high)).all(axis=1)


def _o3d_box(low: np.ndarray, high: np.ndarray):
    import open3d as o3d

    return o3d.geometry.AxisAlignedBoundingBox(np.asarray(low, dtype=np.float64), np.asarray(high, dtype=np.float64))


def _cut_to_masks(views: Sequence[MeshView], mesh, margin: int):
    """``mesh`` without the vertices (and their triangles) that fall outside the mask, widened by ``margin`` pixels,
    of any view that sees them in front of it and inside its image: the masks' visual hull."""
    if not views:
        return mesh
    from scipy.ndimage import binary_dilation

    vertices = np.asarray(mesh.vertices)
    outside = np.zeros(len(vertices), bool)
    structure = np.ones((3, 3), bool)
    for view in views:
        camera = view.camera
        mask = binary_dilation(view.mask, structure, iterations=margin) if margin > 0 else view.mask
        local = vertices @ camera.cam_from_world[:3, :3].T + camera.cam_from_world[:3, 3]
        front = local[:, 2] > 1e-9
        uv = np.full((len(vertices), 2), -1.0)
        uv[front] = camera.project(vertices[front])
        cols, rows = np.round(uv[:, 0]).astype(np.int64), np.round(uv[:, 1]).astype(np.int64)
        seen = front & (cols >= 0) & (cols < camera.width) & (rows >= 0) & (rows < camera.height)
        outside[seen] |= ~mask[rows[seen], cols[seen]]
    mesh.remove_vertices_by_mask(outside)
    return mesh


def _drop_small_components(mesh, min_share: float) -> tuple[object, int]:
    """(``mesh`` without its connected pieces (triangles sharing vertices) of less area than ``min_share`` of the
    largest's, how many went)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    triangles, vertices = np.asarray(mesh.triangles), np.asarray(mesh.vertices)
    if len(triangles) == 0:
        return mesh, 0
    rows = np.concatenate([triangles[:, 0], triangles[:, 1]])
    cols = np.concatenate([triangles[:, 1], triangles[:, 2]])
    graph = coo_matrix((np.ones(len(rows), np.int8), (rows, cols)), shape=(len(vertices), len(vertices)))
    count, labels = connected_components(graph, directed=False)
    piece = labels[triangles[:, 0]]
    corners = vertices[triangles]
    areas = np.bincount(piece, 0.5 * np.linalg.norm(np.cross(corners[:, 1] - corners[:, 0],
                                                              corners[:, 2] - corners[:, 0]), axis=1), count)
    small = areas < min_share * areas.max()
    mesh.remove_triangles_by_mask(small[piece])
    mesh.remove_unreferenced_vertices()
    return mesh, int((small & (np.bincount(piece, minlength=count) > 0)).sum())


def _from_open3d(mesh) -> Mesh:
    vertices = np.asarray(mesh.vertices, dtype=np.float64)
    colors = np.asarray(mesh.vertex_colors, dtype=np.float32) if mesh.has_vertex_colors() else np.full(
        (len(vertices), 3), 0.5, np.float32)  # fmt: skip
    return Mesh(vertices, np.asarray(mesh.triangles, dtype=np.int64), colors.clip(0.0, 1.0))


# --- accuracy --------------------------------------------------------------------------------------------------


def surface_samples(vertices: np.ndarray, faces: np.ndarray, count: int, seed: int = 0) -> np.ndarray:
    """[count, 3] points uniform over the area of the triangle mesh (``vertices`` [V, 3], ``faces`` [F, 3])."""
    rng = np.random.default_rng(seed)
    corners = np.asarray(vertices, dtype=np.float64)[np.asarray(faces)]  # [F, 3, 3]
    areas = 0.5 * np.linalg.norm(np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0]), axis=1)
    if not areas.sum() > 0:
        raise ValueError("the mesh has no area to sample")
    chosen = rng.choice(len(faces), size=count, p=areas / areas.sum())
    u, v = rng.random(count), rng.random(count)
    flip = u + v > 1.0
    u, v = np.where(flip, 1.0 - u, u), np.where(flip, 1.0 - v, v)
    a, b, c = corners[chosen, 0], corners[chosen, 1], corners[chosen, 2]
    return a + u[:, None] * (b - a) + v[:, None] * (c - a)


def mesh_accuracy(mesh: Mesh, truth_vertices: np.ndarray, truth_faces: np.ndarray, samples: int = 200_000,
                  threshold: float = 0.01, seed: int = 0) -> dict:  # fmt: skip
    """How close ``mesh`` is to the true surface, as surface-reconstruction benchmarks (DTU, Tanks and Temples)
    measure it, with distances to the other surface (not to its sampled points): ``samples`` points on each; the
    accuracy (mean distance of the mesh's points to the truth), the completeness (of the truth's points to the mesh),
    the symmetric Chamfer distance (their mean); precision, recall and F-score at ``threshold`` times the truth's
    bounding-box diagonal; every distance also as a share of that diagonal."""
    import open3d as o3d

    truth_vertices = np.asarray(truth_vertices, dtype=np.float64)
    diagonal = float(np.linalg.norm(truth_vertices.max(0) - truth_vertices.min(0)))

    def distances(points: np.ndarray, vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
        scene = o3d.t.geometry.RaycastingScene()
        scene.add_triangles(o3d.core.Tensor(vertices.astype(np.float32)), o3d.core.Tensor(faces.astype(np.uint32)))
        return scene.compute_distance(o3d.core.Tensor(points.astype(np.float32))).numpy().astype(np.float64)

    to_truth = distances(surface_samples(mesh.vertices, mesh.faces, samples, seed), truth_vertices, truth_faces)
    to_mesh = distances(surface_samples(truth_vertices, truth_faces, samples, seed + 1), mesh.vertices, mesh.faces)
    tau = threshold * diagonal
    precision, recall = float((to_truth < tau).mean()), float((to_mesh < tau).mean())
    accuracy, completeness = float(to_truth.mean()), float(to_mesh.mean())
    return {
        "chamfer": (accuracy + completeness) / 2,
        "chamfer_share": (accuracy + completeness) / 2 / diagonal,
        "accuracy": accuracy,
        "completeness": completeness,
        "precision": precision,
        "recall": recall,
        "fscore": 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall),
        "threshold": tau,
        "threshold_share": threshold,
        "diagonal": diagonal,
    }
