"""``orbit4d image-to-3d``: one photo in; an orbit capture, 3D splats, a mesh and the viewer command out.

The chain, each stage a call into its package, timed for the summary::

    1. foreground   multiview.foreground    the object's mask: --mask, the alpha channel, the plain background
                                            (--no-segment) or GrabCut seeded from the border
    2. framing      generate.framing        cropped, centred and scaled as the model's training renders frame
                                            objects, on its white background
    3. orbit        generate.run            the model's orbit around it (OUT/capture, exact cameras), each view's
                                            mask (the plain background, of the border's colour, connected to the
                                            border; a blurring model's rim matted: soft, in the object's colour),
                                            and points in the visual hull of those masks to start from
    4. splats       reconstruct.train       the ``orbit`` preset (few, disagreeing views of a masked object)
    5. mesh         viewers.meshes          OUT/scene/mesh.glb (--no-mesh skips it)

OUT/capture is reused when it was made from the same photo with the same generation settings (unless --overwrite);
another photo or other settings are refused rather than silently mixed.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL.Image

from multiview.console import console, info, warn
from multiview.errors import InputError



@dataclass(frozen=True)
class ImageTo3DConfig:
    """How the photo becomes an orbit capture (training settings: ``reconstruct.train.TrainConfig``)."""

    weights: Path | None = None
    """Generator: a model folder or an SV3D .safetensors; None: the embedded model (``generate.EMBEDDED_MODEL``)."""
    mask: Path | None = None
    """A mask of the object (white = object) the photo's size; None: the alpha channel or segmentation."""
    segment: bool = True
    """Cut the object out by GrabCut when the photo has no transparency; False (--no-segment): the photo is on a
    plain background and is used as it is."""
    fill: float | None = None
    """Share of the model's image side the object's box fills; None: as in the model's training renders."""
    num_frames: int | None = None
    """Views of the orbit; None: the model's count (SV3D: 21)."""
    elevation_deg: float | None = None
    """Elevation of the photo's camera and of the orbit; None: the model's default (SV3D: 10)."""
    sample_steps: int | None = None
    """Sampling steps of the generator; None: the model's own."""
    seed: int = 0
    """Seed of sampling, of the hull's points and of training."""
    device: str = "auto"
    """auto, cpu or cuda (generation; training follows TrainConfig.device)."""
    half: bool = False
    """Generate in fp16/bf16 on CUDA."""
    hull_points: int = 20_000
    """Points in the visual hull of the orbit's masks (points3D.ply) that the splats start from."""
    hull_max_misses: int = 1
    """Views that may see a hull point outside their mask: generated views do not quite agree."""

    def recipe(self, photo: Path) -> dict:
        """What the capture depends on, as report.json keeps it: a capture is reused only for the same recipe."""
        return {"source": str(Path(photo).absolute()), "weights": None if self.weights is None else
                str(Path(self.weights).absolute()), "mask": None if self.mask is None else str(Path(self.mask)
                .absolute()), "segment": self.segment, "fill": self.fill, "frames": self.num_frames,
                "elevation_deg": self.elevation_deg, "sample_steps": self.sample_steps, "seed": self.seed,
                "hull_points": self.hull_points, "hull_max_misses": self.hull_max_misses}  # fmt: skip


@dataclass(frozen=True)
class Result:
    """Where the outputs are, and how long each stage took."""

    capture: Path
    scene: Path
    mesh: Path | None
    seconds: dict  # stage name -> seconds (a reused capture: 0 for its stages)


