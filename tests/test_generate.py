"""The orbit generator on tiny models: samplers with a known answer, conditioning, seeds, model folders, and
``orbit4d generate`` writing a capture with the requested cameras; bad weights and bad inputs are one line."""

from __future__ import annotations

import json
import math
import pickle
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from generate.cameras import Orbit, plucker_rays, sv3d_orbit, triangular_guidance
from generate.pipeline import OrbitDefaults, OrbitPipeline, mirror_partners
from generate.presets import ARCHITECTURES
from generate.schedulers import DDIMScheduler, Denoiser, EulerEDMScheduler
from multiview.capture import read_capture

DEFAULTS = OrbitDefaults(num_frames=4, image_size=32, fov_deg=40.0, radius=2.5, elevation_deg=15.0)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def pipeline() -> OrbitPipeline:
    return ARCHITECTURES["tiny"].build(DEFAULTS, seed=0)


@pytest.fixture(scope="module")
def weights(pipeline, tmp_path_factory) -> Path:
    return pipeline.save_pretrained(tmp_path_factory.mktemp("weights") / "tiny")


def cli(capsys, *argv) -> tuple[int, str]:
    from orbit4d.cli import main

    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def rgba_object(path: Path, size: int = 48) -> Path:
    """A red disc on a transparent background, off centre."""
    v, u = np.mgrid[0:size, 0:size]
    inside = (u - 30) ** 2 + (v - 20) ** 2 < 10**2
    pixels = np.zeros((size, size, 4), np.uint8)
    pixels[inside] = (220, 30, 30, 255)
    PIL.Image.fromarray(pixels, "RGBA").save(path)
    return path


# --- samplers --------------------------------------------------------------------------------------------------


def gaussian_denoiser(mean: float, std: float):
    """The exact x_0 estimate E[x_0 | x_0 + sigma n = x] for data N(mean, std^2)."""
    return lambda x, sigma: (std**2 * x + sigma**2 * mean) / (std**2 + sigma**2)


def _sample_gaussian(scheduler, steps: int, mean: float, std: float) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    scheduler.set_timesteps(steps)
    x = mean + torch.randn(200_000, generator=generator, dtype=torch.float64) * scheduler.init_noise_sigma
    for i in range(steps):
        x = scheduler.step(gaussian_denoiser(mean, std), x, i, generator)
    return x


@pytest.mark.parametrize(("scheduler", "tolerance"), [(EulerEDMScheduler(), 0.015), (DDIMScheduler(), 0.025)],
                         ids=["euler", "ddim"])  # fmt: skip
def test_deterministic_samplers_converge_to_the_data(scheduler, tolerance):
    """With the exact denoiser of N(0.7, 0.3^2) data, 400 steps from pure noise give that distribution back (DDIM's
    last step starts at its smallest training sigma, 0.04, and returns the posterior mean: 2% narrower)."""
    x = _sample_gaussian(scheduler, 400, 0.7, 0.3)
    assert x.mean().item() == pytest.approx(0.7, abs=0.005)
    assert x.std().item() == pytest.approx(0.3, rel=tolerance)


def _predicted_std(scheduler, std: float) -> float:
    """The spread sampling must end with on N(mean, std^2) data: each step maps x - mean to c (x - mean) + a z,
    so the variance goes v -> c^2 v + a^2 (churn: v -> v + sigma_hat^2 - sigma^2 first)."""
    sigmas = scheduler.sigmas.tolist()
    v = sigmas[0] ** 2
    for s, s_next in zip(sigmas[:-1], sigmas[1:]):
        if isinstance(scheduler, EulerEDMScheduler):
            gamma = min(scheduler.s_churn / (len(sigmas) - 1), math.sqrt(2) - 1) if scheduler.s_churn else 0.0
            s_hat = s * (1 + gamma)
            v += s_hat**2 - s**2
            v *= (1 + (s_next - s_hat) * s_hat / (std**2 + s_hat**2)) ** 2
        else:
            a, a_next = 1 / (1 + s**2), 1 / (1 + s_next**2)
            ancestral = scheduler.eta * math.sqrt((1 - a_next) / (1 - a) * (1 - a / a_next)) / math.sqrt(a_next)
            direction = math.sqrt(max(s_next**2 - ancestral**2, 0.0))
            v = ((std**2 + s * direction) / (std**2 + s**2)) ** 2 * v + ancestral**2
    return math.sqrt(v)


