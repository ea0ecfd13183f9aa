"""Blender (``bpy``) as the renderer of synthetic captures: import an asset, normalize it, pose it, render views.

All bpy code of orbit4d lives here, and bpy is imported inside the functions, so this module imports without it.
Blender keeps one global scene: the functions below act on it in order, as ``multiview.render_asset`` calls them:

    load_asset(path) -> AssetInfo              fresh empty scene, import, drop what does not render (hidden, lights)
    use_animation(info, name) -> Animation     the one action that plays (None for a static asset)
    set_frame(frame)                           pose the scene (fractional frames allowed)
    normalize_scene(info, label)               centre + scale the geometry as posed now -> Normalization
    posed_mesh() -> PosedMesh                  the geometry as rendered, in the (normalized) world frame
    configure_renderer(...)                    Cycles on the CPU, uniform white world light, Standard view transform
    render_color(camera, png, samples, work)   one view's anti-aliased RGBA PNG
    render_passes(camera, work) -> ViewPasses  one view's depth, normals and mask (pixel-centre rays), in memory

Conventions (verified against renders, see tests/test_render_asset.py):

- Poses: the Blender camera's ``matrix_world`` is ``conventions.blender_world_from_cam(camera.cam_from_world)``; the
  world is Blender's Z-up world, which after ``normalize_scene`` is the capture's world.
- Intrinsics: ``sensor_fit = 'HORIZONTAL'``, so ``fx = lens / sensor_width * W`` and the lens shift is in units of W.
  Blender puts the optical axis at the image centre in the pixel-corner convention (W / 2, H / 2) and samples pixel
  (i, j) at (j + 0.5, i + 0.5) in that convention, i.e. at (j, i) in ours (OpenCV, pixel centres at integers), so
  ``shift_x = (W / 2 - (cx + 0.5)) / W`` and ``shift_y = ((cy + 0.5) - H / 2) / W * fx / fy``; ``fy != fx`` goes
  through the pixel aspect ratio (``pixel_aspect_y / pixel_aspect_x = fx / fy``, both >= 1 as Blender requires).
  Distortion and skew cannot be rendered (ValueError).
- Colour: Cycles path-traces in linear light; the PNG is encoded by the "Standard" view transform (plain sRGB, no
  Filmic / AgX tone curve), so a texture lit by the uniform white world of strength 1 comes out with its own colours.
- Geometry passes (depth, normals, mask) come from a second Cycles render of the same view with one sample, a pixel
  filter 0.01 px wide and a plain grey material override: every value belongs to the ray through the pixel centre,
  with no anti-aliasing blend at silhouettes (the colour render is anti-aliased, so its alpha and the mask differ
  by up to a pixel at the outline). Depth is Cycles' Z pass (planar camera-z); normals are Cycles' Normal pass, which
  is world space (smooth-shading normals, no normal maps, facing the camera). Materials with alpha cut-outs count as
  opaque in these passes.
- Passes leave Blender through the Blender 5.0 compositor (``scene.compositing_node_group``, a File Output node
  writing 32-bit OpenEXR) and are read back with ``bpy.data.images.load(...).pixels`` (rows bottom-up).
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from multiview.asset_files import check_asset_references
from multiview.camera import Camera
from multiview.conventions import ZUP_FROM_YUP, blender_world_from_cam
from multiview.errors import InputError

SUPPORTED_SUFFIXES = (".glb", ".gltf", ".obj")
INSTALL_HINT = "install the render extra: pip install 'orbit4d[render]' (Python 3.11)"
RENDERER = "Cycles (CPU)"

# Object types whose evaluated geometry Cycles renders as surfaces.
_GEOMETRY_TYPES = {"MESH", "CURVE", "SURFACE", "META", "FONT"}
_ROOT_NAME = "orbit4d_normalization"
_CAMERA_NAME = "orbit4d_camera"
_COMPOSITOR_NAME = "orbit4d_passes"
_GEOMETRY_FILTER_WIDTH = 0.01  # pixels: Cycles' minimum; rays leave within 0.005 px of the pixel centre
_NO_SURFACE_DEPTH = 1e9  # Cycles writes 1e10 where a ray hits nothing


@dataclass(frozen=True)
class AssetInfo:
    """What ``load_asset`` found in the file."""

    path: Path
    animations: tuple[str, ...]  # action names, sorted
    default_animation: str | None  # the one the importer made active: the file's first animation
    blender_from_asset: np.ndarray  # [4, 4] the importer's axis conversion, Y-up file -> Blender's Z-up world
    blender_version: str


@dataclass(frozen=True)
class Animation:
    """One action and its frame range; times are seconds since ``frame_start``."""

    name: str
    frame_start: float
    frame_end: float
    fps: float

    def frames(self, time_steps: int) -> list[float]:
        """``time_steps`` frames evenly spaced over [start, end), the end left out because looping clips repeat it."""
        length = self.frame_end - self.frame_start
        return [self.frame_start + length * k / time_steps for k in range(time_steps)]

    def seconds(self, frame: float) -> float:
        return (frame - self.frame_start) / self.fps


@dataclass(frozen=True)
class Normalization:
    """How the imported asset was moved into the capture's world: centred bounding box, largest side 1."""

    world_from_blender: np.ndarray  # [4, 4] uniform scale and translation applied to the imported scene
    blender_from_asset: np.ndarray  # [4, 4] the importer's axis conversion (Y-up file -> Z-up Blender)
    bbox_min: np.ndarray  # [3] bounding box of the geometry in the asset file's own coordinates
    bbox_max: np.ndarray  # [3]
    normalized_at: str  # which pose was measured: "static" or "frame F of animation NAME"

    @property
    def world_from_asset(self) -> np.ndarray:
        """[4, 4] asset file coordinates -> capture world (Z-up, centred, largest side 1)."""
        return self.world_from_blender @ self.blender_from_asset

    def to_json(self) -> dict:
        return {
            "world_from_asset": self.world_from_asset.tolist(),
            "world_from_blender": self.world_from_blender.tolist(),
            "blender_from_asset": self.blender_from_asset.tolist(),
            "bbox_min": self.bbox_min.tolist(),
            "bbox_max": self.bbox_max.tolist(),
            "scale": float(self.world_from_blender[0, 0]),
            "normalized_at": self.normalized_at,
            "note": "bbox_* are in the asset file's coordinates; world = world_from_asset @ asset (homogeneous)",
        }