def run(config: ImageTo3DConfig, train_config, photo: Path, out_dir: Path, *, overwrite: bool = False,
        resume: bool = False, mesh: bool = True, started: float | None = None) -> Result:  # fmt: skip
    """The whole chain (module docstring) from ``photo`` into ``out_dir``/capture and ``out_dir``/scene; ``mesh``:
    end with ``out_dir``/scene/mesh.glb. ``started``: when the command began, which ``--minutes`` counts from."""
    from multiview.outputs import checked_out_dir, output_lock
    from reconstruct import train

    photo, out_dir = Path(photo), Path(out_dir)
    capture_dir, scene_dir = out_dir / "capture", out_dir / "scene"
    inputs = [photo, *(p for p in (config.weights, config.mask) if p is not None)]
    for folder in (out_dir, capture_dir, scene_dir):  # an --out that holds the photo is refused: it is the user's
        checked_out_dir(folder, inputs)
    train_config.validate()  # settings, the photo and --out are checked before minutes of sampling
    with output_lock(out_dir):  # one run per OUT, from the photo to the mesh
        train.check_out_dir(scene_dir, capture_dir, resume=resume, overwrite=overwrite)
        seconds: dict[str, float] = {}
        if _reusable(capture_dir, config, photo, overwrite):
            info(f"reusing the orbit in {capture_dir}, made from {photo} with these settings (--overwrite redoes it)")
            seconds.update(foreground=0.0, framing=0.0, orbit=0.0)
        else:
            make_capture(config, photo, capture_dir, seconds, overwrite)
        tic = time.perf_counter()
        steps = f"{train_config.steps:,} steps" if train_config.steps else "steps planned for the device"
        _stage(4, "splats", f"training on the orbit ({steps})")
        train.run(train_config, capture_dir, scene_dir, resume=resume, overwrite=overwrite, started=started)
        seconds["splats"] = time.perf_counter() - tic
        tic = time.perf_counter()
        mesh_file = export_mesh(scene_dir) if mesh else None
        seconds["mesh"] = time.perf_counter() - tic
    result = Result(capture_dir, scene_dir, mesh_file, seconds)
    print_summary(result)
    return result


def make_capture(config: ImageTo3DConfig, photo: Path, capture_dir: Path, seconds: dict, overwrite: bool) -> Path:
    """Stages 1-3: the photo's object, framed, and the generated orbit with masks and hull points in
    ``capture_dir`` (written whole or not at all); ``seconds`` gets each stage's time."""
    from generate.framing import frame_object, training_fill
    from generate.run import GenerateConfig, open_pipeline, weights_or_embedded, sample_orbit
    from multiview.foreground import find_foreground
    from multiview.outputs import staged_dir, writable_out_dir

    generate = GenerateConfig(weights=config.weights, num_frames=config.num_frames,
                              elevation_deg=config.elevation_deg, steps=config.sample_steps, seed=config.seed,
                              device=config.device, half=config.half)  # fmt: skip
    generate.validate()
    weights = weights_or_embedded(config.weights)
    inputs = [photo, weights, *([config.mask] if config.mask else [])]
    writable_out_dir(capture_dir, overwrite, inputs)
    tic = time.perf_counter()
    _stage(1, "foreground", f"finding the object in {photo}")
    found = find_foreground(photo, config.mask, config.segment)
    info(f"  {found.method}: the object covers {100 * found.share:.1f}% of the photo")
    seconds["foreground"] = time.perf_counter() - tic
    tic = time.perf_counter()
    _stage(2, "framing", f"loading the generator {weights} and framing the object as it was trained")
    pipeline = open_pipeline(generate, weights)
    defaults = pipeline.defaults
    fill = config.fill or training_fill(defaults.radius, defaults.fov_deg)
    image, alpha, framing = frame_object(found.rgb, found.alpha, defaults.image_size, fill, found.cut_out)
    seconds["framing"] = time.perf_counter() - tic
    tic = time.perf_counter()
    _stage(3, "orbit", f"generating {config.num_frames or defaults.num_frames} views at {defaults.image_size} px "
           f"({config.sample_steps or defaults.sample_steps} sampling steps)")
    # each view's mask from its colours, matted below: a head's masks made worse splats (bench/RESULTS.md, stop 30)
    frames, _, orbit = sample_orbit(pipeline, generate, image, weights)
    with staged_dir(capture_dir, overwrite, inputs) as stage:
        report = {"source_format": "image-to-3d", "source": str(photo.absolute()),
                  "weights": str(Path(weights).absolute()), "foreground": found.method, "framing": framing.to_json(),
                  "device": str(pipeline.device), "recipe": config.recipe(photo)}  # fmt: skip
        write_masked_orbit(stage, image, alpha, frames, orbit, report, config, defaults.edge_blur_px)
    seconds["orbit"] = time.perf_counter() - tic
    return capture_dir


