"""Every binding the onnxruntime provider sees keeps its address across decode steps, so a
``GraphCache`` replays every step after the first (driven by a fake backend: CPU has no graphs)."""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from edgellm_fn import create_state, decode, embed, prefill
from edgellm_fn.dims import InferenceDims
from edgellm_fn.engine.callback.build import build_engine
from edgellm_fn.engine.callback.glue import BufferInfo
from edgellm_fn.engine.callback.onnxruntime import OnnxRuntimeEngine, load_onnxruntime_engine
from edgellm_fn.engine.snapshot import BindingSnapshot, GraphCache, GraphCacheStats
from edgellm_fn.runtime.generate import generate
from edgellm_fn.text.tokenizer import Tokenizer

from .helpers import prompt_ids

STEPS = 32


class FakeGraphs:
    """A ``GraphBackend`` that records calls; a "replay" runs the step's work on the same
    buffers (what a real graph launch would do), captured work runs nothing."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.capturing = False
        self.work = None

    def synchronize(self, stream):
        self.calls.append("synchronize")

    def begin_capture(self, stream):
        self.calls.append("begin_capture")
        self.capturing = True

    def end_capture(self, stream):
        self.calls.append("end_capture")
        self.capturing = False
        return "graph"

    def abort_capture(self, stream):
        self.calls.append("abort_capture")
        self.capturing = False

    def instantiate(self, graph):
        self.calls.append("instantiate")
        return "graph_exec"

    def launch(self, graph_exec, stream):
        self.calls.append("launch")
        self.work()

    def destroy(self, graph_exec):
        self.calls.append("destroy")

    def clear_error(self):
        return "cudaSuccess"


class GraphExecutor:
    """Wraps an ``OrtExecutor``: snapshots every step's bindings and runs it via a GraphCache."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.backend = FakeGraphs()
        self.graphs = GraphCache(self.backend)
        self.snapshots: list[tuple[int, BindingSnapshot]] = []

    def reset(self) -> None:
        self.backend = FakeGraphs()
        self.graphs = GraphCache(self.backend)
        self.snapshots = []

    def run(
        self,
        profile: int,
        dims: InferenceDims,
        buffers: Mapping[str, BufferInfo],
        stream: int | None,
    ) -> None:
        snap = BindingSnapshot.of((n, b.ptr, b.shape) for n, b in buffers.items())
        self.snapshots.append((profile, snap))
        if profile != 1:  # only decode steps are graph candidates (prefill's S varies)
            self.inner.run(profile, dims, buffers, stream)
            return
        backend = self.backend
        backend.work = lambda: self.inner.run(profile, dims, buffers, stream)

        def enqueue(s):
            if not backend.capturing:  # captured work does not run
                backend.work()

        self.graphs.execute(snap, 0, enqueue, capture=True)

    def decode_snapshots(self) -> list[BindingSnapshot]:
        return [s for p, s in self.snapshots if p == 1]


@pytest.fixture(scope="module")
def engines(checkpoints, tmp_path_factory):
    """The onnxruntime engine twice: plain, and with every step through a GraphCache."""
    engine_dir = tmp_path_factory.mktemp("onnx_graph_stable")
    build_engine(
        checkpoints["qwen2"], engine_dir, "onnx", max_batch=2, max_input_len=16, kv_capacity=48
    )
    plain = load_onnxruntime_engine(engine_dir)
    executor = GraphExecutor(plain.executor)
    graphed = OnnxRuntimeEngine(plain.config, executor, plain.embedding)
    return plain, graphed, executor


def _decode_run(engine, embeds: bool = False):
    state = create_state(engine.config, 2)
    state = prefill(engine, state, embed(engine, prompt_ids()), jnp.asarray([8, 5]))
    logits = []
    for _ in range(STEPS):
        token = jnp.argmax(state.io.logits, axis=-1).astype(jnp.int32)
        state = decode(engine, state, embed(engine, token[:, None]) if embeds else token)
        # A device copy: a zero-copy numpy view of a CPU buffer would block its donation.
        logits.append(jnp.copy(state.io.logits))
    return np.stack([np.asarray(x) for x in logits])


