"""The orbit generator that ships in the repository: small, loads offline, and `orbit4d generate` uses it when no
--weights are given; the orbit it writes is a capture `orbit4d train` reads. A damaged copy is one line."""

from __future__ import annotations

import json
import shutil

import numpy as np
import PIL.Image
import pytest

from generate import EMBEDDED_MODEL

pytestmark = pytest.mark.usefixtures("one_thread")
MAX_SHIPPED_MB = 50


def _object_photo(path):
    """A photo of an object on white: a red box with a dark stripe, seen from the front."""
    pixels = np.full((96, 96, 3), 255, np.uint8)
    pixels[30:70, 25:70] = (200, 40, 30)
    pixels[45:50, 25:70] = (40, 40, 40)
    PIL.Image.fromarray(pixels).save(path)
    return path


def test_the_shipped_model_is_small_and_documented():
    files = [p for p in EMBEDDED_MODEL.rglob("*") if p.is_file()]
    assert any(p.suffix == ".safetensors" for p in files) and not any(p.suffix in (".bin", ".pt", ".ckpt") for p in files)
    size_mb = sum(p.stat().st_size for p in files) / 2**20
    assert size_mb <= MAX_SHIPPED_MB, f"{size_mb:.1f} MB shipped"
    card = (EMBEDDED_MODEL.parent / "MODEL_CARD.md").read_text()
    assert "orbit4d finetune" in card and "PSNR" in card


def test_generate_without_weights_uses_the_shipped_model(tmp_path, capsys):
    from orbit4d.cli import main
    from reconstruct.data import load_scene

    out = tmp_path / "orbit"
    code = main(["generate", str(_object_photo(tmp_path / "box.png")), "--out", str(out), "--steps", "8"])
    err = capsys.readouterr().err
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    assert report["weights"] == str(EMBEDDED_MODEL)
    index = json.loads((EMBEDDED_MODEL / "model_index.json").read_text())["orbit"]
    images = sorted((out / "images").iterdir())
    assert len(images) == index["num_frames"]
    frames = np.stack([np.asarray(PIL.Image.open(p).convert("RGB"), dtype=float) / 255 for p in images])
    assert frames.shape[1:3] == (index["image_size"], index["image_size"])
    # an object on white all round the orbit: a bright border, something darker in the middle of every view
    border = np.concatenate([frames[:, 0], frames[:, -1], frames[:, :, 0], frames[:, :, -1]], axis=1)
    centre = frames[:, frames.shape[1] // 4: -frames.shape[1] // 4, frames.shape[2] // 4: -frames.shape[2] // 4]
    assert border.mean() > 0.85 and (centre.mean(axis=(1, 2, 3)) < border.mean() - 0.1).all()
    assert len(load_scene(out).train) >= 2  # orbit4d train reads it
    # its foreground head gives every view a mask, named by transforms.json: most of the border is background
    frames_json = json.loads((out / "transforms.json").read_text())["frames"]
    masks = np.stack([np.asarray(PIL.Image.open(out / f["mask_path"])) > 127 for f in frames_json])
    assert len(masks) == index["num_frames"] and masks.any(axis=(1, 2)).all()
    assert masks[:, [0, -1]].mean() < 0.1 and masks[:, :, [0, -1]].mean() < 0.1


def test_a_damaged_shipped_model_is_one_line(tmp_path, capsys, monkeypatch):
    import generate
    from orbit4d.cli import main

    copy = shutil.copytree(EMBEDDED_MODEL, tmp_path / "orbit-small")
    weights = copy / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # cut short, as a broken download
    monkeypatch.setattr(generate, "EMBEDDED_MODEL", copy)
    code = main(["generate", str(_object_photo(tmp_path / "box.png")), "--out", str(tmp_path / "orbit")])
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if "error" in line]
    assert code == 1 and len(lines) == 1 and str(weights) in lines[0] and "Traceback" not in err, err
    assert not (tmp_path / "orbit").exists()
