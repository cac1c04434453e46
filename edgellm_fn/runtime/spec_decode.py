"""EAGLE3 speculative decoding (greedy): host-checked steps and the two loops.

Both loops run the same jitted round (``spec_steps.spec_round``: propose -> verify_tree ->
accept -> draft accept, in ONE donated executable), so they give identical tokens, equal to
vanilla greedy decoding::

    bundle = SpecDecodeConfig(base=cfg, draft=dims, tree_topk=4, tree_steps=4, verify_size=16, ...)
    state = create_spec_state(bundle, batch=2)
    state = spec_prefill(base, draft, state, ids, lengths)    # first token: state.io.spec.root
    state, res = spec_decode_while(base, draft, state, limits, eos_ids=(2,), max_new_tokens=64)

``spec_decode_while`` is ONE ``lax.while_loop`` over rounds (no host round trip);
``spec_decode_python`` loops over the jitted round on the host (streaming, stop strings),
reading each round's packed result one round behind. Static (changing them recompiles): the
bundle (tree shape, limits), the EOS ids, ``step_bucket(max_new_tokens)`` and the prompt width.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ..errors import InputError
from ..models.tree import packed_width
from ..state import host
from ..state.io import PipelineIO
from ..state.resources import RuntimeState, SharedResources
from . import spec_steps
from .loops import step_bucket
from .steps import check_live

PAD = spec_steps.PAD


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True, kw_only=True)
class SpecResult:
    """Generated tokens of every row (``PAD`` after a row stops) and acceptance figures.

    Attributes:
      tokens: ``[B, T]`` int32 generated ids (``T = step_bucket(max_new_tokens)``).
      num_tokens: ``[B]`` int32 generated tokens per row.
      hit_eos: ``[B]`` bool the row ended on an EOS id.
      rounds: ``[B]`` int32 verify rounds each row took part in.
      accepted: ``[B]`` int32 tokens those rounds accepted (bonus tokens included).
    """

    tokens: jax.Array
    num_tokens: jax.Array
    hit_eos: jax.Array
    rounds: jax.Array
    accepted: jax.Array

    def mean_accepted(self) -> float:
        """Mean accepted tokens per base verify step over all rows (bonus included)."""
        rounds = int(np.sum(np.asarray(self.rounds)))
        return float(np.sum(np.asarray(self.accepted))) / rounds if rounds else 0.0


def create_spec_state(bundle, batch: int) -> RuntimeState:
    """A ``RuntimeState`` with both KV caches, one RoPE table and the spec-decode buffers.

    Raises:
      InputError: ``batch`` outside ``1..max_batch_size``.
    """
    cfg = bundle.base
    if not isinstance(batch, int) or not 1 <= batch <= cfg.max_batch_size:
        raise InputError(
            f"create_spec_state: batch={batch!r} (expected 1..max_batch_size={cfg.max_batch_size})"
        )
    state = RuntimeState(
        io=PipelineIO.create_for_spec_decode(bundle, batch),
        res=SharedResources.create_for_spec_decode(bundle, batch),
    )
    host.remember(state.kv.lengths, np.zeros(batch, np.int64))
    return state


def check_pair(base, draft) -> None:
    """Refuses a base/draft pair built for different bundles, before anything is donated."""
    if getattr(base, "bundle", None) is None or getattr(draft, "bundle", None) is None:
        raise InputError(
            "spec decode: base and draft must be spec-decode engines (load_spec_engines or "
            "XlaSpecBaseEngine/XlaDraftEngine); a vanilla engine has no hidden_states output"
        )
    if base.bundle != draft.bundle:
        raise InputError(
            "spec decode: the base and the draft were built for different SpecDecodeConfigs "
            f"(base {base.bundle.draft}, tree {base.bundle.tree_topk}x{base.bundle.tree_steps}; "
            f"draft {draft.bundle.draft}, tree {draft.bundle.tree_topk}x"
            f"{draft.bundle.tree_steps}); build both from one bundle"
        )


def _check_state(base, state: RuntimeState, where: str) -> None:
    check_live(state, where)
    spec = state.io.spec
    if spec is None or state.res.draft_kv is None:
        raise InputError(
            f"{where}: state has no spec-decode buffers; use create_spec_state(bundle, b)"
        )
    if spec.tree_tokens.shape[1] != base.bundle.verify_size:
        raise InputError(
            f"{where}: state was made for verify_size={spec.tree_tokens.shape[1]} (expected "
            f"{base.bundle.verify_size} of the engines' bundle); create_spec_state(bundle, b)"
        )


# Static: the engines' configs (pytree structure). Dynamic: state, ids, lengths.
_prefill_jit = jax.jit(spec_steps.spec_prefill_step, donate_argnames=("state",), keep_unused=True)


def spec_prefill(base, draft, state: RuntimeState, ids, lengths) -> RuntimeState:
    """Prefills both engines with right-padded prompts and takes the greedy first token.

    Args:
      ids: ``[B, S]`` int token ids, ``S <= max_input_len``; lengths: ``[B]`` prompt lengths.

    Raises:
      InputError: bad shapes or lengths, or a state/engine mismatch, before donation.
    """
    check_pair(base, draft)
    _check_state(base, state, "spec_prefill")
    cfg = base.config
    ids = np.asarray(ids)
    lengths = np.asarray(lengths)
    b = state.batch
    if ids.ndim != 2 or ids.shape[0] != b or not np.issubdtype(ids.dtype, np.integer):
        raise InputError(f"spec_prefill: ids has shape {list(ids.shape)} (expected [{b}, S] ints)")
    s = ids.shape[1]
    if not 1 <= s <= cfg.max_input_len:
        raise InputError(
            f"spec_prefill: ids has S={s} tokens (expected 1..max_input_len={cfg.max_input_len})"
        )
    if lengths.shape != (b,) or lengths.min() < 1 or lengths.max() > s:
        raise InputError(
            f"spec_prefill: lengths={lengths.tolist()} (expected [{b}] values in 1..S={s})"
        )
    if ids.min() < 0 or ids.max() >= cfg.model.vocab_size:
        raise InputError(
            f"spec_prefill: token ids span [{ids.min()}, {ids.max()}] (expected 0..vocab_size-1="
            f"{cfg.model.vocab_size - 1})"
        )
    new = _prefill_jit(base, draft, state, jnp.asarray(ids, jnp.int32), jnp.asarray(lengths))
    host.remember(new.kv.lengths, lengths)
    return new


def _begin(base, state, limits, max_new_tokens, eos, where) -> RuntimeState:
    check_live(state, where)
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise InputError(f"{where}: max_new_tokens={max_new_tokens!r} (expected an int >= 1)")
    limits = np.minimum(np.asarray(limits, np.int32), max_new_tokens)
    if limits.shape != (state.batch,):
        raise InputError(
            f"{where}: limits has shape {list(limits.shape)} (expected [{state.batch}]); use "
            "token_limits(base, prompt_lengths, max_new_tokens)"
        )
    lengths = host.recall(state.kv.lengths)
    cap = base.config.kv_capacity
    over = np.flatnonzero(lengths + limits - 1 > cap)
    if over.size:
        r = int(over[0])
        raise InputError(
            f"{where}: row {r} holds {int(lengths[r])} tokens and may generate {int(limits[r])} "
            f"(expected <= kv capacity={cap} in all); clamp with token_limits()"
        )
    return _begin_jit(state, jnp.asarray(limits), eos)


_begin_jit = jax.jit(
    spec_steps.spec_begin, static_argnames=("eos_ids",), donate_argnames=("state",)
)


def _loop(base, draft, state, bundle, eos_ids, width):
    b, a = state.batch, bundle.accept_len
    rows = jnp.arange(b, dtype=jnp.int32)[:, None]
    first = state.io.tokens
    tokens = jnp.full((b, width), PAD, jnp.int32).at[:, 0].set(first)
    no_stop = jnp.zeros((b,), bool)

    def cond(carry):
        state, _, t = carry
        return (t < width) & jnp.any(state.io.active)

    def body(carry):
        state, tokens, t = carry
        before = state.io.num_tokens
        state, emitted = spec_steps.spec_round(base, draft, state, no_stop, bundle, eos_ids)
        cols = before[:, None] + jnp.arange(a, dtype=jnp.int32)[None, :]
        cols = jnp.where(emitted != PAD, cols, width)
        return state, tokens.at[rows, cols].set(emitted, mode="drop"), t + 1

    state, tokens, _ = jax.lax.while_loop(cond, body, (state, tokens, jnp.int32(0)))
    io = state.io
    return state, SpecResult(
        tokens=tokens,
        num_tokens=io.num_tokens,
        hit_eos=io.hit_eos,
        rounds=io.spec.rounds,
        accepted=io.spec.accepted_total,
    )


# Static (changing them recompiles): bundle, eos_ids, width, the engines' configs.
_loop_jit = jax.jit(
    _loop,
    static_argnames=("bundle", "eos_ids", "width"),
    donate_argnames=("state",),
    keep_unused=True,
)


def spec_decode_while(
    base, draft, state: RuntimeState, limits, *, eos_ids: Sequence[int], max_new_tokens: int
) -> tuple[RuntimeState, SpecResult]:
    """Generates up to ``max_new_tokens`` per row (the prefill's token first) in ONE jitted
    ``lax.while_loop`` over spec rounds.

    Args:
      state: after ``spec_prefill`` (donated).
      limits: ``[B]`` tokens per row (``loops.token_limits(base, prompt_lengths, n)``).

    Raises:
      InputError: as ``spec_prefill``; limits past the KV capacity.
    """
    check_pair(base, draft)
    _check_state(base, state, "spec_decode_while")
    eos = tuple(sorted({int(e) for e in eos_ids}))
    state = _begin(base, state, limits, max_new_tokens, eos, "spec_decode_while")
    width = step_bucket(max_new_tokens)
    state, res = _loop_jit(base, draft, state, bundle=base.bundle, eos_ids=eos, width=width)
    host.remember(state.kv.lengths, None)
    return state, res


def _python_round(base, draft, state, stop, bundle, eos_ids):
    """``spec_round`` plus what the host reads, in ONE int32 array ``[B, A + 2]``: emitted
    tokens (``PAD`` where none), still active, accepted count."""
    state, emitted = spec_steps.spec_round(base, draft, state, stop, bundle, eos_ids)
    extra = jnp.stack([state.io.active.astype(jnp.int32), state.io.spec.accepted], axis=1)
    return state, jnp.concatenate([emitted, extra], axis=1)


_python_round_jit = jax.jit(
    _python_round,
    static_argnames=("bundle", "eos_ids"),
    donate_argnames=("state",),
    keep_unused=True,
)


def spec_decode_python(
    base,
    draft,
    state: RuntimeState,
    limits,
    *,
    eos_ids: Sequence[int],
    max_new_tokens: int,
    on_token: Callable[[int, int], None] | None = None,
    should_stop: Callable[[int, int], bool] | None = None,
) -> tuple[RuntimeState, SpecResult]:
    """A Python loop over the jitted round; streams tokens as rounds finish.

    Args:
      on_token: ``on_token(row, token)`` per generated token.
      should_stop: ``should_stop(row, token) -> bool`` (stop strings); a stopped row takes no
        part from the round after next (tokens it gives meanwhile are dropped).

    Returns:
      The final state and a numpy ``SpecResult`` (the same as ``spec_decode_while``'s for rows
      the host did not stop).
    """
    check_pair(base, draft)
    _check_state(base, state, "spec_decode_python")
    eos = tuple(sorted({int(e) for e in eos_ids}))
    state = _begin(base, state, limits, max_new_tokens, eos, "spec_decode_python")
    b, width = state.batch, step_bucket(max_new_tokens)
    a = base.bundle.accept_len
    tokens = np.full((b, width), PAD, np.int32)
    count = np.zeros(b, np.int32)
    rounds = np.zeros(b, np.int32)
    accepted = np.zeros(b, np.int32)
    hit = np.zeros(b, bool)
    done = np.zeros(b, bool)
    stopped = np.zeros(b, bool)
    eos_set = set(eos)

    def record(row: int, tok: int) -> bool:
        tokens[row, count[row]] = tok
        count[row] += 1
        hit[row] = tok in eos_set
        if on_token is not None:
            on_token(row, tok)
        return should_stop is not None and should_stop(row, tok)

    first = np.asarray(state.io.tokens)
    active = np.asarray(state.io.active)
    for r in range(b):
        if first[r] != PAD and record(r, int(first[r])):
            stopped[r] = True
    done |= ~active | stopped
    stop_dev = jax.device_put(stopped)
    pending = None
    for _ in range(width + 1):
        packed = None
        if not done.all():
            state, packed = _python_round_jit(
                base, draft, state, stop_dev, bundle=base.bundle, eos_ids=eos
            )
            packed.copy_to_host_async()
        if pending is not None:  # read round t-1 while round t runs
            host_packed = np.asarray(pending)
            newly = False
            for r in np.flatnonzero(~done):
                row = host_packed[r]
                got = [int(t) for t in row[:a] if t != PAD]
                if got:
                    rounds[r] += 1
                    accepted[r] += int(row[a + 1])
                for tok in got:
                    if record(int(r), tok):
                        done[r] = stopped[r] = newly = True
                        break
                if not row[a]:
                    done[r] = True
            if newly:
                stop_dev = jax.device_put(stopped)
        if packed is None:
            break
        pending = packed
    host.remember(state.kv.lengths, None)
    return state, SpecResult(
        tokens=tokens, num_tokens=count, hit_eos=hit, rounds=rounds, accepted=accepted
    )


def check_tree_inputs(bundle, batch: int, tree_tokens, attention_mask, attention_pos_id) -> None:
    """Refuses a hand-made verify tree of the wrong shape or dtype (before donation)."""
    v = bundle.verify_size
    want = {
        "tree_tokens": (tree_tokens, (batch, v)),
        "attention_mask": (attention_mask, (batch, v, packed_width(v))),
        "attention_pos_id": (attention_pos_id, (batch, v)),
    }
    for name, (x, shape) in want.items():
        got = tuple(getattr(x, "shape", ()))
        if got != shape or not jnp.issubdtype(getattr(x, "dtype", np.float32), jnp.integer):
            raise InputError(
                f"verify_tree: {name} has shape {list(got)} {getattr(x, 'dtype', type(x))} "
                f"(expected int32 {list(shape)} for verify_size={v}, max_verify_tree_size="
                f"{bundle.max_verify_tree_size}; the mask is [B, V, ceil(V/32)])"
            )


def _set_tree(state, tree_tokens, tree_parents, attention_mask, attention_pos_id):
    sp = state.io.spec
    verify = dataclasses.replace(
        sp.verify, attention_mask=attention_mask, attention_pos_id=attention_pos_id
    )
    spec = dataclasses.replace(
        sp, verify=verify, tree_tokens=tree_tokens, tree_parents=tree_parents
    )
    return dataclasses.replace(state, io=dataclasses.replace(state.io, spec=spec))


def _verify_given(base, state, tree_tokens, tree_parents, mask, pos, bundle):
    state = _set_tree(state, tree_tokens, tree_parents, mask, pos)
    return spec_steps.verify_tree_step(base, state, bundle)


_propose_jit = jax.jit(
    spec_steps.propose_step, static_argnames=("bundle",), donate_argnames=("state",)
)
_verify_jit = jax.jit(
    spec_steps.verify_tree_step, static_argnames=("bundle",), donate_argnames=("state",)
)
_verify_given_jit = jax.jit(_verify_given, static_argnames=("bundle",), donate_argnames=("state",))


def _accept(base, draft, state, live, bundle):
    return spec_steps.accept_step(base, draft, state, bundle, live)


_accept_jit = jax.jit(_accept, static_argnames=("bundle",), donate_argnames=("state",))


def propose(draft, state: RuntimeState) -> RuntimeState:
    """The draft's tree for every row: ``spec.tree_tokens``/``tree_parents`` and the verify
    step's packed mask and positions (``spec.verify``)."""
    _check_state(draft, state, "propose")
    return _propose_jit(draft, state, bundle=draft.bundle)


def verify_tree(
    base,
    state: RuntimeState,
    tree_tokens=None,
    tree_parents=None,
    attention_mask=None,
    attention_pos_id=None,
) -> RuntimeState:
    """One base step over the verify tree: ``spec.verify_logits`` ``[B * V, vocab]`` and
    ``spec.verify_hidden`` ``[B * V, 3H]``; the tree's KV lands in slots ``L .. L + V - 1``.

    Args:
      tree_tokens, tree_parents: ``[B, V]`` int32, attention_mask: ``[B, V, ceil(V/32)]``
        int32, attention_pos_id: ``[B, V]`` int32: a hand-made tree (all four, or none to
        verify what ``propose`` wrote).

    Raises:
      InputError: a tree of the wrong shape (e.g. larger than the built verify size), before
        anything is donated.
    """
    _check_state(base, state, "verify_tree")
    given = (tree_tokens, tree_parents, attention_mask, attention_pos_id)
    if all(x is None for x in given):
        return _verify_jit(base, state, bundle=base.bundle)
    if any(x is None for x in given):
        raise InputError(
            "verify_tree: pass all of tree_tokens, tree_parents, attention_mask and "
            "attention_pos_id, or none of them"
        )
    check_tree_inputs(base.bundle, state.batch, tree_tokens, attention_mask, attention_pos_id)
    check_tree_inputs(base.bundle, state.batch, tree_parents, attention_mask, attention_pos_id)
    args = [jnp.asarray(x, jnp.int32) for x in given]
    return _verify_given_jit(base, state, *args, bundle=base.bundle)


def accept(
    base, draft, state: RuntimeState, live=None
) -> tuple[RuntimeState, jax.Array, jax.Array]:
    """Greedy acceptance of the verified tree, the KV commit of the accepted path (one program
    over every layer) and the draft's catch-up.

    Args:
      live: ``[B]`` bool rows that accept (default all); the others keep their lengths.

    Returns:
      ``(state, tokens [B, A], n [B])``: accepted tokens (the bonus at ``n - 1``) and counts.
    """
    check_pair(base, draft)
    _check_state(base, state, "accept")
    live = np.ones(state.batch, bool) if live is None else np.asarray(live, bool)
    if live.shape != (state.batch,):
        raise InputError(f"accept: live has shape {list(live.shape)} (expected [{state.batch}])")
    return _accept_jit(base, draft, state, jnp.asarray(live), bundle=base.bundle)
