"""Round trips and known answers for every camera convention in multiview.conventions."""

from __future__ import annotations

import PIL.Image  # isort: skip  (before pycolmap: pycolmap 4.2.1 breaks PIL's PNG encoder when loaded first)

import math
from pathlib import Path

import numpy as np
import pycolmap
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from multiview.camera import Camera
from multiview.conventions import (
    YUP_FROM_ZUP,
    ZUP_FROM_YUP,
    blender_world_from_cam,
    cam_from_world_from_blender,
    cam_from_world_from_colmap,
    cam_from_world_from_llff,
    cam_from_world_from_opengl_c2w,
    change_world,
    colmap_from_cam_from_world,
    colmap_K_from_opencv_K,
    invert_rigid,
    llff_from_cam_from_world,
    opencv_K_from_colmap_K,
    opengl_c2w_from_cam_from_world,
    qvec_from_rotmat,
    rigid_from_rotation_translation,
    rotmat_from_qvec,
)

# --- strategies ------------------------------------------------------------------------------------------------

_unit = st.floats(-1.0, 1.0, allow_nan=False)
_quaternions = st.tuples(_unit, _unit, _unit, _unit).map(np.array).filter(lambda q: np.linalg.norm(q) > 0.1)
_translations = arrays(np.float64, 3, elements=st.floats(-100.0, 100.0, allow_nan=False))


@st.composite
def rigid_transforms(draw) -> np.ndarray:
    """[4, 4] random rigid transforms (uniform-ish rotations from random quaternions)."""
    return rigid_from_rotation_translation(rotmat_from_qvec(draw(_quaternions)), draw(_translations))


@st.composite
def rigid_batches(draw) -> np.ndarray:
    """[B, 4, 4] batches of rigid transforms, B in 1..4."""
    return np.stack(draw(st.lists(rigid_transforms(), min_size=1, max_size=4)))


def _rotation_about(axis: str, degrees: float) -> np.ndarray:
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    return {
        "x": np.array([[1, 0, 0], [0, c, -s], [0, s, c]]),
        "y": np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]]),
        "z": np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]),
    }[axis]


# --- round trips -----------------------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(rigid_batches())
def test_opengl_round_trip(cam_from_world):
    c2w = opengl_c2w_from_cam_from_world(cam_from_world)
    assert c2w.shape == cam_from_world.shape
    np.testing.assert_allclose(cam_from_world_from_opengl_c2w(c2w), cam_from_world, atol=1e-9)


@settings(max_examples=60, deadline=None)
@given(rigid_batches())
def test_colmap_round_trip(cam_from_world):
    qvec, tvec = colmap_from_cam_from_world(cam_from_world)
    assert qvec.shape == cam_from_world.shape[:-2] + (4,)
    assert np.all(qvec[..., 0] >= 0)
    np.testing.assert_allclose(np.linalg.norm(qvec, axis=-1), 1.0, atol=1e-12)
    np.testing.assert_allclose(cam_from_world_from_colmap(qvec, tvec), cam_from_world, atol=1e-9)


@settings(max_examples=60, deadline=None)
@given(_quaternions)
def test_quaternion_round_trip_up_to_sign(q):
    q = q / np.linalg.norm(q)
    back = qvec_from_rotmat(rotmat_from_qvec(q))
    assert back[0] >= 0
    assert min(np.abs(back - q).max(), np.abs(back + q).max()) < 1e-9  # q and -q are the same rotation


@settings(max_examples=60, deadline=None)
@given(rigid_batches())
def test_blender_round_trip(cam_from_world):
    np.testing.assert_allclose(
        cam_from_world_from_blender(blender_world_from_cam(cam_from_world)), cam_from_world, atol=1e-9
    )


@settings(max_examples=60, deadline=None)
@given(rigid_batches())
def test_llff_round_trip(cam_from_world):
    llff = llff_from_cam_from_world(cam_from_world)
    assert llff.shape == cam_from_world.shape[:-2] + (3, 4)
    np.testing.assert_allclose(cam_from_world_from_llff(llff), cam_from_world, atol=1e-9)


@settings(max_examples=60, deadline=None)
@given(rigid_batches(), rigid_transforms())
def test_change_world_round_trip_and_camera_centre(cam_from_world, new_from_old):
    moved = change_world(cam_from_world, new_from_old)
    np.testing.assert_allclose(change_world(moved, invert_rigid(new_from_old)), cam_from_world, atol=1e-9)
    # The camera centre moves with the world; a world point keeps its camera coordinates.
    centres_old = invert_rigid(cam_from_world)[..., :3, 3]
    centres_new = invert_rigid(moved)[..., :3, 3]
    np.testing.assert_allclose(centres_new, centres_old @ new_from_old[:3, :3].T + new_from_old[:3, 3], atol=1e-8)