@dataclass(frozen=True, eq=False)
class PosedMesh:
    """All rendered geometry merged into one triangle mesh, in world coordinates."""

    vertices: np.ndarray  # [V, 3] float64
    faces: np.ndarray  # [F, 3] int64


@dataclass(frozen=True, eq=False)
class ViewPasses:
    """The geometry passes of one view, rows top-down like the image."""

    depth: np.ndarray  # [H, W] float32 planar camera-z depth; 0 where the pixel-centre ray hits nothing
    normals: np.ndarray  # [H, W, 3] float32 world-space unit normals facing the camera; 0 where no surface
    mask: np.ndarray  # [H, W] bool, the pixel-centre ray hits the object


# --- bpy and its output ----------------------------------------------------------------------------------------


def import_bpy():
    """The ``bpy`` module, or an InputError saying how to install it."""
    try:
        import bpy
    except ImportError:
        raise InputError(f"Blender's Python module (bpy) is not installed: {INSTALL_HINT}") from None
    return bpy


def blender_version() -> str:
    return import_bpy().app.version_string


@contextlib.contextmanager
def quiet_blender() -> Iterator[Path]:
    """Send what Blender prints (importer logs, render progress, "Saved:" lines) to a log file, not the terminal.

    Redirects the file descriptors 1 and 2, since Blender's C code writes to them directly. Yields the log's path,
    readable until the block ends (it is deleted then).
    """
    with tempfile.NamedTemporaryFile("w+b", prefix="orbit4d-blender-", suffix=".log", delete=False) as log:
        log_path = Path(log.name)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    saved = [os.dup(1), os.dup(2)]
    target = os.open(log_path, os.O_WRONLY | os.O_APPEND)
    try:
        os.dup2(target, 1)
        os.dup2(target, 2)
        yield log_path
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, target):
            os.close(fd)
        log_path.unlink(missing_ok=True)


