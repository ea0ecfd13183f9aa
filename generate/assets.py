"""Procedural 3D assets for the generator's training data: asset k of seed s is always the same object.

Every asset is a few parts, each a parametric surface with its own UV grid, deformed and placed by a template:

- part families: superquadrics (spheres, rounded boxes, diamonds, cylinders), surfaces of revolution (a random
  smooth profile, optionally fluted), extrusions of star-shaped outlines (stars, gears, polygons), tori and torus arcs
  (handles), tubes swept along curves (legs, tails, spouts);
- deformations: taper, twist, bend, smooth noise displacement along the normals;
- templates: a single deformed part, a stack of parts on one axis (vases, lamps, bottles), a body with a handle
  (mugs, pots), a slab on legs (tables, stools), a creature (body, legs, head, ears, tail: long, not symmetric about
  the vertical axis), a cluster of overlapping primitives (sculptures);
- looks: per part a material from matte to glossy (roughness 0.15-1, a little metal now and then) and a plain colour
  or a procedural texture: stripes, checks, dots, smooth noise, gradients, or a label of random glyphs.

``make_asset(seed, index)`` builds one as a ``trimesh.Scene``; ``write_assets`` writes many as GLB (glTF 2.0,
Y-up as glTF says: Blender imports them Z-up) with a manifest, skipping those already written, in parallel.
The permissive models of ``../shared/data/models`` are evaluation objects and are never produced or read here.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from multiview.console import info, track
from multiview.errors import InputError
from multiview.outputs import write_json

MANIFEST = "assets.json"
MAX_SEED = 2**63 - 1


@dataclass(frozen=True)
class FactoryConfig:
    """How many assets, from which seed, and how detailed."""

    count: int = 2000
    """Assets to write: asset_00000.glb .. asset_{count-1}.glb."""
    seed: int = 0
    """Asset k of seed s is always the same object (0 to 2^63 - 1)."""
    texture_size: int = 128
    """Side of each procedural texture in pixels."""
    resolution: int = 48
    """Grid cells round each part (its cells along the part scale with it)."""

    def validate(self) -> None:
        if self.count < 1:
            raise InputError(f"count {self.count}: ask for at least 1 asset")
        if not 0 <= self.seed <= MAX_SEED:
            raise InputError(f"seed {self.seed}: use a whole number from 0 to 2^63 - 1")
        if not 16 <= self.texture_size <= 2048:
            raise InputError(f"texture_size {self.texture_size}: use 16 to 2048 pixels")
        if not 8 <= self.resolution <= 512:
            raise InputError(f"resolution {self.resolution}: use 8 to 512 grid cells")


@dataclass
class Part:
    """One surface: vertices [V, 3], triangles [F, 3], texture coordinates [V, 2] in [0, 1]."""

    vertices: np.ndarray
    faces: np.ndarray
    uv: np.ndarray

    def transformed(self, matrix: np.ndarray) -> Part:
        return Part(self.vertices @ matrix[:3, :3].T + matrix[:3, 3], self.faces, self.uv)


# --- surfaces ---------------------------------------------------------------------------------------------------


def _grid(nu: int, nv: int, surface: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> Part:
    """A (nu x nv)-cell grid of ``surface(u, v)`` for u, v in [0, 1]; the u = 1 column repeats u = 0 (UV seam)."""
    u, v = np.meshgrid(np.linspace(0.0, 1.0, nu + 1), np.linspace(0.0, 1.0, nv + 1))
    vertices = surface(u, v).reshape(-1, 3)
    i, j = np.meshgrid(np.arange(nv), np.arange(nu), indexing="ij")
    a = (i * (nu + 1) + j).ravel()
    b, c, d = a + 1, a + nu + 2, a + nu + 1
    faces = np.concatenate([np.stack([a, b, c], 1), np.stack([a, c, d], 1)])
    return Part(vertices, faces, np.stack([u.ravel(), v.ravel()], 1))


def _cap(ring: np.ndarray, centre: np.ndarray, flip: bool) -> Part:
    """A fan closing the ring of points [n+1, 3] (last repeats first) at ``centre``; UVs a disc in the texture."""
    n = len(ring) - 1
    vertices = np.concatenate([ring[:n], centre[None]])
    angle = np.linspace(0, 2 * np.pi, n, endpoint=False)
    uv = np.concatenate([np.stack([0.5 + 0.45 * np.cos(angle), 0.5 + 0.45 * np.sin(angle)], 1), [[0.5, 0.5]]])
    k = np.arange(n)
    faces = np.stack([np.full(n, n), k, (k + 1) % n], 1)
    return Part(vertices, faces[:, ::-1] if flip else faces, uv)


def _merge(parts: list[Part]) -> Part:
    offsets = np.cumsum([0] + [len(p.vertices) for p in parts[:-1]])
    return Part(np.concatenate([p.vertices for p in parts]),
                np.concatenate([p.faces + o for p, o in zip(parts, offsets)]),
                np.concatenate([p.uv for p in parts]))  # fmt: skip


def _signed_power(x: np.ndarray, e: float) -> np.ndarray:
    return np.sign(x) * np.abs(x) ** e


def superquadric(radii, e1: float, e2: float, n: int) -> Part:
    """Superellipsoid: e1 shapes the profile (top to bottom), e2 the cross-section; 1, 1 is an ellipsoid, small
    values make boxes, 2 diamonds."""
    def surface(u, v):
        theta, phi = (u * 2 - 1) * np.pi, (v - 0.5) * np.pi
        cp, sp = _signed_power(np.cos(phi), e1), _signed_power(np.sin(phi), e1)
        return np.stack([radii[0] * cp * _signed_power(np.cos(theta), e2),
                         radii[1] * cp * _signed_power(np.sin(theta), e2), radii[2] * sp], -1)  # fmt: skip

    return _grid(n, n // 2, surface)


def revolution(profile: np.ndarray, height: float, lobes: int, lobe_depth: float, n: int) -> Part:
    """The smooth profile (radii bottom to top) turned round the z axis, ``lobes`` flutes deep ``lobe_depth``;
    closed at both ends."""
    heights = np.linspace(0.0, 1.0, len(profile))

    def radius(v):
        return np.maximum(np.interp(v, heights, _smooth(profile)), 1e-3)

    def surface(u, v):
        theta = u * 2 * np.pi
        r = radius(v) * (1 + lobe_depth * np.cos(lobes * theta))
        return np.stack([r * np.cos(theta), r * np.sin(theta), v * height], -1)

    side = _grid(n, max(8, n // 2), surface)
    bottom = surface(np.linspace(0, 1, n + 1), np.zeros(n + 1))
    top = surface(np.linspace(0, 1, n + 1), np.ones(n + 1))
    return _merge([side, _cap(bottom, np.array([0.0, 0.0, 0.0]), True), _cap(top, np.array([0.0, 0.0, height]), False)])


def extrusion(outline: Callable[[np.ndarray], np.ndarray], height: float, n: int) -> Part:
    """The star-shaped outline r(theta) extruded along z from 0 to ``height``, capped."""
    def surface(u, v):
        theta = u * 2 * np.pi
        r = outline(theta)
        return np.stack([r * np.cos(theta), r * np.sin(theta), v * height], -1)

    side = _grid(2 * n, 4, surface)
    u = np.linspace(0, 1, 2 * n + 1)
    return _merge([side, _cap(surface(u, np.zeros_like(u)), np.zeros(3), True),
                   _cap(surface(u, np.ones_like(u)), np.array([0.0, 0.0, height]), False)])  # fmt: skip


def torus(major: float, minor: float, arc: float, n: int) -> Part:
    """A torus round the z axis (``arc`` < 2 pi: an open arc centred on +x with round ends, a handle)."""
    def surface(u, v):
        theta, phi = (u - 0.5) * arc, v * 2 * np.pi
        r = major + minor * np.cos(phi)
        return np.stack([r * np.cos(theta), r * np.sin(theta), minor * np.sin(phi)], -1)

    ring = _grid(n, max(8, n // 3), surface)
    if arc >= 2 * np.pi - 1e-6:
        return ring
    ends = [superquadric((minor, minor, minor), 1, 1, 16).transformed(_translation(
        [major * np.cos(a), major * np.sin(a), 0.0])) for a in (-arc / 2, arc / 2)]  # fmt: skip
    return _merge([ring, *ends])


def tube(points: np.ndarray, radius: np.ndarray, n: int) -> Part:
    """A tube of radius ``radius`` [K] swept along the polyline ``points`` [K, 3] (smoothed), capped."""
    k = len(points)
    t = np.linspace(0, 1, 4 * k)
    path = np.stack([np.interp(t, np.linspace(0, 1, k), points[:, i]) for i in range(3)], 1)
    path = np.stack([_smooth(path[:, i], passes=3) for i in range(3)], 1)
    radii = np.interp(t, np.linspace(0, 1, k), radius)
    tangents = np.gradient(path, axis=0)
    tangents /= np.linalg.norm(tangents, axis=1, keepdims=True) + 1e-12
    normal = np.cross(tangents[0], [0.0, 0.0, 1.0] if abs(tangents[0][2]) < 0.9 else [1.0, 0.0, 0.0])
    normals = []
    for tangent in tangents:  # parallel transport: no twist where the path turns
        normal = normal - tangent * normal.dot(tangent)
        normal /= np.linalg.norm(normal) + 1e-12
        normals.append(normal)
    normals = np.array(normals)
    binormals = np.cross(tangents, normals)

    def surface(u, v):
        index = np.minimum((v * (len(path) - 1)).round().astype(int), len(path) - 1)
        angle = u * 2 * np.pi
        r = radii[index][..., None]
        return path[index] + r * (np.cos(angle)[..., None] * normals[index] + np.sin(angle)[..., None] *
                                  binormals[index])  # fmt: skip

    side = _grid(n // 2, len(path) - 1, surface)
    u = np.linspace(0, 1, n // 2 + 1)
    return _merge([side, _cap(surface(u, np.zeros_like(u)), path[0], True),
                   _cap(surface(u, np.ones_like(u)), path[-1], False)])  # fmt: skip


def _smooth(values: np.ndarray, passes: int = 2) -> np.ndarray:
    values = np.asarray(values, dtype=float)
    for _ in range(passes):
        padded = np.concatenate([values[:1], values, values[-1:]])
        values = 0.25 * padded[:-2] + 0.5 * padded[1:-1] + 0.25 * padded[2:]
    return values


# --- deformations and placement ---------------------------------------------------------------------------------


def deform(part: Part, rng: np.random.Generator, strength: float) -> Part:
    """Taper, twist, bend and smooth bumps, each now and then, scaled by ``strength`` (0: none)."""
    v = part.vertices.copy()
    lo, hi = v[:, 2].min(), v[:, 2].max()
    z = (v[:, 2] - lo) / max(hi - lo, 1e-9)
    if rng.random() < 0.4 * strength:  # taper
        scale = 1 + rng.uniform(-0.6, 0.6) * z
        v[:, :2] *= scale[:, None]
    if rng.random() < 0.3 * strength:  # twist about z
        angle = rng.uniform(-1.5, 1.5) * z
        c, s = np.cos(angle), np.sin(angle)
        v[:, 0], v[:, 1] = c * v[:, 0] - s * v[:, 1], s * v[:, 0] + c * v[:, 1]
    if rng.random() < 0.3 * strength:  # bend in the xz plane
        curvature = rng.uniform(-1.2, 1.2) / max(hi - lo, 1e-3)
        if abs(curvature) > 1e-3:
            angle = (v[:, 2] - lo) * curvature
            r = 1 / curvature - v[:, 0]
            v[:, 0], v[:, 2] = 1 / curvature - r * np.cos(angle), lo + r * np.sin(angle)
    if rng.random() < 0.35 * strength:  # smooth bumps along the normals
        size = np.ptp(v, axis=0).max()
        normals = _vertex_normals(v, part.faces)
        bumps = np.zeros(len(v))
        for _ in range(4):
            direction = rng.normal(size=3)
            bumps += np.sin(v @ direction * rng.uniform(3, 9) / size + rng.uniform(0, 2 * np.pi))
        v += normals * (bumps / 4 * rng.uniform(0.02, 0.08) * size)[:, None]
    return Part(v, part.faces, part.uv)


def _vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    tri = vertices[faces]
    face_normals = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    normals = np.zeros_like(vertices)
    for k in range(3):
        np.add.at(normals, faces[:, k], face_normals)
    return normals / (np.linalg.norm(normals, axis=1, keepdims=True) + 1e-12)


def _translation(offset) -> np.ndarray:
    matrix = np.eye(4)
    matrix[:3, 3] = offset
    return matrix


def _rotation(rng: np.random.Generator, amount: float = 1.0) -> np.ndarray:
    """A random rotation; ``amount`` < 1 keeps it near the identity."""
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    angle = rng.uniform(-np.pi, np.pi) * amount
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    matrix = np.eye(4)
    matrix[:3, :3] = np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k
    return matrix


def _outward(part: Part) -> Part:
    """Triangles wound so that their normals point away from the part's centre, on the whole (glTF's rule)."""
    tri = part.vertices[part.faces]
    normals = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    outward = np.einsum("ij,ij->i", normals, tri.mean(1) - part.vertices.mean(0)).sum()
    return part if outward >= 0 else Part(part.vertices, part.faces[:, ::-1].copy(), part.uv)


# --- parts and templates ----------------------------------------------------------------------------------------


def random_part(rng: np.random.Generator, size: float, n: int) -> Part:
    """A part of a random family about ``size`` across, standing on z = 0 or centred, axis z."""
    family = rng.choice(["superquadric", "revolution", "extrusion", "torus", "tube"], p=[0.3, 0.25, 0.2, 0.1, 0.15])
    half = size / 2
    if family == "superquadric":
        radii = half * rng.uniform(0.4, 1.0, size=3)
        return superquadric(radii, rng.choice([0.2, 0.5, 1.0, 1.0, 1.5, 2.0]), rng.choice([0.2, 0.5, 1.0, 1.0, 2.0]),
                            n)  # fmt: skip
    if family == "revolution":
        profile = half * rng.uniform(0.15, 1.0, size=rng.integers(3, 7))
        lobes = int(rng.choice([0, 0, 0, 5, 6, 8, 12]))
        return revolution(profile, size * rng.uniform(0.5, 1.5), lobes, rng.uniform(0.03, 0.12) if lobes else 0.0, n)
    if family == "extrusion":
        return extrusion(_outline(rng, half), size * rng.uniform(0.15, 1.2), n)
    if family == "torus":
        minor = half * rng.uniform(0.12, 0.35)
        return torus(half - minor, minor, 2 * np.pi if rng.random() < 0.5 else rng.uniform(np.pi, 1.7 * np.pi), n)
    k = int(rng.integers(3, 6))
    points = np.cumsum(rng.normal(scale=size / k, size=(k, 3)), axis=0)
    return tube(points - points.mean(0), half * rng.uniform(0.08, 0.25) * rng.uniform(0.6, 1.0, size=k), n)


def _outline(rng: np.random.Generator, radius: float) -> Callable[[np.ndarray], np.ndarray]:
    """r(theta) of a star, gear, rounded polygon or blob."""
    kind = rng.choice(["star", "gear", "polygon", "blob"])
    points = int(rng.integers(3, 9))
    if kind == "star":
        depth = rng.uniform(0.3, 0.6)
        return lambda t: radius * (1 - depth * (0.5 + 0.5 * np.cos(points * t)))
    if kind == "gear":
        return lambda t: radius * (0.8 + 0.2 * np.clip(3 * np.cos(2 * points * t), -1, 1))
    if kind == "polygon":
        return lambda t: radius * np.cos(np.pi / points) / np.cos((t % (2 * np.pi / points)) - np.pi / points)
    phases, amplitudes = rng.uniform(0, 2 * np.pi, 4), rng.uniform(0, 0.2, 4)
    return lambda t: radius * (0.75 + sum(a * np.cos((k + 1) * t + p) for k, (a, p) in
                                          enumerate(zip(amplitudes, phases))))  # fmt: skip


def _single(rng, n):
    return [deform(random_part(rng, 1.0, n), rng, 1.5)]


def _stack(rng, n):
    parts, z = [], 0.0
    for _ in range(int(rng.integers(2, 5))):
        width = rng.uniform(0.3, 1.0)
        kind = rng.choice(["revolution", "superquadric", "extrusion"])
        if kind == "revolution":
            part = revolution(width / 2 * rng.uniform(0.3, 1.0, size=rng.integers(3, 6)), width * rng.uniform(0.3, 1.2),
                              0, 0.0, n)  # fmt: skip
        elif kind == "superquadric":
            r = width / 2 * rng.uniform(0.6, 1.0, size=3)
            part = superquadric(r, rng.choice([0.3, 1.0, 1.0]), rng.choice([0.3, 1.0]), n)
            part = part.transformed(_translation([0, 0, r[2]]))
        else:
            part = extrusion(_outline(rng, width / 2), width * rng.uniform(0.1, 0.5), n)
        part = deform(part, rng, 0.7)
        lo = part.vertices[:, 2].min()
        parts.append(part.transformed(_translation([0, 0, z - lo])))
        z += np.ptp(part.vertices[:, 2]) * rng.uniform(0.85, 1.0)
    return parts


def _with_handle(rng, n):
    body = revolution(0.5 * rng.uniform(0.5, 1.0, size=rng.integers(3, 6)), rng.uniform(0.6, 1.2), 0, 0.0, n)
    body = deform(body, rng, 0.5)
    height = np.ptp(body.vertices[:, 2])
    major = height * rng.uniform(0.2, 0.35)
    handle = torus(major, rng.uniform(0.03, 0.07), rng.uniform(1.1 * np.pi, 1.5 * np.pi), n)
    upright = np.eye(4)
    upright[:3, :3] = [[1, 0, 0], [0, 0, -1], [0, 1, 0]]  # the arc's plane becomes the xz plane
    side = np.percentile(body.vertices[:, 0], 95)
    parts = [body, handle.transformed(_translation([side, 0, height * rng.uniform(0.4, 0.6)]) @ upright)]
    if rng.random() < 0.4:  # a spout opposite the handle
        spout = tube(np.array([[0, 0, 0], [-0.15, 0, 0.1], [-0.3, 0, 0.25]]), np.array([0.06, 0.05, 0.04]), n)
        parts.append(spout.transformed(_translation([body.vertices[:, 0].min() * 0.8, 0, height * 0.4])))
    return parts


def _on_legs(rng, n):
    width, depth = rng.uniform(0.5, 1.0), rng.uniform(0.4, 1.0)
    height = rng.uniform(0.3, 0.9)
    thickness = rng.uniform(0.03, 0.12)
    if rng.random() < 0.5:
        top = superquadric((width / 2, depth / 2, thickness), 0.2, rng.choice([0.2, 1.0]), n)
    else:
        top = extrusion(_outline(rng, width / 2), thickness * 2, n).transformed(_translation([0, 0, -thickness]))
    parts = [top.transformed(_translation([0, 0, height]))]
    legs = int(rng.choice([3, 4, 4, 4]))
    leg_radius = rng.uniform(0.02, 0.06)
    splay = rng.uniform(0.0, 0.1)
    for k in range(legs):
        angle = 2 * np.pi * k / legs + np.pi / 4
        x, y = 0.4 * width * np.cos(angle), 0.4 * depth * np.sin(angle)
        foot = [x * (1 + splay * 3), y * (1 + splay * 3), 0.0]
        parts.append(tube(np.array([foot, [x, y, height / 2], [x, y, height]]), np.full(3, leg_radius), n))
    if rng.random() < 0.4:  # a back: a chair
        back = superquadric((width / 2, thickness, height * 0.5), 0.2, 0.2, n)
        parts.append(back.transformed(_translation([0, -0.45 * depth, height * 1.5])))
    return parts


def _creature(rng, n):
    length, girth = rng.uniform(0.8, 1.2), rng.uniform(0.25, 0.45)
    leg_length = rng.uniform(0.2, 0.5)
    body = superquadric((length / 2, girth / 2, girth / 2 * rng.uniform(0.8, 1.2)), rng.choice([0.6, 1.0]), 1.0, n)
    body = deform(body, rng, 0.5).transformed(_translation([0, 0, leg_length + girth / 2]))
    parts = [body]
    for sx in (-1, 1):
        for sy in (-1, 1):
            x, y = sx * length * 0.32, sy * girth * 0.3
            parts.append(tube(np.array([[x, y, leg_length + girth / 4], [x + rng.normal(0, 0.03), y, leg_length / 2],
                                        [x, y, 0.0]]), np.full(3, girth * rng.uniform(0.1, 0.2)), n))  # fmt: skip
    head_size = girth * rng.uniform(0.6, 1.1)
    head_at = np.array([length / 2 + head_size * 0.3, 0, leg_length + girth * rng.uniform(0.7, 1.3)])
    head = superquadric((head_size * rng.uniform(0.5, 0.9), head_size / 2, head_size / 2), 1.0, 1.0, n)
    parts.append(head.transformed(_translation(head_at)))
    if rng.random() < 0.7:  # ears or horns
        for sy in (-1, 1):
            ear = revolution(np.array([0.05, 0.03, 0.001]) * rng.uniform(0.8, 1.6), rng.uniform(0.08, 0.2), 0, 0.0,
                             n // 2)  # fmt: skip
            parts.append(ear.transformed(_translation(head_at + [0, sy * head_size * 0.3, head_size * 0.35])))
    if rng.random() < 0.7:  # a tail
        base = np.array([-length / 2, 0, leg_length + girth / 2])
        tail = base + np.cumsum(rng.normal([-0.12, 0, 0.08], 0.05, size=(3, 3)), axis=0)
        parts.append(tube(np.concatenate([base[None], tail]), np.array([0.05, 0.04, 0.03, 0.015]), n))
    return parts


def _cluster(rng, n):
    parts = []
    for _ in range(int(rng.integers(2, 6))):
        part = random_part(rng, rng.uniform(0.3, 0.8), n)
        parts.append(deform(part, rng, 0.8).transformed(_translation(rng.normal(0, 0.2, size=3)) @ _rotation(rng)))
    return parts


TEMPLATES: dict[str, tuple[float, Callable]] = {
    "single": (0.25, _single),
    "stack": (0.2, _stack),
    "handle": (0.1, _with_handle),
    "legs": (0.12, _on_legs),
    "creature": (0.15, _creature),
    "cluster": (0.18, _cluster),
}
"""Template name: (share of assets, builder)."""


# --- looks ------------------------------------------------------------------------------------------------------


def _palette(rng: np.random.Generator, count: int) -> np.ndarray:
    """[count, 3] sRGB colours in [0, 1] around a random hue: related, as most objects' colours are."""
    import colorsys

    base = rng.random()
    colours = []
    for _ in range(count):
        hue = (base + rng.choice([0.0, 0.08, 0.5, 0.33]) + rng.normal(0, 0.03)) % 1.0
        colours.append(colorsys.hsv_to_rgb(hue, rng.uniform(0.15, 0.95), rng.uniform(0.25, 1.0)))
    return np.array(colours)


