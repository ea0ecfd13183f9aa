"""The procedural asset factory: seeded, varied, valid GLB that Blender imports, resumable, bad input in one line."""

from __future__ import annotations

import json

import numpy as np
import pytest

from generate.assets import TEMPLATES, FactoryConfig, asset_name, make_asset, read_glb_bytes, write_assets
from multiview.errors import InputError


def test_asset_k_of_seed_s_is_always_the_same_object():
    a, b = make_asset(5, 3).export(file_type="glb"), make_asset(5, 3).export(file_type="glb")
    assert a == b
    assert make_asset(5, 4).export(file_type="glb") != a and make_asset(6, 3).export(file_type="glb") != a


def test_assets_are_varied_textured_solids():
    templates, sizes = set(), []
    for index in range(60):
        scene = make_asset(0, index, texture_size=32, resolution=16)
        templates.add(scene.metadata["template"])
        meshes = list(scene.geometry.values())
        assert meshes and all(len(m.faces) and m.area > 1e-3 and np.isfinite(m.vertices).all() for m in meshes)
        assert all(m.visual.uv.min() >= -1e-6 and m.visual.uv.max() <= 1 + 1e-6 for m in meshes)
        sizes.append(scene.extents)
    assert templates == set(TEMPLATES)  # every kind of object turns up in 60
    aspect = np.array([e.max() / e.min() for e in sizes])
    assert aspect.min() < 1.6 and aspect.max() > 2.5  # compact and elongated ones


def test_a_written_asset_reads_back_with_its_textures(tmp_path):
    folder = write_assets(FactoryConfig(count=3, seed=1, texture_size=32, resolution=16), tmp_path / "assets")
    manifest = json.loads((folder / "assets.json").read_text())
    assert manifest["count"] == 3 and manifest["assets"] == [asset_name(i) for i in range(3)]
    scene = read_glb_bytes((folder / asset_name(0)).read_bytes())
    assert len(scene.geometry) >= 1 and all(len(m.faces) for m in scene.geometry.values())
    again = (folder / asset_name(1)).stat().st_mtime_ns
    write_assets(FactoryConfig(count=4, seed=1, texture_size=32, resolution=16), folder)  # more of the same family
    assert (folder / asset_name(1)).stat().st_mtime_ns == again and (folder / asset_name(3)).is_file()
    with pytest.raises(InputError, match="holds assets of another recipe"):
        write_assets(FactoryConfig(count=4, seed=2, texture_size=32, resolution=16), folder)


def test_blender_imports_an_asset_upright_and_textured(tmp_path):
    pytest.importorskip("bpy", reason="Blender as a module: pip install 'orbit4d[render]'")
    from multiview import blender

    folder = write_assets(FactoryConfig(count=1, seed=0, texture_size=32, resolution=16), tmp_path / "assets")
    scene = make_asset(0, 0, texture_size=32, resolution=16)
    blender.load_asset(folder / asset_name(0))
    mesh = blender.posed_mesh()
    # glTF is Y-up; Blender turns it Z-up, so its Z extent is the factory's own (Z-up) height
    z_up = np.ptp(np.concatenate([m.vertices for m in scene.geometry.values()]) @ np.array([[1, 0, 0], [0, 0, -1],
                                                                                           [0, 1, 0]]).T, axis=0)  # fmt: skip
    assert np.allclose(np.ptp(mesh.vertices, axis=0), z_up, rtol=1e-3, atol=1e-4)
    bpy = blender.import_bpy()
    images = [image for image in bpy.data.images if image.size[0] > 0]
    textured = any(node.type == "TEX_IMAGE" for m in bpy.data.materials if m.node_tree for node in m.node_tree.nodes)
    assert textured == bool(images)


@pytest.mark.parametrize(("argv", "words"), [
    (["--count", "0"], "count 0: ask for at least 1 asset"),
    (["--count", "-3"], "count -3: ask for at least 1 asset"),
    (["--workers", "0"], "--workers 0: use at least 1"),
])  # fmt: skip
def test_bad_factory_requests_are_one_line(tmp_path, capsys, argv, words):
    from orbit4d.cli import main

    code = main(["assets", "--out", str(tmp_path / "a"), *argv])
    err = capsys.readouterr().err
    assert code == 1 and words in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_a_negative_seed_is_refused(tmp_path, capsys):
    from orbit4d.cli import main

    with pytest.raises(SystemExit) as stop:
        main(["assets", "--out", str(tmp_path / "a"), "--seed", "-1"])
    assert stop.value.code == 2 and "is not a seed from 0 to 2^63 - 1" in capsys.readouterr().err
