"""Every command against hostile inputs (``tests/hostile_corpus.py``): zero-byte, truncated and lying files, paths that
escape their folder, wrong types, numbers out of range, outputs that hold an input or cannot be written, and outputs
another process is writing.

Each row of ``SURVEY`` is one command line, run in-process; it must end in one line (``orbit4d CMD: error: ...``) that
holds the row's words, exit 1, print no traceback and no Python warning, name only options the command has, change no
input (checksums of the whole corpus) and leave nothing behind where its output would go. A command added later is
covered by adding its rows (its argv, with ``{name}`` for a corpus input and ``{out}`` for a fresh output path).
"""

from __future__ import annotations

import hashlib
import importlib
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

import pytest

from orbit4d.cli import EXIT_USER_ERROR, build_parser, main
from hostile_corpus import build_corpus

REPO = Path(__file__).resolve().parents[1]
UNWRITABLE = "/proc/orbit4d-survey/out"
BUSY = "is being written by process {holder}"


class Row(NamedTuple):
    id: str
    argv: tuple[str, ...]
    words: tuple[str, ...]  # what the error line must say ("{holder}": the pid holding a busy output)


def row(id_: str, argv: str, *words: str) -> Row:
    return Row(id_, tuple(argv.split()), words)


SURVEY = [
    # zero-byte, truncated and lying files
    row("capture-zero-video", "capture {video_zero} --out {out}", "zero.mp4"),
    row("capture-text-video", "capture {video_text} --out {out}", "text.mp4"),
    row("video-to-3d-zero-video", "video-to-3d {video_zero} --out {out}", "zero.mp4"),
    row("video-to-4d-zero-video", "video-to-4d {video_zero} --out {out}", "zero.mp4"),
    row("video-to-4d-text-video", "video-to-4d {video_text} --out {out}", "text.mp4"),
    row("video-to-4d-capture-without-times", "video-to-4d {capture} --out {out}", "time"),
    row("import-zero-transforms", "import {ns_zero} --out {out}", "transforms.json", "not readable JSON"),
    row("import-colmap-lying-points", "import {colmap_lying_points} --out {out}", "points3D.bin",
        "promises 1,000,000,000 3D points"),
    row("import-colmap-lying-track", "import {colmap_lying_track} --out {out}", "points3D.bin", "track elements"),
    row("import-colmap-zero-cameras", "import {colmap_zero_cameras} --out {out}", "cameras.bin", "empty"),
    row("import-llff-lying-npy", "import {llff_lying} --out {out}", "poses_bounds.npy", "header promises"),
    row("import-llff-pickle", "import {llff_pickled} --out {out}", "poses_bounds.npy", "Python objects"),
    row("eval-lying-ply", "eval {splats_lying} --capture {capture} --out {out}", "lying.ply", "truncated"),
    row("eval-zero-ply", "eval {splats_zero} --capture {capture} --out {out}", "zero.ply"),
    row("eval-metrics-not-an-object", "eval {scene_bad_metrics}", "metrics.json", "--capture"),
    row("render-asset-lying-glb", "render-asset {asset_lying_glb} --out {out}", "lying.glb", "promises"),
    row("render-asset-zero-glb", "render-asset {asset_zero_glb} --out {out}", "zero.glb"),
    row("assets-count-zero", "assets --out {out} --count 0", "count 0: ask for at least 1 asset"),
    row("assets-not-assets", "assets --out {capture}", "not empty and has no assets.json"),
    row("generate-zero-photo", "generate {photo_zero} --weights {weights_empty} --out {out}", "zero.png"),
    row("generate-pickled-weights", "generate {photo} --weights {weights_pickle} --out {out}", "pickle.safetensors"),
    row("generate-lying-weights", "generate {photo} --weights {weights_lying} --out {out}", "lying.safetensors"),
    row("finetune-zero-config", "finetune {ft_zero}", "zero.json"),
    row("eval-generator-empty-weights", "eval-generator --weights {weights_empty} --data {dataset} --out {out}",
        "empty_model"),
    # paths that leave their folder
    row("import-parent-path", "import {ns_parent} --out {out}", "../../outside/stray.png", "leads outside",
        "--allow-outside-paths"),
    row("import-absolute-path", "import {ns_absolute} --out {out}", "stray.png", "leads outside"),
    row("import-etc-passwd", "import {ns_etc} --out {out}", "/etc/passwd", "leads outside"),
    row("import-link-out", "import {ns_link} --out {out}", "images/c.png", "is a link to"),
    row("import-mask-out", "import {ns_mask} --out {out}", "mask_path", "leads outside"),
    row("import-ply-out", "import {ns_ply} --out {out}", "ply_file_path", "leads outside"),
    row("import-colmap-name-out", "import {colmap_escaping_name} --out {out}", "image name", "leads outside"),
    row("train-parent-path", "train {ns_parent} --out {out}", "leads outside", "--allow-outside-paths"),
    row("train-link-out", "train {ns_link} --out {out}", "is a link to"),
    row("train-depth-out", "train {ns_depth} --out {out}", "depth_file_path", "leads outside"),
    row("eval-parent-path", "eval {splats} --capture {ns_parent} --out {out}", "leads outside"),
    row("eval-absolute-path", "eval {splats} --capture {ns_absolute} --out {out}", "leads outside"),
    row("render-asset-buffer-out", "render-asset {asset_buffer_escape} --out {out}", "buffers[0].uri",
        "leads outside", "--allow-outside-paths"),
    row("render-asset-image-out", "render-asset {asset_image_escape} --out {out}", "images[0].uri", "leads outside"),
    row("render-asset-mtllib-out", "render-asset {asset_obj_mtllib} --out {out}", "mtllib", "leads outside"),
    row("render-asset-texture-out", "render-asset {asset_obj_map} --out {out}", "map_Kd", "leads outside"),
    row("eval-generator-clip-out", "eval-generator --weights {weights_empty} --data {dataset_escape} --out {out}",
        "clip 0's path", "leads outside"),
    # wrong types, repeated entries, numbers out of range
    row("import-duplicate-frames", "import {ns_duplicate} --out {out}", "frames 0 and 2", "images/a.png"),
    row("import-number-as-path", "import {ns_number_path} --out {out}", "42", "not a file name"),
    row("import-nul-in-path", "import {ns_nul} --out {out}", "not a usable file name"),
    row("import-path-too-long", "import {ns_long} --out {out}", "not a usable file name"),
    row("import-matrix-overflow", "import {ns_overflow} --out {out}", "transform_matrix"),
    row("import-far-camera", "import {ns_far_camera} --out {out}", "1e+30"),
    row("train-far-camera", "train {ns_far_camera} --out {out}", "1e+30"),
    row("import-focal-string", "import {ns_focal_string} --out {out}", "fl_x", "not a number"),
    row("import-focal-huge", "import {ns_focal_huge} --out {out}", "fl_x"),
    row("import-size-huge", "import {ns_size_huge} --out {out}", "a.png", "1000000000000x1000000000000"),
    row("import-frames-not-a-list", "import {ns_frames_dict} --out {out}", "'frames' list"),
    row("train-init-points-zero", "train {capture} --out {out} --init-points 0", "--init-points 0"),
    row("train-downscale-zero", "train {capture} --out {out} --downscale 0", "--downscale"),
    row("train-steps-negative", "train {capture} --out {out} --steps -5", "--steps"),
    row("train-lr-nan", "train {capture} --out {out} --lr-scale nan", "--lr-scale"),
    row("train-test-every-negative", "train {capture} --out {out} --test-every -1", "--test-every"),
    row("capture-frames-zero", "capture {photos} --out {out} --frames 0", "--frames"),
    row("capture-max-size-tiny", "capture {photos} --out {out} --max-size 1", "--max-size"),
    row("eval-downscale-zero", "eval {splats} --capture {capture} --out {out} --downscale 0", "--downscale"),
    row("render-asset-size-tiny", "render-asset {asset} --out {out} --size 1", "--size"),
    row("render-asset-elevation-nan", "render-asset {asset} --out {out} --elevation nan", "--elevation"),
    row("render-asset-degenerate", "render-asset {asset_degenerate} --out {out}", "zero area"),
    row("generate-frames-zero", "generate {photo} --weights {weights_empty} --out {out} --frames 0", "--frames"),
    row("generate-guidance-huge", "generate {photo} --weights {weights_empty} --out {out} --guidance 1 1e9",
        "--guidance"),
    row("finetune-wrong-types", "finetune {ft_types}", "ft_types.json", "data"),
    row("finetune-negative-steps", "finetune {ft_negative}", "steps -3"),
    row("eval-generator-steps-zero", "eval-generator --weights {weights_empty} --data {dataset} --out {out} --steps 0",
        "--steps"),
    # outputs that are or hold an input, even with --overwrite
    row("capture-out-holds-input", "capture {photos} --out {root} --overwrite", "would replace the input"),
    row("import-out-is-input", "import {capture} --out {capture} --overwrite", "would replace the input"),
    row("train-out-is-input", "train {capture} --out {capture} --overwrite", "would replace the input"),
    row("eval-out-holds-input", "eval {splats} --capture {capture} --out {root} --overwrite", "would replace the input"),
    row("video-to-3d-out-holds-input", "video-to-3d {photos} --out {root} --overwrite", "would replace the input"),
    row("image-to-3d-out-holds-input", "image-to-3d {photo} --weights {weights_empty} --out {root} --overwrite",
        "would replace the input"),
    row("generate-out-holds-input", "generate {photo} --weights {weights_empty} --out {root} --overwrite",
        "would replace the input"),
    row("render-asset-out-holds-input", "render-asset {asset} --out {root} --overwrite", "would replace the input"),
    row("finetune-out-is-data", "finetune {ft_out_is_data}", "would replace the input"),
    row("eval-generator-out-is-data", "eval-generator --weights {weights_empty} --data {dataset} --out {dataset} "
        "--overwrite", "would replace the input"),
    # an existing output is refused before any work (loading the empty model folder would fail first otherwise)
    row("generate-out-exists", "generate {photo} --weights {weights_empty} --out {capture}", "already exists"),
    row("eval-generator-out-exists", "eval-generator --weights {weights_empty} --data {dataset} --out {capture}",
        "already exists"),
    # outputs that cannot be written
    *[row(f"{command}-unwritable-out", f"{command} {inputs} --out {UNWRITABLE}", "cannot write in /proc",
          "choose a folder you can write to")
      for command, inputs in [("capture", "{photos}"), ("import", "{capture}"), ("train", "{capture}"),
                              ("eval", "{splats} --capture {capture}"), ("video-to-3d", "{photos}"),
                              ("image-to-3d", "{photo} --weights {weights_empty}"),
                              ("generate", "{photo} --weights {weights_empty}"), ("render-asset", "{asset}"),
                              ("eval-generator", "--weights {weights_empty} --data {dataset}"), ("assets", ""),
                              ("video-to-4d", "{video_text}")]],
    row("finetune-unwritable-out", "finetune {ft_unwritable}", "cannot write in /proc"),
    # outputs another process is writing (held by the ``holder`` fixture): refused at once, naming it
    *[row(f"{command}-busy-out", f"{command} {inputs} --out {{busy}}", BUSY)
      for command, inputs in [("capture", "{photos}"), ("import", "{capture}"), ("train", "{capture}"),
                              ("eval", "{splats} --capture {capture}"), ("video-to-3d", "{photos}"),
                              ("image-to-3d", "{photo} --weights {weights_empty}"),
                              ("generate", "{photo} --weights {weights_empty}"), ("render-asset", "{asset}"),
                              ("eval-generator", "--weights {weights_empty} --data {dataset}"), ("assets", ""),
                              ("video-to-4d", "{video_text}")]],
    row("finetune-busy-out", "finetune {ft_busy}", BUSY),
    row("eval-scene-busy-out", "eval {scene}", BUSY),  # SCENE/eval while SCENE is being trained
    # the viewer's static export and videos
    row("view-zero-ply", "view {splats_zero} --export {out}", "zero.ply"),
    row("view-lying-ply", "view {splats_lying} --export {out}", "lying.ply"),
    row("view-out-is-input", "view {scene} --export {scene} --overwrite", "would replace the scene"),
    row("view-unwritable-out", f"view {{splats}} --export {UNWRITABLE}", "cannot write in /proc",
        "choose a folder you can write to"),
    row("view-busy-out", "view {splats} --export {busy}", BUSY),
    row("render-zero-ply", "render {splats_zero} --out {out}.mp4", "zero.ply"),
    row("render-not-a-video", "render {splats} --out {out}.gif", "name the video .mp4"),
    row("render-frames-zero", "render {splats} --out {out}.mp4 --frames 0", "--frames"),
    row("render-unwritable-out", f"render {{splats}} --out {UNWRITABLE}.mp4", "cannot write in /proc",
        "choose a folder you can write to"),
    row("render-busy-out", "render {splats} --out {busy}", BUSY),
    # exports of a scene: meshes, a .blend, splat formats
    row("export-nothing-asked", "export {scene} --out {out}.glb", "say what to export"),
    row("export-zero-ply", "export {splats_zero} --format splat --out {out}.splat", "zero.ply"),
    row("export-wrong-suffix", "export {scene} --format spz --out {out}.splat", "--out", ".spz"),
    row("export-out-is-input", "export {scene} --format ply --overwrite", "is an input"),
    row("export-unwritable-out", f"export {{scene}} --format splat --out {UNWRITABLE}.splat", "cannot write in /proc",
        "choose a folder you can write to"),
    row("export-busy-out", "export {scene} --format splat --out {busy}", BUSY),
]  # fmt: skip

