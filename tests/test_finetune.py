"""The fine-tuning recipe on a tiny orbit set rendered by Blender: loss falls and held-out PSNR rises, LoRA trains
only its adapters, a resumed run repeats the uninterrupted loss curve, bad configs are one line."""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

pytest.importorskip("bpy", reason="the orbit dataset is rendered with Blender: pip install 'orbit4d[render]'")

import generate.dataset  # noqa: E402
from generate.assets import FactoryConfig, write_assets  # noqa: E402
from generate.dataset import DatasetConfig, OrbitClips, build_orbit_dataset  # noqa: E402
from generate.finetune import FinetuneConfig, heldout_psnr, partial_folder, run  # noqa: E402
from multiview.errors import InputError, OutputExistsError  # noqa: E402
from generate.pipeline import OrbitDefaults, OrbitPipeline  # noqa: E402
from generate.presets import ARCHITECTURES  # noqa: E402


REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """A procedural asset, four 4-view orbits at 32 px; the last orbit held out (other elevation and background)."""
    assets = write_assets(FactoryConfig(count=1, seed=7), tmp_path_factory.mktemp("assets"))
    config = DatasetConfig(num_frames=4, image_size=32, clips_per_asset=4, holdout="orbits", samples=4)
    return build_orbit_dataset(config, assets, tmp_path_factory.mktemp("orbits") / "data")


def config(dataset: Path, out: Path, **overrides) -> FinetuneConfig:
    base = FinetuneConfig(data=str(dataset), out=str(out), steps=200, learning_rate=1e-3, ema_decay=0.0,
                          vae_steps=150, eval_clips=1, checkpoint_every=0)  # fmt: skip
    return replace(base, **overrides)


def test_dataset_serves_clips_in_sv3d_order(dataset):
    clips = OrbitClips(dataset, "train")
    assert len(clips) == 3 and len(OrbitClips(dataset, "test")) == 1
    clip = clips.clip(0, input_index=2)
    assert clip.frames.shape == (4, 3, 32, 32) and clip.orbit.input_index == 3
    assert clip.orbit.azimuths_deg.tolist() == pytest.approx([90.0, 180.0, 270.0, 0.0])
    assert torch.equal(clip.input_view, clips.clip(0, input_index=2).frames[3])
    assert torch.equal(clips.clip(0, input_index=3).frames[2], clip.input_view)  # the ring, rotated


def test_finetuning_lowers_the_loss_and_raises_heldout_psnr(dataset, tmp_path):
    out = run(config(dataset, tmp_path / "run"))
    losses = json.loads((out / "losses.json").read_text())["losses"]
    assert len(losses) == 200 and sum(losses[-20:]) / 20 < 0.75 * sum(losses[:20]) / 20
    evaluation = json.loads((out / "evaluation.json").read_text())
    assert evaluation["end_psnr"] > evaluation["start_psnr"] + 1.0, evaluation
    pipeline = OrbitPipeline.from_pretrained(out / "model")  # usable by orbit4d generate --weights
    assert pipeline.defaults.num_frames == 4 and pipeline.defaults.image_size == 32


