"""reconstruct: Splats and its initialisations, the .ply / .splat files, image metrics (PSNR, SSIM, D-SSIM)."""

from __future__ import annotations

import dataclasses
import math
import struct

import kornia
import numpy as np
import pytest
import torch

from multiview.capture import write_points_ply
from multiview.errors import InputError
from multiview.layouts import orbit
from reconstruct.metrics import color_corrected, dssim_loss, psnr, ssim, ssim_map
from reconstruct.ply import ply_property_names, read_ply, splat_bytes, write_ply, write_splat
from reconstruct.splats import (
    SH_C0,
    Splats,
    random_splats,
    rgb_to_sh0,
    sh0_to_rgb,
    splats_from_points,
    view_volume,
)


pytestmark = pytest.mark.usefixtures("one_thread")


def random_splats_of_degree(n: int, degree: int, seed: int = 0) -> Splats:
    g = torch.Generator().manual_seed(seed)
    return Splats(
        means=torch.randn(n, 3, generator=g),
        quats=torch.randn(n, 4, generator=g),
        scales=torch.randn(n, 3, generator=g) - 3,
        opacities=torch.randn(n, generator=g),
        sh0=torch.randn(n, 1, 3, generator=g),
        shN=torch.randn(n, (degree + 1) ** 2 - 1, 3, generator=g),
    )


# --- Splats ----------------------------------------------------------------------------------------------------


def test_splats_shape_checks():
    good = random_splats_of_degree(4, 2)
    assert len(good) == 4 and good.sh_degree == 2
    with pytest.raises(ValueError, match="quats"):
        Splats(good.means, good.quats[:, :3], good.scales, good.opacities, good.sh0, good.shN)
    with pytest.raises(ValueError, match="shN"):
        Splats(good.means, good.quats, good.scales, good.opacities, good.sh0, torch.zeros(4, 5, 3))


def test_with_sh_degree_pads_and_truncates():
    splats = random_splats_of_degree(3, 1)
    wider = splats.with_sh_degree(3)
    assert wider.shN.shape == (3, 15, 3)
    assert torch.equal(wider.shN[:, :3], splats.shN) and not wider.shN[:, 3:].any()
    assert torch.equal(wider.with_sh_degree(1).shN, splats.shN)


def test_init_from_points_follows_3dgs():
    """Unit grid: interior points' 3 nearest neighbours are 1 apart -> log-scale 0; colours through SH DC."""
    grid = np.stack(np.meshgrid(*[np.arange(4.0)] * 3, indexing="ij"), -1).reshape(-1, 3).astype(np.float32)
    colors = np.random.default_rng(0).integers(0, 256, grid.shape, dtype=np.uint8)
    splats = splats_from_points(grid, colors, sh_degree=3)
    assert len(splats) == 64 and splats.shN.shape == (64, 15, 3) and not splats.shN.any()
    assert torch.allclose(splats.scales, torch.zeros(64, 3), atol=1e-6)
    assert torch.allclose(splats.rgb(), torch.from_numpy(colors / 255.0).float(), atol=1e-6)
    assert torch.allclose(torch.sigmoid(splats.opacities), torch.full((64,), 0.1))
    assert torch.equal(splats.quats, torch.tensor([[1.0, 0, 0, 0]]).expand(64, 4))
    assert torch.allclose(sh0_to_rgb(rgb_to_sh0(torch.tensor([0.25, 0.5, 1.0]))), torch.tensor([0.25, 0.5, 1.0]))


def test_random_init_fills_the_ball_every_camera_sees():
    cameras = orbit(12, (10.0, 40.0), radius=2.5, fov_deg=40.0, width=64, height=48)
    center, radius = view_volume(cameras)
    assert np.allclose(center, 0.0, atol=1e-9)
    half_fov_vertical = math.atan2(24, cameras[0].fx)  # the narrower side
    assert radius == pytest.approx(2.5 * math.sin(half_fov_vertical))
    splats = random_splats(cameras, 2000, sh_degree=0, seed=1)
    distance = splats.means.norm(dim=-1)
    assert distance.max() <= radius + 1e-5 and distance.median() > 0.7 * radius  # uniform in volume
    for camera in cameras:  # every point projects inside every image
        uv = camera.project(splats.means.double().numpy())
        assert (uv > -0.5).all() and (uv[:, 0] < 63.5).all() and (uv[:, 1] < 47.5).all()


# --- .ply ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_ply_round_trip(tmp_path, degree):
    splats = random_splats_of_degree(50, degree, seed=degree)
    path = write_ply(tmp_path / "splats.ply", splats)
    back = read_ply(path)
    assert back.sh_degree == degree
    for name, value in splats.tensors().items():
        assert torch.equal(getattr(back, name), value), name
    assert not list(tmp_path.glob(".*tmp"))


