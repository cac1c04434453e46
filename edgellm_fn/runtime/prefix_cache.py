"""Prompt-prefix KV caching on the FFI KV-cache kernels (upstream's system-prompt cache, plus
a longest-prefix lookup by token ids).

Like upstream, restoring a cached prefix of N tokens reuses N-1 of them and prefills the rest
from a non-empty cache (``prefill(..., append=True)``), so the last prompt token's logits are
computed by the engine::

    prompt:   p0 p1 p2 p3 p4 p5 p6          cached entry: p0 p1 p2 p3 (N=4)
    restore:  [p0 p1 p2] -> kv.lengths = 3
    prefill:             [p3 p4 p5 p6]      (append=True, context_lengths = 7)

A hybrid model's entry also holds each Mamba2 layer's SSM and conv state of the row, which
exist only at the prefix end: it is saved from a row holding exactly its tokens and restored
whole (``used = N``), so only prompts that extend the whole entry reuse it.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import numpy as np

from ..engine.protocol import Engine
from ..errors import InputError
from ..ffi.kv_cache_utils import (
    MAX_BATCHED_LAYERS,
    instantiate_kv_cache_batched,
    save_kv_cache_batched,
)
from ..state import host
from ..state.resources import RuntimeState
from . import steps
from .prompts import pad_prompts


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True, kw_only=True)
class PrefixCache:
    """Saved KV of one row's first ``length`` tokens.

    Attributes:
      k: per layer ``[Hkv, length, D]`` keys.
      v: per layer ``[Hkv, length, D]`` values.
      tokens: the token ids the KV was computed from (static metadata).
      ssm: per Mamba2 layer ``[heads, head_dim, d_state]`` state after ``tokens`` (hybrid
        models; empty otherwise).
      conv: per Mamba2 layer ``[conv_dim, kernel - 1]`` conv state after ``tokens``.
    """

    k: tuple[jax.Array, ...]
    v: tuple[jax.Array, ...]
    tokens: tuple[int, ...] = dataclasses.field(metadata=dict(static=True))
    ssm: tuple[jax.Array, ...] = ()
    conv: tuple[jax.Array, ...] = ()

    @property
    def length(self) -> int:
        return len(self.tokens)

    @property
    def recurrent(self) -> bool:
        """True for a hybrid model's entry: it restores whole (its state is at its end)."""
        return bool(self.ssm)


def _groups(arrays: list) -> list[slice]:
    return [slice(i, i + MAX_BATCHED_LAYERS) for i in range(0, len(arrays), MAX_BATCHED_LAYERS)]


# Static: length (the saved arrays' shape). Dynamic: the row, a buffer (one executable per length).
@functools.partial(jax.jit, static_argnames=("length",))
def _save(state: RuntimeState, row: jax.Array, length: int) -> list[jax.Array]:
    layers = [*state.kv.k, *state.kv.v]
    out: list[jax.Array] = []
    for g in _groups(layers):  # one kernel launch per group of up to MAX_BATCHED_LAYERS arrays
        out += save_kv_cache_batched(layers[g], row, length)
    rec = state.res.recurrent
    if rec is not None:
        out += [jax.lax.dynamic_index_in_dim(a, row, keepdims=False) for a in (*rec.ssm, *rec.conv)]
    return out


def save_prefix(state: RuntimeState, row: int, tokens: Sequence[int]) -> PrefixCache:
    """Copies the KV of row ``row``'s first ``len(tokens)`` slots out of the cache.

    Args:
      state: a state whose row ``row`` holds at least ``len(tokens)`` tokens (not donated).
      row: batch row.
      tokens: the ids those slots were computed from (the cache key).

    Raises:
      InputError: bad row, an id outside ``[0, vocab_size)``, or the row holds fewer tokens
        than ``tokens``.
    """
    steps.check_live(state, "save_prefix", returns_state=False)
    vocab = state.io.logits.shape[-1]
    tokens = tuple(int(t) for t in steps.check_token_ids(tokens, vocab, "save_prefix: tokens"))
    if not 0 <= row < state.batch:
        raise InputError(f"save_prefix: row={row} (expected 0 <= row < batch={state.batch})")
    held = int(host.recall(state.kv.lengths)[row])
    if not 1 <= len(tokens) <= held:
        raise InputError(
            f"save_prefix: len(tokens)={len(tokens)} (expected 1..{held}, the tokens row {row} "
            "holds)"
        )
    rec = state.res.recurrent
    if rec is not None and len(tokens) != held:
        raise InputError(
            f"save_prefix: len(tokens)={len(tokens)} (expected {held}, all the tokens row {row} "
            "holds); a hybrid model's recurrent state exists only at the row's end, so save the "
            "prefix right after prefilling it"
        )
    saved = _save(state, np.int32(row), len(tokens))
    n = len(state.kv.k)
    m = 0 if rec is None else len(rec.ssm)
    kv, states = saved[: 2 * n], saved[2 * n :]
    return PrefixCache(
        k=tuple(kv[:n]),
        v=tuple(kv[n:]),
        tokens=tokens,
        ssm=tuple(states[:m]),
        conv=tuple(states[m:]),
    )


