"""Sparse points for a capture whose cameras are known but which has none (instant-ngp captures, renders, generated
orbits): COLMAP's point triangulator with the poses held fixed (``colmap point_triangulator``).

SIFT features on every image, matched between each camera and its ``neighbours`` nearest cameras (by centre and
viewing direction: the poses are known, so no retrieval is needed), then triangulated, merged and filtered by COLMAP
with the capture's own intrinsics and poses. The points land in the capture's world frame, ready to initialise
splats (3DGS starts from SfM points; random initialisation is slower and worse on real scenes).
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pycolmap

from multiview.capture import Capture
from multiview.console import info, track
from multiview.conventions import colmap_K_from_opencv_K
from multiview.errors import SfmError
from multiview.sfm import colmap_logging



@dataclass(frozen=True)
class TriangulationConfig:
    """How points are made from known cameras."""

    max_num_features: int = 8192
    """SIFT features per image."""
    neighbours: int = 10
    """Cameras each camera is matched with (nearest by centre distance and viewing angle)."""
    max_reprojection_error: float = 2.0
    """Points whose mean reprojection error exceeds this many pixels are dropped."""
    num_threads: int = -1
    """COLMAP threads; -1: all cores."""
    seed: int = 0


@dataclass(frozen=True)
class Triangulation:
    """Points in the capture's world frame, and how they were made."""

    xyz: np.ndarray  # [P, 3] float32
    rgb: np.ndarray  # [P, 3] uint8
    pairs: int
    seconds: float

    def summary(self) -> dict:
        return {"points": len(self.xyz), "matched_pairs": self.pairs, "seconds": round(self.seconds, 3)}


def triangulate_capture(capture: Capture, work_dir: Path, config: TriangulationConfig = TriangulationConfig(),
                        verbose: bool = False, source: Path | None = None) -> Triangulation:  # fmt: skip
    """Triangulate points for ``capture`` (pinhole cameras, images inside ``capture.root``); scratch in ``work_dir``.

    ``source``: what the user gave (the folder being imported), named in messages instead of ``capture.root`` when
    that is a staging folder. Raises ``SfmError`` when no point survives (textureless images, cameras that do not
    overlap).
    """
    tic = time.perf_counter()
    named = source or capture.root
    frames = {_relative(frame.image_path, capture.root): frame for frame in capture.frames}
    if any(not frame.camera.is_pinhole for frame in frames.values()):
        raise SfmError(f"{named}: triangulation needs undistorted (pinhole) cameras: import the capture first")
    names = sorted(frames)
    work_dir = Path(work_dir)
    shutil.rmtree(work_dir, ignore_errors=True)
    work_dir.mkdir(parents=True)
    database = work_dir / "database.db"
    steps = ("features", "matching", "triangulation")
    with colmap_logging(verbose):
        for step in track(steps, "triangulating points", total=len(steps)):
            if step == "features":
                _extract(database, capture.root, names, config)
            elif step == "matching":
                pairs = camera_pairs([frames[name].camera for name in names], config.neighbours)
                _match(database, work_dir / "pairs.txt", [(names[i], names[j]) for i, j in pairs], config)
            else:
                reconstruction = _posed_reconstruction(database, frames)
                options = pycolmap.IncrementalPipelineOptions()
                options.num_threads = config.num_threads
                options.triangulation.random_seed = config.seed
                (work_dir / "model").mkdir()
                reconstruction = pycolmap.triangulate_points(
                    reconstruction, database, capture.root, work_dir / "model", options=options
                )
    xyz, rgb = _good_points(reconstruction, config.max_reprojection_error)
    if len(xyz) == 0:
        raise SfmError(f"{named}: no point could be triangulated from {len(names)} images with known poses "
                       "(too little texture or overlap): import with --no-triangulate and train from random points")
    result = Triangulation(xyz, rgb, len(pairs), time.perf_counter() - tic)
    info(f"triangulated {len(xyz):,} points from {len(pairs)} image pairs in {result.seconds:.1f} s")
    return result


