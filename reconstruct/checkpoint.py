"""Training checkpoints: everything a resumed run needs to continue exactly as an uninterrupted one.

One file, ``checkpoint/checkpoint.pt``, written atomically (temporary file, then rename), so a run killed while
saving keeps the previous checkpoint. Saved with ``torch.save``; read with ``torch.load(weights_only=True)``, which
only rebuilds tensors and plain containers (never arbitrary pickled objects).

Contents: the step to run next, the parameters, one Adam state per parameter, the densification state, the RNG
states (torch's global one, which gsplat's split uses, and the trainer's own generator for view order and random
backgrounds), the view order of the current epoch, the training clock, PSNR samples and training curve, the
training views' pose and colour corrections when they are learned, the schedule (steps planned, and where a time
budget last re-planned them), and the config.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from multiview.errors import InputError
from reconstruct.schedule import Schedule

CHECKPOINT_DIR = "checkpoint"
CHECKPOINT_FILE = "checkpoint.pt"
FORMAT = "orbit4d-splat-training"
VERSION = 1


@dataclass
class TrainState:
    """The mutable state of a training run (what a checkpoint holds)."""

    step: int  # the next step to run (0-based); equals the number of steps done
    params: dict[str, torch.nn.Parameter]
    optimizers: dict[str, torch.optim.Optimizer]
    strategy_state: dict[str, Any]
    generator: torch.Generator  # view order and random backgrounds
    order: list[int]  # training view indices of the current epoch
    position: int  # next index into ``order``
    seconds: float = 0.0  # training time so far (excludes evaluation and saving)
    history: list[dict] = field(default_factory=list)  # PSNR-vs-time samples
    curve: list[dict] = field(default_factory=list)  # training loss and PSNR, means over windows of steps
    poses: torch.nn.Parameter | None = None  # [V, 6] pose corrections of the training views (pose_opt)
    appearance: torch.nn.Parameter | None = None  # [V, 3, 4] colour corrections of the training views (appearance)
    config: dict = field(default_factory=dict)
    schedule: Schedule | None = None  # steps planned; None: the config's steps, never re-planned
    saved_step: int | None = None  # step of the checkpoint on disk, if any (not itself saved)


def checkpoint_path(scene_dir: Path) -> Path:
    return Path(scene_dir) / CHECKPOINT_DIR / CHECKPOINT_FILE


def save_checkpoint(path: Path, state: TrainState, kind: str = FORMAT) -> Path:
    """Write ``state`` to ``path`` atomically; return ``path``. ``kind``: the format name (4D training has its own)."""
    payload = {
        "format": kind,
        "version": VERSION,
        "step": state.step,
        "params": {name: p.detach().cpu() for name, p in state.params.items()},
        "optimizers": {name: _cpu(opt.state_dict()) for name, opt in state.optimizers.items()},
        "strategy_state": _cpu(state.strategy_state),
        "rng": {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
            "trainer": state.generator.get_state(),
        },
        "order": list(state.order),
        "position": state.position,
        "seconds": state.seconds,
        "history": list(state.history),
        "curve": list(state.curve),
        "poses": None if state.poses is None else state.poses.detach().cpu(),
        "appearance": None if state.appearance is None else state.appearance.detach().cpu(),
        "config": dict(state.config),
        "schedule": None if state.schedule is None else state.schedule.to_dict(),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return path


def read_checkpoint(path: Path, kind: str = FORMAT) -> dict:
    """The raw checkpoint dictionary (tensors on the CPU); InputError if missing, corrupt or foreign (another
    ``kind`` than ``save_checkpoint``'s: a 4D run's checkpoint is no 3D one)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path} does not exist: there is no checkpoint to resume; run without --resume")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises assorted types (RuntimeError, UnpicklingError, EOFError, ...)
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise InputError(f"{path} is not a readable checkpoint ({reason[:120]}): delete it and train "
                         "without --resume") from None
    if not isinstance(payload, dict) or payload.get("format") != kind:
        what = "a 4D " if kind != FORMAT else "an "
        raise InputError(f"{path} is not {what}orbit4d training checkpoint: delete it and train without --resume")
    if payload.get("version") != VERSION:
        raise InputError(f"{path} is a version {payload.get('version')} checkpoint, this orbit4d reads version "
                         f"{VERSION}: train again without --resume")
    return payload


def restore_state(payload: dict, device: torch.device, make_optimizers) -> TrainState:
    """A TrainState from ``read_checkpoint``'s payload; ``make_optimizers(params, per_view)`` builds fresh
    optimizers (``per_view``: the training views' corrections the checkpoint holds, by name).

    Also restores torch's global RNG (gsplat's split draws from it).
    """
    params = {name: torch.nn.Parameter(t.to(device)) for name, t in payload["params"].items()}
    per_view = {name: torch.nn.Parameter(payload[name].to(device)) for name in ("poses", "appearance")
                if payload.get(name) is not None}  # absent before they were kept  # fmt: skip
    optimizers = make_optimizers(params, per_view)
    for name, optimizer in optimizers.items():
        optimizer.load_state_dict(payload["optimizers"][name])
    strategy_state = {k: v.to(device) if isinstance(v, torch.Tensor) else v
                      for k, v in payload["strategy_state"].items()}  # fmt: skip
    generator = torch.Generator()
    generator.set_state(payload["rng"]["trainer"])
    torch.set_rng_state(payload["rng"]["torch"])
    if payload["rng"]["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(payload["rng"]["cuda"])
    return TrainState(
        step=int(payload["step"]),
        params=params,
        optimizers=optimizers,
        strategy_state=strategy_state,
        generator=generator,
        order=[int(i) for i in payload["order"]],
        position=int(payload["position"]),
        seconds=float(payload["seconds"]),
        history=list(payload["history"]),
        curve=list(payload.get("curve", [])),  # absent before the curve was kept
        poses=per_view.get("poses"),
        appearance=per_view.get("appearance"),
        config=dict(payload["config"]),
        schedule=Schedule.from_dict(payload["schedule"]) if payload.get("schedule") else None,  # absent before
        saved_step=int(payload["step"]),
    )


def _cpu(value):
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: _cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_cpu(v) for v in value)
    return value
