"""The command line as a user meets it: instant help, one clear line on bad input, outputs never half written."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from orbit4d.cli import EXIT_USER_ERROR, main

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "sacre_coeur"
COMMANDS = ["capture", "import", "render-asset", "train", "video-to-3d"]


def run_cli(capsys, *argv: str) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == EXIT_USER_ERROR
    lines = [line for line in err.strip().splitlines() if "error" in line]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def test_help_imports_nothing_heavy():
    """`orbit4d --help` must answer at once: building the parser may not import numpy, torch or pycolmap."""
    code = (
        "import sys; from orbit4d.cli import build_parser; build_parser();"
        "heavy = [m for m in ('numpy', 'torch', 'pycolmap', 'av', 'open3d', 'rich', 'bpy') if m in sys.modules];"
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help_answers(command):
    argv = [sys.executable, "-m", "orbit4d", *([command] if command else []), "--help"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0
    assert "usage: orbit4d" in out.stdout


def test_missing_input(tmp_path, capsys):
    code, err = run_cli(capsys, "capture", tmp_path / "nope.mp4", "--out", tmp_path / "out")
    assert_one_line_error(code, err, "nope.mp4", "does not exist")
    assert not (tmp_path / "out").exists()


def test_not_a_video_exits_cleanly_in_a_subprocess(tmp_path):
    fake = tmp_path / "notes.mp4"
    fake.write_text("this is not a video\n")
    argv = [sys.executable, "-m", "orbit4d", "capture", str(fake), "--out", str(tmp_path / "out")]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert out.returncode == EXIT_USER_ERROR
    assert "Traceback" not in out.stderr
    assert "notes.mp4" in out.stderr.strip().splitlines()[-1]


def test_truncated_video(tmp_path, capsys, small_video):
    data = small_video.read_bytes()
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(data[: len(data) // 3])
    code, err = run_cli(capsys, "capture", broken, "--out", tmp_path / "out")
    assert_one_line_error(code, err, "broken.mp4")
    assert not (tmp_path / "out").exists()


def test_folder_without_images(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no pictures here")
    code, err = run_cli(capsys, "capture", tmp_path / "empty", "--out", tmp_path / "out")
    assert_one_line_error(code, err, "empty", "no images")


def test_fewer_than_three_usable_frames(tmp_path, capsys):
    folder = tmp_path / "two"
    folder.mkdir()
    for name in ["a.jpg", "b.jpg"]:
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(folder / name)
    code, err = run_cli(capsys, "capture", folder, "--out", tmp_path / "out")
    assert_one_line_error(code, err, "two")


def test_sfm_registers_nothing(tmp_path, capsys):
    """Noise shares no features between images: SfM fails, says so in one line, and writes nothing."""
    folder = tmp_path / "noise"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(5):
        Image.fromarray(rng.integers(0, 255, (240, 320, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    code, err = run_cli(capsys, "capture", folder, "--out", tmp_path / "out")
    assert_one_line_error(code, err, "noise")
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.glob(".out.*")), "staging folder left behind"


def test_existing_output_is_refused_then_kept_on_failure(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    code, err = run_cli(capsys, "capture", EXAMPLE, "--out", out)
    assert_one_line_error(code, err, "--overwrite")
    code, err = run_cli(capsys, "capture", tmp_path / "missing", "--out", out, "--overwrite")
    assert code == EXIT_USER_ERROR
    assert (out / "precious.txt").read_text() == "keep me"
    photos = tmp_path / "two_photos"  # too few: structure from motion refuses them
    photos.mkdir()
    for name in ("a.jpg", "b.jpg"):
        (photos / name).write_bytes((EXAMPLE / sorted(p.name for p in EXAMPLE.iterdir())[0]).read_bytes())
    code, err = run_cli(capsys, "video-to-3d", photos, "--out", tmp_path / "new" / "run")
    assert code == EXIT_USER_ERROR and not (tmp_path / "new").exists()  # no empty folders left behind


def test_capture_of_photo_folder_with_a_corrupt_jpeg(tmp_path, capsys):
    """End to end on the bundled example plus one truncated JPEG: the bad file is skipped and listed."""
    photos = tmp_path / "photos"
    photos.mkdir()
    for src in sorted(EXAMPLE.glob("*.jpg")):
        (photos / src.name).write_bytes(src.read_bytes())
    good = sorted(EXAMPLE.glob("*.jpg"))[0].read_bytes()
    (photos / "zz_corrupt.jpg").write_bytes(good[: len(good) // 2])
    out = tmp_path / "capture"
    code, err = run_cli(capsys, "capture", photos, "--out", out, "--max-size", "800")
    assert code == 0, err

    report = json.loads((out / "report.json").read_text())
    assert report["total"] == 10 and report["registered"] >= 9
    assert 0 < report["mean_reprojection_error_px"] < 2.0
    assert {"frames", "features", "matching", "mapping", "total"} <= set(report["seconds"])
    dropped = report["frames"]["dropped_frames"]
    assert [d["source_name"] for d in dropped] == ["zz_corrupt.jpg"]
    assert dropped[0]["reason"].startswith("corrupt")
    assert "zz_corrupt.jpg" in err  # listed on screen too

    transforms = json.loads((out / "transforms.json").read_text())
    assert len(transforms["frames"]) == report["registered"]
    for frame in transforms["frames"]:
        assert (out / frame["file_path"]).is_file()
    assert (out / "sparse" / "0" / "images.bin").is_file()
    assert (out / "points3D.ply").is_file()
    assert not (out / "work").exists()


def test_import_nerfstudio_capture(tmp_path, capsys):
    """`orbit4d import` of a small pinhole transforms.json: poses kept, the listed-but-missing image skipped."""
    src = tmp_path / "ns"
    (src / "images").mkdir(parents=True)
    frames = []
    for i in range(4):
        c2w = np.eye(4)
        c2w[:3, 3] = [i * 0.1, 0.0, 2.0]
        frames.append({"file_path": f"images/{i}.png", "transform_matrix": c2w.tolist()})
        if i < 3:
            Image.fromarray(np.full((24, 32, 3), 40 * i, np.uint8)).save(src / "images" / f"{i}.png")
    meta = {"fl_x": 30.0, "fl_y": 30.0, "cx": 16.0, "cy": 12.0, "w": 32, "h": 24, "frames": frames}
    (src / "transforms.json").write_text(json.dumps(meta))

    code, err = run_cli(capsys, "import", src, "--out", tmp_path / "out")
    assert code == 0, err
    written = json.loads((tmp_path / "out" / "transforms.json").read_text())
    assert [f["file_path"] for f in written["frames"]] == [f"images/{i}.png" for i in range(3)]
    for frame, source in zip(written["frames"], frames):
        np.testing.assert_allclose(frame["transform_matrix"], source["transform_matrix"], atol=1e-9)
    assert "1 of 4" in err  # the missing image is reported


def test_import_unknown_layout(tmp_path, capsys):
    (tmp_path / "stuff").mkdir()
    (tmp_path / "stuff" / "notes.txt").write_text("nothing to import")
    code, err = run_cli(capsys, "import", tmp_path / "stuff", "--out", tmp_path / "out")
    assert_one_line_error(code, err, "stuff")
    assert not (tmp_path / "out").exists()


def test_render_asset_bad_inputs(tmp_path, capsys):
    code, err = run_cli(capsys, "render-asset", tmp_path / "missing.glb", "--out", tmp_path / "out")
    assert_one_line_error(code, err, "missing.glb", "does not exist")
    text = tmp_path / "model.txt"
    text.write_text("not a model")
    code, err = run_cli(capsys, "render-asset", text, "--out", tmp_path / "out")
    assert_one_line_error(code, err, "model.txt", ".glb")
    assert not (tmp_path / "out").exists()


def test_render_asset_unknown_animation_lists_the_real_ones(shared_data, tmp_path, capsys):
    pytest.importorskip("bpy", reason="the render extra (bpy, Python 3.11) is not installed")
    fox = shared_data / "models" / "Fox.glb"
    code, err = run_cli(capsys, "render-asset", fox, "--out", tmp_path / "out", "--animation", "Jump")
    assert_one_line_error(code, err, "Fox.glb", "Jump", "Run, Survey, Walk")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("command", "hint"), [("capture", "--max-size"), ("train", "--downscale"),
                                               ("eval", "--downscale"), ("generate", "--frames")])  # fmt: skip
def test_out_of_memory_names_what_lowers_that_commands_memory(tmp_path, capsys, monkeypatch, command, hint):
    """A MemoryError escaping a stage is one line whose hint is an option of the command that ran."""
    from orbit4d import cli

    parser = cli.build_parser()
    args = parser.parse_args([command, str(tmp_path / "input"), "--out", str(tmp_path / "out")]
                             + (["--weights", str(tmp_path)] if command == "generate" else []))  # fmt: skip

    def exhausted(_args):
        raise MemoryError

    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    monkeypatch.setattr(args, "func", exhausted, raising=False)
    monkeypatch.setattr(parser, "parse_args", lambda argv: args)
    code, err = run_cli(capsys, command)
    assert_one_line_error(code, err, "out of memory", hint)
    option = hint.lstrip("-")
    assert any(action.dest == option.replace("-", "_") for action in parser._subparsers._group_actions[0]
               .choices[command]._actions)  # the hint is the command's own option  # fmt: skip


@pytest.mark.parametrize("command", ["train", "video-to-3d", "generate"])
def test_a_seed_beyond_64_bits_is_refused_by_the_parser(tmp_path, capsys, command):
    """torch and numpy take signed 64-bit seeds: a larger one is argparse's one-line usage error, not a crash."""
    with pytest.raises(SystemExit) as exit_:
        main([command, str(tmp_path / "input"), "--out", str(tmp_path / "out"), "--seed", str(2**64)])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "--seed" in err and "2^63 - 1" in err and "Traceback" not in err


def test_sigterm_stops_a_command_and_leaves_nothing_half_written(tmp_path):
    """A scheduler's or `kill`'s SIGTERM unwinds like Ctrl-C: exit 130, one line, the staging folder removed."""
    import signal
    import time

    out = tmp_path / "capture"
    process = subprocess.Popen([sys.executable, "-m", "orbit4d", "capture", str(EXAMPLE), "--out", str(out)],
                               cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob(".capture.partial-*/work/frames/*")) and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130 and "interrupted" in err and "Traceback" not in err, err
    assert not list(tmp_path.iterdir())
