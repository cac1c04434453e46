"""The decode loop, twice: one jitted ``lax.while_loop`` and a Python loop over one jitted step.

Both start from a prefilled state (``state.io.logits`` holds each row's next-token logits), run
the same ``loop_step`` (sample -> stop checks -> embed -> engine step, in ONE donated executable)
and draw row ``r``'s token number ``t`` with the key ``fold_in(fold_in(key, r), t)``, so they
produce identical tokens for the same inputs.

Finished rows are masked (``state.io.active``), never compacted: the batch keeps its shape, the
KV cache keeps its buffers, and nothing recompiles when rows finish. ``max_new_tokens`` only
picks a power-of-two bucket (the result width); per-row limits are dynamic values.

Stop reasons: an EOS id, the row's token limit (``max_new_tokens`` clamped to what the KV cache
still holds), and, in the Python loop only, a caller's ``should_stop`` (stop strings).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Generator, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ..engine.protocol import Engine
from ..errors import InputError
from ..state import host
from ..state.resources import RuntimeState
from . import steps
from .penalties import update_counts
from .sampling import SampleOutput, SamplingConfig, SamplingParams, sample
from .vocab import map_sampled

PAD = -1


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True, kw_only=True)
class DecodeResult:
    """Generated tokens of every row (``PAD`` after a row stops); ``T`` is the step bucket.

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


def step_bucket(max_new_tokens: int) -> int:
    """The power of two (>= 8) that sizes the result buffers for ``max_new_tokens``."""
    return max(8, 1 << (max_new_tokens - 1).bit_length())


def result_width(engine: Engine, max_new_tokens: int) -> int:
    """``T``, the width of a loop's result: ``step_bucket`` of ``max_new_tokens`` clamped to the
    KV capacity (no row can generate more)."""
    return step_bucket(min(max_new_tokens, engine.config.kv_capacity))


def token_limits(engine: Engine, prompt_lengths, max_new_tokens: int) -> np.ndarray:
    """``max_new_tokens`` clamped per row to what the KV cache holds (as upstream)."""
    lengths = np.asarray(prompt_lengths, np.int64)
    return np.minimum(max_new_tokens, engine.config.kv_capacity - lengths + 1).astype(np.int32)


def _begin(
    state: RuntimeState, params: SamplingParams, key: jax.Array, limits: jax.Array
) -> RuntimeState:
    """Writes one request's sampling values, keys and limits into the state's buffers."""
    b = state.batch
    key = jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key
    io = dataclasses.replace(
        state.io,
        sampling=jax.tree_util.tree_map(jnp.copy, params),
        row_keys=row_keys(key, params.seed),
        counts=jnp.zeros_like(state.io.counts),
        limits=limits,
        active=limits > 0,
        num_tokens=jnp.zeros((b,), jnp.int32),
        hit_eos=jnp.zeros((b,), bool),
        tokens=jnp.full((b,), PAD, jnp.int32),
    )
    return dataclasses.replace(state, io=io)


def row_keys(key: jax.Array, seeds: jax.Array, rows: jax.Array | None = None) -> jax.Array:
    """``[B, 2] uint32`` key data: ``PRNGKey(seed)`` for a row with its own seed (>= 0), else
    ``fold_in(key, row)``."""
    rows = jnp.arange(seeds.shape[0], dtype=jnp.int32) if rows is None else rows
    derived = jax.vmap(lambda r: jax.random.fold_in(key, r))(rows).astype(jnp.uint32)
    own = jax.vmap(lambda s: jax.random.PRNGKey(s))(jnp.maximum(seeds, 0)).astype(jnp.uint32)
    return jnp.where((seeds >= 0)[:, None], own, derived)


# Dynamic: everything (the sampling values' widths are shapes: set by the SamplingConfig).
_begin_jit = jax.jit(_begin, donate_argnames=("state",), keep_unused=True)


def _is_eos(tokens: jax.Array, eos_ids: tuple[int, ...]) -> jax.Array:
    if not eos_ids:
        return jnp.zeros(tokens.shape, bool)
    return jnp.isin(tokens, jnp.asarray(eos_ids, jnp.int32))


