"""The live viewer (``orbit4d view``, ``orbit4d train --view``): a viser server on 127.0.0.1 that draws a scene and
its controls in the browser.

viser's HTTP server answers only with its own client (one self-contained ``index.html`` inside the wheel, nothing
fetched from the network) and refuses paths with ``..``; the scene itself travels over the websocket, so no file of
the scene folder, nor any other, is served. Navigation is viser's: drag to orbit, scroll to zoom, right-drag to
pan, and W A S D / Q E with the arrow keys to fly.
"""

from __future__ import annotations

import errno
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from multiview.console import info, warn
from multiview.errors import InputError
from reconstruct.splats import Splats
from viewers.render import PATHS, RenderConfig, render_video
from viewers.scene import ViewScene
from viewers.viser_scene import SceneNodes, draw_scene, home_view, quiet, splat_arrays, vertical_fov

SPEEDS = ("0.25x", "0.5x", "1x", "2x", "4x")
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


@dataclass(frozen=True)
class ViewerConfig:
    """Where the live viewer listens and what its controls start with."""

    host: str = "127.0.0.1"
    """Address to listen on; 127.0.0.1 (this machine only) unless told otherwise."""
    port: int = 8080
    """TCP port; 0 picks a free one (tests)."""
    video_dir: Path | None = None
    """Folder the render button writes videos into (default: the scene's folder, or the file's)."""
    render_button: bool = True
    """Offer the render-video controls (not while training: the splats are still changing)."""


def check_port(host: str, port: int) -> None:
    """InputError naming ``host:port`` when nothing can listen there (in use, or not an address of this machine)."""
    if not 0 <= port <= 65535:
        raise InputError(f"--port {port}: give a TCP port from 1 to 65535")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror:
        raise InputError(f"--host {host} is not an address of this machine: use 127.0.0.1") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                raise InputError(f"port {port} on {host} is in use (another viewer or server): pass --port with "
                                 "another number, e.g. --port " f"{port + 1 if port < 65535 else 8081}") from None
            raise InputError(f"cannot listen on {host}:{port} ({error.strerror}): pass --host 127.0.0.1 or "
                             "another --port") from None