def camera_pairs(cameras, neighbours: int) -> list[tuple[int, int]]:
    """Unordered pairs (i < j) linking each camera to its ``neighbours`` nearest: centre distance (in units of the
    median nearest-centre distance) plus the angle between viewing directions (in radians)."""
    n = len(cameras)
    centers = np.array([c.center for c in cameras])
    directions = np.array([c.cam_from_world[2, :3] for c in cameras])  # optical axes in the world
    distance = np.linalg.norm(centers[:, None] - centers[None], axis=-1)
    unit = np.median(np.sort(distance, axis=1)[:, 1]) if n > 1 else 1.0
    angle = np.arccos(np.clip(directions @ directions.T, -1.0, 1.0))
    cost = distance / max(unit, 1e-12) + angle
    np.fill_diagonal(cost, np.inf)
    pairs = set()
    for i in range(n):
        for j in np.argsort(cost[i])[: min(neighbours, n - 1)]:
            pairs.add((min(i, int(j)), max(i, int(j))))
    return sorted(pairs)


def _relative(path: Path, root: Path) -> str:
    return Path(path).relative_to(root).as_posix()


def _extract(database: Path, image_root: Path, names: list[str], config: TriangulationConfig) -> None:
    options = pycolmap.FeatureExtractionOptions()
    options.num_threads = config.num_threads
    options.use_gpu = False
    options.sift.max_num_features = config.max_num_features
    pycolmap.extract_features(
        database,
        image_root,
        image_names=names,
        camera_mode=pycolmap.CameraMode.PER_IMAGE,
        reader_options=pycolmap.ImageReaderOptions(camera_model="PINHOLE"),
        extraction_options=options,
        device=pycolmap.Device.cpu,
    )


def _match(database: Path, pairs_file: Path, pairs: list[tuple[str, str]], config: TriangulationConfig) -> None:
    matching = pycolmap.FeatureMatchingOptions()
    matching.num_threads = config.num_threads
    matching.use_gpu = False
    verification = pycolmap.TwoViewGeometryOptions()
    verification.ransac.random_seed = config.seed
    common = dict(matching_options=matching, verification_options=verification, device=pycolmap.Device.cpu)
    if any(any(c.isspace() for name in pair for c in name) for pair in pairs):
        pycolmap.match_exhaustive(database, **common)  # COLMAP's pair list is space-separated
        return
    pairs_file.write_text("".join(f"{a} {b}\n" for a, b in pairs))
    pairing = pycolmap.ImportedPairingOptions(match_list_path=str(pairs_file))
    pycolmap.match_image_pairs(database, pairing_options=pairing, **common)


def _posed_reconstruction(database: Path, frames: dict) -> pycolmap.Reconstruction:
    """The capture's cameras and poses under the database's image and camera ids, with its keypoints."""
    reconstruction = pycolmap.Reconstruction()
    db = pycolmap.Database.open(database)
    try:
        for image in db.read_all_images():
            camera = frames[image.name].camera
            K = colmap_K_from_opencv_K(camera.K)
            colmap_camera = pycolmap.Camera(camera_id=image.camera_id, model="PINHOLE", width=camera.width,
                                            height=camera.height, params=[K[0, 0], K[1, 1], K[0, 2], K[1, 2]])  # fmt: skip
            reconstruction.add_camera_with_trivial_rig(colmap_camera)
            keypoints = db.read_keypoints(image.image_id)[:, :2].astype(np.float64)
            posed = pycolmap.Image(name=image.name, keypoints=keypoints, camera_id=image.camera_id,
                                   image_id=image.image_id)  # fmt: skip
            pose = camera.cam_from_world
            rigid = pycolmap.Rigid3d(pycolmap.Rotation3d(pose[:3, :3]), pose[:3, 3])
            reconstruction.add_image_with_trivial_frame(posed, rigid)
    finally:
        db.close()
    return reconstruction


def _good_points(reconstruction: pycolmap.Reconstruction, max_error: float) -> tuple[np.ndarray, np.ndarray]:
    points = [p for p in reconstruction.points3D.values() if p.error <= max_error and p.track.length() >= 2]
    xyz = np.array([p.xyz for p in points], dtype=np.float32).reshape(-1, 3)
    rgb = np.array([p.color for p in points], dtype=np.uint8).reshape(-1, 3)
    return xyz, rgb

