"""The viewer without a browser: what it reads (and refuses), its cameras, its port, its videos, the static export's
files, and the commands' one-line errors."""

from __future__ import annotations

import socket

import numpy as np
import pytest
import torch

from multiview.errors import InputError
from orbit4d.cli import main
from reconstruct.ply import write_ply
from viewer_scenes import ball_splats, write_scene, write_sequence
from viewers.render import RenderConfig, path_cameras, render_video
from viewers.scene import FrameSequence, load_view_scene
from viewers.server import check_port, training_status
from viewers.viser_scene import camera_from_viser, splat_arrays, vertical_fov, viser_pose

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def scene_dir(tmp_path_factory):
    return write_scene(tmp_path_factory.mktemp("viewer"), ball_splats(800))


def test_scene_folder_brings_its_cameras_photos_and_points(scene_dir):
    scene = load_view_scene(scene_dir)
    assert scene.num_frames == 1 and len(scene.timeline.at(0.0)) == 800
    assert len(scene.cameras) == 6 and all(path.is_file() for path in scene.images)
    assert scene.points is not None and len(scene.points) == 80
    assert np.allclose(scene.up(), [0.0, 0.0, 1.0], atol=1e-6)  # the ring's cameras stand on Z up


def test_per_frame_folder_plays_in_name_order(tmp_path):
    folder = write_sequence(tmp_path / "seq", frames=3, n=200)
    (folder / "frame_0001.ply").rename(folder / "b.ply")  # names decide the order, not numbers
    scene = load_view_scene(folder, fps=4.0)
    assert isinstance(scene.timeline, FrameSequence)
    assert [p.name for p in scene.timeline.paths] == ["b.ply", "frame_0000.ply", "frame_0002.ply"]
    assert np.allclose(scene.timeline.times, [0.0, 0.25, 0.5])
    assert scene.timeline.at(0.3) is scene.timeline.at(0.25)  # read once
    assert float(scene.timeline.at(0.0).means[:, 0].mean()) == pytest.approx(0.0, abs=0.05)  # the middle frame


def test_a_4d_scene_folder_plays_its_sequence(tmp_path):
    write_sequence(tmp_path / "scene4d" / "sequence", frames=2, n=100)
    assert load_view_scene(tmp_path / "scene4d").num_frames == 2


def _not_a_scene(kind: str, root):
    """A path of the given kind under ``root``: missing, an empty folder, a capture, a damaged .ply, a text file."""
    if kind == "capture":
        (root / "cap").mkdir()
        (root / "cap" / "transforms.json").write_text("{}")
        return root / "cap"
    if kind == "empty":
        (root / "empty").mkdir()
        return root / "empty"
    if kind == "damaged":
        (root / "bad.ply").write_bytes(b"ply\nformat ascii 1.0\nend_header\n")
        return root / "bad.ply"
    if kind == "text":
        (root / "notes.txt").write_text("hi")
        return root / "notes.txt"
    return root / "missing"


@pytest.mark.parametrize("kind, message", [
    ("missing", "does not exist"),
    ("empty", "is not a scene"),
    ("capture", "is a capture, not a scene: train it first"),
    ("damaged", "bad.ply"),
    ("text", "is not a splat file"),
])  # fmt: skip
def test_what_is_not_a_scene_is_one_clear_error(tmp_path, kind, message):
    with pytest.raises(InputError, match=message):
        load_view_scene(_not_a_scene(kind, tmp_path))


def test_viser_camera_round_trip(scene_dir):
    camera = load_view_scene(scene_dir).cameras[2]
    wxyz, position = viser_pose(camera)
    back = camera_from_viser(wxyz, position, vertical_fov(camera), camera.width, camera.height)
    assert np.allclose(back.cam_from_world, camera.cam_from_world, atol=1e-9)
    assert np.allclose(back.K, camera.K, atol=1e-6)  # the ring's cameras: square pixels, centred


def test_splat_arrays_are_the_covariances_the_rasterizer_uses():
    splats = ball_splats(50)
    arrays = splat_arrays(splats)
    R = torch.as_tensor(np.stack([_rotation(q) for q in splats.quats.double().numpy()]))
    expected = R @ torch.diag_embed(torch.exp(2 * splats.scales.double())) @ R.transpose(1, 2)
    assert np.allclose(arrays["covariances"], expected.numpy(), rtol=1e-4, atol=1e-9)
    assert np.allclose(arrays["rgbs"], splats.rgb().numpy(), atol=1e-6)
    assert arrays["opacities"].shape == (50, 1) and np.allclose(arrays["opacities"], 0.9, atol=1e-6)


