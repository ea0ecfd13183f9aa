"""Structure from motion with pycolmap: a folder of images in, one sparse COLMAP model out.

Steps per attempt: SIFT features on the CPU, matching with geometric verification, then incremental
(COLMAP) or global (GLOMAP) mapping. When too few images register, one retry with denser matching runs,
and the attempt with more registered images is kept.

Layout of ``work_dir`` (scratch, owned by this stage)::

    features/<max_num_features>.db   SIFT features only, reused by attempts that extract alike
    attempts/<k>/database.db         features + matches of attempt k
    attempts/<k>/pairs.txt           the image pairs of a sequential attempt
    attempts/<k>/models/<i>/         every model the mapper returned
    sparse/0/                        the kept model (COLMAP binary; unregistered images may be listed
                                     without a pose: read ``Image.has_pose``)

Loop closure without a vocabulary tree: COLMAP's loop detection needs a vocabulary-tree file that it
downloads (and pycolmap aborts the process when it cannot), so ordered frames are matched with
:func:`sequential_pairs` instead: a sliding window, quadratic strides and all pairs of evenly spaced
keyframes, passed to ``pycolmap.match_image_pairs`` as an imported pair list.
"""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pycolmap
from PIL import Image

from multiview.console import info, track, warn
from multiview.errors import InputError, SfmError

MATCHERS = ("auto", "sequential", "exhaustive")
MAPPERS = ("incremental", "global")
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp"})


@dataclass(frozen=True)
class SfmConfig:
    """Settings of the structure-from-motion stage."""

    matcher: str = "auto"
    """"auto" | "sequential" | "exhaustive". auto: sequential (window + keyframe loop closure) for ordered
    video frames, exhaustive for unordered photos up to ``exhaustive_max_images``, sequential in file-name
    order beyond that."""
    mapper: str = "incremental"
    """"incremental" (COLMAP) | "global" (GLOMAP, after focal lengths are calibrated from the view graph)."""
    camera_model: str = "SIMPLE_RADIAL"
    """COLMAP camera model name (SIMPLE_PINHOLE, PINHOLE, SIMPLE_RADIAL, RADIAL, OPENCV, ...)."""
    single_camera: bool | None = None
    """One camera shared by all images. None: shared for ordered (video) frames, one per image for photos."""
    max_num_features: int = 8192
    """SIFT features per image."""
    min_registered_ratio: float = 0.8
    """Below this fraction of registered images, retry once with denser matching."""
    sequential_overlap: int = 10
    """Sequential matching: each frame is matched with this many following frames (and at strides 2^k
    beyond); every ``sequential_overlap``-th frame is a keyframe, and keyframes are matched all against all."""
    exhaustive_max_images: int = 150
    """Unordered sets up to this size are matched exhaustively (quadratic cost); also the largest set for
    which a failed sequential attempt is retried exhaustively."""
    num_threads: int = -1
    """CPU threads for every step; -1: all cores. Use 1 for bit-exact repeatability."""
    seed: int = 0
    """Seed of COLMAP's random generators (RANSAC, mapper)."""
    verbose: bool = False
    """Let COLMAP's own log through to stderr (quiet by default: our progress lines only)."""

    def __post_init__(self) -> None:
        if self.matcher not in MATCHERS:
            raise InputError(f"unknown matcher {self.matcher!r}: use one of {', '.join(MATCHERS)}")
        if self.mapper not in MAPPERS:
            raise InputError(f"unknown mapper {self.mapper!r}: use one of {', '.join(MAPPERS)}")
        if not hasattr(pycolmap.CameraModelId, self.camera_model):
            raise InputError(f"unknown COLMAP camera model {self.camera_model!r}: try SIMPLE_RADIAL or OPENCV")
        if not 0.0 <= self.min_registered_ratio <= 1.0:
            raise InputError(f"min_registered_ratio {self.min_registered_ratio} is not in [0, 1]")
        if self.num_threads != -1 and self.num_threads < 1:
            raise InputError(f"--threads {self.num_threads}: use -1 (all cores) or a thread count of 1 or more")
        if self.max_num_features < 64 or self.sequential_overlap < 1 or self.exhaustive_max_images < 2:
            raise InputError(
                "max_num_features must be >= 64, sequential_overlap >= 1 and exhaustive_max_images >= 2"
            )


