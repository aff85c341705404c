#!/usr/bin/env bash
# Runs every test suite of the repo and ends with one summary line "N passed, N failed".
#   1. builds the native engine (CPU backend; CUDA too when a toolkit is present) and runs its ctest suite
#   2. runs the TypeScript suites (node's test runner): unit, data, plugin, engine, gguf (node-llama-cpp), e2e (real nx)
#   3. runs the PyTorch + PEFT parity suite (pytest), in a venv it creates from test/parity/requirements.txt
# Environment: NXFT_SKIP_PARITY=1 skips step 3 (e.g. offline); JOBS sets build parallelism.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
JOBS=${JOBS:-$(nproc)}
LOG_DIR=${NXFT_TEST_LOGS:-$ROOT/tmp/test-logs}
mkdir -p "$LOG_DIR"
passed=0; failed=0; skipped=0
add() { passed=$((passed + ${1:-0})); failed=$((failed + ${2:-0})); skipped=$((skipped + ${3:-0})); }

echo "== building native engine (native/build)"
if ! { cmake -S native -B native/build -DCMAKE_BUILD_TYPE=Release >"$LOG_DIR/cmake.log" 2>&1 &&
       cmake --build native/build -j "$JOBS" >>"$LOG_DIR/cmake.log" 2>&1; }; then
  tail -50 "$LOG_DIR/cmake.log"
  echo "engine build failed"
  echo "0 passed, 1 failed"
  exit 1
fi
export NXFT_ENGINE="$ROOT/native/build/finetune-engine"

echo "== native tests (ctest)"
ctest --test-dir native/build --output-on-failure -j "$JOBS" 2>&1 | tee "$LOG_DIR/ctest.log"
c_total=$(grep -oE 'tests passed, [0-9]+ tests failed out of [0-9]+' "$LOG_DIR/ctest.log" | grep -oE '[0-9]+$' | tail -1)
c_failed=$(grep -oE 'tests passed, [0-9]+ tests failed' "$LOG_DIR/ctest.log" | grep -oE '[0-9]+ tests failed' | grep -oE '^[0-9]+' | tail -1)
if [ -n "$c_total" ]; then add $((c_total - c_failed)) "$c_failed"; else add 0 1; fi

echo "== TypeScript tests (node --test)"
mapfile -t ts_tests < <(find test -name '*.test.ts' -not -path '*/node_modules/*' | sort)
if [ ${#ts_tests[@]} -gt 0 ]; then
  node --import tsx --test --test-concurrency=1 --test-reporter=spec "${ts_tests[@]}" 2>&1 | tee "$LOG_DIR/node.log"
  n_pass=$(grep -E '^ℹ pass [0-9]+' "$LOG_DIR/node.log" | grep -oE '[0-9]+' | tail -1)
  n_fail=$(grep -E '^ℹ fail [0-9]+' "$LOG_DIR/node.log" | grep -oE '[0-9]+' | tail -1)
  n_skip=$(grep -E '^ℹ skipped [0-9]+' "$LOG_DIR/node.log" | grep -oE '[0-9]+' | tail -1)
  if [ -n "$n_pass" ]; then add "$n_pass" "${n_fail:-0}" "${n_skip:-0}"; else add 0 1; fi
fi

if [ "${NXFT_SKIP_PARITY:-0}" != "1" ] && [ -d test/parity ] && ls test/parity/test_*.py >/dev/null 2>&1; then
  echo "== PyTorch/PEFT parity tests (pytest)"
  VENV=${NXFT_TEST_VENV:-$ROOT/.venv-test}
  if [ ! -x "$VENV/bin/pytest" ]; then
    python3 -m venv "$VENV" && "$VENV/bin/pip" install -q --disable-pip-version-check -r test/parity/requirements.txt \
      >"$LOG_DIR/pip.log" 2>&1 || { tail -20 "$LOG_DIR/pip.log"; echo "could not install the parity test requirements"; }
  fi
  "$VENV/bin/pytest" -q -p no:cacheprovider test/parity 2>&1 | tee "$LOG_DIR/pytest.log"
  line=$(grep -E '^(=+ )?[0-9]+ (passed|failed)|^(=+ )?[0-9]+ failed' "$LOG_DIR/pytest.log" | tail -1)
  p_pass=$(echo "$line" | grep -oE '[0-9]+ passed' | grep -oE '[0-9]+'); p_fail=$(echo "$line" | grep -oE '[0-9]+ failed' | grep -oE '[0-9]+')
  p_err=$(echo "$line" | grep -oE '[0-9]+ error' | grep -oE '[0-9]+'); p_skip=$(echo "$line" | grep -oE '[0-9]+ skipped' | grep -oE '[0-9]+')
  if [ -n "$line" ]; then add "${p_pass:-0}" $(( ${p_fail:-0} + ${p_err:-0} )) "${p_skip:-0}"; else add 0 1; fi
fi

echo
echo "all suites: $passed passed, $failed failed, $skipped skipped"
echo "$passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ]
