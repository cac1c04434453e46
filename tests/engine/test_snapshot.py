"""BindingSnapshot key/equality semantics and GraphCache lookup/miss logic (no CUDA needed)."""

from __future__ import annotations

import dataclasses

import pytest

from edgellm_fn.engine.snapshot import BindingSnapshot, GraphCache, GraphCacheStats

BINDINGS = [
    ("inputs_embeds", 0x7F0000001000, (2, 5, 64)),
    ("past_key_0", 0x7F0000200000, (2, 4, 128, 16)),
    ("present_key_0", 0x7F0000200000, (2, 4, 128, 16)),
    ("logits", 0x7F0000900000, (2, 128)),
]


def snap(bindings=BINDINGS) -> BindingSnapshot:
    return BindingSnapshot.of(bindings)


def replace(i: int, **kw) -> list:
    items = list(BINDINGS)
    name, address, shape = items[i]
    items[i] = (kw.get("name", name), kw.get("address", address), kw.get("shape", shape))
    return items


class _CollidingSnapshot(BindingSnapshot):
    """A snapshot whose key collides with every other one (forces the equality guard)."""

    def key(self) -> int:
        return 0


def test_equal_bindings_give_equal_snapshots_and_keys():
    a, b = snap(), snap([(n, a, list(s)) for n, a, s in BINDINGS])  # list shape is normalized
    assert a == b and a.key() == b.key()
    assert a.key() == snap().key()  # deterministic
    assert a.bindings[1].shape == (2, 4, 128, 16)


@pytest.mark.parametrize(
    "changed",
    [
        replace(1, address=0x7F0000300000),  # an address moved
        replace(0, shape=(2, 6, 64)),  # a dim changed
        replace(3, shape=(2, 128, 1)),  # rank changed
        [BINDINGS[1], BINDINGS[0], *BINDINGS[2:]],  # bindings reordered
        BINDINGS[:3],  # a binding missing
    ],
)
def test_any_address_shape_or_order_change_is_a_different_snapshot_and_key(changed):
    assert snap(changed) != snap()
    assert snap(changed).key() != snap().key()


def test_rank_is_part_of_the_key():
    flat = [("x", 16, (6,)), ("y", 32, (1,))]
    split = [("x", 16, (6, 1)), ("y", 32, ())]
    assert snap(flat).key() != snap(split).key()


def test_renamed_binding_keeps_key_but_is_not_equal():
    renamed = snap(replace(3, name="logits_2"))
    assert renamed.key() == snap().key()  # names are not hashed, as upstream
    assert renamed != snap()


def test_lookup_hits_only_the_exact_snapshot():
    cache = GraphCache()
    cache._store(snap(), "graph-A")
    assert cache.lookup(snap()) == "graph-A"
    assert cache.lookup(snap(replace(1, address=0x7F0000300000))) is None
    assert cache.lookup(snap(replace(0, shape=(2, 6, 64)))) is None
    assert len(cache) == 1


def test_hash_collision_is_not_replayed():
    cache = GraphCache()
    first = _CollidingSnapshot.of(BINDINGS)
    second = _CollidingSnapshot.of(replace(1, address=0x7F0000300000))
    assert first.key() == second.key() and first != second
    cache._store(first, "graph-first")
    assert cache.lookup(first) == "graph-first"
    assert cache.lookup(second) is None

    calls = []
    assert cache.execute(second, 7, calls.append) == "enqueue"  # miss: enqueued, not replayed
    assert calls == [7]
    assert cache.stats == GraphCacheStats(hits=0, misses=1, captures=0, capture_failures=0)


def test_misses_enqueue_on_the_given_stream_and_count():
    cache = GraphCache()
    streams = []
    for address in (0x1000, 0x2000, 0x1000):
        assert cache.execute(snap(replace(0, address=address)), 42, streams.append) == "enqueue"
    assert streams == [42, 42, 42]
    assert cache.stats == GraphCacheStats(misses=3)
    assert len(cache) == 0


def test_stats_are_frozen():
    stats = GraphCache().stats
    with pytest.raises(dataclasses.FrozenInstanceError):
        stats.hits = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    ("bindings", "exc", "match"),
    [
        (
            [("x", 1, (2,)), ("x", 2, (2,))],
            ValueError,
            r"BindingSnapshot: name='x' \(expected a unique str per binding\)",
        ),
        (
            [("x", -1, (2,))],
            TypeError,
            r"x.address=-1 \(expected an int >= 0\); pass the device pointer",
        ),
        ([("x", 1.5, (2,))], TypeError, r"x.address=1.5 \(expected an int >= 0\)"),
        (
            [("x", 1, (2, -1))],
            TypeError,
            r"x.shape=\(2, -1\) \(expected non-negative ints\); pass the concrete shape",
        ),
        ([("x", 1, (2.0,))], TypeError, r"x.shape=\(2.0,\) \(expected non-negative ints\)"),
    ],
)
def test_bad_bindings_are_rejected(bindings, exc, match):
    with pytest.raises(exc, match=match):
        BindingSnapshot.of(bindings)


def test_capture_without_cuda_python_raises_instead_of_pretending():
    try:
        import cuda.bindings.runtime  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("cuda-python is installed here; the GPU tests cover capture")
    cache = GraphCache()
    calls = []
    with pytest.raises(
        ImportError, match=r"GraphCache needs cuda-python .*`pip install cuda-python`"
    ):
        cache.execute(snap(), 3, calls.append, capture=True)
    assert calls == [3]  # the step's own work ran before the capture was attempted
    assert cache.stats == GraphCacheStats(misses=1)
