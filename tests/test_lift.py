"""The lifted views (generate.lift): the input's silhouette as a solid, drawn from the orbit's cameras, and the UNet
input that carries them."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from generate.lift import _draw, lift_views, with_lift_input
from generate.pipeline import OrbitDefaults, OrbitPipeline
from generate.presets import ARCHITECTURES

DEFAULTS = OrbitDefaults(num_frames=8, image_size=64, fov_deg=33.8, radius=2.0, elevation_deg=0.0)
RED = torch.tensor([0.9, 0.1, 0.1])[:, None, None]


def foreground(views: torch.Tensor) -> torch.Tensor:
    return (views - 1).abs().amax(dim=-3) > 0.1


def iou(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a & b).sum()) / max(1, int((a | b).sum()))


def test_a_solid_of_revolution_keeps_its_silhouette_all_round():
    """A red upright rectangle on white is a cylinder: every view shows the same rectangle, in red."""
    image = torch.ones(3, 64, 64)
    image[:, 16:48, 24:40] = RED
    views = lift_views(image, DEFAULTS.orbit())
    masks = foreground(views)
    for k in range(8):
        assert iou(masks[k], masks[-1]) > 0.85, k
    assert iou(masks[-1], foreground(image[None])[0]) > 0.95  # the input view is itself
    assert (views[:, 0][masks] > 0.8).float().mean() > 0.95 and (views[:, 2][masks] < 0.2).float().mean() > 0.95


def test_an_upright_cylinder_seen_from_above_stands_upright_all_round():
    """At elevation 20° an upright cylinder shows its top above its side; the solid lifted from that view stands on the
    orbit's vertical axis (not on the input camera's, tilted 20° from it), so every view matches the cylinder's own."""
    orbit = replace(DEFAULTS, elevation_deg=20.0).orbit()
    axis = torch.linspace(-0.5, 0.5, 101)
    points = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1).reshape(-1, 3)
    points = points[(points[:, :2].square().sum(dim=1) <= 0.25**2) & (points[:, 2].abs() <= 0.4)]
    colours = RED[:, 0, 0].expand(len(points), 3)
    truth = foreground(torch.stack([_draw(points, colours, c, torch.ones(3), 64) for c in orbit.cameras]))
    lifted = foreground(lift_views(torch.where(truth[orbit.input_index], RED, 1.0), orbit))
    for k in range(8):
        assert iou(lifted[k], truth[k]) > 0.85, k


def test_a_long_low_object_stays_thin_from_the_front():
    """A wide, low bar seen from the side is a long, thin object (an animal, a bench), not a disc: from 90° it is
    much narrower than from the side, as tall as before."""
    image = torch.ones(3, 64, 64)
    image[:, 28:36, 8:56] = RED
    views = lift_views(image, DEFAULTS.orbit())
    masks = foreground(views)
    side, front = masks[-1], masks[1]  # the input view, and 90° from it
    width = lambda m: int(m.any(dim=0).sum())
    height = lambda m: int(m.any(dim=1).sum())
    assert width(front) < 0.5 * width(side) and abs(height(front) - height(side)) <= 2


def test_the_back_shows_the_front_mirrored():
    """Left half red, right half blue: from 180° the red is on the right."""
    image = torch.ones(3, 64, 64)
    image[:, 16:48, 20:32] = RED
    image[:, 16:48, 32:44] = torch.tensor([0.1, 0.1, 0.9])[:, None, None]
    back = lift_views(image, DEFAULTS.orbit())[3]  # azimuth 180°
    left, right = back[:, 20:44, 18:31], back[:, 20:44, 33:46]
    assert right[0].mean() > right[2].mean() + 0.3 and left[2].mean() > left[0].mean() + 0.3


def test_an_empty_image_lifts_to_nothing():
    views = lift_views(torch.ones(3, 64, 64), DEFAULTS.orbit())
    assert torch.equal(views, torch.ones(8, 3, 64, 64))


def test_a_model_widened_for_lifted_views_computes_what_it_did(tmp_path):
    """with_lift_input adds zero weights: the same frames until training moves them; the folder keeps the input."""
    defaults = replace(DEFAULTS, num_frames=4, image_size=32)
    pipeline = ARCHITECTURES["tiny"].build(defaults, seed=1)
    image = torch.ones(3, 32, 32)
    image[:, 8:24, 12:20] = RED
    orbit = defaults.orbit()
    before = pipeline(image, orbit, num_steps=2, seed=0)
    pipeline.unet = with_lift_input(pipeline.unet)
    assert pipeline.unet.config.lift_channels == 4 and pipeline.unet.config.in_channels == 12
    assert torch.allclose(pipeline(image, orbit, num_steps=2, seed=0), before, atol=1e-6)
    with torch.no_grad():
        pipeline.unet.conv_in.weight[:, 8:12] += 0.5  # the lifted views now matter
    after = pipeline(image, orbit, num_steps=2, seed=0)
    assert not torch.allclose(after, before, atol=1e-3)
    loaded = OrbitPipeline.from_pretrained(pipeline.save_pretrained(tmp_path / "model"))
    assert loaded.unet.config.lift_channels == 4
    assert torch.allclose(loaded(image, orbit, num_steps=2, seed=0), after, atol=1e-5)


def test_sampling_follows_the_models_own_steps_and_guidance(tmp_path):
    """model_index.json's sample_steps and guidance are what generate uses when not told; guidance 1 everywhere
    runs the conditional branch alone."""
    defaults = replace(DEFAULTS, num_frames=4, image_size=32, sample_steps=3, min_guidance=1.0, max_guidance=1.0)
    pipeline = ARCHITECTURES["tiny"].build(defaults, seed=1)
    folder = pipeline.save_pretrained(tmp_path / "model")
    assert json.loads((folder / "model_index.json").read_text())["orbit"]["sample_steps"] == 3
    loaded = OrbitPipeline.from_pretrained(folder)
    calls, batches = [], []
    loaded.unet.register_forward_hook(lambda module, args, out: batches.append(args[0].shape[0]))
    loaded(torch.rand(3, 32, 32), defaults.orbit(), on_step=lambda i, n: calls.append(n))
    assert calls == [3, 3, 3] and set(batches) == {1}
    batches.clear()
    loaded(torch.rand(3, 32, 32), defaults.orbit(), num_steps=2, max_guidance=2.5)
    assert batches == [2, 2]  # guided: the unconditional branch too


@pytest.mark.parametrize("orbit_values", [{"sample_steps": 0}, {"max_guidance": -1}])
def test_a_model_index_with_impossible_sampling_is_one_line(tmp_path, orbit_values):
    from generate.weights import WeightsError

    defaults = replace(DEFAULTS, num_frames=4, image_size=32)
    folder = ARCHITECTURES["tiny"].build(defaults).save_pretrained(tmp_path / "model")
    index = json.loads((folder / "model_index.json").read_text())
    index["orbit"].update(orbit_values)
    (folder / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(WeightsError, match=str(Path("model") / "model_index.json")):
        OrbitPipeline.from_pretrained(folder)
