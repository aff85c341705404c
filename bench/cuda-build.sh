# cuda-build.sh — sourced by the GPU benchmarks (cuda-train.sh, qlora-gpu.sh, multi-gpu.sh): one way to find the
# CUDA libraries PyTorch's wheels bring and to build the engine against them on the GPU machine.
#   wheel_dir LIB            the wheel folder holding lib/LIB and include/ (e.g. libcudnn.so.9, libnccl.so.2), or ""
#   find_cudnn               sets CUDNN_DIR (cuDNN's wheel, given the unversioned libcudnn.so CMake looks for) and
#                            puts its lib/ on LD_LIBRARY_PATH; CUDNN_DIR="" when there is none
#   build_engine BUILD LOG TARGETS... [-- CMAKE_ARGS...]
#                            configures (Release, CUDA, sm_90a, cuDNN SDPA with the cudnn-frontend headers in
#                            $CUDNN_FE) and builds TARGETS into BUILD, logging to LOG; returns non-zero with the
#                            errors printed when either step fails. Incremental on a warm machine.
# Needs: ROOT (the repo), CUDNN_FE (default $ROOT/.carry/cudnn-frontend), log (a function that prints a line).

wheel_dir() {
  python3 -c 'import glob, os, sys, nvidia
hits = sorted(p for d in nvidia.__path__ for p in glob.glob(os.path.join(d, "**", "lib", sys.argv[1]), recursive=True))
print(os.path.dirname(os.path.dirname(hits[0])) if hits else "")' "$1" 2>/dev/null || true
}

find_cudnn() {
  CUDNN_DIR=$(wheel_dir libcudnn.so.9)
  if [ -n "$CUDNN_DIR" ] && [ ! -e "$CUDNN_DIR/lib/libcudnn.so" ]; then   # CMake wants the unversioned name
    mkdir -p /tmp/cudnn/lib && ln -sf "$CUDNN_DIR"/lib/* /tmp/cudnn/lib/ && ln -sf libcudnn.so.9 /tmp/cudnn/lib/libcudnn.so
    ln -sfn "$CUDNN_DIR/include" /tmp/cudnn/include && CUDNN_DIR=/tmp/cudnn
  fi
  export LD_LIBRARY_PATH=${CUDNN_DIR:+$CUDNN_DIR/lib:}${LD_LIBRARY_PATH:-}
}

build_engine() {
  local build=$1 logf=$2
  shift 2
  local targets=() extra=()
  while [ $# -gt 0 ] && [ "$1" != -- ]; do targets+=("$1"); shift; done
  [ "${1:-}" = -- ] && shift && extra=("$@")
  local nvcc
  nvcc=$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)
  log "configure $build (nvcc $nvcc, cuDNN ${CUDNN_DIR:-none}, frontend ${CUDNN_FE:-$ROOT/.carry/cudnn-frontend})"
  cmake -S "$ROOT/native" -B "$build" -DCMAKE_BUILD_TYPE=Release -DNXFT_CUDA=ON -DCMAKE_CUDA_COMPILER="$nvcc" \
    -DNXFT_CUDA_ARCHS=90a-real -DNXFT_CUDNN_DIR="${CUDNN_DIR:-}" \
    -DNXFT_CUDNN_FRONTEND_DIR="${CUDNN_FE:-$ROOT/.carry/cudnn-frontend}" "${extra[@]}" > "$logf" 2>&1 \
    || { tail -30 "$logf"; return 1; }
  grep -E "finetune-engine:" "$logf" >&2
  log "build ${targets[*]}"
  cmake --build "$build" -j"$(nproc)" --target "${targets[@]}" >> "$logf" 2>&1 \
    || { grep -E "error|Error" "$logf" | head -40; return 1; }
}