@dataclass(frozen=True)
class MatchPlan:
    """How one attempt chooses and matches image pairs, and how permissive its mapper is."""

    matcher: str  # "sequential" | "exhaustive"
    overlap: int = 0  # sequential: window of following frames
    keyframe_step: int = 0  # sequential: every keyframe_step-th frame is a keyframe
    max_num_features: int = 8192
    relaxed_mapper: bool = False  # lower thresholds to start and grow the model

    def describe(self) -> dict:
        """JSON-ready description for ``attempts`` in report.json."""
        out: dict = {"matcher": self.matcher, "max_num_features": self.max_num_features}
        if self.matcher == "sequential":
            out |= {"overlap": self.overlap, "keyframe_step": self.keyframe_step}
        return out | {"relaxed_mapper": self.relaxed_mapper}


@dataclass(frozen=True)
class SfmResult:
    """What :func:`run` kept: the model on disk and the numbers that go into report.json."""

    model_dir: Path  # COLMAP binary model (cameras.bin, images.bin, points3D.bin, ...)
    registered: int
    total: int
    mean_reprojection_error_px: float
    num_points: int
    registered_names: tuple[str, ...]
    attempts: tuple[dict, ...]  # per attempt: plan, registered, total, seconds per step, kept
    seconds: dict[str, float]  # features, matching, mapping (summed over attempts), total
    matcher: str = ""
    mapper: str = ""

    @property
    def registered_ratio(self) -> float:
        return self.registered / self.total if self.total else 0.0

    def summary(self) -> dict:
        """JSON-ready summary for report.json."""
        return {
            "matcher": self.matcher,
            "mapper": self.mapper,
            "registered": self.registered,
            "total": self.total,
            "mean_reprojection_error_px": round(self.mean_reprojection_error_px, 4),
            "num_points": self.num_points,
            "seconds": {k: round(v, 2) for k, v in self.seconds.items()},
            "attempts": list(self.attempts),
        }


@dataclass
class _Attempt:
    """One pass of features + matching + mapping (internal, mutable while it runs)."""

    index: int
    plan: MatchPlan
    database: Path
    total: int
    reconstruction: pycolmap.Reconstruction | None = None
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def registered(self) -> int:
        return self.reconstruction.num_reg_images() if self.reconstruction is not None else 0

    def describe(self, kept: bool) -> dict:
        return {
            **self.plan.describe(),
            "registered": self.registered,
            "total": self.total,
            "seconds": {k: round(v, 2) for k, v in self.seconds.items()},
            "kept": kept,
        }