def texture(rng: np.random.Generator, colours: np.ndarray, size: int) -> np.ndarray:
    """[size, size, 3] uint8: stripes, checks, dots, smooth noise, a gradient or a label, in ``colours``."""
    kind = rng.choice(["stripes", "checks", "dots", "noise", "gradient", "label"])
    y, x = (np.mgrid[0:size, 0:size] + 0.5) / size
    a, b = colours[0], colours[1]
    if kind == "stripes":
        angle = rng.uniform(0, np.pi)
        period = rng.uniform(0.05, 0.3)
        t = (np.sin(2 * np.pi * (x * np.cos(angle) + y * np.sin(angle)) / period) > rng.uniform(-0.5, 0.5))
    elif kind == "checks":
        k = int(rng.integers(2, 12))
        t = ((x * k).astype(int) + (y * k * rng.choice([1, 2])).astype(int)) % 2 == 0
    elif kind == "dots":
        k = int(rng.integers(3, 10))
        t = np.hypot((x * k) % 1 - 0.5, (y * k) % 1 - 0.5) < rng.uniform(0.15, 0.4)
    elif kind == "noise":
        t = _value_noise(rng, size)
    elif kind == "gradient":
        t = x if rng.random() < 0.5 else y
    else:
        return _label(rng, colours, size)
    t = np.asarray(t, dtype=float)[..., None]
    return (255 * np.clip(a * (1 - t) + b * t, 0, 1)).astype(np.uint8)


