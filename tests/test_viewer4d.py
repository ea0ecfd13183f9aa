"""The viewer plays orbit4d's 4D file (splats4d.ply, ``reconstruct.splats4d``): its timeline is the file's own, each
time step shows the Gaussians evaluated at that time, and in a real browser moving the time slider moves the
picture (``tests/test_viewer_browser.py``'s harness)."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from reconstruct.splats4d import Splats4D, read_splats4d, write_splats4d
from test_viewer_browser import FIXED_PIXELS, VIEWPORT, Tab, _centroid_x, browser, connected_client  # noqa: F401
from viewer_scenes import ball_splats
from viewers.scene import load_view_scene

pytestmark = pytest.mark.usefixtures("one_thread")


def moving_ball(folder, n: int = 1500):
    """A 4D scene folder: a ball of splats sliding 0.7 along x over 5 time steps (B-spline control points on a line),
    its lower half fading out by the end."""
    folder.mkdir(parents=True, exist_ok=True)
    canonical = ball_splats(n, radius=0.35)
    motion = torch.zeros(n, 6, 3)
    motion[:, :, 0] = torch.linspace(-0.35 - 0.7 / 3, 0.35 + 0.7 / 3, 6)  # a B-spline on a line: -0.35 .. 0.35
    lower = (canonical.means[:, 1] > 0).float()
    splats = Splats4D(canonical, motion, torch.zeros(n, 4, 4), torch.zeros(n), 8.0 * lower,
                      times=np.linspace(0.0, 2.0, 5))  # fmt: skip
    write_splats4d(folder / "splats4d.ply", splats)
    return folder


def test_the_viewer_reads_the_4d_file_at_its_own_times(tmp_path):
    scene = load_view_scene(moving_ball(tmp_path / "scene"))
    assert isinstance(scene.timeline, Splats4D) and scene.num_frames == 5
    assert np.allclose(scene.timeline.times, [0.0, 0.5, 1.0, 1.5, 2.0])
    frames = scene.frames()
    centres = [float(f.means[:, 0].mean()) for f in frames]
    assert np.allclose(np.diff(centres), 0.175, atol=1e-4)  # a steady slide, frame by frame
    truth = read_splats4d(tmp_path / "scene" / "splats4d.ply").at(2.0)
    assert torch.equal(frames[-1].opacities, truth.opacities) and (torch.sigmoid(truth.opacities) < 0.1).sum() > 500


def test_moving_the_time_slider_moves_the_4d_scene(browser, tmp_path):  # noqa: F811
    from viewers.server import Viewer, ViewerConfig

    scene = load_view_scene(moving_ball(tmp_path / "scene"))
    viewer = Viewer(scene, ViewerConfig(port=0))
    tab = Tab(browser)
    try:
        tab.page.goto(viewer.url + FIXED_PIXELS)
        client = connected_client(viewer)
        client.camera.position = (0.0, 0.0, -2.0)
        client.camera.look_at = (0.0, 0.0, 0.0)
        start = _centroid_x(tab.settled_canvas())
        slider = tab.page.get_by_role("slider").first
        slider.focus()
        for _ in range(4):  # to the last time step, as dragging the slider there would
            slider.press("ArrowRight")
        deadline = time.monotonic() + 20
        while viewer._frame.value != 4 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert viewer._frame.value == 4
        tab.wait_for(lambda: abs(_centroid_x(tab.canvas()) - start) > 0.1 * VIEWPORT["width"], "the ball moved")
        assert tab.unexpected_errors() == [] and tab.outside == []
    finally:
        tab.close()
        viewer.stop()