def test_lora_trains_only_the_adapters(dataset, tmp_path):
    defaults = OrbitDefaults(num_frames=4, image_size=32, fov_deg=33.8, radius=2.0)
    base = ARCHITECTURES["tiny"].build(defaults, seed=3).save_pretrained(tmp_path / "base")
    out = run(config(dataset, tmp_path / "lora", base=str(base), lora_rank=4, steps=20, eval_clips=1, eval_steps=2,
                     vae_steps=None))  # fmt: skip
    assert json.loads((out / "evaluation.json").read_text()).keys() >= {"start_psnr", "end_psnr"}
    adapters = load_file(str(out / "adapters.safetensors"))
    assert adapters and all("lora_" in key for key in adapters)
    saved = torch.load(out / "checkpoint" / "state.pt", weights_only=True)
    assert sum(t.numel() for t in saved["trainable"]) == sum(t.numel() for t in adapters.values())
    before, after = load_file(str(base / "unet" / "diffusion_pytorch_model.safetensors")), \
        load_file(str(out / "model" / "unet" / "diffusion_pytorch_model.safetensors"))  # fmt: skip
    assert before.keys() == after.keys()
    attention = [k for k in before if any(f".{t}." in k for t in ("to_q", "to_k", "to_v", "to_out.0"))]
    assert attention and all(torch.equal(before[k], after[k]) for k in before if k not in attention)
    assert any(not torch.equal(before[k], after[k]) for k in attention)  # the adapters, merged
    for part in ("vae", "image_encoder"):  # frozen
        a = load_file(str(base / part / "diffusion_pytorch_model.safetensors"))
        b = load_file(str(out / "model" / part / "diffusion_pytorch_model.safetensors"))
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_repeats_the_loss_curve(dataset, tmp_path):
    settings = dict(steps=8, vae_steps=10, eval_clips=0, checkpoint_every=4, ema_decay=0.9)
    reference = json.loads((run(config(dataset, tmp_path / "a", **settings)) / "losses.json").read_text())["losses"]

    def stop(step, loss):
        if step == 6:
            raise KeyboardInterrupt

    interrupted = config(dataset, tmp_path / "b", **settings)
    with pytest.raises(KeyboardInterrupt):
        run(interrupted, on_step=stop)
    assert not (tmp_path / "b").exists()  # out only ever holds a finished run
    state = partial_folder(tmp_path / "b") / "checkpoint" / "state.pt"
    assert torch.load(state, weights_only=True)["step"] == 6  # Ctrl-C saves after the step under way
    resumed = json.loads((run(interrupted, resume=True) / "losses.json").read_text())["losses"]
    assert resumed == reference
    a = load_file(str(tmp_path / "a" / "model" / "unet" / "diffusion_pytorch_model.safetensors"))
    b = load_file(str(tmp_path / "b" / "model" / "unet" / "diffusion_pytorch_model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(("content", "words"), [
    ("{", "not readable JSON"),
    ('{"data": "d", "out": "o", "learning_rat": 1}', "unknown settings learning_rat"),
    ('{"data": "d", "out": "o", "architecture": "huge"}', "architecture 'huge'"),
    ("[1, 2]", "holds a list, not an object of settings"),
    ('{"data": "d"}', "missing settings out"),
    ('{"data": 3, "out": "o"}', "data is a number 3, not a string"),
    ('{"data": "d", "out": "o", "steps": "100"}', "steps is a string '100', not a whole number"),
    ('{"data": "d", "out": "o", "lora_rank": 4.5}', "lora_rank is a number 4.5, not a whole number"),
    ('{"data": "d", "out": "o", "learning_rate": NaN}', "learning_rate is a non-finite number"),
    ('{"data": "d", "out": "o", "learning_rate": -1e-3}', "learning_rate -0.001: use a positive number"),
    ('{"data": "d", "out": "o", "image_size": 0}', "image_size 0: use at least 16"),
    ('{"data": "d", "out": "o", "objective": "l1"}', "objective 'l1': use mse or psnr"),
    ('{"data": "d", "out": "o", "foreground_weight": -1}', "foreground_weight -1: use a number at least 0"),
    ('{"data": "d", "out": "o", "foreground_learning_rate": 0}', "foreground_learning_rate 0: use a positive number"),
])  # fmt: skip
def test_bad_config_is_one_line(tmp_path, capsys, content, words):
    from orbit4d.cli import main

    path = tmp_path / "finetune.json"
    path.write_text(content)
    code = main(["finetune", str(path)])
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if "error" in line]
    assert code != 0 and len(lines) == 1 and words in lines[0] and "Traceback" not in err