def _last_error_line(log_path: Path, error: BaseException) -> str:
    """The most telling line of a failed import: the exception's last line, else the log's last error line."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    with contextlib.suppress(OSError):
        logged = [line.strip() for line in log_path.read_text(errors="replace").splitlines() if "rror" in line]
        lines = lines or logged
    text = lines[-1] if lines else type(error).__name__
    return text if len(text) <= 160 else text[:157] + "..."


# --- loading ---------------------------------------------------------------------------------------------------


def check_asset_path(path: Path) -> Path:
    """``path`` if it is an existing file of a supported kind; InputError otherwise (no bpy needed)."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path} is a folder, not a model file{_models_inside(path)}")
    if not path.is_file():
        raise InputError(f"{path} does not exist: give a 3D model file ({', '.join(SUPPORTED_SUFFIXES)})")
    if path.suffix.lower() not in SUPPORTED_SUFFIXES:
        raise InputError(
            f"{path}: '{path.suffix or 'no extension'}' models are not supported: convert it to "
            f"{', '.join(SUPPORTED_SUFFIXES)} (e.g. export glTF 2.0 from Blender)"
        )
    return path


def _models_inside(folder: Path, shown: int = 4) -> str:
    """The end of the message for a folder given as the model: the model files in it or its subfolders, or none."""
    found = sorted(
        p.relative_to(folder).as_posix()
        for pattern in ("*", "*/*")
        for p in folder.glob(pattern)
        if p.suffix.lower() in SUPPORTED_SUFFIXES and p.is_file()
    )
    if not found:
        return f", and it holds no {' / '.join(SUPPORTED_SUFFIXES)} file: give the path of a 3D model file"
    more = f" and {len(found) - shown} more" if len(found) > shown else ""
    return f": give the path of one of the model files inside ({', '.join(found[:shown])}{more})"


def load_asset(path: Path, allow_outside: bool = False) -> AssetInfo:
    """Import ``path`` (glTF, GLB or OBJ) into a fresh empty Blender scene, quietly.

    Hidden objects (e.g. the glTF importer's bone shapes) and the asset's own lights are deleted: what stays is
    what renders. Raises InputError for a missing or unsupported file, buffers, textures or materials named outside
    its folder (unless ``allow_outside``), a failed import, no renderable geometry or surface, or texture images that
    are missing or unreadable (Cycles would paint them magenta).
    """
    path = check_asset_path(path).absolute()
    check_asset_references(path, allow_outside)
    bpy = import_bpy()
    with quiet_blender() as log_path:
        bpy.ops.wm.read_factory_settings(use_empty=True)
        try:
            if path.suffix.lower() == ".obj":
                bpy.ops.wm.obj_import(filepath=str(path), forward_axis="NEGATIVE_Z", up_axis="Y")
            else:
                bpy.ops.import_scene.gltf(filepath=str(path), disable_bone_shape=True)
        except Exception as error:  # bpy reports importer failures as RuntimeError, addon bugs as anything
            reason = _last_error_line(log_path, error)
            message = f"{path} could not be imported by Blender ({reason}): check that the file is valid"
            raise InputError(message) from None
    scene = bpy.context.scene
    _drop_unrendered_objects(scene)
    if not any(obj.type in _GEOMETRY_TYPES for obj in scene.objects):
        raise InputError(f"{path} has no geometry (no mesh in its scene): export the model with its meshes")
    _check_textures(path)
    actions = sorted(action.name for action in bpy.data.actions if _plays_in_scene(action))
    active = next(
        (
            obj.animation_data.action.name
            for obj in scene.objects
            if obj.animation_data is not None and obj.animation_data.action is not None
        ),
        actions[0] if actions else None,
    )
    info = AssetInfo(path, tuple(actions), active, ZUP_FROM_YUP.copy(), bpy.app.version_string)
    mesh = posed_mesh()
    if mesh.faces.size == 0:
        raise InputError(f"{path} has no geometry (its meshes have no faces): export the model with its faces")
    if not has_surface(mesh):
        raise InputError(f"{path} has no surface: all {len(mesh.faces):,} of its faces have zero area (degenerate "
                         "geometry renders nothing): export the model with real faces")  # fmt: skip
    return info


