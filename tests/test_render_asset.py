"""Synthetic captures rendered with Blender: the cameras, depth, normals and ground-truth meshes agree.

Needs bpy (the ``render`` extra) and the shared models; small renders (64-96 px, 4 samples) keep this under a minute.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("bpy", reason="bpy (Blender as a Python module) is not installed: pip install 'orbit4d[render]'")

from PIL import Image, ImageFilter  # noqa: E402

from multiview.capture import read_capture  # noqa: E402
from multiview.errors import InputError  # noqa: E402
from multiview.render_asset import RenderConfig, cameras_for, render_asset  # noqa: E402

FOX_WALK_FRAMES = 17.0  # Walk spans frames 0..17 at 24 fps in Fox.glb


def _model(shared_data: Path, name: str) -> Path:
    path = shared_data / "models" / name
    if not path.is_file():
        pytest.skip(f"{path} is missing from the shared data")
    return path


def _render(tmp_path_factory, config: RenderConfig, model: Path) -> tuple[RenderConfig, Path]:
    out = tmp_path_factory.mktemp(model.stem)
    return config, render_asset(config, model, out)


@pytest.fixture(scope="module")
def avocado(shared_data, tmp_path_factory):
    """A static textured glTF: two orbit rings, non-square images."""
    config = RenderConfig(num_views=4, elevations_deg=(25.0, -15.0), radius=2.2, width=96, height=72, samples=4)
    return _render(tmp_path_factory, config, _model(shared_data, "Avocado/Avocado.gltf"))


@pytest.fixture(scope="module")
def spot(shared_data, tmp_path_factory):
    """A static OBJ (Y-up file rotated by the importer), random sphere of views, white background."""
    config = RenderConfig(layout="sphere", num_views=3, width=64, height=64, samples=2, background="white", seed=3)
    return _render(tmp_path_factory, config, _model(shared_data, "spot/spot/spot_triangulated.obj"))


@pytest.fixture(scope="module")
def fox(shared_data, tmp_path_factory):
    """A skinned, animated GLB: Walk at two times, seen by a fixed rig of three cameras."""
    config = RenderConfig(
        layout="rig", num_views=3, radius=2.0, width=96, height=96, samples=4, animation="Walk", time_steps=2
    )
    return _render(tmp_path_factory, config, _model(shared_data, "Fox.glb"))


def _load_mesh(root: Path, t: int) -> tuple[np.ndarray, np.ndarray]:
    import trimesh

    mesh = trimesh.load(root / "ground_truth" / f"mesh_t{t:03d}.ply", process=False)
    return np.asarray(mesh.vertices, dtype=np.float64), np.asarray(mesh.faces, dtype=np.int64)


def _raycasting_scene(vertices: np.ndarray, faces: np.ndarray):
    import open3d as o3d

    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(o3d.core.Tensor(vertices.astype(np.float32)), o3d.core.Tensor(faces.astype(np.uint32)))
    return scene


def _back_project(camera, depth: np.ndarray) -> np.ndarray:
    """[P, 3] world points of the pixels with depth > 0 (OpenCV pixel centres at integer coordinates)."""
    rows, cols = np.nonzero(depth > 0)
    rays = np.stack([cols, rows, np.ones_like(cols)], axis=-1) @ np.linalg.inv(camera.K).T
    points_cam = rays * depth[rows, cols, None]
    world_from_cam = camera.world_from_cam
    return points_cam @ world_from_cam[:3, :3].T + world_from_cam[:3, 3]


# --- 1. geometry agrees with the cameras -----------------------------------------------------------------------


@pytest.mark.parametrize("asset", ["avocado", "spot", "fox"])
def test_depth_back_projects_onto_ground_truth_surface(asset, request):
    """Every depth pixel, lifted through the cameras read back from transforms.json, lies on the posed mesh."""
    _, root = request.getfixturevalue(asset)
    capture = read_capture(root)
    times_seen = set()
    for frame in capture.frames:
        name = frame.image_path.stem
        t = int(name[1:4])
        times_seen.add(t)
        vertices, faces = _load_mesh(root, t)
        diagonal = np.linalg.norm(vertices.max(axis=0) - vertices.min(axis=0))
        depth = np.load(frame.depth_path)
        assert depth.dtype == np.float32 and depth.shape == (frame.camera.height, frame.camera.width)
        assert (depth > 0).sum() > 100, f"{name}: the object covers almost nothing"
        points = _back_project(frame.camera, depth)
        distances = _raycasting_scene(vertices, faces).compute_distance(points.astype(np.float32)).numpy()
        assert np.median(distances) <= 0.002 * diagonal, f"{name}: median {np.median(distances):.2e}"
        assert np.percentile(distances, 95) <= 0.01 * diagonal, f"{name}: 95th pct {np.percentile(distances, 95):.2e}"
    assert times_seen == ({0, 1} if asset == "fox" else {0})


@pytest.mark.parametrize("asset", ["avocado", "fox"])
def test_nearest_surface_point_projects_into_mask_at_its_depth(asset, request):
    """The surface point nearest each camera (visible by construction) lands in the mask, at its own camera z."""
    import open3d as o3d

    _, root = request.getfixturevalue(asset)
    for frame in read_capture(root).frames:
        camera = frame.camera
        vertices, faces = _load_mesh(root, int(frame.image_path.stem[1:4]))
        query = o3d.core.Tensor(camera.center[None].astype(np.float32))
        nearest = _raycasting_scene(vertices, faces).compute_closest_points(query)["points"].numpy()[0]
        u, v = np.round(camera.project(nearest)).astype(int)
        mask = np.asarray(Image.open(frame.mask_path)) > 127
        depth = np.load(frame.depth_path)
        z = (camera.cam_from_world[:3, :3] @ nearest + camera.cam_from_world[:3, 3])[2]
        # The nearest point is often a tip on the silhouette (the fox's nose): look at its 3x3 neighbourhood.
        window = (slice(v - 1, v + 2), slice(u - 1, u + 2))
        assert mask[window].any(), f"{frame.image_path.name}: nearest point at pixel ({u}, {v}) is outside the mask"
        error = np.abs(depth[window][mask[window]] - z).min()
        assert error < 0.01 * z, f"{frame.image_path.name}: depth near ({u}, {v}) is off by {error:.4f} (z = {z:.3f})"


def test_normals_are_world_space_and_match_the_mesh(fox):
    _, root = fox
    capture = read_capture(root)
    for frame in capture.frames:
        name = frame.image_path.stem
        normals = np.load(frame.normal_path)
        depth = np.load(frame.depth_path)
        assert normals.dtype == np.float16 and normals.shape == depth.shape + (3,)
        valid = depth > 0
        n = normals[valid].astype(np.float64)
        assert np.allclose(np.linalg.norm(n, axis=-1), 1.0, atol=2e-3)
        assert not normals[~valid].any()
        vertices, faces = _load_mesh(root, int(name[1:4]))
        points = _back_project(frame.camera, depth)
        closest = _raycasting_scene(vertices, faces).compute_closest_points(points.astype(np.float32))
        face_normals = closest["primitive_normals"].numpy()
        view = points - frame.camera.center
        face_normals *= -np.sign(np.sum(face_normals * view, axis=-1, keepdims=True))  # towards the camera
        assert np.median(np.sum(n * face_normals, axis=-1)) > 0.95
        assert np.mean(np.sum(n * view, axis=-1) < 0) > 0.99, "normals must face the camera"


def _raycast(vertices: np.ndarray, faces: np.ndarray, camera) -> np.ndarray:
    """[H, W] planar depth of the mesh through our pixel centres (0 = miss), by Open3D: Blender plays no part."""
    rows, cols = np.mgrid[: camera.height, : camera.width]
    directions_cam = np.stack([cols, rows, np.ones_like(cols)], axis=-1) @ np.linalg.inv(camera.K).T  # z = 1
    world_from_cam = camera.world_from_cam
    directions = directions_cam @ world_from_cam[:3, :3].T
    origins = np.broadcast_to(world_from_cam[:3, 3], directions.shape)
    rays = np.concatenate([origins, directions], axis=-1).astype(np.float32)
    hit = _raycasting_scene(vertices, faces).cast_rays(rays)["t_hit"].numpy()  # in units of the z = 1 direction
    return np.where(np.isfinite(hit), hit, 0.0)


@pytest.mark.parametrize(
    "fx, fy, cx, cy", [(70.0, 90.0, 30.3, 35.6), (95.0, 60.0, 50.0, 22.0)], ids=["tall-pixels", "wide-pixels"]
)
def test_blender_camera_follows_K_off_centre_and_non_square(shared_data, tmp_path, fx, fy, cx, cy):
    """Blender's depth and mask equal a ray cast through our K: principal point, pixel centres, fx != fy."""
    from multiview import blender, layouts

    asset = blender.load_asset(_model(shared_data, "Avocado/Avocado.gltf"))
    blender.normalize_scene(asset, "static")
    blender.configure_renderer(80, 60, 0, None)
    K = np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])
    camera = layouts.orbit(1, (30.0,), 2.0, 40.0, 80, 60)[0].replace(K=K)
    passes = blender.render_passes(camera, tmp_path)
    mesh = blender.posed_mesh()
    expected = _raycast(mesh.vertices, mesh.faces, camera)
    assert (expected > 0).sum() > 300
    disagree = (expected > 0) != passes.mask
    assert disagree.sum() <= 0.02 * (expected > 0).sum(), f"{disagree.sum()} pixels disagree on the silhouette"
    both = (expected > 0) & passes.mask
    assert np.median(np.abs(passes.depth[both] - expected[both])) < 1e-4


