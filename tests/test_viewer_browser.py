"""The viewer in a real browser: Debian's headless Chromium (software WebGL) driven by playwright.

The picture the browser draws is compared with orbit4d's own render of the same splats from the same camera (the
camera the page reports, or the one the static page opens on): the foreground masks must overlap (IoU >= 0.8) and
the mean foreground colours agree within 0.1. Pixels come from the WebGL canvas itself (viser keeps its drawing
buffer), so the controls drawn over it do not count.
"""

from __future__ import annotations

import base64
import functools
import http.server
import io
import math
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import PIL.Image
import pytest
import torch

from multiview.camera import Camera
from reconstruct.evaluate import render_with_depth
from viewer_scenes import ball_splats, write_scene, write_sequence
from viewers import static
from viewers.render import look_at_pose
from viewers.scene import load_view_scene
from viewers.server import Viewer, ViewerConfig
from viewers.viser_scene import camera_from_viser, vertical_fov, viser_pose

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip
VIEWPORT = {"width": 480, "height": 360}
FIXED_PIXELS = "?fixedDpr=1"  # viser lowers the resolution when frames are slow (software GL): not in these tests
# viser 1.1.1's splat mesh gives three.js a 2-component "position" attribute (the quad corners), so three.js's
# bounding-sphere pass logs this once when it first culls the mesh; the splats draw regardless (the tests below
# compare them with orbit4d's render). Any other console error fails a test.
KNOWN_CLIENT_ERRORS = ("THREE.BufferGeometry.computeBoundingSphere(): Computed radius is NaN",)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not found: `make test` installs Debian's chromium (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is a test dependency (pip install "
                                   "'orbit4d[test]')")  # fmt: skip
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


class Tab:
    """A page that records console errors and every request that leaves 127.0.0.1 (and refuses those)."""

    def __init__(self, browser):
        self.page = browser.new_page(viewport=VIEWPORT)
        self.errors: list[str] = []
        self.outside: list[str] = []
        self.page.on("console", lambda message: self.errors.append(message.text) if message.type == "error" else None)
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))
        self.page.route("**/*", self._route)

    def _route(self, route) -> None:
        url = route.request.url
        if urlparse(url).scheme in ("data", "blob") or urlparse(url).hostname == "127.0.0.1":
            route.continue_()
        else:
            self.outside.append(url)
            route.abort()

    def unexpected_errors(self) -> list[str]:
        return [e for e in self.errors if not any(known in e for known in KNOWN_CLIENT_ERRORS)]

    def canvas(self) -> np.ndarray:
        """[H, W, 4] float RGBA of the WebGL canvas (straight alpha; the background is transparent)."""
        urls = self.page.evaluate("() => [...document.querySelectorAll('canvas')].map(c => c.toDataURL('image/png'))")
        if not urls:  # the page is still loading
            return np.zeros((VIEWPORT["height"], VIEWPORT["width"], 4))
        data = base64.b64decode(max(urls, key=len).split(",", 1)[1])
        return np.asarray(PIL.Image.open(io.BytesIO(data)).convert("RGBA"), dtype=np.float64) / 255.0

    def settled_canvas(self, timeout: float = 90.0, min_coverage: float = 0.005, still_for: float = 3.0) -> np.ndarray:
        """The canvas once splats cover ``min_coverage`` of it and it has not changed for ``still_for`` seconds (read
        every 0.5 s): sorting done, and the opening view in place (a page may show a moment from elsewhere first)."""
        deadline, previous, since = time.monotonic() + timeout, None, time.monotonic()
        while time.monotonic() < deadline:
            current = self.canvas()
            if previous is None or previous.shape != current.shape or np.abs(current - previous).mean() >= 0.002 \
                    or (current[..., 3] > 0.5).mean() < min_coverage:  # fmt: skip
                since = time.monotonic()
            elif time.monotonic() - since >= still_for:
                return current
            previous = current
            time.sleep(0.5)
        raise AssertionError(f"no settled picture of splats within {timeout} s")

    def first_picture(self, timeout: float = 60.0, min_coverage: float = 0.001) -> np.ndarray:
        """The canvas once splats cover ``min_coverage`` of it (for pictures that keep moving)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            current = self.canvas()
            if (current[..., 3] > 0.5).mean() >= min_coverage:
                return current
            time.sleep(0.25)
        raise AssertionError(f"no splats drawn within {timeout} s")

    def wait_for(self, condition, what: str, timeout: float = 60.0) -> None:
        """Poll ``condition()`` every 0.5 s until it holds; AssertionError naming ``what`` after ``timeout``."""
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, f"not {what} within {timeout} s"
            time.sleep(0.5)

    def close(self) -> None:
        self.page.close()


def compare_with_render(rgba: np.ndarray, splats, camera: Camera) -> tuple[float, float]:
    """(foreground IoU, largest difference of the mean foreground colours over white) between the browser's
    picture and orbit4d's render of ``splats`` from ``camera``."""
    ours, _, alpha = render_with_depth(splats, camera, torch.ones(3), depth=False)
    ours, alpha = ours.numpy(), alpha.numpy()
    theirs = rgba[..., :3] * rgba[..., 3:] + (1.0 - rgba[..., 3:])
    mask_theirs, mask_ours = rgba[..., 3] > 0.5, alpha > 0.5
    iou = (mask_theirs & mask_ours).sum() / max((mask_theirs | mask_ours).sum(), 1)
    both = mask_theirs & mask_ours
    color_error = float(np.abs(theirs[both].mean(0) - ours[both].mean(0)).max())
    print(f"foreground IoU {iou:.3f}, mean colour difference {color_error:.4f}")  # shown with pytest -s
    return float(iou), color_error