def has_surface(mesh: PosedMesh) -> bool:
    """Whether the triangles of ``mesh`` cover any area, relative to its size (not all collapsed to lines or points)."""
    corners = mesh.vertices[mesh.faces]  # [faces, 3, 3]
    with np.errstate(all="ignore"):
        doubled = np.linalg.norm(np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0]), axis=-1)
        extent = float(np.ptp(mesh.vertices, axis=0).max())
        total = float(np.nansum(doubled)) / 2
    return extent > 0 and math.isfinite(extent) and total > 1e-9 * extent**2


def _check_textures(path: Path) -> None:
    """InputError naming the texture files of ``path`` that Blender could not load (missing or unreadable).

    The importers keep going without them, and Cycles renders a missing image as magenta: training data that looks
    fine to a script and is wrong. The glTF importer packs the images it found (GLB and data-URI ones are packed
    anyway); an image that Blender could decode has a size.
    """
    import bpy

    missing, unreadable = [], []
    for image in bpy.data.images:
        if image.users == 0 or image.source not in ("FILE", "SEQUENCE", "TILED"):
            continue
        file = Path(bpy.path.abspath(image.filepath, library=image.library)) if image.filepath else None
        name = image.name if file is None else _name_near(file, path.parent)
        if image.packed_file is None and (file is None or not file.is_file()):
            missing.append(name)
            continue
        with quiet_blender():  # reading the size loads the image, and Blender logs decoding errors
            size = tuple(image.size)
        if size == (0, 0):
            unreadable.append(name)
    problems, fixes = [], []
    if missing:
        problems.append(f"missing texture file{'s' * (len(missing) > 1)} {', '.join(sorted(missing))}")
        fixes.append("put the textures where the model refers to them (beside it, as exported) or export a .glb "
                     "with them embedded")  # fmt: skip
    if unreadable:
        problems.append(f"unreadable texture file{'s' * (len(unreadable) > 1)} {', '.join(sorted(unreadable))}")
        fixes.append("replace what Blender cannot decode with PNG or JPEG images")
    if problems:
        raise InputError(f"{path}: {' and '.join(problems)} (Blender would paint the asset magenta): "
                         f"{'; '.join(fixes)}")  # fmt: skip


def _name_near(file: Path, folder: Path) -> str:
    """``file`` relative to ``folder`` when it is inside it, else its full path."""
    try:
        return file.relative_to(folder).as_posix()
    except ValueError:
        return str(file)


def _drop_unrendered_objects(scene) -> None:
    """Delete objects Cycles would not render (hidden, in hidden collections) and lights; unhide the rest."""
    import bpy

    layers = _layer_collections(bpy.context.view_layer.layer_collection)
    excluded = {layer.collection.name for layer in layers if layer.exclude}
    rendered_collections = set()

    def walk(collection) -> None:
        rendered_collections.add(collection.name)
        for child in collection.children:
            if not child.hide_render and child.name not in excluded:
                child.hide_viewport = False  # the evaluated depsgraph (ground-truth meshes) must see what renders
                walk(child)

    walk(scene.collection)
    for obj in list(scene.objects):
        renders = not obj.hide_render and any(c.name in rendered_collections for c in obj.users_collection)
        if obj.type == "LIGHT" or (obj.type in _GEOMETRY_TYPES and not renders):
            bpy.data.objects.remove(obj, do_unlink=True)
        else:
            obj.hide_viewport = False
            obj.hide_set(False)


def _layer_collections(layer):
    yield layer
    for child in layer.children:
        yield from _layer_collections(child)


def _animation_owners(obj) -> list:
    """The IDs of ``obj`` that can carry an action: the object itself and its shape keys, when they have one."""
    owners = [obj, getattr(obj.data, "shape_keys", None)]
    return [owner for owner in owners if owner is not None and owner.animation_data is not None]


def _plays_in_scene(action) -> bool:
    """Whether ``action`` has a slot for some object or shape-key set of the scene."""
    import bpy

    return any(
        _slot_for(action, owner) is not None for obj in bpy.context.scene.objects for owner in _animation_owners(obj)
    )


def _slot_for(action, owner):
    """The slot of ``action`` meant for ``owner``: the one it last used, else the one named after it, else None.

    Slot identifiers are the ID-type prefix plus the ID's name ("OBroot"), as the glTF importer makes them.
    """
    animation = owner.animation_data
    slots = [slot for slot in action.slots if slot.target_id_type in (owner.id_type, "UNSPECIFIED")]
    for wanted in (animation.last_slot_identifier, None):
        for slot in slots:
            if slot.identifier == wanted or (wanted is None and slot.identifier[2:] == owner.name):
                return slot
    return None