@pytest.mark.parametrize("scheduler", [EulerEDMScheduler(), EulerEDMScheduler(s_churn=10.0), DDIMScheduler(),
                                       DDIMScheduler(eta=1.0)], ids=["euler", "euler-churn", "ddim", "ddim-eta1"])  # fmt: skip
def test_samplers_take_their_exact_steps(scheduler):
    """On Gaussian data every step is linear, so 25 steps must land on a spread computable in closed form (first-
    order error included: Euler ends near 0.25, not 0.3), and on the data mean."""
    x = _sample_gaussian(scheduler, 25, 0.7, 0.3)
    assert x.std().item() == pytest.approx(_predicted_std(scheduler, 0.3), rel=0.01)
    assert x.mean().item() == pytest.approx(0.7, abs=0.005)
    assert 0.2 < x.std().item() < 0.32


def test_euler_follows_sv3d_noise_levels():
    scheduler = EulerEDMScheduler()
    sigmas = scheduler.set_timesteps(10)
    assert sigmas[0].item() == pytest.approx(700.0) and sigmas[-1].item() == pytest.approx(0.002)
    assert scheduler.sigmas[-1] == 0 and (sigmas[1:] < sigmas[:-1]).all()
    ddim = DDIMScheduler().set_timesteps(10)
    assert (ddim[1:] < ddim[:-1]).all() and ddim[-1] > 0


def test_denoiser_target_is_consistent():
    """Training on v-targets: a network that outputs the target denoises exactly."""
    denoiser = Denoiser()
    clean, noise = torch.randn(100), torch.randn(100)
    for sigma in (0.01, 1.0, 300.0):
        s = torch.tensor(sigma)
        v = denoiser.target(clean, noise, s)
        assert torch.allclose(denoiser.denoised(v, clean + s * noise, s), clean, atol=1e-4 * max(1.0, sigma))


# --- cameras and conditioning ----------------------------------------------------------------------------------


def test_orbit_puts_the_input_view_last_at_azimuth_zero():
    orbit = sv3d_orbit(num_frames=21, elevation_deg=10.0, size=64)
    assert orbit.input_index == 20 and orbit.azimuths_deg[-1] == 0.0
    assert orbit.azimuths_deg[0] == pytest.approx(360 / 21)
    assert orbit.relative_azimuth_rad()[-1] == 0.0 and orbit.polar_rad()[0].item() == pytest.approx(math.radians(80))
    center = orbit.cameras[-1].center
    assert center[0] > 0 and abs(center[1]) < 1e-9 and center[2] == pytest.approx(2.0 * math.sin(math.radians(10)))
    guidance = triangular_guidance(orbit, 1.0, 2.5)
    assert guidance[-1] == 1.0 and guidance.max().item() == pytest.approx(2.5, abs=0.08)
    assert guidance[9].item() == pytest.approx(2.5, abs=0.08)  # about opposite the input view


def test_mirror_partners_pair_each_camera_with_its_reflection():
    """Partner j of frame k is camera k reflected through the vertical plane of the input camera (whose view of the
    mirrored photo is the object mirrored); an orbit without such pairs has none."""
    orbit = sv3d_orbit(8, 15.0)
    partners = mirror_partners(orbit)
    centres = np.stack([c.center for c in orbit.cameras])
    axis = centres[orbit.input_index] * [1, 1, 0]
    normal = np.cross([0.0, 0.0, 1.0], axis / np.linalg.norm(axis))  # of the vertical plane through the input camera
    reflected = centres - 2 * (centres @ normal)[:, None] * normal
    np.testing.assert_allclose(centres[partners], reflected, atol=1e-9)
    assert partners[orbit.input_index] == orbit.input_index and sorted(partners) == list(range(8))
    lopsided = [0, 1, 7]  # 45, 90 and 0 degrees: no camera at -45
    assert mirror_partners(Orbit([orbit.cameras[k] for k in lopsided], orbit.elevations_deg[lopsided],
                                 orbit.azimuths_deg[lopsided])) is None  # fmt: skip


