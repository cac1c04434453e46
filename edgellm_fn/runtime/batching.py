"""Continuous batching: admit requests into free rows of a running decode state.

Device side (pure, jitted, donating the decode state):

- ``insert(state, slot, prefilled, params, limit)`` copies a prefilled batch-1 state (its KV
  rows, length and last logits) and the request's sampling row, key and token limit into row
  ``slot``. ``slot`` is data, so admitting a request never recompiles.
- ``release(state, slot)`` masks a row (finished, cancelled or disconnected).

Host side: ``Scheduler`` keeps a queue of ``Request``s; each ``step()`` runs one prefill chunk of
the request being admitted (chunks of a fixed width, so one shape), inserts it when its prompt
is in, then one decode step of every live row (``loops.python_step_jit``). Per-row sampling
values, seeds, limits, stops and log-probabilities are all data: no request recompiles.
"""

from __future__ import annotations

import collections
import dataclasses
import threading
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ..engine.protocol import Engine
from ..errors import InputError
from ..state.resources import RuntimeState, create_state
from . import loops, steps
from .prefix_cache import PrefixStore, restore_prefix, save_prefix
from .sampling import SamplingConfig, SamplingParams, make_sampling_params
from .vocab import reduce_logit_bias

PAD = loops.PAD


def _set_row(buf: jax.Array, slot: jax.Array, row: jax.Array) -> jax.Array:
    """``buf[slot] = row[0]`` for a leading-batch buffer and a batch-1 ``row``."""
    return lax.dynamic_update_slice(buf, row.astype(buf.dtype), (slot,) + (0,) * (buf.ndim - 1))


def _insert(
    state: RuntimeState,
    slot: jax.Array,
    prefilled: RuntimeState,
    params: SamplingParams,
    limit: jax.Array,
) -> RuntimeState:
    kv, pkv = state.kv, prefilled.kv
    kv = dataclasses.replace(
        kv,
        k=tuple(_set_row(a, slot, b) for a, b in zip(kv.k, pkv.k, strict=True)),
        v=tuple(_set_row(a, slot, b) for a, b in zip(kv.v, pkv.v, strict=True)),
        lengths=_set_row(kv.lengths, slot, pkv.lengths),
    )
    io = state.io
    key = loops.row_keys(jax.random.PRNGKey(0), params.seed, rows=slot[None])
    io = dataclasses.replace(
        io,
        logits=_set_row(io.logits, slot, prefilled.io.logits[:1]),
        sampling=jax.tree_util.tree_map(lambda a, b: _set_row(a, slot, b), io.sampling, params),
        row_keys=_set_row(io.row_keys, slot, key),
        limits=io.limits.at[slot].set(limit),
        active=io.active.at[slot].set(limit > 0),
        num_tokens=io.num_tokens.at[slot].set(0),
        hit_eos=io.hit_eos.at[slot].set(False),
        tokens=io.tokens.at[slot].set(PAD),
        counts=_set_row(io.counts, slot, jnp.zeros_like(io.counts[:1])),
    )
    res = dataclasses.replace(state.res, kv=kv)
    rec, prec = res.recurrent, prefilled.res.recurrent
    if rec is not None:  # hybrid models: the row's Mamba2 states come with its KV
        res = dataclasses.replace(
            res,
            recurrent=dataclasses.replace(
                rec,
                ssm=tuple(_set_row(a, slot, b) for a, b in zip(rec.ssm, prec.ssm, strict=True)),
                conv=tuple(_set_row(a, slot, b) for a, b in zip(rec.conv, prec.conv, strict=True)),
            ),
        )
    if res.rope_delta is not None:  # MRoPE: the row's own rope table and delta move with it
        res = dataclasses.replace(
            res,
            rope=_set_row(res.rope, slot, prefilled.res.rope),
            rope_delta=_set_row(res.rope_delta, slot, prefilled.res.rope_delta),
        )
    return RuntimeState(io=io, res=res)


