"""``orbit4d eval-generator``: how close generated orbits come to rendered ground truth on held-out assets.

Chains the stages: the dataset's held-out clips (``generate.dataset``, rendered by Blender, rendered first from
``--assets`` when the dataset is new), the generator (``generate.pipeline``) from each clip's input view with the clip's
exact cameras, and the image metrics of ``reconstruct.metrics``. Reports PSNR and SSIM per relative azimuth and
overall (LPIPS: null unless its weights are present locally, which orbit4d never downloads), and writes a contact sheet:
for each clip, a row of ground truth above a row of generated frames, the input view last.

    OUT/metrics.json       overall and per-azimuth PSNR / SSIM, per clip, settings
    OUT/contact_sheet.png  ground truth | generated, one pair of rows per clip
"""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np
import torch

from multiview.errors import InputError


def evaluate(pipeline, clips, steps: int = 25, seed: int = 0, sampler: str = "euler", max_clips: int | None = None,
             weights: object = "the model") -> tuple[dict, list[tuple[torch.Tensor, torch.Tensor]]]:  # fmt: skip
    """(metrics, [(ground truth [F, 3, S, S], generated [F, 3, S, S])]) over the first ``max_clips`` clips.

    InputError naming ``weights`` (where the model came from) when it generates NaN or Inf: no score to report."""
    from reconstruct import metrics as M

    if steps < 1 or (max_clips is not None and max_clips < 1):
        raise ValueError(f"steps {steps} and max_clips {max_clips} must be at least 1")

    by_azimuth: dict[int, list[tuple[float, float]]] = defaultdict(list)
    per_clip, pairs, lpips_values = [], [], []
    lpips_reason = M.lpips_status()
    count = len(clips) if max_clips is None else min(max_clips, len(clips))
    for index in range(count):
        clip = clips.clip(index)
        generated = pipeline(clip.input_view, clip.orbit, num_steps=steps, seed=seed, sampler=sampler)
        if not torch.isfinite(generated).all():
            where = clips.root / clips.entries[index]["path"]
            raise InputError(f"{weights}: the model produced NaN or Inf frames for {where}; try other weights")
        scores = []
        for k in range(clip.orbit.num_frames):
            if k == clip.orbit.input_index:
                continue  # the input view itself says nothing about the generator
            truth, image = clip.frames[k].permute(1, 2, 0).double(), generated[k].permute(1, 2, 0).double()
            value = (M.psnr(image, truth), float(M.ssim(image, truth)))
            azimuth = int(round(float(clip.orbit.azimuths_deg[k])))
            by_azimuth[azimuth].append(value)
            scores.append(value)
            if lpips_reason is None:
                lpips_values.append(M.lpips(image, truth))
        per_clip.append({"clip": clips.entries[index]["path"], "asset": clips.entries[index]["asset"],
                         "psnr": _mean(s[0] for s in scores), "ssim": _mean(s[1] for s in scores)})  # fmt: skip
        pairs.append((clip.frames, generated))
    all_scores = [v for values in by_azimuth.values() for v in values]
    report = {
        "psnr": _mean(v[0] for v in all_scores),
        "ssim": _mean(v[1] for v in all_scores),
        "lpips": _mean(lpips_values),
        "lpips_reason": lpips_reason,
        "per_azimuth": [{"azimuth_deg": a, "psnr": _mean(v[0] for v in by_azimuth[a]),
                         "ssim": _mean(v[1] for v in by_azimuth[a]), "views": len(by_azimuth[a])}
                        for a in sorted(by_azimuth)],  # fmt: skip
        "per_clip": per_clip,
        "steps": steps,
        "sampler": sampler,
        "seed": seed,
    }
    return report, pairs


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
