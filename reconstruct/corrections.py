"""The training views' corrections learned with the splats: camera poses (``pose_opt``) and colours (``appearance``).

Each is a change per training view, zero at the start and kept zero-mean over the views while training (a change
shared by every view belongs to the scene): a rigid motion of the world about the cameras' centre, and an affine map
of what the splats contribute to a pixel. Held-out views keep their poses (``evaluate.align_poses`` fits them to the
splats for a second set of metrics); their colours come from ``held_out_colors``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from reconstruct.data import View
from reconstruct.splats import view_volume

# --- poses -----------------------------------------------------------------------------------------------------


def corrected_viewmat(viewmat: Tensor, correction: Tensor, centre: Tensor, scene_scale: float) -> Tensor:
    """[4, 4] cam_from_world of the camera carried by the rigid motion ``correction`` [6] = (rotation vector w,
    translation t / scene_scale) of the world about ``centre`` [3], x -> R(w) (x - centre) + centre + t: the camera
    sees x where it saw the motion's inverse of x. The identity at 0; differentiable. A motion shared by every
    camera moves the rig as a whole, which is why ``train_step`` keeps the corrections' mean at zero."""
    w, t = correction[:3], correction[3:] * scene_scale
    zero = w.new_zeros(())
    R = torch.linalg.matrix_exp(torch.stack([zero, -w[2], w[1], w[2], zero, -w[0], -w[1], w[0], zero]).reshape(3, 3))
    top = torch.cat([R.T, (centre - R.T @ (centre + t))[:, None]], dim=1)  # the inverse motion
    return viewmat @ torch.cat([top, viewmat.new_tensor([[0.0, 0.0, 0.0, 1.0]])])


def pose_centre(views: list[View], device: torch.device | str = "cpu") -> Tensor:
    """[3] the point the training cameras look at (``view_volume``), about which pose corrections rotate."""
    return torch.tensor(view_volume([view.camera for view in views])[0], dtype=torch.float32, device=device)


def pose_report(corrections: Tensor, views: Sequence[View], scene_scale: float, centre: Tensor | None = None) -> dict:
    """How far the pose ``corrections`` [V, 6] (about ``centre``, by default ``pose_centre(views)``) moved the cameras
    of ``views``: rotation (degrees) and camera-centre shift (world units), mean and largest over the views, and per
    view (metrics.json's "pose_corrections")."""
    centre = pose_centre(views) if centre is None else centre.cpu()
    per_view = []
    with torch.no_grad():
        for view, correction in zip(views, corrections.detach().cpu()):
            moved = corrected_viewmat(view.viewmat(), correction, centre, scene_scale)
            shift = torch.linalg.inv(moved)[:3, 3] - torch.linalg.inv(view.viewmat())[:3, 3]
            per_view.append({"name": view.name, "rotation_deg": math.degrees(float(correction[:3].norm())),
                             "shift": float(shift.norm())})  # fmt: skip
    summary = {f"{stat}_{key}": float(fn([v[key] for v in per_view])) for key in ("rotation_deg", "shift")
               for stat, fn in (("mean", np.mean), ("max", np.max))}  # fmt: skip
    return {**summary, "per_view": per_view}


# --- colours ---------------------------------------------------------------------------------------------------


def corrected_colors(image: Tensor, alpha: Tensor, background: Tensor, correction: Tensor) -> Tensor:
    """[H, W, 3] ``image`` (splats over ``background`` [3], ``alpha`` [H, W, 1]) with what the splats contribute,
    s = image - (1 - alpha) background, carried by the colour correction ``correction`` [3, 4] = (M, t), a change of
    the identity and an offset: image + M s + alpha t. The background stays as it is; the identity at 0.

    A pixel half covered by grey splats over a white background, its exposure raised by 20%:

    >>> brighter = torch.cat([0.2 * torch.eye(3), torch.zeros(3, 1)], dim=1)
    >>> corrected_colors(torch.full((1, 1, 3), 0.75), torch.full((1, 1, 1), 0.5), torch.ones(3), brighter)
    tensor([[[0.8000, 0.8000, 0.8000]]])
    """
    contribution = image - (1.0 - alpha) * background
    return image + contribution @ correction[:, :3].T + alpha * correction[:, 3]