def test_ply_layout_is_the_reference_one(tmp_path):
    """Header order as 3DGS writes it; f_rest channel-major: f_rest_{c (K-1) + k} = shN[:, k, c]."""
    splats = random_splats_of_degree(2, 3)
    data = write_ply(tmp_path / "s.ply", splats).read_bytes()
    header, body = data.split(b"end_header\n")
    names = [line.split()[-1] for line in header.decode().splitlines() if line.startswith("property float")]
    assert names[:9] == ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
    assert names[9:54] == [f"f_rest_{i}" for i in range(45)]
    assert names[54:] == ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    assert names == ply_property_names(3) and b"format binary_little_endian 1.0" in header
    rows = np.frombuffer(body, dtype="<f4").reshape(2, 62)
    column = {name: rows[:, i] for i, name in enumerate(names)}
    for k in range(15):
        for c in range(3):
            assert np.array_equal(column[f"f_rest_{c * 15 + k}"], splats.shN[:, k, c].numpy())
    assert np.array_equal(column["rot_0"], splats.quats[:, 0].numpy())  # w first
    assert not column["nx"].any()


def test_ply_reader_rejects_bad_files(tmp_path):
    path = write_ply(tmp_path / "s.ply", random_splats_of_degree(10, 1))
    data = path.read_bytes()
    (tmp_path / "truncated.ply").write_bytes(data[:-7])
    (tmp_path / "text.ply").write_text("hello")
    body_start = data.index(b"end_header\n") + len(b"end_header\n")
    (tmp_path / "nan.ply").write_bytes(data[:body_start] + struct.pack("<f", math.nan) + data[body_start + 4 :])
    write_points_ply(tmp_path / "points.ply", np.zeros((3, 3), np.float32), np.zeros((3, 3), np.uint8))
    huge = random_splats_of_degree(10, 1)
    huge = dataclasses.replace(huge, scales=huge.scales.index_fill(0, torch.tensor([3]), 100.0))  # exp: inf in float32
    write_ply(tmp_path / "huge.ply", huge)
    cases = {
        "huge.ply": "infinite size (log-scale 100)",
        "truncated.ply": "truncated",
        "text.ply": "not a PLY",
        "nan.ply": "non-finite",
        "points.ply": "lacks the splat properties",
        "missing.ply": "does not exist",
    }
    for name, message in cases.items():
        with pytest.raises(InputError) as error:
            read_ply(tmp_path / name)
        text = str(error.value)
        assert message in text and name in text and "\n" not in text


# --- .splat ----------------------------------------------------------------------------------------------------


def test_splat_bytes_layout():
    """Two splats, encoded by hand the way antimatter15's convert.py does (sorted by volume x opacity)."""
    def logit(p):
        return math.log(p / (1 - p))

    rgb_a = torch.tensor([10.5, 100.5, 200.5]) / 255
    rgb_b = torch.tensor([50.5, 150.5, 250.5]) / 255
    splats = Splats(
        means=torch.tensor([[1.0, 2.0, 3.0], [-1.0, 0.5, 0.0]]),
        quats=torch.tensor([[2.0, 0.0, 0.0, 0.0], [0.0, 0.6, 0.0, 0.8]]),
        scales=torch.log(torch.tensor([[0.5, 0.25, 2.0], [1.0, 1.0, 1.0]])),
        opacities=torch.tensor([logit(0.7), logit(0.9)]),
        sh0=torch.stack([(rgb_a - 0.5) / SH_C0, (rgb_b - 0.5) / SH_C0])[:, None],
        shN=torch.zeros(2, 0, 3),
    )
    # A: 0.25 x 0.7 = 0.175; B: 1 x 0.9 = 0.9 -> B first
    b = struct.pack("<3f3f4B4B", -1.0, 0.5, 0.0, 1.0, 1.0, 1.0, 50, 150, 250, 229, 128, 204, 128, 230)
    a = struct.pack("<3f3f4B4B", 1.0, 2.0, 3.0, 0.5, 0.25, 2.0, 10, 100, 200, 178, 255, 128, 128, 128)
    encoded = splat_bytes(splats)
    assert len(encoded) == 64
    assert encoded == b + a


def test_write_splat(tmp_path):
    splats = random_splats_of_degree(7, 2)
    path = write_splat(tmp_path / "s.splat", splats)
    assert path.stat().st_size == 7 * 32


# --- metrics ---------------------------------------------------------------------------------------------------


def test_psnr_known_values():
    image = torch.rand(16, 16, 3, generator=torch.Generator().manual_seed(0))
    assert psnr(image, image) == math.inf
    assert psnr(torch.zeros(8, 8, 3), torch.full((8, 8, 3), 0.1)) == pytest.approx(20.0)
    noisy = image + 0.05 * torch.randn(16, 16, 3, generator=torch.Generator().manual_seed(1))
    assert psnr(noisy, image) == pytest.approx(-10 * math.log10(0.05**2), abs=0.6)
    mask = torch.zeros(8, 8, 1)
    mask[:4] = 1.0
    target = torch.zeros(8, 8, 3)
    target[4:] = 1.0  # wrong only where the mask is 0
    assert psnr(torch.zeros(8, 8, 3), target, mask) == math.inf


