#!/usr/bin/env bash
# One command for the GPU host (offline; jax with CUDA, cuda-python, cupy, torch, transformers,
# pytest preinstalled): build the package in place with its CUDA handlers, run every
# `@pytest.mark.gpu` test, print a summary table last.
#   scripts/gpu_check.sh [extra pytest args]      results: ${GPU_CHECK_OUT:-build/gpu_check}/
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${GPU_CHECK_OUT:-build/gpu_check}"
mkdir -p "$OUT"
PY="${PYTHON:-python}"

# CMake's check_language(CUDA) needs nvcc on PATH (or CUDACXX).
if ! command -v nvcc >/dev/null 2>&1; then
  for d in "${CUDA_HOME:-}" /usr/local/cuda /usr/local/cuda-*; do
    if [ -n "$d" ] && [ -x "$d/bin/nvcc" ]; then export PATH="$d/bin:$PATH"; break; fi
  done
fi
command -v nvcc >/dev/null 2>&1 || { echo "gpu_check: nvcc not found (set CUDA_HOME)"; exit 2; }

# --no-build-isolation uses this environment's build tools; install them offline from a
# wheelhouse (.whl/) when missing.
if ! "$PY" -c "import scikit_build_core, nanobind" 2>/dev/null; then
  if [ -d .whl ]; then
    "$PY" -m pip install --no-index --find-links .whl scikit-build-core nanobind || exit 2
  else
    echo "gpu_check: scikit-build-core/nanobind missing and no .whl/ wheelhouse"; exit 2
  fi
fi

echo "== build (CUDA handlers required)"
if ! "$PY" -m pip install --no-build-isolation --no-deps -e . \
    -Ccmake.define.EDGELLM_FFI_CUDA=ON > "$OUT/build.log" 2>&1; then
  tail -40 "$OUT/build.log"; echo "gpu_check: build failed (log: $OUT/build.log)"; exit 2
fi
"$PY" -c "import edgellm_fn.ffi as f; assert f.cuda_available(), 'no CUDA handlers in build'" \
  || exit 2

echo "== pytest -m gpu"
"$PY" -m pytest -m gpu -q -p no:cacheprovider --junitxml="$OUT/junit.xml" "$@" \
  2>&1 | tee "$OUT/pytest.log"
rc=${PIPESTATUS[0]}
"$PY" scripts/gpu_summary.py "$OUT/junit.xml"
exit "$rc"
