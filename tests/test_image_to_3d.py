"""``orbit4d image-to-3d`` end to end on a tiny model, and its parts: the object in a photo (alpha, mask, plain
background, GrabCut), framing as the training renders, masks of generated views, the visual hull the splats start
in; bad photos, masks and folders are one line."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

from generate.framing import frame_object, training_fill
from generate.pipeline import OrbitDefaults, OrbitPipeline
from generate.presets import ARCHITECTURES
from multiview.capture import read_capture
from multiview.foreground import blurred_matte, clean_mask, find_foreground, plain_background_mask
from multiview.hull import visual_hull_points
from multiview.layouts import orbit

DEFAULTS = OrbitDefaults(num_frames=4, image_size=32, fov_deg=33.8, radius=2.0, elevation_deg=15.0)
FAST = ["--sample-steps", "2", "--steps", "30", "--device", "cpu", "--init-points", "2000"]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    return ARCHITECTURES["tiny"].build(DEFAULTS, seed=0).save_pretrained(tmp_path_factory.mktemp("weights") / "tiny")


def cli(capsys, *argv) -> tuple[int, str, str]:
    from orbit4d.cli import main

    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def error_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if "error" in line]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def disc(size=(160, 120), centre=(100, 50), radius=30) -> np.ndarray:
    """[H, W] bool: a disc, off centre."""
    v, u = np.mgrid[0 : size[1], 0 : size[0]]
    return (u - centre[0]) ** 2 + (v - centre[1]) ** 2 < radius**2


def textured_object(inside: np.ndarray) -> np.ndarray:
    """[H, W, 3] uint8: a red, striped object."""
    v, u = np.mgrid[0 : inside.shape[0], 0 : inside.shape[1]]
    rgb = np.zeros((*inside.shape, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 210, 40 + 60 * ((u // 6) % 2), 30
    return rgb


def photo_on_background(path: Path, inside: np.ndarray) -> Path:
    """A striped object on a strong grey-blue gradient with a little noise (no plain background): a photo without
    transparency."""
    v, u = np.mgrid[0 : inside.shape[0], 0 : inside.shape[1]]
    noise = np.random.default_rng(0).normal(0, 3, (*inside.shape, 3))
    background = np.stack([60 + 1.2 * v, 100 + 0.6 * u, 150 + 0 * u], -1) + noise
    rgb = np.where(inside[..., None], textured_object(inside), background)
    PIL.Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)).save(path)
    return path


def rgba_photo(path: Path, inside: np.ndarray) -> Path:
    rgba = np.concatenate([textured_object(inside), (inside * 255).astype(np.uint8)[..., None]], -1)
    PIL.Image.fromarray(rgba, "RGBA").save(path)
    return path


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


# --- the object in a photo ------------------------------------------------------------------------------------


def test_grabcut_finds_an_object_on_a_background(tmp_path):
    inside = disc()
    found = find_foreground(photo_on_background(tmp_path / "photo.png", inside))
    assert found.method.startswith("GrabCut") and found.cut_out
    assert iou(found.alpha > 0.5, inside) > 0.95


def test_a_plain_background_keeps_thin_parts_and_pale_edges(tmp_path):
    """A photo on one colour (a product shot) is cut at that colour: a 2-pixel antenna survives (GrabCut's smoothing
    cuts such parts), and a pale body on white keeps its edges."""
    inside = disc()
    inside[10:50, 99:101] = True  # the antenna
    rgb = np.where(inside[..., None], np.full(3, 228, np.uint8), np.full(3, 255, np.uint8))  # pale grey on white
    rgb[inside & disc(radius=12)] = (200, 40, 30)
    PIL.Image.fromarray(rgb).save(tmp_path / "product.png")
    found = find_foreground(tmp_path / "product.png")
    assert found.method == "plain background" and found.cut_out
    assert iou(found.alpha > 0.5, inside) > 0.98 and (found.alpha[12:48, 99:101] > 0.5).all()


def test_alpha_channel_and_a_given_mask_are_used_as_they_are(tmp_path):
    inside = disc()
    found = find_foreground(rgba_photo(tmp_path / "object.png", inside))
    assert found.method == "alpha channel" and np.array_equal(found.alpha > 0.5, inside)
    square = np.zeros_like(inside)
    square[20:80, 30:90] = True
    PIL.Image.fromarray((square * 255).astype(np.uint8)).save(tmp_path / "mask.png")
    given = find_foreground(photo_on_background(tmp_path / "photo.png", inside), tmp_path / "mask.png")
    assert given.method.startswith("mask") and np.array_equal(given.alpha > 0.5, square)


def test_no_segment_keeps_the_photo_and_frames_by_its_plain_background(tmp_path):
    inside = disc()
    rgb = np.where(inside[..., None], textured_object(inside), np.uint8(235))
    PIL.Image.fromarray(rgb).save(tmp_path / "plain.png")
    found = find_foreground(tmp_path / "plain.png", segment=False)
    assert not found.cut_out and iou(found.alpha > 0.5, inside) > 0.97
    framed, alpha, _ = frame_object(found.rgb, found.alpha, 64, 0.8, found.cut_out)
    assert (framed[0, 0] == 235).all()  # the photo's own background, not white


def test_plain_background_keeps_white_inside_the_silhouette():
    """A generated view: the white background is what touches the border; a white part of the object inside its
    silhouette stays the object's, and specks are dropped."""
    rgb = np.full((64, 64, 3), 255, np.uint8)
    ring = disc((64, 64), (32, 32), 20) & ~disc((64, 64), (32, 32), 8)
    rgb[ring] = (30, 90, 200)
    rgb[5, 5] = (0, 0, 0)  # a speck
    mask = clean_mask(plain_background_mask(rgb, np.array([255, 255, 255])))
    assert np.array_equal(mask, disc((64, 64), (32, 32), 20))