COMMANDS = sorted(build_parser()._subparsers._group_actions[0].choices)  # noqa: SLF001


def test_the_survey_covers_every_command():
    """A command the CLI gains is surveyed too: each needs its rows (bad input, unwritable out, busy out)."""
    for command in COMMANDS:
        surveyed = {r.id for r in SURVEY if r.argv[0] == command}
        assert any(i.endswith("-unwritable-out") for i in surveyed), f"{command}: no unwritable-output row"
        assert any(i.endswith("-busy-out") for i in surveyed), f"{command}: no busy-output row"
        assert len(surveyed) >= 3, f"{command}: add hostile-input rows"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, Path]:
    return build_corpus(tmp_path_factory.mktemp("hostile") / "inputs")


@pytest.fixture(scope="module")
def holder(corpus, tmp_path_factory):
    """A separate process that holds the output lock of every busy row's output, as a running command would. The
    commands' modules are imported first, so that a row's seconds are its own work, not a first import of torch."""
    for module in ("generate.run", "generate.finetune", "reconstruct.train", "reconstruct.evaluate",
                   "multiview.render_asset", "multiview.process", "orbit4d.eval_generator"):  # fmt: skip
        importlib.import_module(module)
    busy = [_busy_out(corpus, r) for r in SURVEY if r.id.endswith("-busy-out")]
    script = ("import sys, time; from contextlib import ExitStack; from multiview.outputs import output_lock\n"
              "with ExitStack() as stack:\n"
              "    for out in sys.argv[1:]: stack.enter_context(output_lock(out))\n"
              "    print('ready', flush=True); time.sleep(600)\n")  # fmt: skip
    process = subprocess.Popen([sys.executable, "-c", script, *map(str, busy)], cwd=REPO, stdout=subprocess.PIPE,
                               text=True)  # fmt: skip
    assert process.stdout.readline().strip() == "ready"
    yield process.pid
    process.kill()
    process.wait()