@settings(max_examples=30, deadline=None)
@given(rigid_transforms())
def test_invert_rigid_is_the_inverse(T):
    np.testing.assert_allclose(invert_rigid(T) @ T, np.eye(4), atol=1e-9)


def test_K_pixel_convention_round_trip():
    K = np.array([[500.0, 0.0, 320.0], [0.0, 510.0, 240.0], [0.0, 0.0, 1.0]])
    colmap = colmap_K_from_opencv_K(K)
    np.testing.assert_allclose(colmap[:2, 2], [320.5, 240.5])
    np.testing.assert_allclose(colmap[[0, 1], [0, 1]], [500.0, 510.0])
    np.testing.assert_allclose(opencv_K_from_colmap_K(colmap), K)


# --- known answers ---------------------------------------------------------------------------------------------


def test_opengl_camera_on_plus_z_looks_at_origin():
    """An OpenGL camera at (0, 0, 5) with identity rotation looks down -z, i.e. at the origin."""
    c2w = np.eye(4)
    c2w[2, 3] = 5.0
    cam_from_world = cam_from_world_from_opengl_c2w(c2w)
    world_from_cam = invert_rigid(cam_from_world)
    np.testing.assert_allclose(world_from_cam[:3, 2], [0, 0, -1])  # OpenCV z (forward) -> world -z
    np.testing.assert_allclose(world_from_cam[:3, 1], [0, -1, 0])  # OpenCV y (down) -> world -y
    np.testing.assert_allclose(world_from_cam[:3, 0], [1, 0, 0])
    np.testing.assert_allclose(world_from_cam[:3, 3], [0, 0, 5])
    camera = Camera(K=np.diag([100.0, 100.0, 1.0]), cam_from_world=cam_from_world, width=1, height=1)
    np.testing.assert_allclose(camera.project(np.array([0.0, 0.0, 0.0])), [0.0, 0.0], atol=1e-12)
    # World +x appears on the right of the image, world +y (OpenGL up) at the top (smaller v).
    u, v = camera.project(np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])).T
    assert u[0] > 0 and v[1] < 0


def test_colmap_identity_quaternion():
    cam_from_world = cam_from_world_from_colmap(np.array([1.0, 0.0, 0.0, 0.0]), np.array([1.0, 2.0, 3.0]))
    expected = np.eye(4)
    expected[:3, 3] = [1, 2, 3]
    np.testing.assert_allclose(cam_from_world, expected)
    np.testing.assert_allclose(invert_rigid(cam_from_world)[:3, 3], [-1, -2, -3])  # camera centre = -R^T t


def test_quaternion_90_degrees_about_z_and_180_degree_rotations():
    s = math.sqrt(0.5)
    np.testing.assert_allclose(rotmat_from_qvec(np.array([s, 0, 0, s])), _rotation_about("z", 90), atol=1e-12)
    np.testing.assert_allclose(qvec_from_rotmat(_rotation_about("z", 90)), [s, 0, 0, s], atol=1e-12)
    # 180 degrees (w = 0): the branchy textbook formula divides by ~0 here.
    np.testing.assert_allclose(np.abs(qvec_from_rotmat(np.diag([1.0, -1.0, -1.0]))), [0, 1, 0, 0], atol=1e-12)
    np.testing.assert_allclose(np.abs(qvec_from_rotmat(np.diag([-1.0, -1.0, 1.0]))), [0, 0, 0, 1], atol=1e-12)


def test_colmap_conversion_matches_pycolmap_and_images_txt(tmp_path: Path):
    """Our qvec/tvec reading agrees with what pycolmap writes to images.txt (QW QX QY QZ TX TY TZ)."""
    options = pycolmap.SyntheticDatasetOptions(num_rigs=1, num_frames_per_rig=3, num_points3D=10)
    pycolmap.set_random_seed(1)
    reconstruction = pycolmap.synthesize_dataset(options)
    reconstruction.write_text(tmp_path)
    lines = [line for line in (tmp_path / "images.txt").read_text().splitlines() if not line.startswith("#")]
    for line in lines[::2]:
        fields = line.split()
        qvec, tvec, name = np.array(fields[1:5], float), np.array(fields[5:8], float), fields[9]
        expected = reconstruction.find_image_with_name(name).cam_from_world().matrix()
        cam_from_world = cam_from_world_from_colmap(qvec, tvec)
        np.testing.assert_allclose(cam_from_world[:3], expected, atol=1e-9)
        back, _ = colmap_from_cam_from_world(cam_from_world)
        np.testing.assert_allclose(back, qvec if qvec[0] >= 0 else -qvec, atol=1e-9)