# Dynamic: row and used (buffers: one executable per prefix length serves every row).
@functools.partial(jax.jit, donate_argnames=("state",), keep_unused=True)
def _restore(
    state: RuntimeState, prefix: PrefixCache, row: jax.Array, used: jax.Array
) -> RuntimeState:
    layers = [*state.kv.k, *state.kv.v]
    saved = [*prefix.k, *prefix.v]
    out: list[jax.Array] = []
    for g in _groups(layers):
        out += instantiate_kv_cache_batched(layers[g], saved[g], row)
    n = len(state.kv.k)
    kv = dataclasses.replace(
        state.kv, k=tuple(out[:n]), v=tuple(out[n:]), lengths=state.kv.lengths.at[row].set(used)
    )
    res = dataclasses.replace(state.res, kv=kv)
    if res.recurrent is not None:
        res = dataclasses.replace(
            res,
            recurrent=dataclasses.replace(
                res.recurrent,
                ssm=tuple(
                    a.at[row].set(p) for a, p in zip(res.recurrent.ssm, prefix.ssm, strict=True)
                ),
                conv=tuple(
                    a.at[row].set(p) for a, p in zip(res.recurrent.conv, prefix.conv, strict=True)
                ),
            ),
        )
    return dataclasses.replace(state, res=res)


def restore_prefix(
    state: RuntimeState, row: int, prefix: PrefixCache, used: int | None = None
) -> RuntimeState:
    """Writes a saved prefix into row ``row`` in place and sets its length to ``used``.

    Args:
      state: donated.
      row: batch row.
      prefix: from ``save_prefix``.
      used: cached tokens to keep (default ``prefix.length - 1``: upstream reuses N-1 of N; a
        hybrid model's entry restores whole, ``prefix.length``).

    Raises:
      InputError: bad row, ``used`` out of range (a hybrid entry: other than its length), a
        prefix longer than the KV capacity, or an entry of another model kind.
    """
    steps.check_live(state, "restore_prefix")
    if prefix.recurrent != (state.res.recurrent is not None):
        raise InputError(
            f"restore_prefix: the prefix {'has' if prefix.recurrent else 'lacks'} recurrent "
            "state but the state's model "
            f"{'lacks' if prefix.recurrent else 'has'} Mamba2 layers (expected an entry saved "
            "from this model)"
        )
    if prefix.recurrent:
        used = prefix.length if used is None else used
        if used != prefix.length:
            raise InputError(
                f"restore_prefix: used={used} (expected {prefix.length}, the whole prefix); a "
                "hybrid model's recurrent state exists only at the prefix end"
            )
    used = prefix.length - 1 if used is None else used
    if not 0 <= row < state.batch:
        raise InputError(f"restore_prefix: row={row} (expected 0 <= row < batch={state.batch})")
    if not 0 <= used <= prefix.length:
        raise InputError(f"restore_prefix: used={used} (expected 0..prefix length {prefix.length})")
    if prefix.length > state.kv.capacity:
        raise InputError(
            f"restore_prefix: prefix length {prefix.length} (expected <= kv capacity="
            f"{state.kv.capacity})"
        )
    lengths = host.recall(state.kv.lengths)
    lengths[row] = used
    new = _restore(state, prefix, np.int32(row), np.int32(used))
    host.remember(new.kv.lengths, lengths)
    return new