def _busy_out(corpus: dict, r: Row) -> Path:
    """The output the ``holder`` holds for a busy row (the scene itself for an evaluation into SCENE/eval)."""
    special = {"finetune-busy-out": corpus["ft_busy_out"], "eval-scene-busy-out": corpus["scene"],
               "render-busy-out": corpus["root"].parent / "busy" / "render" / "out.mp4",
               "export-busy-out": corpus["root"].parent / "busy" / "export" / "out.splat"}
    return special.get(r.id, corpus["root"].parent / "busy" / r.argv[0] / "out")


def _digest(root: Path) -> dict[str, str]:
    """Every entry under ``root``: file contents' hashes, link targets, folders."""
    entries = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder, name)
            if path.is_symlink():
                entries[str(path)] = "-> " + os.readlink(path)
            elif path.is_dir():
                entries[str(path)] = "dir"
            else:
                entries[str(path)] = hashlib.sha1(path.read_bytes()).hexdigest()
    return entries


@pytest.mark.parametrize("survey_row", SURVEY, ids=[r.id for r in SURVEY])
def test_hostile_input(survey_row, corpus, tmp_path, capsys, request):
    holder_pid = request.getfixturevalue("holder") if survey_row.id.endswith("-busy-out") else None
    if survey_row.id.startswith(("render-asset-degenerate",)):
        pytest.importorskip("bpy", reason="the render extra (bpy, Python 3.11) is not installed")
    out = tmp_path / "out"
    names = {**{k: str(v) for k, v in corpus.items()}, "out": str(out), "busy": str(_busy_out(corpus, survey_row))}
    argv = [part.format(**names) for part in survey_row.argv]
    before = _digest(corpus["root"])
    tic = time.monotonic()
    code = main(argv)
    seconds = time.monotonic() - tic
    err = capsys.readouterr().err
    command = survey_row.argv[0]
    errors = [line for line in err.splitlines() if line.startswith(f"orbit4d {command}: error: ")]
    assert code == EXIT_USER_ERROR and len(errors) == 1, err
    assert "Traceback" not in err and not re.search(r"\b\w+Warning\b", err), err
    for word in survey_row.words:
        assert word.format(holder=holder_pid) in errors[0], (word, errors[0])
    for option in re.findall(r"(?<![\w-])--[a-z][a-z-]*", errors[0]):
        assert option in _options(command), f"{errors[0]} names {option}, which {command} does not have"
    assert _digest(corpus["root"]) == before, "an input changed"
    assert not out.exists() and not list(tmp_path.iterdir()), "something was written where the output would go"
    if holder_pid is not None:
        assert seconds < 10, f"a busy output was refused after {seconds:.1f} s, not at once"