class Viewer:
    """A scene in a viser server with its controls: layers on and off, time, video rendering, a status line."""

    def __init__(self, scene: ViewScene, config: ViewerConfig = ViewerConfig()):
        import viser

        check_port(config.host, config.port)
        if config.host not in LOCAL_HOSTS:
            warn(f"the viewer listens on {config.host}: other machines on the network can see this scene")
        self.scene, self.config = scene, config
        self._stopped = threading.Event()
        with quiet():
            self.server = viser.ViserServer(host=config.host, port=config.port, verbose=False)
        if config.port and self.server.get_port() != config.port:  # taken between the check and the start
            self.stop()
            raise InputError(f"port {config.port} on {config.host} is in use: pass --port with another number")
        try:
            self._build()
        except BaseException:  # a scene that fails to draw leaves no server behind
            self.stop()
            raise

    def _build(self) -> None:
        self.server.gui.configure_theme(show_share_button=False, control_width="medium")  # no tunnel off the machine
        frames = self.scene.frames()
        self._set_view(frames[0])
        self.nodes: SceneNodes = draw_scene(self.server, frames, self.scene.cameras, self.scene.images,
                                            self.scene.points, self.scene.point_colors, self.scene.mesh)  # fmt: skip
        self._status = self.server.gui.add_markdown("")
        self._layer_controls()
        if len(frames) > 1:
            self._time_controls()
        if self.config.render_button:
            self._render_controls()

    @property
    def url(self) -> str:
        host = self.config.host if ":" not in self.config.host else f"[{self.config.host}]"
        return f"http://{host}:{self.server.get_port()}/"

    def set_status(self, text: str) -> None:
        """Show ``text`` (Markdown) at the top of the controls."""
        self._status.content = text

    def set_splats(self, splats: Splats) -> None:
        """Replace the splats shown (one time step: training's live view)."""
        handle = self.server.scene.add_gaussian_splats("/splats/t0000", **splat_arrays(splats),
                                                       visible=self.nodes.splats_visible)  # fmt: skip
        self.nodes.frames[0] = handle

    def wait(self) -> None:
        """Serve until Ctrl-C (or SIGTERM)."""
        try:
            while not self._stopped.wait(0.5):
                pass
        except KeyboardInterrupt:
            pass

    def stop(self) -> None:
        self._stopped.set()
        with quiet():
            self.server.stop()

    # --- setup ---------------------------------------------------------------------------------------------------

    def _set_view(self, splats: Splats) -> None:
        up = self.scene.up()
        self.server.scene.set_up_direction(tuple(float(v) for v in up))
        position, look_at = home_view(splats, self.scene.cameras, up)
        initial = self.server.initial_camera
        initial.position, initial.look_at, initial.up = position, look_at, up
        if self.scene.cameras:
            initial.fov = vertical_fov(self.scene.cameras[0])

    def _layer_controls(self) -> None:
        gui, nodes = self.server.gui, self.nodes
        with gui.add_folder("Show"):
            splats = gui.add_checkbox("Splats", initial_value=True)
            splats.on_update(lambda _: nodes.show_splats(splats.value))
            if nodes.cameras:
                cameras = gui.add_checkbox("Cameras", initial_value=True)
                cameras.on_update(lambda _: [setattr(f, "visible", cameras.value) for f in nodes.cameras])
            if nodes.points is not None:
                points = gui.add_checkbox("Points", initial_value=False)
                points.on_update(lambda _: setattr(nodes.points, "visible", points.value))
            if nodes.mesh is not None:
                mesh = gui.add_checkbox("Mesh", initial_value=False)
                mesh.on_update(lambda _: setattr(nodes.mesh, "visible", mesh.value))

    def _time_controls(self) -> None:
        gui, times = self.server.gui, self.scene.timeline.times
        with gui.add_folder("Time"):
            self._frame = gui.add_slider("Frame", min=0, max=len(times) - 1, step=1, initial_value=0)
            self._clock = gui.add_markdown(_clock_text(times, 0))
            self._playing = gui.add_checkbox("Play", initial_value=False)
            self._speed = gui.add_dropdown("Speed", SPEEDS, initial_value="1x")
        self._frame.on_update(lambda _: self._show_frame(int(self._frame.value)))
        threading.Thread(target=self._play, name="orbit4d-playback", daemon=True).start()

    def _show_frame(self, index: int) -> None:
        with self.server.atomic():
            self.nodes.show_frame(index)
        self._clock.content = _clock_text(self.scene.timeline.times, index)

    def _play(self) -> None:
        """Advance the frame slider while Play is ticked, at the sequence's own rate times the speed."""
        times = self.scene.timeline.times
        step = float(np.median(np.diff(times))) if len(times) > 1 else 0.1
        while not self._stopped.is_set():
            speed = float(self._speed.value.rstrip("x"))
            self._stopped.wait(max(step / speed, 0.01))
            if self._playing.value:
                self._frame.value = (int(self._frame.value) + 1) % len(times)  # on_update shows it

    def _render_controls(self) -> None:
        gui = self.server.gui
        with gui.add_folder("Render video"):
            path = gui.add_dropdown("Path", PATHS if len(self.scene.cameras) >= 2 else ("orbit",),
                                    initial_value="orbit")  # fmt: skip
            frames = gui.add_number("Frames", initial_value=120, min=2, max=3600, step=1)
            button = gui.add_button("Render video")
            progress = gui.add_markdown("")

        def render(_) -> None:
            button.disabled = True
            try:
                out = _free_name(self._video_dir(), f"{_stem(self.scene.source)}_{path.value}.mp4")
                config = RenderConfig(path=path.value, frames=int(frames.value))
                render_video(self.scene, config, out,
                             progress=lambda done, total: setattr(progress, "content", f"frame {done} / {total}"))
                progress.content = f"written to `{out}`"
                info(f"viewer: video written to {out}")
            except (InputError, OSError) as error:
                progress.content = f"could not render: {error}"
            finally:
                button.disabled = False

        button.on_click(render)

    def _video_dir(self) -> Path:
        if self.config.video_dir is not None:
            return self.config.video_dir
        return self.scene.source if self.scene.source.is_dir() else self.scene.source.parent


