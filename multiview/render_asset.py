"""Synthetic captures rendered from 3D assets (glTF, GLB, OBJ) with Blender's Cycles: posed images with known truth.

``render_asset(config, model, out_dir)`` writes a capture folder (the format of ``multiview.capture``) plus the
ground truth it was rendered from:

```
out_dir/
  images/t000_c000.png      RGBA, 8-bit, sRGB by Blender's "Standard" view transform (texture colours unchanged)
  masks/t000_c000.png       8-bit, 255 where the ray through the pixel centre hits the object, 0 elsewhere
  depth/t000_c000.npy       float32 [H, W], planar camera-z depth (OpenCV z) in world units; 0 = no surface
  normals/t000_c000.npy     float16 [H, W, 3], world-space unit normals facing the camera; 0 = no surface
  transforms.json           nerfstudio layout; per frame also depth_file_path and normal_file_path, and for animated
                            assets and rigs time (seconds) and camera_id
  ground_truth/mesh_t000.ply  the posed, triangulated geometry of each time step, in the capture's world frame
  ground_truth/normalization.json  world_from_asset (4x4), the asset's bounding box, which pose was measured
  report.json               asset, animation, times, views, seconds per frame, renderer, Blender version
```

``t`` counts time steps, ``c`` cameras. The capture's world is Blender's Z-up world after normalization: the asset's
bounding box (of the first time step for animations) centred at the origin, its largest side 1 unit long. Depth,
normals and masks belong to the rays through the pixel centres (a second, one-sample render, see
``multiview.blender``); images are anti-aliased. Needs ``bpy`` (the ``render`` extra, Python 3.11).
"""

from __future__ import annotations

import contextlib
import math
import re
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from multiview import blender, layouts
from multiview.camera import Camera
from multiview.capture import TRANSFORMS_FILE, Frame, write_report, write_transforms
from multiview.console import info, track, warn
from multiview.errors import InputError
from multiview.outputs import write_json

LAYOUTS = ("orbit", "sphere", "rig")
_NAMED_BACKGROUNDS = {"white": (1.0, 1.0, 1.0), "black": (0.0, 0.0, 0.0)}
_HEX_COLOUR = re.compile(r"#[0-9a-fA-F]{6}")
MIN_SIDE = 8  # pixels; Blender renders no less than 4 a side (its passes come out 4x4 for 1x1 to 3x3 images)
MAX_SIDE = 8192  # pixels; a 100000 px side would take hours and hundreds of GB before failing
MAX_SEED = 2**63 - 1  # as orbit4d.options.seed; Cycles gets it folded to 32 bits (blender.cycles_seed)
_MIN_SPAN_PX = 2.0  # an asset spanning fewer pixels than this in every view renders (almost) empty images


