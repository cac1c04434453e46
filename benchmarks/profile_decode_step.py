"""Per-kernel device time of one decode step (run under Nsight Compute), then a summary.

    ncu --clock-control none --csv --metrics gpu__time_duration.sum \
        python benchmarks/profile_decode_step.py [batch] > ncu.csv
    python benchmarks/profile_decode_step.py --summarize ncu.csv [kernels of one step]

The step is the Llama-3.2-1B preset (random bf16 weights) at context 2048, batch 1 (or the given batch), with XLA
command buffers off so every kernel launch is visible; only the last of 3 steps is counted (the
script prints a marker kernel count before it).
"""

from __future__ import annotations

import collections
import csv
import os
import sys


def summarize(path: str, last: int) -> None:
    with open(path) as fh:
        rows = [r for r in csv.reader(fh) if len(r) > 10]
    head = rows[0]
    name_i, val_i = head.index("Kernel Name"), head.index("Metric Value")
    kernels = [(r[name_i], float(r[val_i].replace(",", ""))) for r in rows[1:]]
    kernels = kernels[-last:]
    total = collections.defaultdict(float)
    count = collections.Counter()
    for name, ns in kernels:
        key = name.split("<")[0][:60]
        total[key] += ns
        count[key] += 1
    print(f"kernels in the step: {len(kernels)}, device time {sum(total.values()) / 1e3:.1f} us")
    for key, ns in sorted(total.items(), key=lambda kv: -kv[1])[:25]:
        print(f"{ns / 1e3:9.1f} us  x{count[key]:4d}  {key}")


def main(batch: int) -> None:
    os.environ["XLA_FLAGS"] = "--xla_gpu_enable_command_buffer="
    import jax
    import numpy as np

    from edgellm_fn import create_state, decode, embed, prefill
    from edgellm_fn.bench.presets import get_preset, random_params
    from edgellm_fn.config import EngineConfig
    from edgellm_fn.engine.xla import XlaEngine

    preset = get_preset("llama-3.2-1b")
    cfg = EngineConfig.create(
        preset.model, max_batch_size=batch, max_input_len=2048, kv_capacity=4096, dtype="bfloat16"
    )
    engine = XlaEngine(cfg, random_params(preset.model, jax.random.PRNGKey(0), "bfloat16"))
    ids = np.random.RandomState(0).randint(0, 1000, (batch, 2048)).astype(np.int32)
    state = prefill(engine, create_state(cfg, batch), embed(engine, ids), np.full(batch, 2048))
    tok = jax.numpy.zeros((batch, 1), jax.numpy.int32)
    for _ in range(3):
        state = decode(engine, state, embed(engine, tok))
    jax.block_until_ready(state)


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--summarize":
        summarize(sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 120)
    else:
        main(int(sys.argv[1]) if len(sys.argv) > 1 else 1)