# --- animation -------------------------------------------------------------------------------------------------


def use_animation(info: AssetInfo, name: str | None) -> Animation | None:
    """Make ``name`` (None: the asset's default) the one animation that plays; None for a static asset.

    Armatures start from their rest pose, so bones the action leaves alone stay at rest (glTF's rule). Objects and
    shape keys it does not animate lose their action and keep the pose the importer left them in (the default
    animation's first frame). Unknown name -> InputError listing the animations there are.
    """
    bpy = import_bpy()
    if name is None:
        name = info.default_animation
        if name is None:
            return None
    if name not in info.animations:
        existing = ", ".join(info.animations) if info.animations else "none"
        raise InputError(f"{info.path} has no animation '{name}'; it has: {existing}")
    action = bpy.data.actions[name]
    for obj in bpy.context.scene.objects:
        if obj.pose is not None:
            _rest_pose(obj)
        for owner in _animation_owners(obj):
            animation = owner.animation_data
            slot = _slot_for(action, owner)
            animation.action = action if slot is not None else None
            if slot is not None:
                animation.action_slot = slot
            for track in animation.nla_tracks:  # the importer stashes every clip as a muted track: keep them muted
                track.mute = True
    start, end = (float(v) for v in action.frame_range)
    scene = bpy.context.scene
    return Animation(name, start, max(end, start), scene.render.fps / scene.render.fps_base)


def _rest_pose(armature) -> None:
    for bone in armature.pose.bones:
        bone.location = (0.0, 0.0, 0.0)
        bone.rotation_quaternion = (1.0, 0.0, 0.0, 0.0)
        bone.rotation_euler = (0.0, 0.0, 0.0)
        bone.rotation_axis_angle = (0.0, 0.0, 1.0, 0.0)
        bone.scale = (1.0, 1.0, 1.0)


def set_frame(frame: float) -> None:
    """Pose the scene at ``frame`` (may be fractional: Blender interpolates the animation curves)."""
    bpy = import_bpy()
    whole = math.floor(frame)
    bpy.context.scene.frame_set(int(whole), subframe=float(frame - whole))


# --- normalization and ground truth ----------------------------------------------------------------------------


def normalize_scene(info: AssetInfo, normalized_at: str) -> Normalization:
    """Centre the bounding box of the geometry as posed now at the origin and scale its largest side to 1.

    Every root object is parented under one empty carrying the transform, so animations keep working.
    """
    bpy = import_bpy()
    from mathutils import Matrix

    mesh = posed_mesh()
    low, high = mesh.vertices.min(axis=0), mesh.vertices.max(axis=0)
    largest = float((high - low).max())
    if largest <= 0.0:
        raise InputError(f"{info.path} has no geometry (all its vertices coincide): export the model with its meshes")
    scale = 1.0 / largest
    world_from_blender = np.diag([scale, scale, scale, 1.0])
    world_from_blender[:3, 3] = -scale * (low + high) / 2.0

    scene = bpy.context.scene
    root = bpy.data.objects.new(_ROOT_NAME, None)
    scene.collection.objects.link(root)
    root.matrix_world = Matrix(world_from_blender.tolist())
    for obj in list(scene.objects):
        if obj.parent is None and obj is not root:
            obj.parent = root
            obj.matrix_parent_inverse = Matrix.Identity(4)
    bpy.context.view_layer.update()
    set_frame(scene.frame_current + scene.frame_subframe)

    asset_from_blender = np.linalg.inv(info.blender_from_asset)
    corners = np.array(np.meshgrid(*zip(low, high), [1.0], indexing="ij")).reshape(4, -1).T  # [8, 4]
    asset_corners = (corners @ asset_from_blender.T)[:, :3]
    return Normalization(
        world_from_blender=world_from_blender,
        blender_from_asset=info.blender_from_asset.copy(),
        bbox_min=asset_corners.min(axis=0),
        bbox_max=asset_corners.max(axis=0),
        normalized_at=normalized_at,
    )