def blurred(inside: np.ndarray, colour, sigma: float = 1.5) -> np.ndarray:
    """[H, W, 3] uint8: an object of one ``colour`` on white, its edge blurred as a posterior-mean view's."""
    from scipy import ndimage

    share = ndimage.gaussian_filter(inside.astype(np.float32), sigma)[..., None]
    return (share * np.asarray(colour, np.float32) + (1 - share) * 255).round().astype(np.uint8)


def test_a_blurred_edge_is_matted_half_way_with_the_objects_colour():
    """A generated view blurs the silhouette: the mask of every tinted pixel is too large; matted, the half-covered
    pixels are where the object ends, and the rim takes the object's colour."""
    truth = disc((64, 64), (32, 32), 15)
    rgb = blurred(truth, (200, 40, 40))
    mask = clean_mask(plain_background_mask(rgb))
    alpha, colour = blurred_matte(rgb, mask, band=4)
    assert iou(mask, truth) < 0.75 and iou(alpha > 0.5, truth) > 0.97
    assert np.all(alpha[~mask] == 0) and np.all(alpha[truth & ~disc((64, 64), (32, 32), 11)] > 0.4)
    rim = mask & (alpha < 1)
    off = np.abs(colour.astype(int) - (200, 40, 40)).max(axis=-1)
    assert rim.any() and off[rim & (alpha > 0.5)].max() <= 12  # the rim's colour made whole ...
    assert np.all(off[rim] < np.abs(rgb.astype(int) - (200, 40, 40)).max(axis=-1)[rim])  # ... or nearer to it
    assert np.array_equal(blurred_matte(rgb, mask, band=0)[0], mask.astype(np.float32))  # no band: the mask


@pytest.mark.parametrize("edge_blur_px", [0, 3])
def test_generated_views_are_matted_by_the_models_blur(tmp_path, edge_blur_px):
    """image-to-3d's capture: a model that blurs silhouettes (``edge_blur_px``) gets soft masks and rim colours made
    whole in its generated views; a sharp one (SV3D: 0) the plain-background mask; the input view keeps the photo's."""
    import torch

    from orbit4d.image_to_3d import ImageTo3DConfig, write_masked_orbit

    orbit = DEFAULTS.orbit()
    truth = disc((32, 32), (16, 16), 8)
    view = blurred(truth, (40, 60, 200), sigma=1.2)
    frames = torch.from_numpy(view).permute(2, 0, 1).float().div(255).expand(orbit.num_frames, -1, -1, -1)
    photo = np.where(truth[..., None], np.uint8([40, 60, 200]), np.uint8(255))
    stage = tmp_path / "capture"
    stage.mkdir()
    write_masked_orbit(stage, photo, truth.astype(np.float32), frames, orbit, {}, ImageTo3DConfig(hull_points=500),
                       edge_blur_px)  # fmt: skip
    capture = read_capture(stage)
    masks = [np.asarray(PIL.Image.open(f.mask_path)) for f in capture.frames]
    assert np.array_equal(masks[orbit.input_index] > 127, truth)
    generated = masks[0]
    soft = (generated > 0) & (generated < 255)
    assert soft.any() == bool(edge_blur_px)
    assert iou(generated > 127, truth) > (0.9 if edge_blur_px else 0.0) and (generated > 0).sum() > truth.sum()
    assert capture.points is not None and len(capture.points) > 0