def _clock_text(times: np.ndarray, index: int) -> str:
    return f"t = {times[index]:.2f} s (frame {index + 1} of {len(times)})"


def _stem(source: Path) -> str:
    return source.name if source.is_dir() else source.stem


def _free_name(folder: Path, name: str) -> Path:
    """``folder / name``, or with -2, -3, ... before the suffix where that exists: a render never replaces a file."""
    candidate, number = folder / name, 2
    while candidate.exists():
        candidate = folder / f"{Path(name).stem}-{number}{Path(name).suffix}"
        number += 1
    return candidate


class TrainingView:
    """``reconstruct.train.run``'s ``on_step``: refreshes the viewer's splats and its loss / PSNR line, at most every
    ``interval_s`` seconds of wall time (a refresh costs a copy of the splats)."""

    def __init__(self, viewer: Viewer, total_steps: int, interval_s: float = 2.0):
        self.viewer, self.total_steps, self.interval_s = viewer, total_steps, interval_s
        self._last = 0.0

    def __call__(self, state) -> None:
        now = time.monotonic()
        if now - self._last < self.interval_s and state.step < self.total_steps:
            return
        self._last = now
        splats = Splats.from_parameters(state.params)
        self.viewer.set_splats(splats)
        self.viewer.set_status(training_status(state.step, self.total_steps, len(splats), state.curve, state.history))


def training_status(step: int, total: int, gaussians: int, curve: list[dict], history: list[dict]) -> str:
    """The viewer's status line while training: step, Gaussians, loss and PSNR (the last window of training steps),
    and the last held-out PSNR sample."""
    parts = [f"**training** step {step:,} / {total:,}", f"{gaussians:,} Gaussians"]
    if curve:
        parts.append(f"loss {curve[-1]['loss']:.4f}, PSNR {curve[-1]['psnr']:.2f} dB (training views)")
    held_out = [sample for sample in history if sample.get("psnr") is not None]
    if held_out:
        parts.append(f"held-out PSNR {held_out[-1]['psnr']:.2f} dB at step {held_out[-1]['step']:,}")
    return " · ".join(parts)


def training_viewer(capture_dir: Path, total_steps: int, host: str = "127.0.0.1",
                    port: int = 8080) -> tuple[Viewer, TrainingView]:  # fmt: skip
    """A viewer of the capture at ``capture_dir`` (its cameras and photos, and splats from its points until the
    first refresh) and the ``on_step`` that refreshes it from training."""
    from multiview.capture import read_capture
    from reconstruct.splats import random_splats, splats_from_points
    from viewers.scene import StillTimeline

    check_port(host, port)
    capture = read_capture(Path(capture_dir))
    frames = sorted(capture.frames, key=lambda frame: frame.image_path.name)
    cameras = tuple(frame.camera for frame in frames)
    if capture.points is not None and len(capture.points):
        start = splats_from_points(capture.points, capture.colors, sh_degree=0)
    else:
        start = random_splats(list(cameras), 2000, sh_degree=0)
    scene = ViewScene(Path(capture_dir), StillTimeline(start), cameras, tuple(f.image_path for f in frames),
                      capture.points, capture.colors)  # fmt: skip
    viewer = Viewer(scene, ViewerConfig(host=host, port=port, render_button=False))
    viewer.set_status(f"**training** starting ({total_steps:,} steps)")
    return viewer, TrainingView(viewer, total_steps)
