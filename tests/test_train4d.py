"""reconstruct.train4d on a tiny synthetic 4D capture (Gaussians moving in front of a rig): the motion is learned
where a static scene cannot follow, the held-out camera is measured at every time step, the per-frame .ply files are
the 4D file at their times, resume is exact, bad captures are one line; orbit4d video-to-4d on a capture."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from multiview.capture import Frame, write_transforms
from multiview.errors import InputError
from multiview.layouts import orbit
from reconstruct import train4d
from reconstruct.data4d import load_scene4d
from reconstruct.evaluate4d import matched_jitter, trajectory_jitter
from reconstruct.ply import read_ply
from reconstruct.rasterize import rasterize
from reconstruct.splats4d import read_splats4d

SIZE = 32
TIMES = np.linspace(0.0, 0.5, 6)
CONFIG = train4d.Train4DConfig(  # a short run: motion learned faster than the default's 6,000-step rate
    steps=200, lr_motion=1e-2, sh_degree=0, random_init_points=300, max_gaussians=600, background="black", checkpoint_every=0,
    psnr_samples=0, video_frames=0, device="cpu",
)  # fmt: skip

pytestmark = pytest.mark.usefixtures("one_thread")


def moving_truth(t: float, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """40 Gaussians at time ``t``: the first 20 swing sideways and rise, the rest stand still."""
    g = torch.Generator().manual_seed(seed)
    n = 40
    means = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=-1) * 0.45 * torch.rand(n, 1, generator=g)
    quats, colors = torch.randn(n, 4, generator=g), torch.rand(n, 3, generator=g)
    scales = 0.05 + 0.1 * torch.rand(n, 3, generator=g)
    opacities = 0.7 + 0.3 * torch.rand(n, generator=g)
    phase = float(t / TIMES[-1])
    offset = torch.tensor([0.35 * math.sin(math.pi * phase), 0.0, 0.25 * phase])
    means = means + offset * (torch.arange(n) < 20)[:, None]
    return means, quats, scales, opacities, colors


def make_capture4d(root: Path, times=TIMES, with_ids: bool = True, with_times: bool = True) -> Path:
    """8 cameras (two rings of 4, camera_id 0..7) filming ``moving_truth`` at ``times``, RGB on black."""
    cameras = orbit(8, (10.0, 40.0), radius=2.5, fov_deg=45.0, width=SIZE, height=SIZE)
    (root / "images").mkdir(parents=True)
    frames = []
    for step, t in enumerate(times):
        means, quats, scales, opacities, colors = moving_truth(float(t))
        for k, camera in enumerate(cameras):
            image, _, _ = rasterize(means, quats, scales, opacities, colors,
                                    torch.tensor(camera.cam_from_world, dtype=torch.float32)[None],
                                    torch.tensor(camera.K, dtype=torch.float32)[None], SIZE, SIZE,
                                    backgrounds=torch.zeros(1, 3))  # fmt: skip
            path = root / "images" / f"t{step:02d}_c{k}.png"
            PIL.Image.fromarray((image[0].clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8)).save(path)
            camera = camera.replace(time=float(t) if with_times else None, camera_id=k if with_ids else None)
            frames.append(Frame(path.absolute(), camera))
    write_transforms(root / "transforms.json", frames, root)
    return root


@pytest.fixture(scope="module")
def capture4d(tmp_path_factory) -> Path:
    return make_capture4d(tmp_path_factory.mktemp("synthetic4d") / "capture")


@pytest.fixture(scope="module")
def scene4d(capture4d, tmp_path_factory) -> Path:
    return train4d.run(CONFIG, capture4d, tmp_path_factory.mktemp("scene4d") / "scene")


def cli(capsys, *argv) -> tuple[int, str]:
    from orbit4d.cli import main

    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def error_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if "error" in line]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# --- the split -------------------------------------------------------------------------------------------------


def test_the_highest_camera_is_held_out_at_every_time(capture4d):
    scene = load_scene4d(capture4d)
    assert scene.test_camera == 7 and len(scene.test) == 6 and len(scene.train) == 42
    assert sorted(scene.time_index(view) for view in scene.test) == list(range(6))
    assert all(view.camera.camera_id != 7 for view in scene.train)
    assert load_scene4d(capture4d, test_camera=2).test[0].camera.camera_id == 2
    with pytest.raises(InputError, match="--test-camera 9: .* has cameras 0..7"):
        load_scene4d(capture4d, test_camera=9)


# --- training ----------------------------------------------------------------------------------------------------


def test_motion_is_learned_where_a_static_scene_cannot_follow(capture4d, scene4d, tmp_path):
    """The same training without motion (positions, rotations and lifespans frozen) is a 3D scene fitted to every
    time at once: it blurs what moves. The 4D scene follows it, on the held-out camera, at every time step."""
    moving = json.loads((scene4d / "metrics.json").read_text())
    frozen = replace(CONFIG, lr_motion=0.0, lr_rotation=0.0, lifespans=False)
    still = json.loads((train4d.run(frozen, capture4d, tmp_path / "still") / "metrics.json").read_text())
    assert moving["evaluated_on"].startswith("test (camera 7") and len(moving["per_time"]) == 6
    assert moving["psnr"] > still["psnr"] + 3.0, (moving["psnr"], still["psnr"])
    assert moving["psnr"] > 22.0
    assert moving["jitter"]["mean_step"] > 10 * still["jitter"]["mean_step"]  # it moves; the frozen one cannot


def test_the_scene_folder_holds_the_4d_file_and_one_ply_per_time_step(scene4d):
    report = json.loads((scene4d / "metrics.json").read_text())
    splats = read_splats4d(scene4d / "splats4d.ply")
    assert np.allclose(splats.times, TIMES) and len(splats) == report["num_gaussians"]
    frames = sorted((scene4d / "sequence").glob("frame_*.ply"))
    assert [f.name for f in frames] == [f"frame_{i:04d}.ply" for i in range(6)]
    for i, path in enumerate(frames):  # each frame is the 4D file evaluated at its time
        frame, expected = read_ply(path), splats.at(float(TIMES[i]))
        for name, value in expected.tensors().items():
            assert torch.allclose(getattr(frame, name), value, atol=1e-6), (i, name)
    assert report["file_sizes"]["splats4d_over_one_frame"] <= 3.0
    assert {p["time_index"] for p in report["per_time"]} == set(range(6)) and report["per_view"][0]["time"] == 0.0
    assert len(list((scene4d / "renders").glob("*.png"))) == 6
    assert (scene4d / "training.png").is_file() and (scene4d / "checkpoint" / "checkpoint.pt").is_file()


def test_resume_after_interrupt_matches_uninterrupted_run(capture4d, tmp_path):
    config = replace(CONFIG, steps=40)
    reference = train4d.run(config, capture4d, tmp_path / "reference")

    def stop(state):
        if state.step == 17:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train4d.run(config, capture4d, tmp_path / "resumed", on_step=stop)
    assert not (tmp_path / "resumed").exists() and (tmp_path / ".resumed.partial" / "checkpoint").is_dir()
    train4d.run(config, capture4d, tmp_path / "resumed", resume=True)
    a, b = read_splats4d(reference / "splats4d.ply"), read_splats4d(tmp_path / "resumed" / "splats4d.ply")
    for name, value in a.tensors().items():
        assert torch.equal(value, b.tensors()[name]), name


def test_smoothness_penalises_acceleration_not_steady_motion():
    times = np.linspace(0, 1, 12)
    tables = train4d.SmoothnessTables.for_scene("bspline", (8, 4), times, torch.device("cpu"))
    params = {"motion": torch.zeros(1, 8, 3), "drot": torch.zeros(1, 4, 4)}
    # control points on a line reproduce a straight, uniform path (B-splines reproduce linear functions)
    params["motion"][0, :, 0] = torch.linspace(-1, 1, 8)
    assert train4d.smoothness_penalty(params, tables, 1.0) < 1e-10
    params["motion"][0, 3, 1] = 0.5  # a bump
    assert train4d.smoothness_penalty(params, tables, 1.0) > 1e-4


def test_jitter_scores_a_steady_path_zero_and_a_shaking_one_high():
    from reconstruct.splats import Splats

    def frame(x: float) -> Splats:
        n = 5
        means = torch.zeros(n, 3) + torch.arange(n)[:, None].float()
        means[:, 0] += x
        return Splats(means, torch.tensor([[1.0, 0, 0, 0]]).repeat(n, 1), torch.zeros(n, 3), torch.full((n,), 3.0),
                      torch.zeros(n, 1, 3), torch.zeros(n, 0, 3))  # fmt: skip

    steady = [frame(0.1 * t) for t in range(6)]
    shaking = [frame(0.1 * t + 0.05 * (-1) ** t) for t in range(6)]
    assert trajectory_jitter(steady)["mean_second_difference"] < 1e-6
    assert trajectory_jitter(shaking)["mean_second_difference"] == pytest.approx(0.2, rel=1e-5)
    assert matched_jitter(shaking)["mean_second_difference"] == pytest.approx(0.2, rel=1e-5)
    assert trajectory_jitter(steady)["mean_step"] == pytest.approx(0.1, rel=1e-5)


# --- bad captures -------------------------------------------------------------------------------------------------


def test_captures_that_are_not_4d_are_one_line(tmp_path, capsys):
    untimed = make_capture4d(tmp_path / "untimed", times=TIMES[:2], with_times=False)
    code, err = cli(capsys, "video-to-4d", untimed, "--out", tmp_path / "a")
    assert code == 1 and "have no 'time'" in error_line(err) and "transforms.json" in error_line(err)
    single = make_capture4d(tmp_path / "single", times=TIMES[:1])
    code, err = cli(capsys, "video-to-4d", single, "--out", tmp_path / "b")
    assert code == 1 and "a single time step" in error_line(err)
    no_ids = make_capture4d(tmp_path / "no_ids", times=TIMES[:2], with_ids=False)
    code, err = cli(capsys, "video-to-4d", no_ids, "--out", tmp_path / "c")
    assert code == 1 and "camera_id" in error_line(err)
    assert not any((tmp_path / name).exists() for name in "abc")


def test_video_to_4d_trains_a_capture_with_times(capture4d, tmp_path, capsys):
    out = tmp_path / "out"
    code, err = cli(capsys, "video-to-4d", capture4d, "--out", out, "--steps", "30", "--sh-degree", "0",
                    "--test-camera", "3", "--motion", "poly", "--motion-points", "3", "--device", "cpu")  # fmt: skip
    assert code == 0, err
    assert not (out / "capture").exists()  # the input is the capture
    report = json.loads((out / "scene" / "metrics.json").read_text())
    assert report["test_camera"] == 3 and report["motion"]["basis"] == "poly" and report["steps"] == 30
    assert (out / "scene" / "playback.mp4").is_file() and "PSNR per time step" in err
    code, err = cli(capsys, "video-to-4d", capture4d, "--out", out, "--resume", "--steps", "35")
    assert code == 0, err
    report = json.loads((out / "scene" / "metrics.json").read_text())
    assert report["steps"] == 35 and report["motion"]["basis"] == "poly"  # resumed as it was trained
    code, err = cli(capsys, "video-to-4d", capture4d, "--out", out, "--motion-points", "2")
    assert code == 1 and "--motion-points 2" in error_line(err)


def test_help_stays_light():
    import subprocess
    import sys

    from orbit4d.video4d_cmd import MOTION_BASES
    from reconstruct.splats4d import BASES

    code = ("import sys, argparse; from orbit4d import video4d_cmd; p = argparse.ArgumentParser();"
            "video4d_cmd.add_parsers(p.add_subparsers());"
            "print(','.join(m for m in ('numpy', 'torch', 'cv2', 'av', 'reconstruct') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])  # fmt: skip
    assert out.stdout.strip() == "" and MOTION_BASES == BASES


def test_an_imported_multi_camera_set_keeps_its_times_and_camera_ids(capture4d, tmp_path, capsys):
    code, err = cli(capsys, "import", capture4d / "transforms.json", "--out", tmp_path / "imported")
    assert code == 0, err
    scene = load_scene4d(tmp_path / "imported")
    assert scene.test_camera == 7 and np.allclose(scene.times, TIMES) and len(scene.train) == 42