def test_eval_generator_reports_per_azimuth_and_a_contact_sheet(dataset, tmp_path, capsys):
    import PIL.Image

    from orbit4d.cli import main

    defaults = OrbitDefaults(num_frames=4, image_size=32, fov_deg=33.8, radius=2.0)
    weights = ARCHITECTURES["tiny"].build(defaults, seed=1).save_pretrained(tmp_path / "weights")
    code = main(["eval-generator", "--weights", str(weights), "--data", str(dataset), "--out", str(tmp_path / "eval"),
                 "--steps", "2"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    report = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert [row["azimuth_deg"] for row in report["per_azimuth"]] == [90, 180, 270]  # the input view is not scored
    assert all(row["views"] == 1 and 0 < row["psnr"] < 60 for row in report["per_azimuth"])
    assert report["psnr"] == pytest.approx(sum(r["psnr"] for r in report["per_azimuth"]) / 3)
    assert 0 < report["ssim"] <= 1 and report["lpips"] is None
    sheet = PIL.Image.open(tmp_path / "eval" / "contact_sheet.png")
    assert sheet.size == (4 * 32, 2 * 32)  # one held-out clip: ground truth above generated


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A tiny model to start from: no VAE to fit, so runs take seconds."""
    defaults = OrbitDefaults(num_frames=4, image_size=32, fov_deg=33.8, radius=2.0)
    return ARCHITECTURES["tiny"].build(defaults, seed=3).save_pretrained(tmp_path_factory.mktemp("base") / "base")


def test_a_finished_run_is_kept_until_trained_further(dataset, base, tmp_path):
    settings = dict(base=str(base), eval_clips=0, vae_steps=None)
    out = run(config(dataset, tmp_path / "run", steps=3, **settings))
    with pytest.raises(OutputExistsError, match="pass --resume to train it further"):
        run(config(dataset, out, steps=3, **settings))
    with pytest.raises(InputError, match="beyond steps 2"):
        run(config(dataset, out, steps=2, **settings), resume=True)
    assert (out / "model").is_dir()  # refused before anything moved
    with pytest.raises(InputError, match="other trainable weights"):  # found once the run was moved to train in
        run(config(dataset, out, steps=5, lora_rank=4, **settings), resume=True)
    assert (out / "model").is_dir() and not partial_folder(out).exists()  # so it is moved back
    run(config(dataset, out, steps=5, **settings), resume=True)
    assert len(json.loads((out / "losses.json").read_text())["losses"]) == 5
    assert not partial_folder(out).exists() and OrbitPipeline.from_pretrained(out / "model")
    shutil.rmtree(out / "checkpoint")  # to save space: the model is still a finished run's
    with pytest.raises(OutputExistsError, match="holds a finished model"):
        run(config(dataset, out, steps=3, **settings))
    (tmp_path / "afile").write_text("")
    with pytest.raises(OutputExistsError, match="afile is a file"):
        run(config(dataset, tmp_path / "afile" / "run", steps=3, **settings))


def test_an_interrupted_dataset_build_resumes_without_rendering_again(tmp_path, monkeypatch):
    """Ctrl-C during the second clip: the first clip is kept as it was, the second (left half-written) is rendered
    anew, and a folder begun with another recipe is refused."""
    assets = write_assets(FactoryConfig(count=2, seed=3), tmp_path / "assets")
    settings = DatasetConfig(num_frames=2, image_size=16, clips_per_asset=1, holdout="assets", holdout_assets=0,
                             samples=1)  # fmt: skip
    render = generate.dataset._render_clip

    def interrupted(job, config, out_dir):
        if job["asset"] == "asset_00001.glb":
            (Path(out_dir) / job["path"] / "images").mkdir(parents=True)  # what a render stopped mid-way leaves
            raise KeyboardInterrupt
        render(job, config, out_dir)

    monkeypatch.setattr(generate.dataset, "_render_clip", interrupted)
    with pytest.raises(KeyboardInterrupt):
        build_orbit_dataset(settings, assets, tmp_path / "data")
    first = tmp_path / "data" / "clips" / "asset_00000_0" / "transforms.json"
    stamp = first.stat().st_mtime_ns
    rendered = []
    monkeypatch.setattr(generate.dataset, "_render_clip", lambda job, *a: rendered.append(job) or render(job, *a))
    data = build_orbit_dataset(settings, assets, tmp_path / "data")
    assert [job["asset"] for job in rendered] == ["asset_00001.glb"] and first.stat().st_mtime_ns == stamp
    assert len(OrbitClips(data, "train")) == 2 and OrbitClips(data, "train").clip(1).frames.shape[0] == 2
    with pytest.raises(InputError, match="holds orbit clips of another recipe"):
        build_orbit_dataset(replace(settings, image_size=32), assets, tmp_path / "data")


def test_two_processes_train_as_one(dataset, base, tmp_path):
    """torch.distributed on the CPU (gloo), two processes of batch 1 against one process of batch 2: the same global
    batch, so the same clips, noise, gradients and loss curve."""
    import os
    import socket
    import subprocess
    import sys

    settings = dict(base=str(base), eval_clips=0, vae_steps=None, steps=6, ema_decay=0.0)
    one = json.loads((run(config(dataset, tmp_path / "one", batch_size=2, **settings)) / "losses.json").read_text())
    path = tmp_path / "two.json"
    path.write_text(json.dumps({**asdict(config(dataset, tmp_path / "two", batch_size=1, **settings))}))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
                           "127.0.0.1", "--master_port", str(port), "-m", "orbit4d", "finetune", str(path)],
                          capture_output=True, text=True, timeout=600, env=env)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    two = json.loads((tmp_path / "two" / "losses.json").read_text())
    assert len(two["losses"]) == 6 and two["losses"] == pytest.approx(one["losses"], rel=1e-4, abs=1e-6)
    start, a, b = (load_file(str(folder / "unet" / "diffusion_pytorch_model.safetensors"))
                   for folder in (base, tmp_path / "one" / "model", tmp_path / "two" / "model"))  # fmt: skip
    apart = sum(float((a[k] - b[k]).square().sum()) for k in a) ** 0.5
    moved = sum(float((a[k] - start[k]).square().sum()) for k in a) ** 0.5
    assert moved > 0 and apart < 0.02 * moved  # float summation order only (Adam magnifies it on tiny gradients)


@pytest.mark.parametrize("damage", [b"", b"PK\x03\x04 truncated", "pickle"])
def test_a_damaged_checkpoint_is_one_line(dataset, base, tmp_path, damage):
    import pickle

    settings = config(dataset, tmp_path / "run", base=str(base), eval_clips=0, vae_steps=None, steps=3)
    state = partial_folder(tmp_path / "run") / "checkpoint" / "state.pt"
    state.parent.mkdir(parents=True)
    state.write_bytes(pickle.dumps({"step": 1}) if damage == "pickle" else damage)
    with pytest.raises(InputError, match=f"{state}.*delete it and run without --resume"):
        run(settings, resume=True)


def test_a_model_that_generates_nan_has_no_psnr(dataset, base, capsys):
    pipeline = OrbitPipeline.from_pretrained(base)
    with torch.no_grad():
        next(pipeline.unet.parameters()).fill_(float("nan"))
    assert heldout_psnr(pipeline, OrbitClips(dataset, "test"), config(dataset, Path("unused"), eval_steps=1)) is None
    assert "NaN or Inf frames" in capsys.readouterr().err


def _eval_generator(capsys, weights: Path, data: Path, out: Path, *argv) -> tuple[int, str]:
    from orbit4d.cli import main

    code = main(["eval-generator", "--weights", str(weights), "--data", str(data), "--out", str(out), *argv])
    return code, capsys.readouterr().err


@pytest.mark.parametrize(("argv", "words"), [
    (["--steps", "0"], "--steps 0: use at least 1"),
    (["--max-clips", "0"], "--max-clips 0: use at least 1"),
    (["--max-clips", "-1"], "--max-clips -1: use at least 1"),
])  # fmt: skip
def test_eval_generator_settings_are_checked(dataset, base, tmp_path, capsys, argv, words):
    code, err = _eval_generator(capsys, base, dataset, tmp_path / "eval", *argv)
    assert code == 1 and words in err and "Traceback" not in err and not (tmp_path / "eval").exists()


@pytest.mark.parametrize(("damage", "words"), [
    ("{}", "has no list of clips"),
    ('{"clips": [{"path": 3}]}', "clip 0 is not an object with path, asset and split strings"),
    ("{", "is not readable JSON"),
    ("png", "is not a readable image"),
])  # fmt: skip
def test_a_damaged_dataset_is_one_line(dataset, base, tmp_path, capsys, damage, words):
    data = shutil.copytree(dataset, tmp_path / "data")
    if damage == "png":
        clip = json.loads((data / "dataset.json").read_text())["clips"]
        test_clip = next(c for c in clip if c["split"] == "test")
        image = sorted((data / test_clip["path"] / "images").iterdir())[0]
        image.write_bytes(b"\x89PNG\r\n\x1a\n cut short")
    else:
        (data / "dataset.json").write_text(damage)
    code, err = _eval_generator(capsys, base, data, tmp_path / "eval", "--steps", "1")
    lines = [line for line in err.splitlines() if "error" in line]
    assert code == 1 and len(lines) == 1 and words in lines[0] and "Traceback" not in err, err
    assert not (tmp_path / "eval").exists()


def test_the_model_makes_what_the_dataset_holds(dataset, tmp_path):
    """A base model of other defaults is fine-tuned to the dataset's frames and size, and says so in model_index.json
    (keeping how it is sampled and how far its views blur);
    one that cannot make the dataset's clips (here: 2 frames at most against 4) is refused in one line."""
    other = OrbitDefaults(num_frames=6, image_size=64, fov_deg=50.0, radius=3.0, elevation_deg=20.0, edge_blur_px=2)
    base = ARCHITECTURES["tiny"].build(other, seed=3).save_pretrained(tmp_path / "base6")
    out = run(config(dataset, tmp_path / "run", base=str(base), steps=1, eval_clips=0, vae_steps=None))
    made = OrbitPipeline.from_pretrained(out / "model").defaults
    assert (made.num_frames, made.image_size, made.elevation_deg, made.edge_blur_px) == (4, 32, 20.0, 2)
    assert made.fov_deg == pytest.approx(33.8, abs=0.1) and made.radius == pytest.approx(2.0, abs=0.01)
    small = OrbitDefaults(num_frames=2, image_size=32, fov_deg=33.8, radius=2.0)
    base = ARCHITECTURES["tiny"].build(small, seed=3).save_pretrained(tmp_path / "base2")
    with pytest.raises(InputError, match="makes 2 to 2 frames .* have 4 frames of 32 px"):
        run(config(dataset, tmp_path / "run2", base=str(base), steps=1, eval_clips=0, vae_steps=None))
    assert not partial_folder(tmp_path / "run2").exists()  # a refused run leaves no .partial folder behind


def test_out_is_refused_before_the_dataset_is_rendered(tmp_path):
    """finetune rendered its whole dataset (minutes of Blender) before refusing its out."""
    (tmp_path / "assets").mkdir()
    (tmp_path / "assets" / "a.glb").write_bytes(b"never rendered")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("not a run")
    settings = FinetuneConfig(data=str(tmp_path / "data"), out=str(tmp_path / "taken"), assets=str(tmp_path / "assets"))
    with pytest.raises(OutputExistsError, match="not a finetune run folder"):
        run(settings)
    assert not (tmp_path / "data").exists() and not partial_folder(tmp_path / "taken").exists()


def test_a_base_learns_to_use_the_lifted_views(dataset, base, tmp_path):
    """lift: true widens a base without the input (generate.lift) and trains it; the model folder keeps it."""
    out = run(config(dataset, tmp_path / "run", steps=3, base=str(base), lift=True, eval_clips=0, vae_steps=None))
    losses = json.loads((out / "losses.json").read_text())["losses"]
    assert len(losses) == 3 and all(math.isfinite(loss) for loss in losses)
    model = OrbitPipeline.from_pretrained(out / "model")
    assert model.unet.config.lift_channels == model.unet.latent_channels
    assert model.unet.conv_in.weight[:, 8:12].abs().max() > 0  # trained: no longer the zeros it started from


def test_a_foreground_head_learns_where_the_object_is(dataset, base, tmp_path):
    """foreground: true gives a base a head and trains it on the dataset's masks (kept with the encoded clips); the
    exported model finds the held-out orbit's object, where the new head was undecided (0.5) everywhere."""
    from generate.dataset import EncodedClips

    settings = dict(base=str(base), foreground=True, foreground_weight=1.0, foreground_learning_rate=3e-3,
                    eval_clips=0, vae_steps=None)  # fmt: skip
    out = run(config(dataset, tmp_path / "run", steps=80, **settings))
    assert EncodedClips.load(out / "checkpoint" / "latents.safetensors").masks.shape == (3, 4, 32, 32)
    model = OrbitPipeline.from_pretrained(out / "model")
    clip = OrbitClips(dataset, "test").clip(0)
    _, foreground = model(clip.input_view, clip.orbit, num_steps=2, seed=0, return_foreground=True)
    found, truth = foreground[:-1] > 0.5, clip.masks[:-1]  # the generated views
    assert float((found & truth).sum()) / float((found | truth).sum()) > 0.5


def test_the_psnr_objective_trains(dataset, base, tmp_path):
    """objective psnr (the mean log error of the generated views) lowers its loss and raises held-out PSNR."""
    out = run(config(dataset, tmp_path / "run", steps=60, base=str(base), objective="psnr", vae_steps=None))
    losses = json.loads((out / "losses.json").read_text())["losses"]
    assert all(math.isfinite(loss) for loss in losses) and sum(losses[-10:]) < sum(losses[:10])
    evaluation = json.loads((out / "evaluation.json").read_text())
    assert evaluation["end_psnr"] > evaluation["start_psnr"], evaluation


def test_the_gpu_pack_keeps_what_the_recipe_trains_on(dataset, tmp_path):
    """bench/generator_gpu.py's pack (what travels to a lent GPU): the frames as JPEG close to the PNGs, and the
    masks exact (the foreground head's targets), so the GPU run trains the CPU's recipe."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("generator_gpu", REPO / "bench" / "generator_gpu.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    bench.pack(dataset, tmp_path, clips=2, quality=92, seed=0)
    packed, source = OrbitClips(tmp_path / "data", "train"), OrbitClips(dataset, "train")
    assert len(packed) == 2
    paths = [entry["path"] for entry in source.entries]
    for index in range(len(packed)):
        clip, original = packed.clip(index), source.clip(paths.index(packed.entries[index]["path"]))
        assert clip.masks is not None and torch.equal(clip.masks, original.masks)
        assert (clip.frames - original.frames).abs().mean() < 0.02