def test_blender_default_camera_orientation():
    """Identity matrix_world looks straight down (-Z) with +Y up; the default scene camera looks at the origin."""
    world_from_cam = invert_rigid(cam_from_world_from_blender(np.eye(4)))
    np.testing.assert_allclose(world_from_cam[:3, 2], [0, 0, -1])  # forward
    np.testing.assert_allclose(world_from_cam[:3, 1], [0, -1, 0])  # image down = -Y
    # Blender's startup camera: location (7.3589, -6.9258, 4.9583), XYZ Euler (63.559, 0, 46.692) degrees.
    rotation = _rotation_about("z", 46.692) @ _rotation_about("y", 0.0) @ _rotation_about("x", 63.559)
    location = np.array([7.3589, -6.9258, 4.9583])
    matrix_world = rigid_from_rotation_translation(rotation, location)
    forward = invert_rigid(cam_from_world_from_blender(matrix_world))[:3, 2]
    to_origin = -location / np.linalg.norm(location)
    assert np.degrees(np.arccos(forward @ to_origin)) < 2.0
    round_trip = blender_world_from_cam(cam_from_world_from_blender(matrix_world))
    np.testing.assert_allclose(round_trip, matrix_world, atol=1e-12)


def test_zup_from_yup():
    np.testing.assert_allclose(ZUP_FROM_YUP[:3, :3] @ [0, 1, 0], [0, 0, 1])  # up stays up
    np.testing.assert_allclose(ZUP_FROM_YUP[:3, :3] @ [0, 0, 1], [0, -1, 0])  # glTF front (+Z) -> Blender -Y
    np.testing.assert_allclose(ZUP_FROM_YUP @ YUP_FROM_ZUP, np.eye(4))
    assert np.linalg.det(ZUP_FROM_YUP) == pytest.approx(1.0)


def test_llff_axes_match_llff_loader():
    """LLFF's loader turns [down, right, back] into OpenGL's [right, up, back] by [c1, -c0, c2]."""
    rotation = _rotation_about("x", 20) @ _rotation_about("z", -35)
    llff = np.concatenate([rotation, [[1.0], [2.0], [3.0]]], axis=1)
    opengl = np.eye(4)
    opengl[:3, :4] = np.stack([llff[:, 1], -llff[:, 0], llff[:, 2], llff[:, 3]], axis=1)
    np.testing.assert_allclose(cam_from_world_from_llff(llff), cam_from_world_from_opengl_c2w(opengl), atol=1e-12)


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match=r"\[\.\.\., 4, 4\]"):
        opengl_c2w_from_cam_from_world(np.eye(3))
    with pytest.raises(ValueError, match="zero quaternion"):
        rotmat_from_qvec(np.zeros(4))


# --- the pixel-centre convention, checked against pycolmap itself ----------------------------------------------


def test_colmap_principal_point_is_ours_plus_half_a_pixel():
    """pycolmap's Camera.rescale and our Camera.scaled agree only through the +0.5 shift."""
    colmap_camera = pycolmap.Camera(model="PINHOLE", width=64, height=48, params=[40.0, 41.0, 30.25, 20.75])
    ours = Camera(opencv_K_from_colmap_K(colmap_camera.calibration_matrix()), np.eye(4), 64, 48)
    colmap_camera.rescale(0.5)
    np.testing.assert_allclose(
        opencv_K_from_colmap_K(colmap_camera.calibration_matrix()), ours.scaled(0.5).K, atol=1e-12
    )


def test_pycolmap_undistorter_samples_pixel_centres_at_half_integers(tmp_path: Path):
    """Halving a horizontal ramp: output column j reads source column 2j + 0.5 (pixel-corner convention)."""
    camera = pycolmap.Camera(model="PINHOLE", width=64, height=48, params=[40.0, 40.0, 32.0, 24.0], camera_id=1)
    reconstruction = pycolmap.Reconstruction()
    reconstruction.add_camera_with_trivial_rig(camera)
    image = pycolmap.Image(name="ramp.png", camera_id=1, image_id=1)
    reconstruction.add_image_with_trivial_frame(image, pycolmap.Rigid3d())
    (tmp_path / "model").mkdir()
    (tmp_path / "images").mkdir()
    reconstruction.write(tmp_path / "model")
    ramp = np.tile((np.arange(64) * 4).astype(np.uint8)[None, :, None], (48, 1, 3))
    PIL.Image.fromarray(ramp).save(tmp_path / "images" / "ramp.png")
    halve = pycolmap.UndistortCameraOptions(max_image_size=32)
    pycolmap.undistort_images(tmp_path / "out", tmp_path / "model", tmp_path / "images", undistort_options=halve)
    row = np.asarray(PIL.Image.open(tmp_path / "out" / "images" / "ramp.png"))[10, 1:-1, 0].astype(float)
    columns = np.arange(1, 31)
    np.testing.assert_allclose(row, 4 * (2 * columns + 0.5), atol=1.0)
