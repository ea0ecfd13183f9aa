"""reconstruct.train on a tiny synthetic capture: PSNR rises, outputs are complete, resume is exact, failures are one
line and keep what was written before; the densifier (gsplat's DefaultStrategy) on CPU; orbit4d train / video-to-3d."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import PIL.ExifTags
import PIL.Image
import pytest
import torch

from multiview.capture import Frame, write_transforms
from multiview.errors import InputError, OutputExistsError
from multiview.layouts import orbit
from reconstruct import train
from reconstruct.checkpoint import checkpoint_path, read_checkpoint
from reconstruct.corrections import held_out_colors
from reconstruct.data import load_scene
from reconstruct.evaluate import evaluate_views
from reconstruct.ply import read_ply, write_ply
from reconstruct.rasterize import rasterize
from reconstruct.splats import Splats, rgb_to_sh0
from reconstruct.strategy import Densifier, default_strategy

REPO = Path(__file__).resolve().parents[1]
SIZE = 32

# Short, exact-resume-friendly settings: one refinement (step 20), SH degree raised at steps 20 and 40, random
# backgrounds, a Gaussian cap, no evaluation extras.
RESUME_CONFIG = train.TrainConfig(
    steps=60, sh_degree=2, sh_degree_interval=20, random_init_points=300, max_gaussians=450,
    background="random", checkpoint_every=0, psnr_samples=0, turntable_frames=0, device="cpu",
)  # fmt: skip


def truth_gaussians(seed: int = 0) -> tuple[torch.Tensor, ...]:
    """The 40 Gaussians ``make_capture`` renders: means, quats, linear scales, opacities, RGB colours."""
    g = torch.Generator().manual_seed(seed)
    n = 40
    means = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=-1) * 0.5 * torch.rand(n, 1, generator=g)
    quats, colors = torch.randn(n, 4, generator=g), torch.rand(n, 3, generator=g)
    scales = 0.05 + 0.12 * torch.rand(n, 3, generator=g)
    opacities = 0.6 + 0.4 * torch.rand(n, generator=g)
    return means, quats, scales, opacities, colors


def make_capture(root: Path, num_views: int = 12, size: int = SIZE, rgba: bool = False, seed: int = 0,
                 depth: bool = True) -> Path:  # fmt: skip
    """A capture of 40 random Gaussians rendered by ``rasterize`` from two orbit rings (no points3D.ply).

    ``rgba``: straight-alpha RGBA images (the object on a transparent background) instead of RGB on black.
    ``depth``: with depth maps (``depth_file_path``) as synthetic captures have: the expected depth where the alpha
    exceeds 0.5, 0 elsewhere.
    """
    means, quats, scales, opacities, colors = truth_gaussians(seed)
    (root / "images").mkdir(parents=True)
    frames = []
    for i, camera in enumerate(orbit(num_views, (15.0, 45.0), radius=2.5, fov_deg=40.0, width=size, height=size)):
        viewmat = torch.tensor(camera.cam_from_world, dtype=torch.float32)[None]
        K = torch.tensor(camera.K, dtype=torch.float32)[None]
        image, alpha, _ = rasterize(means, quats, scales, opacities, colors, viewmat, K, size, size,
                                    backgrounds=torch.zeros(1, 3), render_mode="RGB+ED")  # fmt: skip
        rgb, a = image[0, ..., :3].clamp(0, 1).numpy(), alpha[0].clamp(0, 1).numpy()
        path = root / "images" / f"view_{i:03d}.png"
        depth_path = None
        if depth:
            depth_path = (root / "depth" / f"view_{i:03d}.npy").absolute()
            depth_path.parent.mkdir(exist_ok=True)
            np.save(depth_path, np.where(a[..., 0] > 0.5, image[0, ..., 3].numpy(), 0.0).astype(np.float32))
        if rgba:
            straight = np.where(a > 1e-3, rgb / np.maximum(a, 1e-3), 0.0).clip(0, 1)
            pixels = (np.concatenate([straight, a], -1) * 255 + 0.5).astype(np.uint8)
            PIL.Image.fromarray(pixels, "RGBA").save(path)
        else:
            PIL.Image.fromarray((rgb * 255 + 0.5).astype(np.uint8)).save(path)
        frames.append(Frame(path.absolute(), camera, depth_path=depth_path))
    write_transforms(root / "transforms.json", frames, root)
    return root


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def capture(tmp_path_factory) -> Path:
    return make_capture(tmp_path_factory.mktemp("synthetic") / "capture")


@pytest.fixture(scope="module")
def reference_scene(capture, tmp_path_factory) -> Path:
    """RESUME_CONFIG trained without interruption."""
    return train.run(RESUME_CONFIG, capture, tmp_path_factory.mktemp("reference") / "scene")


def assert_same_splats(a: Path, b: Path) -> None:
    first, second = read_ply(a / "splats.ply"), read_ply(b / "splats.ply")
    assert len(first) == len(second)
    for name, value in first.tensors().items():
        assert torch.equal(value, getattr(second, name)), name


def cli(capsys, *argv) -> tuple[int, str]:
    """Run ``orbit4d`` in-process; (exit code, stderr)."""
    from orbit4d.cli import main

    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def error_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if "error" in line]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# --- training works --------------------------------------------------------------------------------------------


def test_trains_a_small_scene_and_psnr_rises(capture, tmp_path):
    config = train.TrainConfig(
        steps=300, sh_degree=1, random_init_points=500, max_gaussians=1000, background="black",
        checkpoint_every=100, psnr_samples=3, turntable_frames=4, device="cpu",
    )  # fmt: skip
    out = train.run(config, capture, tmp_path / "scene")
    report = json.loads((out / "metrics.json").read_text())
    curve = [sample["psnr"] for sample in report["psnr_vs_time"]]
    assert [s["step"] for s in report["psnr_vs_time"]] == [0, 100, 200, 300]
    assert curve[-1] > curve[0] + 8.0 and report["psnr"] > 22.0, curve
    assert report["psnr"] == pytest.approx(curve[-1])
    assert 0.7 < report["ssim"] <= 1.0
    assert report["lpips"] is None and "weights" in report["lpips_reason"]
    assert report["test_views"] == ["images/view_000.png", "images/view_008.png"]
    assert report["steps"] == 300 and report["seconds"] > 0
    assert 0 < report["num_gaussians"] <= 1000
    splats = read_ply(out / "splats.ply")
    assert len(splats) == report["num_gaussians"] and splats.sh_degree == 1
    assert (out / "splats.splat").stat().st_size == 32 * len(splats)
    assert sorted(p.name for p in (out / "renders").iterdir()) == ["images_view_000.png", "images_view_008.png"]
    assert PIL.Image.open(out / "renders" / "images_view_000.png").size == (3 * SIZE, SIZE)  # truth | render | depth
    # geometry against the capture's depth maps (test_depth_evaluation_* shows what the figure means)
    assert report["depth_abs_rel"] < 0.1 and report["depth_coverage"] > 0.8, report
    assert all("depth_abs_rel" in v for v in report["per_view"])
    import av

    with av.open(str(out / "turntable.mp4")) as video:
        assert sum(1 for _ in video.decode(video=0)) == 4
    assert read_checkpoint(checkpoint_path(out))["step"] == 300
    assert not list(tmp_path.glob(".*"))  # the staging folder was renamed into place
    # the training curve: a point per step at this length (300 points at most), loss falling; plotted
    points = report["training_curve"]
    assert [p["step"] for p in points] == list(range(1, 301))
    assert np.mean([p["loss"] for p in points[-20:]]) < np.mean([p["loss"] for p in points[:20]]) / 3
    assert PIL.Image.open(out / "training.png").size == (1000, 360)


def test_the_benchmarks_gsplat_call_follows_gsplats_conventions(capture, monkeypatch):
    """The bare loop's call of ``gsplat.rasterization`` (CUDA only) run against a stand-in with gsplat's
    conventions (pixel centres at +0.5, one [C, N, K, 3] colour tensor, packed=False, classic mode) that renders with
    orbit4d's CPU rasterizer: it must give the image of the CPU path, so that the GPU comparison compares like with
    like."""
    import gsplat

    bench = _train_vs_gsplat()

    def stand_in(means, quats, scales, opacities, colors, viewmats, Ks, width, height, sh_degree, backgrounds,
                 packed, rasterize_mode):  # fmt: skip
        assert packed is False and rasterize_mode == "classic"
        return rasterize(means, quats, scales, opacities, colors, viewmats, Ks - gsplat_centres, width, height,
                         sh_degree=sh_degree, backgrounds=backgrounds)  # fmt: skip

    gsplat_centres = torch.zeros(3, 3)
    gsplat_centres[:2, 2] = 0.5
    monkeypatch.setattr(gsplat, "rasterization", stand_in)
    scene = load_scene(capture)
    params = train.initial_splats(replace(RESUME_CONFIG, sh_degree=2), scene).parameters()
    params["shN"] = torch.randn(params["shN"].shape, generator=torch.Generator().manual_seed(3)) * 0.2
    view, background = scene.train[3], torch.tensor([0.2, 0.5, 0.9])
    K_before = view.K().clone()
    ours, _ = bench.numba_render(params, view, 2, background)
    theirs, _ = bench.gsplat_render(params, view, 2, background)
    assert torch.equal(view.K(), K_before)
    assert ours.std() > 0.01
    torch.testing.assert_close(theirs, ours, atol=1e-6, rtol=0)


def test_depth_evaluation_scores_the_true_geometry_as_exact_and_a_moved_one_as_wrong(capture):
    """evaluate_views' depth error (the capture's depth maps against the render's expected depth): zero for the
    Gaussians the capture was rendered from, the relative error of a scene pushed 5% away from every camera."""
    means, quats, scales, opacities, colors = truth_gaussians()
    truth = Splats(means, quats, torch.log(scales), torch.logit(opacities), rgb_to_sh0(colors)[:, None],
                   torch.zeros(len(means), 0, 3))  # fmt: skip
    views = load_scene(capture).test
    exact = evaluate_views(truth, views, torch.zeros(3), with_depth=True)
    assert all(r["depth_abs_rel"] < 1e-5 and r["depth_coverage"] > 0.99 for r in exact), exact
    assert all(r["psnr"] > 40 for r in exact), exact
    for view in views:  # the same scene seen from 5% further away: depths 5% larger where it still covers
        centre = torch.as_tensor(view.camera.center, dtype=torch.float32)
        farther = replace(truth, means=centre + 1.05 * (truth.means - centre), scales=truth.scales + math.log(1.05))
        (moved,) = evaluate_views(farther, [view], torch.zeros(3), with_depth=True)
        assert moved["depth_abs_rel"] == pytest.approx(0.05, abs=2e-3), moved
    assert "depth_abs_rel" not in evaluate_views(truth, views, torch.zeros(3))[0]  # only when asked


def test_depth_pictures_run_near_blue_to_far_red_over_the_background():
    from reconstruct.evaluate import depth_colors

    depth = torch.tensor([[1.0, 2.0, 3.0, 2.0]])
    alpha = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    reference = torch.linspace(1.0, 3.0, 17_000_000)  # beyond torch.quantile's 16M-element limit
    picture = depth_colors(depth, alpha, reference, torch.tensor([1.0, 1.0, 1.0]))
    near, middle, far, empty = picture[0]
    assert near[2] > near[0] and far[0] > far[2] and middle[1] > 0.8  # turbo: blue, green, red
    assert torch.equal(empty, torch.ones(3))  # nothing drawn: the background


def test_depth_maps_follow_the_downscale_and_bad_ones_are_one_line(capture, reference_scene, tmp_path, capsys):
    full, half = load_scene(capture).test[1], load_scene(capture, downscale=2).test[1]
    depth = np.load(full.depth_path)
    assert torch.equal(full.depth(), torch.from_numpy(depth))
    assert torch.equal(half.depth(), torch.from_numpy(depth[1::2, 1::2]))  # the centres of 2x2 blocks, not means
    broken = tmp_path / "broken.npy"
    broken.write_bytes(b"not numpy")
    with pytest.raises(InputError, match="broken.npy is not a readable .npy depth map"):
        replace(full, depth_path=broken).depth()
    splats = read_ply(reference_scene / "splats.ply")  # evaluation goes on without that view's depth, and says so
    (result,) = evaluate_views(splats, [replace(full, depth_path=broken)], torch.zeros(3), with_depth=True)
    assert "depth_abs_rel" not in result and "broken.npy" in capsys.readouterr().err


def test_absgrad_grows_by_absolute_gradients(capture, tmp_path):
    """--absgrad: the rasterizer sums |per-pixel gradient| into means2d.absgrad, which gsplat's strategy then reads
    (it raises without it) against its own threshold (0.0008); both runs train."""
    config = replace(RESUME_CONFIG, max_gaussians=None, background="black")
    reports = {}
    for absgrad in (False, True):
        out = train.run(replace(config, absgrad=absgrad), capture, tmp_path / str(absgrad))
        reports[absgrad] = json.loads((out / "metrics.json").read_text())
    assert reports[True]["config"]["absgrad"] and reports[True]["psnr"] > 15
    grown = [reports[a]["num_gaussians"] - config.random_init_points for a in (False, True)]
    assert grown[0] > 0 and grown[1] > 0 and grown[0] != grown[1], grown
    with pytest.raises(InputError, match="--absgrad"):
        replace(config, absgrad=True, strategy="mcmc").validate()


def perturb_poses(capture: Path, degrees: float, seed: int = 0, held_out: bool = False) -> None:
    """Turn every training camera (not the held-out 0, 8, ...; those alone when ``held_out``) of ``capture`` by
    ``degrees`` about a random axis through its centre, in transforms.json: SfM poses that are a little off."""
    from multiview.capture import read_capture

    frames = sorted(read_capture(capture).frames, key=lambda frame: frame.image_path.name)
    rng = np.random.default_rng(seed)
    moved = []
    for i, frame in enumerate(frames):
        turned = (i % 8 == 0) == held_out
        moved.append(replace(frame, camera=turn_camera(frame.camera, degrees, rng)) if turned else frame)
    write_transforms(capture / "transforms.json", moved, capture)


def turn_camera(camera, degrees: float, rng: np.random.Generator):
    """``camera`` turned by ``degrees`` about a random axis through its centre."""
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    K = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    angle = math.radians(degrees)
    turn = np.eye(4)
    turn[:3, :3] = np.eye(3) + math.sin(angle) * K + (1 - math.cos(angle)) * K @ K
    return camera.replace(cam_from_world=turn @ camera.cam_from_world)


def without_and_with(option: str, capture: Path, out: Path, **settings) -> dict[bool, dict]:
    """metrics.json of the capture trained without, then with the TrainConfig flag ``option``, by value."""
    config = train.TrainConfig(random_init_points=500, max_gaussians=2000, background="black", checkpoint_every=0,
                               psnr_samples=0, turntable_frames=0, device="cpu", **settings)  # fmt: skip
    scenes = {value: train.run(replace(config, **{option: value}), capture, out / str(value))
              for value in (False, True)}  # fmt: skip
    return {value: json.loads((scene / "metrics.json").read_text()) for value, scene in scenes.items()}


def test_pose_opt_corrects_training_poses_that_are_off(tmp_path):
    """--pose-opt on a capture whose training cameras are turned by 1.5 degrees (held-out ones exact): the splats
    fit the held-out views better (measured: 28.2 against 26.2 dB), and metrics.json says how far cameras moved."""
    capture = make_capture(tmp_path / "capture", size=64, num_views=16, depth=False)
    perturb_poses(capture, 1.5)
    reports = without_and_with("pose_opt", capture, tmp_path, steps=400, sh_degree=1)
    assert reports[True]["psnr"] > reports[False]["psnr"] + 0.6, (reports[False]["psnr"], reports[True]["psnr"])
    corrections = reports[True]["pose_corrections"]
    assert reports[False]["pose_corrections"] is None and len(corrections["per_view"]) == 14
    assert 0.05 < corrections["mean_rotation_deg"] < 1.5 and corrections["max_shift"] < 0.2  # cameras 2.5 away
    aligned = reports[True]["pose_aligned"]  # the held-out views measured again, posed to fit the splats
    assert reports[False]["pose_aligned"] is None and [v["name"] for v in aligned["per_view"]] == \
        reports[True]["test_views"]  # fmt: skip
    assert aligned["psnr"] >= reports[True]["psnr"]  # measured: 28.58 against 28.15 dB



def test_align_poses_finds_where_a_held_out_camera_really_was(tmp_path, capsys):
    """The Gaussians a capture was rendered from, its held-out cameras turned by 1.5 degrees: alignment finds the
    cameras' true poses again (the renders match the photos as they do at the true poses) and says how far it turned
    them; it moves no camera beyond its bounds (3 degrees, 5% of the distance) to flatter a poor scene; `orbit4d eval
    --align-poses` reports both sets of metrics."""
    from reconstruct.evaluate import pose_aligned_metrics

    capture = make_capture(tmp_path / "capture", size=64, num_views=16, depth=False)
    exact = load_scene(capture).test
    perturb_poses(capture, 1.5, held_out=True)
    scene = load_scene(capture)
    means, quats, scales, opacities, colors = truth_gaussians()
    sh0, shN = rgb_to_sh0(colors)[:, None], torch.zeros(len(means), 0, 3)
    truth = Splats(means, quats, scales.log(), torch.logit(opacities), sh0, shN)
    at_truth, off = (evaluate_views(truth, views, torch.zeros(3)) for views in (exact, scene.test))
    aligned = pose_aligned_metrics(truth, scene, scene.test, torch.zeros(3))
    for before, after, best in zip(off, aligned["per_view"], at_truth):
        assert before["psnr"] < 35 and after["psnr"] > best["psnr"] - 2.5, (before, after, best)
        assert after["rotation_deg"] == pytest.approx(1.5, abs=0.2)
    blurred = replace(truth, scales=truth.scales + math.log(3.0))  # a poor scene: backing away would make it sharper
    bounded = pose_aligned_metrics(blurred, scene, scene.test, torch.zeros(3))
    turned_by = 2.5 * math.radians(3.0)  # a turn about the rig's centre moves the camera too
    assert bounded["max_rotation_deg"] <= 3.0 + 1e-4 and bounded["max_shift"] <= 1.01 * (0.05 * 2.5 + turned_by)
    write_ply(tmp_path / "truth.ply", truth)
    code, err = cli(capsys, "eval", tmp_path / "truth.ply", "--capture", capture, "--out", tmp_path / "eval",
                    "--background", "black", "--align-poses")  # fmt: skip
    assert code == 0 and "poses aligned" in err, err
    measured = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert measured["pose_aligned"]["psnr"] == pytest.approx(aligned["psnr"], abs=0.01)
    assert measured["psnr"] == pytest.approx(np.mean([r["psnr"] for r in off]), abs=0.01)  # the plain ones stay


def change_training_exposures(capture: Path, seed: int = 0) -> np.ndarray:
    """Scale every training image (not the held-out 0, 8, ...) of ``capture`` by a random exposure in [0.6, 1.3]
    times a random white balance (0.85-1.15 per channel): photos from a phone's auto exposure. Returns the [V, 3]
    factors of the training views, in name order."""
    rng = np.random.default_rng(seed)
    factors = []
    for i, path in enumerate(sorted((capture / "images").glob("*.png"))):
        if i % 8:
            factors.append(rng.uniform(0.6, 1.3) * rng.uniform(0.85, 1.15, size=3))
            pixels = np.asarray(PIL.Image.open(path), dtype=np.float64) / 255.0
            PIL.Image.fromarray((np.clip(pixels * factors[-1], 0, 1) * 255 + 0.5).astype(np.uint8)).save(path)
    return np.array(factors)


def test_appearance_learns_each_training_views_exposure(tmp_path):
    """--appearance on a capture whose training photos have other exposures and white balances (held-out ones as
    rendered): the gains it learns follow the photos' (relative to their mean, which it keeps as the scene's
    colours), and the held-out views fit better once their own exposure is matched (cc_psnr, measured on three
    captures: +1.1 to +1.9 dB; plain PSNR +0.2 to +1.6, as the scene keeps the training photos' mean exposure)."""
    capture = make_capture(tmp_path / "capture", size=64, num_views=16, depth=False)
    factors = change_training_exposures(capture)
    reports = without_and_with("appearance", capture, tmp_path, steps=800, sh_degree=0)
    assert reports[True]["cc_psnr"] > reports[False]["cc_psnr"] + 0.5, [r["cc_psnr"] for r in reports.values()]
    corrections = reports[True]["color_corrections"]
    assert reports[False]["color_corrections"] is None and len(corrections["per_view"]) == 14
    assert corrections["held_out"].startswith("mean colours")  # these exposures jump from view to view
    gains = np.array([view["gain"] for view in corrections["per_view"]])
    relative = factors.mean(1) / factors.mean()
    assert np.corrcoef(gains, relative)[0, 1] > 0.9 and np.abs(gains.mean() - 1) < 0.02, (gains, relative)


def test_held_out_views_take_their_neighbours_colors_only_where_colors_follow_the_camera_path():
    """A video's auto exposure drifts along the path: a held-out view gets its nearest training views' correction.
    Internet photos' exposures jump: it gets none (the mean colours), which is then the better guess."""
    angles = np.linspace(0, 2 * np.pi, 24, endpoint=False)
    centres = np.stack([np.cos(angles), np.sin(angles), np.zeros_like(angles)], 1)
    train_views, held_out = np.arange(24) % 8 != 0, np.arange(24) % 8 == 0
    drift = torch.zeros(24, 3, 4)
    drift[:, 0, 0] = drift[:, 1, 1] = drift[:, 2, 2] = 0.3 * torch.from_numpy(np.sin(angles)).float()  # exposure
    colors, rule = held_out_colors(centres[train_views], drift[train_views], centres[held_out])
    assert rule["held_out"].startswith("interpolated") and rule["neighbour_error"] < rule["mean_error"] / 5
    assert torch.allclose(torch.stack(colors), drift[held_out], atol=0.03)
    jumps = 0.3 * torch.randn(24, 3, 4, generator=torch.Generator().manual_seed(0))
    colors, rule = held_out_colors(centres[train_views], jumps[train_views], centres[held_out])
    assert colors is None and rule["held_out"].startswith("mean colours")


@pytest.mark.parametrize("option", ["pose_opt", "appearance"])
def test_training_view_corrections_resume_exactly(capture, tmp_path, option):
    """Interrupted after the corrections started moving (step 15 of 60; poses wait for the first 20%), resumed: the
    same splats and corrections as an uninterrupted run."""
    config = replace(RESUME_CONFIG, **{option: True})
    key = "poses" if option == "pose_opt" else option
    straight = train.run(config, capture, tmp_path / "straight")

    def interrupt(state):
        if state.step == 15:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train.run(config, capture, tmp_path / "resumed", on_step=interrupt)
    resumed = train.run(config, capture, tmp_path / "resumed", resume=True)
    assert_same_splats(straight, resumed)
    corrections = [read_checkpoint(checkpoint_path(out))[key] for out in (straight, resumed)]
    assert corrections[0].abs().max() > 0 and torch.equal(corrections[0], corrections[1])


def test_antialiased_training_keeps_its_quality_at_a_quarter_resolution(tmp_path):
    """--antialiased (gsplat's rasterize_mode): trains, evaluates in that mode, and its splats seen at 1/4 of the
    training resolution match the downscaled photos where classic rasterization of them inflates every small
    Gaussian by the 0.3 px^2 dilation (measured: 30.4 against 20.8 dB)."""
    capture = make_capture(tmp_path / "capture", size=64, depth=False)
    config = train.TrainConfig(steps=300, sh_degree=1, random_init_points=500, max_gaussians=2000,
                               background="black", checkpoint_every=0, psnr_samples=0, turntable_frames=0,
                               device="cpu", antialiased=True)  # fmt: skip
    out = train.run(config, capture, tmp_path / "scene")
    report = json.loads((out / "metrics.json").read_text())
    splats = read_ply(out / "splats.ply")
    full = load_scene(capture).test
    assert report["psnr"] > 25.0 and report["config"]["antialiased"] is True
    mean = lambda results: sum(r["psnr"] for r in results) / len(results)  # noqa: E731
    assert report["psnr"] == pytest.approx(mean(evaluate_views(splats, full, torch.zeros(3), antialiased=True)))
    quarter = load_scene(capture, downscale=4).test
    antialiased = mean(evaluate_views(splats, quarter, torch.zeros(3), antialiased=True))
    classic = mean(evaluate_views(splats, quarter, torch.zeros(3)))
    assert antialiased > report["psnr"] - 2.0 and antialiased > classic + 5.0, (report["psnr"], antialiased, classic)


@pytest.mark.parametrize("antialiased", [False, True])
def test_pytorch_and_numba_backends_train_alike(capture, tmp_path, antialiased):
    """Without numba the CPU trains with the pure-PyTorch twin: the same training, float32 rounding apart (SH degree
    3 from step 20, refinement at step 20), classic or antialiased."""
    config = replace(RESUME_CONFIG, sh_degree=3, background="black", antialiased=antialiased)
    reports = {}
    for backend in ("torch", "numba"):
        out = train.run(replace(config, backend=backend), capture, tmp_path / backend)
        reports[backend] = json.loads((out / "metrics.json").read_text())
    assert reports["torch"]["num_gaussians"] == reports["numba"]["num_gaussians"] > config.random_init_points
    assert reports["torch"]["psnr"] == pytest.approx(reports["numba"]["psnr"], abs=0.05)
    assert reports["numba"]["psnr"] > 18


def test_masks_and_downscale(tmp_path):
    """RGBA images: alpha becomes the mask; --downscale 2 halves images and intrinsics once at load."""
    capture = make_capture(tmp_path / "capture", num_views=4, rgba=True)
    scene = load_scene(capture, downscale=2, test_every=8)
    assert len(scene.train) == 3 and [v.name for v in scene.test] == ["images/view_000.png"]
    view = scene.train[0]
    assert view.image.shape == (SIZE // 2, SIZE // 2, 3) and view.mask.shape == (SIZE // 2, SIZE // 2, 1)
    assert view.camera.width == SIZE // 2 and view.camera.fx == pytest.approx(scene.capture.frames[1].camera.fx / 2)
    assert view.mask.min() == 0 and view.mask.max() == 255
    masked = [Frame(f.image_path, f.camera, f.image_path.with_name(f"mask_{i}.png"))
              for i, f in enumerate(scene.capture.frames)]  # fmt: skip
    for frame in masked:
        PIL.Image.fromarray(np.full((SIZE, SIZE), 255, np.uint8)).save(frame.mask_path)
    write_transforms(capture / "transforms.json", masked, capture)
    assert (load_scene(capture, downscale=2).train[0].mask == 255).all()  # mask_path wins over alpha
    config = replace(RESUME_CONFIG, steps=10, downscale=2, background="white")
    report = json.loads((train.run(config, capture, tmp_path / "scene") / "metrics.json").read_text())
    assert report["image_size"] == [SIZE // 2, SIZE // 2]


# --- resume ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["exception", "sigint", "sigterm"])
def test_resume_after_interrupt_matches_uninterrupted_run(capture, reference_scene, tmp_path, how):
    out = tmp_path / "scene"

    def interrupt(state):
        if state.step == 15:  # mid-way through the gradient window of the refinement at step 20
            if how == "exception":
                raise KeyboardInterrupt
            # the handler lets the step finish, then the loop stops (SIGTERM: a scheduler's stop, the same way)
            os.kill(os.getpid(), signal.SIGINT if how == "sigint" else signal.SIGTERM)

    with pytest.raises(KeyboardInterrupt):
        train.run(RESUME_CONFIG, capture, out, on_step=interrupt)
    assert not out.exists()
    partial = tmp_path / ".scene.partial"
    assert read_checkpoint(checkpoint_path(partial))["step"] == 15
    with pytest.raises(OutputExistsError, match="--resume"):
        train.run(RESUME_CONFIG, capture, out)
    train.run(RESUME_CONFIG, capture, out, resume=True)
    assert not partial.exists()
    assert_same_splats(reference_scene, out)
    curve = json.loads((out / "metrics.json").read_text())["training_curve"]  # kept across the resume
    assert [p["step"] for p in curve] == list(range(1, RESUME_CONFIG.steps + 1))


def test_resume_after_sigkill_matches_uninterrupted_run(capture, reference_scene, tmp_path):
    """A SIGKILLed run resumes from its last on-disk checkpoint (atomic writes: never a torn file)."""
    out = tmp_path / "scene"
    script = (
        "import sys, time, torch; from pathlib import Path; from dataclasses import replace;"
        "import tests.test_train as t;"
        "torch.set_num_threads(1);"
        "config = replace(t.RESUME_CONFIG, checkpoint_every=10);"
        "t.train.run(config, Path(sys.argv[1]), Path(sys.argv[2]), on_step=lambda s: time.sleep(0.1))"
    )
    process = subprocess.Popen([sys.executable, "-c", script, str(capture), str(out)], cwd=REPO,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    checkpoint = checkpoint_path(tmp_path / ".scene.partial")
    deadline = time.monotonic() + 120
    while not checkpoint.is_file() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL and not out.exists()
    step = read_checkpoint(checkpoint)["step"]
    assert 10 <= step < 60 and step % 10 == 0
    train.run(RESUME_CONFIG, capture, out, resume=True)
    assert_same_splats(reference_scene, out)


def test_a_run_killed_before_its_first_checkpoint_blocks_nothing(capture, tmp_path):
    """SIGKILL before any checkpoint leaves a .partial folder with nothing to resume: a plain rerun starts over
    (it said "pass --resume", and --resume said there was no checkpoint)."""
    partial = tmp_path / ".scene.partial"
    (partial / "renders").mkdir(parents=True)
    with pytest.raises(InputError, match="no checkpoint to resume"):
        train.run(RESUME_CONFIG, capture, tmp_path / "scene", resume=True)
    train.run(replace(RESUME_CONFIG, steps=5), capture, tmp_path / "scene")
    assert (tmp_path / "scene" / "splats.ply").is_file() and not partial.exists()


def test_resume_a_finished_scene_trains_further(capture, reference_scene, tmp_path):
    import shutil

    out = tmp_path / "scene"
    shutil.copytree(reference_scene, out)
    (out / "eval").mkdir()
    (out / "eval" / "notes.txt").write_text("measured before")
    train.run(replace(RESUME_CONFIG, steps=70), capture, out, resume=True)
    report = json.loads((out / "metrics.json").read_text())
    assert report["steps"] == 70 and read_checkpoint(checkpoint_path(out))["step"] == 70
    assert (out / "eval" / "notes.txt").read_text() == "measured before"  # what was added to the scene stays
    assert not list(tmp_path.glob(".*"))

    def interrupt(state):
        if state.step == 75:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):  # further still, interrupted: resumed from the .partial folder
        train.run(replace(RESUME_CONFIG, steps=80), capture, out, resume=True, on_step=interrupt)
    train.run(replace(RESUME_CONFIG, steps=80), capture, out, resume=True)
    assert json.loads((out / "metrics.json").read_text())["steps"] == 80
    assert (out / "eval" / "notes.txt").read_text() == "measured before" and not list(out.glob(".*"))


def test_a_failed_resume_leaves_the_finished_scene_as_it_was(capture, reference_scene, tmp_path, monkeypatch):
    """Training a finished scene further fails while writing its outputs: every file of the scene is as it was, and
    the longer run's checkpoint waits beside it for the next --resume."""
    import shutil

    out = tmp_path / "scene"
    shutil.copytree(reference_scene, out)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def failing_export(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(train, "_export", failing_export)
    with pytest.raises(OSError, match="No space left"):
        train.run(replace(RESUME_CONFIG, steps=70), capture, out, resume=True)
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert read_checkpoint(checkpoint_path(tmp_path / ".scene.partial"))["step"] == 70
    monkeypatch.undo()
    train.run(replace(RESUME_CONFIG, steps=70), capture, out, resume=True)  # takes up the partial run: nothing to do
    assert json.loads((out / "metrics.json").read_text())["steps"] == 70 and not list(tmp_path.glob(".*"))


def test_resume_reads_checkpoints_written_before_the_curve_and_view_corrections(capture, reference_scene, tmp_path):
    """A checkpoint of the earlier layout (no training curve, no pose or colour corrections) still resumes."""
    import shutil

    out = tmp_path / "scene"
    shutil.copytree(reference_scene, out)
    payload = read_checkpoint(checkpoint_path(out))
    for key in ("curve", "poses", "appearance"):
        del payload[key]
    torch.save(payload, checkpoint_path(out))
    train.run(replace(RESUME_CONFIG, steps=65), capture, out, resume=True)
    report = json.loads((out / "metrics.json").read_text())
    assert report["steps"] == 65 and [p["step"] for p in report["training_curve"]] == [61, 62, 63, 64, 65]
    assert report["pose_corrections"] is None and report["color_corrections"] is None


def test_a_step_reads_from_the_device_once(capture, monkeypatch):
    """On CUDA each read of a tensor's value waits for every queued kernel, and a small scene's step is bound by
    launches: the step's own bookkeeping (loss, PSNR and the NaN guard) reads once. Not counted: the rasterizer and
    the densifier (forward and backward; gsplat's on CUDA, the same in any loop) and the view order (drawn on the
    host)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    reads, paused = [], [False]
    waits = (torch.ops.aten._local_scalar_dense.default, torch.ops.aten.nonzero.default)

    class Reads(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func in waits and not paused[0] and torch._C._current_autograd_node() is None:  # not in backward
                reads.append(str(func))
            return func(*args, **(kwargs or {}))

    def unwatched(function):
        def call(*args, **kwargs):
            paused[0] = True
            try:
                return function(*args, **kwargs)
            finally:
                paused[0] = False

        return call

    tolist = torch.Tensor.tolist

    def counted_tolist(tensor):
        if not paused[0]:
            reads.append("tolist")
        return tolist(tensor)

    config = replace(RESUME_CONFIG, steps=30)
    scene = load_scene(capture)
    state = train._fresh_state(config, scene, torch.device("cpu"))
    densifier = train._densifier(config)
    monkeypatch.setattr(torch.Tensor, "tolist", counted_tolist)
    for owner, name in ((train, "render_tensors"), (train, "_next_view"), (densifier, "step_pre_backward"),
                        (densifier, "step_post_backward")):  # fmt: skip
        monkeypatch.setattr(owner, name, unwatched(getattr(owner, name)))
    with Reads():
        for _ in range(25):  # past a refinement (step 20)
            loss, step_psnr = train.train_step(config, scene.train, state, densifier, torch.device("cpu"))
            state.step += 1
    assert reads == ["tolist"] * 25
    assert math.isfinite(loss) and 0 < loss < 1 and 5 < step_psnr < 60


def _train_vs_gsplat():
    """bench/train_vs_gsplat.py as a module (bench/ is not a package)."""
    spec = importlib.util.spec_from_file_location("train_vs_gsplat", REPO / "bench" / "train_vs_gsplat.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_the_benchmarks_minimal_loop_trains_as_orbit4d_does(capture):
    """bench/train_vs_gsplat.py holds orbit4d's CUDA path to a bare loop around ``gsplat.rasterization``; that is a
    fair test only if the bare loop is the same training. On the CPU both call the same kernels, so they must end
    with the same Gaussians and held-out PSNR: same initialisation, view order, backgrounds, SH warm-up, learning
    rates, refinement (step 20, with the cap) and evaluation."""
    bench = _train_vs_gsplat()
    config = RESUME_CONFIG
    ours, minimal = bench.orbit4d_run(config, capture), bench.minimal_loop(config, capture)
    assert ours["num_gaussians"] == minimal["num_gaussians"] != config.random_init_points  # refined
    assert ours["psnr"] == pytest.approx(minimal["psnr"], abs=1e-3)
    assert ours["ms_per_step"] > 0 and minimal["ms_per_step"] > 0


# --- failures --------------------------------------------------------------------------------------------------


def test_nan_stops_with_one_line_and_keeps_earlier_outputs(capture, reference_scene, tmp_path, capsys, monkeypatch):
    """Through the CLI: --overwrite of a finished scene diverges -> exit 1, one line, old scene untouched."""
    import shutil

    out = tmp_path / "scene"
    shutil.copytree(reference_scene, out)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    original_step = train.train_step

    def poisoned_step(config, views, state, *args):
        result = original_step(config, views, state, *args)
        if state.step == 14:  # the step just run is step 15 (1-based) once the loop counts it
            state.params["means"].data[0, 0] = float("nan")
        return result

    monkeypatch.setattr(train, "train_step", poisoned_step)
    code, err = cli(capsys, "train", capture, "--out", out, "--steps", "40", "--overwrite",
                    "--max-gaussians", "450", "--sh-degree", "1", "--device", "cpu")  # fmt: skip
    assert code == 1
    line = error_line(err)
    assert "diverged at step 16" in line and "means" in line and "--lr-scale" in line
    assert "--resume" not in line  # no checkpoint was written: nothing to resume from
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    assert not (tmp_path / ".scene.partial").exists()  # no checkpoint was due: nothing to resume, nothing left


def test_nan_keeps_the_last_good_checkpoint(capture, tmp_path, monkeypatch):
    def poison(state):
        if state.step == 25:
            state.params["opacities"].data[3] = float("inf")

    config = replace(RESUME_CONFIG, checkpoint_every=10)
    with pytest.raises(train.TrainError, match=r"step 26: the opacities .* checkpoint \(step 20\) is kept.*--resume"):
        train.run(config, capture, tmp_path / "scene", on_step=poison)
    payload = read_checkpoint(checkpoint_path(tmp_path / ".scene.partial"))
    assert payload["step"] == 20 and all(torch.isfinite(p).all() for p in payload["params"].values())


def test_out_of_memory_is_one_line(capture, tmp_path, monkeypatch):
    def exhausted(*args):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory")

    monkeypatch.setattr(train, "train_step", exhausted)
    with pytest.raises(train.TrainError, match="out of memory at step 1 with 300 Gaussians.*--downscale 2"):
        train.run(RESUME_CONFIG, capture, tmp_path / "scene")
    monkeypatch.setattr(train, "train_step", lambda *a: 1 / 0)
    with pytest.raises(ZeroDivisionError):  # other errors are bugs: not disguised
        train.run(RESUME_CONFIG, capture, tmp_path / "scene2")


def test_bad_inputs_are_one_line(tmp_path, capsys, capture):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "transforms.json").write_text(json.dumps({"fl_x": 10, "fl_y": 10, "cx": 8, "cy": 8, "w": 16, "h": 16,
                                                       "frames": [{"file_path": "images/a.png",
                                                                   "transform_matrix": np.eye(4).tolist()}]}))
    code, err = cli(capsys, "train", empty, "--out", tmp_path / "s1")
    assert code == 1 and "none of its 1 images exist" in error_line(err) and "transforms.json" in error_line(err)
    code, err = cli(capsys, "train", tmp_path / "nowhere", "--out", tmp_path / "s2")
    assert code == 1 and "nowhere" in error_line(err)
    code, err = cli(capsys, "train", capture, "--out", tmp_path / "s3", "--resume")
    assert code == 1 and "no checkpoint to resume" in error_line(err)
    code, err = cli(capsys, "train", capture, "--out", tmp_path / "s4", "--downscale", "0")
    assert code == 1 and "--downscale 0" in error_line(err)
    code, err = cli(capsys, "train", capture, "--out", tmp_path / "s5", "--background", "pink")
    assert code == 1 and "--background pink" in error_line(err)
    code, err = cli(capsys, "train", capture, "--out", tmp_path / "s6", "--test-every", "-1")
    assert code == 1 and "--test-every -1" in error_line(err)
    code, err = cli(capsys, "train", capture, "--out", tmp_path / "s7", "--test-every", "1")
    assert code == 1 and "--test-every 1 holds out every view" in error_line(err)
    code, err = cli(capsys, "train", capture, "--out", tmp_path / "s8", "--downscale", "5")  # 32 px -> 6
    assert code == 1 and "--downscale 5" in error_line(err) and "at most --downscale 4" in error_line(err)
    code, err = cli(capsys, "train", capture / "transforms.json", "--out", tmp_path / "s9", "--steps", "1",
                    "--downscale", "2")  # fmt: skip
    assert code == 0, err  # the capture's transforms.json stands for its folder, as in nerfstudio's --data
    assert not any(tmp_path.glob("s[1-8]")) and not any(tmp_path.glob(".s*"))


def test_an_out_that_is_or_holds_an_input_is_refused_and_the_input_kept(capture, reference_scene, tmp_path, capsys):
    """--overwrite replaces the output folder: never the capture, the photos or the scene being read (data loss
    found by a survey of bad inputs), and a file in the way of --out is one line, not an internal error."""
    import shutil

    own = shutil.copytree(capture, tmp_path / "work" / "capture")
    scene = shutil.copytree(reference_scene, tmp_path / "work" / "scene")
    files = sorted(p for p in (tmp_path / "work").rglob("*"))
    for argv in (["train", own, "--out", own], ["train", own, "--out", tmp_path / "work"],
                 ["eval", scene, "--out", scene], ["video-to-3d", own / "images", "--out", tmp_path / "work"],
                 ["capture", own / "images", "--out", own / "images"], ["import", own, "--out", tmp_path]):  # fmt: skip
        code, err = cli(capsys, *argv, "--overwrite")
        assert code == 1 and "would replace the input" in error_line(err), (argv, err)
    assert sorted(p for p in (tmp_path / "work").rglob("*")) == files
    (tmp_path / "afile").write_text("in the way")
    for argv in (["train", own, "--out", tmp_path / "afile" / "scene"], ["eval", scene, "--out", tmp_path / "afile"],
                 ["import", own, "--out", tmp_path / "afile" / "capture"]):  # fmt: skip
        code, err = cli(capsys, *argv)
        assert code == 1 and "afile" in error_line(err) and "--out" in error_line(err), (argv, err)


def test_images_as_cameras_store_them_and_masks_that_hide_everything(tmp_path, capsys):
    """A photo its camera stored on its side, upright by its EXIF orientation, loads upright (as orbit4d capture
    reads it); masks that keep nothing (an inverted convention) stop with one line, some empty ones warn."""
    from multiview.capture import read_capture

    capture = make_capture(tmp_path / "capture", num_views=4)
    frames = read_capture(capture).frames
    upright = np.asarray(PIL.Image.open(frames[1].image_path))
    wide = [Frame(f.image_path, f.camera.replace(width=SIZE + 8, K=f.camera.K)) for f in frames]
    for frame in wide:  # 40 x 32 upright; the first stored 32 x 40 with orientation 6 (display turned 90° clockwise)
        pixels = np.pad(np.asarray(PIL.Image.open(frame.image_path)), ((0, 0), (0, 8), (0, 0)))
        PIL.Image.fromarray(pixels).save(frame.image_path)
    stored = PIL.Image.open(wide[0].image_path).transpose(PIL.Image.Transpose.ROTATE_90)
    exif = PIL.Image.Exif()
    exif[PIL.ExifTags.Base.Orientation] = 6
    stored.save(wide[0].image_path, exif=exif)
    write_transforms(capture / "transforms.json", wide, capture)
    views = load_scene(capture, test_every=0).train
    assert views[0].image.shape == (SIZE, SIZE + 8, 3)
    assert np.array_equal(views[1].image.numpy()[:, :SIZE], upright)
    assert np.array_equal(views[0].image.numpy(), np.asarray(PIL.Image.open(wide[0].image_path).transpose(
        PIL.Image.Transpose.ROTATE_270)))  # fmt: skip

    masked = [Frame(f.image_path, f.camera, f.image_path.with_name(f"mask_{i}.png")) for i, f in enumerate(wide)]
    for frame in masked:
        PIL.Image.fromarray(np.zeros((SIZE, SIZE + 8), np.uint8)).save(frame.mask_path)
    write_transforms(capture / "transforms.json", masked, capture)
    with pytest.raises(InputError, match="every view's mask is empty.*invert them"):
        load_scene(capture)
    PIL.Image.fromarray(np.full((SIZE, SIZE + 8), 255, np.uint8)).save(masked[1].mask_path)
    capsys.readouterr()
    assert len(load_scene(capture).train) == 3 and "3 of 4 masks are empty" in " ".join(capsys.readouterr().err.split())


def test_16_bit_greyscale_photos_train_on_their_values(tmp_path):
    """16-bit greyscale PNGs are rescaled to 8 bits as orbit4d capture reads them (PIL's convert clipped every pixel
    to white: a capture that trained on blank images and reported 67 dB colour-corrected)."""
    from multiview.capture import read_capture

    capture = make_capture(tmp_path / "capture", num_views=2)
    path = read_capture(capture).frames[0].image_path
    grey = np.asarray(PIL.Image.open(path).convert("L"), dtype=np.uint16)
    PIL.Image.fromarray(grey * 257).save(path)  # mode I;16
    assert PIL.Image.open(path).mode.startswith("I")
    view = load_scene(capture, test_every=0).train[0]
    assert np.abs(view.image.numpy().astype(int) - grey[..., None]).max() <= 1


def test_points_too_far_for_float32_are_one_line(tmp_path):
    from multiview.capture import write_points_ply

    capture = make_capture(tmp_path / "capture", num_views=4)
    points = np.random.default_rng(0).normal(size=(20, 3))
    points[3] = 1e30  # an SfM outlier past float32's squares
    write_points_ply(capture / "points3D.ply", points, None)
    with pytest.raises(InputError, match=r"points reach 1e\+30.*points3D.ply"):
        train.run(replace(RESUME_CONFIG, steps=1), capture, tmp_path / "scene")
    assert not list(tmp_path.glob("*scene*"))


def test_test_every_zero_trains_and_evaluates_on_every_view(capture, tmp_path, capsys):
    code, err = cli(capsys, "train", capture, "--out", tmp_path / "scene", "--steps", "5", "--sh-degree", "0",
                    "--device", "cpu", "--test-every", "0")  # fmt: skip
    assert code == 0, err
    report = json.loads((tmp_path / "scene" / "metrics.json").read_text())
    assert report["test_views"] == [] and report["evaluated_on"].startswith("train") and len(report["per_view"]) == 12
    assert "PSNR / SSIM (train)" in err


# --- the densifier on CPU --------------------------------------------------------------------------------------


def test_default_strategy_runs_on_cpu_with_reset_and_cap():
    """gsplat's DefaultStrategy grows and prunes CPU tensors through ops; Densifier adds the reset and the cap."""
    torch.manual_seed(0)
    cameras = orbit(4, (20.0,), radius=2.5, fov_deg=40.0, width=24, height=24)
    splats = Splats(torch.randn(200, 3) * 0.3, torch.randn(200, 4), torch.full((200, 3), -2.5),
                    torch.zeros(200), torch.randn(200, 1, 3), torch.zeros(200, 3, 3))  # fmt: skip
    params = splats.parameters()
    optimizers = train.make_optimizers(train.TrainConfig(), params, 1.0)
    from gsplat.strategy import DefaultStrategy

    strategy = DefaultStrategy(refine_start_iter=10, refine_stop_iter=300, refine_every=10, reset_every=100,
                               grow_grad2d=1e-6)  # everything qualifies  # fmt: skip
    densifier = Densifier(strategy, max_gaussians=500)
    densifier.strategy.check_sanity(params, optimizers)
    state = densifier.initialize_state(scene_scale=1.0)
    sizes = []
    for step in range(101):
        camera = cameras[step % 4]
        image, _, meta = train.render_tensors(
            params, torch.tensor(camera.cam_from_world, dtype=torch.float32),
            torch.tensor(camera.K, dtype=torch.float32), 24, 24, 1, torch.zeros(3),
        )
        densifier.step_pre_backward(params, optimizers, state, step, meta)
        image.mean().backward()
        for optimizer in optimizers.values():
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        densifier.step_post_backward(params, optimizers, state, step, meta)
        sizes.append(len(params["means"]))
        assert all(len(p) == sizes[-1] for p in params.values()) and len(state["grad2d"]) == sizes[-1]
        for name, optimizer in optimizers.items():  # optimizer state stays aligned with the parameters
            assert optimizer.state[params[name]]["exp_avg"].shape == params[name].shape
    assert sizes[10] == 200 and sizes[20] > 200  # first refinement after step 10
    assert max(sizes) == 500  # capped
    assert torch.sigmoid(params["opacities"]).max() <= 0.01 + 1e-6  # reset at step 100 (gsplat 1.5.3 skips it)


def test_strategy_schedule_scales_with_steps():
    full = default_strategy(30_000)
    schedule = (full.refine_start_iter, full.refine_stop_iter, full.refine_every, full.reset_every)
    assert schedule == (500, 15_000, 100, 3000)
    fast = default_strategy(7000)  # start, stop and reset scale; new Gaussians still get 100 steps to settle
    assert (fast.refine_start_iter, fast.refine_stop_iter, fast.refine_every, fast.reset_every) == (117, 3500, 100, 1000)
    short = default_strategy(300)
    assert short.refine_every == 10 and short.refine_start_iter == 10 and short.refine_stop_iter == 150
    assert short.reset_every == 100


def test_learning_rates_follow_3dgs():
    config = train.TrainConfig(steps=1000)
    assert train.means_learning_rate(config, 0, 2.0) == pytest.approx(3.2e-4)
    assert train.means_learning_rate(config, 500, 2.0) == pytest.approx(3.2e-5)
    assert train.means_learning_rate(config, 1000, 2.0) == pytest.approx(3.2e-6)
    splats = Splats(torch.zeros(1, 3), torch.ones(1, 4), torch.zeros(1, 3), torch.zeros(1), torch.zeros(1, 1, 3),
                    torch.zeros(1, 15, 3))  # fmt: skip
    rates = {k: o.param_groups[0]["lr"] for k, o in train.make_optimizers(config, splats.parameters(), 2.0).items()}
    assert rates == pytest.approx({"means": 3.2e-4, "scales": 5e-3, "quats": 1e-3, "opacities": 5e-2,
                                   "sh0": 2.5e-3, "shN": 1.25e-4})  # fmt: skip
    assert train.TrainConfig.preset("fast").steps == 7000
    with pytest.raises(InputError, match="unknown preset"):
        train.TrainConfig.preset("slow")


# --- command line ----------------------------------------------------------------------------------------------


def test_help_stays_light():
    code = (
        "import sys, argparse; from orbit4d import train_cmd; p = argparse.ArgumentParser();"
        "train_cmd.add_parsers(p.add_subparsers());"
        "print(','.join(m for m in ('numpy', 'torch', 'gsplat', 'rich', 'reconstruct') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == ""
    from orbit4d.train_cmd import PRESET_NAMES

    assert PRESET_NAMES == tuple(train.PRESETS)


def test_cli_train_and_resume(capture, tmp_path, capsys):
    out = tmp_path / "scene"
    code, err = cli(capsys, "train", capture, "--out", out, "--steps", "20", "--sh-degree", "0",
                    "--max-gaussians", "400", "--background", "black", "--device", "cpu", "--antialiased",
                    "--appearance")  # fmt: skip
    assert code == 0, err
    report = json.loads((out / "metrics.json").read_text())
    assert report["steps"] == 20 and report["config"]["background"] == "black" and report["config"]["antialiased"]
    assert len(report["color_corrections"]["per_view"]) == 10 and "appearance (exposure gains" in err
    code, err = cli(capsys, "train", capture, "--out", out)
    assert code == 1 and "--resume" in error_line(err)
    code, err = cli(capsys, "train", capture, "--out", out, "--resume", "--steps", "25")
    assert code == 0, err
    report = json.loads((out / "metrics.json").read_text())  # the checkpoint's settings, the new step count
    assert report["steps"] == 25 and report["config"]["sh_degree"] == 0 and report["config"]["max_gaussians"] == 400
    assert report["config"]["antialiased"] and report["config"]["appearance"]  # resumed as it was trained


def test_eval_measures_a_scene_as_training_did_and_any_ply(capture, reference_scene, tmp_path, capsys):
    """orbit4d eval SCENE: the held-out metrics training reported (capture, split and settings from the scene), and
    the same renders; a bare .ply with --capture and --out, here at --downscale 2; bad inputs one line each."""
    import shutil

    scene = tmp_path / "scene"
    shutil.copytree(reference_scene, scene)
    code, err = cli(capsys, "eval", scene)
    assert code == 0, err
    trained, measured = (json.loads((folder / "metrics.json").read_text()) for folder in (scene, scene / "eval"))
    for key in ("psnr", "ssim", "cc_psnr"):
        assert measured[key] == pytest.approx(trained[key], abs=1e-6), key
    assert measured["test_views"] == trained["test_views"] and measured["num_gaussians"] == trained["num_gaussians"]
    renders = [sorted(p.name for p in (folder / "renders").iterdir()) for folder in (scene, scene / "eval")]
    assert renders[0] == renders[1] == ["images_view_000.png", "images_view_008.png"]
    code, err = cli(capsys, "eval", scene / "splats.ply", "--capture", capture, "--out", tmp_path / "half",
                    "--downscale", "2")  # fmt: skip
    assert code == 0, err
    half = json.loads((tmp_path / "half" / "metrics.json").read_text())
    assert half["image_size"] == [SIZE // 2, SIZE // 2] and half["sh_degree"] == 2 and len(half["per_view"]) == 2
    code, err = cli(capsys, "eval", scene)
    assert code == 1 and "--overwrite" in error_line(err)
    code, err = cli(capsys, "eval", scene / "splats.ply", "--capture", capture)
    assert code == 1 and "--overwrite" in error_line(err)  # a scene's .ply is measured into SCENE/eval, as the scene
    bare = tmp_path / "bare.ply"
    bare.write_bytes((scene / "splats.ply").read_bytes())
    code, err = cli(capsys, "eval", bare, "--capture", capture)
    assert code == 1 and "pass --out" in error_line(err)
    code, err = cli(capsys, "eval", tmp_path / "nowhere.ply", "--capture", capture, "--out", tmp_path / "n")
    assert code == 1 and "nowhere.ply does not exist" in error_line(err)
    code, err = cli(capsys, "eval", scene, "--out", tmp_path / "bg", "--background", "random")
    assert code == 1 and "--background random" in error_line(err)
    broken = tmp_path / "broken.ply"
    broken.write_bytes((scene / "splats.ply").read_bytes()[:500])
    code, err = cli(capsys, "eval", broken, "--capture", capture, "--out", tmp_path / "broken")
    assert code == 1 and "broken.ply" in error_line(err)
    assert not (tmp_path / "broken").exists() and not (tmp_path / "bg").exists() and not list(tmp_path.glob(".*"))
    empty = tmp_path / "empty.ply"
    write_ply(empty, read_ply(scene / "splats.ply").select(torch.zeros(0, dtype=torch.long)))
    code, err = cli(capsys, "eval", empty, "--capture", capture, "--out", tmp_path / "empty")
    assert code == 1 and "empty.ply holds no Gaussians" in error_line(err)
    (tmp_path / "listed").mkdir()
    (tmp_path / "listed" / "metrics.json").write_text("[]")
    code, err = cli(capsys, "eval", tmp_path / "listed", "--capture", capture)
    assert code == 1 and "metrics.json is not a scene's metrics" in error_line(err)
    code, err = cli(capsys, "eval", scene / "splats.ply", "--capture", capture, "--out", tmp_path / "all",
                    "--test-every", "1", "--downscale", "4")  # fmt: skip
    every = json.loads((tmp_path / "all" / "metrics.json").read_text())
    assert code == 0 and len(every["per_view"]) == len(every["test_views"]) == 12, err
    assert every["evaluated_on"].startswith("all") and "PSNR / SSIM (all)" in err


def test_eval_applies_the_colour_corrections_a_scene_was_trained_with(tmp_path, capsys):
    """A scene trained with --appearance on photos whose exposure drifts round the orbit is measured again as
    training measured it, its held-out views in their neighbours' colours (from metrics.json), and so is its splats.ply
    (the metrics.json beside it); a bare .ply carries no corrections and is measured in the mean colours, which here
    score lower."""
    from multiview.capture import read_capture

    capture = make_capture(tmp_path / "capture")
    for frame in read_capture(capture).frames:  # brighter on one side of the orbit, darker on the other
        gain = 1.0 + 0.3 * frame.camera.center[0] / np.linalg.norm(frame.camera.center[:2])
        pixels = np.asarray(PIL.Image.open(frame.image_path), dtype=np.float64) / 255.0
        PIL.Image.fromarray((np.clip(pixels * gain, 0, 1) * 255 + 0.5).astype(np.uint8)).save(frame.image_path)
    config = replace(RESUME_CONFIG, steps=150, appearance=True, background="black")
    scene = train.run(config, capture, tmp_path / "scene")
    code, err = cli(capsys, "eval", scene)
    assert code == 0, err
    trained, measured = (json.loads((folder / "metrics.json").read_text()) for folder in (scene, scene / "eval"))
    assert trained["color_corrections"]["held_out"].startswith("interpolated")
    assert measured["color_corrections"]["held_out"] == trained["color_corrections"]["held_out"]
    assert measured["psnr"] == pytest.approx(trained["psnr"], abs=1e-5)
    code, err = cli(capsys, "eval", scene / "splats.ply", "--overwrite")  # a scene's .ply: the scene's metrics.json
    assert code == 0, err
    again = json.loads((scene / "eval" / "metrics.json").read_text())
    assert again["color_corrections"]["held_out"] == trained["color_corrections"]["held_out"]
    assert again["psnr"] == pytest.approx(trained["psnr"], abs=1e-5)
    bare = tmp_path / "bare.ply"
    bare.write_bytes((scene / "splats.ply").read_bytes())
    code, err = cli(capsys, "eval", bare, "--capture", capture, "--out", tmp_path / "plain", "--background", "black")
    assert code == 0, err
    plain = json.loads((tmp_path / "plain" / "metrics.json").read_text())
    assert plain["color_corrections"] is None
    assert plain["psnr"] < trained["psnr"] - 0.2, (plain["psnr"], trained["psnr"])  # measured: 19.18 against 19.78


def test_turntable_orbits_or_sweeps_what_the_cameras_cover():
    from multiview.camera import Camera
    from multiview.layouts import intrinsics, look_at, spherical_eye
    from reconstruct.evaluate import turntable_cameras

    ring = orbit(12, (20.0,), radius=2.5, fov_deg=40.0, width=33, height=32)
    frames = turntable_cameras(ring, 8)
    assert np.allclose(frames[0].cam_from_world, ring[0].cam_from_world)
    assert (frames[0].width, frames[0].height) == (32, 32)  # even for H.264
    assert np.allclose(frames[2].center, ring[3].center)  # a quarter turn, same height and distance
    K = intrinsics(40.0, 32, 32)
    arc = [Camera(K, look_at(spherical_eye(a, 10.0, 3.0)), 32, 32) for a in (100, 80, 90, 110, 120, 70)]
    azimuths = [math.degrees(math.atan2(c.center[1], c.center[0])) for c in turntable_cameras(arc, 24)]
    assert azimuths[0] == pytest.approx(100) and min(azimuths) > 69.9 and max(azimuths) < 120.1
    assert max(azimuths) - min(azimuths) > 45  # sweeps the whole arc


def test_video_to_3d_reuses_only_a_capture_of_the_same_input(capture, tmp_path, capsys):
    """OUT/capture is reused when it was made from the input given (the other way it trained another scene with exit
    0), and neither OUT/capture nor OUT/scene may be or hold an input (image-to-3d --overwrite deleted weights kept
    in OUT/scene)."""
    import shutil

    out = tmp_path / "out"
    shutil.copytree(capture, out / "capture")
    (out / "capture" / "report.json").write_text(json.dumps({"input": str(tmp_path / "clip_a.mp4")}))
    (tmp_path / "clip_b.mp4").write_bytes(b"")
    code, err = cli(capsys, "video-to-3d", tmp_path / "clip_b.mp4", "--out", out, "--steps", "5", "--device", "cpu")
    assert code == 1 and "was made from" in error_line(err) and "clip_a.mp4" in error_line(err)
    photos = out / "scene" / "photos"
    photos.mkdir(parents=True)
    code, err = cli(capsys, "video-to-3d", photos, "--out", out, "--overwrite")
    assert code == 1 and "would replace the input" in error_line(err) and photos.is_dir()


@pytest.mark.slow
def test_video_to_3d_chains_capture_and_train(tmp_path, capsys):
    """A photo folder through structure from motion and training; a second call reuses the capture."""
    out = tmp_path / "out"
    code, err = cli(capsys, "video-to-3d", REPO / "examples" / "sacre_coeur", "--out", out, "--max-size", "400",
                    "--steps", "20", "--preset", "preview", "--device", "cpu")  # fmt: skip
    assert code == 0, err
    assert (out / "capture" / "transforms.json").is_file() and (out / "scene" / "splats.ply").is_file()
    code, err = cli(capsys, "video-to-3d", REPO / "examples" / "sacre_coeur", "--out", out, "--resume",
                    "--steps", "25")  # fmt: skip
    assert code == 0 and "reusing the capture" in err
    assert json.loads((out / "scene" / "metrics.json").read_text())["steps"] == 25


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_trains_on_cuda_with_gsplat(capture, tmp_path):
    """The CUDA path: gsplat's kernels, DefaultStrategy on gsplat's own meta, outputs as on the CPU."""
    config = train.TrainConfig(steps=300, sh_degree=1, random_init_points=500, background="black", device="cuda",
                               psnr_samples=3, turntable_frames=4)  # fmt: skip
    out = train.run(config, capture, tmp_path / "scene")
    report = json.loads((out / "metrics.json").read_text())
    curve = [sample["psnr"] for sample in report["psnr_vs_time"]]
    assert report["device"].startswith("cuda") and curve[-1] > curve[0] + 8.0, curve
    assert len(read_ply(out / "splats.ply")) == report["num_gaussians"] > 500  # densified
    assert report["depth_abs_rel"] < 0.1 and (out / "training.png").is_file()  # gsplat's RGB+ED in evaluation


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_training_options_run_on_cuda(capture, tmp_path):
    """--antialiased, --absgrad, --pose-opt and --appearance through gsplat's kernels (its compensation, its absgrad,
    its gradients to viewmats and to the colours): the run trains, the cameras move, the colours are corrected and the
    held-out poses are aligned."""
    config = train.TrainConfig(steps=300, sh_degree=1, random_init_points=500, background="black", device="cuda",
                               psnr_samples=0, turntable_frames=0, antialiased=True, absgrad=True, pose_opt=True,
                               appearance=True)  # fmt: skip
    report = json.loads((train.run(config, capture, tmp_path / "scene") / "metrics.json").read_text())
    assert report["psnr"] > 20.0 and report["pose_corrections"]["mean_rotation_deg"] > 0, report["psnr"]
    assert report["color_corrections"]["max_gain"] > report["color_corrections"]["min_gain"]
    assert report["pose_aligned"]["psnr"] >= report["psnr"]  # held-out poses fitted through gsplat's viewmat gradients