def test_mirror_average_is_the_mean_with_the_mirrored_photos_orbit(pipeline):
    """mirror=True: each view is the mean of its own and the mirrored photo's view from the partner camera mirrored
    back; the model's mirror_average decides when mirror is None; progress counts both passes."""
    image = torch.ones(3, 32, 32)
    image[:, 8:24, 6:14] = torch.tensor([0.2, 0.3, 0.9])[:, None, None]  # off centre: its mirror differs
    orbit = DEFAULTS.orbit()
    plain = pipeline(image, orbit, num_steps=2, seed=0, mirror=False)
    other = pipeline(image.flip(-1), orbit, num_steps=2, seed=0, mirror=False)
    steps = []
    both = pipeline(image, orbit, num_steps=2, seed=0, mirror=True, on_step=lambda i, n: steps.append((i, n)))
    torch.testing.assert_close(both, (plain + other[mirror_partners(orbit)].flip(-1)) / 2)
    assert steps == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert torch.equal(pipeline(image, orbit, num_steps=2, seed=0), plain)  # DEFAULTS: mirror_average False
    averaging = OrbitPipeline(pipeline.unet, pipeline.vae, pipeline.image_encoder,
                              OrbitDefaults(**{**DEFAULTS.__dict__, "mirror_average": True}))  # fmt: skip
    assert torch.equal(averaging(image, orbit, num_steps=2, seed=0), both)


def test_plucker_rays_pass_through_the_camera():
    orbit = sv3d_orbit(num_frames=3, elevation_deg=20.0, size=64)
    rays = plucker_rays(orbit.cameras, 8, 8)
    assert rays.shape == (3, 6, 8, 8)
    d, m = rays[:, :3], rays[:, 3:]
    assert torch.allclose(d.norm(dim=1), torch.ones(3, 8, 8), atol=1e-5)
    assert (d * m).sum(dim=1).abs().max() < 1e-5  # moment is orthogonal to direction
    for k, camera in enumerate(orbit.cameras):  # o x d with o = camera centre
        center = torch.tensor(camera.center, dtype=torch.float32)
        assert torch.allclose(torch.cross(center.expand(64, 3), d[k].reshape(3, -1).T, dim=-1),
                              m[k].reshape(3, -1).T, atol=1e-4)  # fmt: skip
    mean_direction = d[0].mean(dim=(1, 2))
    axis = torch.tensor(orbit.cameras[0].cam_from_world[2, :3], dtype=torch.float32)
    assert torch.dot(mean_direction / mean_direction.norm(), axis) > 0.999


def test_unet_output_depends_on_each_frames_camera(pipeline):
    unet = pipeline.unet
    torch.manual_seed(0)
    sample = torch.randn(1, 4, unet.config.in_channels, 8, 8)
    context = torch.randn(1, 1, unet.config.cross_attention_dim)
    conditions = torch.rand(1, 4, 3)
    with torch.no_grad():
        base = unet(sample, torch.tensor([0.3]), context, conditions)
        moved = conditions.clone()
        moved[0, 2, 2] += 1.0  # another azimuth for frame 2
        changed = unet(sample, torch.tensor([0.3]), context, moved)
    assert base.shape == (1, 4, 4, 8, 8)
    assert (changed - base)[0, 2].abs().max() > 1e-4


# --- the pipeline ----------------------------------------------------------------------------------------------