@dataclass(frozen=True)
class RenderConfig:
    """Everything a synthetic capture can be told: where the cameras are, what they see, how it is rendered."""

    layout: str = "orbit"
    """Cameras round the asset: "orbit" (rings), "sphere" (random directions), "rig" (fixed cameras, camera_id)."""
    num_views: int = 48
    """orbit / sphere: how many views; rig: how many cameras."""
    elevations_deg: tuple[float, ...] = (20.0,)
    """orbit: one ring per elevation, the views shared out over the rings; rig: its one ring uses the first."""
    radius: float = 2.5
    """Camera distance from the asset's centre, in normalized units (the asset's largest bounding-box side is 1)."""
    fov_deg: float = 40.0
    """Horizontal field of view in degrees."""
    width: int = 256
    """Image width in pixels, from MIN_SIDE (8) to MAX_SIDE (8192)."""
    height: int = 256
    """Image height in pixels, from MIN_SIDE (8) to MAX_SIDE (8192)."""
    background: str = "transparent"
    """What the images show behind the asset: "transparent" (alpha 0), "white", "black" or "#rrggbb" (sRGB)."""
    animation: str | None = None
    """Animation (Blender action) to play; None: the asset's first animation if it has any."""
    time_steps: int = 1
    """Animated assets: this many times evenly over the animation (end excluded); every camera renders every time."""
    world_strength: float = 1.0
    """Strength of the uniform white world light (1: textures come out with their own colours)."""
    sun: tuple[float, float, float] | None = None
    """Optional white sun lamp: (azimuth_deg, elevation_deg, strength in W/m^2); None: world light only."""
    samples: int = 16
    """Cycles samples per pixel of the colour images (depth, normals and masks always take one)."""
    seed: int = 0
    """Seed of Cycles' sampling and of the "sphere" layout, 0 to 2^63 - 1 (Cycles gets it modulo 2^31)."""
    allow_outside_paths: bool = False
    """Read buffers, textures and materials the asset names outside its folder (refused otherwise)."""

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise InputError(f"layout '{self.layout}' is unknown: use one of {', '.join(LAYOUTS)}")
        if self.num_views < 1 or self.time_steps < 1 or self.samples < 1:
            raise InputError(
                f"views {self.num_views}, time steps {self.time_steps}, samples {self.samples}: each must be at least 1"
            )
        if not self.elevations_deg:
            raise InputError("elevations_deg is empty: give at least one elevation (20 degrees is a good default)")
        object.__setattr__(self, "elevations_deg", tuple(float(e) for e in self.elevations_deg))
        self._check_cameras()
        if not 0.0 <= self.world_strength < math.inf:
            raise InputError(f"world_strength {self.world_strength}: use a finite value from 0 up (1 is neutral)")
        parse_background(self.background)

    def _check_cameras(self) -> None:
        """Values the layouts and Blender can take; messages name the ``orbit4d render-asset`` option too."""
        for elevation in self.elevations_deg:
            if not -90.0 <= elevation <= 90.0:  # NaN fails every comparison, so these catch it too
                raise InputError(f"elevation {elevation} degrees (--elevation): use values from -90 (straight below) "
                                 "to 90 (straight above); 20 is a good default")  # fmt: skip
        if not 0.0 < self.radius < math.inf:
            raise InputError(f"radius {self.radius} (--radius): use a finite camera distance greater than 0, in units "
                             "of the asset's largest side (2.5 is a good default)")  # fmt: skip
        if not 0.0 < self.fov_deg < 180.0:
            raise InputError(f"field of view {self.fov_deg} degrees (--fov): use a value between 0 and 180 "
                             "(40 is a good default)")  # fmt: skip
        if not (MIN_SIDE <= self.width <= MAX_SIDE and MIN_SIDE <= self.height <= MAX_SIDE):
            raise InputError(f"image size {self.width}x{self.height} (--size): use {MIN_SIDE} to {MAX_SIDE} pixels a "
                             "side (256 is a good default)")  # fmt: skip
        if not 0 <= self.seed <= MAX_SEED:
            raise InputError(f"seed {self.seed} (--seed): use a whole number from 0 to 2^63 - 1")


def parse_background(text: str) -> tuple[float, float, float] | None:
    """"transparent" -> None; "white", "black", "#rrggbb" (sRGB) -> linear RGB for the renderer."""
    if text == "transparent":
        return None
    if text in _NAMED_BACKGROUNDS:
        return _NAMED_BACKGROUNDS[text]
    if _HEX_COLOUR.fullmatch(text):
        channels = (int(text[i : i + 2], 16) / 255.0 for i in (1, 3, 5))
        return tuple(blender.srgb_to_linear(c) for c in channels)  # type: ignore[return-value]
    raise InputError(f"background '{text}' is unknown: use transparent, white, black or a colour like #808080")


def cameras_for(config: RenderConfig) -> list[Camera]:
    """The cameras of ``config``'s layout, looking at the origin of the Z-up world."""
    size = dict(radius=config.radius, fov_deg=config.fov_deg, width=config.width, height=config.height)
    if config.layout == "orbit":
        return layouts.orbit(config.num_views, config.elevations_deg, **size)
    if config.layout == "sphere":
        return layouts.sphere(config.num_views, seed=config.seed, **size)
    return layouts.rig(config.num_views, config.elevations_deg[0], **size)


