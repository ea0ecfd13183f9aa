"""Inputs stay inside their folders: files named outside a capture's or an asset's folder are refused unless the user
passes --allow-outside-paths (``tests/test_hostile_inputs.py`` checks every refusal); with it they are read where
they are and copied under their own names, nothing unlisted is copied. And header counts are checked against file
sizes before anything is allocated (the memory bomb)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hostile_corpus import build_corpus
from multiview.asset_files import check_asset_references
from multiview.errors import InputError
from orbit4d.cli import EXIT_USER_ERROR, main

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, Path]:
    return build_corpus(tmp_path_factory.mktemp("containment") / "inputs")


def run(capsys, *argv) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    return code, " ".join(capsys.readouterr().err.split())


def test_import_with_the_option_copies_outside_images_under_their_own_names(corpus, tmp_path, capsys):
    """The listed images inside keep their names (not nested under a common ancestor of both folders); the outside one
    lands beside them, renamed when its name is taken; nothing that is not listed is copied."""
    source = tmp_path / "ns"
    shutil.copytree(corpus["ns_parent"].parent, source)
    (source / "images" / "unlisted.png").write_bytes(b"not listed")
    clash = tmp_path / "elsewhere" / "a.png"
    clash.parent.mkdir()
    shutil.copy(corpus["stray"], clash)
    meta = json.loads((source / "transforms.json").read_text())
    meta["frames"][2]["file_path"] = str(corpus["stray"])
    meta["frames"].append({**meta["frames"][0], "file_path": str(clash)})
    (source / "transforms.json").write_text(json.dumps(meta))
    code, err = run(capsys, "import", source, "--out", tmp_path / "out")
    assert code == EXIT_USER_ERROR and "leads outside" in err
    code, err = run(capsys, "import", source, "--out", tmp_path / "out", "--allow-outside-paths")
    assert code == 0, err
    written = json.loads((tmp_path / "out" / "transforms.json").read_text())
    assert [f["file_path"] for f in written["frames"]] == ["images/a.png", "images/b.png", "images/stray.png",
                                                           "images/a_1.png"]  # fmt: skip
    assert sorted(p.name for p in (tmp_path / "out" / "images").iterdir()) == ["a.png", "a_1.png", "b.png", "stray.png"]
    assert (tmp_path / "out" / "images" / "stray.png").read_bytes() == corpus["stray"].read_bytes()


def test_import_of_a_colmap_model_naming_an_image_outside(corpus, tmp_path, capsys):
    project = corpus["colmap_escaping_name"]
    code, err = run(capsys, "import", project, "--out", tmp_path / "refused")
    assert code == EXIT_USER_ERROR and "image name '../../../outside/stray.png' leads outside" in err
    assert os.path.normpath(project / "images" / "../../../outside/stray.png") == str(corpus["stray"])
    code, err = run(capsys, "import", project, "--out", tmp_path / "out", "--allow-outside-paths")
    assert code == 0, err
    names = [f["file_path"] for f in json.loads((tmp_path / "out" / "transforms.json").read_text())["frames"]]
    assert "images/stray.png" in names and len(names) == 3
    assert all((tmp_path / "out" / name).is_file() and not (tmp_path / "out" / name).is_symlink() for name in names)
    assert not list((tmp_path / "out").glob(".*"))  # no linked folder or model left behind


@pytest.mark.usefixtures("one_thread")
def test_train_and_eval_read_outside_files_only_when_allowed(corpus, tmp_path, capsys):
    capture = corpus["ns_link"].parent  # images/c.png is a link to a file outside the capture
    options = ["--device", "cpu", "--steps", "3", "--init-points", "100", "--preset", "preview"]
    code, err = run(capsys, "train", capture, "--out", tmp_path / "scene", *options)
    assert code == EXIT_USER_ERROR and "images/c.png' is a link to" in err and "--allow-outside-paths" in err
    code, err = run(capsys, "train", capture, "--out", tmp_path / "scene", *options, "--allow-outside-paths")
    assert code == 0, err
    assert json.loads((tmp_path / "scene" / "metrics.json").read_text())["config"]["allow_outside_paths"] is True
    code, err = run(capsys, "eval", tmp_path / "scene" / "splats.ply", "--out", tmp_path / "eval")
    assert code == EXIT_USER_ERROR and "is a link to" in err  # the scene's metrics.json was found beside it
    code, err = run(capsys, "eval", tmp_path / "scene" / "splats.ply", "--out", tmp_path / "eval",
                    "--allow-outside-paths")  # fmt: skip
    assert code == 0, err
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["test_views"]


def test_asset_references(corpus, tmp_path):
    """glTF buffers and images, OBJ material libraries and texture maps (after their options): inside is fine,
    outside is refused unless allowed, data URIs name nothing."""
    for name in ("asset_buffer_escape", "asset_image_escape", "asset_obj_mtllib", "asset_obj_map"):
        with pytest.raises(InputError, match="leads outside"):
            check_asset_references(corpus[name])
        check_asset_references(corpus[name], allow_outside=True)
    check_asset_references(corpus["asset"])
    folder = tmp_path / "obj"
    folder.mkdir()
    (folder / "m.obj").write_text("mtllib sub/m.mtl\nv 0 0 0\n")
    (folder / "sub").mkdir()
    (folder / "sub" / "m.mtl").write_text("newmtl a\nmap_Kd -bm 0.5 -o 0 0 tex/skin.png\nbump -clamp on ../bump.png\n")
    check_asset_references(folder / "m.obj")  # ../bump.png is the obj's folder: inside
    (folder / "sub" / "m.mtl").write_text("newmtl a\nmap_Kd -s 1 1 1 ../../secret.png\n")
    with pytest.raises(InputError, match=r"m.mtl: map_Kd '../../secret.png' leads outside"):
        check_asset_references(folder / "m.obj")


def test_render_asset_reads_an_outside_texture_when_allowed(corpus, tmp_path, capsys):
    pytest.importorskip("bpy", reason="the render extra (bpy, Python 3.11) is not installed")
    options = ["--views", "4", "--size", "16", "--samples", "1"]  # a flat triangle: two views see it edge-on
    code, err = run(capsys, "render-asset", corpus["asset_obj_map"], "--out", tmp_path / "refused", *options)
    assert code == EXIT_USER_ERROR and "map_Kd" in err and not (tmp_path / "refused").exists()
    code, err = run(capsys, "render-asset", corpus["asset_obj_map"], "--out", tmp_path / "out", *options,
                    "--allow-outside-paths")  # fmt: skip
    assert code == 0, err
    assert len(list((tmp_path / "out" / "images").glob("*.png"))) == 4


def test_a_truncated_colmap_model_is_refused_in_bounded_time_and_memory(corpus, tmp_path):
    """The survey's memory bomb: a 2.3 KB points3D.bin that promises a billion points (pycolmap allocated over 4 GB
    and failed after 100 s). Under a 1 GB address-space limit, it is one line naming the file, in seconds."""
    import resource

    def limit_memory():
        resource.setrlimit(resource.RLIMIT_AS, (2**30, 2**30))

    command = [sys.executable, "-m", "orbit4d", "import", str(corpus["colmap_lying_points"]), "--out",
               str(tmp_path / "out")]  # fmt: skip
    with open(tmp_path / "stderr.txt", "w") as err_file:
        tic = time.monotonic()
        process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=err_file,
                                   preexec_fn=limit_memory)  # fmt: skip
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.monotonic() - tic
    process.returncode = os.waitstatus_to_exitcode(status)
    err = (tmp_path / "stderr.txt").read_text()
    assert process.returncode == EXIT_USER_ERROR, err
    assert "points3D.bin promises 1,000,000,000 3D points" in err and "Traceback" not in err
    assert usage.ru_maxrss < 600 * 1024, f"{usage.ru_maxrss / 1024:.0f} MB"  # ru_maxrss is in KB on Linux
    assert seconds < 60 and not (tmp_path / "out").exists()