@pytest.mark.parametrize("embeds", [False, True], ids=["token_ids", "inputs_embeds"])
def test_32_decode_steps_bind_one_snapshot_and_replay(engines, embeds):
    plain, graphed, executor = engines
    executor.reset()
    got = _decode_run(graphed, embeds)
    snaps = executor.decode_snapshots()
    assert len(snaps) == STEPS
    moved = [b.name for b in snaps[0].bindings if b not in snaps[-1].bindings]
    assert moved == [], f"bindings that moved: {moved}"
    assert all(s == snaps[0] for s in snaps)
    assert executor.graphs.stats == GraphCacheStats(hits=STEPS - 1, misses=1, captures=1)
    assert executor.backend.calls.count("launch") == STEPS - 1
    np.testing.assert_allclose(got, _decode_run(plain), atol=1e-5)  # replays did the work


@pytest.mark.parametrize("loop", ["python", "while"])
def test_generation_binds_one_snapshot_and_replays(engines, checkpoints, loop):
    plain, graphed, executor = engines
    tok = Tokenizer.from_dir(checkpoints["qwen2"])
    prompts = [[5, 9, 13, 17, 21], [7, 11, 4]]
    kw = dict(max_new_tokens=12, temperature=0.8, top_p=0.9, seed=1, loop=loop)
    executor.reset()
    got = generate(graphed, tok, prompts, **kw)
    snaps = executor.decode_snapshots()
    # The python loop runs one step per generated token (after the first); the while loop
    # stops as soon as every row is done.
    assert len(snaps) >= max(len(c.tokens) for c in got) - 1 >= 2
    assert all(s == snaps[0] for s in snaps)
    n = len(snaps)
    assert executor.graphs.stats == GraphCacheStats(hits=n - 1, misses=1, captures=1)
    assert [c.tokens for c in got] == [c.tokens for c in generate(plain, tok, prompts, **kw)]


def test_a_new_state_is_a_new_snapshot(engines):
    _, graphed, executor = engines
    executor.reset()
    for _ in range(2):
        state = create_state(graphed.config, 2)
        state = prefill(graphed, state, embed(graphed, prompt_ids()), jnp.asarray([8, 5]))
        for _ in range(3):
            state = decode(graphed, state, jnp.ones((2,), jnp.int32))
        jax.block_until_ready(state)
        del state
    # Each state binds its own buffers (a miss, then hits); equal snapshots share a graph.
    stats = executor.graphs.stats
    assert stats.hits + stats.misses == 6 and stats.hits >= 4


@pytest.mark.parametrize("loop", ["while", "python"])
def test_a_row_finished_at_capacity_never_writes_out_of_range(engines, loop):
    """Row 0 fills the cache exactly (48 slots) while row 1 keeps going: onnxruntime's
    TensorScatter raises on a slot index >= capacity, so a finished row must not write there."""
    from edgellm_fn.runtime import loops
    from edgellm_fn.runtime.sampling import make_sampling_params

    plain = engines[0]
    cfg = plain.config
    ids = np.full((2, 16), 7, np.int32)
    lengths = np.array([16, 2])
    state = prefill(plain, create_state(cfg, 2), embed(plain, ids), jnp.asarray(lengths))
    limits = loops.token_limits(plain, lengths, 40)
    np.testing.assert_array_equal(limits, [33, 40])  # row 0 ends holding 16 + 32 = 48 = capacity
    config, params = make_sampling_params(2, vocab_size=cfg.model.vocab_size, top_k=1)
    run = loops.decode_while if loop == "while" else loops.decode_python
    state, res = run(
        plain, state, config, params, jax.random.PRNGKey(0), limits, eos_ids=(), max_new_tokens=40
    )
    np.testing.assert_array_equal(np.asarray(res.num_tokens), [33, 40])
    np.testing.assert_array_equal(np.asarray(state.kv.lengths), [48, 41])
