"""``build_tensor_map``: a pure function from state to the engine's binding names."""

from __future__ import annotations

import jax

from ..models.lora import INDEX_BINDING
from ..state.io import PipelineIO
from ..state.resources import SharedResources


def build_tensor_map(
    io: PipelineIO,
    res: SharedResources,
    *,
    inputs_embeds: jax.Array,
    start_index: jax.Array,
) -> dict[str, jax.Array]:
    """Wires this step's I/O and the shared resources to binding names.

    Args:
      io: this step's I/O (``context_lengths``, ``last_token_ids`` already set).
      res: KV cache, RoPE table, LoRA bank, external weights and extra inputs.
      inputs_embeds: ``[B, S, H]`` embedded tokens of this step.
      start_index: ``[B]`` int32 first new slot per row, or ``[0]`` for a fresh prefill.

    Returns:
      Every input binding of ``build_llm_spec`` (the ``past_*`` caches become ``present_*``).
    """
    tensors = {
        "inputs_embeds": inputs_embeds,
        "context_lengths": io.context_lengths,
        "kvcache_start_index": start_index,
        "rope_rotary_cos_sin": res.rope,
        "last_token_ids": io.last_token_ids,
    }
    for i, (k, v) in enumerate(zip(res.kv.k, res.kv.v, strict=True)):
        tensors[f"past_key_{i}"] = k
        tensors[f"past_value_{i}"] = v
    if res.lora is not None:
        tensors[INDEX_BINDING] = res.lora.index
        tensors.update(res.lora.weights)
    # Validated against the spec when the state was created (engine/inputs.py).
    tensors.update(res.weights or {})
    tensors.update(res.extra or {})
    return tensors