def _value_noise(rng: np.random.Generator, size: int) -> np.ndarray:
    """[size, size] smooth noise in [0, 1]: bilinear octaves of random grids, tileable in u."""
    total = np.zeros((size, size))
    for octave in range(3):
        cells = 2 ** (octave + 2)
        grid = rng.random((cells + 1, cells + 1))
        grid[:, -1] = grid[:, 0]
        coords = np.linspace(0, cells, size, endpoint=False)
        i = coords.astype(int)
        f = coords - i
        f = f * f * (3 - 2 * f)
        rows = grid[i] * (1 - f)[:, None] + grid[i + 1] * f[:, None]
        total += (rows[:, i] * (1 - f) + rows[:, i + 1] * f) / 2**octave
    return (total - total.min()) / max(np.ptp(total), 1e-9)


def _label(rng: np.random.Generator, colours: np.ndarray, size: int) -> np.ndarray:
    """A plain colour with a band of random glyphs across it."""
    from PIL import Image, ImageDraw, ImageFont

    image = Image.new("RGB", (size, size), tuple(int(255 * c) for c in colours[0]))
    draw = ImageDraw.Draw(image)
    top = int(size * rng.uniform(0.2, 0.6))
    band = int(size * rng.uniform(0.2, 0.35))
    draw.rectangle([0, top, size, top + band], fill=tuple(int(255 * c) for c in colours[1]))
    font = ImageFont.load_default(size=max(8, int(band * 0.7)))
    text = "".join(rng.choice(list("ABCDEFGHKMNPRSTUVXYZ0123456789")) for _ in range(int(rng.integers(2, 7))))
    ink = tuple(int(255 * c) for c in colours[2 % len(colours)])
    draw.text((size * 0.05, top + band * 0.1), text, fill=ink, font=font)
    return np.asarray(image)


