"""Structure from motion: pair generation, retry policy, alignment maths, and real captures end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from multiview import sfm
from multiview.align import compare_poses, read_strecha_camera, rotation_angle_deg, umeyama
from multiview.errors import InputError, SfmError
from multiview.sfm import MatchPlan, SfmConfig, denser_plan, initial_plan, sequential_pairs

MAX_SIDE = 1024  # what the frame loader hands SfM in production (1024-1600 px)


# ----------------------------------------------------------------------------- helpers


def downscale_images(src: Path, dst: Path, max_side: int = MAX_SIDE, names: list[str] | None = None) -> Path:
    """JPEG copies of the images in ``src`` with the longer side at most ``max_side`` px, without EXIF."""
    dst.mkdir(parents=True, exist_ok=True)
    for path in sorted(src.iterdir()):
        if path.suffix.lower() not in sfm.IMAGE_SUFFIXES or (names is not None and path.name not in names):
            continue
        with Image.open(path) as image:
            image = image.convert("RGB")
            image.thumbnail((max_side, max_side), Image.LANCZOS)
            image.save(dst / f"{path.stem}.jpg", quality=95)
    return dst


def decode_evenly_spaced(video: Path, dst: Path, count: int) -> Path:
    """``count`` evenly spaced frames of ``video`` as 00000.jpg, 00001.jpg, ... (stand-in for the frame selector)."""
    import av

    with av.open(str(video)) as container:
        frames = [frame.to_image() for frame in container.decode(video=0)]
    dst.mkdir(parents=True, exist_ok=True)
    for k, index in enumerate(np.linspace(0, len(frames) - 1, count).round().astype(int)):
        frames[index].save(dst / f"{k:05d}.jpg", quality=95)
    return dst


def random_similarity(rng: np.random.Generator) -> tuple[float, np.ndarray, np.ndarray]:
    q = rng.normal(size=4)
    w, x, y, z = q / np.linalg.norm(q)
    rotation = np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
            [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
            [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
        ]
    )
    return float(rng.uniform(0.1, 10.0)), rotation, rng.normal(scale=5.0, size=3)


@pytest.fixture(scope="module")
def herz_jesus(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = shared_data / "captures" / "herz_jesus_p8" / "images"
    return downscale_images(src, tmp_path_factory.mktemp("herz_jesus"))


@pytest.fixture(scope="module")
def sacre_coeur(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = shared_data / "captures" / "sacre_coeur" / "mapping"
    return downscale_images(src, tmp_path_factory.mktemp("sacre_coeur"))


# ----------------------------------------------------------------------------- pairs and plans


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 120), overlap=st.integers(1, 15), step=st.integers(1, 30))
def test_sequential_pairs_cardinality(n: int, overlap: int, step: int) -> None:
    pairs = sequential_pairs(n, overlap, step)
    assert pairs == sorted(set(pairs))
    assert all(0 <= i < j < n for i, j in pairs)
    window = {(i, i + d) for i in range(n) for d in range(1, overlap + 1) if i + d < n}
    assert window <= set(pairs)
    keys = sorted(set(range(0, n, step)) | {n - 1})
    assert {(a, b) for a in keys for b in keys if a < b} <= set(pairs)
    if n > 1:
        assert (0, n - 1) in pairs  # the end of an orbit is matched with its start


def test_sequential_pairs_cost_grows_linearly_not_quadratically() -> None:
    n = 600
    pairs = sequential_pairs(n, overlap=10, keyframe_step=10)
    assert len(pairs) < 0.1 * n * (n - 1) / 2  # exhaustive would be 179,700 pairs
    assert (100, 116) in pairs and (100, 164) in pairs  # quadratic strides 16 and 64 beyond the window


def test_initial_plan_follows_the_kind_of_input() -> None:
    config = SfmConfig()
    assert initial_plan(config, 300, ordered=True).matcher == "sequential"
    assert initial_plan(config, 40, ordered=False).matcher == "exhaustive"
    assert initial_plan(config, 151, ordered=False).matcher == "sequential"
    assert initial_plan(SfmConfig(matcher="exhaustive"), 300, ordered=True).matcher == "exhaustive"
    plan = initial_plan(SfmConfig(sequential_overlap=7), 300, ordered=True)
    assert (plan.overlap, plan.keyframe_step) == (7, 7)


def test_denser_plan_adds_pairs_features_or_permissiveness() -> None:
    sequential = MatchPlan("sequential", overlap=10, keyframe_step=10)
    assert denser_plan(sequential, 100, 150, features_capped=True).matcher == "exhaustive"
    wider = denser_plan(sequential, 500, 150, features_capped=True)
    assert (wider.matcher, wider.overlap, wider.keyframe_step) == ("sequential", 20, 5)
    exhaustive = MatchPlan("exhaustive", max_num_features=4096)
    capped = denser_plan(exhaustive, 20, 150, features_capped=True)
    assert (capped.max_num_features, capped.relaxed_mapper) == (8192, True)
    uncapped = denser_plan(exhaustive, 20, 150, features_capped=False)
    assert (uncapped.max_num_features, uncapped.relaxed_mapper) == (4096, True)


@pytest.mark.parametrize(
    "changes",
    [{"matcher": "vocabtree"}, {"mapper": "glomap"}, {"camera_model": "PINHOLEISH"}, {"min_registered_ratio": 1.5}],
)
def test_config_rejects_bad_values_with_one_line(changes: dict) -> None:
    with pytest.raises(InputError) as error:
        SfmConfig(**changes)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("threads", [0, -7])
def test_config_rejects_thread_counts_colmap_refuses(threads: int) -> None:
    with pytest.raises(InputError, match=f"--threads {threads}: use -1"):
        SfmConfig(num_threads=threads)
    assert SfmConfig(num_threads=-1).num_threads == -1 and SfmConfig(num_threads=3).num_threads == 3


def test_missing_or_too_small_folder_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="is not a folder"):
        sfm.run(SfmConfig(), tmp_path / "nope", tmp_path / "work", ordered=False)
    Image.new("RGB", (64, 48)).save(tmp_path / "only.jpg")
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(InputError, match="holds 1 image") as error:
        sfm.run(SfmConfig(), tmp_path, tmp_path / "work", ordered=False)
    assert str(tmp_path) in str(error.value) and "\n" not in str(error.value)


def test_unreadable_image_or_mixed_sizes_for_one_camera_are_input_errors(tmp_path: Path) -> None:
    images = tmp_path / "img"
    images.mkdir()
    Image.new("RGB", (64, 48)).save(images / "a.jpg")
    Image.new("RGB", (48, 64)).save(images / "b.jpg")
    with pytest.raises(InputError, match="2 different sizes") as error:
        sfm.run(SfmConfig(single_camera=True), images, tmp_path / "work", ordered=True, source=tmp_path / "my.mp4")
    assert f"images of {tmp_path / 'my.mp4'}" in str(error.value) and "--camera per-image" in str(error.value)
    (images / "c.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(InputError, match="c.jpg is not a readable image") as error:
        sfm.run(SfmConfig(), images, tmp_path / "work", ordered=False)
    assert "\n" not in str(error.value)


def test_list_images_natural_order(tmp_path: Path) -> None:
    for name in ("frame_10.jpg", "frame_2.png", "frame_1.JPG", "K.txt"):
        (tmp_path / name).write_bytes(b"")
    assert sfm.list_images(tmp_path) == ["frame_1.JPG", "frame_2.png", "frame_10.jpg"]


# ----------------------------------------------------------------------------- alignment


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_umeyama_recovers_a_random_similarity(seed: int) -> None:
    rng = np.random.default_rng(seed)
    scale, rotation, translation = random_similarity(rng)
    source = rng.normal(size=(12, 3))
    sim = umeyama(source, scale * source @ rotation.T + translation)
    assert sim.scale == pytest.approx(scale, rel=1e-9)
    np.testing.assert_allclose(sim.rotation, rotation, atol=1e-9)
    np.testing.assert_allclose(sim.translation, translation, atol=1e-8)
    assert np.linalg.det(sim.rotation) == pytest.approx(1.0)


def test_umeyama_never_returns_a_reflection() -> None:
    source = np.random.default_rng(0).normal(size=(10, 3))
    mirrored = source * np.array([1.0, 1.0, -1.0])
    assert np.linalg.det(umeyama(source, mirrored).rotation) == pytest.approx(1.0)


def test_umeyama_rejects_degenerate_input() -> None:
    with pytest.raises(ValueError, match="at least 3"):
        umeyama(np.zeros((2, 3)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="coincide"):
        umeyama(np.ones((5, 3)), np.zeros((5, 3)))


def test_compare_poses_is_zero_for_a_similar_copy() -> None:
    rng = np.random.default_rng(3)
    scale, rotation, translation = random_similarity(rng)
    reference = np.stack([_random_pose(rng) for _ in range(6)])
    # estimate = the reference in another world: X_est = (R X_ref + t) * s, so cam_from_est = cam_from_ref ∘ inverse
    est_from_ref = np.eye(4)
    est_from_ref[:3, :3], est_from_ref[:3, 3] = rotation, translation
    estimated = reference @ np.linalg.inv(est_from_ref)
    estimated[:, :3, 3] *= scale
    errors = compare_poses(estimated, reference)
    assert errors.center_errors.max() < 1e-9
    assert errors.rotation_errors_deg.max() < 1e-5
    assert errors.summary()["median_center_error_relative"] < 1e-9


def test_rotation_angle_of_a_known_rotation() -> None:
    angle = np.radians(30.0)
    rz = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    assert rotation_angle_deg(np.eye(3), rz) == pytest.approx(30.0)


def test_read_strecha_camera_projects_its_axis_to_the_principal_point(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    _, world_from_cam, center = random_similarity(rng)
    K = np.array([[2759.5, 0, 1520.7], [0, 2764.2, 1006.8], [0, 0, 1]])
    lines = [*(" ".join(map(str, row)) for row in K), "0 0 0", *(" ".join(map(str, row)) for row in world_from_cam)]
    (tmp_path / "0000.jpg.camera").write_text("\n".join([*lines, " ".join(map(str, center)), "3072 2048"]) + "\n")
    camera = read_strecha_camera(tmp_path / "0000.jpg.camera")
    np.testing.assert_allclose(camera.center, center, atol=1e-9)
    np.testing.assert_allclose(camera.project(center + 4.0 * world_from_cam[:, 2]), K[:2, 2], atol=1e-6)
    (tmp_path / "bad.camera").write_text("1 2 3\n")
    with pytest.raises(InputError, match="26"):
        read_strecha_camera(tmp_path / "bad.camera")


def _random_pose(rng: np.random.Generator) -> np.ndarray:
    _, rotation, translation = random_similarity(rng)
    pose = np.eye(4)
    pose[:3, :3], pose[:3, 3] = rotation, translation
    return pose


# ----------------------------------------------------------------------------- real captures


def test_herz_jesus_matches_ground_truth(herz_jesus: Path, shared_data: Path, tmp_path: Path) -> None:
    result = sfm.run(SfmConfig(), herz_jesus, tmp_path / "work", ordered=False)
    assert (result.registered, result.total) == (8, 8)
    assert result.model_dir == tmp_path / "work" / "sparse" / "0"
    assert (result.model_dir / "images.bin").is_file() and (result.model_dir / "points3D.bin").is_file()
    assert 0 < result.mean_reprojection_error_px < 1.0 and result.num_points > 1000
    assert [a["matcher"] for a in result.attempts] == ["exhaustive"]
    json.dumps(result.summary())  # report.json-ready

    poses = sfm.registered_poses(result.model_dir)
    names = sorted(poses)
    gt_dir = shared_data / "captures" / "herz_jesus_p8" / "gt_dense_cameras"
    reference = np.stack([read_strecha_camera(gt_dir / f"{name}.camera").cam_from_world for name in names])
    errors = compare_poses(np.stack([poses[name] for name in names]), reference)
    assert np.median(errors.center_errors) <= 0.01 * errors.reference_extent
    assert np.median(errors.rotation_errors_deg) <= 1.0


def test_sacre_coeur_mixed_cameras(sacre_coeur: Path, tmp_path: Path) -> None:
    import pycolmap

    result = sfm.run(SfmConfig(), sacre_coeur, tmp_path / "work", ordered=False)
    assert result.registered >= 9 and result.total == 10
    assert result.summary()["matcher"] == "exhaustive"
    assert pycolmap.Reconstruction(str(result.model_dir)).num_cameras() == 10  # one camera per photo


def test_too_few_features_retries_with_more_and_keeps_the_better(sacre_coeur: Path, tmp_path: Path) -> None:
    result = sfm.run(SfmConfig(max_num_features=512), sacre_coeur, tmp_path / "work", ordered=False)
    first, second = result.attempts
    assert first["registered"] < 8 and not first["kept"]
    assert (second["max_num_features"], second["relaxed_mapper"], second["kept"]) == (1024, True, True)
    assert result.registered == second["registered"] >= 8


def test_failed_sequential_matching_retries_exhaustively(
    herz_jesus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sfm, "sequential_pairs", lambda n, overlap, step: [(0, 1)])  # a chain that breaks at once
    result = sfm.run(SfmConfig(), herz_jesus, tmp_path / "work", ordered=True)
    first, second = result.attempts
    assert (first["matcher"], second["matcher"]) == ("sequential", "exhaustive")
    assert first["registered"] <= 2 and result.registered == 8
    assert second["seconds"]["features"] < 1.0  # features and matches of the first attempt are reused


def test_unregistrable_images_raise_one_clear_line(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    images = tmp_path / "noise"
    images.mkdir()
    for k in range(5):
        Image.fromarray(rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)).save(images / f"{k}.jpg")
    with pytest.raises(SfmError) as error:
        sfm.run(SfmConfig(), images, tmp_path / "work", ordered=False)
    message = str(error.value)
    assert "\n" not in message
    assert "5 images" in message and str(images) in message
    assert "--matcher exhaustive" not in message and "already matched" in message  # photos are matched exhaustively
    with pytest.raises(SfmError, match="try --matcher exhaustive"):  # sequential twice: exhaustive is worth a try
        sfm.run(SfmConfig(exhaustive_max_images=2), images, tmp_path / "work", ordered=True)


def test_great_wall_video_frames_register(shared_data: Path, tmp_path: Path) -> None:
    frames = decode_evenly_spaced(shared_data / "videos" / "great_wall_aerial.mp4", tmp_path / "frames", 40)
    result = sfm.run(SfmConfig(), frames, tmp_path / "work", ordered=True)
    assert result.total == 40 and result.registered >= 36
    assert result.attempts[0]["matcher"] == "sequential" and len(result.attempts) == 1
    assert (tmp_path / "work" / "attempts" / "1" / "pairs.txt").is_file()


def test_global_mapper_matches_ground_truth(herz_jesus: Path, shared_data: Path, tmp_path: Path) -> None:
    result = sfm.run(SfmConfig(mapper="global"), herz_jesus, tmp_path / "work", ordered=False)
    assert (result.registered, result.summary()["mapper"]) == (8, "global")
    poses = sfm.registered_poses(result.model_dir)
    gt_dir = shared_data / "captures" / "herz_jesus_p8" / "gt_dense_cameras"
    names = sorted(poses)
    reference = np.stack([read_strecha_camera(gt_dir / f"{name}.camera").cam_from_world for name in names])
    errors = compare_poses(np.stack([poses[name] for name in names]), reference)
    assert np.median(errors.center_errors) <= 0.01 * errors.reference_extent
    assert np.median(errors.rotation_errors_deg) <= 1.0


def test_single_thread_runs_repeat_exactly(shared_data: Path, tmp_path: Path) -> None:
    names = [f"000{k}.jpg" for k in range(4)]
    images = downscale_images(shared_data / "captures" / "herz_jesus_p8" / "images", tmp_path / "img", 640, names)
    config = SfmConfig(num_threads=1, seed=7)
    first = sfm.run(config, images, tmp_path / "a", ordered=True)
    second = sfm.run(config, images, tmp_path / "b", ordered=True)
    assert (first.registered, first.num_points) == (second.registered, second.num_points)
    assert first.mean_reprojection_error_px == second.mean_reprojection_error_px
    poses_a, poses_b = sfm.registered_poses(first.model_dir), sfm.registered_poses(second.model_dir)
    assert all(np.array_equal(poses_a[name], poses_b[name]) for name in poses_a)
