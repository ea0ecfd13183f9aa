"""A 4D scene's meshes (``viewers.meshes4d``, ``orbit4d video-to-4d --mesh``) on a scene with a known answer: a cone
sliding past a box that stands still, filmed by a rig. One .glb per time step, in one file frame, the cone moved by
its slide and the box where it was; the .blend plays them (one object visible per frame, the rig's cameras, a
moving camera following its path); without Blender's module a warning, the .glb files and exit 0."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from multiview.errors import OutputExistsError
from multiview.layouts import orbit
from reconstruct.mesh import MeshConfig
from tests.mesh_scenes import moving_scene4d
from tests.test_mesh_files import read_glb
from viewers.meshes4d import export_scene_meshes4d

REPO = Path(__file__).resolve().parents[1]
TIMES = np.array([0.0, 0.5, 1.0])
SLIDE = np.array([0.3, 0.0, 0.0])  # the cone goes from -SLIDE to +SLIDE
QUICK = MeshConfig(resolution=64, extra_views=12)
NO_BPY = "bpy (Blender as a Python module) is not installed: pip install 'orbit4d[render]'"

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def moving(tmp_path_factory) -> tuple[Path, Path]:
    """(capture, scene) of the sliding cone and the box, 6 cameras at 48 px, 3 time steps."""
    cameras = orbit(6, (-20.0, 35.0), radius=3.0, fov_deg=45.0, width=48, height=48)
    return moving_scene4d(tmp_path_factory.mktemp("moving"), TIMES, SLIDE, cameras)


def scene_vertices(path: Path) -> np.ndarray:
    """[V, 3] a .glb's vertices in the scene's frame (its recorded file frame undone)."""
    document, arrays = read_glb(path)
    file_from_scene = np.array(document["asset"]["extras"]["orbit4d"]["file_from_scene"])
    scene_from_file = np.linalg.inv(file_from_scene)
    return arrays["POSITION"].astype(np.float64) @ scene_from_file[:3, :3].T + scene_from_file[:3, 3]


def test_one_mesh_per_time_step_moves_with_the_scene(moving, tmp_path):
    _, scene = moving
    copy = tmp_path / "scene"
    shutil.copytree(scene, copy)
    written = export_scene_meshes4d(copy, config=QUICK, blend=False)
    assert [path.name for path in written] == [f"mesh_{k:04d}.glb" for k in range(3)]
    assert sorted(p.name for p in (copy / "meshes").iterdir()) == [path.name for path in written]
    frames = [read_glb(path)[0]["asset"]["extras"]["orbit4d"]["file_from_scene"] for path in written]
    assert frames[0] == frames[1] == frames[2]  # one frame for the sequence: what moves moves in the files
    cone_centres, box_centres = [], []
    for path in written:
        vertices = scene_vertices(path)
        assert len(vertices) > 100 and path.stat().st_size > 5_000
        box = vertices[:, 1] < -0.5
        assert 0.1 < box.mean() < 0.6, box.mean()  # both objects were meshed
        cone_centres.append(vertices[~box].mean(0))
        box_centres.append(vertices[box].mean(0))
    voxel = 1.9 / 64  # the region's longest side over the resolution
    for k, u in enumerate((TIMES - TIMES[0]) / (TIMES[-1] - TIMES[0])):
        assert np.allclose(cone_centres[k] - cone_centres[0], 2 * u * SLIDE, atol=voxel), (k, cone_centres)
        assert np.allclose(box_centres[k], box_centres[0], atol=voxel / 2), (k, box_centres)
    with pytest.raises(OutputExistsError, match="--overwrite"):
        export_scene_meshes4d(copy, config=QUICK, blend=False)
    from orbit4d.cli import main

    assert main(["export", str(copy), "--mesh", "glb"]) != 0  # the same through orbit4d export, before any work
    assert not list(copy.glob(".*")), "a lock or temporary folder was left behind"


def fake_training(scene: Path):
    """A stand-in for ``train4d.run`` that leaves the prepared 4D scene (the meshing runs on it)."""

    def trained(config, capture_dir, scene_dir, **options):
        shutil.copytree(scene, scene_dir)
        return scene_dir

    return trained


def test_video_to_4d_mesh_writes_a_blend_that_plays_the_sequence(moving, tmp_path, capsys, monkeypatch):
    """``video-to-4d CAPTURE --mesh`` (training stood in for): frame k of meshes.blend shows mesh k only; the rig's
    six cameras stand still; the frame range and rate are the time steps'."""
    pytest.importorskip("bpy", reason=NO_BPY)
    import bpy

    from multiview.blender import quiet_blender
    from orbit4d.cli import main
    from reconstruct import train4d
    from viewers.blend import MATERIAL_NAME

    capture, scene = moving
    monkeypatch.setattr(train4d, "run", fake_training(scene))
    out = tmp_path / "out"
    code = main(["video-to-4d", str(capture), "--out", str(out), "--mesh"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "3 meshes in" in err and "meshes.blend" in err
    with quiet_blender():
        bpy.ops.wm.open_mainfile(filepath=str(out / "scene" / "meshes.blend"))
    blender_scene = bpy.context.scene
    meshes = sorted((obj for obj in blender_scene.objects if obj.type == "MESH"), key=lambda obj: obj.name)
    assert [obj.name for obj in meshes] == [f"orbit4d_mesh_{k:04d}" for k in range(3)]
    assert all(obj.data.materials[0].name == MATERIAL_NAME and len(obj.data.polygons) > 100 for obj in meshes)
    assert (blender_scene.frame_start, blender_scene.frame_end) == (0, 2)
    assert blender_scene.render.fps / blender_scene.render.fps_base == pytest.approx(2.0)
    cameras = {obj.name: obj for obj in blender_scene.objects if obj.type == "CAMERA"}
    assert sorted(cameras) == [f"camera_{k}" for k in range(6)] and blender_scene.camera is not None
    positions = []
    for frame in range(3):
        blender_scene.frame_set(frame)
        shown = [obj.name for obj in meshes if not obj.hide_render and obj.visible_get()]
        hidden = [obj.name for obj in meshes if obj.hide_render and obj.hide_viewport and not obj.visible_get()]
        assert shown == [f"orbit4d_mesh_{frame:04d}"] and len(hidden) == 2, (frame, shown, hidden)
        positions.append(np.array(cameras["camera_2"].matrix_world.translation))
    assert np.allclose(positions[0], positions[2])  # a rig's camera stands still


def test_a_moving_camera_follows_its_path_in_the_blend(tmp_path):
    """One camera (a video): one Blender camera keyframed at each time step with that step's pose."""
    pytest.importorskip("bpy", reason=NO_BPY)
    import bpy

    from multiview.blender import quiet_blender
    from reconstruct.mesh import Mesh
    from tests.mesh_scenes import cone, octant_colors
    from viewers.blend import _camera_matrix, write_blend_sequence
    from viewers.meshes import export_frame
    from viewers.meshes4d import SceneMeshes4D

    vertices, faces = cone(segments=8)
    meshes = [Mesh(vertices + [0.1 * k, 0, 0], faces, octant_colors(vertices)) for k in range(4)]
    path = orbit(4, (15.0,), radius=2.5, fov_deg=40.0, width=32, height=24)  # a quarter turn a step
    frame = export_frame(meshes[0], path)
    times = np.array([0.0, 0.04, 0.08, 0.12])
    sequence = SceneMeshes4D(meshes, [], times, frame, {0: list(zip(times.tolist(), path))}, tmp_path)
    write_blend_sequence(tmp_path / "meshes.blend", sequence)
    with quiet_blender():
        bpy.ops.wm.open_mainfile(filepath=str(tmp_path / "meshes.blend"))
    blender_scene = bpy.context.scene
    assert blender_scene.render.fps / blender_scene.render.fps_base == pytest.approx(25.0)
    (camera,) = [obj for obj in blender_scene.objects if obj.type == "CAMERA"]
    from multiview.conventions import ZUP_FROM_YUP

    to_blender = ZUP_FROM_YUP @ frame.file_from_scene
    for k in range(4):
        blender_scene.frame_set(k)
        assert np.allclose(np.array(camera.matrix_world), _camera_matrix(path[k], to_blender), atol=1e-4), k


def test_without_blender_the_glb_files_and_a_warning(moving, tmp_path):
    """bpy hidden from the process: ``video-to-4d --mesh`` warns that the .blend needs the render extra, writes the
    .glb files and exits 0."""
    capture, scene = moving
    out = tmp_path / "out"
    code = (
        "import shutil, sys; sys.modules['bpy'] = None\n"
        "from reconstruct import train4d\n"
        f"train4d.run = lambda config, capture_dir, scene_dir, **o: shutil.copytree({str(scene)!r}, scene_dir)\n"
        "from orbit4d.cli import main\n"
        f"sys.exit(main(['video-to-4d', {str(capture)!r}, '--out', {str(out)!r}, '--mesh']))"
    )  # fmt: skip
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, cwd=REPO,
                            check=False)
    assert result.returncode == 0, result.stderr
    said = " ".join(result.stderr.split())  # as one line, however the console wrapped it
    assert said.count("warning:") == 1 and "warning: meshes.blend not written" in said, result.stderr
    assert "pip install 'orbit4d[render]'" in said, result.stderr
    assert sorted(p.name for p in (out / "scene" / "meshes").iterdir()) == [f"mesh_{k:04d}.glb" for k in range(3)]
    assert not (out / "scene" / "meshes.blend").exists()


@pytest.mark.parametrize("options", [["--mesh", "obj"], ["--mesh", "glb", "--out", "x.glb"], ["--format", "spz"]])
def test_export_of_a_4d_scene_refuses_what_only_3d_scenes_have_in_one_line(options, moving, capsys):
    from orbit4d.cli import EXIT_USER_ERROR, main

    _, scene = moving
    code = main(["export", str(scene), *options])
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if "error" in line]
    assert code == EXIT_USER_ERROR and len(lines) == 1 and "is a 4D scene" in lines[0], err
    assert not (scene / "meshes").exists()