def loop_step(
    engine: Engine,
    state: RuntimeState,
    stop: jax.Array,
    config: SamplingConfig,
    eos_ids: tuple[int, ...],
) -> tuple[RuntimeState, SampleOutput, jax.Array]:
    """Pure body of both loops: sample every live row, apply stops, then one engine step.

    Args:
      engine: any provider.
      state: a state after ``_begin``; ``state.io.logits`` are the rows' next-token logits.
      stop: ``[B]`` bool rows the host stopped (stop strings); they sample nothing.
      config: static sampling limits.
      eos_ids: static EOS ids.

    Returns:
      ``(state, sampled, live)``: ``state.io.tokens`` holds this step's ids (``PAD`` where not
      live), ``live`` ``[B]`` the rows that produced a token.
    """
    io = state.io
    live = io.active & ~stop
    keys = jax.vmap(jax.random.fold_in)(io.row_keys, io.num_tokens)
    # A reduced vocabulary samples logit columns; from here on every id is a full id.
    raw = sample(config, io.sampling, io.logits, keys, counts=io.counts)
    out = map_sampled(engine.vocab_map, raw)  # full ids; `raw` keeps the logit columns
    tok = jnp.where(live, out.tokens, PAD)
    count = io.num_tokens + live.astype(jnp.int32)
    eos = live & _is_eos(tok, eos_ids)
    active = live & ~eos & (count < io.limits)  # not EOS, and the row's token limit not reached
    io = dataclasses.replace(
        io,
        tokens=tok,
        active=active,
        num_tokens=count,
        hit_eos=io.hit_eos | eos,
        counts=update_counts(io.counts, raw.tokens, live),
    )
    state = dataclasses.replace(state, io=io)
    x = steps.embed(engine, jnp.maximum(tok, 0)[:, None])
    return steps.decode_step(engine, state, x, active=active), out, live


def _python_step(
    engine: Engine,
    state: RuntimeState,
    stop: jax.Array,
    config: SamplingConfig,
    eos_ids: tuple[int, ...],
) -> tuple[RuntimeState, jax.Array]:
    """``loop_step`` plus everything the host reads, packed into ONE int32 array.

    Returns ``(state, packed [B, 3 + 2K])``; packed columns: token (``PAD`` if not live), token
    logprob (f32 bits), still active, K top ids, K top logprobs (f32 bits).
    """
    state, out, _ = loop_step(engine, state, stop, config, eos_ids)
    bits = functools.partial(jax.lax.bitcast_convert_type, new_dtype=jnp.int32)
    packed = jnp.concatenate(
        [
            state.io.tokens[:, None],
            bits(out.token_logprobs)[:, None],
            state.io.active.astype(jnp.int32)[:, None],
            out.top_ids,
            bits(out.top_logprobs),
        ],
        axis=1,
    )
    return state, packed


# Static (changing them recompiles): config, eos_ids, the engine config. Dynamic: state, stop.
python_step_jit = jax.jit(
    _python_step,
    static_argnames=("config", "eos_ids"),
    donate_argnames=("state",),
    keep_unused=True,
)


def _decode_loop(
    engine: Engine,
    state: RuntimeState,
    config: SamplingConfig,
    eos_ids: tuple[int, ...],
    num_steps: int,
) -> tuple[RuntimeState, DecodeResult]:
    b, k = state.batch, min(config.max_num_logprobs, state.io.logits.shape[1])
    result = DecodeResult(
        tokens=jnp.full((b, num_steps), PAD, jnp.int32),
        logprobs=jnp.zeros((b, num_steps), jnp.float32),
        top_ids=jnp.zeros((b, num_steps, k), jnp.int32),
        top_logprobs=jnp.zeros((b, num_steps, k), jnp.float32),
        num_tokens=jnp.zeros((b,), jnp.int32),
        hit_eos=jnp.zeros((b,), bool),
    )
    no_stop = jnp.zeros((b,), bool)

    def cond(carry):
        state, _, t = carry
        return (t < num_steps) & jnp.any(state.io.active)  # buffer left, and a row running

    def body(carry):
        state, res, t = carry
        state, out, live = loop_step(engine, state, no_stop, config, eos_ids)
        res = dataclasses.replace(
            res,
            tokens=res.tokens.at[:, t].set(state.io.tokens),
            logprobs=res.logprobs.at[:, t].set(jnp.where(live, out.token_logprobs, 0.0)),
            top_ids=res.top_ids.at[:, t].set(jnp.where(live[:, None], out.top_ids, 0)),
            top_logprobs=res.top_logprobs.at[:, t].set(
                jnp.where(live[:, None], out.top_logprobs, 0.0)
            ),
        )
        return state, res, t + 1

    state, result, _ = jax.lax.while_loop(cond, body, (state, result, jnp.int32(0)))
    result = dataclasses.replace(result, num_tokens=state.io.num_tokens, hit_eos=state.io.hit_eos)
    return state, result


