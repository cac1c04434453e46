#!/usr/bin/env bash
# The full benchmark matrix on one GPU (H100) in one command, about 9 minutes; table printed last.
#   benchmarks/run_gpu.sh [preset ...]   (default: llama-3.2-1b qwen2.5-0.5b qwen3-1.7b)
# Each preset runs in its own process under a time limit and rewrites its JSON after every row,
# so a slow or crashing peer costs only its own rows. Results: benchmarks/results/gpu-<UTC time>/
# (<preset>.json, <preset>.log, all.json, all.png). Nothing is downloaded: weights are random.
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # this checkout, installed or not
# JAX and PyTorch share the GPU in one process: cap JAX's pool so torch has room.
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.55}"
export JAX_COMPILATION_CACHE_DIR="${JAX_COMPILATION_CACHE_DIR:-/tmp/edgellm_fn_jax_cache}"

OUT="${BENCH_OUT:-benchmarks/results/gpu-$(date -u +%Y%m%d-%H%M%S)}"
mkdir -p "$OUT"
presets=("$@")
[ ${#presets[@]} -gt 0 ] || presets=(llama-3.2-1b qwen2.5-0.5b qwen3-1.7b)
# Seconds per preset process (sum <= 540 s) and its peers: the torch.compile peer (about a
# minute of compilation per batch size) only on the preset the issue's targets are set on.
declare -A LIMIT=([llama-3.2-1b]=250 [qwen2.5-0.5b]=140 [qwen3-1.7b]=150)
declare -A PEERS=([llama-3.2-1b]=hf,hf-compile,naive [qwen2.5-0.5b]=hf,naive [qwen3-1.7b]=hf,naive)

{
  date -u +"%Y-%m-%dT%H:%M:%SZ"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader
  "$PY" -c "import jax, torch, transformers; print('jax', jax.__version__, jax.devices(), \
'torch', torch.__version__, 'transformers', transformers.__version__)"
  git rev-parse HEAD
} > "$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt"

files=()
for p in "${presets[@]}"; do
  files+=("$OUT/$p.json")
  echo "== $p (limit ${LIMIT[$p]:-180} s, peers ${PEERS[$p]:-hf,naive})"
  start=$SECONDS
  timeout -k 10 "${LIMIT[$p]:-180}" "$PY" -m edgellm_fn.cli bench --preset "$p" \
    --peers "${PEERS[$p]:-hf,naive}" --compile-timeout 90 --output "$OUT/$p.json" \
    > "$OUT/$p.log" 2>&1
  rc=$?
  echo "   exit $rc after $((SECONDS - start)) s (log: $OUT/$p.log)"
  [ $rc -eq 0 ] || tail -5 "$OUT/$p.log"
done

echo "== all presets"
"$PY" -m edgellm_fn.bench_report "${files[@]}" --output "$OUT/all.json" --plot "$OUT/all.png"
