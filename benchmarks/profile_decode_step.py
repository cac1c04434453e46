"""Per-kernel device time of one decode step or one prefill (run under Nsight Compute).

    ncu --profile-from-start off --clock-control none --csv --metrics gpu__time_duration.sum \
        python benchmarks/profile_decode_step.py [decode|prefill] [batch] > ncu.csv
    python benchmarks/profile_decode_step.py --summarize ncu.csv

The model is the Llama-3.2-1B preset (random bf16 weights), KV capacity 4096: a decode step at
context 2048, or a 2048-token prefill into a reused state, at the given batch (default 1). XLA
command buffers are off so every kernel launch is visible, and only the last of 3 steps (or
prefills) is profiled: the script brackets it with cudaProfilerStart/Stop.
"""

from __future__ import annotations

import collections
import csv
import os
import sys


def summarize(path: str) -> None:
    with open(path) as fh:
        rows = [r for r in csv.reader(fh) if len(r) > 10]
    head = rows[0]
    name_i, val_i = head.index("Kernel Name"), head.index("Metric Value")
    kernels = [(r[name_i], float(r[val_i].replace(",", ""))) for r in rows[1:]]
    total = collections.defaultdict(float)
    count = collections.Counter()
    for name, ns in kernels:
        key = name.split("<")[0][:60]
        total[key] += ns
        count[key] += 1
    print(f"kernels profiled: {len(kernels)}, device time {sum(total.values()) / 1e3:.1f} us")
    for key, ns in sorted(total.items(), key=lambda kv: -kv[1])[:30]:
        print(f"{ns / 1e3:9.1f} us  x{count[key]:4d}  {key}")


def main(mode: str, batch: int) -> None:
    os.environ["XLA_FLAGS"] = "--xla_gpu_enable_command_buffer="
    import jax
    import numpy as np
    from cuda.bindings import runtime as rt

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
    x, lengths = embed(engine, ids), np.full(batch, 2048)
    state = prefill(engine, create_state(cfg, batch), x, lengths)
    tok = embed(engine, np.zeros((batch, 1), np.int32))
    for i in range(3):
        jax.block_until_ready(state)
        if i == 2:
            rt.cudaProfilerStart()
        if mode == "prefill":
            state = prefill(engine, state, x, lengths)
        else:
            state = decode(engine, state, tok)
        jax.block_until_ready(state)
    rt.cudaProfilerStop()


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--summarize":
        summarize(sys.argv[2])
    else:
        mode = sys.argv[1] if len(sys.argv) > 1 else "decode"
        if mode not in ("decode", "prefill"):
            raise SystemExit(f"mode {mode!r}: expected decode or prefill")
        main(mode, int(sys.argv[2]) if len(sys.argv) > 2 else 1)
