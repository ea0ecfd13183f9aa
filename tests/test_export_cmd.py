"""``orbit4d export`` as a user meets it: a mesh written into the scene folder (or where asked), a summary; bad
input is one line, a non-zero exit and nothing written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from multiview.layouts import orbit
from orbit4d.cli import EXIT_USER_ERROR, main
from tests.mesh_scenes import cone, raycast_capture, scene_folder, splats_on_mesh
from tests.test_mesh_files import read_glb

REPO = Path(__file__).resolve().parents[1]
QUICK = ("--resolution", "64")


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> Path:
    """A scene of splats on a cone (apex up) trained on a 10-view capture of it at 48 px with masks."""
    root = tmp_path_factory.mktemp("cone")
    vertices, faces = cone()
    cameras = orbit(10, (-25.0, 35.0), radius=2.5, fov_deg=40.0, width=48, height=48)
    capture = raycast_capture(root / "capture", vertices, faces, cameras)
    return scene_folder(root / "scene", splats_on_mesh(vertices, faces, 3000), capture)


def run(capsys, *argv) -> tuple[int, str]:
    code = main(["export", *(str(a) for a in argv)])
    return code, capsys.readouterr().err


def one_error_line(code: int, err: str) -> str:
    lines = [line for line in err.strip().splitlines() if "error" in line]
    assert code == EXIT_USER_ERROR and len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_writes_the_mesh_into_the_scene_and_refuses_to_overwrite_it(scene, capsys):
    code, err = run(capsys, scene, "--mesh", "glb", *QUICK)
    assert code == 0, err
    assert "triangles" in err and "+Y up" in err  # the summary table
    document, arrays = read_glb(scene / "mesh.glb")
    positions = arrays["POSITION"]
    assert positions[:, 1].min() == pytest.approx(0.0, abs=1e-6)  # standing on y = 0
    assert positions[:, 1].max() == pytest.approx(0.8, abs=0.1)  # the cone's height: 48 px views
    assert document["asset"]["extras"]["orbit4d"]["metres_per_unit"] is None  # a capture of unknown scale
    before = (scene / "mesh.glb").read_bytes()
    line = one_error_line(*run(capsys, scene, "--mesh", "glb", *QUICK))
    assert "already exists" in line and "--overwrite" in line and (scene / "mesh.glb").read_bytes() == before
    code, err = run(capsys, scene, "--mesh", "obj", "--out", scene.parent / "out" / "cone.obj", "--faces", "500",
                    *QUICK)  # fmt: skip
    assert code == 0, err
    faces = [line for line in (scene.parent / "out" / "cone.obj").read_text().splitlines() if line.startswith("f ")]
    assert 100 < len(faces) <= 500


@pytest.mark.parametrize(
    "case",
    ["no splats", "faces 0", "out under a file", "out is the splats", "nothing asked", "out for two", "wrong suffix",
     "capture gone", "missing scene"],
)  # fmt: skip
def test_bad_input_is_one_line_and_writes_nothing(case, scene, tmp_path, capsys):
    (tmp_path / "a_file").write_text("")
    empty = tmp_path / "empty_scene"
    empty.mkdir()
    moved = tmp_path / "moved"
    if case == "capture gone":
        import shutil

        shutil.copytree(scene, moved)
        (moved / "metrics.json").write_text('{"capture": "/nowhere/capture", "config": {"downscale": 1}}')
    argv, needle = {
        "no splats": ([empty, "--mesh", "glb"], "no splats.ply"),
        "faces 0": ([scene, "--mesh", "glb", "--faces", "0", "--out", tmp_path / "m.glb"], "--faces 0"),
        "out under a file": ([scene, "--mesh", "glb", "--out", tmp_path / "a_file" / "m.glb"], "is a file"),
        "out is the splats": ([scene, "--mesh", "ply", "--out", scene / "splats.ply", "--overwrite"], "input"),
        "nothing asked": ([scene], "--mesh"),
        "out for two": ([scene, "--mesh", "glb", "--blend", "--out", tmp_path / "m.glb"], "--out names one file"),
        "wrong suffix": ([scene, "--mesh", "glb", "--out", tmp_path / "m.obj"], ".glb"),
        "capture gone": ([moved, "--mesh", "glb", "--out", tmp_path / "m.glb"], "--capture"),
        "missing scene": ([tmp_path / "nope", "--mesh", "glb"], "does not exist"),
    }[case]  # fmt: skip
    before = sorted(p.name for p in tmp_path.iterdir())
    splats = (scene / "splats.ply").read_bytes()
    line = one_error_line(*run(capsys, *argv))
    assert needle in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == before and not list(empty.iterdir())
    assert (scene / "splats.ply").read_bytes() == splats


def test_unwritable_output_folder_is_refused_before_the_work(scene, tmp_path, capsys):
    """A folder nobody may write in (a read-only file system here: root ignores permission bits)."""
    target = Path("/proc/orbit4d-test/mesh.glb")
    line = one_error_line(*run(capsys, scene, "--mesh", "glb", "--out", target))
    assert "cannot write in /proc" in line and not target.exists()


def test_blend_without_the_render_extra_is_one_line(scene, tmp_path):
    """bpy hidden from the process: the install hint, exit 1, no .blend, before any meshing."""
    code = ("import sys; sys.modules['bpy'] = None; from orbit4d.cli import main; "
            f"sys.exit(main(['export', {str(scene)!r}, '--blend', '--out', {str(tmp_path / 'x.blend')!r}]))")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO)
    lines = [line for line in out.stderr.strip().splitlines() if line.strip()]
    assert out.returncode == EXIT_USER_ERROR and len(lines) == 1, out.stderr
    assert "orbit4d[render]" in lines[0] and not (tmp_path / "x.blend").exists()


def test_help_answers():
    out = subprocess.run([sys.executable, "-m", "orbit4d", "export", "--help"], capture_output=True, text=True,
                         timeout=60, cwd=REPO)  # fmt: skip
    assert out.returncode == 0 and "--mesh" in out.stdout and "--blend" in out.stdout


def test_video_to_3d_ends_with_the_mesh(scene, tmp_path, capsys, monkeypatch):
    """OUT/scene/mesh.glb after training, unless --no-mesh. The capture (of the cone) is already in OUT/capture and
    reused; training is stood in for by the cone's splats (the whole chain runs in the slow test of video-to-3d)."""
    import json
    import shutil

    from reconstruct import train

    photos = tmp_path / "photos"
    shutil.copytree(scene.parent / "capture", photos)

    def trained(config, capture_dir, scene_dir, **options):
        shutil.copytree(scene, scene_dir, ignore=shutil.ignore_patterns("mesh.*", "*.blend", "splats.s*"))
        (scene_dir / "metrics.json").write_text(json.dumps({"capture": str(capture_dir), "config": {"downscale": 1}}))
        return scene_dir

    monkeypatch.setattr(train, "run", trained)
    for out, extra in ((tmp_path / "run", []), (tmp_path / "run_no_mesh", ["--no-mesh"])):
        shutil.copytree(photos, out / "capture")
        (out / "capture" / "report.json").write_text(json.dumps({"input": str(photos)}))
        code = main(["video-to-3d", str(photos), "--out", str(out), *extra])
        err = capsys.readouterr().err
        assert code == 0, err
        assert (out / "scene" / "mesh.glb").is_file() == (not extra) and ("mesh in" in err) == (not extra), err
    _, arrays = read_glb(tmp_path / "run" / "scene" / "mesh.glb")
    assert len(arrays["indices"]) > 300 and np.ptp(arrays["POSITION"][:, 1]) == pytest.approx(0.8, abs=0.1)


