"""Pure, fixed-shape pieces of EAGLE tree speculation: tree selection, greedy acceptance and the
KV commit of the accepted path. Every function works on whole batches (rows are independent).

Candidates: the draft proposes ``N = K + (steps-1) K^2`` nodes per row, each with a cumulative
log-probability, a token and a parent candidate (``-1``: the root). Level 1 holds candidates
``0..K-1``; level ``d >= 2`` holds ``K + (d-2) K^2 + p K + c`` (child ``c`` of frontier node
``p``). A child's score never exceeds its parent's and its index is larger, so the best
``V - 1`` candidates (ties broken by the lower index, as ``lax.top_k``) always include every
selected node's parent: sorted by index they form a tree whose parents precede children::

    node:     0     1    2    3    4          parents: [0, 0, 0, 1, 3]
    token:   root   a    b    a.x  a.x.y      ancestors of 4 (bits): 0, 1, 3, 4
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def select_tree(
    scores: jax.Array, tokens: jax.Array, parents: jax.Array, root: jax.Array, verify_size: int
) -> tuple[jax.Array, jax.Array]:
    """The verify tree: the root plus the best ``verify_size - 1`` candidates.

    Args:
      scores: ``[B, N]`` float32 cumulative log-probabilities.
      tokens: ``[B, N]`` int32 target ids.
      parents: ``[B, N]`` int32 parent candidate of each candidate (``-1``: the root).
      root: ``[B]`` int32 the root token.
      verify_size: V, static.

    Returns:
      ``(tree_tokens [B, V], tree_parents [B, V])``; node 0 is the root (its parent is 0).
    """
    _, picked = jax.lax.top_k(scores, verify_size - 1)
    picked = jnp.sort(picked, axis=-1)
    tok = jnp.take_along_axis(tokens, picked, axis=1)
    pc = jnp.take_along_axis(parents, picked, axis=1)
    found = jax.vmap(jnp.searchsorted)(picked, jnp.maximum(pc, 0))
    pnode = jnp.where(pc < 0, 0, 1 + found).astype(jnp.int32)
    b = scores.shape[0]
    zero = jnp.zeros((b, 1), jnp.int32)
    return jnp.concatenate([root[:, None].astype(jnp.int32), tok], 1), jnp.concatenate(
        [zero, pnode], 1
    )


def ancestors(parents: jax.Array, depth: int) -> jax.Array:
    """``[B, V, V]`` bool: node ``i`` sees node ``j`` (``j`` is ``i`` or an ancestor of it).

    ``parents`` ``[B, V]`` (parents precede children; the root's parent is itself); ``depth`` is
    a static bound on the tree depth.
    """
    v = parents.shape[1]
    eye = jnp.eye(v, dtype=bool)[None]
    anc = jnp.broadcast_to(eye, (parents.shape[0], v, v))
    for _ in range(depth):
        anc = eye | jnp.take_along_axis(anc, parents[:, :, None], axis=1)
    return anc


def greedy_accept(
    tree_tokens: jax.Array,
    tree_parents: jax.Array,
    base_argmax: jax.Array,
    valid: jax.Array,
    depth: int,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Walks the tree from the root while a child's token equals the base's argmax.

    Args:
      tree_tokens, tree_parents: ``[B, V]`` int32 (``select_tree``).
      base_argmax: ``[B, V]`` int32 the base's greedy token after each node.
      valid: ``[B, V]`` bool nodes that may be accepted (their KV slot exists).
      depth: static bound on the tree depth.

    Returns:
      ``(path [B, depth+1], n [B], tokens [B, depth+1])``: the accepted nodes (the root
      first; entries past ``n`` are 0), how many (>= 1, the root), and the tokens they emit
      (``tokens[k]`` is the base's argmax after ``path[k]``: the accepted draft tokens, then
      the bonus token at ``n - 1``; entries past ``n`` are 0).
    """
    b, v = tree_tokens.shape
    node = jnp.arange(v, dtype=jnp.int32)[None, :]
    cur = jnp.zeros((b,), jnp.int32)
    walking = jnp.ones((b,), bool)
    path = [cur]
    for _ in range(depth):
        want = jnp.take_along_axis(base_argmax, cur[:, None], axis=1)
        match = (tree_parents == cur[:, None]) & (tree_tokens == want) & valid & (node > 0)
        walking = walking & jnp.any(match, axis=1)
        cur = jnp.where(walking, jnp.argmax(match, axis=1).astype(jnp.int32), cur)
        path.append(jnp.where(walking, cur, 0))
    path = jnp.stack(path, axis=1)
    k = jnp.arange(depth + 1, dtype=jnp.int32)[None, :]
    n = 1 + jnp.sum((path[:, 1:] > 0).astype(jnp.int32), axis=1)
    tokens = jnp.where(k < n[:, None], jnp.take_along_axis(base_argmax, path, axis=1), 0)
    return path, n, tokens


def commit_kv_ref(
    caches: tuple[jax.Array, ...], start: jax.Array, path: jax.Array, n: jax.Array
) -> tuple[jax.Array, ...]:
    """Moves the accepted path's KV into contiguous slots, every layer in one program.

    For each row ``b`` and ``k < n[b]``: slot ``start[b] + k`` of every cache ``[B, H, C, D]``
    takes the entry of slot ``start[b] + path[b, k]`` (``path`` is increasing and ``path[k] >=
    k``, so all reads happen before any write). Slots past ``start + n`` are untouched.

    Args:
      caches: k and v arrays of every layer (donate them to update in place).
      start: ``[B]`` int32 first tree slot (the committed length before the round).
      path: ``[B, A]`` int32 accepted tree nodes (``greedy_accept``).
      n: ``[B]`` int32 accepted count (0 moves nothing).
    """
    b, a = path.shape
    cap = caches[0].shape[2]
    rows = jnp.arange(b, dtype=jnp.int32)[:, None]
    src = jnp.clip(start[:, None] + path, 0, cap - 1)
    k = jnp.arange(a, dtype=jnp.int32)[None, :]
    dst = start[:, None] + k
    dst = jnp.where((k < n[:, None]) & (dst < cap), dst, cap)  # cap: out of range, dropped
    return tuple(c.at[rows, :, dst].set(c[rows, :, src], mode="drop") for c in caches)


def causal_bits(n: int) -> jax.Array:
    """``[n, n]`` bool lower-triangular mask (a chain: token ``i`` sees ``0..i``)."""
    return jnp.tril(jnp.ones((n, n), bool))