def test_a_video_time_step_is_meshed_from_its_view_and_the_path_a_rig_from_its_cameras():
    """A rig's time step: its cameras at that time, with masks. One moving camera: its view at that time with its
    mask, and its other poses without (another time's mask is of another time), the same pose once."""
    from reconstruct.mesh import MeshView
    from viewers.meshes4d import mesh_views_at

    cameras = orbit(4, (20.0,), radius=3.0, fov_deg=45.0, width=8, height=8)
    mask = np.ones((8, 8), bool)
    rig = [MeshView(camera, mask) for _ in TIMES for camera in cameras]
    rig_times = np.repeat(TIMES, len(cameras))
    chosen = mesh_views_at(rig, rig_times, 1, TIMES, moving_camera=False)
    assert [view.camera for view in chosen] == cameras and all(view.mask is mask for view in chosen)
    path = [MeshView(camera, mask) for camera in cameras[:3]] + [MeshView(cameras[2], mask)]  # it stops at the end
    path_times = np.array([0.0, 0.5, 1.0, 1.5])
    chosen = mesh_views_at(path, path_times, 1, path_times, moving_camera=True)
    assert [view.camera for view in chosen] == [cameras[1], cameras[0], cameras[2], cameras[2]]
    assert chosen[0].mask is mask and all(view.mask is None for view in chosen[1:])
    chosen = mesh_views_at(path, path_times, 3, path_times, moving_camera=True)
    assert [view.camera for view in chosen] == [cameras[2], cameras[0], cameras[1]]  # not its own pose again