def test_format_writes_the_splats_for_web_viewers_beside_a_mesh(scene, tmp_path, capsys):
    """``--format spz`` with ``--mesh obj`` in one command: both files, the splats read back as the same Gaussians
    (positions to SPZ's fixed point); a splat file exports beside itself; a second run refuses to overwrite."""
    import shutil

    import numpy as np

    from reconstruct import read_ply
    from viewers.formats import read_splats

    copy = tmp_path / "scene"
    shutil.copytree(scene, copy, ignore=shutil.ignore_patterns("mesh.*", "*.blend", "splats.s*"))
    code, err = run(capsys, copy, "--format", "spz", "--mesh", "obj", *QUICK)
    assert code == 0, err
    original, spz = read_ply(copy / "splats.ply"), read_splats(copy / "splats.spz")
    assert len(spz) == len(original) and (copy / "mesh.obj").is_file()
    np.testing.assert_allclose(spz.means.numpy(), original.means.numpy(), atol=2e-3)
    code, err = run(capsys, copy / "splats.ply", "--format", "splat")
    assert code == 0 and len(read_splats(copy / "splats.splat")) == len(original), err
    assert "--overwrite" in one_error_line(*run(capsys, copy, "--format", "spz"))
    assert not list(copy.glob(".*")), "a lock or temporary file was left behind"
