#!/usr/bin/env bash
# Everything only a GPU can show, for a session that is lent the GPU machine (see the device tool's README).
#
# The GPU machine has no internet; its image has torch, transformers, accelerate, peft, safetensors, rich and
# jaxtyping but lacks gsplat, av and diffusers, so wheels for its Python (3.12) are downloaded here first, into .whl/
# (ignored by git; name it in the run's `carry`, with the capture: all that travels must stay under 64 MiB, the
# checkout included, hence only the missing wheels, about 50 MB, and a capture of images and masks alone):
#
#   bench/gpu_session.sh wheels                          # here, once per checkout
#   bench/gpu_session.sh capture outputs/avocado outputs/avocado_gpu   # here: images, masks, transforms.json
#
# then each step runs on the device (each call under its 10-minute limit; the machine goes back 30 s after a call,
# taking /tmp/site with it, so chain steps in one call), results under $OUT:
#
#   run: bench/gpu_session.sh setup tests                # pip install to /tmp/site, gsplat JIT (~65 s), pytest -m gpu
#   run: bench/gpu_session.sh parity                     # rasterizer parity + speed (bench/RESULTS.md tables)
#   run: bench/gpu_session.sh train CAPTURE              # bench/train_vs_gsplat.py (0.3 dB / 10% targets)
#   run: bench/gpu_session.sh generator                  # bench/generator_bench.py --device cuda --sv3d
#
#   run: bench/gpu_session.sh setup train-generator outputs/gen_pack 3000   # the embedded generator trained further
#
# The generator's own call carries less (the checkout holds the shipped model, ~35 MB): here first
#   bench/gpu_session.sh wheels-generator                # diffusers alone (.whl-gen/)
#   python bench/generator_gpu.py pack /work/gen/orbits64 outputs/gen_pack --clips 1000   # ~15 MiB of JPEG clips
# then one call, carry [".whl-gen", "outputs/gen_pack"], and back here
#   python bench/generator_gpu.py unpack FILES_AT/generator   # the parts joined into generate/embedded/orbit-small
#
# e.g. one call, carry [".whl", "outputs/avocado_gpu"], the open comparison first (about 8 minutes in all):
#   bench/gpu_session.sh setup train outputs/avocado_gpu tests parity generator
# `setup` must come first on a fresh machine.
set -euo pipefail
cd "$(dirname "$0")/.."
SITE=/tmp/site
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT"
export PYTHONPATH="$SITE:$PWD" TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16}
export HF_HUB_OFFLINE=1

while [ $# -gt 0 ]; do
  step=$1; shift
  case $step in
    wheels)
      python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .whl gsplat==1.5.3 av==18.1.0 diffusers==0.42.1 importlib_metadata
      du -ch .whl/*.whl | tail -1
      ;;
    wheels-generator)
      python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .whl-gen diffusers==0.42.1 importlib_metadata
      du -ch .whl-gen/*.whl | tail -1
      ;;
    capture)  # SRC DST: the parts of a capture training reads (not depth, normals, ground truth)
      src=$1 dst=$2; shift 2
      mkdir -p "$dst"
      cp -r "$src/images" "$src/transforms.json" "$dst/"
      if [ -d "$src/masks" ]; then cp -r "$src/masks" "$dst/"; fi
      if [ -f "$src/points3D.ply" ]; then cp "$src/points3D.ply" "$dst/"; fi
      du -sh "$dst"
      ;;
    setup)
      python3 -m pip install -q --no-deps --no-index --target "$SITE" $(ls .whl/*.whl .whl-gen/*.whl 2>/dev/null)
      if [ ! -d .whl ]; then continue; fi  # the generator's call carries no gsplat
      python3 - <<'EOF'
import time, torch
tic = time.time()
from gsplat.cuda._backend import _C  # JIT-builds the kernels on first use
print(f"gsplat kernels ready in {time.time() - tic:.0f} s on {torch.cuda.get_device_name()}")
EOF
      ;;
    tests)  # the generator's tests apart: diffusers there imports the image's own transformers
      python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_rasterize.py tests/test_train.py tests/test_mcmc.py \
        2>&1 | tee "$OUT/pytest_gpu.txt" || true
      python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_generate.py 2>&1 | tee "$OUT/pytest_gpu_generate.txt" \
        || true
      ;;
    parity)
      python3 bench/rasterizer_parity.py | tee "$OUT/parity.md"
      python3 bench/rasterizer_bench.py --device cuda --gaussians 100000 --size 512 | tee "$OUT/rasterizer_cuda.md"
      python3 bench/rasterizer_bench.py --device cuda --modes --skip-cpu --gaussians 100000 1000000 --size 512 \
        | tee "$OUT/rasterizer_modes_cuda.md"
      ;;
    train)
      capture=$1; shift
      python3 bench/train_vs_gsplat.py "$capture" | tee "$OUT/train_vs_gsplat.md"
      ;;
    generator)
      python3 bench/generator_bench.py --device cuda --sv3d | tee "$OUT/generator_cuda.md"
      ;;
    train-generator)  # PACK STEPS: the shipped model trained further on a packed share of the orbit dataset
      pack=$1 steps=$2; shift 2
      python3 bench/generator_gpu.py train "$pack" --steps "$steps" --out "$OUT/generator" 2>&1 | tail -40
      ;;
    *)
      echo "unknown step $step: use wheels, wheels-generator, capture SRC DST, setup, tests, parity, train CAPTURE," \
        "generator or train-generator PACK STEPS" >&2
      exit 2
      ;;
  esac
done