def posed_mesh() -> PosedMesh:
    """Every rendered surface as posed now (modifiers and skinning applied), triangulated, merged, world frame."""
    bpy = import_bpy()
    depsgraph = bpy.context.evaluated_depsgraph_get()
    vertices, faces, offset = [], [], 0
    for instance in depsgraph.object_instances:
        obj = instance.object
        if obj.type not in _GEOMETRY_TYPES:
            continue
        mesh = obj.to_mesh()
        try:
            mesh.calc_loop_triangles()
            co = np.empty(len(mesh.vertices) * 3, dtype=np.float64)
            mesh.vertices.foreach_get("co", co)
            triangles = np.empty(len(mesh.loop_triangles) * 3, dtype=np.int64)
            mesh.loop_triangles.foreach_get("vertices", triangles)
        finally:
            obj.to_mesh_clear()
        matrix = np.array(instance.matrix_world, dtype=np.float64)
        co = co.reshape(-1, 3) @ matrix[:3, :3].T + matrix[:3, 3]
        vertices.append(co)
        faces.append(triangles.reshape(-1, 3) + offset)
        offset += len(co)
    if not vertices:
        return PosedMesh(np.zeros((0, 3)), np.zeros((0, 3), dtype=np.int64))
    return PosedMesh(np.concatenate(vertices), np.concatenate(faces))


# --- rendering -------------------------------------------------------------------------------------------------


def srgb_to_linear(value: float) -> float:
    """One sRGB-encoded channel in [0, 1] -> linear light (what the Standard view transform undoes)."""
    return value / 12.92 if value <= 0.04045 else ((value + 0.055) / 1.055) ** 2.4


def cycles_seed(seed: int) -> int:
    """``seed`` folded into Cycles' seed range (a 32-bit signed int): seeds below 2^31 are kept as they are."""
    return seed % 2**31


def configure_renderer(width: int, height: int, seed: int, background: tuple[float, float, float] | None,
                       world_strength: float = 1.0, sun: tuple[float, float, float] | None = None) -> None:  # fmt: skip
    """Cycles on the CPU, Standard view transform, uniform white world light of strength ``world_strength``.

    ``background``: None renders a transparent film; else the linear RGB colour camera rays see (the light
    stays white). ``sun``: (azimuth_deg, elevation_deg, strength) adds a white sun shining from that direction.
    """
    bpy = import_bpy()
    scene = bpy.context.scene
    render = scene.render
    render.engine = "CYCLES"
    render.resolution_x, render.resolution_y, render.resolution_percentage = width, height, 100
    render.film_transparent = background is None
    render.dither_intensity = 0.0  # Blender dithers 8-bit output by default: colours would be off by one at random
    render.use_persistent_data = True  # keep the synced scene (BVH, textures) between the views of one pose
    image = render.image_settings
    image.media_type = "IMAGE"
    image.file_format, image.color_mode, image.color_depth, image.compression = "PNG", "RGBA", "8", 15
    scene.display_settings.display_device = "sRGB"
    scene.view_settings.view_transform = "Standard"
    scene.view_settings.look = "None"
    scene.view_settings.exposure = 0.0
    scene.view_settings.gamma = 1.0
    cycles = scene.cycles
    cycles.device = "CPU"
    cycles.seed, cycles.use_animated_seed = cycles_seed(seed), False
    cycles.use_adaptive_sampling = False
    cycles.diffuse_bounces, cycles.glossy_bounces = 2, 2
    cycles.transmission_bounces, cycles.transparent_max_bounces = 4, 8
    view_layer = scene.view_layers[0]
    view_layer.use_pass_z = True  # before the compositor: Render Layers nodes only have sockets for enabled passes
    view_layer.use_pass_normal = True
    _make_world(scene, background, world_strength)
    if sun is not None:
        _make_sun(scene, *sun)
    _make_compositor(scene)
    _make_camera(scene)


def _make_sun(scene, azimuth_deg: float, elevation_deg: float, strength: float) -> None:
    """A white sun lamp shining towards the origin from (azimuth, elevation); no shadow softening."""
    import math

    import bpy

    lamp = bpy.data.lights.new("orbit4d_sun", type="SUN")
    lamp.energy = strength
    lamp.angle = 0.0
    sun = bpy.data.objects.new("orbit4d_sun", lamp)
    scene.collection.objects.link(sun)
    azimuth, elevation = math.radians(azimuth_deg), math.radians(elevation_deg)
    # A sun shines along its local -Z: tilt -Z from straight down to point from the given direction to the origin.
    sun.rotation_euler = (math.pi / 2 - elevation, 0.0, azimuth + math.pi / 2)


