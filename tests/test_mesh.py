"""Meshes from splats (``reconstruct.mesh``): splats lying on a known surface give that surface back, coloured, cut
to the masks, without floaters, decimated on request; the depth they are fused from; the accuracy measure itself."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from multiview.conventions import qvec_from_rotmat
from multiview.errors import InputError
from multiview.layouts import orbit
from reconstruct.mesh import Mesh, MeshConfig, MeshView, extract_mesh, mesh_accuracy, render_depth
from reconstruct.splats import Splats, rgb_to_sh0
from tests.mesh_scenes import cone, octant_colors, splats_on_mesh

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = MeshConfig(resolution=96, extra_views=6)


@pytest.fixture(scope="module")
def cone_scene():
    """A cone (apex up), 12,000 flat Gaussians on it (about a pixel wide), and 12 cameras on two rings (from below and
    above) at 96 px."""
    vertices, faces = cone()
    cameras = orbit(12, (-25.0, 35.0), radius=1.8, fov_deg=40.0, width=96, height=96)
    return vertices, faces, splats_on_mesh(vertices, faces, 12_000), cameras


def _views(cameras, masks=None):
    return [MeshView(camera, None if masks is None else masks[i]) for i, camera in enumerate(cameras)]


def test_splats_on_a_surface_give_it_back_with_its_colours(cone_scene):
    vertices, faces, splats, cameras = cone_scene
    mesh, report = extract_mesh(splats, _views(cameras), SMALL)
    accuracy = mesh_accuracy(mesh, vertices, faces, samples=20_000)
    # splats made, not trained, blur their edges by the rasterizer's 0.3 px^2 dilation: the bias is about a pixel here
    assert accuracy["chamfer_share"] < 0.01 and accuracy["fscore"] > 0.85, accuracy
    assert report.views == 12 + 6 and report.faces == len(mesh) > 500
    assert np.abs(mesh.colors - octant_colors(mesh.vertices)).mean() < 0.05  # each side keeps its colour
    assert mesh.vertices[:, 2].max() == pytest.approx(0.4, abs=0.03)  # the apex, up


def test_masks_cut_away_what_they_leave_out(cone_scene):
    """Two cones side by side; the masks show only the left one: the mesh holds only it, unless masks are off."""
    vertices, faces, splats, cameras = cone_scene
    shift = torch.tensor([1.0, 0.0, 0.0])
    pair = Splats(torch.cat([splats.means - shift, splats.means + shift]), splats.quats.repeat(2, 1),
                  splats.scales.repeat(2, 1), splats.opacities.repeat(2), splats.sh0.repeat(2, 1, 1),
                  splats.shN.repeat(2, 1, 1))  # fmt: skip
    cameras = orbit(12, (-25.0, 35.0), radius=4.0, fov_deg=50.0, width=64, height=64)
    left = Splats(*(tensor[: len(splats)] for tensor in pair.tensors().values()))
    masks = [render_depth(left, camera)[2] > 0.5 for camera in cameras]
    masked, _ = extract_mesh(pair, _views(cameras, masks), SMALL)
    unmasked, _ = extract_mesh(pair, _views(cameras, masks), MeshConfig(resolution=96, extra_views=6, use_masks=False))
    assert masked.vertices[:, 0].max() < -0.5 and len(masked) > 500
    assert unmasked.vertices[:, 0].max() > 1.3 and unmasked.vertices[:, 0].min() < -1.3


def test_floaters_are_dropped(cone_scene):
    """A small clump of opaque Gaussians hanging beside the object, seen by some views: not in the mesh."""
    vertices, faces, splats, cameras = cone_scene
    rng = np.random.default_rng(1)
    clump = torch.tensor(rng.normal(size=(60, 3)) * 0.01 + [0.55, 0.0, 0.3], dtype=torch.float32)
    floater = Splats(clump, torch.tensor([[1.0, 0, 0, 0]]).repeat(60, 1), torch.full((60, 3), np.log(0.01)),
                     torch.full((60,), 5.0), rgb_to_sh0(torch.full((60, 1, 3), 0.5)), torch.zeros(60, 0, 3))  # fmt: skip
    both = Splats(*(torch.cat([a, b]) for a, b in zip(splats.tensors().values(), floater.tensors().values())))
    mesh, report = extract_mesh(both, _views(cameras), SMALL)
    assert report.components_dropped >= 1
    assert np.linalg.norm(mesh.vertices - [0.55, 0.0, 0.3], axis=1).min() > 0.05


def test_decimation_keeps_the_shape_within_the_face_budget(cone_scene):
    vertices, faces, splats, cameras = cone_scene
    mesh, report = extract_mesh(splats, _views(cameras), MeshConfig(resolution=96, extra_views=6, faces=800))
    assert len(mesh) <= 800 < report.fused_faces
    assert mesh_accuracy(mesh, vertices, faces, samples=20_000)["chamfer_share"] < 0.012


def test_median_depth_is_where_the_splats_become_half_opaque():
    """Two opaque discs facing the camera, 2 and 3 units ahead: the median depth is the front one's where it covers
    the pixel, the back one's beside it; a half-transparent disc in front does not move it, but pulls the expected
    depth."""
    camera = orbit(1, (0.0,), radius=4.0, fov_deg=40.0, width=48, height=48)[0]
    ahead = camera.world_from_cam[:3, 2]
    facing = torch.tensor(qvec_from_rotmat(camera.world_from_cam[:3, :3]), dtype=torch.float32)[None]
    centres = torch.tensor(np.stack([camera.center + 2.0 * ahead + 0.3 * camera.world_from_cam[:3, 0],
                                     camera.center + 3.0 * ahead, camera.center + 1.5 * ahead]), dtype=torch.float32)
    discs = Splats(centres, facing.repeat(3, 1), torch.log(torch.tensor([[0.1, 0.1, 0.001], [1.0, 1.0, 0.001],
                                                                          [1.0, 1.0, 0.001]])),
                   torch.tensor([6.0, 6.0, -1.0]), torch.zeros(3, 1, 3), torch.zeros(3, 0, 3))  # fmt: skip
    _, median, alpha = render_depth(discs, camera, "median")
    _, expected, _ = render_depth(discs, camera, "expected")
    u, v = camera.project(centres[0].numpy().astype(np.float64))
    front, back = median[round(v), round(u)], median[round(v), 14]
    assert front == pytest.approx(2.0, abs=1e-4) and back == pytest.approx(3.0, abs=1e-4)
    assert alpha[round(v), round(u)] > 0.99 and alpha[round(v), 14] > 0.9
    assert expected[round(v), 14] < 2.9  # the faint disc at 1.5 pulls the mean, not the median


def test_accuracy_is_perfect_for_the_surface_itself_and_falls_for_a_shifted_one():
    vertices, faces = cone()
    same = mesh_accuracy(Mesh(vertices, faces, np.zeros_like(vertices)), vertices, faces, samples=20_000)
    assert same["chamfer"] < 1e-6 and same["fscore"] == 1.0
    shifted = mesh_accuracy(Mesh(vertices + [0.03, 0, 0], faces, np.zeros_like(vertices)), vertices, faces,
                            samples=20_000)  # fmt: skip
    assert 0.005 < shifted["chamfer_share"] < 0.03 and shifted["fscore"] < 0.8


def test_nothing_to_mesh_is_one_clear_error(cone_scene):
    _, _, splats, cameras = cone_scene
    with pytest.raises(InputError, match="no Gaussians"):
        extract_mesh(splats.select(torch.zeros(len(splats), dtype=torch.bool)), _views(cameras))
    faint = Splats(*(t if name != "opacities" else torch.full_like(t, -8.0) for name, t in splats.tensors().items()))
    with pytest.raises(InputError, match="no surface"):
        extract_mesh(faint, _views(cameras), SMALL)
    with pytest.raises(InputError, match="--faces 0"):
        extract_mesh(splats, _views(cameras), MeshConfig(faces=0))