def run(config: SfmConfig, image_dir: Path, work_dir: Path, ordered: bool, source: Path | None = None,
        mask_dir: Path | None = None) -> SfmResult:  # fmt: skip
    """Pose the images of ``image_dir`` and write the largest model to ``work_dir/sparse/0``.

    ``ordered``: the images are frames of one video, in file-name order (one shared camera, sequential
    matching). ``source``: what the user gave (a video, a photo folder), named in messages instead of
    ``image_dir`` when the images are intermediate frames. ``mask_dir``: COLMAP masks (``<image name>.png``,
    black where no feature is kept: what moves in a dynamic scene). Raises :class:`InputError` for a folder
    without at least two images and :class:`SfmError` when no image can be registered.
    """
    start = time.perf_counter()
    image_dir, work_dir = Path(image_dir).absolute(), Path(work_dir).absolute()
    names = list_images(image_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    for scratch in ("features", "attempts"):  # features are reused within one run only
        shutil.rmtree(work_dir / scratch, ignore_errors=True)
    single_camera = _use_single_camera(config, image_dir, names, ordered, source or image_dir)
    plan = initial_plan(config, len(names), ordered)
    info(f"sfm: {len(names)} images, {plan.matcher} matching, {config.mapper} mapping")
    with colmap_logging(config.verbose):
        pycolmap.set_random_seed(config.seed)
        inputs = _Inputs(config, image_dir, names, work_dir, single_camera, mask_dir)
        attempts = [_run_attempt(1, plan, None, inputs)]
        retry = _retry_plan(attempts[0], config, len(names))
        if retry is not None:
            warn(
                f"sfm: {attempts[0].registered}/{len(names)} images registered, retrying with denser matching"
            )
            attempts.append(_run_attempt(2, retry, attempts[0], inputs))
    best = max(attempts, key=_attempt_rank)
    denser = _denser_matching_hint(attempts)
    if best.reconstruction is None or best.registered == 0:
        raise SfmError(
            f"structure from motion could not register any of the {len(names)} images of {source or image_dir}: "
            f"take photos with more overlap (60-80% between neighbours), use sharper or more frames, or {denser}"
        )
    model_dir = _write_model(best.reconstruction, work_dir)
    result = _make_result(config, best, attempts, model_dir, time.perf_counter() - start)
    info(
        f"sfm: registered {result.registered}/{result.total} images, {result.num_points} points, "
        f"reprojection error {result.mean_reprojection_error_px:.2f} px in {result.seconds['total']:.1f} s"
    )
    if result.registered_ratio < config.min_registered_ratio:
        warn(
            f"sfm: only {result.registered}/{result.total} images registered, the rest are left out; "
            f"more overlap between images may help, or {denser}"
        )
    return result


def _denser_matching_hint(attempts: list[_Attempt]) -> str:
    """What else to try after ``attempts``: exhaustive matching, unless it has already been tried."""
    if all(attempt.plan.matcher != "exhaustive" for attempt in attempts):
        return "try --matcher exhaustive"
    return "a larger --max-size (every pair of images was already matched)"


def list_images(image_dir: Path) -> list[str]:
    """Image file names directly in ``image_dir``, in natural order (frame_2 before frame_10)."""
    if not image_dir.is_dir():
        raise InputError(f"{image_dir} is not a folder: pass the folder that holds the images")
    names = sorted(
        (p.name for p in image_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES),
        key=_natural_key,
    )
    if len(names) < 2:
        raise InputError(
            f"{image_dir} holds {len(names)} image(s) ({', '.join(sorted(IMAGE_SUFFIXES))}): "
            "structure from motion needs at least 2 overlapping images, better 20 or more"
        )
    return names


def initial_plan(config: SfmConfig, num_images: int, ordered: bool) -> MatchPlan:
    """The first attempt's matching, from ``config.matcher`` and the kind of input."""
    matcher = config.matcher
    if matcher == "auto":
        matcher = "sequential" if ordered or num_images > config.exhaustive_max_images else "exhaustive"
    if matcher == "exhaustive":
        return MatchPlan("exhaustive", max_num_features=config.max_num_features)
    overlap = config.sequential_overlap
    return MatchPlan("sequential", overlap, keyframe_step=overlap, max_num_features=config.max_num_features)


def denser_plan(plan: MatchPlan, num_images: int, exhaustive_max_images: int, features_capped: bool) -> MatchPlan:
    """The retry's matching: more pairs for sequential sets, more features and a permissive mapper otherwise.

    Sequential becomes exhaustive when the set is small enough (same features, so the matches already
    made are reused), else doubles the window and halves the keyframe spacing. Exhaustive has no pairs
    left to add: it doubles the features when some image reached ``max_num_features``
    (``features_capped``) and lowers the mapper's thresholds to start and to register. Measured on
    Sacre-Coeur (10 photos): 512 -> 1024 features took 4 -> 9 registered, the relaxed mapper 4 -> 6-7;
    guided matching, DSP-SIFT, affine-shape SIFT and a lower peak threshold did not help.
    """
    if plan.matcher == "sequential" and num_images <= exhaustive_max_images:
        return replace(plan, matcher="exhaustive", overlap=0, keyframe_step=0)
    if plan.matcher == "sequential":
        return replace(plan, overlap=2 * plan.overlap, keyframe_step=max(1, plan.keyframe_step // 2))
    features = 2 * plan.max_num_features if features_capped else plan.max_num_features
    return replace(plan, max_num_features=features, relaxed_mapper=True)


def sequential_pairs(num_images: int, overlap: int, keyframe_step: int) -> list[tuple[int, int]]:
    """Index pairs (i < j) for ordered frames: window, quadratic strides and keyframe loop closure.

    Each frame is paired with the next ``overlap`` frames and with frames at strides 2^k beyond the window
    (as COLMAP's quadratic overlap), and every ``keyframe_step``-th frame (plus the last) is paired with
    every other keyframe, which closes loops such as the end of an orbit meeting its start.
    """
    pairs: set[tuple[int, int]] = set()
    strides = list(range(1, overlap + 1))
    stride = 1 << max(overlap, 1).bit_length()
    while stride < num_images:
        strides.append(stride)
        stride <<= 1
    for i in range(num_images):
        pairs.update((i, i + d) for d in strides if i + d < num_images)
    if keyframe_step > 0 and num_images > 1:
        keys = sorted(set(range(0, num_images, keyframe_step)) | {num_images - 1})
        pairs.update((a, b) for k, a in enumerate(keys) for b in keys[k + 1 :])
    return sorted(pairs)


def registered_poses(model_dir: Path) -> dict[str, np.ndarray]:
    """``cam_from_world`` [4, 4] (OpenCV axes, as COLMAP) of every registered image of a model, by name."""
    reconstruction = pycolmap.Reconstruction(str(model_dir))
    poses = {}
    for image_id in reconstruction.reg_image_ids():
        image = reconstruction.image(image_id)
        pose = np.eye(4)
        pose[:3] = image.cam_from_world().matrix()
        poses[image.name] = pose
    return poses


@contextmanager
def colmap_logging(verbose: bool) -> Iterator[None]:
    """Route COLMAP's glog output to stderr only (no log files); silent unless ``verbose``.

    Quiet means fatal messages only: COLMAP's errors ("Failed to create any sparse model") repeat what
    :func:`run` reports in its own words.
    """
    log = pycolmap.logging
    saved = (log.minloglevel, log.logtostderr, log.alsologtostderr)
    log.logtostderr = True
    log.minloglevel = log.Level.INFO.value if verbose else log.Level.FATAL.value
    try:
        yield
    finally:
        log.minloglevel, log.logtostderr, log.alsologtostderr = saved


@dataclass(frozen=True)
class _Inputs:
    """What every attempt of one run works on."""

    config: SfmConfig
    image_dir: Path
    names: list[str]
    work_dir: Path
    single_camera: bool
    mask_dir: Path | None = None


def _run_attempt(index: int, plan: MatchPlan, previous: _Attempt | None, inputs: _Inputs) -> _Attempt:
    attempt_dir = inputs.work_dir / "attempts" / str(index)
    shutil.rmtree(attempt_dir, ignore_errors=True)
    attempt_dir.mkdir(parents=True)
    attempt = _Attempt(index, plan, attempt_dir / "database.db", total=len(inputs.names))
    steps = ("features", "matching", "mapping")
    for step in track(steps, f"sfm attempt {index}", total=len(steps)):
        tic = time.perf_counter()
        if step == "features":
            _prepare_database(attempt, previous, inputs)
        elif step == "matching":
            _match(attempt, inputs.names, inputs.config)
        else:
            attempt.reconstruction = _map(attempt, inputs.config, inputs.image_dir, attempt_dir / "models")
        attempt.seconds[step] = time.perf_counter() - tic
        info(f"sfm: {step} done in {attempt.seconds[step]:.1f} s")
    return attempt


def _prepare_database(attempt: _Attempt, previous: _Attempt | None, inputs: _Inputs) -> None:
    """Start the attempt's database from the previous attempt's matches or from (cached) features."""
    plan = attempt.plan
    if previous is not None and previous.plan.max_num_features == plan.max_num_features:
        shutil.copyfile(previous.database, attempt.database)  # COLMAP skips pairs already matched
        return
    features_db = inputs.work_dir / "features" / f"{plan.max_num_features}.db"
    if not features_db.exists():
        info(f"sfm: extracting up to {plan.max_num_features} SIFT features from {len(inputs.names)} images")
        _extract_features(
            features_db, inputs.config, plan.max_num_features, inputs.image_dir, inputs.names, inputs.single_camera,
            inputs.mask_dir,
        )
    shutil.copyfile(features_db, attempt.database)


def _extract_features(
    database: Path, config: SfmConfig, max_num_features: int, image_dir: Path, names: list[str], single_camera: bool,
    mask_dir: Path | None = None,
) -> None:
    options = pycolmap.FeatureExtractionOptions()
    options.num_threads = config.num_threads
    options.use_gpu = False
    options.sift.max_num_features = max_num_features
    partial = database.with_name(f".{database.name}.partial")
    partial.parent.mkdir(parents=True, exist_ok=True)
    partial.unlink(missing_ok=True)
    pycolmap.extract_features(
        partial,
        image_dir,
        image_names=names,
        camera_mode=pycolmap.CameraMode.SINGLE if single_camera else pycolmap.CameraMode.PER_IMAGE,
        reader_options=pycolmap.ImageReaderOptions(camera_model=config.camera_model,
                                                   **({"mask_path": str(mask_dir)} if mask_dir else {})),
        extraction_options=options,
        device=pycolmap.Device.cpu,
    )
    partial.replace(database)


def _use_single_camera(config: SfmConfig, image_dir: Path, names: list[str], ordered: bool, source: Path) -> bool:
    """One shared camera for ordered frames (or when asked), if the images agree in size; checks every image.

    COLMAP silently drops images whose size differs from the shared camera's, so a mixed folder gets one
    camera per image (auto) or an :class:`InputError` (``single_camera=True``). ``source`` is named in messages.
    """
    sizes = {_image_size(image_dir / name) for name in names}  # also proves every image readable
    single = ordered if config.single_camera is None else config.single_camera
    if not single or len(sizes) == 1:
        return single
    if config.single_camera:
        raise InputError(
            f"the images of {source} have {len(sizes)} different sizes, so they cannot share one camera "
            "(--camera single): use --camera per-image, or resize them all to one size"
        )
    warn(f"sfm: the frames of {source} have {len(sizes)} different sizes; using one camera per image")
    return False


def _image_size(path: Path) -> tuple[int, int]:
    try:
        with Image.open(path) as image:
            return image.size
    except (OSError, ValueError) as error:
        raise InputError(f"{path} is not a readable image ({error}): remove it or export it again") from None


def _match(attempt: _Attempt, names: list[str], config: SfmConfig) -> None:
    plan = attempt.plan
    matching = pycolmap.FeatureMatchingOptions()
    matching.num_threads = config.num_threads
    matching.use_gpu = False
    verification = pycolmap.TwoViewGeometryOptions()
    verification.ransac.random_seed = config.seed
    common = dict(matching_options=matching, verification_options=verification, device=pycolmap.Device.cpu)
    if plan.matcher == "exhaustive":
        pycolmap.match_exhaustive(attempt.database, **common)
        return
    if any(any(c.isspace() for c in name) for name in names):
        # COLMAP's pair list is space-separated: fall back to its own sequential pairing (no loop closure).
        warn("sfm: image names contain spaces, so keyframe loop closure is off; rename the images to enable it")
        pairing = pycolmap.SequentialPairingOptions(overlap=plan.overlap, quadratic_overlap=True)
        pairing.num_threads = config.num_threads
        pycolmap.match_sequential(attempt.database, pairing_options=pairing, **common)
        return
    pairs = sequential_pairs(len(names), plan.overlap, plan.keyframe_step)
    pairs_file = attempt.database.with_name("pairs.txt")
    pairs_file.write_text("".join(f"{names[i]} {names[j]}\n" for i, j in pairs))
    info(f"sfm: matching {len(pairs)} pairs (window {plan.overlap}, keyframe every {plan.keyframe_step})")
    pairing = pycolmap.ImportedPairingOptions(match_list_path=str(pairs_file))
    pycolmap.match_image_pairs(attempt.database, pairing_options=pairing, **common)


def _map(
    attempt: _Attempt, config: SfmConfig, image_dir: Path, models_dir: Path
) -> pycolmap.Reconstruction | None:
    """Run the mapper; the model with the most registered images, or None when there is none."""
    models_dir.mkdir(parents=True, exist_ok=True)
    if config.mapper == "global":
        if not pycolmap.calibrate_view_graph(attempt.database, _view_graph_options(config)):
            warn("sfm: focal lengths could not be calibrated from the view graph; global mapping may fail")
        models = pycolmap.global_mapping(attempt.database, image_dir, models_dir, _global_options(config))
    else:
        options = _incremental_options(config, attempt.plan.relaxed_mapper)
        models = pycolmap.incremental_mapping(attempt.database, image_dir, models_dir, options)
    if not models:
        return None
    return max(models.values(), key=lambda r: (r.num_reg_images(), r.num_points3D()))


def _incremental_options(config: SfmConfig, relaxed: bool) -> pycolmap.IncrementalPipelineOptions:
    options = pycolmap.IncrementalPipelineOptions()
    options.num_threads = config.num_threads
    options.random_seed = config.seed
    options.mapper.random_seed = config.seed
    options.triangulation.random_seed = config.seed
    if relaxed:
        options.min_num_matches = 10
        options.mapper.init_min_num_inliers = 50
        options.mapper.init_min_tri_angle = 8.0
        options.mapper.abs_pose_min_num_inliers = 15
        options.mapper.abs_pose_min_inlier_ratio = 0.15
        options.mapper.max_reg_trials = 5
    return options


def _global_options(config: SfmConfig) -> pycolmap.GlobalPipelineOptions:
    options = pycolmap.GlobalPipelineOptions()
    options.num_threads = config.num_threads
    options.random_seed = config.seed
    mapper = options.mapper
    mapper.num_threads = config.num_threads
    mapper.random_seed = config.seed
    mapper.rotation_averaging.random_seed = config.seed
    mapper.global_positioning.random_seed = config.seed
    mapper.global_positioning.use_gpu = False
    mapper.bundle_adjustment.ceres.use_gpu = False
    return options


def _view_graph_options(config: SfmConfig) -> pycolmap.ViewGraphCalibrationOptions:
    options = pycolmap.ViewGraphCalibrationOptions()
    options.random_seed = config.seed
    return options


def _retry_plan(first: _Attempt, config: SfmConfig, num_images: int) -> MatchPlan | None:
    if first.registered >= config.min_registered_ratio * num_images:
        return None
    capped = _features_capped(first.database, first.plan.max_num_features)
    return denser_plan(first.plan, num_images, config.exhaustive_max_images, capped)


def _features_capped(database: Path, max_num_features: int) -> bool:
    """Whether some image has as many keypoints as the extractor was allowed to keep."""
    db = pycolmap.Database.open(database)
    try:
        return any(db.num_keypoints_for_image(image.image_id) >= max_num_features for image in db.read_all_images())
    finally:
        db.close()


def _attempt_rank(attempt: _Attempt) -> tuple[int, int, int]:
    """More registered images first, then more points, then the earlier (cheaper) attempt."""
    points = attempt.reconstruction.num_points3D() if attempt.reconstruction is not None else 0
    return attempt.registered, points, -attempt.index


def _write_model(reconstruction: pycolmap.Reconstruction, work_dir: Path) -> Path:
    sparse = work_dir / "sparse"
    shutil.rmtree(sparse, ignore_errors=True)
    model_dir = sparse / "0"
    model_dir.mkdir(parents=True)
    reconstruction.write_binary(model_dir)
    return model_dir


def _make_result(
    config: SfmConfig, best: _Attempt, attempts: list[_Attempt], model_dir: Path, seconds_total: float
) -> SfmResult:
    rec = best.reconstruction
    assert rec is not None  # checked by the caller
    registered_names = tuple(sorted((rec.image(i).name for i in rec.reg_image_ids()), key=_natural_key))
    seconds = {s: sum(a.seconds.get(s, 0.0) for a in attempts) for s in ("features", "matching", "mapping")}
    return SfmResult(
        model_dir=model_dir,
        registered=rec.num_reg_images(),
        total=best.total,
        mean_reprojection_error_px=float(rec.compute_mean_reprojection_error()),
        num_points=rec.num_points3D(),
        registered_names=registered_names,
        attempts=tuple(a.describe(kept=a is best) for a in attempts),
        seconds=seconds | {"total": seconds_total},
        matcher=best.plan.matcher,
        mapper=config.mapper,
    )


def _natural_key(name: str) -> list:
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]
