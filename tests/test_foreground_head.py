"""The generator's foreground head (``OrbitUNet.alpha_channels``): where the object is in each generated view, as a
probability, beside the colours."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import torch

from generate.models.unet import OrbitUNet, with_alpha_head
from generate.pipeline import OrbitDefaults, OrbitPipeline, foreground_masks
from generate.presets import ARCHITECTURES
from orbit4d.eval_generator import evaluate

DEFAULTS = OrbitDefaults(num_frames=4, image_size=32, fov_deg=33.8, radius=2.0, elevation_deg=0.0)


def _image() -> torch.Tensor:
    image = torch.ones(3, 32, 32)
    image[:, 8:24, 12:20] = torch.tensor([0.9, 0.1, 0.1])[:, None, None]
    return image


def test_a_new_head_leaves_the_frames_alone_and_starts_undecided(tmp_path):
    """with_alpha_head adds zero weights: the same frames, probability 0.5 everywhere; the folder keeps the head."""
    pipeline = ARCHITECTURES["tiny"].build(DEFAULTS, seed=1)
    orbit = DEFAULTS.orbit()
    before = pipeline(_image(), orbit, num_steps=2, seed=0)
    frames, foreground = pipeline(_image(), orbit, num_steps=2, seed=0, return_foreground=True)
    assert foreground is None and torch.equal(frames, before)  # no head: no foreground
    pipeline.unet = with_alpha_head(pipeline.unet, pipeline.vae_scale)
    assert pipeline.unet.config.alpha_channels == pipeline.vae_scale**2
    frames, foreground = pipeline(_image(), orbit, num_steps=2, seed=0, return_foreground=True)
    assert torch.allclose(frames, before, atol=1e-6)
    assert foreground.shape == (4, 32, 32) and torch.allclose(foreground, torch.full_like(foreground, 0.5))
    with torch.no_grad():
        pipeline.unet.conv_alpha.bias.fill_(3.0)  # now it says "object" everywhere
    loaded = OrbitPipeline.from_pretrained(pipeline.save_pretrained(tmp_path / "model"))
    assert loaded.unet.config.alpha_channels == pipeline.vae_scale**2
    _, foreground = loaded(_image(), orbit, num_steps=2, seed=0, return_foreground=True)
    assert torch.allclose(foreground, torch.full_like(foreground, torch.sigmoid(torch.tensor(3.0)).item()), atol=1e-5)


def test_guided_sampling_reads_the_conditional_foreground():
    """With guidance the UNet runs twice a call; the foreground is the conditional branch's, which sees the input."""
    pipeline = ARCHITECTURES["tiny"].build(DEFAULTS, seed=2)
    pipeline.unet = with_alpha_head(pipeline.unet, pipeline.vae_scale)
    torch.nn.init.normal_(pipeline.unet.conv_alpha.weight, std=0.5)
    orbit = DEFAULTS.orbit()
    _, unguided = pipeline(_image(), orbit, num_steps=2, seed=0, return_foreground=True)
    _, guided = pipeline(_image(), orbit, num_steps=2, seed=0, min_guidance=1.0, max_guidance=2.5,
                         return_foreground=True)  # fmt: skip
    assert torch.allclose(guided, unguided, atol=1e-5)


def test_alpha_channels_must_be_a_square():
    config = dict(ARCHITECTURES["tiny"].build(DEFAULTS, seed=0).unet.config)
    config = {k: v for k, v in config.items() if not k.startswith("_")}
    with pytest.raises(ValueError, match="alpha_channels is 0"):
        OrbitUNet.from_config({**config, "alpha_channels": 12})


class _Clips:
    """Two clips of a red bar on white, whose masks are the bar: what evaluate reads."""

    root = None

    def __init__(self, pipeline):
        from generate.dataset import Clip

        orbit = DEFAULTS.orbit()
        frames = _image().expand(4, 3, 32, 32).clone()
        masks = (frames - 1).abs().amax(dim=1) > 0.1
        self.entries = [{"path": f"clip_{i}", "asset": f"asset_{i}"} for i in range(2)]
        self._clip = Clip(frames, orbit, masks)

    def __len__(self):
        return 2

    def clip(self, index):
        return self._clip