def test_seed_fixes_the_frames_and_folders_round_trip(pipeline, weights):
    image = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(1))
    orbit = DEFAULTS.orbit()
    first = pipeline(image, orbit, num_steps=3, seed=5)
    assert first.shape == (4, 3, 32, 32) and 0 <= first.min() and first.max() <= 1
    assert torch.equal(first, pipeline(image, orbit, num_steps=3, seed=5))
    assert not torch.equal(first, pipeline(image, orbit, num_steps=3, seed=6))
    loaded = OrbitPipeline.from_pretrained(weights)
    assert loaded.defaults == DEFAULTS
    assert torch.equal(first, loaded(image, orbit, num_steps=3, seed=5))
    latents = torch.randn(5, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(pipeline.decode(latents, 2), pipeline.decode(latents, 5), atol=1e-5)  # chunks change nothing


def test_ray_map_model_samples(tmp_path):
    rays = ARCHITECTURES["tiny"].__class__(ray_maps=True).build(DEFAULTS)
    assert rays.unet.config.in_channels == 14
    frames = rays(torch.rand(3, 32, 32), DEFAULTS.orbit(num_frames=3), num_steps=2, sampler="ddim")
    assert frames.shape == (3, 3, 32, 32) and torch.isfinite(frames).all()


def test_generate_writes_a_capture_with_the_requested_cameras(weights, tmp_path, capsys):
    image = rgba_object(tmp_path / "object.png")
    out = tmp_path / "orbit"
    code, err = cli(capsys, "generate", image, "--out", out, "--weights", weights, "--frames", 3,
                    "--elevation", 25, "--steps", 2, "--seed", 3)  # fmt: skip
    assert code == 0, err
    capture = read_capture(out)
    expected = sv3d_orbit(3, 25.0, DEFAULTS.radius, DEFAULTS.fov_deg, DEFAULTS.image_size)
    assert len(capture.frames) == 3
    for frame, camera in zip(sorted(capture.frames, key=lambda f: f.image_path.name), expected.cameras):
        np.testing.assert_allclose(frame.camera.cam_from_world, camera.cam_from_world, atol=1e-6)
        np.testing.assert_allclose(frame.camera.K, camera.K, atol=1e-6)
        assert PIL.Image.open(frame.image_path).size == (32, 32)
    report = json.loads((out / "report.json").read_text())
    assert report["input_frame"] == "images/frame_002.png" and report["elevations_deg"] == [25.0] * 3
    prepared = np.asarray(PIL.Image.open(out / "input.png"))
    assert (prepared[0, 0] == 255).all() and prepared[16, 16, 0] > 150  # disc centred on white
    assert np.array_equal(np.asarray(PIL.Image.open(out / "images" / "frame_002.png")), prepared)

    from reconstruct.data import load_scene

    assert len(load_scene(out).train) == 2  # orbit4d train reads it (one view held out)


# --- bad input -------------------------------------------------------------------------------------------------


def error_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if "error" in line]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_weights_of_another_architecture_name_the_keys(weights, tmp_path, capsys):
    import shutil

    other = tmp_path / "other"
    shutil.copytree(weights, other)
    from generate.weights import save_model

    save_model(ARCHITECTURES["tiny"].__class__(ray_maps=True).build(DEFAULTS).unet, tmp_path / "small")
    shutil.copy(tmp_path / "small" / "diffusion_pytorch_model.safetensors", other / "unet")
    code, err = cli(capsys, "generate", rgba_object(tmp_path / "o.png"), "--out", tmp_path / "x", "--weights", other)
    line = error_line(err)
    assert code != 0 and "does not fit OrbitUNet" in line and "wrong shape: conv_in.weight" in line
    assert str(other / "unet") in line and not (tmp_path / "x").exists()


def test_pickle_weights_are_refused_unopened(weights, tmp_path, capsys):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(weights, bad)
    target = bad / "unet" / "diffusion_pytorch_model.safetensors"

    class Boom:
        def __reduce__(self):
            return (Path("/nonexistent-orbit4d-marker").touch, ())

    target.write_bytes(pickle.dumps({"weight": Boom()}))
    code, err = cli(capsys, "generate", rgba_object(tmp_path / "o.png"), "--out", tmp_path / "x", "--weights", bad)
    assert code != 0 and "pickle" in error_line(err) and not Path("/nonexistent-orbit4d-marker").exists()
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(pickle.dumps({}))
    code, err = cli(capsys, "generate", rgba_object(tmp_path / "o.png"), "--out", tmp_path / "x", "--weights", ckpt)
    assert code != 0 and "pickle" in error_line(err) and "safetensors" in error_line(err)


@pytest.mark.parametrize("case", ["missing", "corrupt", "transparent"])
def test_unreadable_image_is_one_line(weights, tmp_path, capsys, case):
    image = tmp_path / "in.png"
    if case == "corrupt":
        image.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    elif case == "transparent":
        PIL.Image.new("RGBA", (8, 8), (0, 0, 0, 0)).save(image)
    code, err = cli(capsys, "generate", image, "--out", tmp_path / "x", "--weights", weights)
    assert code != 0 and str(image) in error_line(err)