def _material(rng: np.random.Generator, colours: np.ndarray, texture_size: int):
    from PIL import Image
    from trimesh.visual.material import PBRMaterial

    roughness = float(rng.choice([rng.uniform(0.7, 1.0), rng.uniform(0.15, 0.6)]))
    metallic = float(rng.uniform(0.5, 0.9)) if rng.random() < 0.1 else 0.0
    if rng.random() < 0.35:
        colour = [*(255 * colours[0]).astype(int).tolist(), 255]
        return PBRMaterial(baseColorFactor=colour, roughnessFactor=roughness, metallicFactor=metallic)
    image = Image.fromarray(texture(rng, colours, texture_size))
    return PBRMaterial(baseColorTexture=image, roughnessFactor=roughness, metallicFactor=metallic)


# --- assets -----------------------------------------------------------------------------------------------------


def make_asset(seed: int, index: int, texture_size: int = 128, resolution: int = 48):
    """Asset ``index`` of ``seed`` as a trimesh Scene of textured parts (Z-up, about 1 unit across)."""
    import trimesh

    rng = np.random.default_rng([seed, index])
    names = list(TEMPLATES)
    shares = np.array([TEMPLATES[name][0] for name in names])
    template = names[int(rng.choice(len(names), p=shares / shares.sum()))]
    parts = [_outward(part) for part in TEMPLATES[template][1](rng, resolution)]
    colours = _palette(rng, 4)
    scene = trimesh.Scene()
    z_up_to_y_up = np.array([[1, 0, 0, 0], [0, 0, 1, 0], [0, -1, 0, 0], [0, 0, 0, 1.0]])
    for k, part in enumerate(parts):
        own = colours[np.roll(np.arange(len(colours)), k)] if rng.random() < 0.6 else _palette(rng, 3)
        visual = trimesh.visual.TextureVisuals(uv=part.uv, material=_material(rng, own, texture_size))
        mesh = trimesh.Trimesh(part.vertices @ z_up_to_y_up[:3, :3].T, part.faces, visual=visual, process=False)
        scene.add_geometry(mesh, geom_name=f"part{k}")
    scene.metadata["template"] = template
    return scene


