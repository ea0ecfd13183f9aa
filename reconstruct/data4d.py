"""A capture with times as training tensors for 4D splats: the views of ``reconstruct.data``, their frame times, and
a split that holds out a whole camera.

A 4D capture is a capture whose every frame carries ``time`` (seconds) in transforms.json, and ``camera_id`` where
several frames share a time (synchronized cameras: the renderer's rig, imported multi-camera sets, a folder of
synchronized videos). Split:

- several cameras: every view of one camera is held out (``test_camera``; by default the highest camera id), so the
  held-out metrics measure new viewpoints at every time;
- one camera (a moving-camera video): every ``test_every``-th time step is held out (from the second: the first and
  last bound the motion), so the metrics measure the motion between training frames; 0 holds out none.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from multiview.capture import Capture, read_capture
from multiview.errors import InputError
from reconstruct.data import View, load_scene

TIME_DECIMALS = 6  # frame times equal to a microsecond are one time step


@dataclass(frozen=True, eq=False)
class SceneData4D:
    """A 4D capture ready to train on."""

    capture: Capture
    train: list[View]
    test: list[View]
    times: np.ndarray  # [T] the distinct frame times, seconds, increasing
    cameras: list[int]  # the capture's camera ids, increasing ([0] for one camera without ids)
    test_camera: int | None  # the held-out camera, or None (held-out time steps, or none)

    def time_index(self, view: View) -> int:
        """Index into ``times`` of the view's time."""
        return int(np.searchsorted(self.times, round(float(view.camera.time), TIME_DECIMALS)))

    def normalized_time(self, view: View) -> float:
        """The view's time mapped to [0, 1] over the frame times (``Splats4D``'s u)."""
        return (round(float(view.camera.time), TIME_DECIMALS) - self.times[0]) / (self.times[-1] - self.times[0])

    def views_at(self, views: list[View], index: int) -> list[View]:
        """The views of ``views`` at time step ``index``."""
        return [view for view in views if self.time_index(view) == index]

    def evaluated_on(self) -> str:
        """metrics.json's "evaluated_on"."""
        if self.test_camera is not None:
            return f"test (camera {self.test_camera}, every time step)"
        return "test (held-out time steps)" if self.test else "train (no views held out)"


def check_times(capture: Capture) -> tuple[np.ndarray, list[int]]:
    """(distinct frame times [T], camera ids) of a 4D capture; InputError naming its transforms.json otherwise."""
    where = capture.root / "transforms.json"
    untimed = [frame for frame in capture.frames if frame.camera.time is None]
    if untimed:
        raise InputError(f"{where}: {len(untimed)} of {len(capture.frames)} frames have no 'time' (e.g. "
                         f"{untimed[0].image_path.name}): a 4D capture needs each frame's time in seconds; for a "
                         "static scene use orbit4d train, for videos give the video(s) themselves")
    times = np.array([round(float(frame.camera.time), TIME_DECIMALS) for frame in capture.frames])
    if not np.all(np.isfinite(times)):
        raise InputError(f"{where}: a frame's 'time' is not a finite number of seconds: fix it")
    distinct = np.unique(times)
    if len(distinct) < 2:
        raise InputError(f"{where}: every frame is at time {distinct[0]:g} s, a single time step: 4D needs at least "
                         "2 (a video, or a rig rendered with --time-steps 2 or more); for one time use orbit4d train")
    ids = {frame.camera.camera_id for frame in capture.frames}
    counts = np.unique(times, return_counts=True)[1]
    if None in ids and (len(ids) > 1 or counts.max() > 1):
        raise InputError(f"{where}: {int(counts.max())} frames share a time but not every frame has a 'camera_id': "
                         "give each frame of a synchronized set its camera's id (0, 1, ...)")
    return distinct, sorted(0 if i is None else int(i) for i in ids)


def load_scene4d(capture_dir: Path, downscale: int = 1, test_camera: int | None = None, test_every: int = 8,
                 allow_outside: bool = False) -> SceneData4D:  # fmt: skip
    """Read a 4D capture, check its times and cameras, load its images (1 / ``downscale``) and split them.
    ``allow_outside``: read files its transforms.json names outside its folder (refused otherwise)."""
    capture = read_capture(Path(capture_dir), allow_outside)
    times, cameras = check_times(capture)
    if test_every < 0:
        raise InputError(f"--test-every {test_every}: use 0 to hold out no time step, or N for every N-th")
    if len(cameras) == 1 and test_camera is not None:
        raise InputError(f"--test-camera {test_camera}: {capture.root} has one camera (id {cameras[0]}), none to hold "
                         "out: drop --test-camera (every 8th time step is held out instead; --test-every sets it)")
    if test_camera is not None and test_camera not in cameras:
        raise InputError(f"--test-camera {test_camera}: {capture.root} has cameras {_id_list(cameras)}: pick one")
    views = load_scene(capture.root, downscale, 0, allow_outside).train  # every view, sorted by name
    if len(cameras) > 1:
        held = cameras[-1] if test_camera is None else test_camera
        test = [view for view in views if (view.camera.camera_id or 0) == held]
        train = [view for view in views if (view.camera.camera_id or 0) != held]
        return SceneData4D(capture, train, test, times, cameras, held)
    held_steps = set(range(1, len(times) - 1, test_every)) if test_every > 0 and len(times) >= 3 else set()
    index = {float(t): i for i, t in enumerate(times)}

    def held_out(view: View) -> bool:
        return index[round(float(view.camera.time), TIME_DECIMALS)] in held_steps

    train = [view for view in views if not held_out(view)]
    test = [view for view in views if held_out(view)]
    return SceneData4D(capture, train, test, times, cameras, None)


def _id_list(ids: list[int]) -> str:
    contiguous = ids == list(range(ids[0], ids[-1] + 1))
    return f"{ids[0]}..{ids[-1]}" if contiguous and len(ids) > 2 else ", ".join(map(str, ids))
