"""The recipe that turns a video model into an orbit generator: fine-tune its UNet on rendered orbit clips.

SV3D's recipe, small enough to read: the VAE and the image tower stay frozen; each step takes a clip (input view
last), encodes it, draws a noise level from EDM's log-normal, and regresses the UNet's v-prediction (EDM-weighted)
given the input view's latent and embedding (dropped together 10% of the time so that classifier-free guidance has an
unconditional model) and every frame's camera. Full fine-tuning, or LoRA adapters (peft) on the attention
projections with everything else frozen; an EMA of the trained weights is what gets exported. Two options beyond
SV3D: ``objective: psnr`` (the mean log error per generated view, what a benchmark's mean PSNR scores) and
``foreground: true`` (a head that predicts each view's mask beside its colours, from the dataset's masks).

Runs under accelerate: one CPU process as here, or ``accelerate launch`` on GPUs and nodes, same code. The run
folder::

    config.json               the FinetuneConfig
    checkpoint/state.pt       step, losses, trained weights, optimizer, EMA (read with torch.load weights_only)
    checkpoint/vae/           a fresh model's fitted VAE
    losses.json               the loss of every step
    evaluation.json           held-out PSNR of generated views before and after (``eval_clips``)
    model/                    the exported pipeline (EMA weights, LoRA merged): orbit4d generate --weights
    adapters.safetensors      LoRA only: the adapter weights alone

A run is written to ``.<out>.partial`` beside ``out`` and renamed to ``out`` once complete, so an ``out`` folder is
always a finished run; ``--resume`` continues an interrupted one (or trains a finished one further, in the partial
folder again). Ctrl-C or SIGTERM saves a checkpoint after the step under way.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from torch import Tensor

from generate.cameras import plucker_rays
from generate.dataset import (DATASET_FILE, DatasetConfig, EncodedClip, EncodedClips, OrbitClips, build_orbit_dataset,
                              encode_clips)
from generate.lift import with_lift_input
from generate.models.unet import with_alpha_head
from generate.pipeline import OrbitDefaults, OrbitPipeline, frame_conditions
from generate.presets import ARCHITECTURES
from generate.schedulers import Denoiser
from multiview.console import console, info, warn
from multiview.errors import InputError, OutputExistsError
from multiview.interrupts import deferred_interrupt
from multiview.outputs import checked_out_dir, output_lock, replace_dir, write_json
from multiview.settings import dataclass_from_json

LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


@dataclass(frozen=True)
class FinetuneConfig:
    """Everything ``orbit4d finetune CONFIG`` reads from its JSON file (paths relative to that file)."""

    data: str
    """Dataset folder (dataset.json and clips/); rendered there from ``assets`` first when it has no dataset.json."""
    out: str
    """Run folder to write."""
    assets: str | None = None
    """Folder of .glb / .gltf / .obj assets to render the dataset from (needs the render extra)."""
    frames: int = 8
    """Views per orbit clip when rendering the dataset."""
    image_size: int = 64
    """Image side in pixels when rendering the dataset."""
    clips_per_asset: int = 2
    """Orbits per asset when rendering the dataset (random elevation and background each)."""
    holdout: str = "assets"
    """Held out for evaluation when rendering the dataset: "assets" or "orbits" (generate.dataset.DatasetConfig)."""
    holdout_assets: int = 1
    """Assets kept out of training for evaluation when rendering the dataset (holdout "assets")."""
    base: str | None = None
    """Model folder to start from; None: a freshly initialised ``architecture``."""
    architecture: str = "tiny"
    """Preset of a fresh model (generate.presets.ARCHITECTURES) when ``base`` is None."""
    lift: bool = False
    """Give the UNet the lifted views (``generate.lift``) as one more input per frame; a ``base`` without that input
    gets it, its new weights zero (the base's outputs unchanged until training moves them)."""
    foreground: bool = False
    """Train a foreground head beside the UNet's output (``OrbitUNet.alpha_channels``): the probability that each
    pixel of each view shows the object, learned from the dataset's masks (binary cross-entropy); a ``base`` without
    the head gets one of zero weights. The pipeline returns it with ``return_foreground``."""
    foreground_weight: float = 0.1
    """Weight of the foreground's cross-entropy beside the denoising loss."""
    foreground_learning_rate: float | None = None
    """Learning rate of the foreground head (None: ``learning_rate``): a new head starts from zero weights and
    learns faster at a higher rate than the trained UNet around it wants."""
    objective: str = "mse"
    """mse: EDM's weighted squared error over every pixel (SV3D). psnr: the mean over clips and views (the input
    view left out) of the log of each view's weighted squared error, the mean PSNR a benchmark scores: every view
    counts alike in decibels, a small or pale object's as much as a large dark one's."""
    lora_rank: int = 0
    """0: full fine-tuning of the UNet; > 0: LoRA adapters of this rank on the attention projections only."""
    lora_alpha: float | None = None
    """LoRA scale numerator (None: equal to the rank)."""
    steps: int = 1000
    """Optimisation steps, one batch each."""
    batch_size: int = 1
    """Clips per step and process (the global batch is this times the processes of an ``accelerate launch``)."""
    learning_rate: float = 1e-4
    """AdamW learning rate (constant after a linear warm-up of ``warmup_steps``)."""
    warmup_steps: int = 0
    ema_decay: float = 0.999
    """Decay of the exported exponential moving average; 0: export the trained weights as they are."""
    p_mean: float = 0.0
    """Mean of log sigma during training. Latents have unit deviation here (the VAE's scaling factor), so EDM's -1.2
    for images of deviation 0.5 is about -0.5; orbits are decided at high noise (the silhouette at unseen azimuths),
    which more weight there helps: 0 (SVD fine-tuning uses 1.0 at high resolution)."""
    p_std: float = 1.2
    """Standard deviation of log sigma during training."""
    cond_dropout: float = 0.1
    """Share of steps whose input view is hidden (zero latent and embedding): the unconditional model for CFG."""
    cond_aug: float = 0.02
    """Noise added to the input view's (pre-encoded) latent, the value the UNet is told (sampling tells it its own,
    1e-5 by default)."""
    vae_steps: int | None = None
    """Steps that first fit a learned VAE as an autoencoder on the clips' frames (a fresh model's VAE decodes noise);
    None: 300 for a fresh ``architecture``, 0 when starting from ``base`` (its VAE is kept frozen). A patch
    autoencoder (pixels folded: the small presets) has nothing to fit."""
    eval_clips: int = 2
    """Held-out clips whose PSNR is measured before and after training (evaluation.json); 0: none."""
    eval_steps: int | None = 10
    """Sampling steps of that measurement (None: the model's own; guidance is always the model's own)."""
    checkpoint_every: int = 100
    """Steps between checkpoints (and at the end); 0: only at the end."""
    mixed_precision: str = "no"
    """accelerate's mixed precision: no, fp16 or bf16 (GPU)."""
    frozen_from: str | None = None
    """A run (finished or under way) on the same data whose fitted VAE, image tower and encoded clips this one
    reuses, so that variants of the UNet are compared on equal terms without fitting and encoding again."""
    export_dtype: str = "float32"
    """How ``model/`` stores its weights: float32, or float16 (half the size; loads into float32 all the same)."""
    eval_every: int = 0
    """Steps between held-out evaluations of the EMA weights (the learning curve, curve.json); 0: none."""
    workers: int = 1
    """Blender processes rendering the dataset in parallel (when it is rendered from ``assets``)."""
    seed: int = 0

    @classmethod
    def from_file(cls, path: Path) -> FinetuneConfig:
        """Read a JSON config; relative ``data``, ``out``, ``base`` and ``assets`` are taken from the file's folder."""
        path = Path(path)
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            raise InputError(f"{path} does not exist: give a JSON file with at least data and out") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise InputError(f"{path} is not readable JSON ({error})") from None
        config = dataclass_from_json(cls, raw, str(path))
        paths = {key: str((path.parent / value).resolve()) for key in ("data", "out", "base", "assets", "frozen_from")
                 if (value := getattr(config, key)) is not None}  # fmt: skip
        config = replace(config, **paths)
        try:
            config.validate()
        except InputError as error:
            raise InputError(f"{path}: {error}") from None
        return config

    def validate(self) -> None:
        """InputError naming the first setting training cannot use."""
        at_least = {"steps": 1, "batch_size": 1, "lora_rank": 0, "warmup_steps": 0, "frames": 2, "image_size": 16,
                    "clips_per_asset": 1, "holdout_assets": 0, "eval_clips": 0, "eval_steps": 1,
                    "checkpoint_every": 0, "vae_steps": 0, "eval_every": 0, "workers": 1}  # fmt: skip
        for name, least in at_least.items():
            value = getattr(self, name)
            if value is not None and value < least:
                raise InputError(f"{name} {value}: use at least {least}")
        if not (self.learning_rate > 0 and math.isfinite(self.learning_rate)):
            raise InputError(f"learning_rate {self.learning_rate}: use a positive number (1e-4 is usual)")
        if self.lora_alpha is not None and not self.lora_alpha > 0:
            raise InputError(f"lora_alpha {self.lora_alpha}: use a positive number, or null for the rank")
        if not self.p_std > 0 or self.cond_aug < 0:
            raise InputError(f"p_std {self.p_std} must be positive and cond_aug {self.cond_aug} at least 0")
        if self.base is None and self.architecture not in ARCHITECTURES:
            raise InputError(f"architecture {self.architecture!r}: choose one of {', '.join(ARCHITECTURES)}")
        if not 0.0 <= self.ema_decay < 1.0 or not 0.0 <= self.cond_dropout <= 1.0:
            raise InputError("ema_decay must lie in [0, 1) and cond_dropout in [0, 1]")
        if self.holdout not in ("assets", "orbits"):
            raise InputError(f"holdout {self.holdout!r}: use assets or orbits")
        if self.export_dtype not in ("float32", "float16"):
            raise InputError(f"export_dtype {self.export_dtype!r}: use float32 or float16")
        if self.objective not in ("mse", "psnr"):
            raise InputError(f"objective {self.objective!r}: use mse or psnr")
        if self.foreground_learning_rate is not None and not (self.foreground_learning_rate > 0
                                                              and math.isfinite(self.foreground_learning_rate)):
            raise InputError(f"foreground_learning_rate {self.foreground_learning_rate}: use a positive number, or "
                             "null for learning_rate")
        if not (self.foreground_weight >= 0 and math.isfinite(self.foreground_weight)):
            raise InputError(f"foreground_weight {self.foreground_weight}: use a number at least 0")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise InputError(f"mixed_precision {self.mixed_precision!r}: use no, fp16 or bf16")


# --- the run ---------------------------------------------------------------------------------------------------


def run(config: FinetuneConfig, resume: bool = False, on_step=None) -> Path:
    """Fine-tune as ``config`` says; return the run folder (``model/`` inside is the result).

    The run is written to ``out``'s hidden sibling ``.<out>.partial`` and renamed into place once it is complete;
    ``resume`` continues it from its checkpoint (or trains a finished run further). Ctrl-C (or SIGTERM) finishes the
    step under way and saves a checkpoint; ``on_step(step, loss)`` runs after every step (a KeyboardInterrupt raised
    there stops the run the same way).
    """
    from accelerate import Accelerator

    config.validate()
    accelerator = Accelerator(mixed_precision=config.mixed_precision, cpu=not torch.cuda.is_available())
    main = accelerator.is_main_process
    with output_lock(config.out, "out") if main else contextlib.nullcontext():  # one run per out; main holds it
        work, resume_from = _run_folders(config, resume)  # every process looks before anything moves or renders
        try:
            return _run_in(config, accelerator, work, resume_from, resume, on_step)
        except BaseException:
            if main and resume_from is None and work.is_dir() and not _state_path(work).is_file():
                shutil.rmtree(work, ignore_errors=True)  # a new run that saved nothing: no .partial left behind
            raise


def _run_in(config: FinetuneConfig, accelerator, work: Path, resume_from: Path | None, resume: bool,
            on_step) -> Path:  # fmt: skip
    """``run`` in the folder ``work`` (from ``_run_folders``), the output's lock held."""
    out, main = Path(config.out), accelerator.is_main_process
    if main:
        _ensure_dataset(config)
    accelerator.wait_for_everyone()
    train_clips = OrbitClips(Path(config.data), "train")
    saved = None if resume_from is None else _read_state(_state_path(resume_from), config)
    accelerator.wait_for_everyone()
    if main:
        _prepare_work(work, resume_from, out, config)
    accelerator.wait_for_everyone()
    with _moved_back_on_failure(work, out, main and resume_from == out):  # nothing trained yet
        state_path = work / "checkpoint" / "state.pt"
        pipeline = _starting_pipeline(config, train_clips).to(accelerator.device)
        _prepare_frozen(pipeline, train_clips, config, work / "checkpoint", resume)
        encoded = _encoded_clips(pipeline, train_clips, work / "checkpoint" / "latents.safetensors", accelerator)
        test_clips = OrbitClips(Path(config.data), "test") if config.eval_clips and main else None
        if test_clips is not None and not resume:
            write_json(work / "evaluation.json", {"start_psnr": heldout_psnr(pipeline, test_clips, config)})
        unet, trainable = _trainable_unet(pipeline, config)
        optimizer = torch.optim.AdamW(_parameter_groups(pipeline.unet, trainable, config), lr=config.learning_rate)
        unet, optimizer = accelerator.prepare(unet, optimizer)
        ema = _ema(trainable, config)
        step, losses = 0, []
        if saved is not None:
            step, losses = _load_state(saved, state_path, trainable, optimizer, ema)
            info(f"resuming {out} at step {step} of {config.steps}")
    tic = time.perf_counter()
    curve = _Curve(work / "curve.json", pipeline, test_clips, config, trainable, ema) if main else None
    losses = _train(config, accelerator, pipeline, unet, optimizer, trainable, ema, encoded, step, losses,
                    state_path, on_step, curve)  # fmt: skip
    if main:
        write_json(work / "losses.json", {"losses": losses, "seconds": round(time.perf_counter() - tic, 3)})
        pipeline.unet = _export(pipeline, accelerator.unwrap_model(unet), trainable, ema, config, work)
        if test_clips is not None:
            _finish_evaluation(pipeline, test_clips, config, work / "evaluation.json")
        replace_dir(work, out)  # refused by _run_folders unless out is a run to replace
        _print_summary(out, losses, time.perf_counter() - tic)
    accelerator.wait_for_everyone()
    return out


RUN_ENTRIES = {"config.json", "checkpoint", "losses.json", "evaluation.json", "model", "adapters.safetensors",
               "curve.json", ".model.partial", ".evaluation.json.tmp", ".losses.json.tmp", ".config.json.tmp",
               ".curve.json.tmp"}  # fmt: skip
"""What a run folder holds (the module docstring): an ``out`` with nothing else is a run, safe to replace."""


def partial_folder(out: Path) -> Path:
    """Where a run into ``out`` is written until it is complete."""
    return out.parent / f".{out.name}.partial"


def _run_folders(config: FinetuneConfig, resume: bool) -> tuple[Path, Path | None]:
    """(folder to train in, folder whose checkpoint to resume or None). Refuses what would lose work or an input;
    changes nothing (every process of a multi-GPU run asks)."""
    out = Path(config.out)
    partial = partial_folder(out)
    checked_out_dir(out, [Path(p) for p in (config.data, config.base, config.assets) if p is not None], "out")
    if resume:  # an interrupted run first: it is newer than a finished one it would replace
        for folder in (partial, out):
            if _state_path(folder).is_file():
                return partial, folder
        raise InputError(f"{out}: no checkpoint to resume (looked in {_state_path(out)} and {_state_path(partial)}): "
                         "run without --resume")
    if out.is_dir() and any(out.iterdir()):
        if _state_path(out).is_file():
            raise OutputExistsError(f"{out} already exists: pass --resume to train it further or choose another out")
        if not {entry.name for entry in out.iterdir()} <= RUN_ENTRIES:
            raise OutputExistsError(f"{out} already exists and is not a finetune run folder: choose another out")
        if (out / "model").exists():  # a finished run whose checkpoint was deleted: its model stays
            raise OutputExistsError(f"{out} holds a finished model ({out / 'model'}): choose another out, or delete it "
                                    "to train again")
        # a run that failed before any checkpoint (an earlier orbit4d wrote runs in place): nothing to lose
    if _state_path(partial).is_file():
        raise OutputExistsError(f"{partial} holds an interrupted run: pass --resume to continue it, or delete that "
                                "folder to start over")
    return partial, None  # a partial folder without a checkpoint (a run that stopped early) holds nothing to lose


@contextmanager
def _moved_back_on_failure(work: Path, out: Path, moved: bool) -> Iterator[None]:
    """A finished run ``moved`` to ``work`` to be trained further goes back to ``out`` when the block fails (a config
    that does not fit its checkpoint, a base model gone, Ctrl-C)."""
    try:
        yield
    except BaseException:
        if moved and work.is_dir() and not out.exists():
            os.replace(work, out)
        raise


def _state_path(folder: Path) -> Path:
    return folder / "checkpoint" / "state.pt"


def _prepare_work(work: Path, resume_from: Path | None, out: Path, config: FinetuneConfig) -> None:
    """``work`` ready to train in: a finished run moved there to be trained further, or a fresh folder."""
    if resume_from is None:
        shutil.rmtree(work, ignore_errors=True)
        (work / "checkpoint").mkdir(parents=True)
        write_json(work / "config.json", asdict(config))
    elif resume_from != work:
        shutil.rmtree(work, ignore_errors=True)
        os.replace(resume_from, work)
        info(f"training {out} further in {work}; it comes back to {out} when done (or --resume again)")


def _train(config: FinetuneConfig, accelerator, pipeline: OrbitPipeline, unet, optimizer, trainable, ema,
           clips: EncodedClips, step: int, losses: list[float], state_path: Path, on_step, curve) -> list[float]:  # fmt: skip
    """Steps from ``step`` to ``config.steps``; checkpoints on schedule, at the end, and when stopped by Ctrl-C or
    SIGTERM (after the step under way; a second one stops at once, without). Returns every step's loss (the mean
    over every process's clips)."""
    from rich.progress import Progress

    main, denoiser = accelerator.is_main_process, Denoiser()
    between_steps = True
    with Progress(console=console, transient=True, disable=not (console.is_terminal and main)) as bar, \
            deferred_interrupt() as interrupted:  # fmt: skip
        task = bar.add_task("fine-tuning", total=config.steps, completed=step)
        try:
            while step < config.steps:
                between_steps = False
                warm = min(1.0, (step + 1) / max(config.warmup_steps, 1))
                for group, rate in zip(optimizer.param_groups, (config.learning_rate, config.foreground_learning_rate)):
                    group["lr"] = rate * warm  # from the config each step: a resumed run may change it; the
                    # second group (the foreground head) exists only when foreground_learning_rate is set
                generators = _batch_generators(config, step, accelerator.process_index)
                batch = [clips.random_clip(generator) for generator in generators]
                loss = training_loss(pipeline, unet, denoiser, batch, config, generators)
                accelerator.backward(loss)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                if ema is not None:
                    ema.step(trainable)
                value = accelerator.reduce(loss.detach(), "mean").item()
                if not math.isfinite(value):  # the weights are spoilt: the last checkpoint stays as it was
                    raise _diverged(step + 1, value, state_path)
                step += 1
                losses.append(value)
                between_steps = True
                bar.update(task, completed=step)
                if main and not console.is_terminal and step % max(1, config.steps // 10) == 0:
                    info(f"step {step}/{config.steps}: loss {sum(losses[-10:]) / len(losses[-10:]):.4f}")
                if on_step is not None:
                    on_step(step, losses[-1])
                if interrupted():
                    raise KeyboardInterrupt
                if (config.checkpoint_every and step % config.checkpoint_every == 0) or step == config.steps:
                    if main:
                        _save_state(state_path, step, losses, trainable, optimizer, ema)
                    accelerator.wait_for_everyone()
                if curve is not None and config.eval_every and step % config.eval_every == 0:
                    curve.measure(step)
            if interrupted():  # asked to stop during the last step's evaluation: not after minutes of exporting
                raise KeyboardInterrupt
        except KeyboardInterrupt:
            if between_steps and main:
                _save_state(state_path, step, losses, trainable, optimizer, ema)
                info(f"interrupted at step {step}: checkpoint saved in {state_path}; rerun with --resume to continue")
            raise
    return losses


def _batch_generators(config: FinetuneConfig, step: int, process: int) -> list[torch.Generator]:
    """One generator per clip of this process's share of the step's global batch, seeded by (seed, step, position
    in the global batch): a run resumes without generator state, and one process with batch 2B draws exactly what
    two processes with batch B draw between them."""
    first = process * config.batch_size
    return [torch.Generator().manual_seed((config.seed * 1_000_003 + step) * 10_007 + j)
            for j in range(first, first + config.batch_size)]  # fmt: skip


class _Curve:
    """The learning curve: held-out PSNR of the EMA weights every ``eval_every`` steps, with the seconds spent
    training so far, in ``curve.json`` (kept across resumes)."""

    def __init__(self, path: Path, pipeline: OrbitPipeline, clips, config: FinetuneConfig, trainable, ema) -> None:
        self.path, self.pipeline, self.clips, self.config = path, pipeline, clips, config
        self.trainable, self.ema = trainable, ema
        self.points = json.loads(path.read_text())["points"] if path.is_file() else []
        self.start = time.perf_counter()
        self.offset = self.points[-1]["train_seconds"] if self.points else 0.0
        self.paused = 0.0

    def measure(self, step: int) -> None:
        if self.clips is None:
            return
        tic = time.perf_counter()
        if self.ema is not None:
            self.ema.store(self.trainable)
            self.ema.copy_to(self.trainable)
        try:
            psnr = heldout_psnr(self.pipeline, self.clips, self.config)
        finally:
            if self.ema is not None:
                self.ema.restore(self.trainable)
        seconds = self.offset + tic - self.start - self.paused
        self.paused += time.perf_counter() - tic
        self.points = [p for p in self.points if p["step"] < step] + [
            {"step": step, "train_seconds": round(seconds, 1), "heldout_psnr": psnr}]
        write_json(self.path, {"points": self.points, "eval_clips": min(self.config.eval_clips, len(self.clips)),
                               "sampling_steps": self.config.eval_steps})  # fmt: skip
        info(f"step {step}: held-out PSNR {psnr if psnr is None else round(psnr, 2)} dB (EMA weights)")


def _diverged(step: int, loss: float, state_path: Path) -> InputError:
    """The error for a non-finite loss: start over, as the last checkpoint may already hold weights on their way out."""
    folder = state_path.parent.parent
    return InputError(f"fine-tuning diverged at step {step} (loss {loss}): lower learning_rate and start over (delete "
                      f"{folder} first: its checkpoint may already be diverging)")


def _ensure_dataset(config: FinetuneConfig) -> None:
    """Render the dataset from ``config.assets`` when ``config.data`` has none yet."""
    if (Path(config.data) / DATASET_FILE).is_file():
        return
    if config.assets is None:
        raise InputError(f"{config.data} has no {DATASET_FILE}: set assets to a folder of 3D assets to render it")
    dataset = DatasetConfig(num_frames=config.frames, image_size=config.image_size,
                            clips_per_asset=config.clips_per_asset, holdout=config.holdout,
                            holdout_assets=config.holdout_assets, seed=config.seed)  # fmt: skip
    build_orbit_dataset(dataset, Path(config.assets), Path(config.data), workers=config.workers, option="data")


def _print_summary(out: Path, losses: list[float], seconds: float) -> None:
    from rich.table import Table

    table = Table(title=f"finetune → {out}", show_header=False, title_justify="left")
    window = max(1, min(20, len(losses) // 5))
    table.add_row("steps", f"{len(losses):,} in {seconds:.1f} s")
    table.add_row("loss", f"{sum(losses[:window]) / window:.4f} → {sum(losses[-window:]) / window:.4f} "
                  f"(mean of {window} steps)")
    evaluation = out / "evaluation.json"
    if evaluation.is_file():
        e = json.loads(evaluation.read_text())
        start, end = ("n/a" if e.get(key) is None else f"{e[key]:.2f}" for key in ("start_psnr", "end_psnr"))
        table.add_row("held-out PSNR", f"{start} → {end} dB")
    table.add_row("model", f"{out / 'model'} (orbit4d generate --weights)")
    console.print(table)


def _finish_evaluation(pipeline: OrbitPipeline, clips: OrbitClips, config: FinetuneConfig, path: Path) -> None:
    start = json.loads(path.read_text()).get("start_psnr") if path.is_file() else None
    write_json(path, {"start_psnr": start, "end_psnr": heldout_psnr(pipeline, clips, config),
                      "clips": min(config.eval_clips, len(clips)), "sampling_steps": config.eval_steps})  # fmt: skip


def training_loss(pipeline: OrbitPipeline, unet, denoiser: Denoiser, batch: list[EncodedClip], config: FinetuneConfig,
                  generators: list[torch.Generator]) -> Tensor:  # fmt: skip
    """EDM-weighted v-prediction loss of ``unet`` on ``batch`` (SV3D's objective); clip i draws its noise level,
    noise and condition dropout from ``generators[i]``."""
    device, dtype = pipeline.device, pipeline.dtype
    latents = torch.stack([clip.latents for clip in batch]).to(device, dtype)  # [B, F, C, h, w]
    B, F = latents.shape[:2]
    draws = [_draws(latents.shape[1:], config, g) for g in generators]
    keep = torch.tensor([d[0] for d in draws], device=device, dtype=dtype)
    sigma = torch.tensor([d[1] for d in draws], device=device, dtype=dtype)
    noise = torch.stack([d[2] for d in draws]).to(device, dtype)
    aug = torch.stack([d[3] for d in draws]).to(device, dtype)
    # the input view's latent is concatenated unscaled, as sampling (SVD, SV3D) does
    unscaled = latents[:, -1] / pipeline.vae.config.scaling_factor
    image_latent = (unscaled + config.cond_aug * aug) * keep[:, None, None, None]
    embedding = torch.stack([clip.embedding for clip in batch]).to(device, dtype)[:, None] * keep[:, None, None]
    s = sigma[:, None, None, None, None]
    noisy = latents + s * noise
    extra = [image_latent[:, None].expand(-1, F, -1, -1, -1)]
    if pipeline.unet.config.lift_channels:
        extra.append(torch.stack([lifted_latents(pipeline, u, clip.orbit) for u, clip in zip(unscaled, batch)])
                     * keep[:, None, None, None, None])  # fmt: skip
    if pipeline.unet.config.ray_channels:
        h, w = latents.shape[-2:]
        extra.append(torch.stack([plucker_rays(clip.orbit.cameras, h, w) for clip in batch]).to(device, dtype))
    conditions = torch.stack([frame_conditions(pipeline.unet, clip.orbit, config.cond_aug) for clip in batch])
    model_input = torch.cat([denoiser.c_in(s) * noisy, *extra], dim=2)
    foreground = pipeline.unet.config.alpha_channels > 0
    output = unet(model_input, denoiser.c_noise(sigma), embedding, conditions.to(device, dtype), with_alpha=foreground)
    if foreground:
        output, logits = output
    error = (output.float() - denoiser.target(latents, noise, s).float()) ** 2
    if config.objective == "psnr":  # the input view (last) is not scored: its log error would only chase zero
        loss = torch.log(error[:, :-1].mean(dim=(2, 3, 4)) + 1e-6).mean()
    else:
        loss = error.mean()
    if foreground:
        if any(clip.masks is None for clip in batch):
            raise InputError(f"{config.data}: its clips have no masks to train the foreground head on; render the "
                             "dataset again (orbit4d renders masks) or leave foreground out")
        masks = torch.stack([clip.masks for clip in batch]).to(device, torch.float32)  # [B, F, S, S]
        loss = loss + config.foreground_weight * torch.nn.functional.binary_cross_entropy_with_logits(
            logits[:, :-1, 0].float(), masks[:, :-1])
    return loss


@torch.no_grad()
def lifted_latents(pipeline: OrbitPipeline, latent: Tensor, orbit) -> Tensor:
    """[F, C, h, w] unscaled latents of the lifted views of the input view whose unscaled latent is ``latent``."""
    image = (pipeline.vae.decode(latent[None].to(pipeline.dtype)).sample[0].float() / 2 + 0.5).clamp(0, 1)
    return pipeline.lifted_latents(image, orbit)


def _draws(shape, config: FinetuneConfig, generator: torch.Generator) -> tuple[float, float, Tensor, Tensor]:
    """One clip's (keep the condition 0/1, sigma, noise [F, C, h, w], input-latent noise [C, h, w])."""
    keep = float(torch.rand(1, generator=generator).item() >= config.cond_dropout)
    sigma = math.exp(config.p_mean + config.p_std * torch.randn(1, generator=generator).item())
    return keep, sigma, torch.randn(shape, generator=generator), torch.randn(shape[1:], generator=generator)


# --- parts -----------------------------------------------------------------------------------------------------


def fit_vae(pipeline: OrbitPipeline, clips: OrbitClips, steps: int, config: FinetuneConfig) -> list[float]:
    """Train the VAE as an autoencoder on random frames; returns the losses. Seeded.

    Nearly deterministic: the decoder learns from the posterior's mean plus a little noise (a tenth of the latents'
    own deviation, so that scaling the latents up cannot hide from it), not from the posterior's sample: with a KL
    term too weak to matter the sampled noise starts at the latents' own size and costs sharpness for hundreds of
    steps (21 dB of reconstruction after 1,500 steps of that, on 64 px orbit frames). The learning rate falls to a
    tenth over the last fifth of the steps."""
    vae = pipeline.vae
    vae.requires_grad_(True).train()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(config.seed + 1)
    losses = []
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = 1e-3 if step < 0.8 * steps else 1e-4
        frames = torch.cat([clips.random_clip(generator).frames for _ in range(2)]).to(pipeline.device)
        x = frames * 2 - 1
        mean = vae.encode(x).latent_dist.mean
        noise = torch.randn(mean.shape, generator=generator).to(x.device)
        z = mean + 0.1 * mean.detach().std() * noise
        loss = torch.nn.functional.mse_loss(vae.decode(z).sample, x)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if not console.is_terminal and (step + 1) % max(1, steps // 10) == 0:
            info(f"VAE step {step + 1}/{steps}: loss {sum(losses[-10:]) / len(losses[-10:]):.4f}")
    vae.requires_grad_(False).eval()
    info(f"VAE fitted in {steps} steps: loss {losses[0]:.4f} -> {sum(losses[-10:]) / len(losses[-10:]):.4f}")
    return losses


def _prepare_frozen(pipeline: OrbitPipeline, clips: OrbitClips, config: FinetuneConfig, checkpoint: Path,
                    resume: bool) -> None:  # fmt: skip
    """The frozen parts, once: a fresh model's VAE fitted (its latents scaled to unit deviation, the data scale of the
    EDM preconditioning, sigma_data 1) and saved in ``checkpoint`` with the image tower, so that a resumed run loads
    them back; or both (and the encoded clips) taken from the run ``config.frozen_from``."""
    from generate.weights import load_model, save_model

    source = _frozen_source(config) if config.frozen_from else None
    if source is not None and not (checkpoint / "vae").is_dir():
        for name in ("vae", "image_encoder"):
            shutil.copytree(source / name, checkpoint / name, dirs_exist_ok=True)
        if (source / "latents.safetensors").is_file():
            shutil.copy2(source / "latents.safetensors", checkpoint / "latents.safetensors")
    if (resume or source is not None) and (checkpoint / "vae").is_dir():
        pipeline.vae = load_model(type(pipeline.vae), checkpoint / "vae").to(pipeline.device)
        if (checkpoint / "image_encoder").is_dir():
            pipeline.image_encoder = load_model(type(pipeline.image_encoder), checkpoint / "image_encoder")\
                .to(pipeline.device)  # fmt: skip
        return
    learned = any(True for _ in pipeline.vae.parameters())  # a PatchAutoencoder has nothing to fit
    steps = config.vae_steps if config.vae_steps is not None else (0 if config.base else 300)
    steps = steps if learned else 0
    if config.base is not None and steps == 0:
        return  # a base model's VAE, as it is
    if steps:
        fit_vae(pipeline, clips, steps, config)
    _unit_latents(pipeline, clips, config)
    save_model(pipeline.vae, checkpoint / "vae")
    save_model(pipeline.image_encoder, checkpoint / "image_encoder")


def _frozen_source(config: FinetuneConfig) -> Path:
    """The checkpoint folder of the run ``config.frozen_from`` (finished or under way) that holds a fitted VAE."""
    run_folder = Path(config.frozen_from)
    for folder in (run_folder / "checkpoint", partial_folder(run_folder) / "checkpoint"):
        if (folder / "vae").is_dir() and (folder / "image_encoder").is_dir():
            return folder
    raise InputError(f"frozen_from {run_folder}: no fitted VAE and image tower in its checkpoint (nor in "
                     f"{partial_folder(run_folder)}): let that run fit them first, or leave frozen_from out")


@torch.no_grad()
def _unit_latents(pipeline: OrbitPipeline, clips: OrbitClips, config: FinetuneConfig) -> None:
    """Set the VAE's scaling factor to 1 / the standard deviation of its latents on (up to) 64 random clips."""
    generator = torch.Generator().manual_seed(config.seed + 2)
    frames = torch.cat([clips.random_clip(generator).frames for _ in range(min(64, len(clips)))])
    latents = torch.cat([pipeline.vae.encode(x.to(pipeline.device) * 2 - 1).latent_dist.mode()
                         for x in frames.split(32)])  # fmt: skip
    scale = 1.0 / max(float(latents.std()), 1e-6)
    pipeline.vae.register_to_config(scaling_factor=scale)
    info(f"VAE latents scaled by {scale:.4f} to unit standard deviation")


def _encoded_clips(pipeline: OrbitPipeline, clips: OrbitClips, path: Path, accelerator) -> EncodedClips:
    """The training clips encoded by the (now frozen) VAE and image tower: read from ``path`` when a run left them
    there, else encoded (by the main process) and saved."""
    if accelerator.is_main_process and not (path.is_file() and _has_what_training_needs(path, pipeline)):
        encode_clips(pipeline, clips).save(path)
    accelerator.wait_for_everyone()
    encoded = EncodedClips.load(path)
    if len(encoded) != len(clips):
        raise InputError(f"{path} holds {len(encoded)} encoded clips and {clips.root} {len(clips)}: delete {path} to "
                         "encode them again")
    return encoded


def _has_what_training_needs(path: Path, pipeline: OrbitPipeline) -> bool:
    """False for encoded clips without the masks a foreground head trains on (encoded before they were kept)."""
    if not pipeline.unet.config.alpha_channels:
        return True
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return "masks" in f.keys()


@torch.no_grad()
def heldout_psnr(pipeline: OrbitPipeline, clips: OrbitClips, config: FinetuneConfig) -> float | None:
    """Mean PSNR (dB) of generated against rendered frames of the first ``eval_clips`` held-out clips; None (with a
    warning) when the model generates NaN or Inf, which has no PSNR."""
    errors = []
    was_training = pipeline.unet.training
    pipeline.unet.eval()
    try:
        for index in range(min(config.eval_clips, len(clips))):
            clip = clips.clip(index)
            frames = pipeline(clip.input_view, clip.orbit, num_steps=config.eval_steps, seed=config.seed)
            if not torch.isfinite(frames).all():
                warn(f"the model generated NaN or Inf frames for {clips.root / clips.entries[index]['path']}: no "
                     "held-out PSNR")
                return None
            for k in range(clip.orbit.num_frames):
                if k != clip.orbit.input_index:
                    errors.append(float(((frames[k] - clip.frames[k]) ** 2).mean()))
    finally:
        pipeline.unet.train(was_training)
    return float(sum(-10 * math.log10(max(e, 1e-12)) for e in errors) / len(errors))


def _starting_pipeline(config: FinetuneConfig, clips: OrbitClips) -> OrbitPipeline:
    """The model to fine-tune: ``config.base``, or a fresh one of ``config.architecture``. Either way its defaults
    (frames, image size, field of view, radius) become the dataset's: what the fine-tuned model was taught to make.
    InputError when the base model cannot make the dataset's clips."""
    sample = clips.clip(0)
    camera = sample.orbit.cameras[0]
    fov = math.degrees(2 * math.atan(camera.width / (2 * camera.K[0, 0])))
    data = OrbitDefaults(num_frames=sample.orbit.num_frames, image_size=camera.width, fov_deg=round(fov, 4),
                         radius=float(round(sum(camera.center**2) ** 0.5, 4)), elevation_deg=10.0)  # fmt: skip
    if config.base is None:
        architecture = ARCHITECTURES[config.architecture]
        pipeline = replace(architecture, lift=architecture.lift or config.lift).build(data, seed=config.seed)
        return _with_foreground(pipeline, config)
    pipeline = _with_foreground(OrbitPipeline.from_pretrained(Path(config.base)), config)
    if config.lift and not pipeline.unet.config.lift_channels:
        pipeline.unet = with_lift_input(pipeline.unet)
    limit, scale = pipeline.unet.config.num_frames, pipeline.vae_scale
    if data.num_frames > limit or data.image_size % scale:
        raise InputError(f"base {config.base} makes 2 to {limit} frames of a size divisible by {scale}, and the clips "
                         f"of {config.data} have {data.num_frames} frames of {data.image_size} px: render the dataset "
                         "to fit (num_frames, image_size) or choose another base")
    base = pipeline.defaults
    if (base.num_frames, base.image_size) != (data.num_frames, data.image_size):
        info(f"the fine-tuned model makes what the dataset holds, {data.num_frames} frames at {data.image_size} px "
             f"(the base model: {base.num_frames} at {base.image_size} px)")
    pipeline.defaults = replace(data, elevation_deg=base.elevation_deg, sample_steps=base.sample_steps,
                                min_guidance=base.min_guidance, max_guidance=base.max_guidance,
                                edge_blur_px=base.edge_blur_px, mirror_average=base.mirror_average)  # fmt: skip
    return pipeline


def _with_foreground(pipeline: OrbitPipeline, config: FinetuneConfig) -> OrbitPipeline:
    """``pipeline`` with a foreground head when ``config.foreground`` asks for one and its UNet has none."""
    if config.foreground and not pipeline.unet.config.alpha_channels:
        pipeline.unet = with_alpha_head(pipeline.unet, pipeline.vae_scale)
    return pipeline


def _trainable_unet(pipeline: OrbitPipeline, config: FinetuneConfig):
    """The UNet ready to train and its trainable parameters; VAE and image tower frozen."""
    for module in (pipeline.vae, pipeline.image_encoder):
        module.requires_grad_(False)
    unet = pipeline.unet
    if config.lora_rank > 0:
        from peft import LoraConfig, inject_adapter_in_model

        lora = LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha or config.lora_rank,
                          target_modules=LORA_TARGETS, init_lora_weights="gaussian")  # fmt: skip
        torch.manual_seed(config.seed)
        unet = inject_adapter_in_model(lora, unet)
        for name, parameter in unet.named_parameters():
            parameter.requires_grad_("lora_" in name or name.startswith("conv_alpha."))  # a new head trains whole
    else:
        unet.requires_grad_(True)
    unet.train()
    return unet, [p for p in unet.parameters() if p.requires_grad]


def _parameter_groups(unet, trainable: list[Tensor], config: FinetuneConfig) -> list[dict]:
    """AdamW's parameter groups: everything at ``learning_rate``; or, when ``config.foreground_learning_rate`` is
    set, the foreground head in a second group at that rate."""
    head = {id(p) for p in unet.conv_alpha.parameters()} if getattr(unet, "conv_alpha", None) is not None else set()
    if config.foreground_learning_rate is None or not head:
        return [{"params": trainable}]
    return [{"params": [p for p in trainable if id(p) not in head]},
            {"params": [p for p in trainable if id(p) in head]}]


def _ema(trainable: list[Tensor], config: FinetuneConfig):
    if config.ema_decay <= 0:
        return None
    from diffusers.training_utils import EMAModel

    return EMAModel(trainable, decay=config.ema_decay)


def _save_state(path: Path, step: int, losses: list[float], trainable, optimizer, ema) -> None:
    state = {
        "step": step,
        "losses": losses,
        "trainable": [p.detach().cpu() for p in trainable],
        "optimizer": optimizer.state_dict(),
        "ema": None if ema is None else ema.state_dict(),
    }
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def _read_state(path: Path, config: FinetuneConfig) -> dict:
    """The checkpoint at ``path`` (tensors memory-mapped: nothing is copied until used); InputError naming the file
    for one that is damaged or foreign, or that is already past ``config.steps``."""
    start_over = "delete it and run without --resume to start over"
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected pickle protocol")  # a foreign pickle: refused below
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)  # tensors and plain data
    except Exception as error:  # torch.load raises what its zip reader or restricted unpickler met, of many types
        raise InputError(f"{path} is not a readable fine-tuning checkpoint ({type(error).__name__}: truncated, "
                         f"damaged or written by another program): {start_over}") from None
    if not _is_state(state):
        raise InputError(f"{path} is not a fine-tuning checkpoint (no step, losses, trainable weights, optimizer and "
                         f"ema): {start_over}")
    if state["step"] > config.steps:
        raise InputError(f"{path} is at step {state['step']}, beyond steps {config.steps}: set steps to at least "
                         f"{state['step']} to train it further")
    return state


def _load_state(state: dict, path: Path, trainable, optimizer, ema) -> tuple[int, list[float]]:
    """(step, losses) of ``state`` (``_read_state``), its weights and optimizer state loaded; InputError naming
    ``path`` for a checkpoint of a run with other trainable weights."""
    start_over = "delete it and run without --resume to start over"
    saved = state["trainable"]
    if [t.shape for t in saved] != [p.shape for p in trainable]:
        raise InputError(f"{path} was saved by a run with other trainable weights: resume with its own config, or "
                         f"{start_over}")
    try:
        optimizer.load_state_dict(state["optimizer"])
        if ema is not None and state["ema"] is not None:
            ema.load_state_dict(state["ema"])
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise InputError(f"{path}: its optimizer or EMA state does not fit this run ({type(error).__name__}): resume "
                         f"with its own config, or {start_over}") from None
    with torch.no_grad():
        for parameter, tensor in zip(trainable, saved):
            parameter.copy_(tensor)
    return state["step"], [float(loss) for loss in state["losses"]]


def _is_state(state: object) -> bool:
    """Whether ``state`` has the form ``_save_state`` writes."""
    return (isinstance(state, dict) and {"step", "losses", "trainable", "optimizer", "ema"} <= state.keys()
            and type(state["step"]) is int and state["step"] >= 0 and isinstance(state["losses"], list)
            and len(state["losses"]) == state["step"]
            and all(isinstance(loss, (int, float)) for loss in state["losses"])
            and isinstance(state["trainable"], list) and all(isinstance(t, Tensor) for t in state["trainable"])
            and isinstance(state["optimizer"], dict) and (state["ema"] is None or isinstance(state["ema"], dict)))


def _export(pipeline: OrbitPipeline, unet, trainable, ema, config: FinetuneConfig, out: Path):
    """``model/``: the pipeline with the EMA weights and any LoRA merged into a plain OrbitUNet; returns that UNet."""
    from generate.models.unet import OrbitUNet

    if ema is not None:
        ema.copy_to(trainable)
    unet.eval()
    if config.lora_rank > 0:
        from peft.tuners.lora import LoraLayer
        from safetensors.torch import save_file

        adapters = {k: v.detach().cpu().contiguous() for k, v in unet.state_dict().items() if "lora_" in k}
        save_file(adapters, str(out / "adapters.safetensors"))
        for module in unet.modules():
            if isinstance(module, LoraLayer):
                module.merge()
        merged = {k.replace(".base_layer", ""): v for k, v in unet.state_dict().items() if "lora_" not in k}
        plain = OrbitUNet.from_config(unet.config)
        plain.load_state_dict(merged, strict=True)
        unet = plain
    staging = out / ".model.partial"
    shutil.rmtree(staging, ignore_errors=True)
    OrbitPipeline(unet.float(), pipeline.vae.float(), pipeline.image_encoder.float(), pipeline.defaults)\
        .save_pretrained(staging, getattr(torch, config.export_dtype))  # fmt: skip
    shutil.rmtree(out / "model", ignore_errors=True)
    os.replace(staging, out / "model")
    return unet