def _make_world(scene, background: tuple[float, float, float] | None, strength: float = 1.0) -> None:
    import bpy

    world = bpy.data.worlds.new("orbit4d_world")
    scene.world = world
    nodes, links = world.node_tree.nodes, world.node_tree.links
    nodes.clear()
    output = nodes.new("ShaderNodeOutputWorld")
    light = nodes.new("ShaderNodeBackground")
    light.inputs["Color"].default_value = (1.0, 1.0, 1.0, 1.0)
    light.inputs["Strength"].default_value = strength
    if background is None:
        links.new(light.outputs["Background"], output.inputs["Surface"])
        return
    seen = nodes.new("ShaderNodeBackground")  # what camera rays see; everything else sees the white light
    seen.inputs["Color"].default_value = (*background, 1.0)
    seen.inputs["Strength"].default_value = 1.0
    path = nodes.new("ShaderNodeLightPath")
    mix = nodes.new("ShaderNodeMixShader")
    links.new(path.outputs["Is Camera Ray"], mix.inputs["Fac"])
    links.new(light.outputs["Background"], mix.inputs[1])
    links.new(seen.outputs["Background"], mix.inputs[2])
    links.new(mix.outputs["Shader"], output.inputs["Surface"])


def _make_compositor(scene) -> None:
    """Blender 5.0: a compositor node group whose File Output node writes depth, normal and alpha as 32-bit EXR."""
    import bpy

    group = bpy.data.node_groups.new(_COMPOSITOR_NAME, "CompositorNodeTree")
    scene.compositing_node_group = group
    layers = group.nodes.new("CompositorNodeRLayers")
    group_output = group.nodes.new("NodeGroupOutput")
    group.interface.new_socket("Image", in_out="OUTPUT", socket_type="NodeSocketColor")
    group.links.new(layers.outputs["Image"], group_output.inputs[0])
    files = group.nodes.new("CompositorNodeOutputFile")
    files.name = "passes"
    files.format.media_type = "IMAGE"  # before file_format: OPEN_EXR is not a valid choice for multilayer media
    files.format.file_format = "OPEN_EXR"
    files.format.color_depth = "32"
    files.format.exr_codec = "ZIP"
    items = (("FLOAT", "depth", "Depth"), ("VECTOR", "normal", "Normal"), ("FLOAT", "alpha", "Alpha"))
    for kind, name, source in items:
        files.file_output_items.new(kind, name)
        group.links.new(layers.outputs[source], files.inputs[name])


def _make_camera(scene) -> None:
    import bpy

    data = bpy.data.cameras.new(_CAMERA_NAME)
    camera = bpy.data.objects.new(_CAMERA_NAME, data)
    scene.collection.objects.link(camera)
    scene.camera = camera


def set_camera(camera: Camera) -> None:
    """Point the scene camera like ``camera`` (pinhole: distortion is not rendered) and size the image to it."""
    bpy = import_bpy()
    from mathutils import Matrix

    if not camera.is_pinhole:
        raise ValueError("Blender renders pinhole cameras only: pass a camera without distortion")
    if abs(camera.K[0, 1]) > 1e-9:
        raise ValueError("Blender cannot render a skewed K (K[0, 1] != 0)")
    scene = bpy.context.scene
    width, height = camera.width, camera.height
    scene.render.resolution_x, scene.render.resolution_y = width, height
    ycor = camera.fx / camera.fy  # Blender's pixel height / width; both aspects must be >= 1
    scene.render.pixel_aspect_x, scene.render.pixel_aspect_y = max(1.0, 1.0 / ycor), max(1.0, ycor)
    obj = scene.camera
    data = obj.data
    data.type = "PERSP"
    data.sensor_fit = "HORIZONTAL"
    data.sensor_width = 36.0
    data.lens = camera.fx * data.sensor_width / width
    data.shift_x = (width / 2.0 - (camera.cx + 0.5)) / width
    data.shift_y = ((camera.cy + 0.5) - height / 2.0) / width * ycor
    distance = float(np.linalg.norm(camera.center))
    data.clip_start = 1e-3  # the normalized asset is 1 unit across: a path tracer loses nothing to a near clip
    data.clip_end = max(100.0, 10.0 * distance)
    obj.matrix_world = Matrix(blender_world_from_cam(camera.cam_from_world).tolist())