# --- 2. cameras round trip -------------------------------------------------------------------------------------


@pytest.mark.parametrize("asset", ["avocado", "fox"])
def test_cameras_read_back_equal_cameras_requested(asset, request):
    config, root = request.getfixturevalue(asset)
    requested = cameras_for(config)
    frames = read_capture(root).frames
    time_steps = config.time_steps if asset == "fox" else 1
    assert len(frames) == len(requested) * time_steps
    for frame in frames:
        name = frame.image_path.stem
        t, c = int(name[1:4]), int(name[6:9])
        want, got = requested[c], frame.camera
        assert np.allclose(got.K, want.K, atol=1e-9)
        assert np.allclose(got.cam_from_world, want.cam_from_world, atol=1e-9)
        assert (got.width, got.height) == (config.width, config.height)
        if asset == "fox":
            assert got.camera_id == c
            assert got.time == pytest.approx(t * FOX_WALK_FRAMES / time_steps / 24.0)
        else:
            assert got.camera_id is None and got.time is None


# --- 3. the animation moves ------------------------------------------------------------------------------------


def test_fox_walk_moves_between_time_steps(fox):
    _, root = fox
    (v0, f0), (v1, f1) = _load_mesh(root, 0), _load_mesh(root, 1)
    assert v0.shape == v1.shape and np.array_equal(f0, f1)
    diagonal = np.linalg.norm(v0.max(axis=0) - v0.min(axis=0))
    assert np.linalg.norm(v1 - v0, axis=-1).mean() > 0.01 * diagonal
    for c in range(3):
        a = np.asarray(Image.open(root / "images" / f"t000_c{c:03d}.png"), dtype=np.float64)
        b = np.asarray(Image.open(root / "images" / f"t001_c{c:03d}.png"), dtype=np.float64)
        assert np.abs(a[..., 3] - b[..., 3]).mean() > 1.0, f"camera {c}: the silhouette did not change"