def _release(state: RuntimeState, slot: jax.Array) -> RuntimeState:
    io = dataclasses.replace(
        state.io, active=state.io.active.at[slot].set(False), limits=state.io.limits.at[slot].set(0)
    )
    return dataclasses.replace(state, io=io)


_insert_jit = jax.jit(_insert, donate_argnames=("state",), keep_unused=True)
_release_jit = jax.jit(_release, donate_argnames=("state",), keep_unused=True)


def insert(
    state: RuntimeState,
    slot: int,
    prefilled: RuntimeState,
    params: SamplingParams,
    limit: int,
) -> RuntimeState:
    """Places a prefilled single request into row ``slot`` of a running decode state.

    Args:
      state: the decode state (donated).
      slot: a free row, ``0 <= slot < state.batch``.
      prefilled: a batch-1 state after ``prefill`` of the request's prompt (read, not donated).
      params: the request's batch-1 sampling values (``make_sampling_params(1, config=...)``).
      limit: most tokens the request may generate (clamped to the KV capacity by the caller).

    Raises:
      InputError: a bad slot, a prefilled state of another batch or capacity, or sampling
        values of other widths than the state's (before anything is donated).
    """
    steps.check_live(state, "insert")
    if not isinstance(slot, (int, np.integer)) or not 0 <= slot < state.batch:
        raise InputError(f"insert: slot={slot!r} (expected an int in [0, {state.batch}))")
    if prefilled.batch != 1 or prefilled.kv.capacity != state.kv.capacity:
        raise InputError(
            f"insert: prefilled has batch {prefilled.batch} and capacity "
            f"{prefilled.kv.capacity} (expected batch 1 and the state's {state.kv.capacity})"
        )
    want = jax.tree_util.tree_map(lambda x: (x.shape[1:], x.dtype), state.io.sampling)
    got = jax.tree_util.tree_map(lambda x: (x.shape[1:], x.dtype), params)
    if got != want or params.temperature.shape != (1,):
        raise InputError(
            "insert: params do not match the state's sampling buffers (expected batch 1 and the "
            "widths of the state's SamplingConfig); build them with "
            "make_sampling_params(1, config=<the state's config>)"
        )
    if not isinstance(limit, (int, np.integer)) or limit < 0:
        raise InputError(f"insert: limit={limit!r} (expected an int >= 0)")
    return _insert_jit(state, jnp.int32(slot), prefilled, params, jnp.int32(limit))


def release(state: RuntimeState, slot: int) -> RuntimeState:
    """Masks row ``slot`` (it samples and grows no more); the row is free for ``insert``."""
    steps.check_live(state, "release")
    if not isinstance(slot, (int, np.integer)) or not 0 <= slot < state.batch:
        raise InputError(f"release: slot={slot!r} (expected an int in [0, {state.batch}))")
    return _release_jit(state, jnp.int32(slot))


@dataclasses.dataclass(eq=False, kw_only=True)
class Request:
    """One generation request for the ``Scheduler``.

    ``on_token(token, logprob, top_ids, top_logprobs) -> bool`` is called for every token (on
    the scheduler's thread); returning True stops the request (a stop string). ``on_finish
    (reason)`` is called once: ``"stop"`` (EOS or on_token), ``"length"`` or ``"cancelled"``.
    """

    prompt: Sequence[int]
    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    num_logprobs: int = 0
    logit_bias: dict[int, float] | None = None
    on_token: Callable[[int, float, np.ndarray, np.ndarray], bool] | None = None
    on_finish: Callable[[str], None] | None = None
    cancelled: bool = False
    params: SamplingParams | None = None
    cached_tokens: int = 0  # prompt tokens reused from the prefix store on admission


