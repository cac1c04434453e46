"""Pure speculative-decoding steps (EAGLE3, greedy): the bodies the loops compose.

One round, every shape fixed by the ``SpecDecodeConfig`` (K, steps, V; P = (steps-1)K,
A = steps+1)::

    propose       draft x (steps-1), profile 1: expand the best K nodes per level (top-K children
                  each), then keep the best V-1 of all N candidates -> tree tokens, packed mask
    verify_tree   base, profile 1: the V tree tokens in slots L..L+V-1, logits + features
    accept        greedy walk -> n accepted (bonus included); commit their KV into L..L+n-1
                  (``ffi.commit_kv``: one call for every layer, in place); L += n
    draft_accept  draft, profile 1: the A accepted tokens with their base features -> the next
                  round's level-1 logits; draft L += n

Positions: the root (the last accepted token, not yet in the base cache) sits at position L; a
node at depth d at L + d. The draft's entry at position p pairs the base feature of p with the
token of p + 1, so the draft consumes a depth-d node at position L + d - 1.

Rows that are not ``live`` keep their lengths and tokens (their engine work is discarded).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from ..dims import accept_dims, prefill_dims, proposal_dims, verify_dims
from ..engine.tensor_map import (
    build_tensor_map_for_spec_decode,
    build_tensor_map_for_spec_decode_draft,
)
from ..ffi.kv_commit import commit_kv
from ..models.tree import pack_mask
from ..state.resources import RuntimeState
from . import spec_tree
from .steps import embed

PAD = -1


def _replace_spec(state: RuntimeState, **changes) -> RuntimeState:
    io = dataclasses.replace(state.io, spec=dataclasses.replace(state.io.spec, **changes))
    return dataclasses.replace(state, io=io)


def _with_kv(state: RuntimeState, outputs, *, draft: bool, lengths=None) -> RuntimeState:
    kv = state.res.draft_kv if draft else state.res.kv
    n = len(kv.k)
    kv = dataclasses.replace(
        kv,
        k=tuple(outputs[f"present_key_{i}"] for i in range(n)),
        v=tuple(outputs[f"present_value_{i}"] for i in range(n)),
        lengths=kv.lengths if lengths is None else lengths,
    )
    res = dataclasses.replace(state.res, **{"draft_kv" if draft else "kv": kv})
    return dataclasses.replace(state, res=res)


def _prefill_map(res, kv, x, lengths, extra=None) -> dict[str, jax.Array]:
    b = x.shape[0]
    tensors = {
        "inputs_embeds": x,
        "context_lengths": lengths,
        "kvcache_start_index": jnp.zeros((0,), jnp.int32),
        "rope_rotary_cos_sin": res.rope,
        "last_token_ids": (lengths - 1)[:, None],
        "attention_mask": jnp.ones((b, 1, 1), jnp.int32),
        "attention_pos_id": jnp.zeros((b, 1), jnp.int32),
        **(extra or {}),
    }
    for i, (k, v) in enumerate(zip(kv.k, kv.v, strict=True)):
        tensors[f"past_key_{i}"], tensors[f"past_value_{i}"] = k, v
    return tensors


def spec_prefill_step(
    base, draft, state: RuntimeState, ids: jax.Array, lengths: jax.Array
) -> RuntimeState:
    """Base prefill (with features), the greedy first token (the root), then the draft prefill.

    Args:
      ids: ``[B, S]`` int32 right-padded prompts; lengths: ``[B]`` int32 their lengths.

    Returns:
      The state with both caches holding the prompts, ``spec.root`` the first generated token,
      ``spec.root_logits``/``root_hidden`` the draft's level-1 logits and hidden state.
    """
    b, s = ids.shape
    cfg = base.config
    lengths = lengths.astype(jnp.int32)
    dims = prefill_dims(cfg, b, s, cache_empty=True)
    tensors = _prefill_map(state.res, state.res.kv, embed(base, ids), lengths)
    out = base.execute(base.prepare(0, dims, tensors))
    root = jnp.argmax(out["logits"], axis=-1).astype(jnp.int32)
    feats = out["hidden_states"].reshape(b, s, -1)
    rows = jnp.arange(b)
    shifted = jnp.concatenate([ids[:, 1:], jnp.zeros((b, 1), ids.dtype)], axis=1)
    shifted = shifted.at[rows, lengths - 1].set(root)
    d = state.io.spec.root_hidden
    extra = {
        "base_hidden_states": feats,
        "draft_hidden_states_in": jnp.zeros((b, s, d.shape[1]), d.dtype),
    }
    dmap = _prefill_map(state.res, state.res.draft_kv, embed(draft, shifted), lengths, extra)
    dout = draft.execute(draft.prepare(0, dims, dmap))
    state = _with_kv(state, out, draft=False, lengths=lengths)
    state = _with_kv(state, dout, draft=True, lengths=lengths)
    state = dataclasses.replace(
        state, io=dataclasses.replace(state.io, logits=out["logits"], tokens=root)
    )
    return _replace_spec(
        state,
        root=root,
        root_logits=dout["logits"],
        root_hidden=dout["draft_hidden_states_out"],
    )


def propose_step(draft, state: RuntimeState, bundle) -> RuntimeState:
    """Builds the draft tree and writes the verify tree into ``spec`` (tokens, parents, packed
    mask and positions of ``spec.verify``)."""
    sp, res = state.io.spec, state.res
    b, k, steps, p = state.batch, bundle.tree_topk, bundle.tree_steps, bundle.proposal_len
    cap = bundle.base.kv_capacity
    to_target = draft.draft_to_target
    dlen = res.draft_kv.lengths
    s1, i1 = jax.lax.top_k(jax.nn.log_softmax(sp.root_logits, axis=-1), k)
    scores, tokens, parents = [s1], [to_target[i1]], [jnp.full((b, k), -1, jnp.int32)]
    f_tok, f_score = to_target[i1], s1
    f_hid = jnp.broadcast_to(sp.root_hidden[:, None], (b, k, sp.root_hidden.shape[-1]))
    f_cand = jnp.broadcast_to(jnp.arange(k, dtype=jnp.int32), (b, k))
    slot_bits = jnp.eye(p, dtype=bool)  # [P, P] one tree slot each
    f_anc = jnp.broadcast_to(slot_bits[:k], (b, k, p))
    step = sp.proposal
    t_tok = jnp.zeros((b, p), jnp.int32)
    t_hid = jnp.zeros_like(step.draft_hidden)
    t_anc = jnp.zeros((b, p, p), bool)
    t_pos = jnp.zeros((b, p), jnp.int32)
    for d in range(1, steps):
        slots = (d - 1) * k + jnp.arange(k, dtype=jnp.int32)
        t_tok = t_tok.at[:, slots].set(f_tok)
        t_hid = t_hid.at[:, slots].set(f_hid.astype(t_hid.dtype))
        t_anc = t_anc.at[:, slots].set(f_anc)
        t_pos = t_pos.at[:, slots].set(jnp.broadcast_to(dlen[:, None] + d - 1, (b, k)))
        step = dataclasses.replace(
            step,
            inputs_embeds=embed(draft, t_tok).astype(step.inputs_embeds.dtype),
            draft_hidden=t_hid,
            attention_mask=pack_mask(t_anc),
            attention_pos_id=t_pos,
            start_index=dlen,
            context_lengths=jnp.minimum(dlen + p, cap),
            last_token_ids=jnp.broadcast_to(slots, (b, k)),
        )
        dims = proposal_dims(bundle.base, b, p, k)
        tensors = build_tensor_map_for_spec_decode_draft(step, res)
        out = draft.execute(draft.prepare(1, dims, tensors))
        res = _with_kv(dataclasses.replace(state, res=res), out, draft=True).res
        logp = jax.nn.log_softmax(out["logits"].reshape(b, k, -1), axis=-1)
        v, ix = jax.lax.top_k(logp, k)  # [B, K, K]
        cu = (f_score[:, :, None] + v).reshape(b, k * k)
        ctok = to_target[ix].reshape(b, k * k)
        scores.append(cu)
        tokens.append(ctok)
        parents.append(jnp.repeat(f_cand, k, axis=1))
        if d < steps - 1:
            hout = out["draft_hidden_states_out"].reshape(b, k, -1)
            f_score, q = jax.lax.top_k(cu, k)
            par = q // k
            f_tok = jnp.take_along_axis(ctok, q, axis=1)
            f_hid = jnp.take_along_axis(hout, par[:, :, None], axis=1)
            f_cand = (k + (d - 1) * k * k + q).astype(jnp.int32)
            f_anc = (
                jnp.take_along_axis(f_anc, par[:, :, None], axis=1) | slot_bits[d * k : (d + 1) * k]
            )
    tree_tokens, tree_parents = spec_tree.select_tree(
        jnp.concatenate(scores, 1),
        jnp.concatenate(tokens, 1).astype(jnp.int32),
        jnp.concatenate(parents, 1),
        sp.root,
        bundle.verify_size,
    )
    anc = spec_tree.ancestors(tree_parents, steps)
    depth = jnp.sum(anc, axis=-1, dtype=jnp.int32) - 1
    verify = dataclasses.replace(
        sp.verify,
        attention_mask=pack_mask(anc),
        attention_pos_id=state.kv.lengths[:, None] + depth,
    )
    state = dataclasses.replace(state, res=res)
    return _replace_spec(
        state, verify=verify, proposal=step, tree_tokens=tree_tokens, tree_parents=tree_parents
    )


def verify_tree_step(base, state: RuntimeState, bundle) -> RuntimeState:
    """One base step over the tree in ``spec`` (``tree_tokens`` and ``spec.verify``'s mask and
    positions): logits and features of every node; the tree's KV lands in slots L..L+V-1."""
    sp = state.io.spec
    b, v = state.batch, bundle.verify_size
    start = state.kv.lengths
    verify = dataclasses.replace(
        sp.verify,
        inputs_embeds=embed(base, sp.tree_tokens).astype(sp.verify.inputs_embeds.dtype),
        start_index=start,
        context_lengths=jnp.minimum(start + v, bundle.base.kv_capacity),
        last_token_ids=jnp.broadcast_to(jnp.arange(v, dtype=jnp.int32), (b, v)),
    )
    tensors = build_tensor_map_for_spec_decode(verify, state.res)
    out = base.execute(base.prepare(1, verify_dims(bundle.base, b, v), tensors))
    state = _with_kv(state, out, draft=False)
    return _replace_spec(
        state, verify=verify, verify_logits=out["logits"], verify_hidden=out["hidden_states"]
    )


