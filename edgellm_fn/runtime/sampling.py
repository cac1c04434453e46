"""Functional sampling on logits: logit bias -> temperature -> top-k -> top-p -> draw.

Everything here is a pure function of ``(config, params, logits, keys)``, usable inside ``jax.jit``
and inside a ``lax.while_loop`` body:

- ``SamplingConfig`` is static (frozen, hashable; changing it recompiles): it fixes shapes and
  branches (``top_k``, ``num_logprobs``, ``max_bias_entries``, ``use_top_p``).
- ``SamplingParams`` is a pytree of per-row arrays (temperature, top-p, sparse logit bias), so one
  compiled function serves every request of the same config.

Greedy: ``top_k == 1`` makes every row greedy (as upstream); a row with ``temperature <= 0`` is
greedy on its own. Log-probabilities are the log-softmax of the model's logits *after* the logit
bias and *before* temperature / top-k / top-p: they describe the distribution the user asked the
model for (bias included), not the truncated one the token was drawn from, and they stay finite for
every id (a top-p cut would make most of them ``-inf``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from edgellm_fn.errors import InputError

MAX_BIAS_VALUE = 100.0
MAX_BIAS_ENTRIES = 1024
MAX_NUM_LOGPROBS = 50


@dataclasses.dataclass(frozen=True, kw_only=True)
class SamplingConfig:
    """Static sampling configuration (a jit static argument: changing it recompiles).

    Attributes:
      top_k: keep the ``top_k`` most likely ids; 0 = off, 1 = greedy for every row.
      num_logprobs: K, how many top log-probabilities to return per row (0..50).
      max_bias_entries: N, the padded width of ``SamplingParams.bias_ids`` (0..1024).
      use_top_p: apply nucleus filtering with ``SamplingParams.top_p``; when False top_p is ignored
        and no sort is done.
    """

    top_k: int = 0
    num_logprobs: int = 0
    max_bias_entries: int = 0
    use_top_p: bool = False

    def __post_init__(self):
        _check_int("SamplingConfig", "top_k", self.top_k, 0, None)
        _check_int("SamplingConfig", "num_logprobs", self.num_logprobs, 0, MAX_NUM_LOGPROBS)
        _check_int("SamplingConfig", "max_bias_entries", self.max_bias_entries, 0, MAX_BIAS_ENTRIES)
        if not isinstance(self.use_top_p, bool):
            raise InputError(f"SamplingConfig: use_top_p={self.use_top_p!r} (expected a bool)")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True, kw_only=True)
class SamplingParams:
    """Per-row sampling parameters (dynamic: new values do not recompile).

    Attributes:
      temperature: ``[B] float32``; ``<= 0`` means greedy for that row.
      top_p: ``[B] float32`` in ``(0, 1]``; used only when ``SamplingConfig.use_top_p``.
      bias_ids: ``[B, N] int32`` token ids to bias; ``-1`` marks padding.
      bias_values: ``[B, N] float32`` added to the logits at ``bias_ids``; 0 at padding.
    """

    temperature: jax.Array  # [B]
    top_p: jax.Array  # [B]
    bias_ids: jax.Array  # [B, N]
    bias_values: jax.Array  # [B, N]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True, kw_only=True)
class SampleOutput:
    """Result of one sampling step.

    Attributes:
      tokens: ``[B] int32`` sampled ids.
      token_logprobs: ``[B] float32`` log-probability of each sampled id (see module docstring).
      top_ids: ``[B, K] int32`` the K most likely ids, best first (K = ``num_logprobs``, may be 0).
      top_logprobs: ``[B, K] float32`` their log-probabilities.
    """

    tokens: jax.Array  # [B]
    token_logprobs: jax.Array  # [B]
    top_ids: jax.Array  # [B, K]
    top_logprobs: jax.Array  # [B, K]


def apply_logit_bias(logits: jax.Array, bias_ids: jax.Array, bias_values: jax.Array) -> jax.Array:
    """Adds sparse per-row biases: ``logits[b, bias_ids[b, n]] += bias_values[b, n]``.

    Args:
      logits: ``[B, V] float32``.
      bias_ids: ``[B, N] int32``; negative ids are padding and are ignored.
      bias_values: ``[B, N] float32``.

    Returns:
      ``[B, V] float32`` biased logits.
    """
    batch, vocab = logits.shape
    if bias_ids.shape[1] == 0:
        return logits
    rows = jnp.arange(batch, dtype=jnp.int32)[:, None]
    # Padding goes out of bounds and is dropped (a negative index would wrap around instead).
    safe_ids = jnp.where(bias_ids < 0, vocab, bias_ids)
    return logits.at[rows, safe_ids].add(bias_values.astype(logits.dtype), mode="drop")


def _candidates(config: SamplingConfig, scaled: jax.Array, top_p: jax.Array):
    """Top-k then top-p on temperature-scaled logits ``[B, V]``.

    Returns ``(vals [B, C], ids [B, C] | None)``: candidate logits with the removed ones set to
    ``-inf``, and their vocabulary ids (None when ``vals`` is already in vocabulary order).
    """
    batch, vocab = scaled.shape
    k = config.top_k if config.top_k < vocab else 0  # top_k >= V keeps everything
    if k > 0:
        vals, ids = lax.top_k(scaled, k)  # sorted, best first
    elif config.use_top_p:
        iota = lax.broadcasted_iota(jnp.int32, (batch, vocab), 1)
        neg_vals, ids = lax.sort_key_val(-scaled, iota, dimension=1)
        vals = -neg_vals
    else:
        return scaled, None
    if config.use_top_p:
        probs = jax.nn.softmax(vals, axis=-1)  # renormalised over the top-k set, as upstream
        mass_before = jnp.cumsum(probs, axis=-1) - probs
        # Keep id j while the mass of the better ids is still < p: the smallest set with mass >= p.
        vals = jnp.where(mass_before < top_p[:, None], vals, -jnp.inf)
    return vals, ids


def filter_logits(config: SamplingConfig, params: SamplingParams, logits: jax.Array) -> jax.Array:
    """Bias, temperature, top-k and top-p, in vocabulary order (for inspection and tests).

    Args:
      config: static config; ``top_k == 1`` keeps only the argmax.
      params: per-row parameters; a row with ``temperature <= 0`` keeps only its argmax.
      logits: ``[B, V] float32``.

    Returns:
      ``[B, V] float32`` logits whose softmax is the distribution ``sample`` draws from; removed
      ids are ``-inf``.
    """
    _check_shapes(config, params, logits)
    batch, vocab = logits.shape
    biased = apply_logit_bias(logits.astype(jnp.float32), params.bias_ids, params.bias_values)
    greedy_row = params.temperature <= 0
    if config.top_k == 1:
        greedy_row = jnp.ones_like(greedy_row)
    scaled = biased / jnp.where(greedy_row, 1.0, params.temperature)[:, None]
    vals, ids = _candidates(config, scaled, params.top_p)
    if ids is not None:
        rows = jnp.arange(batch, dtype=jnp.int32)[:, None]
        vals = jnp.full((batch, vocab), -jnp.inf, jnp.float32).at[rows, ids].set(vals)
    best = jnp.argmax(biased, axis=-1)[:, None]
    only_best = jnp.where(jnp.arange(vocab)[None, :] == best, scaled, -jnp.inf)
    return jnp.where(greedy_row[:, None], only_best, vals)


def sample(
    config: SamplingConfig, params: SamplingParams, logits: jax.Array, keys: jax.Array
) -> SampleOutput:
    """Samples one token per row.

    Order as upstream: logit bias -> temperature -> top-k -> top-p -> categorical draw.
    ``config`` is static (changing it recompiles); ``params``, ``logits`` and ``keys`` are dynamic.

    Args:
      config: static config.
      params: per-row parameters, batch B, bias width ``config.max_bias_entries``.
      logits: ``[B, V] float32`` (other float dtypes are cast).
      keys: ``[B]`` per-row PRNG keys, e.g. ``jax.random.split(key, B)``. Fixed keys give fixed
        tokens; unused by greedy rows.

    Returns:
      ``SampleOutput`` with tokens ``[B] int32`` and log-probabilities (module docstring).

    Raises:
      InputError: at trace time, when shapes disagree with each other or with ``config``.
    """
    _check_shapes(config, params, logits)
    if keys.shape[:1] != logits.shape[:1]:
        raise InputError(
            f"sample: keys.shape={keys.shape} (expected leading dim B={logits.shape[0]}); "
            "pass jax.random.split(key, B)"
        )
    biased = apply_logit_bias(logits.astype(jnp.float32), params.bias_ids, params.bias_values)
    argmax = jnp.argmax(biased, axis=-1).astype(jnp.int32)
    if config.top_k == 1:
        tokens = argmax
    else:
        greedy_row = params.temperature <= 0
        scaled = biased / jnp.where(greedy_row, 1.0, params.temperature)[:, None]
        vals, ids = _candidates(config, scaled, params.top_p)
        choice = jax.vmap(jax.random.categorical)(keys, vals).astype(jnp.int32)  # [B]
        if ids is not None:
            choice = jnp.take_along_axis(ids, choice[:, None], axis=1)[:, 0]
        tokens = jnp.where(greedy_row, argmax, choice)
    logprobs = jax.nn.log_softmax(biased, axis=-1)
    token_logprobs = jnp.take_along_axis(logprobs, tokens[:, None], axis=1)[:, 0]
    if config.num_logprobs > 0:
        top_logprobs, top_ids = lax.top_k(logprobs, min(config.num_logprobs, logits.shape[1]))
    else:
        top_logprobs = jnp.zeros((logits.shape[0], 0), jnp.float32)
        top_ids = jnp.zeros((logits.shape[0], 0), jnp.int32)
    return SampleOutput(
        tokens=tokens,
        token_logprobs=token_logprobs,
        top_ids=top_ids.astype(jnp.int32),
        top_logprobs=top_logprobs,
    )


def _check_shapes(config: SamplingConfig, params: SamplingParams, logits: jax.Array) -> None:
    if logits.ndim != 2:
        raise InputError(f"sample: logits.shape={logits.shape} (expected [B, V])")
    batch = logits.shape[0]
    n = config.max_bias_entries
    want = {
        "temperature": (batch,),
        "top_p": (batch,),
        "bias_ids": (batch, n),
        "bias_values": (batch, n),
    }
    for name, shape in want.items():
        got = getattr(params, name).shape
        if got != shape:
            raise InputError(
                f"sample: params.{name}.shape={got} (expected {shape} from logits [B={batch}, V] "
                f"and config.max_bias_entries={n}); build params with make_sampling_params"
            )


def _check_int(where: str, name: str, value, low: int, high: int | None) -> None:
    is_int = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
    if not is_int or value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise InputError(f"{where}: {name}={value!r} (expected an int {bound})")


def _per_row(name: str, value, batch: int) -> list[float]:
    if isinstance(value, (int, float, np.number)) and not isinstance(value, bool):
        return [float(value)] * batch
    values = list(value)
    if len(values) != batch:
        raise InputError(
            f"make_sampling_params: len({name})={len(values)} (expected batch_size={batch}); "
            "pass one value for all rows or one per row"
        )
    return [float(v) for v in values]


def _bias_rows(logit_bias, batch: int, vocab_size: int) -> list[dict[int, float]]:
    if logit_bias is None:
        return [{} for _ in range(batch)]
    rows = [logit_bias] * batch if isinstance(logit_bias, Mapping) else list(logit_bias)
    if len(rows) != batch:
        raise InputError(
            f"make_sampling_params: len(logit_bias)={len(rows)} (expected batch_size={batch}); "
            "pass one {id: bias} mapping for all rows or one per row"
        )
    out = []
    for b, row in enumerate(rows):
        row = {} if row is None else row
        if len(row) > MAX_BIAS_ENTRIES:
            raise InputError(
                f"make_sampling_params: len(logit_bias[{b}])={len(row)} "
                f"(expected <= {MAX_BIAS_ENTRIES} ids per row)"
            )
        parsed: dict[int, float] = {}
        for key, value in row.items():
            try:
                tid = int(key)
            except (TypeError, ValueError):
                raise InputError(
                    f"make_sampling_params: logit_bias[{b}] key={key!r} (expected an int token id)"
                ) from None
            if not 0 <= tid < vocab_size:
                raise InputError(
                    f"make_sampling_params: logit_bias[{b}] id={tid} "
                    f"(expected 0 <= id < vocab_size={vocab_size})"
                )
            if tid in parsed:
                raise InputError(
                    f"make_sampling_params: logit_bias[{b}] id={tid} (expected each id once); "
                    "an int and a string key name the same id"
                )
            value = float(value)
            if not abs(value) <= MAX_BIAS_VALUE:  # also rejects NaN
                raise InputError(
                    f"make_sampling_params: logit_bias[{b}][{tid}]={value} "
                    f"(expected |value| <= {MAX_BIAS_VALUE:g})"
                )
            parsed[tid] = value
        out.append(parsed)
    return out


def make_sampling_params(
    batch_size: int,
    *,
    vocab_size: int,
    temperature: float | Sequence[float] = 1.0,
    top_p: float | Sequence[float] = 1.0,
    top_k: int = 0,
    logit_bias: Mapping[int | str, float]
    | Sequence[Mapping[int | str, float] | None]
    | None = None,
    num_logprobs: int = 0,
    max_bias_entries: int | None = None,
) -> tuple[SamplingConfig, SamplingParams]:
    """Validates host-side values and builds ``(SamplingConfig, SamplingParams)``.

    Args:
      batch_size: B.
      vocab_size: V, for checking bias ids.
      temperature: one value or B values, each >= 0 (0 = greedy row).
      top_p: one value or B values, each in (0, 1]; any value < 1 turns on ``use_top_p``.
      top_k: >= 0; 0 = off, 1 = greedy.
      logit_bias: one ``{id: bias}`` mapping for all rows or B of them (None = no bias); ids in
        [0, V) (JSON string keys accepted), |bias| <= 100, at most 1024 ids per row.
      num_logprobs: K in [0, 50].
      max_bias_entries: N, the bias width; default: the next power of two >= the longest row
        (0 without bias). Fix it to reuse one compiled function across requests.

    Returns:
      ``(config, params)``; ``config`` is static for jit, ``params`` a pytree of ``[B]``/``[B, N]``.

    Raises:
      InputError: naming the field, the value and the limit.
    """
    where = "make_sampling_params"
    _check_int(where, "batch_size", batch_size, 1, None)
    _check_int(where, "vocab_size", vocab_size, 1, None)
    _check_int(where, "top_k", top_k, 0, None)
    _check_int(where, "num_logprobs", num_logprobs, 0, MAX_NUM_LOGPROBS)
    temps = _per_row("temperature", temperature, batch_size)
    for b, t in enumerate(temps):
        if not (t >= 0 and math.isfinite(t)):
            raise InputError(f"{where}: temperature[{b}]={t} (expected >= 0); use 0 for greedy")
    ps = _per_row("top_p", top_p, batch_size)
    for b, p in enumerate(ps):
        if not 0 < p <= 1:
            raise InputError(f"{where}: top_p[{b}]={p} (expected 0 < top_p <= 1); 1 turns it off")
    rows = _bias_rows(logit_bias, batch_size, vocab_size)
    longest = max(len(r) for r in rows)
    if max_bias_entries is None:
        max_bias_entries = 0 if longest == 0 else 1 << (longest - 1).bit_length()
    _check_int(where, "max_bias_entries", max_bias_entries, 0, MAX_BIAS_ENTRIES)
    if longest > max_bias_entries:
        raise InputError(
            f"{where}: logit_bias has a row of {longest} ids "
            f"(expected <= max_bias_entries={max_bias_entries}); raise max_bias_entries"
        )
    ids = np.full((batch_size, max_bias_entries), -1, np.int32)
    values = np.zeros((batch_size, max_bias_entries), np.float32)
    for b, row in enumerate(rows):
        ids[b, : len(row)] = list(row.keys())
        values[b, : len(row)] = list(row.values())
    config = SamplingConfig(
        top_k=int(top_k),
        num_logprobs=int(num_logprobs),
        max_bias_entries=int(max_bias_entries),
        use_top_p=any(p < 1 for p in ps),
    )
    params = SamplingParams(
        temperature=jnp.asarray(np.asarray(temps, np.float32)),
        top_p=jnp.asarray(np.asarray(ps, np.float32)),
        bias_ids=jnp.asarray(ids),
        bias_values=jnp.asarray(values),
    )
    return config, params
