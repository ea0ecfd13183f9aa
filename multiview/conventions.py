"""Every conversion between orbit4d's camera convention and the others, in one place.

Internally a pose is ``cam_from_world``: a [..., 4, 4] rigid transform taking world points to OpenCV camera
coordinates (x right, y down, z forward). Other tools use:

- OpenGL / nerfstudio / instant-ngp ``transform_matrix``: camera-to-world with camera axes x right, y up, z back.
- COLMAP: ``qvec`` (w, x, y, z) and ``tvec``, which together *are* ``cam_from_world`` in OpenCV axes.
- Blender: a camera object's ``matrix_world`` is camera-to-world with camera axes x right, y up, z back (the camera
  looks down its local -Z); Blender's world is Z-up.
- glTF: Y-up world (+Z towards the viewer); ``ZUP_FROM_YUP`` is what Blender's glTF importer applies.
- LLFF ``poses_bounds.npy``: camera-to-world 3x4 with camera axes [down, right, back].

Pixel coordinates: orbit4d's ``K`` follows OpenCV, where the centre of the top-left pixel is (0, 0). COLMAP,
nerfstudio, instant-ngp and gsplat's rasterizer put the top-left pixel *corner* at (0, 0), so the centre of pixel
(i, j) is (j + 0.5, i + 0.5) and their principal point is ours + 0.5. Checked against pycolmap 4.2.1: its
undistorter, resampling a horizontal ramp image at half size, reads source column 2j + 0.5 for output column j, and
``Camera.rescale(s)`` maps cx to s * cx (both hold only in the corner convention).
The focal lengths are the same in both conventions.

Naming: ``a_from_b`` maps b-coordinates to a-coordinates and composes right to left.
All functions are pure numpy, float64, and broadcast over leading batch dimensions ``...``.
"""

from __future__ import annotations

import numpy as np

# Flips the camera's y and z axes: OpenCV camera axes <-> OpenGL camera axes. Its own inverse.
OPENGL_FROM_OPENCV_CAM = np.diag([1.0, -1.0, -1.0, 1.0])
OPENCV_FROM_OPENGL_CAM = OPENGL_FROM_OPENCV_CAM

# Y-up world (glTF) -> Z-up world (Blender): +90 degrees about x, so +Y -> +Z and +Z -> -Y.
ZUP_FROM_YUP = np.array(
    [
        [1.0, 0.0, 0.0, 0.0],
        [0.0, 0.0, -1.0, 0.0],
        [0.0, 1.0, 0.0, 0.0],
        [0.0, 0.0, 0.0, 1.0],
    ]
)
YUP_FROM_ZUP = ZUP_FROM_YUP.T.copy()

# Columns: OpenCV's camera axes (right, down, forward) in LLFF's camera axes (down, right, back). Its own inverse.
_LLFF_FROM_OPENCV_AXES = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, -1.0]])

# Principal point offset between the pixel-corner convention (COLMAP & co.) and OpenCV's pixel-centre one.
COLMAP_PIXEL_OFFSET = 0.5


def _as_matrices(T: np.ndarray, rows: int, cols: int, name: str) -> np.ndarray:
    T = np.asarray(T, dtype=np.float64)
    if T.shape[-2:] != (rows, cols):
        raise ValueError(f"{name} must have shape [..., {rows}, {cols}], got {T.shape}")
    return T


def invert_rigid(T: np.ndarray) -> np.ndarray:
    """Inverse of rigid transforms [..., 4, 4] -> [..., 4, 4] (rotation transposed, no general inverse)."""
    T = _as_matrices(T, 4, 4, "T")
    R = T[..., :3, :3]
    t = T[..., :3, 3]
    out = np.zeros_like(T)
    Rt = np.swapaxes(R, -1, -2)
    out[..., :3, :3] = Rt
    out[..., :3, 3] = -np.einsum("...ij,...j->...i", Rt, t)
    out[..., 3, 3] = 1.0
    return out


