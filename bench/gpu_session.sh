#!/usr/bin/env bash
# Everything only a GPU can show, for a session that is lent the GPU machine (see the device tool's README).
#
# The GPU machine has no internet and lacks gsplat, av, kornia and the diffusers stack, so wheels for its Python
# (3.12) are downloaded here first, into .whl/ (ignored by git, carried as an untracked path):
#
#   bench/gpu_session.sh wheels                          # here, once per checkout
#
# then each step runs on the device (each under its 10-minute limit), results under $OUT:
#
#   run: bench/gpu_session.sh setup tests                # pip install to /tmp/site, gsplat JIT (~65 s), pytest -m gpu
#   run: bench/gpu_session.sh parity                     # rasterizer parity + speed (bench/RESULTS.md tables)
#   run: bench/gpu_session.sh train CAPTURE              # bench/train_vs_gsplat.py (0.3 dB / 10% targets)
#   run: bench/gpu_session.sh generator                  # bench/generator_bench.py --device cuda --sv3d
#
# Steps can be chained in one call (`setup tests parity`); `setup` must come first on a fresh machine.
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
        -d .whl gsplat==1.5.3 av==18.1.0 kornia==0.9.0 kornia_rs diffusers==0.42.1 transformers==5.23.0 \
        peft==0.21.2 accelerate==1.15.0 safetensors==0.8.0 huggingface_hub tokenizers regex rich markdown-it-py \
        mdurl pygments pycolmap==4.2.1 trimesh jaxtyping wadler_lindig
      ;;
    setup)
      python3 -m pip install -q --no-deps --no-index --target "$SITE" .whl/*.whl
      python3 - <<'EOF'
import time, torch
tic = time.time()
from gsplat.cuda._backend import _C  # JIT-builds the kernels on first use
print(f"gsplat kernels ready in {time.time() - tic:.0f} s on {torch.cuda.get_device_name()}")
EOF
      ;;
    tests)
      python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_rasterize.py tests/test_train.py tests/test_mcmc.py \
        tests/test_generate.py 2>&1 | tee "$OUT/pytest_gpu.txt"
      ;;
    parity)
      python3 bench/rasterizer_parity.py | tee "$OUT/parity.md"
      python3 bench/rasterizer_bench.py --device cuda --gaussians 100000 --size 512 | tee "$OUT/rasterizer_cuda.md"
      ;;
    train)
      capture=$1; shift
      python3 bench/train_vs_gsplat.py "$capture" | tee "$OUT/train_vs_gsplat.md"
      ;;
    generator)
      python3 bench/generator_bench.py --device cuda --sv3d | tee "$OUT/generator_cuda.md"
      ;;
    *)
      echo "unknown step $step: use wheels, setup, tests, parity, train CAPTURE or generator" >&2
      exit 2
      ;;
  esac
done