def test_a_pale_object_on_white_is_not_matted_away():
    """Where the object's own colour is near the background's, its share cannot be told: the mask is kept."""
    truth = disc((64, 64), (32, 32), 15)
    rgb = blurred(truth, (245, 245, 240))
    mask = clean_mask(plain_background_mask(rgb, tolerance=3))
    alpha, colour = blurred_matte(rgb, mask, band=3)
    assert mask.any() and np.array_equal(alpha, mask.astype(np.float32)) and np.array_equal(colour, rgb)


# --- framing --------------------------------------------------------------------------------------------------


def test_framing_centres_the_object_at_the_training_fill():
    inside = disc()
    fill = training_fill(2.0, 33.8)
    assert fill == pytest.approx(1 / (4 * math.tan(math.radians(16.9))))
    image, alpha, framing = frame_object(textured_object(inside), inside.astype(np.float32), 64, fill)
    rows, cols = np.nonzero(alpha > 0.5)
    assert max(rows.ptp(), cols.ptp()) + 1 == pytest.approx(fill * 64, abs=1.5)
    assert (rows.min() + rows.max()) / 2 == pytest.approx(31.5, abs=1) and (cols.min() + cols.max()) / 2 == \
        pytest.approx(31.5, abs=1)  # fmt: skip
    assert (image[0, 0] == 255).all() and image[32, 32, 0] > 150  # on white
    u, v = 40, 20  # a model pixel maps to the photo pixel it shows
    x = framing.origin[0] + (u + 0.5) / framing.scale - 0.5
    y = framing.origin[1] + (v + 0.5) / framing.scale - 0.5
    assert bool(inside[round(y), round(x)]) == bool(alpha[v, u] > 0.5)


# --- the visual hull ------------------------------------------------------------------------------------------


def sphere_masks(cameras, radius: float) -> list[np.ndarray]:
    """The exact silhouette of a sphere at the origin in each view (its rim projected)."""
    masks = []
    for camera in cameras:
        v, u = np.mgrid[0 : camera.height, 0 : camera.width]
        rays = np.stack([(u - camera.cx) / camera.fx, (v - camera.cy) / camera.fy, np.ones_like(u, float)], -1)
        rays = rays @ camera.cam_from_world[:3, :3]  # world directions
        rays /= np.linalg.norm(rays, axis=-1, keepdims=True)
        centre = camera.center
        closest = np.linalg.norm(np.cross(rays, -centre), axis=-1)  # distance of the origin from each ray
        masks.append(closest < radius)
    return masks


def test_hull_points_fill_the_object_and_survive_one_wrong_view():
    cameras = orbit(8, (15.0,), radius=2.0, fov_deg=33.8, width=48, height=48)
    masks = sphere_masks(cameras, 0.3)
    images = [np.full((48, 48, 3), (200, 50, 20), np.uint8) for _ in cameras]
    points, colours = visual_hull_points(cameras, masks, images, 3000)
    assert points.shape == (3000, 3) and (colours == (200, 50, 20)).all()
    radii = np.linalg.norm(points, axis=1)
    assert radii.max() < 0.36 and np.percentile(radii, 90) > 0.22  # in the ball, and filling it
    masks[3] = np.zeros_like(masks[3])  # one generated view that lost the object
    assert len(visual_hull_points(cameras, masks, images, 3000, max_misses=1)[0]) == 3000
    assert len(visual_hull_points(cameras, masks, images, 3000, max_misses=0)[0]) == 0


# --- end to end -----------------------------------------------------------------------------------------------


def test_image_to_3d_writes_every_output_and_they_open(weights, tmp_path, capsys):
    from reconstruct.ply import read_ply

    out = tmp_path / "out"
    photo = photo_on_background(tmp_path / "photo.jpg", disc())
    code, _, err = cli(capsys, "image-to-3d", photo, "--out", out, "--weights", weights, *FAST)
    assert code == 0, err
    capture = read_capture(out / "capture")
    assert len(capture.frames) == 4 and all(f.mask_path is not None and f.mask_path.is_file() for f in capture.frames)
    assert capture.points is not None and 100 <= len(capture.points) <= 2000
    report = json.loads((out / "capture" / "report.json").read_text())
    assert report["foreground"].startswith("GrabCut") and report["framing"]["size"] == 32
    input_frame = out / "capture" / report["input_frame"]
    assert np.array_equal(np.asarray(PIL.Image.open(input_frame)), np.asarray(PIL.Image.open(out / "capture" /
                                                                                             "input.png")))  # fmt: skip
    splats = read_ply(out / "scene" / "splats.ply")
    assert len(splats) > 0 and splats.sh_degree == 0
    metrics = json.loads((out / "scene" / "metrics.json").read_text())
    assert metrics["steps"] == 30 and metrics["evaluated_on"].startswith("train")
    if (out / "scene" / "mesh.glb").exists():
        import trimesh

        assert len(trimesh.load(out / "scene" / "mesh.glb", force="mesh").vertices) > 0
    for stage in ("foreground", "framing", "orbit", "splats", "mesh", "total"):
        assert stage in err
    assert str(out / "scene" / "splats.ply") in err.replace("\n", "") and f"orbit4d view {out / 'scene'}" in err