def rigid_from_rotation_translation(R: np.ndarray, t: np.ndarray) -> np.ndarray:
    """[..., 3, 3] rotations and [..., 3] translations -> [..., 4, 4] homogeneous transforms."""
    R = _as_matrices(R, 3, 3, "R")
    t = np.asarray(t, dtype=np.float64)
    batch = np.broadcast_shapes(R.shape[:-2], t.shape[:-1])
    out = np.zeros(batch + (4, 4))
    out[..., :3, :3] = R
    out[..., :3, 3] = t
    out[..., 3, 3] = 1.0
    return out


# --- OpenGL / nerfstudio / instant-ngp -------------------------------------------------------------------------


def opengl_c2w_from_cam_from_world(cam_from_world: np.ndarray) -> np.ndarray:
    """OpenCV ``cam_from_world`` [..., 4, 4] -> OpenGL camera-to-world [..., 4, 4] (nerfstudio ``transform_matrix``).

    A general inverse, like its twin below: files such as instant-ngp's carry rotations that are orthonormal only to
    ~1e-6, and read-then-write must give back the file's numbers.
    """
    cam_from_world = _as_matrices(cam_from_world, 4, 4, "cam_from_world")
    return np.linalg.inv(cam_from_world) @ OPENCV_FROM_OPENGL_CAM


def cam_from_world_from_opengl_c2w(c2w: np.ndarray) -> np.ndarray:
    """OpenGL camera-to-world [..., 4, 4] (nerfstudio / instant-ngp ``transform_matrix``) -> ``cam_from_world``."""
    c2w = _as_matrices(c2w, 4, 4, "c2w")
    return OPENCV_FROM_OPENGL_CAM @ np.linalg.inv(c2w)


# --- COLMAP ----------------------------------------------------------------------------------------------------


def rotmat_from_qvec(qvec: np.ndarray) -> np.ndarray:
    """Unit quaternions [..., 4] in (w, x, y, z) order -> rotation matrices [..., 3, 3]. Normalises the input."""
    q = np.asarray(qvec, dtype=np.float64)
    if q.shape[-1] != 4:
        raise ValueError(f"qvec must have shape [..., 4] (w, x, y, z), got {q.shape}")
    norm = np.linalg.norm(q, axis=-1, keepdims=True)
    if np.any(norm < 1e-12):
        raise ValueError("qvec has a zero quaternion")
    w, x, y, z = np.moveaxis(q / norm, -1, 0)
    R = np.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ],
        axis=-1,
    )  # fmt: skip
    return R.reshape(q.shape[:-1] + (3, 3))


def qvec_from_rotmat(R: np.ndarray) -> np.ndarray:
    """Rotation matrices [..., 3, 3] -> unit quaternions [..., 4] (w, x, y, z) with w >= 0.

    Takes the eigenvector of the largest eigenvalue of the symmetric 4x4 matrix of Bar-Itzhack (2000), which is
    stable for every rotation, including 180-degree ones.
    """
    R = _as_matrices(R, 3, 3, "R")
    r = {f"{i}{j}": R[..., i, j] for i in range(3) for j in range(3)}
    K = np.stack(
        [
            r["00"] - r["11"] - r["22"], r["10"] + r["01"], r["20"] + r["02"], r["21"] - r["12"],
            r["10"] + r["01"], r["11"] - r["00"] - r["22"], r["21"] + r["12"], r["02"] - r["20"],
            r["20"] + r["02"], r["21"] + r["12"], r["22"] - r["00"] - r["11"], r["10"] - r["01"],
            r["21"] - r["12"], r["02"] - r["20"], r["10"] - r["01"], r["00"] + r["11"] + r["22"],
        ],
        axis=-1,
    ).reshape(R.shape[:-2] + (4, 4)) / 3.0  # fmt: skip
    _, vecs = np.linalg.eigh(K)
    xyzw = vecs[..., :, -1]
    q = np.concatenate([xyzw[..., 3:], xyzw[..., :3]], axis=-1)
    return np.where(q[..., :1] < 0, -q, q)