def _rotation(q: np.ndarray) -> np.ndarray:
    w, x, y, z = q / np.linalg.norm(q)
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                     [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                     [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]])  # fmt: skip


def test_port_in_use_names_it_and_suggests_another():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(InputError, match=f"port {port} on 127.0.0.1 is in use .*--port"):
            check_port("127.0.0.1", port)
    with pytest.raises(InputError, match="--host nowhere.invalid"):
        check_port("nowhere.invalid", 8080)


def test_render_paths_and_video(scene_dir, tmp_path):
    import av

    scene = load_view_scene(scene_dir)
    through = path_cameras(scene, RenderConfig(path="cameras", frames=11))
    assert np.allclose(through[0].cam_from_world, scene.cameras[0].cam_from_world)  # starts and ends on cameras
    assert np.allclose(through[-1].cam_from_world, scene.cameras[-1].cam_from_world)
    orbit = path_cameras(load_view_scene(scene_dir / "splats.ply"), RenderConfig(frames=8))  # no cameras known
    distances = [np.linalg.norm(c.center - np.median(scene.timeline.at(0).means.numpy(), 0)) for c in orbit]
    assert np.ptp(distances) < 1e-6 and len(orbit) == 8
    out = render_video(scene, RenderConfig(path="cameras", frames=6, max_size=64), tmp_path / "v.mp4")
    with av.open(str(out)) as container:
        images = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    assert len(images) == 6 and images[0].shape == (64, 64, 3)
    assert images[0].std() > 10  # the ball, not a blank frame
    with pytest.raises(InputError, match="use --path orbit"):
        path_cameras(load_view_scene(scene_dir / "splats.ply"), RenderConfig(path="cameras"))


def test_render_command_and_its_refusals(scene_dir, tmp_path, capsys):
    out = tmp_path / "orbit.mp4"
    assert main(["render", str(scene_dir), "--out", str(out), "--frames", "4", "--max-size", "48"]) == 0
    assert out.stat().st_size > 0
    assert main(["render", str(scene_dir), "--out", str(out), "--frames", "4"]) == 1
    assert "already exists: pass --overwrite" in capsys.readouterr().err
    assert main(["render", str(scene_dir), "--out", str(tmp_path / "v.mp4"), "--frames", "1"]) == 1
    assert "--frames 1" in capsys.readouterr().err


def test_view_command_bad_input_is_one_line(tmp_path, capsys):
    write_ply(tmp_path / "ok.ply", ball_splats(10))
    (tmp_path / "corrupt.spz").write_bytes(b"\x1f\x8b garbage")
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "notes.txt").write_text("not splats")
    for argv, message in [
        (["view", str(tmp_path / "nothing")], "does not exist"),
        (["view", str(tmp_path / "corrupt.spz"), "--port", "0"], "corrupt.spz is not gzip-compressed"),
        (["view", str(tmp_path / "folder")], "is not a scene"),
        (["view", str(tmp_path / "ok.ply"), "--port", "70000"], "--port 70000"),
    ]:
        assert main(argv) == 1, argv
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, err
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["view", str(tmp_path / "ok.ply"), "--port", str(port)]) == 1
        err = capsys.readouterr().err
        assert f"port {port}" in err and "--port" in err and len(err.strip().splitlines()) == 1