def connected_client(viewer: Viewer, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        clients = viewer.server.get_clients()
        if clients:
            return next(iter(clients.values()))
        time.sleep(0.2)
    raise AssertionError("the page did not connect to the viewer")


def test_live_viewer_draws_what_orbit4d_renders(browser, tmp_path):
    import trimesh

    scene_dir = write_scene(tmp_path, ball_splats(3000))
    trimesh.creation.box(extents=(0.4, 0.4, 0.4)).export(scene_dir / "mesh.glb")  # the Mesh toggle is offered
    scene = load_view_scene(scene_dir)
    viewer = Viewer(scene, ViewerConfig(port=0))
    tab = Tab(browser)
    try:
        tab.page.goto(viewer.url + FIXED_PIXELS)
        client = connected_client(viewer)
        camera = scene.cameras[1]  # look from a training camera, as a user clicking through them would
        wxyz, position = viser_pose(camera)
        client.camera.fov = vertical_fov(camera)
        client.camera.wxyz, client.camera.position = wxyz, position
        with_cameras = tab.settled_canvas()
        tab.page.get_by_role("checkbox", name="Cameras", exact=True).click()  # the other cameras' frustums and photos
        covered = (with_cameras[..., 3] > 0.5).sum()
        tab.wait_for(lambda: (tab.canvas()[..., 3] > 0.5).sum() < covered, "cameras hidden")
        rgba = tab.settled_canvas()
        seen = client.camera
        viewed_from = camera_from_viser(seen.wxyz, seen.position, seen.fov, seen.image_width, seen.image_height)
        assert np.allclose(viewed_from.center, camera.center, atol=1e-3)
        iou, color_error = compare_with_render(rgba, scene.timeline.at(0.0), viewed_from)
        assert iou >= 0.8 and color_error <= 0.1, (iou, color_error)
        tab.page.get_by_role("checkbox", name="Splats", exact=True).click()  # the toggle hides them in the browser
        tab.wait_for(lambda: (tab.canvas()[..., 3] > 0.5).sum() < 0.2 * (rgba[..., 3] > 0.5).sum(), "splats hidden")
        hidden = (tab.canvas()[..., 3] > 0.5).sum()
        show_layer(tab, "Points", hidden)  # off at first; shows the sparse points where the splats were
        assert not tab.page.get_by_role("checkbox", name="Mesh", exact=True).is_checked()  # shown: the slow test
        frames = tab.page.get_by_role("textbox", name="Frames")
        frames.fill("6")
        frames.press("Tab")
        tab.page.get_by_role("button", name="Render video").click()  # a video of the path, by orbit4d's renderer
        video = scene.source / f"{scene.source.name}_orbit.mp4"
        tab.page.get_by_text(f"written to {video}").wait_for(timeout=60_000)
        import av

        with av.open(str(video)) as container:
            assert sum(1 for _ in container.decode(video=0)) == 6
        assert tab.unexpected_errors() == [] and tab.outside == []
    finally:
        tab.close()
        viewer.stop()


def show_layer(tab: Tab, layer: str, hidden: int) -> None:
    """Tick ``layer``'s box: more of the canvas is drawn than the ``hidden`` pixels; untick it: back to them."""
    box = tab.page.get_by_role("checkbox", name=layer, exact=True)
    box.click()
    tab.wait_for(lambda: (tab.canvas()[..., 3] > 0.5).sum() > hidden + 200, f"{layer} shown", timeout=120)
    box.click()
    tab.wait_for(lambda: (tab.canvas()[..., 3] > 0.5).sum() <= hidden + 200, f"{layer} hidden")


@pytest.mark.slow
def test_mesh_toggle_shows_the_mesh(browser, tmp_path):
    """A mesh.glb in the scene folder shows when ticked (slow in software GL: its first showing prepares the PBR
    shaders and environment map, about 40 s here)."""
    import trimesh

    scene_dir = write_scene(tmp_path, ball_splats(500))
    trimesh.creation.box(extents=(0.4, 0.4, 0.4)).export(scene_dir / "mesh.glb")  # a mesh from elsewhere
    viewer = Viewer(load_view_scene(scene_dir), ViewerConfig(port=0))
    tab = Tab(browser)
    try:
        tab.page.goto(viewer.url + FIXED_PIXELS)
        tab.settled_canvas()
        for layer in ("Splats", "Cameras"):
            tab.page.get_by_role("checkbox", name=layer, exact=True).click()
        tab.wait_for(lambda: (tab.canvas()[..., 3] > 0.5).sum() < 50, "the scene emptied")
        show_layer(tab, "Mesh", int((tab.canvas()[..., 3] > 0.5).sum()))
        assert tab.unexpected_errors() == [] and tab.outside == []
    finally:
        tab.close()
        viewer.stop()


def test_time_slider_and_play_move_a_sequence(browser, tmp_path):
    scene = load_view_scene(write_sequence(tmp_path / "seq", frames=3), fps=2.0)
    viewer = Viewer(scene, ViewerConfig(port=0))
    tab = Tab(browser)
    try:
        tab.page.goto(viewer.url + FIXED_PIXELS)
        client = connected_client(viewer)
        client.camera.position = (0.0, 0.0, -2.0)  # position first: viser carries the look-at point along
        client.camera.look_at = (0.0, 0.0, 0.0)
        first = tab.settled_canvas()
        slider = tab.page.get_by_role("slider").first
        slider.focus()
        slider.press("ArrowRight")  # the keyboard moves the slider as dragging it does
        deadline = time.monotonic() + 20
        while viewer._frame.value != 1 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert viewer._frame.value == 1
        start = _centroid_x(first)
        tab.wait_for(lambda: _centroid_x(tab.canvas()) > start + 0.05 * VIEWPORT["width"], "the ball moved right")
        tab.page.get_by_role("checkbox", name="Play", exact=True).check()
        seen, places, deadline = {int(viewer._frame.value)}, set(), time.monotonic() + 30
        while (len(seen) < 3 or len(places) < 3) and time.monotonic() < deadline:
            seen.add(int(viewer._frame.value))
            picture = tab.canvas()
            if (picture[..., 3] > 0.5).any():
                places.add(round(_centroid_x(picture) / 20))  # the ball's place in the picture
            time.sleep(0.1)
        assert seen == {0, 1, 2} and len(places) >= 3  # playing shows every frame (and wraps round)
        assert tab.unexpected_errors() == [] and tab.outside == []
    finally:
        tab.close()
        viewer.stop()


def _centroid_x(rgba: np.ndarray) -> float:
    """Mean column of the drawn pixels (NaN when none are)."""
    columns = np.nonzero(rgba[..., 3] > 0.5)[1]
    return float(columns.mean()) if len(columns) else float("nan")


@pytest.fixture
def static_server():
    """Serve a folder from 127.0.0.1 with Python's plain static file server; yields a function folder -> URL."""
    servers = []

    def serve(folder: Path) -> str:
        handler = functools.partial(_QuietHandler, directory=str(folder))
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/"

    yield serve
    for server in servers:
        server.shutdown()
        server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args) -> None:
        pass


