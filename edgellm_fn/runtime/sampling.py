"""Functional sampling on logits: penalties -> logit bias -> temperature -> top-k -> top-p ->
min-p -> draw.

Everything here is a pure function of ``(config, params, logits, keys)``, usable inside ``jax.jit``
and inside a ``lax.while_loop`` body:

- ``SamplingConfig`` is static (frozen, hashable; changing it recompiles) and holds only LIMITS
  that fix shapes: the candidate set ``max_top_k``, the bias width ``max_bias_entries`` and the
  returned top-K ``max_num_logprobs``. Fix it once per engine; no flag is derived from a request.
- ``SamplingParams`` is a pytree of per-row VALUES (temperature, top-k, top-p, min-p, penalties,
  seed, sparse logit bias, the prompt's id mask), so one compiled function serves every request
  within the limits. Penalties: ``runtime/penalties.py``.

Greedy: a row with ``top_k == 1`` or ``temperature <= 0`` takes the argmax (as upstream).
Log-probabilities are the log-softmax of the model's logits *after* penalties and the logit bias
and *before*
temperature / top-k / top-p: they describe the distribution the user asked the model for (bias
included), not the truncated one the token was drawn from, and they stay finite for every id.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from edgellm_fn.errors import InputError, show
from edgellm_fn.runtime.penalties import apply_penalties, prompt_mask

MAX_BIAS_VALUE = 100.0
MAX_BIAS_ENTRIES = 1024
MAX_NUM_LOGPROBS = 50


@dataclasses.dataclass(frozen=True, kw_only=True)
class SamplingConfig:
    """Static sampling limits (a jit static argument: changing them recompiles).

    Attributes:
      max_top_k: C, the candidate set every sampled row draws from: the ``C`` most likely ids
        (``lax.top_k``); 0 = the whole vocabulary (one sort; exact for any per-row top-k/top-p).
        With ``C > 0`` a row's ``top_k`` must be ``<= C`` and ``top_k == 0`` means ``C``.
      max_num_logprobs: K, the width of the returned top log-probabilities (0..50).
      max_bias_entries: N, the padded width of ``SamplingParams.bias_ids`` (0..1024).
    """

    max_top_k: int = 0
    max_num_logprobs: int = 0
    max_bias_entries: int = 0

    def __post_init__(self):
        _check_int("SamplingConfig", "max_top_k", self.max_top_k, 0, None)
        _check_int("SamplingConfig", "max_num_logprobs", self.max_num_logprobs, 0, MAX_NUM_LOGPROBS)
        _check_int("SamplingConfig", "max_bias_entries", self.max_bias_entries, 0, MAX_BIAS_ENTRIES)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True, kw_only=True)
class SamplingParams:
    """Per-row sampling parameters (dynamic: new values do not recompile).

    Attributes:
      temperature: ``[B] float32``; ``<= 0`` means greedy for that row.
      top_k: ``[B] int32``; 0 = off (the whole candidate set), 1 = greedy.
      top_p: ``[B] float32`` in ``(0, 1]``; 1 = off.
      bias_ids: ``[B, N] int32`` token ids to bias; ``-1`` marks padding.
      bias_values: ``[B, N] float32`` added to the logits at ``bias_ids``; 0 at padding.
      min_p: ``[B] float32`` in ``[0, 1]``: drop ids whose probability is below ``min_p`` times
        the best one's (after temperature); 0 = off.
      repetition_penalty: ``[B] float32`` > 0 (``transformers``' semantics); 1 = off.
      presence_penalty: ``[B] float32`` (OpenAI's); 0 = off.
      frequency_penalty: ``[B] float32`` (OpenAI's); 0 = off.
      seed: ``[B] int32`` the row's own PRNG seed (its tokens then depend on it alone, not on
        the batch position); ``-1`` = derive the row's key from the loop's key and the row.
      prompt_seen: ``[B, V] bool`` the row's prompt ids (logit columns), for the repetition
        penalty.
    """

    temperature: jax.Array  # [B] f32
    top_k: jax.Array  # [B] i32
    top_p: jax.Array  # [B] f32
    bias_ids: jax.Array  # [B, N] i32
    bias_values: jax.Array  # [B, N] f32
    min_p: jax.Array  # [B] f32
    repetition_penalty: jax.Array  # [B] f32
    presence_penalty: jax.Array  # [B] f32
    frequency_penalty: jax.Array  # [B] f32
    seed: jax.Array  # [B] i32
    prompt_seen: jax.Array  # [B, V] bool

    @classmethod
    def neutral(cls, batch: int, vocab_size: int, bias_entries: int = 0) -> SamplingParams:
        """Defaults for every row (temperature 1, nothing else on); each leaf its own buffer."""
        return cls(
            temperature=jnp.ones((batch,), jnp.float32),
            top_k=jnp.zeros((batch,), jnp.int32),
            top_p=jnp.ones((batch,), jnp.float32),
            bias_ids=jnp.asarray(np.full((batch, bias_entries), -1, np.int32)),
            bias_values=jnp.zeros((batch, bias_entries), jnp.float32),
            min_p=jnp.zeros((batch,), jnp.float32),
            repetition_penalty=jnp.ones((batch,), jnp.float32),
            presence_penalty=jnp.zeros((batch,), jnp.float32),
            frequency_penalty=jnp.zeros((batch,), jnp.float32),
            seed=jnp.full((batch,), -1, jnp.int32),
            prompt_seen=jnp.zeros((batch, vocab_size), bool),
        )


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True, kw_only=True)
class SampleOutput:
    """Result of one sampling step.

    Attributes:
      tokens: ``[B] int32`` sampled ids.
      token_logprobs: ``[B] float32`` log-probability of each sampled id (see module docstring).
      top_ids: ``[B, K] int32`` the K most likely ids, best first (K = ``max_num_logprobs``).
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


@dataclasses.dataclass(frozen=True)
class _Filtered:
    biased: jax.Array  # [B, V] logits after the bias
    scaled: jax.Array  # [B, V] biased / temperature (1 for greedy rows)
    greedy: jax.Array  # [B] bool
    vals: jax.Array  # [B, C] candidate logits, best first; removed ones are -inf
    ids: jax.Array  # [B, C] their vocabulary ids


def adjust_logits(
    params: SamplingParams, logits: jax.Array, counts: jax.Array | None = None
) -> jax.Array:
    """Penalties (prompt mask, generated ``counts`` ``[B, V]``) then the logit bias."""
    logits = apply_penalties(
        logits.astype(jnp.float32),
        params.prompt_seen,
        counts,
        params.repetition_penalty,
        params.presence_penalty,
        params.frequency_penalty,
    )
    return apply_logit_bias(logits, params.bias_ids, params.bias_values)


def _filter(
    config: SamplingConfig, params: SamplingParams, logits: jax.Array, counts=None
) -> _Filtered:
    """The one penalties -> bias -> temperature -> top-k -> top-p -> min-p chain that ``sample``
    and ``filter_logits`` share (candidates sorted best first)."""
    _check_shapes(config, params, logits)
    batch, vocab = logits.shape
    biased = adjust_logits(params, logits, counts)
    greedy = (params.temperature <= 0) | (params.top_k == 1)
    scaled = biased / jnp.where(greedy, 1.0, params.temperature)[:, None]
    c = config.max_top_k if 0 < config.max_top_k < vocab else vocab
    if c < vocab:
        vals, ids = lax.top_k(scaled, c)  # sorted, best first
    else:
        iota = lax.broadcasted_iota(jnp.int32, (batch, vocab), 1)
        neg_vals, ids = lax.sort_key_val(-scaled, iota, dimension=1)
        vals = -neg_vals
    rank = lax.broadcasted_iota(jnp.int32, vals.shape, 1)
    k = jnp.where(params.top_k > 0, jnp.minimum(params.top_k, c), c)
    vals = jnp.where(rank < k[:, None], vals, -jnp.inf)
    probs = jax.nn.softmax(vals, axis=-1)  # renormalised over the top-k set, as upstream
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    # Keep id j while the mass of the better ids is still < p: the smallest set with mass >= p.
    top_p = params.top_p[:, None]
    vals = jnp.where((mass_before < top_p) | (top_p >= 1.0), vals, -jnp.inf)
    # min-p: p_j >= min_p * p_best  <=>  logit_j >= logit_best + log(min_p) (any normalisation).
    min_p = params.min_p[:, None]
    floor = vals[:, :1] + jnp.log(jnp.maximum(min_p, 1e-30))
    vals = jnp.where((min_p <= 0) | (vals >= floor), vals, -jnp.inf)
    return _Filtered(biased=biased, scaled=scaled, greedy=greedy, vals=vals, ids=ids)


def filter_logits(
    config: SamplingConfig, params: SamplingParams, logits: jax.Array, counts=None
) -> jax.Array:
    """Penalties, bias, temperature, top-k, top-p and min-p, in vocabulary order (for inspection
    and tests; ``counts`` ``[B, V]``: the ids generated so far, None = none).

    Args:
      config: static limits.
      params: per-row values; a greedy row keeps only its argmax.
      logits: ``[B, V] float32``.

    Returns:
      ``[B, V] float32`` logits whose softmax is the distribution ``sample`` draws from; removed
      ids are ``-inf``.
    """
    f = _filter(config, params, logits, counts)
    batch, vocab = logits.shape
    rows = jnp.arange(batch, dtype=jnp.int32)[:, None]
    vals = jnp.full((batch, vocab), -jnp.inf, jnp.float32).at[rows, f.ids].set(f.vals)
    best = jnp.argmax(f.biased, axis=-1)[:, None]
    only_best = jnp.where(jnp.arange(vocab)[None, :] == best, f.scaled, -jnp.inf)
    return jnp.where(f.greedy[:, None], only_best, vals)


def sample(
    config: SamplingConfig,
    params: SamplingParams,
    logits: jax.Array,
    keys: jax.Array,
    counts: jax.Array | None = None,
) -> SampleOutput:
    """Samples one token per row.

    Order as upstream: logit bias -> temperature -> top-k -> top-p -> categorical draw.
    ``config`` is static (changing it recompiles); ``params``, ``logits`` and ``keys`` are dynamic.

    Args:
      config: static limits.
      params: per-row values, batch B, bias width ``config.max_bias_entries``.
      logits: ``[B, V] float32`` (other float dtypes are cast).
      keys: ``[B]`` per-row PRNG keys, e.g. ``jax.random.split(key, B)``. Fixed keys give fixed
        tokens; unused by greedy rows.
      counts: ``[B, V] int32`` ids generated so far (presence/frequency/repetition penalties);
        None = none yet.

    Returns:
      ``SampleOutput`` with tokens ``[B] int32`` and log-probabilities (module docstring).

    Raises:
      InputError: at trace time, when shapes disagree with each other or with ``config``.
    """
    if keys.shape[:1] != logits.shape[:1]:
        raise InputError(
            f"sample: keys.shape={keys.shape} (expected leading dim B={logits.shape[0]}); "
            "pass jax.random.split(key, B)"
        )
    _check_shapes(config, params, logits)
    biased = adjust_logits(params, logits, counts)
    argmax = jnp.argmax(biased, axis=-1).astype(jnp.int32)

    def draw() -> jax.Array:
        f = _filter(config, params, logits, counts)
        choice = jax.vmap(jax.random.categorical)(keys, f.vals).astype(jnp.int32)  # [B]
        choice = jnp.take_along_axis(f.ids, choice[:, None], axis=1)[:, 0]
        return jnp.where(f.greedy, argmax, choice)

    # An all-greedy batch skips the candidate sort (a full-vocabulary sort when max_top_k = 0).
    all_greedy = jnp.all((params.temperature <= 0) | (params.top_k == 1))
    tokens = lax.cond(all_greedy, lambda: argmax, draw)
    logprobs = jax.nn.log_softmax(biased, axis=-1)
    token_logprobs = jnp.take_along_axis(logprobs, tokens[:, None], axis=1)[:, 0]
    k = min(config.max_num_logprobs, logits.shape[1])
    if k > 0:
        top_logprobs, top_ids = lax.top_k(logprobs, k)
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
        "top_k": (batch,),
        "top_p": (batch,),
        "bias_ids": (batch, n),
        "bias_values": (batch, n),
        "min_p": (batch,),
        "repetition_penalty": (batch,),
        "presence_penalty": (batch,),
        "frequency_penalty": (batch,),
        "seed": (batch,),
        "prompt_seen": (batch, logits.shape[1]),
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


#: The limits ``generate`` uses unless told otherwise: every request the text layer accepts fits.
REQUEST_LIMITS = SamplingConfig(
    max_top_k=0, max_num_logprobs=MAX_NUM_LOGPROBS, max_bias_entries=MAX_BIAS_ENTRIES
)


def _per_row(where: str, name: str, value, batch: int) -> list[float]:
    def number(v) -> float:
        if isinstance(v, (int, float, np.number)) and not isinstance(v, (bool, np.bool_)):
            return float(v)
        raise InputError(f"{where}: {name}={show(v)} (expected a number)")

    if not isinstance(value, Sequence | np.ndarray) or isinstance(value, str):
        return [number(value)] * batch
    values = list(value)
    if len(values) != batch:
        raise InputError(
            f"{where}: len({name})={len(values)} (expected batch_size={batch}); "
            "pass one value for all rows or one per row"
        )
    return [number(v) for v in values]


def _bias_rows(where: str, logit_bias, batch: int, vocab_size: int) -> list[dict[int, float]]:
    if logit_bias is None:
        return [{} for _ in range(batch)]
    rows = [logit_bias] * batch if isinstance(logit_bias, Mapping) else list(logit_bias)
    if len(rows) != batch:
        raise InputError(
            f"{where}: len(logit_bias)={len(rows)} (expected batch_size={batch}); "
            "pass one {id: bias} mapping for all rows or one per row"
        )
    out = []
    for b, row in enumerate(rows):
        row = {} if row is None else row
        if len(row) > MAX_BIAS_ENTRIES:
            raise InputError(
                f"{where}: len(logit_bias[{b}])={len(row)} "
                f"(expected <= {MAX_BIAS_ENTRIES} ids per row)"
            )
        parsed: dict[int, float] = {}
        for key, value in row.items():
            try:
                tid = int(key)
            except (TypeError, ValueError):
                raise InputError(
                    f"{where}: logit_bias[{b}] key={key!r} (expected an int token id)"
                ) from None
            if not 0 <= tid < vocab_size:
                raise InputError(
                    f"{where}: logit_bias[{b}] id={tid} "
                    f"(expected 0 <= id < vocab_size={vocab_size})"
                )
            if tid in parsed:
                raise InputError(
                    f"{where}: logit_bias[{b}] id={tid} (expected each id once); "
                    "an int and a string key name the same id"
                )
            value = float(value)
            if not abs(value) <= MAX_BIAS_VALUE:  # also rejects NaN
                raise InputError(
                    f"{where}: logit_bias[{b}][{tid}]={value} "
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
    top_k: int | Sequence[int] = 0,
    logit_bias: Mapping[int | str, float]
    | Sequence[Mapping[int | str, float] | None]
    | None = None,
    num_logprobs: int | Sequence[int] = 0,
    max_bias_entries: int | None = None,
    config: SamplingConfig | None = None,
    min_p: float | Sequence[float] = 0.0,
    repetition_penalty: float | Sequence[float] = 1.0,
    presence_penalty: float | Sequence[float] = 0.0,
    frequency_penalty: float | Sequence[float] = 0.0,
    seed: int | Sequence[int | None] | None = None,
    prompts: Sequence[Sequence[int]] | None = None,
    vocab_map=None,
) -> tuple[SamplingConfig, SamplingParams]:
    """Validates host-side values and builds ``(SamplingConfig, SamplingParams)``.

    Args:
      batch_size: B.
      vocab_size: V, for checking bias ids.
      temperature: one value or B values, each >= 0 (0 = greedy row).
      top_p: one value or B values, each in (0, 1]; 1 = off.
      top_k: one value or B values, each >= 0 (0 = off, 1 = greedy), <= ``config.max_top_k``
        when that limit is set.
      logit_bias: one ``{id: bias}`` mapping for all rows or B of them (None = no bias); ids in
        [0, V) (JSON string keys accepted), |bias| <= 100, at most 1024 ids per row.
      num_logprobs: one value or B values in [0, 50] (the host shows that many per row).
      max_bias_entries: without ``config``: N, the bias width; default the next power of two
        >= the longest row (0 without bias).
      config: fixed limits to check the values against (one compilation for every request that
        fits); default: the smallest limits that fit these values.
      min_p: one value or B values in [0, 1]; 0 = off.
      repetition_penalty: one value or B values > 0 (at most 100); 1 = off.
      presence_penalty, frequency_penalty: one value or B values in [-2, 2] (OpenAI's range).
      seed: None (every row keyed by the loop's key and its row), one int for all rows or B of
        them (None entries: the loop's key), each in [0, 2**31).
      prompts: per row its prompt ids (full vocabulary), for the repetition penalty.
      vocab_map: the engine's reduced-vocabulary map (maps ``prompts`` onto logit columns).

    Returns:
      ``(config, params)``; ``config`` is static for jit, ``params`` a pytree of ``[B]``/``[B, N]``.

    Raises:
      InputError: naming the field, the value and the limit.
    """
    config, (temps, ks, ps, rows, extra) = _host_values(
        "make_sampling_params",
        batch_size,
        vocab_size=vocab_size,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        logit_bias=logit_bias,
        num_logprobs=num_logprobs,
        max_bias_entries=max_bias_entries,
        config=config,
        min_p=min_p,
        repetition_penalty=repetition_penalty,
        presence_penalty=presence_penalty,
        frequency_penalty=frequency_penalty,
        seed=seed,
        prompts=prompts,
    )
    extra = {k: jnp.asarray(v) for k, v in extra.items()}
    ids = np.full((batch_size, config.max_bias_entries), -1, np.int32)
    values = np.zeros((batch_size, config.max_bias_entries), np.float32)
    for b, row in enumerate(rows):
        ids[b, : len(row)] = list(row.keys())
        values[b, : len(row)] = list(row.values())
    params = SamplingParams(
        temperature=jnp.asarray(np.asarray(temps, np.float32)),
        # Any top_k >= V keeps every id, so clamping huge values into int32 changes nothing.
        top_k=jnp.asarray(np.minimum(ks, np.iinfo(np.int32).max).astype(np.int32)),
        top_p=jnp.asarray(np.asarray(ps, np.float32)),
        bias_ids=jnp.asarray(ids),
        bias_values=jnp.asarray(values),
        **extra,
        prompt_seen=jnp.asarray(prompt_mask(prompts, batch_size, vocab_size, vocab_map)),
    )
    return config, params


def check_sampling_values(where: str, batch_size: int, **kwargs) -> SamplingConfig:
    """``make_sampling_params``' checks alone, on the host (no device array is made, so any
    number of rows can be checked at once without a new shape); returns the config.

    Args:
      where: names the caller in error messages (``"<where>: temperature[3]=..."``).
      batch_size, kwargs: as ``make_sampling_params``.

    Raises:
      InputError: as ``make_sampling_params``.
    """
    return _host_values(where, batch_size, **kwargs)[0]


def _host_values(
    where: str,
    batch_size: int,
    *,
    vocab_size: int,
    temperature: float | Sequence[float] = 1.0,
    top_p: float | Sequence[float] = 1.0,
    top_k: int | Sequence[int] = 0,
    logit_bias=None,
    num_logprobs: int | Sequence[int] = 0,
    max_bias_entries: int | None = None,
    config: SamplingConfig | None = None,
    min_p: float | Sequence[float] = 0.0,
    repetition_penalty: float | Sequence[float] = 1.0,
    presence_penalty: float | Sequence[float] = 0.0,
    frequency_penalty: float | Sequence[float] = 0.0,
    seed: int | Sequence[int | None] | None = None,
    prompts: Sequence[Sequence[int]] | None = None,
):
    _check_int(where, "batch_size", batch_size, 1, None)
    _check_int(where, "vocab_size", vocab_size, 1, None)
    ks = _per_row_int(where, "top_k", top_k, batch_size, None)
    nlp = _per_row_int(where, "num_logprobs", num_logprobs, batch_size, MAX_NUM_LOGPROBS)
    temps = _per_row(where, "temperature", temperature, batch_size)
    for b, t in enumerate(temps):
        if not (t >= 0 and math.isfinite(t)):
            raise InputError(f"{where}: temperature[{b}]={t} (expected >= 0); use 0 for greedy")
    ps = _per_row(where, "top_p", top_p, batch_size)
    for b, p in enumerate(ps):
        if not 0 < p <= 1:
            raise InputError(f"{where}: top_p[{b}]={p} (expected 0 < top_p <= 1); 1 turns it off")
    extra = _penalty_rows(
        where, batch_size, min_p, repetition_penalty, presence_penalty, frequency_penalty, seed
    )
    if prompts is not None and len(prompts) != batch_size:
        raise InputError(f"{where}: len(prompts)={len(prompts)} (expected batch_size={batch_size})")
    rows = _bias_rows(where, logit_bias, batch_size, vocab_size)
    longest = max(len(r) for r in rows)
    if config is None:
        if max_bias_entries is None:
            max_bias_entries = 0 if longest == 0 else 1 << (longest - 1).bit_length()
        _check_int(where, "max_bias_entries", max_bias_entries, 0, MAX_BIAS_ENTRIES)
        config = SamplingConfig(max_num_logprobs=max(nlp), max_bias_entries=max_bias_entries)
    elif max_bias_entries is not None and max_bias_entries != config.max_bias_entries:
        raise InputError(
            f"{where}: max_bias_entries={max_bias_entries} (expected config.max_bias_entries="
            f"{config.max_bias_entries} or None); the config fixes the bias width"
        )
    _check_limits(where, config, ks, nlp, longest)
    return config, (temps, ks, ps, rows, extra)


def _penalty_rows(where, batch, min_p, repetition, presence, frequency, seed) -> dict:
    """Checked ``[B]`` host arrays of min-p, the three penalties and the row seeds."""
    out = {}
    for name, value, low, high, open_low in (
        ("min_p", min_p, 0.0, 1.0, False),
        ("repetition_penalty", repetition, 0.0, 100.0, True),
        ("presence_penalty", presence, -2.0, 2.0, False),
        ("frequency_penalty", frequency, -2.0, 2.0, False),
    ):
        vals = _per_row(where, name, value, batch)
        for b, v in enumerate(vals):
            ok = (low < v if open_low else low <= v) and v <= high  # also rejects NaN
            if not ok:
                bound = f"{low:g} < {name} <= {high:g}" if open_low else f"{low:g}..{high:g}"
                raise InputError(f"{where}: {name}[{b}]={v} (expected {bound})")
        out[name] = np.asarray(vals, np.float32)
    seeds = [seed] * batch if seed is None or isinstance(seed, (int, np.integer)) else list(seed)
    if len(seeds) != batch:
        raise InputError(f"{where}: len(seed)={len(seeds)} (expected batch_size={batch})")
    for b, v in enumerate(seeds):
        if v is not None and (
            not isinstance(v, (int, np.integer)) or isinstance(v, bool) or not 0 <= v < 2**31
        ):
            raise InputError(f"{where}: seed[{b}]={v!r} (expected an int in [0, 2**31) or None)")
    out["seed"] = np.asarray([-1 if v is None else v for v in seeds], np.int32)
    return out


def _per_row_int(where: str, name: str, value, batch: int, high: int | None) -> list[int]:
    values = list(value) if isinstance(value, Sequence | np.ndarray) else [value] * batch
    if len(values) != batch:
        raise InputError(
            f"{where}: len({name})={len(values)} (expected batch_size={batch}); "
            "pass one value for all rows or one per row"
        )
    for v in values:
        _check_int(where, name, v, 0, high)
    return [int(v) for v in values]


def _check_limits(
    where: str, config: SamplingConfig, ks: list[int], nlp: list[int], longest: int
) -> None:
    if config.max_top_k > 0 and max(ks) > config.max_top_k:
        raise InputError(
            f"{where}: top_k={max(ks)} (expected <= config.max_top_k={config.max_top_k}); "
            "raise the engine's max_top_k or use 0 (whole vocabulary)"
        )
    if max(nlp) > config.max_num_logprobs:
        raise InputError(
            f"{where}: num_logprobs={max(nlp)} (expected <= config.max_num_logprobs="
            f"{config.max_num_logprobs}); raise max_num_logprobs"
        )
    if longest > config.max_bias_entries:
        raise InputError(
            f"{where}: logit_bias has a row of {longest} ids "
            f"(expected <= max_bias_entries={config.max_bias_entries}); raise max_bias_entries"
        )