def test_animation_moves_only_the_objects_it_targets(tmp_path):
    """Two triangles; animation "Shift" moves B only (A's slot in the other action must not be borrowed)."""
    path = tmp_path / "two.gltf"
    path.write_text(json.dumps(_two_triangles_gltf()))
    config = RenderConfig(num_views=4, width=32, height=32, samples=1, animation="Shift", time_steps=2)
    root = render_asset(config, path, tmp_path)
    (v0, _), (v1, _) = _load_mesh(root, 0), _load_mesh(root, 1)
    moved = np.linalg.norm(v1 - v0, axis=-1) > 1e-4
    assert moved.sum() == 3, f"{moved.sum()} of 6 vertices moved"
    report = json.loads((root / "report.json").read_text())
    assert report["animations"] == ["Both", "Shift"] and report["times_s"] == [0.0, 0.5]


def _gltf_buffer(*arrays: np.ndarray) -> tuple[dict, list[dict]]:
    """One base64 buffer holding ``arrays`` (4-byte aligned) and a buffer view for each."""
    import base64

    blob, views = b"", []
    for array in arrays:
        data = array.tobytes()
        views.append({"buffer": 0, "byteOffset": len(blob), "byteLength": len(data)})
        blob += data + b"\0" * (-len(data) % 4)
    uri = "data:application/octet-stream;base64," + base64.b64encode(blob).decode()
    return {"byteLength": len(blob), "uri": uri}, views