class PrefixStore:
    """Host-side store of ``PrefixCache`` entries, looked up by longest common token prefix.

    Entries are keyed by ``(lora_name, tokens)`` (as upstream keys its system-prompt cache by
    prompt and LoRA name): KV computed under one adapter is never reused for another.

    Args:
      vocab_size: when given, ``lookup`` refuses ids outside ``[0, vocab_size)``; without it,
        negative ids (``save_prefix`` checks entries against the state's vocabulary).
      max_entries: when given, adding beyond it drops the least recently used entry.
    """

    def __init__(self, vocab_size: int | None = None, max_entries: int | None = None) -> None:
        if max_entries is not None and (
            not isinstance(max_entries, int) or isinstance(max_entries, bool) or max_entries < 1
        ):
            raise InputError(f"PrefixStore: max_entries={max_entries!r} (expected an int >= 1)")
        self._entries: dict[tuple[str | None, tuple[int, ...]], PrefixCache] = {}
        self.vocab_size, self.max_entries = vocab_size, max_entries

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, prefix: PrefixCache, lora_name: str | None = None) -> None:
        """Stores ``prefix``, computed with adapter ``lora_name`` (None: the base model)."""
        key = (lora_name or None, prefix.tokens)
        self._entries.pop(key, None)
        self._entries[key] = prefix  # the newest last
        while self.max_entries is not None and len(self._entries) > self.max_entries:
            del self._entries[next(iter(self._entries))]

    def lookup(
        self, tokens: Sequence[int], lora_name: str | None = None
    ) -> tuple[PrefixCache | None, int]:
        """Returns the entry of adapter ``lora_name`` sharing the longest prefix with ``tokens``
        and how many tokens of it to reuse (at most ``len(tokens) - 1``, so one token is always
        prefilled).

        Raises:
          InputError: a non-integer or negative id, or one ``>= vocab_size`` when set.
        """
        vocab = self.vocab_size if self.vocab_size is not None else np.iinfo(np.int64).max
        tokens = steps.check_token_ids(tokens, vocab, "PrefixStore.lookup: tokens").tolist()
        best, best_n = None, 0
        for (lora, key), entry in self._entries.items():
            if lora != (lora_name or None):
                continue
            n = 0
            for a, b in zip(key, tokens, strict=False):
                if a != b:
                    break
                n += 1
            n = min(n, len(tokens) - 1)
            if entry.recurrent and n != entry.length:
                continue  # a recurrent state exists only at the entry's end: all of it or none
            if n > best_n:
                best, best_n = (lora, key), n
        if best is None:
            return None, 0
        entry = self._entries.pop(best)  # most recently used: moved last
        self._entries[best] = entry
        return entry, best_n


def prefill_with_prefixes(
    engine: Engine,
    state: RuntimeState,
    prompts: Sequence[Sequence[int]],
    store: PrefixStore,
    bucket: int | None = None,
    lora_names: Sequence[str | None] | None = None,
) -> tuple[RuntimeState, list[int]]:
    """Restores each row's longest cached prefix, then prefills the rest of every prompt.

    Args:
      state: a fresh state for ``len(prompts)`` rows (donated).
      bucket: pad the remaining tokens to this length (default: the longest remainder).
      lora_names: per row the adapter the state runs it on (``LoraBank.state``); only entries
        saved under the same adapter are reused.

    Returns:
      The state after prefill and, per row, the number of tokens reused from the store.

    Raises:
      InputError: a donated or used state, a prompt count other than the batch, an empty
        prompt, an id outside ``[0, vocab_size)``, or a remainder that does not fit ``bucket``,
        ``max_input_len`` or the KV capacity; all checked before anything is donated.
    """
    where = "prefill_with_prefixes"
    steps.check_live(state, where)
    cfg = engine.config
    if len(prompts) != state.batch:
        raise InputError(
            f"{where}: len(prompts)={len(prompts)} (expected the state's batch {state.batch})"
        )
    if any(len(p) == 0 for p in prompts):
        raise InputError(f"{where}: an empty prompt (expected >= 1 token per row)")
    for row, p in enumerate(prompts):
        steps.check_token_ids(p, cfg.model.vocab_size, f"{where}: prompts[{row}]")
    held = host.recall(state.kv.lengths)
    if held.any():
        raise InputError(
            f"{where}: the state holds lengths {held.tolist()} (expected a fresh state, all 0); "
            "use create_state(config, batch)"
        )
    lora_names = [None] * len(prompts) if lora_names is None else list(lora_names)
    if len(lora_names) != len(prompts):
        raise InputError(
            f"{where}: len(lora_names)={len(lora_names)} (expected one per prompt, "
            f"{len(prompts)}); use None for rows without an adapter"
        )
    found = [store.lookup(p, n) for p, n in zip(prompts, lora_names, strict=True)]
    rest = [len(p) - n for p, (_, n) in zip(prompts, found, strict=True)]
    width = bucket or max(rest)
    limit = min(cfg.max_input_len, cfg.kv_capacity)
    for row, ((_, n), r) in enumerate(zip(found, rest, strict=True)):
        if r > width or width > cfg.max_input_len or n + width > cfg.kv_capacity:
            raise InputError(
                f"{where}: row {row} reuses {n} tokens and prefills {r} padded to bucket={width} "
                f"(expected {r} <= bucket <= max_input_len={cfg.max_input_len} and {n} + bucket "
                f"<= kv capacity={cfg.kv_capacity}); pass a bucket in [{r}, {limit - n}]"
            )
    reused = []
    for row, (entry, n) in enumerate(found):
        if entry is not None:
            state = restore_prefix(state, row, entry, used=n)
        reused.append(n)
    ids, _ = pad_prompts([list(p[n:]) for p, n in zip(prompts, reused, strict=True)], width)
    lengths = np.array([len(p) for p in prompts])
    state = steps.prefill(engine, state, steps.embed(engine, ids), lengths, append=True)
    return state, reused