def test_evaluation_scores_the_heads_foreground_beside_the_colours():
    """A head that says "object" where the bar is gets IoU 1 whatever colours the untrained UNet draws (a model with
    a head is scored on its masks, the ones generate writes); the IoU of the colours is reported beside it."""
    pipeline = ARCHITECTURES["tiny"].build(DEFAULTS, seed=4)
    pipeline.unet = with_alpha_head(pipeline.unet, pipeline.vae_scale)
    bar = (_image() - 1).abs().amax(dim=0) > 0.1

    class Exact:
        unet, defaults = pipeline.unet, pipeline.defaults

        def __call__(self, image, orbit, return_foreground=False, **settings):
            frames = pipeline(image, orbit, **settings)
            return (frames, bar.float().expand(4, 32, 32)) if return_foreground else frames

    report, _ = evaluate(Exact(), _Clips(pipeline), steps=2)
    assert report["iou"] == pytest.approx(1.0)
    assert report["iou_colour"] < 0.9  # an untrained UNet's colours are not the bar
    assert report["baselines"]["copy"]["iou"] == pytest.approx(1.0)  # the bar copied is the bar (same view here)
    assert report["baselines"]["copy"]["iou_colour"] == report["baselines"]["copy"]["iou"]


def _expected_iou(probability: torch.Tensor, mask: torch.Tensor) -> float:
    """E[I] / E[U] of ``mask`` under independent pixels of ``probability``."""
    intersection = probability[mask].sum()
    return float(intersection / (mask.sum() + probability.sum() - intersection))


def test_foreground_masks_keep_an_unsure_band_when_it_raises_the_expected_iou():
    """Certain pixels are kept and impossible ones dropped; a band at 0.45 beside an unsure core (0.7) is kept, as
    the expected IoU says (the 0.5 level would drop it); no level of the probabilities scores higher."""
    certain = torch.zeros(1, 16, 16)
    certain[0, 4:12, 4:12] = 1.0
    assert torch.equal(foreground_masks(certain), certain > 0.5)
    unsure = certain * 0.7
    unsure[0, 3, 4:12] = 0.45
    mask = foreground_masks(unsure)[0]
    assert mask[3, 4:12].all() and mask.sum() == 72
    assert _expected_iou(unsure[0], mask) > _expected_iou(unsure[0], unsure[0] > 0.5)
    generator = torch.Generator().manual_seed(0)
    probability = torch.rand(3, 16, 16, generator=generator) ** 2
    for view, chosen in zip(probability, foreground_masks(probability)):
        best = max(_expected_iou(view, view >= level) for level in view.flatten().tolist())
        assert _expected_iou(view, chosen) == pytest.approx(best)


def test_generate_writes_the_heads_masks_beside_the_views(tmp_path):
    """A model with a foreground head: generate writes masks/ (named by transforms.json, read by orbit4d train),
    each view's from the head, the input view's its own object."""
    from generate.run import GenerateConfig, run
    from multiview.capture import read_capture

    pipeline = ARCHITECTURES["tiny"].build(DEFAULTS, seed=3)
    pipeline.unet = with_alpha_head(pipeline.unet, pipeline.vae_scale)
    with torch.no_grad():
        pipeline.unet.conv_alpha.bias.fill_(3.0)  # "object" everywhere
    weights = pipeline.save_pretrained(tmp_path / "model")
    photo = tmp_path / "bar.png"
    PIL.Image.fromarray((_image().permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(photo)
    out = run(GenerateConfig(weights=weights, steps=2), photo, tmp_path / "orbit")
    frames = sorted(read_capture(out).frames, key=lambda f: f.image_path.name)
    assert [f.mask_path.parent.name for f in frames] == ["masks"] * 4
    masks = [np.asarray(PIL.Image.open(f.mask_path)) > 127 for f in frames]
    assert all(m.all() for m in masks[:3])
    photo_object = np.abs(np.asarray(PIL.Image.open(out / "input.png")).astype(int) - 255).max(axis=-1) > 25
    assert np.array_equal(masks[3], photo_object) and 0 < photo_object.mean() < 0.5
