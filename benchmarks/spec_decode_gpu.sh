#!/usr/bin/env bash
# EAGLE3 speed-up on one GPU, offline, nothing downloaded (issue 13): train a
# byte-level base (examples/train_demo_model.py, ~365M parameters by default) and its EAGLE3 head
# (examples/train_eagle3_head.py) on the host's Python stdlib, then time speculative vs vanilla
# greedy decoding (benchmarks/spec_decode.py) at each batch size.
#   benchmarks/spec_decode_gpu.sh [train|bench|all] [spec_decode.py args]   (default all)
# Checkpoints: ${SPEC_DIR:-build/spec_gpu}/{base,head}/ (a stage whose output exists is skipped,
# so `train` and `bench` can run as two device calls). Needs optax (PYTHONPATH or installed).
# Environment: PLATFORM BASE_STEPS HEAD_STEPS HIDDEN LAYERS INTERMEDIATE AUX BATCHES TREES NEW.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"
DIR="${SPEC_DIR:-build/spec_gpu}"
stage="${1:-all}"
shift || true  # the rest goes to benchmarks/spec_decode.py (e.g. --breakdown)
LAYERS="${LAYERS:-24}"
# Matmuls of the float32 training runs in TF32 (the saved weights are bfloat16).
export JAX_DEFAULT_MATMUL_PRECISION="${JAX_DEFAULT_MATMUL_PRECISION:-tensorfloat32}"
# The same command buffers for vanilla and speculative loops (WHILE included).
export XLA_FLAGS="${XLA_FLAGS:---xla_gpu_enable_command_buffer=FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,CUDNN,WHILE,CONDITIONAL --xla_gpu_graph_min_graph_size=1}"

if [ "$stage" != bench ]; then
  if [ ! -f "$DIR/base/model.safetensors" ]; then
    "$PY" examples/train_demo_model.py --platform "${PLATFORM:-gpu}" --out "$DIR/base" \
      --steps "${BASE_STEPS:-1200}" --batch 32 --seq-len 256 --hidden "${HIDDEN:-1024}" \
      --layers "$LAYERS" --heads 16 --kv-heads 4 --intermediate "${INTERMEDIATE:-4096}" \
      --lr 1e-3 --warmup 100 --eval-every 400 --eval-windows 64
  fi
  if [ ! -f "$DIR/head/model.safetensors" ]; then
    "$PY" examples/train_eagle3_head.py --platform "${PLATFORM:-gpu}" --base "$DIR/base" --out "$DIR/head" \
      --steps "${HEAD_STEPS:-800}" --batch 64 --seq-len 128 --lr 1e-3 \
      --intermediate "${INTERMEDIATE:-4096}" --aux-layers "${AUX:-1,$((LAYERS / 2)),$((LAYERS - 3))}" \
      --greedy-sequences 256 --measure-trees default --measure-dtypes bfloat16
  fi
fi
if [ "$stage" != train ]; then
  for b in ${BATCHES:-1 4}; do
    "$PY" benchmarks/spec_decode.py --model "$DIR/base" --draft "$DIR/head" --batch "$b" \
      --new "${NEW:-128}" --dtype bfloat16 --drafts trained --trees ${TREES:-1x4x5 2x6x12 4x4x16} "$@"
  done
fi