def asset_name(index: int) -> str:
    return f"asset_{index:05d}.glb"


def _write_one(job: tuple[int, int, int, int, str]) -> tuple[int, str]:
    seed, index, texture_size, resolution, folder = job
    scene = make_asset(seed, index, texture_size, resolution)
    data = scene.export(file_type="glb")
    path = Path(folder) / asset_name(index)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return index, scene.metadata["template"]


def write_assets(config: FactoryConfig, out_dir: Path, workers: int = 1) -> Path:
    """Write ``config.count`` assets into ``out_dir`` (created) with ``assets.json``; assets already there are kept
    (an interrupted run continues). InputError for a folder written with another seed or detail."""
    config.validate()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = out_dir / MANIFEST
    recipe = {k: v for k, v in asdict(config).items() if k != "count"}
    if manifest.is_file():
        try:
            previous = json.loads(manifest.read_text())["recipe"]
        except (OSError, ValueError, KeyError, TypeError):
            raise InputError(f"{manifest} is not an asset manifest: choose an empty folder for the assets") from None
        if previous != recipe:
            raise InputError(f"{out_dir} holds assets of another recipe ({previous}, not {recipe}): choose another "
                             "folder or the same seed and settings")
    elif any(out_dir.iterdir()):
        raise InputError(f"{out_dir} is not empty and has no {MANIFEST}: choose an empty folder for the assets")
    write_json(manifest, {"recipe": recipe, "count": None})
    todo = [i for i in range(config.count) if not (out_dir / asset_name(i)).is_file()]
    jobs = [(config.seed, i, config.texture_size, config.resolution, str(out_dir)) for i in todo]
    if workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(workers) as pool:
            list(track(pool.map(_write_one, jobs, chunksize=8), "making assets", total=len(jobs)))
    else:
        for job in track(jobs, "making assets"):
            _write_one(job)
    write_json(manifest, {"recipe": recipe, "count": config.count,
                          "assets": [asset_name(i) for i in range(config.count)]})  # fmt: skip
    info(f"{config.count} assets in {out_dir} ({len(todo)} made now)")
    return out_dir


def read_glb_bytes(data: bytes):
    """A GLB's scene from bytes (tests)."""
    import trimesh

    return trimesh.load(io.BytesIO(data), file_type="glb")
