"""Splat files for viewers: .spz written from Niantic's published layout and read back within its quantisation, read
by an independent implementation (gsply), .splat read back, and export_splats' choices of output."""

from __future__ import annotations

import gzip
import math

import numpy as np
import pytest
import torch

from multiview.errors import InputError, OutputExistsError
from reconstruct.ply import read_ply, write_ply, write_splat
from reconstruct.splats import SH_C0, Splats
from viewers.formats import export_splats, read_splats, spz_bytes, write_spz


def random_splats(n: int = 2000, degree: int = 3, extent: float = 5.0, seed: int = 0) -> Splats:
    """Splats with every parameter spread over the ranges trained scenes have."""
    g = torch.Generator().manual_seed(seed)
    rest = (degree + 1) ** 2 - 1
    return Splats(
        means=(torch.rand(n, 3, generator=g) * 2 - 1) * extent,
        quats=torch.randn(n, 4, generator=g) * torch.rand(n, 1, generator=g) * 3,  # any length
        scales=torch.rand(n, 3, generator=g) * 6 - 7,  # 1e-3 .. 0.37
        opacities=torch.randn(n, generator=g) * 3,
        sh0=torch.randn(n, 1, 3, generator=g) * 1.2,
        shN=(torch.rand(n, rest, 3, generator=g) * 2 - 1) * 0.9,
    )


def rotation_angle_deg(q1: torch.Tensor, q2: torch.Tensor) -> torch.Tensor:
    """[N] angle between the rotations of two quaternion sets (any length, either sign)."""
    q1 = torch.nn.functional.normalize(q1.double(), dim=-1)
    q2 = torch.nn.functional.normalize(q2.double(), dim=-1)
    return torch.rad2deg(2 * torch.acos((q1 * q2).sum(-1).abs().clamp(max=1.0)))


def assert_within_spz_quantisation(back: Splats, splats: Splats, position_step: float = 2.0**-12) -> None:
    assert torch.allclose(back.means, splats.means, atol=position_step / 2 + 1e-6)
    assert torch.allclose(back.scales, splats.scales, atol=1 / 32 + 1e-5)
    assert float(rotation_angle_deg(back.quats, splats.quats).max()) < 0.25
    assert torch.allclose(torch.sigmoid(back.opacities), torch.sigmoid(splats.opacities), atol=0.5 / 255 + 1e-4)
    dc_step = 1 / (255 * 0.15)
    stored = splats.sh0 * 0.15 * 255 + 127.5
    inside = (stored >= 0) & (stored <= 255)  # beyond that the DC colour clamps, as the format says
    assert torch.allclose(back.sh0[inside], splats.sh0[inside], atol=dc_step / 2 + 1e-5)
    assert torch.allclose(back.shN[:, :3], splats.shN[:, :3], atol=4 / 128 + 1 / 256 + 1e-5)  # buckets of 8
    assert torch.allclose(back.shN[:, 3:], splats.shN[:, 3:], atol=8 / 128 + 1 / 256 + 1e-5)  # buckets of 16


def test_spz_round_trip_within_quantisation(tmp_path):
    splats = random_splats()
    path = write_spz(tmp_path / "s.spz", splats)
    back = read_splats(path)
    assert back.sh_degree == 3 and len(back) == len(splats)
    assert_within_spz_quantisation(back, splats)


def test_spz_is_a_fraction_of_the_ply(tmp_path):
    """PLY stores 62 floats a splat at SH degree 3 (248 bytes), SPZ 65 bytes before gzip."""
    splats = random_splats(5000)
    ply = write_ply(tmp_path / "s.ply", splats).stat().st_size
    spz = write_spz(tmp_path / "s.spz", splats).stat().st_size
    assert spz < ply / 3.5, (ply, spz)


def test_spz_read_by_gsply_as_written(tmp_path):
    """An independent reader (gsply's, numba) finds the same splats, in SPZ's right-up-back axes (y and z flipped)."""
    gsply = pytest.importorskip("gsply", reason="gsply (the independent .spz reader) is a test dependency")
    splats = random_splats(1000, degree=1)
    data = gsply.read_spz(write_spz(tmp_path / "s.spz", splats))
    flip = torch.tensor([1.0, -1.0, -1.0])
    theirs = Splats(
        means=torch.as_tensor(np.asarray(data.means)) * flip,
        quats=torch.as_tensor(np.asarray(data.quats)) * torch.tensor([1.0, 1.0, -1.0, -1.0]),
        scales=torch.as_tensor(np.asarray(data.scales)),
        opacities=torch.as_tensor(np.asarray(data.opacities)).reshape(-1),
        sh0=torch.as_tensor(np.asarray(data.sh0)).reshape(-1, 1, 3),
        shN=torch.as_tensor(np.asarray(data.shN)).reshape(-1, 3, 3) * torch.tensor([-1.0, -1.0, 1.0])[:, None],
    )
    assert_within_spz_quantisation(theirs, splats)