# Static (changing them recompiles): config, eos_ids, num_steps (a power-of-two bucket), the
# engine config. Dynamic: state (incl. sampling values, keys, per-row limits).
_decode_loop_jit = jax.jit(
    _decode_loop,
    static_argnames=("config", "eos_ids", "num_steps"),
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

    Static (changing them recompiles): ``config``, ``eos_ids``,
    ``result_width(engine, max_new_tokens)``, the engine config. Dynamic: ``params``, ``key``,
    ``limits`` ``[B]`` (from ``token_limits``).

    Returns:
      The final state (donated input) and a ``DecodeResult`` of width
      ``T = step_bucket(min(max_new_tokens, kv_capacity))`` (``PAD`` past each row's tokens;
      no row holds more than the KV capacity, so a larger ``max_new_tokens`` allocates nothing
      more).

    Raises:
      InputError: a donated state, bad limits, or limits past the KV capacity (before donation).
    """
    state = _start(engine, state, config, params, key, limits, max_new_tokens, "decode_while")
    eos = tuple(int(e) for e in eos_ids)
    width = result_width(engine, max_new_tokens)
    state, res = _decode_loop_jit(engine, state, config, eos, num_steps=width)
    return state, res


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
    """Python loop over one jitted step; streams tokens, masks finished rows.

    The host reads each step's packed result with ``copy_to_host_async()`` one step behind, so
    step ``t + 1`` is already dispatched while step ``t``'s tokens are streamed. A row stopped by
    ``should_stop`` is masked from the step after next (its one extra token is discarded).

    Args:
      on_token: ``on_token(row, token)`` after each token (streaming).
      should_stop: ``should_stop(row, token) -> bool`` for host-side stops (stop strings).

    Returns:
      The final state and the same ``DecodeResult`` as ``decode_while`` (numpy, width
      ``result_width(engine, max_new_tokens)``).

    Raises:
      InputError: as ``decode_while``.
    """
    steps = iter_decode_python(
        engine,
        state,
        config,
        params,
        key,
        limits,
        eos_ids=eos_ids,
        max_new_tokens=max_new_tokens,
        on_token=on_token,
        should_stop=should_stop,
    )
    return drive(steps)


def drive(steps: Generator, each: Callable | None = None):
    """Runs a generator to its end, handing each item to ``each``; returns its return value."""
    while True:
        try:
            item = next(steps)
        except StopIteration as done:
            return done.value
        if each is not None:
            each(item)


def iter_decode_python(
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
) -> Generator[None, None, tuple[RuntimeState, DecodeResult]]:
    """``decode_python`` as a generator: yields (None) after each step's tokens went to
    ``on_token``, so a caller can hand them on (``generate``'s streaming iterator); returns
    ``decode_python``'s result (``StopIteration.value``). Inputs are checked at the first
    ``next``, before the state is donated."""
    state = _start(engine, state, config, params, key, limits, max_new_tokens, "decode_python")
    max_new_tokens = min(max_new_tokens, engine.config.kv_capacity)
    limits = np.minimum(np.asarray(limits, np.int32), max_new_tokens)
    eos_tuple = tuple(int(e) for e in eos_ids)
    eos = set(eos_tuple)
    b, k = state.batch, min(config.max_num_logprobs, state.io.logits.shape[1])
    width = result_width(engine, max_new_tokens)
    res = DecodeResult(
        tokens=np.full((b, width), PAD, np.int32),
        logprobs=np.zeros((b, width), np.float32),
        top_ids=np.zeros((b, width, k), np.int32),
        top_logprobs=np.zeros((b, width, k), np.float32),
        num_tokens=np.zeros(b, np.int32),
        hit_eos=np.zeros(b, bool),
    )
    done = limits <= 0  # host view: the row gives no more tokens
    stopped = np.zeros(b, bool)  # rows the host stopped (sent to the device as `stop`)
    stop_dev = jax.device_put(stopped)
    pending = None
    for t in range(width + 1):
        if t < width and not done.all():
            state, packed = python_step_jit(
                engine, state, stop_dev, config=config, eos_ids=eos_tuple
            )
            packed.copy_to_host_async()
        else:
            packed = None
        if pending is not None:  # read step t-1 while step t runs
            hooks = (eos, on_token, should_stop)
            if _read_step(pending[0], np.asarray(pending[1]), res, done, stopped, k, hooks):
                stop_dev = jax.device_put(stopped)
            yield
        if packed is None:
            break
        pending = (t, packed)
    return state, res


def _read_step(t, host_packed, res, done, stopped, k, hooks) -> bool:
    """Records step ``t`` on the host; returns True when a row was newly stopped by the host."""
    eos, on_token, should_stop = hooks
    newly = False
    logprobs = host_packed[:, 1].view(np.float32)
    top_lp = host_packed[:, 3 + k :].view(np.float32)
    for row in np.flatnonzero(~done):
        tok = int(host_packed[row, 0])
        if tok == PAD:  # the device had already finished this row
            done[row] = True
            continue
        res.tokens[row, t], res.logprobs[row, t] = tok, logprobs[row]
        res.top_ids[row, t], res.top_logprobs[row, t] = host_packed[row, 3 : 3 + k], top_lp[row]
        res.num_tokens[row] += 1
        if on_token is not None:
            on_token(int(row), tok)
        res.hit_eos[row] = tok in eos
        if not host_packed[row, 2]:  # EOS or the row's limit, decided on the device
            done[row] = True
        elif should_stop is not None and should_stop(int(row), tok):
            done[row] = stopped[row] = newly = True
    return newly


def _start(engine, state, config, params, key, limits, max_new_tokens, where) -> RuntimeState:
    """Validates a loop's inputs (before donation) and writes them into the state."""
    steps.check_live(state, where)
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise InputError(f"{where}: max_new_tokens={max_new_tokens!r} (expected an int >= 1)")
    max_new_tokens = min(max_new_tokens, engine.config.kv_capacity)  # no row holds more
    limits = np.minimum(np.asarray(limits, np.int32), max_new_tokens)
    if limits.shape != (state.batch,):
        raise InputError(
            f"{where}: limits has shape {list(limits.shape)} (expected [{state.batch}]); "
            "use token_limits(engine, prompt_lengths, max_new_tokens)"
        )
    lengths = host.recall(state.kv.lengths)
    over = np.flatnonzero(lengths + limits - 1 > engine.config.kv_capacity)
    if over.size:
        r = int(over[0])
        raise InputError(
            f"{where}: row {r} holds {int(lengths[r])} tokens and may generate "
            f"{int(limits[r])} (expected <= kv capacity={engine.config.kv_capacity} in all); "
            "clamp with token_limits()"
        )
    b, n = state.batch, config.max_bias_entries
    for name, shape in dict(
        temperature=(b,), top_k=(b,), top_p=(b,), bias_ids=(b, n), bias_values=(b, n)
    ).items():
        if getattr(params, name).shape != shape:
            raise InputError(
                f"{where}: params.{name}.shape={getattr(params, name).shape} (expected {shape} "
                f"from the state's batch and config.max_bias_entries={n}); build both with "
                "make_sampling_params(batch, config=...)"
            )
    want = jax.tree_util.tree_map(lambda x: (x.shape, x.dtype), state.io.sampling)
    got = jax.tree_util.tree_map(lambda x: (x.shape, x.dtype), params)
    if got != want:  # other limits than the state was made for: new buffers, once
        fresh = jax.tree_util.tree_map(lambda x: jnp.zeros(x.shape, x.dtype), params)
        state = dataclasses.replace(state, io=dataclasses.replace(state.io, sampling=fresh))
    return _begin_jit(state, params, key, jnp.asarray(limits))
