"""The embedded generator trained further on the lent GPU machine, in one call (``bench/gpu_session.sh``).

What travels to the machine must stay under 64 MiB with the checkout (which holds the shipped model, about 35 MB)
and what comes back is at most 8 files of 16 MiB, so:

    python bench/generator_gpu.py pack DATA PACK --clips 1000   # here: a random share of DATA's training clips as
                                                                # JPEG (images, masks, transforms.json), and its test clips
    python bench/generator_gpu.py train PACK --steps 3000       # there: finetune from the shipped model on CUDA
                                                                # (bf16, batch 64), the model split into <16 MiB parts
    python bench/generator_gpu.py unpack OUT                    # here: the parts joined into generate/embedded/

``train`` starts from the shipped weights (the optimizer starts afresh) with the same recipe and code as the CPU
run (``orbit4d finetune``); on a machine without CUDA it runs the same steps on the CPU (a dry run for tests).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

PART_BYTES = 15 * 2**20  # under the 16 MiB a returned file may have


def pack(data: Path, out: Path, clips: int, quality: int, seed: int) -> None:
    """``clips`` random training clips and every test clip of ``data`` into ``out/data`` (a dataset folder)."""
    from PIL import Image

    listing = json.loads((data / "dataset.json").read_text())
    train = [c for c in listing["clips"] if c["split"] == "train"]
    test = [c for c in listing["clips"] if c["split"] == "test"]
    chosen = random.Random(seed).sample(train, min(clips, len(train))) + test
    root = out / "data"
    shutil.rmtree(root, ignore_errors=True)
    for clip in chosen:
        source, target = data / clip["path"], root / clip["path"]
        (target / "images").mkdir(parents=True)
        meta = json.loads((source / "transforms.json").read_text())
        for frame in meta["frames"]:
            name = Path(frame["file_path"]).with_suffix(".jpg").name
            with Image.open(source / frame["file_path"]) as image:
                image.convert("RGB").save(target / "images" / name, quality=quality)
            frame["file_path"] = f"images/{name}"
            if frame.get("mask_path"):  # the foreground head's targets: a few hundred bytes a view
                (target / frame["mask_path"]).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(source / frame["mask_path"], target / frame["mask_path"])
            for key in ("depth_file_path", "normal_file_path"):
                frame.pop(key, None)
        meta.pop("ply_file_path", None)
        (target / "transforms.json").write_text(json.dumps(meta))
    (root / "dataset.json").write_text(json.dumps({**listing, "clips": chosen}))
    size = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    print(f"{len(chosen) - len(test)} training and {len(test)} test clips in {root}: {size / 2**20:.1f} MiB")


def train(pack_dir: Path, steps: int, batch: int, out: Path) -> None:
    """Fine-tune the shipped model on the packed clips; the model and curves into ``out`` in parts."""
    import torch

    from generate import EMBEDDED_MODEL

    cuda = torch.cuda.is_available()
    run = Path("/tmp/orbit4d_gpu_run")
    shutil.rmtree(run, ignore_errors=True)
    shutil.rmtree(run.parent / f".{run.name}.partial", ignore_errors=True)
    config = {"data": str(pack_dir / "data"), "out": str(run), "base": str(EMBEDDED_MODEL), "steps": steps,
              "batch_size": batch if cuda else 1, "learning_rate": 1e-4, "warmup_steps": min(100, steps // 10),
              "ema_decay": 0.999, "p_mean": 5.5, "p_std": 1.0,  # the shipped model's noise levels (its model card)
              "objective": "psnr", "foreground": True, "foreground_weight": 0.7,  # the best CPU recipe (RESULTS)
              "eval_clips": 8 if cuda else 1, "eval_steps": None,
              "eval_every": max(1, steps // 6), "checkpoint_every": 0,
              "mixed_precision": "bf16" if cuda else "no", "export_dtype": "float16"}  # fmt: skip
    path = Path("/tmp/orbit4d_gpu_finetune.json")
    path.write_text(json.dumps(config))
    subprocess.run([sys.executable, "-m", "orbit4d", "finetune", str(path)], check=True)
    out.mkdir(parents=True, exist_ok=True)
    for name in ("curve.json", "losses.json", "evaluation.json", "config.json"):
        if (run / name).is_file():
            shutil.copy(run / name, out / name)
    archive = shutil.make_archive(str(out / "model"), "tar", run / "model")
    data = Path(archive).read_bytes()
    Path(archive).unlink()
    for index in range(0, len(data), PART_BYTES):
        (out / f"model.tar.part{index // PART_BYTES:02d}").write_bytes(data[index:index + PART_BYTES])


def unpack(parts: Path, target: Path) -> None:
    """Join ``parts``/model.tar.part* and unpack them over ``target`` (the embedded model folder)."""
    import tarfile

    chunks = sorted(parts.glob("model.tar.part*"))
    if not chunks:
        raise SystemExit(f"{parts} holds no model.tar.part* files")
    joined = parts / "model.tar"
    joined.write_bytes(b"".join(p.read_bytes() for p in chunks))
    staging = target.parent / f".{target.name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    with tarfile.open(joined) as archive:
        archive.extractall(staging, filter="data")
    shutil.rmtree(target, ignore_errors=True)
    os.replace(staging, target)
    joined.unlink()
    print(f"model unpacked into {target}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="step", required=True)
    p = sub.add_parser("pack")
    p.add_argument("data", type=Path)
    p.add_argument("pack", type=Path)
    p.add_argument("--clips", type=int, default=1000)
    p.add_argument("--quality", type=int, default=92)
    p.add_argument("--seed", type=int, default=0)
    p = sub.add_parser("train")
    p.add_argument("pack", type=Path)
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "/tmp/gpu_out")) / "generator")
    p = sub.add_parser("unpack")
    p.add_argument("parts", type=Path)
    p.add_argument("--target", type=Path, default=None)
    args = parser.parse_args()
    if args.step == "pack":
        pack(args.data, args.pack, args.clips, args.quality, args.seed)
    elif args.step == "train":
        train(args.pack, args.steps, args.batch, args.out)
    else:
        from generate import EMBEDDED_MODEL

        unpack(args.parts, args.target or EMBEDDED_MODEL)


if __name__ == "__main__":
    main()