def accept_step(
    base, draft, state: RuntimeState, bundle, live: jax.Array
) -> tuple[RuntimeState, jax.Array, jax.Array]:
    """Greedy acceptance, the KV commit, and the draft's catch-up on the accepted tokens.

    Args:
      live: ``[B]`` bool rows that take part (others keep lengths, root and caches' contents).

    Returns:
      ``(state, tokens [B, A], n [B])``: the accepted tokens (the bonus at ``n - 1``; 0 past
      it) and their count (0 for rows that are not live).
    """
    sp = state.io.spec
    b, v = state.batch, bundle.verify_size
    cap = bundle.base.kv_capacity
    start = state.kv.lengths
    argmax = jnp.argmax(sp.verify_logits.reshape(b, v, -1), axis=-1).astype(jnp.int32)
    valid = start[:, None] + jnp.arange(v, dtype=jnp.int32)[None, :] < cap
    path, n, tokens = spec_tree.greedy_accept(
        sp.tree_tokens, sp.tree_parents, argmax, valid, bundle.tree_steps
    )
    n = jnp.where(live, n, 0)
    kv = state.kv
    moved = commit_kv((*kv.k, *kv.v), start, path, n)  # every layer in one call, in place
    layers = len(kv.k)
    kv = dataclasses.replace(kv, k=moved[:layers], v=moved[layers:], lengths=start + n)
    state = dataclasses.replace(state, res=dataclasses.replace(state.res, kv=kv))
    state = draft_accept_step(draft, state, bundle, path, n, tokens)
    bonus = jnp.take_along_axis(tokens, jnp.maximum(n - 1, 0)[:, None], axis=1)[:, 0]
    state = _replace_spec(
        state,
        root=jnp.where(live, bonus, sp.root),
        accepted=n,
        rounds=sp.rounds + live.astype(jnp.int32),
        accepted_total=sp.accepted_total + n,
    )
    return state, tokens, n