APPEARANCE_NEIGHBOURS = 2  # training views a held-out view's colour correction is interpolated from


def held_out_colors(train_centres: np.ndarray, corrections: Tensor,
                    centres: np.ndarray) -> tuple[list[Tensor] | None, dict]:  # fmt: skip
    """Colour corrections for views the splats were not trained on (camera ``centres`` [P, 3]), from the training
    views' ``corrections`` [V, 3, 4] (at ``train_centres`` [V, 3]): ([P] corrections or None, how they were chosen).

    Where the training views' own corrections are predicted better by their neighbours' than by none (leave-one-out:
    each from its ``APPEARANCE_NEIGHBOURS`` nearest others, inverse-distance weighted), the appearance follows the
    camera path, as a phone's auto exposure does along a video, and each view gets its nearest training views'
    correction the same way. Otherwise (photos from the internet, exposures that jump) it gets none: the training
    photos' mean colours. The held-out photos themselves are never looked at.
    """
    flat = corrections.detach().reshape(len(corrections), -1).double().cpu()
    k = min(APPEARANCE_NEIGHBOURS, len(flat) - 1)
    if k < 1:
        return None, {"held_out": "mean colours (too few training views to interpolate)"}
    own = torch.cdist(torch.from_numpy(train_centres), torch.from_numpy(train_centres)).fill_diagonal_(math.inf)
    neighbour_error = float(((_interpolate(flat, own, k) - flat) ** 2).sum(1).mean())
    mean_error = float((flat**2).sum(1).mean())  # of predicting none
    rule = {"neighbour_error": neighbour_error, "mean_error": mean_error}
    if not neighbour_error < mean_error:
        return None, {"held_out": "mean colours (the training views' corrections do not follow the camera path)",
                      **rule}  # fmt: skip
    interpolated = _interpolate(flat, torch.cdist(torch.from_numpy(centres), torch.from_numpy(train_centres)), k)
    views = [c.reshape(3, 4).to(corrections) for c in interpolated]
    return views, {"held_out": f"interpolated from the {k} nearest training views", **rule}


def _interpolate(values: Tensor, distances: Tensor, k: int) -> Tensor:
    """[P, D] inverse-distance-weighted means of the ``k`` nearest of ``values`` [V, D] by ``distances`` [P, V]."""
    nearest, index = distances.topk(k, dim=1, largest=False)
    weights = 1.0 / nearest.clamp_min(1e-9)
    return (values[index] * (weights / weights.sum(1, keepdim=True))[..., None]).sum(1)


def color_report(corrections: Tensor, views: Sequence[View], rule: dict) -> dict:
    """The colour ``corrections`` [V, 3, 4] of ``views``: per view its affine map of the splats' colour (rows of the
    3 x 3 matrix and offset) and "gain", the factor it scales a grey by (the mean of the matrix's row sums: an
    exposure factor); the range of gains over the views; how the evaluated views got theirs (``rule``,
    ``held_out_colors``). metrics.json's "color_corrections"."""
    per_view = []
    for view, correction in zip(views, corrections.detach().cpu().double()):
        transform = _identity_map(torch.float64) + correction
        per_view.append({"name": view.name, "gain": float(transform[:, :3].sum(1).mean()),
                         "transform": transform.tolist()})  # fmt: skip
    gains = [v["gain"] for v in per_view]
    return {"min_gain": min(gains), "max_gain": max(gains), **rule, "per_view": per_view}


def corrections_from_report(report: dict) -> dict[str, Tensor]:
    """The [3, 4] colour correction of each training view, by name, from ``color_report``'s ``report``."""
    identity = _identity_map(torch.float32)
    return {view["name"]: torch.tensor(view["transform"], dtype=torch.float32) - identity
            for view in report["per_view"]}  # fmt: skip


def _identity_map(dtype: torch.dtype) -> Tensor:
    """[3, 4] the colour map that changes nothing: the identity matrix and a zero offset."""
    return torch.eye(3, 4, dtype=dtype)