def test_static_export_draws_the_same_scene_without_python(browser, tmp_path, static_server):
    # the splats alone: a scene folder's export also draws its cameras' frustums and photos (test_viewer.py)
    scene = load_view_scene(write_scene(tmp_path, ball_splats(3000)) / "splats.ply")
    site = static.run(scene, tmp_path / "site")
    tab = Tab(browser)
    try:
        tab.page.goto(static_server(site) + "index.html" + FIXED_PIXELS)
        rgba = tab.settled_canvas()
        view = static.view_parameters(scene)
        position, look_at, up = (np.array([float(x) for x in view[k].split(",")])
                                 for k in ("initialCameraPosition", "initialCameraLookAt", "initialCameraUp"))
        height, width = rgba.shape[:2]
        focal = (height / 2) / math.tan(float(view["initialCameraFov"]) / 2)
        K = np.array([[focal, 0, width / 2 - 0.5], [0, focal, height / 2 - 0.5], [0, 0, 1.0]])
        camera = Camera(K=K, cam_from_world=look_at_pose(position, look_at, up), width=width, height=height)
        iou, color_error = compare_with_render(rgba, scene.timeline.at(0.0), camera)
        assert iou >= 0.8 and color_error <= 0.1, (iou, color_error)
        assert tab.unexpected_errors() == [] and tab.outside == []
    finally:
        tab.close()