def render_asset(config: RenderConfig, model: Path, out_dir: Path) -> Path:
    """Render ``model`` as ``config`` says into ``out_dir`` (existing, empty) and return ``out_dir``.

    Raises InputError for a missing, unsupported or geometry-less model, missing textures, an unknown animation,
    cameras that would see (almost) nothing of the asset, or missing bpy. Ctrl-C and SIGTERM stop it between views
    (KeyboardInterrupt): Blender's render call would swallow them.
    """
    start = time.perf_counter()
    model, out_dir = blender.check_asset_path(Path(model)).absolute(), Path(out_dir).absolute()
    cameras = cameras_for(config)
    with _interrupts_between_views() as stop_point:
        blender.import_bpy()  # interrupted while Blender initializes, Python crashes (SIGSEGV)
        stop_point()
        asset = blender.load_asset(model, config.allow_outside_paths)
        stop_point()
        timeline = _timeline(config, asset)
        if timeline.frames[0] is not None:
            blender.set_frame(timeline.frames[0])
        normalization = blender.normalize_scene(asset, timeline.normalized_at)
        _check_asset_in_view(config, cameras, model)
        blender.configure_renderer(config.width, config.height, config.seed, parse_background(config.background),
                                   config.world_strength, config.sun)  # fmt: skip
        for folder in ("images", "masks", "depth", "normals", "ground_truth"):
            (out_dir / folder).mkdir()
        write_json(out_dir / "ground_truth" / "normalization.json", normalization.to_json())
        tally = _Tally()
        label = f"rendering {model.name}" + (f" ({timeline.animation.name})" if timeline.animation else "")
        frames = _render_all(config, timeline, cameras, out_dir, label, tally, stop_point)
    _warn_of_empty_views(config, model, tally, len(frames))
    write_transforms(out_dir / TRANSFORMS_FILE, frames, out_dir)
    total = time.perf_counter() - start
    write_report(
        out_dir, "render", model, len(frames), len(frames), [], total,
        asset=model.name,
        animation=None if timeline.animation is None else timeline.animation.name,
        animations=list(asset.animations),
        time_steps=len(timeline.frames),
        times_s=timeline.times,
        blender_frames=timeline.frames,
        cameras=len(cameras),
        views=len(frames),
        seconds_per_frame=round((tally.color_s + tally.passes_s) / len(frames), 4),
        seconds_per_frame_color=round(tally.color_s / len(frames), 4),
        seconds_per_frame_passes=round(tally.passes_s / len(frames), 4),
        renderer=blender.RENDERER,
        blender_version=asset.blender_version,
        normalized_at=timeline.normalized_at,
        config=asdict(config),
    )  # fmt: skip
    each = (tally.color_s + tally.passes_s) / len(frames)
    info(f"rendered {len(frames)} views of {model.name} in {total:.1f} s ({each:.2f} s each)")
    return out_dir