def test_frame_count_the_model_cannot_make(weights, tmp_path, capsys):
    code, err = cli(capsys, "generate", rgba_object(tmp_path / "o.png"), "--out", tmp_path / "x", "--weights", weights,
                    "--frames", 40)  # fmt: skip
    line = error_line(err)
    assert code != 0 and "40 frames" in line and "2 to 4" in line


@pytest.mark.parametrize(("index", "words"), [
    ('{"vae": "AutoencoderKL", "orbit": {', "model_index.json is not readable JSON"),
    ("[]", "unknown VAE class None"),
    ('{"vae": "AutoencoderKL", "orbit": {"image_size": "32"}}', "image_size is a string '32', not a whole number"),
    ('{"vae": "AutoencoderKL", "orbit": {"depth": 2}}', "unknown settings depth"),
    ('{"vae": "AutoencoderKL", "orbit": {"image_size": 0}}', "image_size 0 must be at least"),
    ('{"vae": "AutoencoderKL", "orbit": {"fov_deg": NaN}}', "fov_deg is a non-finite number"),
    ('{"vae": "AutoencoderKL", "orbit": {"image_size": 32, "edge_blur_px": 8}}', "edge_blur_px 8 must lie in [0, 8)"),
])  # fmt: skip
def test_a_broken_model_index_is_one_line(weights, tmp_path, capsys, index, words):
    import shutil

    bad = shutil.copytree(weights, tmp_path / "bad")
    (bad / "model_index.json").write_text(index)
    code, err = cli(capsys, "generate", rgba_object(tmp_path / "o.png"), "--out", tmp_path / "x", "--weights", bad)
    line = error_line(err)
    assert code == 1 and words in line and str(bad / "model_index.json") in line


def test_missing_weights_folder(tmp_path, capsys):
    code, err = cli(capsys, "generate", rgba_object(tmp_path / "o.png"), "--out", tmp_path / "x",
                    "--weights", tmp_path / "nowhere")  # fmt: skip
    assert code != 0 and "nowhere" in error_line(err)


@pytest.mark.parametrize(("argv", "words"), [
    (["--frames", "0"], "--frames 0: an orbit needs at least 2 frames"),
    (["--frames", "1"], "--frames 1: an orbit needs at least 2 frames"),
    (["--steps", "0"], "sampling steps 0"),
    (["--guidance", "nan", "2.5"], "MIN nan must be a number from 0 to 100"),
    (["--guidance", "1", "-2"], "MAX -2 must be a number from 0 to 100"),
    (["--guidance", "1", "1e300"], "MAX 1e+300 must be a number from 0 to 100"),
    (["--elevation", "nan"], "--elevation nan: use degrees from -90 to 90"),
])  # fmt: skip
def test_settings_sampling_cannot_use_are_one_line(weights, tmp_path, capsys, argv, words):
    code, err = cli(capsys, "generate", rgba_object(tmp_path / "o.png"), "--out", tmp_path / "x", "--weights", weights,
                    *argv)  # fmt: skip
    assert code == 1 and words in error_line(err) and not (tmp_path / "x").exists()


@pytest.mark.parametrize(("settings", "words"), [
    ({"cond_aug": float("nan")}, "cond_aug nan: use a finite noise level"),
    ({"object_ratio": 0.0}, "object_ratio 0.0: use a share of the image side"),
])  # fmt: skip
def test_settings_the_command_line_does_not_name_are_checked_too(settings, words):
    """GenerateConfig as a library takes these too: validate refuses them before any model loads."""
    from generate.run import GenerateConfig
    from multiview.errors import InputError

    with pytest.raises(InputError, match=words):
        GenerateConfig(**settings).validate()


