"""A static export of the viewer (``orbit4d view SCENE --export DIR``): a folder any static file server can serve,
that opens the scene in the browser with no Python running and nothing fetched from the network.

The folder holds viser's own client (the one self-contained ``index.html`` its wheel ships, Apache-2.0, licence
beside it) with three lines added at the top that point it at the recording, and the recording itself,
``scene.viser``: the same scene as the live viewer draws (splats, camera frustums with their photos, points, mesh),
serialized by viser. A scene that changes over time is recorded as one splat node per time step, uploaded once, and
a visibility switch per step; the client's playback bar then has play / pause, a time slider and the speed. The
opening view (the first training camera, or a view of the splats' middle) is in the page's address, as viser's
``initialCamera*`` parameters.
"""

from __future__ import annotations

import html
import json
import shutil
from pathlib import Path

import numpy as np

from multiview.errors import OutputExistsError
from multiview.outputs import staged_dir
from viewers.scene import ViewScene
from viewers.viser_scene import draw_scene, home_view, quiet, vertical_fov

RECORDING = "scene.viser"
DEFAULT_FOV = 0.9  # radians of vertical view without a training camera to copy


def run(scene: ViewScene, out_dir: Path, overwrite: bool = False) -> Path:
    """Write the static viewer of ``scene`` into ``out_dir`` (staged, then renamed into place); return ``out_dir``.
    OutputExistsError, naming ``--export``, for a folder that is or holds the scene, a file, or (without
    ``overwrite``) a folder with something in it."""
    _check_export_dir(Path(out_dir), scene.source, overwrite)
    recording = record(scene)
    with staged_dir(out_dir, overwrite, inputs=[scene.source], option="--export") as stage:
        (stage / RECORDING).write_bytes(recording)
        (stage / "index.html").write_text(index_html(scene))
        shutil.copyfile(_viser_licence(), stage / "LICENSE-viser.txt")
    return Path(out_dir)


def _check_export_dir(out_dir: Path, source: Path, overwrite: bool) -> None:
    resolved, source = out_dir.resolve(), source.resolve()
    if resolved == source or resolved in source.parents:
        raise OutputExistsError(f"--export {out_dir} would replace the scene {source}: choose a folder outside it")
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputExistsError(f"--export {out_dir} is a file: give a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise OutputExistsError(f"{out_dir} already exists and is not empty: pass --overwrite or choose another "
                                "--export folder")


def record(scene: ViewScene) -> bytes:
    """``scene`` drawn into a viser server that no browser sees (an ephemeral port on 127.0.0.1), serialized as a
    ``.viser`` recording: the scene, then for a sequence one visibility switch per time step."""
    import viser

    with quiet():
        server = viser.ViserServer(host="127.0.0.1", port=0, verbose=False)
    try:
        frames = scene.frames()
        server.scene.set_up_direction(tuple(float(v) for v in scene.up()))
        nodes = draw_scene(server, frames, scene.cameras, scene.images, scene.points, scene.point_colors, scene.mesh)
        serializer = server.get_scene_serializer()
        times = scene.timeline.times
        if len(times) > 1:
            steps = np.diff(times, append=times[-1] + (times[-1] - times[-2]))
            for index, step in enumerate(steps):
                nodes.show_frame(index)
                serializer.insert_sleep(float(step))
        return serializer.serialize()
    finally:
        with quiet():
            server.stop()


def view_parameters(scene: ViewScene) -> dict[str, str]:
    """viser's URL parameters for the opening view: position, look-at point, up and vertical field of view."""
    up = scene.up()
    position, look_at = home_view(scene.timeline.at(float(scene.timeline.times[0])), scene.cameras, up)
    fov = vertical_fov(scene.cameras[0]) if scene.cameras else DEFAULT_FOV

    def vector(v: np.ndarray) -> str:
        return ",".join(f"{float(x):.6g}" for x in v)

    return {"playbackPath": RECORDING, "initialCameraPosition": vector(position),
            "initialCameraLookAt": vector(look_at), "initialCameraUp": vector(up),
            "initialCameraFov": f"{fov:.6g}"}  # fmt: skip


def index_html(scene: ViewScene) -> str:
    """viser's client page with a first script that, when the address names no recording, adds ``scene.viser`` and
    the opening view to the address's parameters (replaceState: no reload, nothing fetched)."""
    page = (_viser_dir() / "client" / "build" / "index.html").read_text()
    defaults = json.dumps(view_parameters(scene))
    title = html.escape(scene.source.name)
    script = ("<script>(() => { const p = new URLSearchParams(location.search); if (p.has('playbackPath')) return; "
              f"for (const [k, v] of Object.entries({defaults})) if (!p.has(k)) p.set(k, v); "
              "history.replaceState(null, '', location.pathname + '?' + p + location.hash); })();</script>"
              f"<title>{title} (orbit4d)</title>")  # fmt: skip
    head = page.index("<head>") + len("<head>")
    return page[:head] + script + page[head:].replace("<title>Viser</title>", "", 1)


def _viser_dir() -> Path:
    import viser

    return Path(viser.__file__).parent


def _viser_licence() -> Path:
    """The licence file viser's wheel installs (Apache-2.0)."""
    from importlib.metadata import distribution

    dist = distribution("viser")
    licence = next((f for f in dist.files or () if f.name.upper().startswith("LICENSE")), None)
    if licence is None:
        raise FileNotFoundError("viser's LICENSE is not installed with it: reinstall viser")
    return Path(dist.locate_file(licence))
