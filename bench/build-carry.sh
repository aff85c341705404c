#!/usr/bin/env bash
# build-carry.sh — builds the CUDA engine binaries on this (GPU-less) machine, for the device tool to carry:
#   bash bench/build-carry.sh          → native/build-carry/{finetune-engine,cuda_parity,cuda_train_bench}
# then run(carry=["native/build-carry", ...]). A fresh GPU machine then skips the 90–150 s build.
# bench/results/cuda-h200-2026-12-03-s7/call-3/call.sh shows the use, with a fallback to building there.
#
# The toolchain comes from PyPI wheels in a venv (CUDA_VENV, default /tmp/cuda-venv): nvcc, cudart, cuBLAS, NVRTC
# and cuDNN. The binaries link libcudart.so.13, libcublasLt.so.13, libnvrtc.so.13 and libcudnn.so.9 by soname.
# The GPU machine resolves them from its CUDA 13 install and PyTorch's cuDNN wheel (bench/cuda-build.sh find_cudnn).
# This has worked with cuDNN 9.28 headers here against the 9.19 library there (session 7). Needs the
# cudnn-frontend headers in .carry/cudnn-frontend (bench/cuda-train.sh says how to get them).
# sm_90a only (H100/H200); NCCL is not linked (bench/multi-gpu.sh builds its own engine with NCCL on the GPU machine).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=${CUDA_VENV:-/tmp/cuda-venv}
BUILD=${BUILD:-$ROOT/native/build-cuda-local}
FE=${CUDNN_FE:-$ROOT/.carry/cudnn-frontend}
[ -f "$FE/include/cudnn_frontend.h" ] || { echo "build-carry: no cudnn-frontend headers in $FE" >&2; exit 1; }

if ! compgen -G "$VENV/lib/python3*/site-packages/nvidia/cu13/bin/nvcc" > /dev/null; then
  python3 -m venv "$VENV"
  # the versions this was first built with (CUDA 13.0 as on the GPU machine)
  "$VENV/bin/pip" install -q nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88 \
    nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85 nvidia-cuda-nvrtc==13.0.88 nvidia-cublas==13.10.0.20 \
    nvidia-cudnn-cu13==9.28.1.4
fi
SITE=$(echo "$VENV"/lib/python3*/site-packages/nvidia)
CU=$SITE/cu13
# CMake looks for the unversioned libcudnn.so, which the wheel does not ship: a folder of links beside it.
CUDNN=$VENV/cudnn-root
mkdir -p "$CUDNN/lib"
ln -sfn "$SITE/cudnn/include" "$CUDNN/include"
ln -sf "$SITE"/cudnn/lib/* "$CUDNN/lib/"
ln -sf libcudnn.so.9 "$CUDNN/lib/libcudnn.so"

cmake -S native -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DNXFT_CUDA=ON -DCMAKE_CUDA_COMPILER="$CU/bin/nvcc" \
  -DCUDAToolkit_ROOT="$CU" -DNXFT_CUDA_ARCHS=90a-real -DNXFT_CUDNN_DIR="$CUDNN" -DNXFT_CUDNN_FRONTEND_DIR="$FE" \
  > /tmp/build-carry-configure.log || { tail -20 /tmp/build-carry-configure.log; exit 1; }
grep "finetune-engine:" /tmp/build-carry-configure.log
nice cmake --build "$BUILD" -j"$(nproc)" --target finetune-engine cuda_parity cuda_train_bench
mkdir -p native/build-carry
cp "$BUILD"/finetune-engine "$BUILD"/cuda_parity "$BUILD"/cuda_train_bench native/build-carry/
du -sh native/build-carry
