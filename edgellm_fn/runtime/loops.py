"""The decode loop, twice: one jitted ``lax.while_loop`` and a Python loop over jitted steps.

Both start from a prefilled state (``state.io.logits`` holds each row's next-token logits) and
draw row ``r``'s token at step ``t`` with the key ``fold_in(fold_in(key, r), t)``, so they produce
identical tokens for the same inputs, even after the Python loop compacts finished rows away.

Stop reasons: an EOS id, the row's token limit (``max_new_tokens`` clamped to what the KV cache
still holds), and, in the Python loop only, a caller's ``should_stop`` (stop strings).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ..engine.protocol import Engine
from ..errors import InputError
from ..state.io import PipelineIO
from ..state.kv import KVCache
from ..state.resources import RuntimeState
from . import steps
from .sampling import SampleOutput, SamplingConfig, SamplingParams, sample

PAD = -1


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True, kw_only=True)
class DecodeResult:
    """Generated tokens of every row (``PAD`` after a row stops).

    Attributes:
      tokens: ``[B, T]`` int32 generated ids.
      logprobs: ``[B, T]`` float32 log-probability of each id.
      top_ids: ``[B, T, K]`` int32 most likely ids per step.
      top_logprobs: ``[B, T, K]`` float32 their log-probabilities.
      num_tokens: ``[B]`` int32 generated tokens per row.
      hit_eos: ``[B]`` bool: the row ended on an EOS id.
    """

    tokens: jax.Array
    logprobs: jax.Array
    top_ids: jax.Array
    top_logprobs: jax.Array
    num_tokens: jax.Array
    hit_eos: jax.Array


def token_limits(engine: Engine, prompt_lengths, max_new_tokens: int) -> np.ndarray:
    """``max_new_tokens`` clamped per row to what the KV cache holds (as upstream)."""
    lengths = np.asarray(prompt_lengths, np.int64)
    return np.minimum(max_new_tokens, engine.config.kv_capacity - lengths + 1).astype(np.int32)


def sample_step(
    config: SamplingConfig,
    params: SamplingParams,
    logits: jax.Array,
    key: jax.Array,
    row_ids: jax.Array,
    step: jax.Array,
) -> SampleOutput:
    """Samples every row with its own key ``fold_in(fold_in(key, row_id), step)``."""
    keys = jax.vmap(lambda r: jax.random.fold_in(jax.random.fold_in(key, r), step))(row_ids)
    return sample(config, params, logits, keys)


def _sample_packed(config, params, logits, key, row_ids, step) -> tuple[jax.Array, jax.Array]:
    """``sample_step`` plus everything the host reads, packed into ONE int32 array.

    Returns ``(tokens [B], packed [B, 2 + 2K])``; packed columns: token, token logprob (f32
    bits), K top ids, K top logprobs (f32 bits). One device-to-host copy per step.
    """
    out = sample_step(config, params, logits, key, row_ids, step)
    bits = functools.partial(jax.lax.bitcast_convert_type, new_dtype=jnp.int32)
    packed = jnp.concatenate(
        [
            out.tokens[:, None],
            bits(out.token_logprobs)[:, None],
            out.top_ids,
            bits(out.top_logprobs),
        ],
        axis=1,
    )
    return out.tokens, packed


_sample_packed_jit = jax.jit(_sample_packed, static_argnums=0)


def _is_eos(tokens: jax.Array, eos_ids: tuple[int, ...]) -> jax.Array:
    if not eos_ids:
        return jnp.zeros(tokens.shape, bool)
    return jnp.isin(tokens, jnp.asarray(eos_ids, jnp.int32))


def _decode_loop(
    engine: Engine,
    state: RuntimeState,
    config: SamplingConfig,
    params: SamplingParams,
    key: jax.Array,
    limits: jax.Array,
    eos_ids: tuple[int, ...],
    max_new_tokens: int,
) -> tuple[RuntimeState, DecodeResult]:
    b, k = state.batch, config.num_logprobs
    rows = jnp.arange(b, dtype=jnp.int32)
    result = DecodeResult(
        tokens=jnp.full((b, max_new_tokens), PAD, jnp.int32),
        logprobs=jnp.zeros((b, max_new_tokens), jnp.float32),
        top_ids=jnp.zeros((b, max_new_tokens, k), jnp.int32),
        top_logprobs=jnp.zeros((b, max_new_tokens, k), jnp.float32),
        num_tokens=jnp.zeros((b,), jnp.int32),
        hit_eos=jnp.zeros((b,), bool),
    )
    done = limits <= 0

    def cond(carry):
        _, _, t, done = carry
        return (t < max_new_tokens) & ~jnp.all(done)  # step budget left, and a row still running

    def body(carry):
        state, res, t, done = carry
        out = sample_step(config, params, state.io.logits, key, rows, t)
        live = ~done
        tok = jnp.where(live, out.tokens, PAD)
        res = DecodeResult(
            tokens=res.tokens.at[:, t].set(tok),
            logprobs=res.logprobs.at[:, t].set(jnp.where(live, out.token_logprobs, 0.0)),
            top_ids=res.top_ids.at[:, t].set(jnp.where(live[:, None], out.top_ids, 0)),
            top_logprobs=res.top_logprobs.at[:, t].set(
                jnp.where(live[:, None], out.top_logprobs, 0.0)
            ),
            num_tokens=res.num_tokens + live.astype(jnp.int32),
            hit_eos=res.hit_eos | (live & _is_eos(tok, eos_ids)),
        )
        done = done | res.hit_eos | (res.num_tokens >= limits)  # EOS | row's token limit
        new = steps.decode_step(engine, state, steps.embed(engine, jnp.maximum(tok, 0)[:, None]))
        # Rows that are done keep their lengths: their extra slot write is past the valid range.
        lengths = jnp.where(done, state.kv.lengths, new.kv.lengths)
        new = RuntimeState(
            io=dataclasses.replace(new.io, context_lengths=lengths),
            res=dataclasses.replace(new.res, kv=dataclasses.replace(new.kv, lengths=lengths)),
        )
        return new, res, t + 1, done

    state, result, _, _ = jax.lax.while_loop(cond, body, (state, result, jnp.int32(0), done))
    return state, result


_decode_loop_jit = jax.jit(
    _decode_loop,
    static_argnames=("config", "eos_ids", "max_new_tokens"),
    donate_argnames=("state",),
    keep_unused=True,
)


def decode_while(
    engine: Engine,
    state: RuntimeState,
    config: SamplingConfig,
    params: SamplingParams,
    key: jax.Array,
    limits,
    *,
    eos_ids: Sequence[int],
    max_new_tokens: int,
) -> tuple[RuntimeState, DecodeResult]:
    """Generates up to ``max_new_tokens`` per row in ONE jitted ``lax.while_loop``.

    Static (changing them recompiles): ``config``, ``eos_ids``, ``max_new_tokens``, the engine
    config. Dynamic: ``params``, ``key``, ``limits`` ``[B]`` (from ``token_limits``).
    """
    limits = _check_limits(engine, state, limits, max_new_tokens)
    return _decode_loop_jit(
        engine,
        state,
        config,
        params,
        key,
        jnp.asarray(limits),
        eos_ids=tuple(eos_ids),
        max_new_tokens=max_new_tokens,
    )


@jax.jit
def _compact(state: RuntimeState, keep: jax.Array) -> RuntimeState:
    """Keeps rows ``keep`` of every batch-major leaf (upstream's batch eviction)."""
    kv = state.kv
    return RuntimeState(
        io=PipelineIO(
            logits=state.io.logits[keep],
            context_lengths=state.io.context_lengths[keep],
            last_token_ids=state.io.last_token_ids[keep],
        ),
        res=dataclasses.replace(
            state.res,
            kv=KVCache(
                k=tuple(x[keep] for x in kv.k),
                v=tuple(x[keep] for x in kv.v),
                lengths=kv.lengths[keep],
            ),
        ),
    )


def decode_python(
    engine: Engine,
    state: RuntimeState,
    config: SamplingConfig,
    params: SamplingParams,
    key: jax.Array,
    limits,
    *,
    eos_ids: Sequence[int],
    max_new_tokens: int,
    on_token: Callable[[int, int], None] | None = None,
    should_stop: Callable[[int, int], bool] | None = None,
) -> tuple[RuntimeState, DecodeResult]:
    """Python loop over jitted steps: streams tokens and evicts finished rows by compaction.

    Args:
      on_token: ``on_token(row, token)`` after each token (streaming).
      should_stop: ``should_stop(row, token) -> bool`` for host-side stops (stop strings).

    Returns:
      The final (compacted) state and the same ``DecodeResult`` as ``decode_while`` (numpy).
    """
    limits = _check_limits(engine, state, limits, max_new_tokens)
    b, k = state.batch, config.num_logprobs
    tokens = np.full((b, max_new_tokens), PAD, np.int32)
    logprobs = np.zeros((b, max_new_tokens), np.float32)
    top_ids = np.zeros((b, max_new_tokens, k), np.int32)
    top_lp = np.zeros((b, max_new_tokens, k), np.float32)
    count = np.zeros(b, np.int32)
    hit_eos = np.zeros(b, bool)
    eos = set(int(e) for e in eos_ids)
    active = np.flatnonzero(limits > 0)
    if active.size < b:
        state = _compact(state, jnp.asarray(active, jnp.int32))
        params = jax.tree_util.tree_map(lambda x: x[active], params)
    for t in range(max_new_tokens):
        if active.size == 0:
            break
        rows = jnp.asarray(active, jnp.int32)
        next_tokens, packed = _sample_packed_jit(config, params, state.io.logits, key, rows, t)
        host = np.asarray(packed)  # the step's one device-to-host copy
        step_tokens = host[:, 0]
        step_logprobs = host[:, 1].view(np.float32)
        step_top_ids = host[:, 2 : 2 + k]
        step_top_lp = host[:, 2 + k :].view(np.float32)
        keep = []
        for i, row in enumerate(active):
            tok = int(step_tokens[i])
            tokens[row, t], logprobs[row, t] = tok, step_logprobs[i]
            top_ids[row, t], top_lp[row, t] = step_top_ids[i], step_top_lp[i]
            count[row] += 1
            hit_eos[row] = tok in eos
            if on_token is not None:
                on_token(int(row), tok)
            stop = hit_eos[row] or count[row] >= limits[row]
            if not stop and should_stop is not None:
                stop = should_stop(int(row), tok)
            if not stop:
                keep.append(i)
        if len(keep) < active.size:
            if not keep:
                break
            idx = np.asarray(keep)
            state = _compact(state, jnp.asarray(idx, jnp.int32))
            params = jax.tree_util.tree_map(lambda x, idx=idx: x[idx], params)
            active, next_tokens = active[idx], next_tokens[idx]
        # _check_limits proved every live row fits the cache: skip decode()'s per-step host check.
        state = steps._decode_jit(engine, state, steps.embed(engine, next_tokens[:, None]))
    result = DecodeResult(
        tokens=tokens,
        logprobs=logprobs,
        top_ids=top_ids,
        top_logprobs=top_lp,
        num_tokens=count,
        hit_eos=hit_eos,
    )
    return state, result


def _check_limits(engine: Engine, state: RuntimeState, limits, max_new_tokens: int) -> np.ndarray:
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise InputError(f"decode loop: max_new_tokens={max_new_tokens!r} (expected an int >= 1)")
    limits = np.asarray(limits, np.int32)
    if limits.shape != (state.batch,):
        raise InputError(
            f"decode loop: limits has shape {list(limits.shape)} (expected [{state.batch}]); "
            "use token_limits(engine, prompt_lengths, max_new_tokens)"
        )
    lengths = np.asarray(jax.device_get(state.kv.lengths))
    over = np.flatnonzero(lengths + limits - 1 > engine.config.kv_capacity)
    if over.size:
        r = int(over[0])
        raise InputError(
            f"decode loop: row {r} holds {int(lengths[r])} tokens and may generate "
            f"{int(limits[r])} (expected <= kv capacity={engine.config.kv_capacity} in all); "
            "clamp with token_limits()"
        )
    return limits