def test_an_existing_out_is_refused_before_sampling(weights, tmp_path, capsys, monkeypatch):
    def sampled(*args, **kwargs):
        raise AssertionError("sampled before --out was checked")

    monkeypatch.setattr(OrbitPipeline, "__call__", sampled)
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep.txt").write_text("mine")
    code, err = cli(capsys, "generate", rgba_object(tmp_path / "o.png"), "--out", tmp_path / "x", "--weights", weights)
    assert code == 1 and "--overwrite" in error_line(err) and (tmp_path / "x" / "keep.txt").read_text() == "mine"


def test_image_to_3d_refuses_zero_sample_steps(weights, tmp_path, capsys):
    code, err = cli(capsys, "image-to-3d", rgba_object(tmp_path / "o.png"), "--out", tmp_path / "x", "--weights",
                    weights, "--sample-steps", 0)  # fmt: skip
    assert code == 1 and "--sample-steps of image-to-3d" in error_line(err) and not (tmp_path / "x").exists()


def test_sixteen_bit_greyscale_photo_keeps_its_tones(tmp_path):
    from generate.run import prepare_image

    ramp = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (64, 1))  # black to white, left to right
    PIL.Image.fromarray(ramp).save(tmp_path / "grey16.png")  # mode I;16
    assert PIL.Image.open(tmp_path / "grey16.png").mode.startswith("I;16")
    image = prepare_image(tmp_path / "grey16.png", 32).astype(float)
    assert image[:, :4].mean() < 30 and image[:, -4:].mean() > 225 and 100 < image.mean() < 155  # not clipped white


@pytest.mark.parametrize("damage", ["int32", "nan"])
def test_weights_that_are_not_float_numbers_are_refused(weights, tmp_path, capsys, damage):
    import shutil

    from safetensors.torch import load_file, save_file

    bad = shutil.copytree(weights, tmp_path / "bad")
    path = bad / "unet" / "diffusion_pytorch_model.safetensors"
    state = load_file(str(path))
    key = "conv_in.weight"
    state[key] = state[key].to(torch.int32) if damage == "int32" else state[key].fill_(float("nan"))
    save_file(state, str(path))
    code, err = cli(capsys, "generate", rgba_object(tmp_path / "o.png"), "--out", tmp_path / "x", "--weights", bad)
    line = error_line(err)
    assert code == 1 and str(path) in line and key in line and not (tmp_path / "x").exists()
    assert ("int32, not a floating type" if damage == "int32" else "NaN or Inf") in line


def test_loading_a_model_prints_nothing(weights):
    """diffusers warned "should be kept in float32: []" for each model (once per process: hence a fresh one)."""
    import subprocess
    import sys

    code = ("import sys, torch; from generate.pipeline import OrbitPipeline; "
            "OrbitPipeline.from_pretrained(sys.argv[1]).to('cpu', torch.float32).to(device='cpu')")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code, str(weights)], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[1])  # fmt: skip
    assert done.returncode == 0 and done.stderr == "" and done.stdout == "", done.stderr


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_samples_in_half_precision_on_cuda(weights):
    loaded = OrbitPipeline.from_pretrained(weights, torch.float16).to("cuda")
    frames = loaded(torch.rand(3, 32, 32), DEFAULTS.orbit(), num_steps=3)
    assert torch.isfinite(frames).all() and frames.shape == (4, 3, 32, 32)


def test_out_of_memory_is_one_line(weights, tmp_path, capsys, monkeypatch):
    def exhausted(*args, **kwargs):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(OrbitPipeline, "__call__", exhausted)
    code, err = cli(capsys, "generate", rgba_object(tmp_path / "o.png"), "--out", tmp_path / "x", "--weights", weights)
    line = error_line(err)
    assert code != 0 and "out of memory" in line and "--frames" in line and not (tmp_path / "x").exists()


def test_image_to_3d_chains_generate_and_train(weights, tmp_path, capsys):
    out = tmp_path / "object"
    code, err = cli(capsys, "image-to-3d", rgba_object(tmp_path / "o.png"), "--out", out, "--weights", weights,
                    "--sample-steps", 2, "--steps", 30, "--device", "cpu", "--init-points", 200)  # fmt: skip
    assert code == 0, err
    assert len(read_capture(out / "capture").frames) == 4
    metrics = json.loads((out / "scene" / "metrics.json").read_text())
    assert metrics["steps"] == 30 and (out / "scene" / "splats.ply").is_file()