def test_spz_far_splats_keep_fewer_fractional_bits(tmp_path):
    """24-bit positions hold +-2048 at 12 fractional bits: a scene 5 km wide is stored in coarser steps (2^-10 here) instead of
    failing or wrapping round."""
    splats = random_splats(200, degree=0, extent=5000.0)
    back = read_splats(write_spz(tmp_path / "far.spz", splats))
    assert torch.allclose(back.means, splats.means, atol=2.0**-10 / 2 + 1e-3)


def test_splat_file_read_back(tmp_path):
    splats = random_splats(500, degree=0)
    back = read_splats(write_splat(tmp_path / "s.splat", splats))
    order = torch.argsort(back.means[:, 0])  # .splat sorts by size x opacity
    ours = splats.select(torch.argsort(splats.means[:, 0]))
    back = back.select(order)
    assert torch.allclose(back.means, ours.means)
    assert torch.allclose(back.scales, ours.scales, atol=1e-5)
    assert float(rotation_angle_deg(back.quats, ours.quats).max()) < 2.0  # 8-bit components
    rgb = (0.5 + SH_C0 * ours.sh0).clamp(0, 1)
    assert torch.allclose(0.5 + SH_C0 * back.sh0, rgb, atol=1 / 255 + 1e-5)


def test_export_splats_formats_and_refusals(tmp_path):
    scene = tmp_path / "scene"
    scene.mkdir()
    splats = random_splats(300, degree=2)
    write_ply(scene / "splats.ply", splats)
    out = export_splats(scene, "spz")
    assert out == scene / "splats.spz" and len(read_splats(out)) == 300
    with pytest.raises(OutputExistsError, match="already exists: pass --overwrite"):
        export_splats(scene, "spz")
    export_splats(scene, "spz", overwrite=True)
    with pytest.raises(OutputExistsError, match="is the input itself"):
        export_splats(scene, "ply", overwrite=True)
    ply = export_splats(out, "ply", tmp_path / "again.ply")
    assert_within_spz_quantisation(read_ply(ply), splats)
    with pytest.raises(InputError, match="does not end in .splat"):
        export_splats(scene, "splat", tmp_path / "x.ply")
    with pytest.raises(InputError, match="--format glb"):
        export_splats(scene, "glb")
    with pytest.raises(InputError, match="holds no splats.ply"):
        export_splats(tmp_path, "spz")


@pytest.mark.parametrize("payload, message", [
    (b"not gzip at all", "not gzip-compressed"),
    (gzip.compress(b"NGSP" + bytes(20)), "not a .spz file of version 2 or 3"),
    (gzip.compress(b"NGSP"), "too short"),
], ids=["not-gzip", "wrong-version", "short"])  # fmt: skip
def test_damaged_spz_is_one_clear_error(tmp_path, payload, message):
    path = tmp_path / "bad.spz"
    path.write_bytes(payload)
    with pytest.raises(InputError, match=message) as error:
        read_splats(path)
    assert str(path) in str(error.value)


def test_truncated_spz_and_splat_are_refused(tmp_path):
    data = gzip.decompress(spz_bytes(random_splats(50, degree=1)))
    (tmp_path / "cut.spz").write_bytes(gzip.compress(data[:-7]))
    with pytest.raises(InputError, match="truncated or damaged"):
        read_splats(tmp_path / "cut.spz")
    (tmp_path / "cut.splat").write_bytes(bytes(33))
    with pytest.raises(InputError, match="not a whole number of 32-byte"):
        read_splats(tmp_path / "cut.splat")
    with pytest.raises(InputError, match="not a splat file"):
        read_splats(tmp_path / "x.obj")


def test_spz_header_matches_the_published_layout():
    splats = random_splats(10, degree=1, extent=1.0)
    body = gzip.decompress(spz_bytes(splats))
    magic, version, count = np.frombuffer(body[:12], dtype="<u4")
    assert (magic, version, count) == (0x5053474E, 3, 10)
    assert tuple(body[12:16]) == (1, 12, 0, 0)  # SH degree, fractional bits, flags, reserved
    assert len(body) == 16 + 10 * (9 + 1 + 3 + 3 + 4 + 9)
    assert math.isclose(np.frombuffer(body[16 + 90 : 16 + 100], dtype=np.uint8)[0],
                        round(255 / (1 + math.exp(-float(splats.opacities[0])))), abs_tol=0)  # fmt: skip
