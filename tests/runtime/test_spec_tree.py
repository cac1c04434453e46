"""Tree pieces of speculative decoding, checked by hand on small trees: mask packing, the tree
attention mask, tree selection, greedy acceptance and the KV commit."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from edgellm_fn.models.tree import pack_mask, tree_attention_mask, unpack_mask
from edgellm_fn.runtime import spec_tree

# The tree of the module docstring: root -> a, b; a -> a.x; a.x -> a.x.y.
PARENTS = np.array([[0, 0, 0, 1, 3]], np.int32)
ANCESTOR_WORDS = [0b1, 0b11, 0b101, 0b1011, 0b11011]


def test_ancestors_and_packed_words_of_a_small_tree():
    anc = spec_tree.ancestors(jnp.asarray(PARENTS), depth=3)
    expected = np.zeros((5, 5), bool)
    for i, word in enumerate(ANCESTOR_WORDS):
        expected[i] = [(word >> j) & 1 for j in range(5)]
    np.testing.assert_array_equal(np.asarray(anc[0]), expected)
    packed = pack_mask(anc)
    assert packed.shape == (1, 5, 1) and packed.dtype == jnp.int32
    np.testing.assert_array_equal(np.asarray(packed)[0, :, 0], ANCESTOR_WORDS)


def test_pack_unpack_round_trip_across_words_and_the_sign_bit(rng):
    bits = rng.rand(2, 7, 70) < 0.5
    bits[0, 0, 31] = bits[1, 3, 63] = True  # the sign bit of word 0 and word 1
    packed = pack_mask(jnp.asarray(bits))
    assert packed.shape == (2, 7, 3)
    np.testing.assert_array_equal(np.asarray(unpack_mask(packed, 70)), bits)
    assert int(np.asarray(packed)[0, 0, 0]) < 0  # bit 31 set: a negative int32


def test_tree_attention_mask_sees_committed_slots_and_ancestors_only():
    # Row: 2 committed slots, then the 5-node tree in slots 2..6, capacity 9.
    packed = jnp.asarray(np.array(ANCESTOR_WORDS, np.int32)[None, :, None])
    start = jnp.array([2], jnp.int32)
    positions = jnp.array([[2, 3, 3, 4, 5]], jnp.int32)
    mask = np.asarray(tree_attention_mask(start, packed, positions, start + 5, 9))
    assert mask.shape == (1, 5, 9)
    np.testing.assert_array_equal(mask[0, 4], [1, 1, 1, 1, 0, 1, 1, 0, 0])  # a.x.y
    np.testing.assert_array_equal(mask[0, 2], [1, 1, 1, 0, 1, 0, 0, 0, 0])  # b
    # A sliding window of 2 positions: a.x.y (position 5) sees positions 4 and 5 only.
    win = np.asarray(tree_attention_mask(start, packed, positions, start + 5, 9, window=2))
    np.testing.assert_array_equal(win[0, 4], [0, 0, 0, 0, 0, 1, 1, 0, 0])


def test_select_tree_keeps_the_best_nodes_with_their_parents():
    # K=2, steps=2: candidates 0,1 (level 1), 2,3 children of 0, 4,5 children of 1.
    scores = jnp.array([[-0.1, -1.0, -0.3, -2.0, -1.2, -3.0]], jnp.float32)
    tokens = jnp.array([[10, 11, 12, 13, 14, 15]], jnp.int32)
    parents = jnp.array([[-1, -1, 0, 0, 1, 1]], jnp.int32)
    tree_tokens, tree_parents = spec_tree.select_tree(
        scores, tokens, parents, jnp.array([7], jnp.int32), verify_size=5
    )
    # Best 4: cand 0 (-0.1), 2 (-0.3), 1 (-1.0), 4 (-1.2); sorted: 0, 1, 2, 4.
    np.testing.assert_array_equal(np.asarray(tree_tokens), [[7, 10, 11, 12, 14]])
    np.testing.assert_array_equal(np.asarray(tree_parents), [[0, 0, 0, 1, 2]])


def test_greedy_accept_walks_matching_children_and_adds_the_bonus():
    tree_tokens = jnp.array([[7, 10, 11, 12, 14], [7, 10, 11, 12, 14]], jnp.int32)
    tree_parents = jnp.array([[0, 0, 0, 1, 2]] * 2, jnp.int32)
    argmax = jnp.array(
        [
            [10, 12, 99, 42, 98],  # root->10 (node 1), 1->12 (node 3), bonus 42
            [11, 98, 13, 97, 96],  # root->11 (node 2), 2 wants 13 (its child is 14): bonus 13
        ],
        jnp.int32,
    )
    valid = jnp.ones((2, 5), bool)
    path, n, toks = spec_tree.greedy_accept(tree_tokens, tree_parents, argmax, valid, depth=2)
    np.testing.assert_array_equal(np.asarray(n), [3, 2])
    np.testing.assert_array_equal(np.asarray(path), [[0, 1, 3], [0, 2, 0]])
    np.testing.assert_array_equal(np.asarray(toks), [[10, 12, 42], [11, 13, 0]])
    # A node past the KV capacity is never accepted: row 0 stops before node 3.
    valid = valid.at[0, 3].set(False)
    path, n, toks = spec_tree.greedy_accept(tree_tokens, tree_parents, argmax, valid, depth=2)
    np.testing.assert_array_equal(np.asarray(n), [2, 2])
    np.testing.assert_array_equal(np.asarray(toks)[0], [10, 12, 0])


def _commit_numpy(caches, start, path, n):
    out = [c.copy() for c in caches]
    for c_in, c_out in zip(caches, out, strict=True):
        for b in range(c_in.shape[0]):
            for k in range(int(n[b])):
                c_out[b, :, start[b] + k] = c_in[b, :, start[b] + path[b, k]]
    return out


def test_commit_kv_equals_a_numpy_loop_and_leaves_other_slots_alone(rng):
    caches = [rng.randn(3, 2, 12, 4).astype(np.float32) for _ in range(4)]
    start = np.array([2, 5, 9], np.int32)
    path = np.array([[0, 2, 5, 0], [0, 1, 3, 6], [0, 0, 0, 0]], np.int32)
    n = np.array([3, 4, 1], np.int32)
    got = jax.jit(spec_tree.commit_kv_ref)(
        tuple(map(jnp.asarray, caches)), jnp.asarray(start), jnp.asarray(path), jnp.asarray(n)
    )
    for g, e in zip(got, _commit_numpy(caches, start, path, n), strict=True):
        np.testing.assert_array_equal(np.asarray(g), e)
    # n = 0 moves nothing; a path past the capacity drops the writes instead of wrapping.
    none = spec_tree.commit_kv_ref(
        tuple(map(jnp.asarray, caches)),
        jnp.asarray(start),
        jnp.asarray(path),
        jnp.zeros(3, jnp.int32),
    )
    for g, c in zip(none, caches, strict=True):
        np.testing.assert_array_equal(np.asarray(g), c)


def test_commit_kv_updates_donated_caches_in_place(rng):
    caches = tuple(jnp.asarray(rng.randn(2, 2, 8, 4).astype(np.float32)) for _ in range(2))
    before = [c.unsafe_buffer_pointer() for c in caches]
    fn = jax.jit(spec_tree.commit_kv_ref, donate_argnums=(0,))
    start, path, n = jnp.array([1, 2]), jnp.array([[0, 2], [0, 1]]), jnp.array([2, 2])
    got = fn(caches, start.astype(jnp.int32), path.astype(jnp.int32), n.astype(jnp.int32))
    assert [c.unsafe_buffer_pointer() for c in got] == before
    text = fn.lower(caches, start, path, n).as_text()
    assert "tf.aliasing_output" in text or "output_operand_alias" in text