def _two_triangles_gltf() -> dict:
    """Nodes A and B share a triangle; "Both" lifts both over 1 s, "Shift" slides B sideways."""
    triangle = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0]], dtype=np.float32)
    buffer, views = _gltf_buffer(
        triangle,
        np.array([0, 1, 2], dtype=np.uint16),
        np.array([0.0, 1.0], dtype=np.float32),
        np.array([[0, 0, 0], [0, 2, 0]], dtype=np.float32),
        np.array([[2, 0, 0], [5, 0, 0]], dtype=np.float32),
    )
    accessor = [
        {"componentType": 5126, "count": 3, "type": "VEC3", "min": [0, 0, 0], "max": [1, 1, 0]},
        {"componentType": 5123, "count": 3, "type": "SCALAR"},
        {"componentType": 5126, "count": 2, "type": "SCALAR", "min": [0.0], "max": [1.0]},
        {"componentType": 5126, "count": 2, "type": "VEC3"},
        {"componentType": 5126, "count": 2, "type": "VEC3"},
    ]
    channel = lambda sampler, node: {"sampler": sampler, "target": {"node": node, "path": "translation"}}  # noqa: E731
    return {
        "asset": {"version": "2.0"},
        "scene": 0,
        "scenes": [{"nodes": [0, 1]}],
        "nodes": [{"name": "A", "mesh": 0}, {"name": "B", "mesh": 0, "translation": [2, 0, 0]}],
        "meshes": [{"primitives": [{"attributes": {"POSITION": 0}, "indices": 1}]}],
        "buffers": [buffer],
        "bufferViews": views,
        "accessors": [dict(a, bufferView=i) for i, a in enumerate(accessor)],
        "animations": [
            {"name": "Both", "samplers": [{"input": 2, "output": 3}], "channels": [channel(0, 0), channel(0, 1)]},
            {"name": "Shift", "samplers": [{"input": 2, "output": 4}], "channels": [channel(0, 1)]},
        ],
    }


# --- outputs ---------------------------------------------------------------------------------------------------


def test_outputs_are_complete_and_documented(avocado, fox):
    config, root = avocado
    image = Image.open(root / "images" / "t000_c000.png")
    assert image.mode == "RGBA" and image.size == (config.width, config.height)
    alpha = np.asarray(image)[..., 3]
    mask = np.asarray(Image.open(root / "masks" / "t000_c000.png"))
    assert set(np.unique(mask)) <= {0, 255}
    assert alpha[mask == 0].mean() < 40 and alpha[mask == 255].mean() > 215  # anti-aliased edge aside, they agree
    normalization = json.loads((root / "ground_truth" / "normalization.json").read_text())
    assert np.array(normalization["world_from_asset"]).shape == (4, 4)
    assert normalization["normalized_at"] == "static"
    vertices, _ = _load_mesh(root, 0)
    assert np.allclose(vertices.max(axis=0) + vertices.min(axis=0), 0.0, atol=1e-5)  # centred
    assert np.ptp(vertices, axis=0).max() == pytest.approx(1.0, abs=1e-5)  # largest side 1

    config, root = fox
    report = json.loads((root / "report.json").read_text())
    assert report["animation"] == "Walk" and report["time_steps"] == 2 and report["views"] == 6
    assert report["renderer"].startswith("Cycles") and report["blender_version"].startswith("5.")
    assert report["seconds_per_frame"] > 0
    assert "frame 0 of animation Walk" in report["normalized_at"]


def test_world_from_asset_maps_the_obj_file_onto_the_ground_truth_mesh(spot, shared_data):
    import trimesh

    _, root = spot
    source = trimesh.load(_model(shared_data, "spot/spot/spot_triangulated.obj"), process=False)
    normalization = json.loads((root / "ground_truth" / "normalization.json").read_text())
    world_from_asset = np.array(normalization["world_from_asset"])
    mapped = np.asarray(source.vertices) @ world_from_asset[:3, :3].T + world_from_asset[:3, 3]
    vertices, _ = _load_mesh(root, 0)
    assert np.allclose(mapped.min(axis=0), vertices.min(axis=0), atol=1e-5)
    assert np.allclose(mapped.max(axis=0), vertices.max(axis=0), atol=1e-5)


