"""The Qwen-VL text decoders' step inputs: 3-D position ids (MRoPE) and deepstack features.

``prefill(engine, state, inputs_embeds, lengths, position_ids=, deepstack=)`` takes them
(``runtime/steps.py``); this module checks them on the host before anything is donated
(``check_prefill_inputs``) and wires them inside the step (``prefill_rope``, ``step_deepstack``).
The vision encoder is out of scope: ``inputs_embeds`` already hold the visual tokens' features,
``position_ids`` their grid positions (transformers' ``get_rope_index``), and ``deepstack`` the
vision tower's intermediate features at the visual token positions (``dense_deepstack`` turns
transformers' ``visual_pos_masks`` + ``deepstack_visual_embeds`` into that layout).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ..config import EngineConfig, ModelConfig
from ..dtypes import dtype as lookup_dtype
from ..errors import InputError
from ..state.mrope import text_positions, write_rows
from ..state.resources import SharedResources

#: Largest position id accepted: decode adds up to the KV capacity to it in int32.
MAX_POSITION = 1 << 30


def check_prefill_inputs(
    cfg: EngineConfig,
    position_ids,
    deepstack: Sequence | None,
    batch: int,
    seq_len: int,
    new_tokens: np.ndarray | None,
) -> tuple[jax.Array | None, tuple[jax.Array, ...] | None]:
    """Validates a prefill's ``position_ids`` and ``deepstack`` on the host.

    Args:
      cfg: the engine's config.
      position_ids: ``[3, B, S]`` int (temporal, height, width) or None (text positions).
      deepstack: ``num_deepstack_features`` arrays ``[B, S, H]`` of the engine dtype, or None
        (no visual features: zeros).
      batch, seq_len: the step's ``B`` and ``S``.
      new_tokens: ``[B]`` valid tokens per row of the step (host), None when traced.

    Returns:
      ``(position_ids, deepstack)`` as device arrays (int32 positions), or None each.

    Raises:
      InputError: either given to a model that does not take it, a wrong shape or dtype, a
        position outside ``0..MAX_POSITION``, or a deepstack count other than the model's.
    """
    m = cfg.model
    if position_ids is not None:
        position_ids = _check_positions(m, position_ids, batch, seq_len, new_tokens)
    if deepstack is not None:
        deepstack = _check_deepstack(cfg, deepstack, batch, seq_len)
    return position_ids, deepstack


def _check_positions(
    m: ModelConfig, position_ids, batch: int, seq_len: int, new_tokens: np.ndarray | None
) -> jax.Array:
    where = "prefill: position_ids"
    if m.mrope is None:
        raise InputError(
            f"{where} given for {m.architecture} (expected None: its RoPE is 1-D); 3-D "
            "position ids are for the MRoPE families (Qwen2-VL, Qwen2.5-VL, Qwen3-VL)"
        )
    traced = isinstance(position_ids, jax.core.Tracer)
    arr = position_ids if traced else np.asarray(position_ids)
    shape = tuple(arr.shape)
    if shape != (3, batch, seq_len):
        hint = " (a [B, S] array is 1-D: stack it three times)" if len(shape) == 2 else ""
        raise InputError(
            f"{where} has shape {list(shape)} (expected [3, B={batch}, S={seq_len}]: temporal, "
            f"height and width position of every token of inputs_embeds){hint}"
        )
    if arr.dtype == bool or not jnp.issubdtype(arr.dtype, jnp.integer):
        raise InputError(f"{where} has dtype {arr.dtype} (expected integers)")
    if not traced and new_tokens is not None:
        valid = np.arange(seq_len)[None, :] < new_tokens[:, None]  # padding is ignored
        bad = np.argwhere(valid[None] & ((arr < 0) | (arr > MAX_POSITION)))
        if bad.size:
            a, r, t = (int(i) for i in bad[0])
            raise InputError(
                f"{where}[{a}, {r}, {t}]={int(arr[a, r, t])} (expected 0..{MAX_POSITION})"
            )
    return jnp.asarray(arr, jnp.int32)


def _check_deepstack(
    cfg: EngineConfig, deepstack: Sequence, batch: int, seq_len: int
) -> tuple[jax.Array, ...]:
    where = "prefill: deepstack"
    n, hidden = cfg.model.num_deepstack_features, cfg.model.hidden_size
    if isinstance(deepstack, (np.ndarray, jax.Array)) or not isinstance(deepstack, Sequence):
        raise InputError(
            f"{where} is a {type(deepstack).__name__} (expected a list of "
            f"num_deepstack_features={n} arrays [B, S, H])"
        )
    if len(deepstack) != n:
        raise InputError(
            f"{where} has {len(deepstack)} feature sets (expected num_deepstack_features={n} "
            f"of {cfg.model.architecture}); pass one [B, S, H] array per deepstack layer, or "
            "None for a prompt without visual tokens"
        )
    want = lookup_dtype(cfg.dtype).jnp
    out = []
    for i, x in enumerate(deepstack):
        shape = tuple(getattr(x, "shape", np.shape(x)))
        if shape != (batch, seq_len, hidden):
            raise InputError(
                f"{where}[{i}] has shape {list(shape)} (expected [B={batch}, S={seq_len}, "
                f"hidden_size={hidden}], zeros at the non-visual tokens); dense_deepstack "
                "scatters transformers' per-visual-token features"
            )
        if jnp.dtype(getattr(x, "dtype", np.float64)) != want:
            raise InputError(f"{where}[{i}] has dtype {x.dtype} (expected {cfg.dtype})")
        out.append(jnp.asarray(x))
    return tuple(out)


def dense_deepstack(visual_pos_masks, features: Sequence, dtype=None) -> list[np.ndarray]:
    """transformers' deepstack inputs in the engine's layout.

    Args:
      visual_pos_masks: ``[B, S]`` bool, True at the visual tokens (row-major order).
      features: per feature set ``[n_visual, H]``, the tokens in mask order.
      dtype: output dtype (default the features').

    Returns:
      Per feature set ``[B, S, H]``: the features at the visual tokens, zeros elsewhere.

    Raises:
      InputError: a feature set's token count differs from the mask's.
    """
    mask = np.asarray(visual_pos_masks, bool)
    out = []
    for i, f in enumerate(features):
        f = np.asarray(f)
        if f.ndim != 2 or f.shape[0] != int(mask.sum()):
            raise InputError(
                f"dense_deepstack: features[{i}] has shape {list(f.shape)} (expected "
                f"[{int(mask.sum())} visual tokens of visual_pos_masks, H])"
            )
        dense = np.zeros((*mask.shape, f.shape[1]), dtype or f.dtype)
        dense[mask] = f
        out.append(dense)
    return out


def prefill_rope(
    model: ModelConfig,
    res: SharedResources,
    position_ids: jax.Array | None,
    first: jax.Array,
    context_lengths: jax.Array,
    seq_len: int,
    append: bool,
) -> SharedResources:
    """``res`` with the step's rows of the MRoPE table and deltas rewritten (``write_rows``).

    Without ``position_ids`` the tokens are text: positions ``0..`` for a fresh prefill, else
    continuing each row at ``slot + delta``.
    """
    if position_ids is None:
        base = first + res.rope_delta if append else first
        position_ids = text_positions(base, seq_len)
    rope, delta = write_rows(model, res.rope, res.rope_delta, position_ids, first, context_lengths)
    return dataclasses.replace(res, rope=rope, rope_delta=delta)


def step_deepstack(
    cfg: EngineConfig, deepstack: Sequence[jax.Array] | None, batch: int, seq_len: int
) -> tuple[jax.Array, ...]:
    """The step's deepstack bindings: the given ones, else zeros (none for other models)."""
    n = cfg.model.num_deepstack_features
    if deepstack is not None or n == 0:
        return tuple(deepstack or ())
    zeros = jnp.zeros((batch, seq_len, cfg.model.hidden_size), lookup_dtype(cfg.dtype).jnp)
    return (zeros,) * n