def test_static_export_writes_a_self_contained_folder(scene_dir, tmp_path, capsys):
    out = tmp_path / "site"
    assert main(["view", str(scene_dir), "--export", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["LICENSE-viser.txt", "index.html", "scene.viser"]
    page = (out / "index.html").read_text()
    assert '"playbackPath": "scene.viser"' in page and "initialCameraPosition" in page
    assert (out / "scene.viser").stat().st_size > 800 * 30  # the splats are in the recording
    assert main(["view", str(scene_dir), "--export", str(out)]) == 1  # an existing export is kept
    assert "pass --overwrite or choose another --export folder" in capsys.readouterr().err
    assert main(["view", str(scene_dir), "--export", str(scene_dir.parent), "--overwrite"]) == 1  # holds the scene
    assert "would replace the scene" in capsys.readouterr().err


def test_training_status_line():
    curve = [{"loss": 0.05, "psnr": 21.5}]
    history = [{"step": 0, "psnr": 10.0}, {"step": 100, "psnr": 24.25}]
    text = training_status(120, 3000, 12345, curve, history)
    assert "step 120 / 3,000" in text and "12,345 Gaussians" in text
    assert "loss 0.0500, PSNR 21.50 dB" in text and "held-out PSNR 24.25 dB at step 100" in text


def test_viewer_serves_only_its_client(scene_dir):
    """The live server answers with viser's page and nothing else: no scene file, no path outside its client, however
    the path is spelled; and it listens on 127.0.0.1 only."""
    import http.client

    from viewers.server import Viewer, ViewerConfig

    viewer = Viewer(load_view_scene(scene_dir), ViewerConfig(port=0))
    try:
        port = viewer.server.get_port()

        def get(path: str) -> tuple[int, bytes]:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            connection.putrequest("GET", path, skip_host=True)  # sent exactly as written, no normalisation
            connection.putheader("Host", f"127.0.0.1:{port}")
            connection.endheaders()
            response = connection.getresponse()
            return response.status, response.read()

        status, page = get("/")
        assert status == 200 and b"<html" in page.lower()
        for path in ["/../../../../etc/passwd", "/%2e%2e/%2e%2e/%2e%2e/etc/passwd", "/..%2f..%2f..%2fetc/passwd",
                     "/splats.ply", f"/{scene_dir.name}/splats.ply", f"/{scene_dir}/metrics.json",
                     "/..\\..\\etc\\passwd", "//etc/passwd"]:
            status, body = get(path)
            assert status == 404 and b"root:" not in body, path
        with socket.socket() as probe:  # nothing answers on the machine's other addresses
            outside = socket.gethostbyname(socket.gethostname())
            if not outside.startswith("127."):
                assert probe.connect_ex((outside, port)) != 0
    finally:
        viewer.stop()


def test_a_4d_scene_plays_through_reconstruct_splats4d(tmp_path, monkeypatch):
    """The 4D scene format (splats4d.ply) is read by reconstruct.splats4d's read_splats4d (the 4D stage's); the viewer
    samples its timeline at its own times. A fake stands in for it here, with the agreed shape."""
    import sys
    import types

    class Moving:
        times = np.array([0.0, 0.5, 1.0])

        def at(self, t: float):
            splats = ball_splats(100)
            return type(splats)(**{**splats.tensors(), "means": splats.means + torch.tensor([t, 0.0, 0.0])})

    read = []
    fake = types.ModuleType("reconstruct.splats4d")
    fake.read_splats4d = lambda path: read.append(path) or Moving()
    monkeypatch.setitem(sys.modules, "reconstruct.splats4d", fake)
    (tmp_path / "splats4d.ply").write_bytes(b"")
    write_sequence(tmp_path / "sequence", frames=2, n=50)  # the per-frame export beside it is not what plays
    scene = load_view_scene(tmp_path)
    assert read == [tmp_path / "splats4d.ply"] and scene.num_frames == 3
    shifts = [float(frame.means[:, 0].mean()) for frame in scene.frames()]
    assert np.allclose(np.diff(shifts), 0.5, atol=1e-5)


def test_mesh_glb_is_put_back_in_the_scene_frame():
    """orbit4d's mesh.glb is +Y up (a similarity of the scene recorded in asset.extras.orbit4d): the viewer undoes it,
    so that the mesh lies on the splats."""
    import json
    import struct

    from multiview.conventions import rotmat_from_qvec
    from viewers.viser_scene import mesh_placement

    R = rotmat_from_qvec(np.array([0.3, -0.5, 0.2, 0.7]))
    file_from_scene = np.eye(4)
    file_from_scene[:3, :3], file_from_scene[:3, 3] = 2.5 * R, [0.4, -1.0, 3.0]
    document = json.dumps({"asset": {"version": "2.0", "extras": {"orbit4d": {
        "file_from_scene": file_from_scene.tolist()}}}}).encode()
    document += b" " * (-len(document) % 4)
    glb = struct.pack("<4sII", b"glTF", 2, 20 + len(document)) + struct.pack("<II", len(document), 0x4E4F534A) + document
    wxyz, position, scale = mesh_placement(glb)
    scene_point = np.array([0.3, 0.1, -0.7])
    file_point = file_from_scene[:3, :3] @ scene_point + file_from_scene[:3, 3]
    assert np.allclose(position + rotmat_from_qvec(wxyz) @ (scale * file_point), scene_point)
    assert mesh_placement(b"glTF" + bytes(30))[2] == 1.0  # a .glb from elsewhere stands as it is
