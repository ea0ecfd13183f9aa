"""reconstruct.splats4d: the motion bases, Splats4D.at, and the 4D .ply (round trip, what marks it, bad files)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from multiview.errors import InputError
from reconstruct.ply import read_ply, write_ply
from reconstruct.splats import Splats
from reconstruct.splats4d import (
    Splats4D,
    basis_weights,
    is_splats4d,
    read_splats4d,
    static_splats4d,
    write_splats4d,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def moving_splats(n: int = 6, degree: int = 3, motion: int = 8, rotation: int = 4, basis: str = "bspline",
                  seed: int = 0) -> Splats4D:  # fmt: skip
    g = torch.Generator().manual_seed(seed)
    canonical = Splats(torch.randn(n, 3, generator=g), torch.randn(n, 4, generator=g),
                       torch.randn(n, 3, generator=g) - 3, torch.randn(n, generator=g),
                       torch.randn(n, 1, 3, generator=g), torch.randn(n, (degree + 1) ** 2 - 1, 3, generator=g))
    rates = torch.rand(n, generator=g) * 4 * (torch.arange(n) % 2)  # every other Gaussian fades
    return Splats4D(canonical, 0.1 * torch.randn(n, motion, 3, generator=g),
                    0.1 * torch.randn(n, rotation, 4, generator=g), torch.rand(n, generator=g), rates,
                    times=np.linspace(0.5, 1.5, 24), basis=basis)  # fmt: skip


def test_bspline_basis_matches_scipy_uniform_cubic_bspline():
    from scipy.interpolate import BSpline

    count = 7
    knots = (np.arange(count + 4) - 3) / (count - 3)  # uniform, the spline defined on [0, 1]
    coefficients = np.random.default_rng(0).normal(size=count)
    u = np.linspace(0, 1, 101)
    expected = BSpline(knots, coefficients, 3)(u)
    ours = basis_weights("bspline", count, torch.tensor(u, dtype=torch.float32)).double().numpy() @ coefficients
    np.testing.assert_allclose(ours, expected, atol=1e-5)
    assert torch.allclose(basis_weights("bspline", count, torch.rand(50)).sum(-1), torch.ones(50))


def test_poly_basis_is_powers_of_centred_time():
    weights = basis_weights("poly", 3, torch.tensor([0.0, 0.25, 1.0]))
    assert torch.allclose(weights, torch.tensor([[-1.0, 1.0, -1.0], [-0.5, 0.25, -0.125], [1.0, 1.0, 1.0]]))


def test_at_follows_the_documented_formulas():
    splats = moving_splats()
    t = 1.1
    u = (t - 0.5) / 1.0
    state = splats.at(t)
    weights = basis_weights("bspline", 8, u).double()
    means = splats.canonical.means.double() + torch.einsum("m,nmk->nk", weights, splats.motion.double())
    assert torch.allclose(state.means.double(), means, atol=1e-5)
    rot_weights = basis_weights("bspline", 4, u).double()
    quats = splats.canonical.quats.double() + torch.einsum("r,nrk->nk", rot_weights, splats.drot.double())
    assert torch.allclose(state.quats.double(), quats, atol=1e-5)
    opacity = torch.sigmoid(splats.canonical.opacities.double()) * torch.exp(
        -splats.t_rate.double() * (u - splats.t_center.double()) ** 2)
    assert torch.allclose(torch.sigmoid(state.opacities.double()), opacity, atol=1e-5)
    assert torch.equal(state.scales, splats.canonical.scales) and torch.equal(state.shN, splats.canonical.shN)
    # outside the frame times: the nearest end
    assert torch.equal(splats.at(-3.0).means, splats.at(0.5).means)
    assert torch.equal(splats.at(9.0).means, splats.frame(23).means)


def test_static_splats_stand_still():
    canonical = moving_splats().canonical
    still = static_splats4d(canonical, np.array([0.0, 1.0, 2.0]))
    for t in (0.0, 0.7, 2.0):
        state = still.at(t)
        for name, value in canonical.tensors().items():
            assert torch.equal(getattr(state, name), value), name


@pytest.mark.parametrize("basis", ["bspline", "poly"])
def test_file_round_trip_and_the_canonical_scene_is_a_3dgs_ply(tmp_path, basis):
    splats = moving_splats(basis=basis, degree=1)
    path = write_splats4d(tmp_path / "splats4d.ply", splats)
    assert is_splats4d(path)
    back = read_splats4d(path)
    assert back.basis == basis and np.allclose(back.times, splats.times)
    for t in np.linspace(0.5, 1.5, 7):
        a, b = splats.at(float(t)), back.at(float(t))
        for name in a.tensors():
            assert torch.allclose(getattr(a, name), getattr(b, name), atol=1e-6), name
    canonical = read_ply(path)  # any 3DGS reader sees the canonical Gaussians
    assert torch.equal(canonical.means, splats.canonical.means)
    assert canonical.sh_degree == 1


def test_the_4d_file_is_at_most_3x_one_frame_for_24_time_steps(tmp_path):
    splats = moving_splats(n=500)
    four_d = write_splats4d(tmp_path / "splats4d.ply", splats).stat().st_size
    frame = write_ply(tmp_path / "frame.ply", splats.frame(0)).stat().st_size
    assert four_d <= 3 * frame
    assert four_d < 24 * frame / 8


def test_plain_3dgs_ply_is_refused_naming_it(tmp_path):
    path = write_ply(tmp_path / "static.ply", moving_splats().canonical)
    assert not is_splats4d(path)
    with pytest.raises(InputError, match="static.ply is a 3D splat file, not an orbit4d 4D one"):
        read_splats4d(path)


def _edited_header(path, old: bytes, new: bytes) -> None:
    data = path.read_bytes()
    end = data.find(b"end_header")
    path.write_bytes(data[:end].replace(old, new) + data[end:])


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        (b"splats4d 1", b"splats4d 7", "version 7"),
        (b"basis bspline", b"basis wavelet", "unknown motion basis"),
        (b"comment times 0.5", b"comment times x", "increasing times"),
        (b"property float t_rate\n", b"", "lacks motion properties"),
    ],
)
def test_damaged_4d_files_are_one_line(tmp_path, old, new, message):
    path = write_splats4d(tmp_path / "splats4d.ply", moving_splats())
    _edited_header(path, old, new)
    with pytest.raises(InputError, match=message) as error:
        read_splats4d(path)
    assert "splats4d.ply" in str(error.value) and "\n" not in str(error.value)


def test_truncated_and_non_finite_4d_files_are_refused(tmp_path):
    path = write_splats4d(tmp_path / "splats4d.ply", moving_splats())
    data = path.read_bytes()
    path.write_bytes(data[:-40])
    with pytest.raises(InputError, match="truncated"):
        read_splats4d(path)
    broken = moving_splats()
    broken.motion[2, 3, 1] = float("nan")
    write_splats4d(path, broken)
    with pytest.raises(InputError, match="non-finite motion"):
        read_splats4d(path)


def test_shape_checks():
    good = moving_splats()
    with pytest.raises(ValueError, match="at least 4 control points"):
        Splats4D(good.canonical, good.motion[:, :3], good.drot, good.t_center, good.t_rate, times=good.times)
    with pytest.raises(ValueError, match="increasing"):
        Splats4D(good.canonical, good.motion, good.drot, good.t_center, good.t_rate, times=np.array([1.0]))


def test_docstring_examples():
    import doctest

    import reconstruct.splats4d

    results = doctest.testmod(reconstruct.splats4d)
    assert results.attempted > 0 and results.failed == 0