def test_solid_background_keeps_its_srgb_value(spot):
    """White stays 255 (Standard view transform, no Filmic / AgX curve) and the alpha channel is opaque."""
    _, root = spot
    image = np.asarray(Image.open(root / "images" / "t000_c000.png"))
    mask = np.asarray(Image.open(root / "masks" / "t000_c000.png"))
    assert (image[..., 3] == 255).all()
    far_from_object = np.asarray(Image.fromarray(mask).filter(ImageFilter.MaxFilter(5)))
    assert (image[far_from_object == 0][:, :3] == 255).all()


def test_sun_lights_the_side_it_shines_from(shared_data, tmp_path):
    """No world light, a sun from +y: seen from +x (image right = +y), the right half of the object is the bright one;
    from the other side the left half is."""
    model = _model(shared_data, "Avocado/Avocado.gltf")
    config = RenderConfig(num_views=2, elevations_deg=(0.0,), width=48, height=48, samples=4,
                          world_strength=0.0, sun=(90.0, 20.0, 3.0))  # fmt: skip
    root = render_asset(config, model, tmp_path)
    for name, brighter in (("t000_c000.png", "right"), ("t000_c001.png", "left")):
        image = np.asarray(Image.open(root / "images" / name)).astype(float)
        lit = image[..., :3].mean(axis=-1) * (image[..., 3] > 0)
        covered = image[..., 3] > 0
        left, right = lit[:, :24].sum() / covered[:, :24].sum(), lit[:, 24:].sum() / covered[:, 24:].sum()
        assert (right > 1.5 * left) if brighter == "right" else (left > 1.5 * right), (name, left, right)


def test_flat_colour_renders_as_its_own_srgb_value(tmp_path):
    """A matte quad of sRGB (200, 120, 40) facing the camera comes out as exactly that: white light, Standard view."""
    srgb = np.array([200, 120, 40]) / 255.0
    linear = np.where(srgb <= 0.04045, srgb / 12.92, ((srgb + 0.055) / 1.055) ** 2.4)
    path = tmp_path / "quad.gltf"
    path.write_text(json.dumps(_matte_quad_gltf(linear)))
    config = RenderConfig(num_views=1, elevations_deg=(90.0,), width=32, height=32, samples=16)
    root = render_asset(config, path, tmp_path)
    image = np.asarray(Image.open(root / "images" / "t000_c000.png"))
    mask = np.asarray(Image.open(root / "masks" / "t000_c000.png"))
    inside = np.asarray(Image.fromarray(mask).filter(ImageFilter.MinFilter(3))) == 255  # away from the edges
    assert inside.sum() > 100
    assert np.abs(image[inside][:, :3].astype(int) - [200, 120, 40]).max() <= 1
    assert (image[..., 3][np.asarray(Image.fromarray(mask).filter(ImageFilter.MaxFilter(5))) == 0] == 0).all()


def _matte_quad_gltf(linear_rgb: np.ndarray) -> dict:
    """A 2x2 quad facing +y (up once in Blender's Z-up world), base colour ``linear_rgb``, no specular reflection."""
    buffer, views = _gltf_buffer(
        np.array([[-1, 0, -1], [1, 0, -1], [1, 0, 1], [-1, 0, 1]], dtype=np.float32),
        np.tile(np.array([0, 1, 0], dtype=np.float32), (4, 1)),
        np.array([0, 2, 1, 0, 3, 2], dtype=np.uint16),
    )
    material = {
        "pbrMetallicRoughness": {"baseColorFactor": [*linear_rgb, 1.0], "metallicFactor": 0.0, "roughnessFactor": 1.0},
        "extensions": {"KHR_materials_specular": {"specularFactor": 0.0}},
    }
    accessors = [
        {"componentType": 5126, "count": 4, "type": "VEC3", "min": [-1, 0, -1], "max": [1, 0, 1]},
        {"componentType": 5126, "count": 4, "type": "VEC3"},
        {"componentType": 5123, "count": 6, "type": "SCALAR"},
    ]
    return {
        "asset": {"version": "2.0"},
        "extensionsUsed": ["KHR_materials_specular"],
        "scene": 0,
        "scenes": [{"nodes": [0]}],
        "nodes": [{"mesh": 0}],
        "meshes": [{"primitives": [{"attributes": {"POSITION": 0, "NORMAL": 1}, "indices": 2, "material": 0}]}],
        "materials": [material],
        "buffers": [buffer],
        "bufferViews": views,
        "accessors": [dict(a, bufferView=i) for i, a in enumerate(accessors)],
    }