def draft_accept_step(
    draft, state: RuntimeState, bundle, path: jax.Array, n: jax.Array, tokens: jax.Array
) -> RuntimeState:
    """The draft over the ``n`` accepted tokens (positions L..L+n-1 pair each base feature with
    the next token); its last output gives the next round's level-1 logits."""
    sp = state.io.spec
    b, a, v = state.batch, bundle.accept_len, bundle.verify_size
    start = state.res.draft_kv.lengths
    feats = jnp.take_along_axis(sp.verify_hidden.reshape(b, v, -1), path[:, :, None], axis=1)
    bits = jnp.broadcast_to(spec_tree.causal_bits(a), (b, a, a))
    step = dataclasses.replace(
        sp.accept,
        inputs_embeds=embed(draft, tokens).astype(sp.accept.inputs_embeds.dtype),
        base_hidden=feats.astype(sp.accept.base_hidden.dtype),
        start_index=start,
        context_lengths=jnp.minimum(start + n, bundle.base.kv_capacity),
        last_token_ids=jnp.maximum(n - 1, 0)[:, None],
        attention_mask=pack_mask(bits),
        attention_pos_id=start[:, None] + jnp.arange(a, dtype=jnp.int32)[None, :],
    )
    tensors = build_tensor_map_for_spec_decode_draft(step, state.res)
    out = draft.execute(draft.prepare(1, accept_dims(bundle.base, b, a), tensors))
    state = _with_kv(state, out, draft=True, lengths=start + n)
    live = (n > 0)[:, None]
    return _replace_spec(
        state,
        accept=step,
        root_logits=jnp.where(live, out["logits"], sp.root_logits),
        root_hidden=jnp.where(live, out["draft_hidden_states_out"], sp.root_hidden),
    )