def test_the_orbit_is_reused_for_the_same_photo_and_settings_only(weights, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    photo = rgba_photo(tmp_path / "object.png", disc())
    assert cli(capsys, "image-to-3d", photo, "--out", out, "--weights", weights, *FAST)[0] == 0
    made = (out / "capture" / "transforms.json").stat().st_mtime_ns
    real_call = OrbitPipeline.__call__

    def sampled(*args, **kwargs):
        raise AssertionError("sampled again")

    monkeypatch.setattr(OrbitPipeline, "__call__", sampled)
    code, _, err = cli(capsys, "image-to-3d", photo, "--out", out, "--weights", weights, *FAST, "--resume",
                       "--steps", "40")  # fmt: skip
    assert code == 0, err
    assert "reusing the orbit" in err and (out / "capture" / "transforms.json").stat().st_mtime_ns == made
    code, _, err = cli(capsys, "image-to-3d", photo, "--out", out, "--weights", weights, *FAST, "--resume",
                       "--seed", "3", "--steps", "50")  # fmt: skip
    line = error_line(err)
    assert code == 1 and "seed 0 -> 3" in line and "--overwrite" in line
    monkeypatch.setattr(OrbitPipeline, "__call__", real_call)
    code, _, err = cli(capsys, "image-to-3d", photo, "--out", out, "--weights", weights, *FAST, "--seed", "3",
                       "--overwrite")  # fmt: skip
    assert code == 0, err
    assert json.loads((out / "capture" / "report.json").read_text())["recipe"]["seed"] == 3


# --- bad input ------------------------------------------------------------------------------------------------


def test_without_weights_and_without_an_embedded_model_is_one_line(tmp_path, capsys, monkeypatch):
    import generate

    monkeypatch.setattr(generate, "EMBEDDED_MODEL", tmp_path / "not-shipped")
    code, _, err = cli(capsys, "image-to-3d", rgba_photo(tmp_path / "o.png", disc()), "--out", tmp_path / "x")
    line = error_line(err)
    assert code == 1 and "no --weights given" in line and str(tmp_path / "not-shipped") in line
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("case", ["not-an-image", "empty-file", "one-colour", "no-object", "tiny"])
def test_a_photo_without_an_object_is_one_line(weights, tmp_path, capsys, case):
    photo = tmp_path / "photo.png"
    if case == "not-an-image":
        photo.write_text("a shopping list, not a photo")
    elif case == "empty-file":
        photo.write_bytes(b"")
    elif case == "one-colour":
        PIL.Image.new("RGB", (64, 64), (40, 40, 40)).save(photo)
    elif case == "no-object":  # noise everywhere: no background to tell the object from
        PIL.Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(photo)
    else:
        PIL.Image.new("RGB", (4, 4), (40, 40, 40)).save(photo)
    code, _, err = cli(capsys, "image-to-3d", photo, "--out", tmp_path / "x", "--weights", weights, *FAST)
    line = error_line(err)
    assert code == 1 and str(photo) in line and not (tmp_path / "x").exists()
    if case == "no-object":
        assert "RGBA" in line and "--mask" in line and "--no-segment" in line


@pytest.mark.parametrize("case", ["transparent", "black-mask", "mask-size", "mask-missing"])
def test_a_mask_or_alpha_without_an_object_is_one_line(weights, tmp_path, capsys, case):
    photo = photo_on_background(tmp_path / "photo.png", disc())
    extra = []
    if case == "transparent":
        PIL.Image.new("RGBA", (64, 64), (0, 0, 0, 0)).save(photo)
    elif case == "black-mask":
        PIL.Image.new("L", (160, 120), 0).save(tmp_path / "mask.png")
        extra = ["--mask", tmp_path / "mask.png"]
    elif case == "mask-size":
        PIL.Image.new("L", (80, 60), 255).save(tmp_path / "mask.png")
        extra = ["--mask", tmp_path / "mask.png"]
    else:
        extra = ["--mask", tmp_path / "nowhere.png"]
    code, _, err = cli(capsys, "image-to-3d", photo, "--out", tmp_path / "x", "--weights", weights, *FAST, *extra)
    line = error_line(err)
    assert code == 1 and not (tmp_path / "x").exists()
    assert str(tmp_path / ("photo.png" if case == "transparent" else "nowhere.png" if case == "mask-missing" else
                           "mask.png")) in line  # fmt: skip
    if case in ("transparent", "black-mask"):
        assert "--mask" in line and "--no-segment" in line


def test_an_out_that_holds_the_photo_is_refused(weights, tmp_path, capsys):
    photo = rgba_photo(tmp_path / "object.png", disc())
    code, _, err = cli(capsys, "image-to-3d", photo, "--out", tmp_path, "--weights", weights, *FAST)
    line = error_line(err)
    assert code == 1 and "would replace the input" in line and photo.is_file()
    assert not (tmp_path / "capture").exists() and not (tmp_path / "scene").exists()


# --- SV3D's published setting ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sv3d_file(tmp_path_factory) -> Path:
    """A tiny checkpoint in SV3D_p's layout whose widths convert with SV3D's own settings (64-channel attention
    heads, 80-channel CLIP heads, a VAE that shrinks 8x): what `--weights sv3d_p.safetensors` loads."""
    from safetensors.torch import save_file
    from sgm_layout import AutoencoderConfig, OpenCLIPConfig, VideoUNetConfig, random_state, sv3d_shapes

    shapes = sv3d_shapes(VideoUNetConfig(model_channels=64, channel_mult=(1, 2), num_head_channels=64, context_dim=16),
                         AutoencoderConfig(ch=32, ch_mult=(1, 1, 1, 1)), OpenCLIPConfig(width=80, heads=1,
                                                                                         output_dim=16))  # fmt: skip
    path = tmp_path_factory.mktemp("sv3d") / "sv3d_p.safetensors"
    save_file(random_state(shapes, scale=0.05), str(path))
    return path


def check_sv3d_orbit(out: Path, frames: int, elevation: float) -> None:
    from generate.cameras import sv3d_orbit

    capture = read_capture(out / "capture")
    report = json.loads((out / "capture" / "report.json").read_text())
    expected = sv3d_orbit(frames, elevation, 2.0, 33.8, 576)
    assert report["azimuths_deg"] == pytest.approx([(360 * (k + 1) / frames) % 360 for k in range(frames)])
    assert report["elevations_deg"] == [elevation] * frames
    assert report["input_frame"] == f"images/frame_{frames - 1:03d}.png"  # SV3D's order: the input view last
    assert report["framing"]["size"] == 576 and report["framing"]["fill"] == pytest.approx(training_fill(2.0, 33.8))
    for frame, camera in zip(sorted(capture.frames, key=lambda f: f.image_path.name), expected.cameras):
        np.testing.assert_allclose(frame.camera.cam_from_world, camera.cam_from_world, atol=1e-6)
        assert PIL.Image.open(frame.image_path).size == (576, 576)
    metrics = json.loads((out / "scene" / "metrics.json").read_text())
    assert metrics["image_size"] == [72, 72] and len(metrics["per_view"]) == frames


def test_an_sv3d_checkpoint_samples_at_576_from_its_elevation_and_order(sv3d_file, tmp_path, capsys):
    """SV3D_p through image-to-3d at tiny width: 576 px views, its default elevation (10), its azimuth order with the
    input view last (3 views here to stay fast; the slow test below makes SV3D's 21)."""
    out = tmp_path / "out"
    code, _, err = cli(capsys, "image-to-3d", rgba_photo(tmp_path / "o.png", disc()), "--out", out, "--weights",
                       sv3d_file, "--frames", 3, "--sample-steps", 1, "--steps", 10, "--downscale", 8, "--device",
                       "cpu", "--init-points", 500)  # fmt: skip
    assert code == 0, err
    check_sv3d_orbit(out, 3, 10.0)


@pytest.mark.slow
def test_an_sv3d_checkpoint_makes_sv3ds_published_orbit(sv3d_file, tmp_path, capsys):
    """Without --frames: SV3D's 21 views at 576 px, at the photo's --elevation, end to end (minutes on a CPU: the
    temporal decoder at 576 px)."""
    out = tmp_path / "out"
    code, _, err = cli(capsys, "image-to-3d", rgba_photo(tmp_path / "o.png", disc()), "--out", out, "--weights",
                       sv3d_file, "--elevation", 20, "--sample-steps", 1, "--steps", 20, "--downscale", 8, "--device",
                       "cpu", "--init-points", 2000)  # fmt: skip
    assert code == 0, err
    check_sv3d_orbit(out, 21, 20.0)