def test_color_correction_forgives_exposure_and_white_balance_but_not_structure():
    """cc_psnr: a render that differs from the photo by exposure, white balance and a colour cast scores as nearly
    exact; one whose structure is wrong (the noise shifted by a pixel) scores no better than the photo's mean colour
    would."""
    photo = torch.rand(32, 32, 3, generator=torch.Generator().manual_seed(0)) * 0.8
    mix = torch.tensor([[1.1, 0.05, 0.0], [0.0, 0.9, 0.1], [0.05, 0.0, 0.7]])
    render = photo @ mix.T + torch.tensor([0.02, 0.0, 0.05])  # in [0, 1]: nothing clipped
    assert psnr(render, photo) < 25 and psnr(color_corrected(render, photo), photo) > 60
    shifted = torch.roll(photo, 1, dims=1)
    flat = photo.mean((0, 1)).expand_as(photo)
    assert psnr(color_corrected(shifted, photo), photo) < psnr(flat, photo) + 0.2
    assert color_corrected(render, photo).shape == photo.shape


def test_ssim_known_values():
    g = torch.Generator().manual_seed(0)
    image = torch.rand(2, 40, 48, 3, generator=g)
    assert ssim(image, image).item() == pytest.approx(1.0)
    assert dssim_loss(image, image).item() == pytest.approx(0.0, abs=1e-6)
    # constant images a, b: SSIM = (2ab + C1) / (a^2 + b^2 + C1) away from the zero-padded border
    a, b = 0.3, 0.5
    value = ssim_map(torch.full((32, 32, 3), a, dtype=torch.float64), torch.full((32, 32, 3), b, dtype=torch.float64))
    value = value[5:-5, 5:-5]
    assert torch.allclose(value, torch.tensor((2 * a * b + 1e-4) / (a * a + b * b + 1e-4), dtype=torch.float64))
    # the interior agrees with kornia's (which pads differently at the border)
    noisy = (image + 0.1 * torch.randn(image.shape, generator=g)).clamp(0, 1)
    ours = ssim_map(noisy, image)[:, 5:-5, 5:-5].permute(0, 3, 1, 2)
    theirs = kornia.metrics.ssim(noisy.permute(0, 3, 1, 2), image.permute(0, 3, 1, 2), 11, padding="valid")
    assert torch.allclose(ours, theirs, atol=1e-5)
    assert 0.3 < ssim(noisy, image).item() < 0.95


def test_ssim_separable_blur_equals_the_2d_window_up_to_the_border():
    """3DGS blurs with the 11x11 window and zero padding; ours blurs rows then columns: equal everywhere."""
    import torch.nn.functional as F

    from reconstruct.metrics import gaussian_window

    g = torch.Generator().manual_seed(1)
    x, y = (torch.rand(1, 3, 23, 37, generator=g, dtype=torch.float64) for _ in range(2))
    window = gaussian_window().expand(3, 1, 11, 11).contiguous()

    def blur(z):
        return F.conv2d(z, window, padding=5, groups=3)

    mu_x, mu_y = blur(x), blur(y)
    var_x, var_y, cov = blur(x * x) - mu_x**2, blur(y * y) - mu_y**2, blur(x * y) - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    expected = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    ours = ssim_map(x[0].permute(1, 2, 0), y[0].permute(1, 2, 0))
    torch.testing.assert_close(ours, expected[0].permute(1, 2, 0), atol=1e-12, rtol=0)


def test_ssim_is_differentiable():
    """The mean's closed-form backward (what training uses) passes gradcheck and equals autograd's trace of the
    per-pixel map on a batch of non-square images; a target that needs gradients gets them."""
    g = torch.Generator().manual_seed(0)
    image = torch.rand(8, 8, 3, dtype=torch.float64, generator=g, requires_grad=True)
    target = torch.rand(8, 8, 3, dtype=torch.float64, generator=g)
    assert torch.autograd.gradcheck(lambda x: dssim_loss(x, target), (image,))
    image = torch.rand(2, 30, 45, 3, dtype=torch.float64, generator=g, requires_grad=True)
    target = (image.detach() + 0.2 * torch.randn(image.shape, generator=g, dtype=torch.float64)).clamp(0, 1)
    (closed_form,) = torch.autograd.grad(ssim(image, target), image)
    (traced,) = torch.autograd.grad(ssim_map(image, target).mean(), image)
    torch.testing.assert_close(closed_form, traced, atol=1e-12 * traced.abs().max().item(), rtol=1e-9)
    target.requires_grad_(True)
    ssim(image, target).backward()
    assert target.grad is not None and target.grad.abs().sum() > 0