@contextlib.contextmanager
def _interrupts_between_views() -> Iterator[Callable[[], None]]:
    """Hold SIGINT (Ctrl-C) and SIGTERM back while Blender works; ``stop_point()`` raises KeyboardInterrupt if one came.

    Python raises KeyboardInterrupt wherever the main thread runs Python next: during a render that is inside the
    Cycles add-on's callbacks, which swallow it (the render goes on, and Blender prints an "Exception ignored"
    traceback). So the handlers only take note, and the interruption is raised between views, outside Blender;
    a signal that came after the last stop point is raised when the block ends. Off the main thread (where Python
    cannot set handlers) nothing changes.
    """
    if threading.current_thread() is not threading.main_thread():
        yield lambda: None
        return
    received: list[int] = []

    def take_note(signum, frame) -> None:
        received.append(signum)

    def stop_point() -> None:
        if received:
            received.clear()
            raise KeyboardInterrupt

    previous = {signum: signal.signal(signum, take_note) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop_point
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    stop_point()


def _check_asset_in_view(config: RenderConfig, cameras: list[Camera], model: Path) -> None:
    """InputError when the asset's bounding box (as posed now) would span under _MIN_SPAN_PX pixels in every view."""
    vertices = blender.posed_mesh().vertices
    corners = np.array(np.meshgrid(*zip(vertices.min(axis=0), vertices.max(axis=0)), indexing="ij")).reshape(3, -1).T
    widest = 0.0
    for camera in cameras:
        points = corners @ camera.cam_from_world[:3, :3].T + camera.cam_from_world[:3, 3]
        if (points[:, 2] <= 1e-9).any():  # the camera is inside the box, or beside it: it sees plenty
            return
        pixels = points[:, :2] / points[:, 2:] * [camera.fx, camera.fy]
        widest = max(widest, float(np.ptp(pixels, axis=0).max()))
    if widest < _MIN_SPAN_PX:
        raise InputError(
            f"{model.name} would span at most {widest:.2g} pixels in every view (--radius {config.radius:g}, --fov "
            f"{config.fov_deg:g}, --size {config.width}x{config.height}): use a smaller --radius or --fov (2.5 and 40 "
            "frame it well)"
        )


def _warn_of_empty_views(config: RenderConfig, model: Path, tally: _Tally, views: int) -> None:
    """A warning naming the views that show nothing of the asset; InputError when that is every view (a capture of
    empty images is no capture: nothing is written)."""
    advice = f"check --radius {config.radius:g}, --fov {config.fov_deg:g} and --elevation"
    if tally.empty_views == views:
        raise InputError(f"{model} shows in none of the {views} views (every image would be empty): {advice}, and "
                         "that the model has visible surfaces")  # fmt: skip
    if tally.empty_views:
        warn(f"{model.name} shows in {tally.empty_views} of the {views} views (those images are empty): {advice}")


@dataclass
class _Tally:
    """What the views add up to: seconds in the colour and geometry renders, views whose mask is empty."""

    color_s: float = 0.0
    passes_s: float = 0.0
    empty_views: int = 0


@dataclass(frozen=True)
class _Timeline:
    """The time steps to render: Blender frames and seconds, or one step of a static asset."""

    animation: blender.Animation | None
    frames: list[float | None]  # Blender frames; [None] for a static asset
    times: list[float | None]  # seconds since the animation's start; [None] for a static asset
    normalized_at: str


def _timeline(config: RenderConfig, asset: blender.AssetInfo) -> _Timeline:
    animation = blender.use_animation(asset, config.animation)
    if animation is None:
        if config.time_steps > 1:
            warn(f"{asset.path.name} has no animation: rendering one time step, not {config.time_steps}")
        return _Timeline(None, [None], [None], "static")
    frames = animation.frames(config.time_steps)
    times = [animation.seconds(frame) for frame in frames]
    normalized_at = f"frame {frames[0]:g} of animation {animation.name} (the first time step)"
    return _Timeline(animation, frames, times, normalized_at)


def _render_all(
    config: RenderConfig,
    timeline: _Timeline,
    cameras: list[Camera],
    out_dir: Path,
    label: str,
    tally: _Tally,
    stop_point: Callable[[], None],
) -> list[Frame]:
    """Every camera at every time step, and the ground-truth mesh of each step; adds to ``tally``.

    For animated assets every camera gets the step's time and its index as ``camera_id``. ``stop_point`` is called
    before each view (it raises KeyboardInterrupt when asked to stop).
    """
    frames: list[Frame] = []
    with tempfile.TemporaryDirectory(prefix="orbit4d-passes-") as work:
        for t, (frame, time_s) in enumerate(zip(timeline.frames, timeline.times)):
            if frame is not None:
                blender.set_frame(frame)
            _write_mesh(out_dir / "ground_truth" / f"mesh_t{t:03d}.ply", blender.posed_mesh())
            for c, camera in track(list(enumerate(cameras)), f"{label}, time {t + 1}/{len(timeline.frames)}"):
                stop_point()
                if timeline.animation is not None:
                    camera = camera.replace(time=time_s, camera_id=c)
                name = f"t{t:03d}_c{c:03d}"
                frames.append(_render_frame(camera, out_dir, name, config.samples, Path(work), tally))
    return frames


def _render_frame(camera: Camera, out_dir: Path, name: str, samples: int, work: Path, tally: _Tally) -> Frame:
    """One view: colour PNG, then the geometry passes saved beside it; adds its times and emptiness to ``tally``."""
    from PIL import Image

    tic = time.perf_counter()
    image_path = out_dir / "images" / f"{name}.png"
    blender.render_color(camera, image_path, samples, work)
    tally.color_s += time.perf_counter() - tic
    tic = time.perf_counter()
    passes = blender.render_passes(camera, work)
    depth_path, normal_path = out_dir / "depth" / f"{name}.npy", out_dir / "normals" / f"{name}.npy"
    np.save(depth_path, passes.depth)
    np.save(normal_path, passes.normals.astype(np.float16))
    mask_path = out_dir / "masks" / f"{name}.png"
    Image.fromarray(np.where(passes.mask, 255, 0).astype(np.uint8)).save(mask_path)  # mode L
    tally.passes_s += time.perf_counter() - tic
    tally.empty_views += not passes.mask.any()
    return Frame(image_path, camera, mask_path, depth_path, normal_path)


def _write_mesh(path: Path, mesh: blender.PosedMesh) -> None:
    """Binary PLY (float32 vertices, int32 triangles), readable by trimesh, Open3D and Blender."""
    vertices = mesh.vertices.astype("<f4")
    faces = np.empty(len(mesh.faces), dtype=[("count", "u1"), ("index", "<i4", (3,))])
    faces["count"] = 3
    faces["index"] = mesh.faces
    header = (
        "ply\nformat binary_little_endian 1.0\n"
        f"element vertex {len(vertices)}\nproperty float x\nproperty float y\nproperty float z\n"
        f"element face {len(faces)}\nproperty list uchar int vertex_indices\nend_header\n"
    )
    with open(path, "wb") as file:
        file.write(header.encode("ascii"))
        file.write(vertices.tobytes())
        file.write(faces.tobytes())
