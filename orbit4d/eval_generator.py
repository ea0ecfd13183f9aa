"""``orbit4d eval-generator``: how close generated orbits come to rendered ground truth on held-out assets.

Chains the stages: the dataset's held-out clips (``generate.dataset``, rendered by Blender, rendered first from
``--assets`` when the dataset is new), the generator (``generate.pipeline``) from each clip's input view with the clip's
exact cameras, and the image metrics of ``reconstruct.metrics``. Reports PSNR and SSIM per relative azimuth and
overall (LPIPS: null unless its weights are present locally, which orbit4d never downloads) and the foreground's IoU
against the renderer's masks, each beside two baselines (the input copied, the input mirrored), and writes a contact
sheet: for each clip, a row of ground truth above a row of generated frames, the input view last.

    OUT/metrics.json       overall and per-azimuth PSNR / SSIM, per clip, settings
    OUT/contact_sheet.png  ground truth | generated, one pair of rows per clip
"""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np
import torch

from multiview.errors import InputError


METHODS = ("model", "copy", "mirror")
"""What is scored: the generated views, and two baselines that know nothing of 3D: the input view copied to every
view, and the input view mirrored left-right (right for the back view of a symmetric object)."""
FOREGROUND_THRESHOLD = 0.1
"""A pixel of a predicted view is foreground where some channel differs from the background by more than this."""


def evaluate(pipeline, clips, steps: int | None = None, seed: int = 0, sampler: str = "euler",
             max_clips: int | None = None,
             weights: object = "the model") -> tuple[dict, list[tuple[torch.Tensor, torch.Tensor]]]:  # fmt: skip
    """(metrics, [(ground truth [F, 3, S, S], generated [F, 3, S, S])]) over the first ``max_clips`` clips.

    Scores the model and the two baselines of ``METHODS`` per view other than the input: PSNR, SSIM, LPIPS (when its
    weights are on disk) and, where the clips have the renderer's masks, the IoU of the foreground: ``iou``, the
    foreground a method gives (a model with a foreground head: its masks, ``generate.pipeline.foreground_masks``, the
    ones ``orbit4d generate`` writes; otherwise, and for the baselines, the colours'), and ``iou_colour``, the pixels
    unlike the clip's background colour. InputError naming ``weights`` (where the model came from) when it generates
    NaN or Inf: no score to report."""
    from generate.pipeline import foreground_masks
    from reconstruct import metrics as M

    steps = pipeline.defaults.sample_steps if steps is None else steps
    if steps < 1 or (max_clips is not None and max_clips < 1):
        raise ValueError(f"steps {steps} and max_clips {max_clips} must be at least 1")
    by_azimuth: dict[int, list[dict]] = defaultdict(list)
    per_clip, pairs = [], []
    lpips_reason = M.lpips_status()
    count = len(clips) if max_clips is None else min(max_clips, len(clips))
    for index in range(count):
        clip = clips.clip(index)
        generated, probability = _generate(pipeline, clip, steps, seed, sampler)
        if not torch.isfinite(generated).all():
            where = clips.root / clips.entries[index]["path"]
            raise InputError(f"{weights}: the model produced NaN or Inf frames for {where}; try other weights")
        predictions = {"model": generated, "copy": clip.input_view.expand_as(clip.frames),
                       "mirror": clip.input_view.flip(-1).expand_as(clip.frames)}  # fmt: skip
        background = _background(clip)
        masks = None if probability is None else foreground_masks(probability)
        scores = []
        for k in range(clip.orbit.num_frames):
            if k == clip.orbit.input_index:
                continue  # the input view itself says nothing about the generator
            truth = clip.frames[k].permute(1, 2, 0).double()
            view = {}
            for method, frames in predictions.items():
                image = frames[k].permute(1, 2, 0).double()
                lpips = M.lpips(image, truth) if lpips_reason is None else None
                colour = math.nan if clip.masks is None else mask_iou(foreground(frames[k], background), clip.masks[k])
                own = colour
                if method == "model" and masks is not None and clip.masks is not None:
                    own = mask_iou(masks[k], clip.masks[k])
                view[method] = {"psnr": M.psnr(image, truth), "ssim": float(M.ssim(image, truth)),
                                "lpips": math.nan if lpips is None else lpips, "iou": own,
                                "iou_colour": colour}  # fmt: skip
            by_azimuth[int(round(float(clip.orbit.azimuths_deg[k])))].append(view)
            scores.append(view)
        per_clip.append({"clip": clips.entries[index]["path"], "asset": clips.entries[index]["asset"],
                         **_summary(scores)})  # fmt: skip
        pairs.append((clip.frames, generated))
    views = [v for values in by_azimuth.values() for v in values]
    report = {
        **_summary(views),
        "lpips_reason": lpips_reason,
        "per_azimuth": [{"azimuth_deg": a, **_summary(by_azimuth[a]), "views": len(by_azimuth[a])}
                        for a in sorted(by_azimuth)],  # fmt: skip
        "per_clip": per_clip,
        "steps": steps,
        "sampler": sampler,
        "seed": seed,
    }
    return report, pairs


def _generate(pipeline, clip, steps: int, seed: int, sampler: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The generated frames [F, 3, S, S] and, from a model with a foreground head, its foreground [F, S, S]."""
    unet = getattr(pipeline, "unet", None)
    if unet is not None and getattr(unet.config, "alpha_channels", 0):
        return pipeline(clip.input_view, clip.orbit, num_steps=steps, seed=seed, sampler=sampler,
                        return_foreground=True)  # fmt: skip
    return pipeline(clip.input_view, clip.orbit, num_steps=steps, seed=seed, sampler=sampler), None


def _summary(views: list[dict]) -> dict:
    """The model's mean psnr / ssim / lpips / iou over ``views``, and the baselines' under "baselines"."""
    def means(method):
        return {key: _mean(v[method][key] for v in views) for key in ("psnr", "ssim", "lpips", "iou", "iou_colour")}

    return {**means("model"), "baselines": {method: means(method) for method in METHODS[1:]}}


def _background(clip) -> torch.Tensor:
    """[3] the clip's background colour: the median of the pixels outside every mask, else of the image border."""
    frames = clip.frames
    if clip.masks is not None and (~clip.masks).any():
        return frames.permute(0, 2, 3, 1)[~clip.masks].median(dim=0).values
    border = torch.cat([frames[..., 0, :], frames[..., -1, :], frames[..., :, 0], frames[..., :, -1]], dim=-1)
    return border.permute(1, 0, 2).reshape(3, -1).median(dim=1).values


def foreground(image: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
    """[S, S] bool: pixels of ``image`` [3, S, S] that differ from ``background`` [3] by more than the threshold."""
    return (image - background[:, None, None]).abs().amax(dim=0) > FOREGROUND_THRESHOLD


def mask_iou(predicted: torch.Tensor, truth: torch.Tensor) -> float:
    """Intersection over union of two [S, S] bool masks (1 where both are empty)."""
    union = int((predicted | truth).sum())
    return 1.0 if union == 0 else int((predicted & truth).sum()) / union


def contact_sheet(pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> np.ndarray:
    """[2 * clips * S, F * S, 3] uint8: each clip's ground-truth row above its generated row."""
    rows = []
    for truth, generated in pairs:
        for frames in (truth, generated):
            rows.append(torch.cat(list(frames), dim=2))  # [3, S, F * S]
    sheet = torch.cat(rows, dim=1).permute(1, 2, 0).clamp(0, 1).numpy()
    return (sheet * 255 + 0.5).astype(np.uint8)


def _mean(values) -> float | None:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else None
