"""The one table of defaults shared by the CLI, request JSON files, ``generate``, ``load_engine``,
``build_engine`` and ``EngineConfig.create``, so no two entry points disagree.

Sampling is greedy unless something asks otherwise: when none of temperature, top-p and top-k is
given, ``sampling_values`` returns greedy values; once any one is given, the others take their
neutral values (temperature 1, top-p 1, top-k 0 = off), so ``--temperature 0.8`` alone samples.
Greedy again: temperature 0 or top-k 1.
"""

from __future__ import annotations

#: Every default, by the keyword name of the Python API (the CLI flag is ``FLAGS[name]``).
DEFAULTS = {
    # deployment limits of an engine (xla: load_engine; onnxruntime/tensorrt: build_engine)
    "max_batch_size": 4,
    "max_input_len": 256,
    "kv_capacity": 512,
    # one request
    "max_new_tokens": 128,
    "seed": 0,
    "num_logprobs": 0,
    "apply_chat_template": True,
    "loop": "python",
    # the sampling values a request that asks for sampling gets for the ones it leaves out
    "temperature": 1.0,
    "top_p": 1.0,
    "top_k": 0,
}

#: The CLI flag (and request-file field) that sets each value, so errors can name it.
FLAGS = {
    "max_batch_size": "--max-batch",
    "max_input_len": "--max-input-len",
    "kv_capacity": "--kv-capacity",
    "max_new_tokens": "--max-new-tokens",
    "seed": "--seed",
    "temperature": "--temperature",
    "top_p": "--top-p",
    "top_k": "--top-k",
    "batch_size": "--batch-size",
    "loop": "--loop",
}

#: Largest accepted seed (the PRNG key takes a 64-bit signed integer).
MAX_SEED = 2**63 - 1


def sampling_values(
    temperature: float | None = None, top_p: float | None = None, top_k: int | None = None
) -> tuple[float, float, int]:
    """``(temperature, top_p, top_k)``: greedy when all three are None, else the given ones with
    ``DEFAULTS`` for the rest (see the module docstring)."""
    if temperature is None and top_p is None and top_k is None:
        return DEFAULTS["temperature"], DEFAULTS["top_p"], 1  # greedy: nothing asked to sample
    return (
        DEFAULTS["temperature"] if temperature is None else temperature,
        DEFAULTS["top_p"] if top_p is None else top_p,
        DEFAULTS["top_k"] if top_k is None else top_k,
    )
