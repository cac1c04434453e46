"""``build_tensor_map``: a pure function from state to the engine's binding names."""

from __future__ import annotations

from collections.abc import Sequence

import jax

from ..models.lora import INDEX_BINDING
from ..state.io import PipelineIO
from ..state.kv import KVCache
from ..state.resources import SharedResources
from ..state.spec_io import StepInputs
from .spec import DEEPSTACK_BINDING


def build_tensor_map(
    io: PipelineIO,
    res: SharedResources,
    *,
    inputs_embeds: jax.Array,
    start_index: jax.Array,
    deepstack: Sequence[jax.Array] = (),
) -> dict[str, jax.Array]:
    """Wires this step's I/O and the shared resources to binding names.

    Args:
      io: this step's I/O (``context_lengths``, ``last_token_ids`` already set).
      res: KV cache, RoPE table, LoRA bank, external weights and extra inputs.
      inputs_embeds: ``[B, S, H]`` embedded tokens of this step.
      start_index: ``[B]`` int32 first new slot per row, or ``[0]`` for a fresh prefill.
      deepstack: ``[B, S, H]`` per deepstack feature set (Qwen3-VL), bound as
        ``deepstack_embeds_{i}``; empty for other models.

    Returns:
      Every input binding of ``build_llm_spec`` (the ``past_*`` caches and recurrent states
      become ``present_*``).
    """
    tensors = {
        "inputs_embeds": inputs_embeds,
        "context_lengths": io.context_lengths,
        "kvcache_start_index": start_index,
        "last_token_ids": io.last_token_ids,
    }
    if res.rope is not None:  # None: a model without RoPE (hybrid NemotronH)
        tensors["rope_rotary_cos_sin"] = res.rope
    for i, x in enumerate(deepstack):
        tensors[DEEPSTACK_BINDING % i] = x
    for i, (k, v) in enumerate(zip(res.kv.k, res.kv.v, strict=True)):
        tensors[f"past_key_{i}"] = k
        tensors[f"past_value_{i}"] = v
    if res.recurrent is not None:
        for i, (ssm, conv) in enumerate(zip(res.recurrent.ssm, res.recurrent.conv, strict=True)):
            tensors[f"past_ssm_state_{i}"] = ssm
            tensors[f"past_conv_state_{i}"] = conv
    if res.lora is not None:
        tensors[INDEX_BINDING] = res.lora.index
        tensors.update(res.lora.weights)
    # Validated against the spec when the state was created (engine/inputs.py).
    tensors.update(res.weights or {})
    tensors.update(res.extra or {})
    return tensors


def _spec_step_map(step: StepInputs, kv: KVCache, rope: jax.Array) -> dict[str, jax.Array]:
    tensors = {
        "inputs_embeds": step.inputs_embeds,
        "context_lengths": step.context_lengths,
        "kvcache_start_index": step.start_index,
        "rope_rotary_cos_sin": rope,
        "last_token_ids": step.last_token_ids,
        "attention_mask": step.attention_mask,
        "attention_pos_id": step.attention_pos_id,
    }
    for i, (k, v) in enumerate(zip(kv.k, kv.v, strict=True)):
        tensors[f"past_key_{i}"] = k
        tensors[f"past_value_{i}"] = v
    return tensors


def build_tensor_map_for_spec_decode(
    step: StepInputs, res: SharedResources
) -> dict[str, jax.Array]:
    """The spec-decode base engine's bindings (``build_spec_base_spec``): ``step``'s buffers
    (tree mask and positions included), the base KV cache and the RoPE table."""
    return _spec_step_map(step, res.kv, res.rope)


def build_tensor_map_for_spec_decode_draft(
    step: StepInputs, res: SharedResources
) -> dict[str, jax.Array]:
    """The draft engine's bindings (``build_draft_spec``; upstream's
    ``buildTensorMapForSpecDecodeDraft``): the common ones on the draft KV cache (index 1), then
    the base features and the draft's own hidden states."""
    tensors = _spec_step_map(step, res.draft_kv, res.rope)
    tensors["base_hidden_states"] = step.base_hidden
    tensors["draft_hidden_states_in"] = step.draft_hidden
    return tensors