def _options(command: str) -> set[str]:
    parser = build_parser()._subparsers._group_actions[0].choices[command]  # noqa: SLF001
    return {option for action in parser._actions for option in action.option_strings}  # noqa: SLF001


def test_a_library_warning_is_one_line_and_disk_errors_are_not_bugs(tmp_path, capsys, monkeypatch):
    """A numpy RuntimeWarning printed its source line before the one-line error; a full or read-only disk was an
    internal error (exit 2)."""
    import errno
    import warnings

    import numpy as np

    from orbit4d import cli

    parser = cli.build_parser()
    args = parser.parse_args(["import", str(tmp_path / "src"), "--out", str(tmp_path / "out")])

    def overflowing(_args):
        np.float32(3e38) * np.float32(10)  # overflow encountered in scalar multiply
        warnings.warn("a second line\nof the same warning", UserWarning, stacklevel=1)
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "out" / "images" / "a.png"))

    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    monkeypatch.setattr(args, "func", overflowing, raising=False)
    monkeypatch.setattr(parser, "parse_args", lambda argv: args)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        code = main(["import"])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == EXIT_USER_ERROR and len(lines) == 3, err
    assert lines[0].startswith("warning: overflow encountered") and lines[1] == "warning: a second line of the same warning"
    assert lines[2] == (f"orbit4d import: error: {tmp_path / 'out' / 'images' / 'a.png'}: No space left on device: "
                        "the disk is full: free some space or choose another --out")  # fmt: skip