def cam_from_world_from_colmap(qvec: np.ndarray, tvec: np.ndarray) -> np.ndarray:
    """COLMAP ``qvec`` [..., 4] (w, x, y, z) and ``tvec`` [..., 3] -> ``cam_from_world`` [..., 4, 4]."""
    return rigid_from_rotation_translation(rotmat_from_qvec(qvec), tvec)


def colmap_from_cam_from_world(cam_from_world: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``cam_from_world`` [..., 4, 4] -> COLMAP (``qvec`` [..., 4] wxyz with w >= 0, ``tvec`` [..., 3])."""
    T = _as_matrices(cam_from_world, 4, 4, "cam_from_world")
    return qvec_from_rotmat(T[..., :3, :3]), T[..., :3, 3].copy()


def opencv_K_from_colmap_K(K: np.ndarray) -> np.ndarray:
    """Intrinsics [..., 3, 3] in the pixel-corner convention (COLMAP, nerfstudio, instant-ngp, gsplat) -> OpenCV's."""
    K = _as_matrices(K, 3, 3, "K").copy()
    K[..., :2, 2] -= COLMAP_PIXEL_OFFSET
    return K


def colmap_K_from_opencv_K(K: np.ndarray) -> np.ndarray:
    """OpenCV intrinsics [..., 3, 3] -> the pixel-corner convention of COLMAP, nerfstudio, instant-ngp and gsplat."""
    K = _as_matrices(K, 3, 3, "K").copy()
    K[..., :2, 2] += COLMAP_PIXEL_OFFSET
    return K


# --- Blender and world up axes ---------------------------------------------------------------------------------


def blender_world_from_cam(cam_from_world: np.ndarray) -> np.ndarray:
    """OpenCV ``cam_from_world`` [..., 4, 4] -> a Blender camera object's ``matrix_world`` [..., 4, 4].

    The world is taken as it is: Blender reads it as Z-up. For a Y-up scene, compose ``ZUP_FROM_YUP`` on the left
    of the result (or use ``change_world`` first).
    """
    return opengl_c2w_from_cam_from_world(cam_from_world)


def cam_from_world_from_blender(matrix_world: np.ndarray) -> np.ndarray:
    """A Blender camera object's ``matrix_world`` [..., 4, 4] (rigid, no scale) -> OpenCV ``cam_from_world``."""
    matrix_world = _as_matrices(matrix_world, 4, 4, "matrix_world")
    return OPENCV_FROM_OPENGL_CAM @ invert_rigid(matrix_world)


def change_world(cam_from_world: np.ndarray, new_from_old: np.ndarray) -> np.ndarray:
    """Express poses [..., 4, 4] in another world frame: ``cam_from_new = cam_from_old @ old_from_new``.

    ``new_from_old`` [4, 4] (or [..., 4, 4]) is rigid, e.g. ``ZUP_FROM_YUP``.
    """
    return _as_matrices(cam_from_world, 4, 4, "cam_from_world") @ invert_rigid(new_from_old)


# --- LLFF ------------------------------------------------------------------------------------------------------


def cam_from_world_from_llff(c2w_llff: np.ndarray) -> np.ndarray:
    """LLFF camera-to-world [..., 3, 4] (camera axes [down, right, back]) -> OpenCV ``cam_from_world`` [..., 4, 4]."""
    c2w_llff = _as_matrices(c2w_llff, 3, 4, "c2w_llff")
    R_world_from_opencv = c2w_llff[..., :3, :3] @ _LLFF_FROM_OPENCV_AXES
    return invert_rigid(rigid_from_rotation_translation(R_world_from_opencv, c2w_llff[..., :3, 3]))


def llff_from_cam_from_world(cam_from_world: np.ndarray) -> np.ndarray:
    """OpenCV ``cam_from_world`` [..., 4, 4] -> LLFF camera-to-world [..., 3, 4] (camera axes [down, right, back])."""
    world_from_cam = invert_rigid(cam_from_world)
    out = world_from_cam[..., :3, :].copy()
    out[..., :3, :3] = world_from_cam[..., :3, :3] @ _LLFF_FROM_OPENCV_AXES  # opencv_from_llff == llff_from_opencv
    return out