class Scheduler:
    """Host loop over one decode state of ``max_batch`` rows (see the module docstring).

    Args:
      engine: any provider.
      eos_ids: ids that end a request.
      max_batch: decode rows (default the engine's max batch size).
      sampling: static sampling limits shared by every request.
      chunk: prefill chunk width (default the engine's ``max_input_len``).
      seed: host seed for requests without one.
      prefix_store: on admission, a request's longest cached prompt prefix is restored from
        it and only the rest is prefilled (``Request.cached_tokens``); each restore or save
        of a new prefix length compiles once (the saved KV is shaped by its length).
      save_prompts: also store every admitted prompt's KV in ``prefix_store`` (automatic
        prefix caching: a chat's next turn reuses the history; the store's ``max_entries``
        bounds it).
    """

    def __init__(
        self,
        engine: Engine,
        *,
        eos_ids: Sequence[int],
        max_batch: int | None = None,
        sampling: SamplingConfig = SamplingConfig(max_num_logprobs=20),  # noqa: B008
        chunk: int | None = None,
        seed: int = 0,
        prefix_store: PrefixStore | None = None,
        save_prompts: bool = False,
    ):
        if save_prompts and prefix_store is None:
            raise InputError("Scheduler: save_prompts=True needs a prefix_store")
        self.prefix_store, self.save_prompts = prefix_store, save_prompts
        cfg = engine.config
        self.engine, self.config, self.eos = engine, sampling, tuple(sorted(set(eos_ids)))
        self.batch = max_batch or cfg.max_batch_size
        self.chunk = min(chunk or cfg.max_input_len, cfg.max_input_len)
        self.state = create_state(cfg, self.batch, sampling)
        self._prefill_state = create_state(cfg, 1, sampling)
        self._rows: list[Request | None] = [None] * self.batch
        self._queue: collections.deque[Request] = collections.deque()
        self._admitting: tuple[Request, int] | None = None  # request, prompt tokens prefilled
        self._rng = np.random.default_rng(seed)
        self._no_stop = jax.device_put(np.zeros(self.batch, bool))
        self.lock = threading.Condition()

    # --- thread-safe entry points -------------------------------------------------------
    def submit(self, req: Request) -> None:
        """Validates and queues ``req``.

        Raises:
          InputError: an empty or too long prompt or a bad sampling value, naming the field.
        """
        cap = self.engine.config.kv_capacity
        if not 1 <= len(req.prompt) < cap:
            raise InputError(f"prompt: {len(req.prompt)} tokens (expected 1..{cap - 1})")
        if not isinstance(req.max_tokens, int) or req.max_tokens < 1:
            raise InputError(f"max_tokens={req.max_tokens!r} (expected an int >= 1)")
        seed = req.seed if req.seed is not None else int(self._rng.integers(0, 2**31))
        _, req.params = make_sampling_params(
            1,
            vocab_size=self.engine.config.output_vocab_size,
            temperature=req.temperature,
            top_p=req.top_p,
            top_k=req.top_k,
            min_p=req.min_p,
            repetition_penalty=req.repetition_penalty,
            presence_penalty=req.presence_penalty,
            frequency_penalty=req.frequency_penalty,
            seed=seed,
            num_logprobs=req.num_logprobs,
            logit_bias=reduce_logit_bias(self.engine.vocab_map, req.logit_bias, 1),
            prompts=[list(req.prompt)],
            vocab_map=self.engine.vocab_map,
            config=self.config,
        )
        with self.lock:
            self._queue.append(req)
            self.lock.notify_all()

    def cancel(self, req: Request) -> None:
        """Cancels ``req`` (queued or running); its row is freed on the next step."""
        with self.lock:
            req.cancelled = True
            self.lock.notify_all()

    def pending(self) -> int:
        """Requests queued (not yet admitted)."""
        with self.lock:
            return len(self._queue)

    def busy(self) -> bool:
        """True while any request is queued, being admitted or decoding."""
        with self.lock:
            return bool(self._queue) or self._admitting is not None or any(self._rows)

    # --- the loop -----------------------------------------------------------------------
    def step(self) -> None:
        """One scheduler iteration: cancellations, one prefill chunk, one decode step."""
        with self.lock:
            for slot, req in enumerate(self._rows):
                if req is not None and req.cancelled:
                    self._finish(slot, "cancelled")
            queued = [r for r in self._queue if r.cancelled]
            for r in queued:
                self._queue.remove(r)
            if self._admitting is None and self._queue and None in self._rows:
                self._admitting = (self._queue.popleft(), 0)
                self._restore_prefix()
        for r in queued:
            _call(r.on_finish, "cancelled")
        if self._admitting is not None:
            self._prefill_chunk()
        if any(r is not None for r in self._rows):
            self._decode()

    def run_until_idle(self) -> None:
        """Steps until every submitted request has finished."""
        while self.busy():
            self.step()

    def serve(self, stop: threading.Event) -> None:
        """Steps while there is work, waits otherwise, until ``stop`` is set; then cancels
        whatever is still queued or running."""
        while not stop.is_set():
            if self.busy():
                self.step()
            else:
                with self.lock:
                    self.lock.wait(timeout=0.05)
        with self.lock:
            for r in list(self._queue) + [r for r in self._rows if r is not None]:
                r.cancelled = True
        self.step()

    # --- internals ----------------------------------------------------------------------
    def _restore_prefix(self) -> None:
        """Starts the admitted request after its longest prefix in the store, if any."""
        if self.prefix_store is None:
            return
        req, _ = self._admitting
        entry, n = self.prefix_store.lookup(req.prompt)
        if entry is None or n == 0:
            return
        self._prefill_state = restore_prefix(self._prefill_state, 0, entry, used=n)
        req.cached_tokens = n
        self._admitting = (req, n)

    def _prefill_chunk(self) -> None:
        req, done = self._admitting
        if req.cancelled:
            self._admitting = None
            _call(req.on_finish, "cancelled")
            return
        engine, cfg = self.engine, self.engine.config
        prompt = list(req.prompt)
        n = min(self.chunk, len(prompt) - done)
        width = self.chunk if done + self.chunk <= cfg.kv_capacity else n  # last-slot spill
        ids = np.zeros((1, width), np.int32)
        ids[0, :n] = prompt[done : done + n]
        x = steps.embed(engine, jnp.asarray(ids))
        lengths = np.array([done + n], np.int32)
        self._prefill_state = steps.prefill(
            engine, self._prefill_state, x, lengths, append=done > 0
        )
        done += n
        if done < len(prompt):
            self._admitting = (req, done)
            return
        self._admitting = None
        if self.save_prompts and len(prompt) > req.cached_tokens + 1:
            self.prefix_store.add(save_prefix(self._prefill_state, 0, prompt))
        limit = int(min(req.max_tokens, cfg.kv_capacity - len(prompt) + 1))
        with self.lock:
            slot = self._rows.index(None)
            self._rows[slot] = req
        self.state = insert(self.state, slot, self._prefill_state, req.params, limit)

    def _decode(self) -> None:
        self.state, packed = loops.python_step_jit(
            self.engine, self.state, self._no_stop, config=self.config, eos_ids=self.eos
        )
        host = np.asarray(packed)
        k = min(self.config.max_num_logprobs, self.state.io.logits.shape[1])
        logprobs = host[:, 1].view(np.float32)
        top_lp = host[:, 3 + k :].view(np.float32)
        for slot, req in enumerate(list(self._rows)):
            if req is None:
                continue
            tok = int(host[slot, 0])
            stop = False
            if tok != PAD and req.on_token is not None:
                n = req.num_logprobs
                stop = bool(
                    req.on_token(
                        tok, float(logprobs[slot]), host[slot, 3 : 3 + n], top_lp[slot, :n]
                    )
                )
            if tok == PAD or not host[slot, 2] or stop:
                eos = tok in self.eos
                with self.lock:
                    self._finish(slot, "stop" if stop or eos else "length")

    def _finish(self, slot: int, reason: str) -> None:
        """Frees ``slot`` (caller holds the lock) and reports ``reason``."""
        req = self._rows[slot]
        self._rows[slot] = None
        self.state = release(self.state, slot)
        _call(req.on_finish, reason)


def _call(fn, *args) -> None:
    if fn is not None:
        fn(*args)
