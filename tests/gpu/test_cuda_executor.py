"""The CUDA test executor through buffer_callback, and GraphCache on real CUDA graphs (GPU only)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from edgellm_fn.dims import InferenceDims
from edgellm_fn.engine.snapshot import (
    BindingSnapshot,
    CudaRuntimeBackend,
    GraphCache,
    GraphCacheStats,
)

pytestmark = pytest.mark.gpu


def _dims(batch: int, cap: int) -> InferenceDims:
    return InferenceDims(
        batch=batch, seq_len=1, kv_len=cap, select_len=1, attn_mask_seq_len=1, rope_batch=1,
        packed_mask_len=1, start_index_len=batch, spec_verify_phase_len=0,
    )  # fmt: skip


def _inputs(rng, n=1003, b=3, h=5, cap=37, d=24):
    gpu = jax.devices("gpu")[0]
    put = functools.partial(jax.device_put, device=gpu)
    state = {
        "y": put(rng.uniform(1, 2, n).astype(np.float32)),
        "positions": put(np.array([0, 5, 30][:b] + [1] * max(0, b - 3), np.int32)),
        "kv": put(rng.uniform(-2, -1, (b, h, cap, d)).astype(np.float32)),
    }
    x = put(rng.uniform(1, 2, n).astype(np.float32))
    new_kv = put(rng.uniform(1, 2, (b, h, d)).astype(np.float32))
    return state, x, new_kv


def _copy(state):
    return {k: jnp.array(v, copy=True) for k, v in state.items()}


def _stepper(executor, dims):
    @functools.partial(jax.jit, donate_argnums=0)
    def step(state, x, new_kv):
        return executor.execute(executor.prepare(1, dims, {"x": x, "new_kv": new_kv, **state}))

    return step


def _expected(state0, x, new_kv, a, steps):
    y = np.asarray(state0["y"]) + steps * a * np.asarray(x)
    pos0 = np.asarray(state0["positions"])
    kv = np.array(state0["kv"])
    for b, p0 in enumerate(pos0):
        for i in range(steps):
            if p0 + i < kv.shape[2]:
                kv[b, :, p0 + i, :] = np.asarray(new_kv)[b] + (p0 + i)
    return y, pos0 + steps, kv


def test_replay_equals_eager_and_hits_on_stable_addresses(rng, record_property):
    from edgellm_fn.testing.cuda_executor import CudaTestExecutor

    state0, x, new_kv = _inputs(rng)
    dims = _dims(3, 37)
    graph, eager = CudaTestExecutor(a=1.5, capture=True), CudaTestExecutor(a=1.5, capture=False)
    s_graph, s_eager = _copy(state0), _copy(state0)
    step_graph, step_eager = _stepper(graph, dims), _stepper(eager, dims)
    ptrs = {k: v.unsafe_buffer_pointer() for k, v in s_graph.items()}
    actions, steps = [], 9  # position 30 runs past KVcap=37 on purpose (kernel guard)
    for _ in range(steps):
        s_graph = step_graph(s_graph, x, new_kv)
        s_eager = step_eager(s_eager, x, new_kv)
        jax.block_until_ready((s_graph, s_eager))
        actions.append(graph.last_action)
        for k in s_graph:
            np.testing.assert_array_equal(np.asarray(s_graph[k]), np.asarray(s_eager[k]))
    assert {k: v.unsafe_buffer_pointer() for k, v in s_graph.items()} == ptrs
    y, pos, kv = _expected(state0, x, new_kv, 1.5, steps)
    np.testing.assert_allclose(np.asarray(s_graph["y"]), y, rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(s_graph["positions"]), pos)
    np.testing.assert_array_equal(np.asarray(s_graph["kv"]), kv)
    assert actions == ["capture"] + ["replay"] * (steps - 1)
    assert graph.stats == GraphCacheStats(hits=steps - 1, misses=1, captures=1)
    assert eager.stats == GraphCacheStats(misses=steps)
    record_property("graph_stats", str(graph.stats))


def test_address_or_shape_change_misses_then_hits_again(rng, record_property):
    from edgellm_fn.testing.cuda_executor import CudaTestExecutor

    ex = CudaTestExecutor(a=2.0)
    state, x, new_kv = _inputs(rng)
    step = _stepper(ex, _dims(3, 37))
    for _ in range(3):
        state = step(state, x, new_kv)
    assert ex.stats == GraphCacheStats(hits=2, misses=1, captures=1)

    moved = _copy(state)  # same shapes and values, new addresses
    want = _expected(moved, x, new_kv, 2.0, 2)
    moved = step(moved, x, new_kv)
    assert ex.last_action == "capture"
    moved = step(moved, x, new_kv)
    assert ex.last_action == "replay"
    assert ex.stats == GraphCacheStats(hits=3, misses=2, captures=2)
    for got, w in zip((moved["y"], moved["positions"], moved["kv"]), want, strict=True):
        np.testing.assert_allclose(np.asarray(got), w, rtol=1e-6)

    big, x2, new_kv2 = _inputs(rng, n=2048, b=4, cap=64)  # new shapes: new trace, new snapshot
    step2 = _stepper(ex, _dims(4, 64))
    big = step2(big, x2, new_kv2)
    assert ex.last_action == "capture"
    big = step2(big, x2, new_kv2)
    assert ex.stats == GraphCacheStats(hits=4, misses=3, captures=3)
    assert len(ex.graphs) == 3
    record_property("graph_stats", str(ex.stats))


def test_prepare_rejects_bad_bindings(rng):
    from edgellm_fn.testing.cuda_executor import CudaTestExecutor

    state, x, new_kv = _inputs(rng)
    ex = CudaTestExecutor()
    with pytest.raises(ValueError, match=r"missing=\['x'\], unknown=\[\] \(expected exactly"):
        ex.prepare(1, _dims(3, 37), {"new_kv": new_kv, **state})
    with pytest.raises(ValueError, match=r"kv.shape=\(3, 5, 37, 24\) \(expected \[3, H, 40, D\]"):
        ex.prepare(1, _dims(3, 40), {"x": x, "new_kv": new_kv, **state})


def _cupy_stream_with_counter():
    import cupy

    stream = cupy.cuda.Stream(non_blocking=True)
    counter = cupy.zeros(4, cupy.int32)
    add_one = cupy.ElementwiseKernel("", "int32 c", "c += 1", "add_one_inplace")
    return cupy, stream, counter, add_one


def test_graph_cache_replays_real_graphs_outside_xla():
    cupy, stream, counter, add_one = _cupy_stream_with_counter()

    def enqueue(s: int) -> None:
        with cupy.cuda.ExternalStream(s):
            add_one(counter)

    snap = BindingSnapshot.of([("counter", counter.data.ptr, counter.shape)])
    cache = GraphCache()
    assert cache.execute(snap, stream.ptr, enqueue, capture=True) == "capture"
    for _ in range(3):
        assert cache.execute(snap, stream.ptr, enqueue, capture=True) == "replay"
    stream.synchronize()
    assert counter.get().tolist() == [4] * 4  # warm-up + 3 replays; the capture itself ran nothing
    assert cache.stats == GraphCacheStats(hits=3, misses=1, captures=1)
    cache.clear()
    assert len(cache) == 0


def test_failed_capture_clears_the_error_counts_and_falls_back():
    cupy, stream, counter, add_one = _cupy_stream_with_counter()

    def enqueue_with_sync(s: int) -> None:  # a host sync is illegal while capturing
        with cupy.cuda.ExternalStream(s):
            add_one(counter)
        cupy.cuda.runtime.streamSynchronize(s)

    snap = BindingSnapshot.of([("counter", counter.data.ptr, counter.shape)])
    cache = GraphCache()
    assert cache.execute(snap, stream.ptr, enqueue_with_sync, capture=True) == "enqueue"
    assert cache.stats == GraphCacheStats(misses=1, capture_failures=1)
    assert cache.last_capture_error is not None
    assert cache.execute(snap, stream.ptr, enqueue_with_sync, capture=True) == "enqueue"
    stream.synchronize()
    assert counter.get().tolist() == [2] * 4  # each call ran its work exactly once
    assert cache.stats == GraphCacheStats(misses=2, capture_failures=1)
    assert CudaRuntimeBackend().clear_error() == "cudaSuccess"  # the capture error was cleared