# --- 4. bad input ----------------------------------------------------------------------------------------------


def _one_line_error(model: Path, tmp_path: Path, **config) -> str:
    with pytest.raises(InputError) as error:
        render_asset(RenderConfig(num_views=1, width=32, height=32, samples=1, **config), model, tmp_path / "out")
    message = str(error.value)
    assert "\n" not in message
    return message


def test_missing_file(tmp_path):
    message = _one_line_error(tmp_path / "nothing.glb", tmp_path)
    assert "nothing.glb" in message and "does not exist" in message


@pytest.mark.parametrize("name", ["notes.txt", "model.fbx"])
def test_unsupported_format(tmp_path, name):
    (tmp_path / name).write_text("not a model")
    message = _one_line_error(tmp_path / name, tmp_path)
    assert name in message and ".glb" in message and ".obj" in message


def test_unknown_animation_lists_the_existing_ones(shared_data, tmp_path):
    message = _one_line_error(_model(shared_data, "Fox.glb"), tmp_path, animation="Jump")
    assert "Fox.glb has no animation 'Jump'" in message and "Run, Survey, Walk" in message


def test_animation_asked_of_a_static_asset(shared_data, tmp_path):
    message = _one_line_error(_model(shared_data, "Duck.glb"), tmp_path, animation="Walk")
    assert "Duck.glb has no animation 'Walk'" in message


_CAMERA_ONLY_GLTF = {
    "asset": {"version": "2.0"},
    "scene": 0,
    "scenes": [{"nodes": [0]}],
    "nodes": [{"name": "just_a_camera", "camera": 0, "translation": [0.0, 0.0, 3.0]}],
    "cameras": [{"type": "perspective", "perspective": {"yfov": 0.7, "znear": 0.1}}],
}


@pytest.mark.parametrize(
    "content", [_CAMERA_ONLY_GLTF, {"asset": {"version": "2.0"}, "scenes": [{"nodes": []}]}], ids=["camera", "empty"]
)
def test_asset_without_geometry(tmp_path, content):
    path = tmp_path / "nothing_here.gltf"
    path.write_text(json.dumps(content))
    message = _one_line_error(path, tmp_path)
    assert "nothing_here.gltf" in message and "has no geometry" in message


def test_corrupt_file(tmp_path):
    path = tmp_path / "broken.glb"
    path.write_bytes(b"glTF\x02\x00\x00\x00garbage")
    message = _one_line_error(path, tmp_path)
    assert "broken.glb" in message and "could not be imported" in message


@pytest.mark.parametrize(
    "config, words",
    [
        ({"layout": "spiral"}, "layout 'spiral'"),
        ({"background": "purple"}, "background 'purple'"),
        ({"num_views": 0}, "at least 1"),
    ],
)
def test_bad_config(config, words):
    with pytest.raises(InputError, match=words):
        RenderConfig(**config)


@pytest.mark.parametrize(
    "config, option",
    [
        ({"width": 1, "height": 1}, "--size"),
        ({"width": 3, "height": 3}, "--size"),
        ({"width": 32, "height": 7}, "--size"),
        ({"width": 100_000, "height": 100_000}, "--size"),
        ({"elevations_deg": (float("nan"),)}, "--elevation"),
        ({"elevations_deg": (20.0, 95.0)}, "--elevation"),
        ({"elevations_deg": (-90.5,)}, "--elevation"),
        ({"radius": float("nan")}, "--radius"),
        ({"radius": float("inf")}, "--radius"),
        ({"fov_deg": float("nan")}, "--fov"),
        ({"fov_deg": 180.0}, "--fov"),
        ({"seed": -1}, "--seed"),
        ({"seed": 2**63}, "--seed"),
    ],
)
def test_bad_numbers_name_their_option(config, option):
    with pytest.raises(InputError, match=option):
        RenderConfig(**config)


def test_extreme_but_valid_numbers_are_accepted():
    RenderConfig(width=8, height=8192, elevations_deg=(-90.0, 90.0), fov_deg=179.0, radius=1e6, seed=2**63 - 1)