def test_static_export_of_a_sequence_plays(browser, tmp_path, static_server):
    scene = load_view_scene(write_sequence(tmp_path / "seq", frames=3), fps=1.0)
    site = static.run(scene, tmp_path / "site")
    tab = Tab(browser)
    try:
        tab.page.goto(static_server(site) + "index.html" + FIXED_PIXELS)
        tab.first_picture()
        positions, deadline = set(), time.monotonic() + 20
        while len(positions) < 3 and time.monotonic() < deadline:  # the recording plays (and loops) by itself
            picture = tab.canvas()
            if (picture[..., 3] > 0.5).any():  # the player hides everything for a moment when it loops
                positions.add(round(_centroid_x(picture) / 20))
            time.sleep(0.25)
        assert len(positions) >= 3, positions
        assert tab.unexpected_errors() == [] and tab.outside == []
    finally:
        tab.close()


def test_train_view_shows_training_live(browser, tmp_path):
    """orbit4d train --view: the page shows the splats and the loss and PSNR while training runs, the final splats at
    the end, and Ctrl-C closes the viewer with exit 0 once the scene is written."""
    import os
    import signal
    import socket
    import subprocess
    import sys

    capture = write_scene(tmp_path, ball_splats(2000)).parent / "capture"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "orbit4d", "train", str(capture), "--out", str(tmp_path / "trained"), "--view",
               "--port", str(port), "--device", "cpu", "--steps", "100", "--test-every", "3"]  # fmt: skip
    # Ctrl-C's default action in the child even when this suite runs as a background job (which ignores SIGINT,
    # and a child inherits that)
    process = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                               env={**os.environ, "OMP_NUM_THREADS": "1"},
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(process.stderr), daemon=True)
    reader.start()
    tab = Tab(browser)
    try:
        deadline = time.monotonic() + 120
        while not any("watch training at" in line for line in lines):
            assert process.poll() is None and time.monotonic() < deadline, "".join(lines)
            time.sleep(0.2)
        tab.page.goto(f"http://127.0.0.1:{port}/{FIXED_PIXELS}")
        while not any("scene written" in line for line in lines):
            assert process.poll() is None and time.monotonic() < deadline, "".join(lines)
            time.sleep(0.5)
        status = tab.page.get_by_text("step 100 / 100")
        status.wait_for(timeout=30_000)
        assert "PSNR" in status.inner_text() and "loss" in status.inner_text()
        tab.first_picture(min_coverage=0.01)
        assert tab.unexpected_errors() == [] and tab.outside == []
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 0
        assert (tmp_path / "trained" / "splats.ply").is_file()
    finally:
        tab.close()
        if process.poll() is None:
            process.kill()
            process.wait()
        reader.join(timeout=10)
        process.stderr.close()