def write_masked_orbit(stage: Path, image: np.ndarray, alpha: np.ndarray, frames, orbit, report: dict,
                       config: ImageTo3DConfig, edge_blur_px: int = 0) -> None:  # fmt: skip
    """The generated capture (``generate.run.write_orbit``) with a mask per view (masks/; the input view's is the
    photo's) and points3D.ply: points in the visual hull of the masks, coloured from the views. ``edge_blur_px``:
    how far the generator blurs silhouettes (its ``OrbitDefaults``); that band of each generated view is matted
    (``blurred_matte``: a soft mask, the object's colour), so that the splats' edges fall half way through the blur
    rather than at its faint outer end (on held-out objects +0.2 dB and +0.04 mask IoU: bench/RESULTS.md)."""
    from generate.run import write_orbit
    from multiview.capture import Capture, Frame, write_capture
    from multiview.foreground import blurred_matte, clean_mask, plain_background_mask
    from multiview.hull import visual_hull_points

    written = write_orbit(stage, image, frames, orbit, None, report)
    (stage / "masks").mkdir()
    masked, masks, pixels = [], [], []
    for index, frame in enumerate(written):
        rgb = np.asarray(PIL.Image.open(frame.image_path).convert("RGB"))
        if index == orbit.input_index:
            mask = alpha > 0.5
        else:
            mask = clean_mask(plain_background_mask(rgb))  # the border's colour: white, or the model's near-white
            if edge_blur_px:  # the rim's colours made whole, its share of object kept in the mask
                mask, rgb = blurred_matte(rgb, mask, edge_blur_px)
                PIL.Image.fromarray(rgb).save(frame.image_path)
        path = stage / "masks" / frame.image_path.name
        PIL.Image.fromarray((mask * 255).round().astype(np.uint8)).save(path)
        masked.append(Frame(frame.image_path, frame.camera, mask_path=path))
        masks.append(mask)
        pixels.append(rgb)
    points, colours = visual_hull_points([f.camera for f in written], masks, pixels, config.hull_points,
                                         config.hull_max_misses, config.seed)  # fmt: skip
    if len(points) == 0:
        warn("the generated views' silhouettes share no volume: splats start from random points instead")
    info(f"  {len(written)} views with masks, {len(points):,} points in their visual hull")
    write_capture(Capture(stage, masked, points if len(points) else None, colours if len(points) else None))


def export_mesh(scene_dir: Path) -> Path | None:
    """Stage 5: SCENE/mesh.glb from the splats, cut to the orbit's masks (``viewers.meshes``); a warning and None
    when the splats yield no mesh (the splats are still the result)."""
    from multiview.console import warn
    from multiview.errors import InputError
    from viewers.meshes import export_scene_mesh

    _stage(5, "mesh", "extracting a mesh from the splats")
    try:
        return Path(export_scene_mesh(scene_dir, use_masks=True, overwrite=True))
    except InputError as error:
        warn(f"no mesh.glb: {error}")
        return None


def print_summary(result: Result) -> None:
    """The stage times, then where the splats, the mesh and the viewer are."""
    from rich.table import Table

    table = Table(title=f"image-to-3d → {result.capture.parent}", title_justify="left")
    table.add_column("stage")
    table.add_column("seconds", justify="right")
    for name, value in result.seconds.items():
        table.add_row(name, f"{value:.1f}")
    table.add_row("total", f"{sum(result.seconds.values()):.1f}")
    console.print(table)
    metrics = _read_json(result.scene / "metrics.json")
    psnr = metrics.get("psnr") if metrics else None
    agreement = f" (the splats reproduce the generated views at {psnr:.1f} dB PSNR)" if psnr is not None else ""
    lines = [f"splats:  {result.scene / 'splats.ply'}{agreement}",
             f"mesh:    {result.mesh}" if result.mesh else "mesh:    not written (--no-mesh, or the splats gave none)",
             f"orbit:   {result.capture} (generated views, their masks and cameras)",
             f"viewer:  orbit4d view {result.scene}"]  # fmt: skip
    print("\n".join(lines), file=sys.stderr)  # unwrapped, so that the paths copy whole


def _stage(number: int, name: str, what: str) -> None:
    info(f"[bold]{number}/5 {name}[/bold]: {what}")


def _reusable(capture_dir: Path, config: ImageTo3DConfig, photo: Path, overwrite: bool) -> bool:
    """Whether ``capture_dir`` holds an orbit made by the same recipe (InputError when it holds another's)."""
    if overwrite or not (capture_dir / "transforms.json").is_file():
        return False
    report = _read_json(capture_dir / "report.json") or {}
    made = report.get("recipe")
    wanted = config.recipe(photo)
    if made == wanted:
        return True
    if not isinstance(made, dict):
        raise InputError(f"{capture_dir} holds a capture image-to-3d did not make: pass --overwrite to replace it, "
                         "or choose another --out")
    changed = [f"{key} {made.get(key)!r} -> {value!r}" for key, value in wanted.items() if made.get(key) != value]
    raise InputError(f"{capture_dir} was made with other settings ({'; '.join(changed)}): pass --overwrite to make "
                     "it again, or choose another --out")


def _read_json(path: Path) -> dict | None:
    try:
        value = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None