def test_seed_is_folded_into_cycles_int_range():
    from multiview.blender import cycles_seed

    assert [cycles_seed(s) for s in (0, 7, 2**31 - 1)] == [0, 7, 2**31 - 1]  # small seeds are kept
    assert all(0 <= cycles_seed(s) < 2**31 for s in (2**31, 2**40 + 5, 2**63 - 1))


def test_large_seed_renders(shared_data, tmp_path):
    config = RenderConfig(layout="sphere", num_views=1, width=16, height=16, samples=1, seed=2**63 - 1)
    root = render_asset(config, _model(shared_data, "Avocado/Avocado.gltf"), tmp_path)
    assert (root / "images" / "t000_c000.png").is_file()


def _cli(capsys, *args: str) -> tuple[int, list[str]]:
    """Run ``orbit4d`` in this process; (exit code, stderr lines that are not progress or tables)."""
    from orbit4d.cli import main

    try:
        code = main([str(a) for a in args])
    except SystemExit as exit:  # argparse refusing a value
        code = exit.code
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    return code, lines


@pytest.mark.parametrize(
    "args, option",
    [
        (["--size", "1"], "--size"),
        (["--size", "3"], "--size"),
        (["--size", "100000"], "--size"),
        (["--elevation", "nan"], "--elevation"),
        (["--elevation", "95"], "--elevation"),
        (["--radius", "nan"], "--radius"),
        (["--fov", "nan"], "--fov"),
    ],
)
def test_cli_refuses_bad_numbers_in_one_line(shared_data, tmp_path, capsys, args, option):
    model = _model(shared_data, "Avocado/Avocado.gltf")
    code, lines = _cli(capsys, "render-asset", model, "--out", tmp_path / "out", "--views", "2", "--samples", "1",
                       "--size", "32", *args)  # fmt: skip
    assert code == 1 and len(lines) == 1, lines
    assert option in lines[0] and "internal error" not in lines[0]
    assert not list(tmp_path.iterdir())  # no output, no staging folder


@pytest.mark.parametrize("args", [["--seed", "99999999999999999999"], ["--layout", "sphere", "--seed", "-1"]])
def test_cli_refuses_seeds_out_of_range(tmp_path, capsys, args):
    code, lines = _cli(capsys, "render-asset", tmp_path / "a.glb", "--out", tmp_path / "out", *args)
    assert code == 2 and "argument --seed" in lines[-1] and "internal error" not in lines[-1]


def test_folder_given_as_model_lists_the_models_inside(tmp_path, capsys):
    folder = tmp_path / "fox_pack"
    (folder / "lod").mkdir(parents=True)
    (folder / "fox.glb").write_bytes(b"")
    (folder / "lod" / "fox_low.obj").write_text("")
    (folder / "README.txt").write_text("")
    code, lines = _cli(capsys, "render-asset", folder, "--out", tmp_path / "out")
    assert code == 1 and len(lines) == 1
    assert "fox_pack is a folder" in lines[0] and "fox.glb, lod/fox_low.obj" in lines[0] and "README" not in lines[0]
    message = _one_line_error(folder / "lod", tmp_path)
    assert "is a folder" in message and "fox_low.obj" in message
    (tmp_path / "empty").mkdir()
    message = _one_line_error(tmp_path / "empty", tmp_path)
    assert "is a folder" in message and "holds no .glb" in message


@pytest.mark.parametrize("damage", ["missing", "unreadable"])
def test_missing_or_broken_textures_are_refused(shared_data, tmp_path, damage):
    """Cycles would paint them magenta, exit 0: training data that looks fine to a script and is wrong."""
    source = _model(shared_data, "Avocado/Avocado.gltf").parent
    asset = tmp_path / "asset"
    asset.mkdir()
    for name in ("Avocado.gltf", "Avocado.bin", "Avocado_normal.png", "Avocado_roughnessMetallic.png"):
        (asset / name).write_bytes((source / name).read_bytes())
    if damage == "unreadable":
        (asset / "Avocado_baseColor.png").write_bytes(b"not a png")
    message = _one_line_error(asset / "Avocado.gltf", tmp_path)
    assert "Avocado.gltf" in message and f"{damage} texture file Avocado_baseColor.png" in message
    assert "normal" not in message