def _is_eos(tokens: jax.Array, eos_ids: tuple[int, ...]) -> jax.Array:
    if not eos_ids:
        return jnp.zeros(tokens.shape, bool)
    return jnp.isin(tokens, jnp.asarray(eos_ids, jnp.int32))


def spec_round(
    base, draft, state: RuntimeState, stop: jax.Array, bundle, eos_ids: tuple[int, ...]
) -> tuple[RuntimeState, jax.Array]:
    """One full round plus the stop checks (EOS, each row's token limit, the host's ``stop``).

    Returns:
      ``(state, emitted [B, A])``: the tokens each row gives this round (``PAD`` elsewhere);
      ``state.io.num_tokens``/``active``/``hit_eos`` are updated.
    """
    io = state.io
    live = io.active & ~stop
    state = propose_step(draft, state, bundle)
    state = verify_tree_step(base, state, bundle)
    state, tokens, n = accept_step(base, draft, state, bundle, live)
    io = state.io
    k = jnp.arange(bundle.accept_len, dtype=jnp.int32)[None, :]
    take = (k < n[:, None]) & (k < (io.limits - io.num_tokens)[:, None])
    eos = _is_eos(tokens, eos_ids) & take
    before = jnp.cumsum(eos.astype(jnp.int32), axis=1) - eos.astype(jnp.int32)
    take = take & (before == 0)
    hit = jnp.any(eos & take, axis=1)
    count = io.num_tokens + jnp.sum(take.astype(jnp.int32), axis=1)
    io = dataclasses.replace(
        io,
        num_tokens=count,
        hit_eos=io.hit_eos | hit,
        active=live & ~hit & (count < io.limits),
        tokens=io.spec.root,
    )
    return dataclasses.replace(state, io=io), jnp.where(take, tokens, PAD)


def spec_begin(state: RuntimeState, limits: jax.Array, eos_ids: tuple[int, ...]) -> RuntimeState:
    """Writes one request's limits and emits the root (the prefill's greedy token) as token 0."""
    b = state.batch
    root = state.io.spec.root
    first = limits > 0
    eos = first & _is_eos(root, eos_ids)
    count = first.astype(jnp.int32)
    zeros = jnp.zeros((b,), jnp.int32)
    io = dataclasses.replace(
        state.io,
        limits=limits,
        num_tokens=count,
        hit_eos=eos,
        active=first & ~eos & (count < limits),
        tokens=jnp.where(first, root, PAD),
        spec=dataclasses.replace(state.io.spec, accepted=zeros, rounds=zeros, accepted_total=zeros),
    )
    return dataclasses.replace(state, io=io)
