"""Pure step functions ``prefill`` and ``decode`` (upstream's ``LLMEngineRunner``).

``prefill_step``/``decode_step`` are the pure bodies (usable inside ``lax.while_loop``);
``prefill``/``decode`` validate on the host, then call the jitted, state-donating versions
(``prefill_jit``/``decode_jit``)::

    state = create_state(engine.config, batch=2)
    state = prefill(engine, state, embed(engine, prompt_ids), prompt_lengths)
    state = decode(engine, state, next_ids)          # [B] ids: embedded inside the step

Graph stability: a decode step writes every binding it hands the engine (``inputs_embeds``,
``kvcache_start_index``, ``context_lengths``, ``last_token_ids``) into ``state.io`` inside the
jitted step, so with the state donated each binding keeps its address from step to step.

Static arguments (changing them recompiles): the engine's config (part of its pytree structure),
``append``, and the shapes of the inputs. Everything else is dynamic.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ..dims import decode_dims, prefill_dims
from ..dtypes import dtype
from ..engine.protocol import Engine
from ..engine.tensor_map import build_tensor_map
from ..errors import InputError
from ..state import host
from ..state.resources import RuntimeState
from . import vl_inputs


def embed(engine: Engine, tokens: jax.Array) -> jax.Array:
    """Embedding lookup outside the engine, as upstream: ``[B, S]`` ids → ``[B, S, H]``.

    Concrete ids (host values, or a ``jax.Array``: one small device read) are checked against
    the vocabulary; traced ids (inside ``jit``, e.g. sampled ones, in range by construction) are
    not.

    Raises:
      InputError: an id outside ``[0, vocab_size)`` (it would read NaN, or wrap if negative).
    """
    if not isinstance(tokens, jax.core.Tracer):
        check_token_ids(tokens, engine.config.model.vocab_size, "embed: tokens")
    return embed_unchecked(engine, tokens)


def embed_unchecked(engine: Engine, tokens: jax.Array) -> jax.Array:
    """``embed`` without the host-side id check (for ids already checked, or traced)."""
    return jnp.take(engine.embedding, jnp.asarray(tokens, jnp.int32), axis=0)


def check_token_ids(ids, vocab_size: int, where: str) -> np.ndarray:
    """``ids`` as a host int array, every one in ``[0, vocab_size)``.

    Raises:
      InputError: a non-integer, negative or out-of-vocabulary id (naming its position); an id
        outside the vocabulary would read past the embedding table (NaN, or wrap if negative).
    """
    arr = np.asarray(ids)
    if arr.size == 0:
        return arr.astype(np.int64)
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.integer):
        raise InputError(f"{where}: token ids of dtype {arr.dtype} (expected integers)")
    bad = np.flatnonzero((arr.reshape(-1) < 0) | (arr.reshape(-1) >= vocab_size))
    if bad.size:
        pos = np.unravel_index(int(bad[0]), arr.shape)
        at = "".join(f"[{int(i)}]" for i in pos)
        raise InputError(
            f"{where}{at}={int(arr[pos])} (expected a token id 0..{vocab_size - 1}, vocab_size="
            f"{vocab_size}); the ids come from another tokenizer or are corrupt"
        )
    return arr.astype(np.int64)


def _finish(state: RuntimeState, io, outputs: dict[str, jax.Array], lengths) -> RuntimeState:
    n = len(state.kv.k)
    kv = dataclasses.replace(
        state.kv,
        k=tuple(outputs[f"present_key_{i}"] for i in range(n)),
        v=tuple(outputs[f"present_value_{i}"] for i in range(n)),
        lengths=lengths,
    )
    res = dataclasses.replace(state.res, kv=kv)
    if res.recurrent is not None:  # hybrid models: the Mamba2 layers' SSM and conv states
        m = len(res.recurrent.ssm)
        res = dataclasses.replace(
            res,
            recurrent=dataclasses.replace(
                res.recurrent,
                ssm=tuple(outputs[f"present_ssm_state_{i}"] for i in range(m)),
                conv=tuple(outputs[f"present_conv_state_{i}"] for i in range(m)),
            ),
        )
    return RuntimeState(io=dataclasses.replace(io, logits=outputs["logits"]), res=res)


def prefill_step(
    engine: Engine,
    state: RuntimeState,
    inputs_embeds: jax.Array,
    context_lengths: jax.Array,
    *,
    append: bool = False,
    position_ids: jax.Array | None = None,
    deepstack: tuple[jax.Array, ...] | None = None,
) -> RuntimeState:
    """Pure prefill body (profile 0); see ``prefill``."""
    b, s, _ = inputs_embeds.shape
    context_lengths = context_lengths.astype(jnp.int32)
    first = state.kv.lengths if append else jnp.zeros((b,), jnp.int32)
    io = dataclasses.replace(
        state.io,
        context_lengths=context_lengths,
        last_token_ids=(context_lengths - first - 1)[:, None],
    )
    start = state.kv.lengths if append else jnp.zeros((0,), jnp.int32)
    res = state.res
    if engine.config.model.mrope is not None:  # this request's rows of the per-row table
        res = vl_inputs.prefill_rope(
            engine.config.model, res, position_ids, first, context_lengths, s, append
        )
    tensors = build_tensor_map(
        io,
        res,
        inputs_embeds=inputs_embeds,
        start_index=start,
        deepstack=vl_inputs.step_deepstack(engine.config, deepstack, b, s),
    )
    dims = prefill_dims(engine.config, b, s, cache_empty=not append)
    outputs = engine.execute(engine.prepare(0, dims, tensors))
    return _finish(dataclasses.replace(state, res=res), io, outputs, context_lengths)


def decode_step(
    engine: Engine,
    state: RuntimeState,
    inputs_embeds: jax.Array | None = None,
    *,
    active: jax.Array | None = None,
) -> RuntimeState:
    """Pure decode body (profile 1): one token per row.

    Args:
      engine: any provider.
      state: the state; ``inputs_embeds`` is written into ``state.io.inputs_embeds``.
      inputs_embeds: ``[B, 1, H]`` this step's embedded tokens (None: the buffer's content).
      active: ``[B]`` bool rows that grow (default all). A masked row keeps its length; it
        writes slot ``min(length, KVcap - 1)``, past its valid range (its last slot when full),
        so no write ever leaves the cache.

    Returns:
      The new state; ``state.io.logits`` ``[B, V]`` are the next-token logits.
    """
    b = state.batch
    lengths = state.kv.lengths
    # A computed value (not the lengths buffer itself): it lives in io.start_index's buffer.
    start = jnp.minimum(lengths, engine.config.kv_capacity - 1)
    embeds = state.io.inputs_embeds
    if inputs_embeds is not None:
        # A select XLA cannot fold away (lengths >= 0 always holds): the step's embeddings are a
        # computed value, so they live in io.inputs_embeds' buffer, never at an argument's
        # address (a passed-through argument would be bound where the caller allocated it).
        keep = (lengths >= 0)[:, None, None]
        embeds = jnp.where(keep, inputs_embeds.astype(embeds.dtype), embeds)
    io = dataclasses.replace(
        state.io,
        inputs_embeds=embeds,
        start_index=start,
        context_lengths=start + 1,
        last_token_ids=jnp.zeros((b, 1), jnp.int32),
    )
    tensors = build_tensor_map(
        io,
        state.res,
        inputs_embeds=io.inputs_embeds,
        start_index=io.start_index,
        deepstack=vl_inputs.step_deepstack(engine.config, None, b, 1),
    )
    outputs = engine.execute(engine.prepare(1, decode_dims(engine.config, b), tensors))
    grown = lengths + 1 if active is None else jnp.where(active, lengths + 1, lengths)
    return _finish(state, io, outputs, grown)


def decode_tokens_step(engine: Engine, state: RuntimeState, tokens: jax.Array) -> RuntimeState:
    """``decode_step`` on ``[B]`` ids, embedded inside the step (into ``io.inputs_embeds``)."""
    return decode_step(engine, state, embed(engine, tokens.reshape(-1, 1)))


# keep_unused: a step need not read every donated leaf (e.g. last step's logits); kept
# parameters still alias their outputs, so every leaf keeps its buffer.
prefill_jit = jax.jit(
    prefill_step, static_argnames=("append",), donate_argnames=("state",), keep_unused=True
)
decode_jit = jax.jit(decode_step, donate_argnames=("state",), keep_unused=True)
decode_tokens_jit = jax.jit(decode_tokens_step, donate_argnames=("state",), keep_unused=True)


def prefill(
    engine: Engine,
    state: RuntimeState,
    inputs_embeds: jax.Array,
    context_lengths: jax.Array,
    *,
    append: bool = False,
    position_ids: jax.Array | None = None,
    deepstack: Sequence[jax.Array] | None = None,
) -> RuntimeState:
    """Runs the prompt (right-padded, ragged) through the engine and fills the KV cache.

    Args:
      engine: any provider.
      state: donated; use the returned state from now on.
      inputs_embeds: ``[B, S, H]`` embedded prompt tokens, right-padded; ``S <= max_input_len``.
      context_lengths: ``[B]`` valid tokens of each row *after* this step: the prompt lengths
        for a fresh prefill, ``kv.lengths + chunk lengths`` with ``append=True``.
      append: static; continue rows from ``state.kv.lengths`` (chunked prefill, prefix reuse)
        instead of starting from an empty cache.
      position_ids: MRoPE models (Qwen-VL): ``[3, B, S]`` int temporal/height/width positions
        of the step's tokens (transformers' ``get_rope_index``); None: text positions. Decode
        continues each row at its largest position + 1 (``state.res.rope_delta``).
      deepstack: Qwen3-VL: ``num_deepstack_features`` arrays ``[B, S, H]`` added after the
        first layers (zeros at non-visual tokens; ``runtime.vl_inputs.dense_deepstack``);
        None: no visual features.

    Returns:
      The new state; ``state.io.logits`` ``[B, V]`` are the logits of each row's last token.

    Raises:
      InputError: on a bad shape, dtype or length (of ``position_ids`` and ``deepstack`` too),
        before anything is donated.
    """
    check_live(state, "prefill")
    cfg = engine.config
    b, s = _check_embeds(engine, state, inputs_embeds, "prefill")
    if s > cfg.max_input_len:
        raise InputError(
            f"prefill: inputs_embeds has S={s} tokens (expected <= max_input_len="
            f"{cfg.max_input_len}); shorten the prompt or rebuild with a larger max_input_len"
        )
    ctx = _as_lengths(context_lengths, b, "prefill: context_lengths")
    if isinstance(ctx, np.ndarray):
        first = host.recall(state.kv.lengths) if append else np.zeros(b, np.int64)
        new = ctx - first
        bad = np.flatnonzero((new < 1) | (new > s))
        if bad.size:
            r = int(bad[0])
            raise InputError(
                f"prefill: context_lengths[{r}]={int(ctx[r])} gives {int(new[r])} new tokens "
                f"(expected 1..S={s} after {int(first[r])} cached); context_lengths counts the "
                "valid tokens after this step"
            )
        over = np.flatnonzero(ctx > cfg.kv_capacity)
        if over.size:
            r = int(over[0])
            raise InputError(
                f"prefill: context_lengths[{r}]={int(ctx[r])} (expected <= kv capacity="
                f"{cfg.kv_capacity})"
            )
        # The engine writes all S (padded) slots of every row from its start.
        spill = np.flatnonzero(first + s > cfg.kv_capacity)
        if append and spill.size:
            r = int(spill[0])
            raise InputError(
                f"prefill: row {r} holds {int(first[r])} tokens and append=True writes S={s} "
                f"padded slots (expected {int(first[r])} + S <= kv capacity={cfg.kv_capacity}); "
                "pad the chunk to fewer tokens or split it"
            )
    if position_ids is not None or deepstack is not None:
        first = host.recall(state.kv.lengths) if append else np.zeros(b, np.int64)
        position_ids, deepstack = vl_inputs.check_prefill_inputs(
            cfg, position_ids, deepstack, b, s, ctx - first if isinstance(ctx, np.ndarray) else None
        )
    new = prefill_jit(
        engine,
        state,
        inputs_embeds,
        jnp.asarray(ctx, jnp.int32),
        append=append,
        position_ids=position_ids,
        deepstack=deepstack,
    )
    host.remember(new.kv.lengths, ctx if isinstance(ctx, np.ndarray) else None)
    return new


def decode(engine: Engine, state: RuntimeState, inputs: jax.Array) -> RuntimeState:
    """Appends one token per row and computes its logits (``state.io.logits`` ``[B, V]``).

    No device-to-host copy: capacity is checked against the host's mirror of the lengths (one
    device read only when the host does not know them, e.g. after ``decode_while``).

    Args:
      engine: any provider.
      state: donated; use the returned state from now on.
      inputs: ``[B]`` or ``[B, 1]`` int token ids in ``[0, vocab_size)`` (embedded inside the
        step: graph-stable; a ``jax.Array`` of ids costs one small device read for the check),
        or ``[B, 1, H]`` embedded tokens (copied into ``state.io.inputs_embeds``).

    Raises:
      InputError: bad shape/dtype, an out-of-vocabulary id, or a row whose KV cache is full,
        before anything is donated.
    """
    check_live(state, "decode")
    b = state.batch
    tokens = jnp.issubdtype(getattr(inputs, "dtype", np.float32), jnp.integer)
    if tokens:
        shape = tuple(inputs.shape)
        if shape not in ((b,), (b, 1)):
            raise InputError(
                f"decode: token ids have shape {list(shape)} (expected [{b}] or [{b}, 1], the "
                f"state's batch {b}); pass one id per row"
            )
        check_token_ids(inputs, engine.config.model.vocab_size, "decode: token ids")
    else:
        _, s = _check_embeds(engine, state, inputs, "decode")
        if s != 1:
            raise InputError(f"decode: inputs_embeds has S={s} (expected 1 token per row)")
    lengths = host.recall(state.kv.lengths)
    full = np.flatnonzero(lengths + 1 > engine.config.kv_capacity)
    if full.size:
        r = int(full[0])
        raise InputError(
            f"decode: row {r} holds {int(lengths[r])} tokens (expected < kv capacity="
            f"{engine.config.kv_capacity}); the KV cache is full, stop generating this row"
        )
    if tokens:
        new = decode_tokens_jit(engine, state, jnp.asarray(inputs, jnp.int32).reshape(b))
    else:
        new = decode_jit(engine, state, inputs)
    host.remember(new.kv.lengths, lengths + 1)
    return new


def check_live(state: RuntimeState, where: str, *, returns_state: bool = True) -> None:
    """Raises ``InputError`` when ``state`` was donated to an earlier step (showing the fix).

    Args:
      state: any runtime state.
      where: the calling function's name, shown in the message.
      returns_state: ``where`` returns the next state (the fix shown threads it); False for
        readers such as ``save_prefix``.
    """
    fix = (
        f"thread the returned state: `state = {where}(engine, state, ...)`"
        if returns_state
        else f"pass the state the last step returned (`state = decode(engine, state, ...)`; "
        f"then {where}(state, ...))"
    )
    for leaf in jax.tree_util.tree_leaves(state):
        if (
            isinstance(leaf, jax.Array)
            and not isinstance(leaf, jax.core.Tracer)
            and leaf.is_deleted()
        ):
            raise InputError(
                f"{where}: this state was already donated to an earlier step (its buffers are "
                f"deleted); {fix}"
            )


def _check_embeds(engine: Engine, state: RuntimeState, x: jax.Array, where: str) -> tuple[int, int]:
    cfg = engine.config
    hidden = cfg.model.hidden_size
    if getattr(x, "ndim", None) != 3 or x.shape[2] != hidden:
        raise InputError(
            f"{where}: inputs_embeds has shape {list(getattr(x, 'shape', ()))} (expected "
            f"[B, S, hidden_size={hidden}])"
        )
    if x.shape[0] != state.batch:
        raise InputError(
            f"{where}: inputs_embeds has batch {x.shape[0]} (expected the state's batch "
            f"{state.batch}, at most max_batch_size={cfg.max_batch_size}); create the state with "
            "create_state(config, batch)"
        )
    if jnp.dtype(x.dtype) != dtype(cfg.dtype).jnp:
        raise InputError(f"{where}: inputs_embeds has dtype {x.dtype} (expected {cfg.dtype})")
    return x.shape[0], x.shape[1]


def _as_lengths(x, batch: int, where: str):
    """Returns a host ``np.ndarray`` for concrete input, else the traced array."""
    arr = x if isinstance(x, jax.core.Tracer) else np.asarray(x)
    if arr.shape != (batch,) or not jnp.issubdtype(arr.dtype, jnp.integer):
        raise InputError(
            f"{where} has shape {list(arr.shape)} {arr.dtype} (expected [{batch}] int)"
        )
    return arr.astype(np.int64) if isinstance(arr, np.ndarray) else arr