def test_obj_with_missing_texture_is_refused(tmp_path):
    (tmp_path / "tri.obj").write_text("mtllib tri.mtl\nv 0 0 0\nv 1 0 0\nv 0 1 0\nvt 0 0\nvt 1 0\nvt 0 1\n"
                                      "usemtl skin\nf 1/1 2/2 3/3\n")  # fmt: skip
    (tmp_path / "tri.mtl").write_text("newmtl skin\nKd 1 1 1\nmap_Kd textures/skin.png\n")
    message = _one_line_error(tmp_path / "tri.obj", tmp_path)
    assert "tri.obj" in message and "missing texture file textures/skin.png" in message


@pytest.mark.parametrize("config, options", [({"radius": 1e9}, "--radius 1e+09"), ({"fov_deg": 179.9}, "--fov 179.9")])
def test_cameras_that_see_almost_nothing_are_refused(shared_data, tmp_path, config, options):
    message = _one_line_error(_model(shared_data, "Avocado/Avocado.gltf"), tmp_path, **config)
    assert "Avocado.gltf would span at most" in message and options in message and "smaller --radius or --fov" in message
    assert not (tmp_path / "out" / "images").exists()  # refused before rendering


def test_views_that_miss_the_asset_are_reported(tmp_path, capsys):
    """A flat quad seen exactly edge-on from one ring: those masks are empty, and the user is told which options to
    look at; seen edge-on from every view, it is refused (a capture of empty images exits 0 no more)."""
    path = tmp_path / "quad.gltf"
    path.write_text(json.dumps(_matte_quad_gltf(np.array([0.5, 0.5, 0.5]))))
    config = RenderConfig(num_views=2, elevations_deg=(0.0, 45.0), width=16, height=16, samples=1)
    (tmp_path / "some").mkdir()
    root = render_asset(config, path, tmp_path / "some")
    assert not np.asarray(Image.open(root / "masks" / "t000_c000.png")).any()
    assert np.asarray(Image.open(root / "masks" / "t000_c001.png")).any()
    warning = " ".join(capsys.readouterr().err.split())
    assert "quad.gltf shows in 1 of the 2 views" in warning and "--radius" in warning and "--elevation" in warning
    (tmp_path / "none").mkdir()
    with pytest.raises(InputError, match="shows in none of the 2 views .*--elevation"):
        render_asset(RenderConfig(num_views=2, elevations_deg=(0.0,), width=16, height=16, samples=1), path,
                     tmp_path / "none")  # fmt: skip


def test_signals_are_held_until_a_stop_point():
    import os
    import signal

    from multiview.render_asset import _interrupts_between_views

    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt):
        with _interrupts_between_views() as stop_point:
            stop_point()  # nothing came yet
            os.kill(os.getpid(), signal.SIGINT)  # Blender would swallow a KeyboardInterrupt raised here
            os.kill(os.getpid(), signal.SIGTERM)
            stop_point()
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
    with pytest.raises(KeyboardInterrupt):  # a signal after the last stop point is raised on the way out
        with _interrupts_between_views():
            os.kill(os.getpid(), signal.SIGINT)


@pytest.mark.parametrize("name", ["SIGINT", "SIGTERM"])
def test_interrupting_a_render_stops_it_and_cleans_up(shared_data, tmp_path, name):
    """Ctrl-C or SIGTERM while Cycles renders: exit 130 soon, no output, no staging or temporary folder left."""
    import os
    import signal
    import subprocess
    import sys
    import time

    model = _model(shared_data, "Avocado/Avocado.gltf")
    temp = tmp_path / "tmp"
    temp.mkdir()
    cli = "import sys; from orbit4d.cli import main; sys.exit(main(sys.argv[1:]))"
    command = [sys.executable, "-c", cli, "render-asset", str(model), "--out", str(tmp_path / "out"),
               "--views", "300", "--size", "32", "--samples", "1"]  # fmt: skip
    env = dict(os.environ, TMPDIR=str(temp))
    process = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env,
                               cwd=Path(__file__).resolve().parents[1])  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not list(tmp_path.glob(".out.partial-*/images/*.png")) and time.monotonic() < deadline:
            assert process.poll() is None, process.stderr.read()
            time.sleep(0.05)
        process.send_signal(getattr(signal, name))
        _, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err and "Exception ignored" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tmp"] and not list(temp.iterdir())
