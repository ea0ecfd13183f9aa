"""Camera layouts: every camera sees the origin at its principal point, upright, at the requested distance."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from multiview import layouts
from multiview.errors import InputError


def assert_looks_at_origin_upright(camera, radius: float) -> None:
    np.testing.assert_allclose(np.linalg.norm(camera.center), radius, rtol=1e-9)
    np.testing.assert_allclose(camera.project(np.zeros(3)), [camera.cx, camera.cy], atol=1e-6)
    R = camera.cam_from_world[:3, :3]
    np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-12)
    assert np.linalg.det(R) == pytest.approx(1.0)
    # A point above the origin appears above the image centre (smaller y), unless seen from straight above/below.
    horizontal = np.linalg.norm(camera.center[:2])
    if horizontal > 1e-6 * radius:
        assert camera.project(np.array([0.0, 0.0, 0.1]))[1] < camera.cy


@settings(max_examples=40, deadline=None)
@given(
    num_views=st.integers(1, 40),
    elevations=st.lists(st.floats(-89.0, 89.0), min_size=1, max_size=3),
    radius=st.floats(0.5, 10.0),
)
def test_orbit_cameras_look_at_the_origin(num_views, elevations, radius):
    cameras = layouts.orbit(num_views, elevations, radius, 40.0, 64, 48)
    assert len(cameras) == num_views
    for camera in cameras:
        assert_looks_at_origin_upright(camera, radius)
        assert (camera.width, camera.height) == (64, 48)


def test_orbit_spacing_and_elevation():
    cameras = layouts.orbit(8, (30.0,), radius=2.0)
    azimuths = np.degrees([np.arctan2(c.center[1], c.center[0]) for c in cameras]) % 360
    np.testing.assert_allclose(azimuths, np.arange(8) * 45.0, atol=1e-9)
    elevations = np.degrees([np.arcsin(c.center[2] / 2.0) for c in cameras])
    np.testing.assert_allclose(elevations, 30.0)


def test_two_rings_share_the_views_and_interleave():
    cameras = layouts.orbit(10, (0.0, 45.0))
    heights = np.array([c.center[2] for c in cameras])
    assert (np.isclose(heights, 0.0).sum(), (heights > 0).sum()) == (5, 5)
    first_upper = np.degrees(np.arctan2(cameras[5].center[1], cameras[5].center[0]))
    assert first_upper == pytest.approx(36.0)  # half of the 72-degree step


def test_horizontal_field_of_view():
    camera = layouts.orbit(1, (0.0,), fov_deg=90.0, width=200, height=100)[0]
    assert camera.fx == pytest.approx(100.0) and camera.fy == pytest.approx(100.0)
    assert (camera.cx, camera.cy) == (99.5, 49.5)


def test_sphere_is_seeded_and_within_elevations():
    a = layouts.sphere(50, seed=3, min_elevation_deg=-10, max_elevation_deg=60)
    b = layouts.sphere(50, seed=3, min_elevation_deg=-10, max_elevation_deg=60)
    c = layouts.sphere(50, seed=4, min_elevation_deg=-10, max_elevation_deg=60)
    assert all(np.array_equal(x.cam_from_world, y.cam_from_world) for x, y in zip(a, b))
    assert not all(np.array_equal(x.cam_from_world, y.cam_from_world) for x, y in zip(a, c))
    elevations = np.degrees([np.arcsin(cam.center[2] / 2.5) for cam in a])
    assert elevations.min() >= -10 - 1e-9 and elevations.max() <= 60 + 1e-9
    for camera in a:
        assert_looks_at_origin_upright(camera, 2.5)


def test_rig_numbers_its_cameras():
    cameras = layouts.rig(4, elevation_deg=10.0)
    assert [c.camera_id for c in cameras] == [0, 1, 2, 3]


def test_straight_down_view_is_still_a_rotation():
    camera = layouts.orbit(1, (90.0,))[0]
    assert_looks_at_origin_upright(camera, 2.5)


@pytest.mark.parametrize(
    "call",
    [
        lambda: layouts.orbit(0),
        lambda: layouts.orbit(4, ()),
        lambda: layouts.orbit(4, fov_deg=0.0),
        lambda: layouts.orbit(4, radius=0.0),
        lambda: layouts.sphere(4, min_elevation_deg=50, max_elevation_deg=10),
        lambda: layouts.orbit(4, width=0),
    ],
)
def test_bad_layouts_are_input_errors(call):
    with pytest.raises(InputError):
        call()