def render_color(camera: Camera, rgba_path: Path, samples: int, work_dir: Path) -> None:
    """Render ``camera`` with Cycles (anti-aliased, ``samples`` samples) to an 8-bit RGBA PNG at ``rgba_path``.

    Blender reads '#' in output paths as frame-number placeholders, so it writes into ``work_dir`` (a temporary
    folder of ours) and the file is moved into place.
    """
    bpy = import_bpy()
    scene = bpy.context.scene
    set_camera(camera)
    cycles = scene.cycles
    cycles.samples, cycles.max_bounces = samples, 4
    cycles.filter_width, cycles.pixel_filter_type = 1.5, "BLACKMAN_HARRIS"
    cycles.use_denoising = False  # OpenImageDenoise: 0.2 -> 0.95 s a view at 256 px here, and it blurs textures
    scene.view_layers[0].material_override = None
    scene.render.use_compositing = False
    rendered = Path(work_dir) / "color.png"
    scene.render.filepath = str(rendered)
    with quiet_blender():
        bpy.ops.render.render(write_still=True)
    if not rendered.is_file():
        raise RuntimeError(f"Blender did not write {rendered}")
    shutil.move(rendered, rgba_path)


def render_passes(camera: Camera, work_dir: Path) -> ViewPasses:
    """Depth, normals and mask of ``camera`` for the rays through the pixel centres (one sample, no filter blend)."""
    bpy = import_bpy()
    scene = bpy.context.scene
    set_camera(camera)
    cycles = scene.cycles
    cycles.samples, cycles.max_bounces = 1, 0  # only the first hit matters
    cycles.filter_width, cycles.pixel_filter_type = _GEOMETRY_FILTER_WIDTH, "BOX"
    cycles.use_denoising = False
    scene.view_layers[0].material_override = _plain_material()
    scene.render.use_compositing = True
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    files = scene.compositing_node_group.nodes["passes"]
    files.directory = str(work_dir) + os.sep
    files.file_name = "pass_"
    scene.render.filepath = str(work_dir / "unused.png")
    with quiet_blender():
        bpy.ops.render.render(write_still=False)
    depth = _read_exr(work_dir / "pass_depth.exr", camera)[..., 0]
    normal = _read_exr(work_dir / "pass_normal.exr", camera)[..., :3]
    alpha = _read_exr(work_dir / "pass_alpha.exr", camera)[..., 0]
    mask = (alpha > 0.5) & (depth < _NO_SURFACE_DEPTH) & (depth > 0.0)
    depth = np.where(mask, depth, 0.0).astype(np.float32)
    length = np.linalg.norm(normal, axis=-1, keepdims=True)
    normals = np.where(mask[..., None] & (length > 1e-6), normal / np.maximum(length, 1e-12), 0.0).astype(np.float32)
    return ViewPasses(depth, normals, mask)


def _plain_material():
    """A default grey material for the geometry passes: cheap, and no normal maps bending the Normal pass."""
    import bpy

    material = bpy.data.materials.get("orbit4d_plain")
    if material is None:
        material = bpy.data.materials.new("orbit4d_plain")
        material.diffuse_color = (0.8, 0.8, 0.8, 1.0)
    return material


def _read_exr(path: Path, camera: Camera) -> np.ndarray:
    """[H, W, 4] float32 pixels of an EXR written by the compositor, rows top-down; the file is deleted."""
    bpy = import_bpy()
    if not path.is_file():
        raise RuntimeError(f"Blender's compositor did not write {path}")
    image = bpy.data.images.load(str(path), check_existing=False)
    try:
        image.colorspace_settings.is_data = True
        width, height = image.size
        if (width, height) != (camera.width, camera.height):
            raise RuntimeError(f"{path} is {width}x{height}, expected {camera.width}x{camera.height}")
        pixels = np.empty(width * height * 4, dtype=np.float32)
        image.pixels.foreach_get(pixels)
    finally:
        bpy.data.images.remove(image)
    path.unlink()
    return pixels.reshape(height, width, 4)[::-1].copy()
