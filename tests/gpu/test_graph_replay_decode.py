"""The real decode path (create_state, build_tensor_map, donated steps, CallbackEngine glue) on a
CUDA executor: every decode step after the first replays its captured graph (GPU only)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import edgellm_fn as ef
from edgellm_fn.runtime import loops
from edgellm_fn.runtime.sampling import make_sampling_params

pytestmark = pytest.mark.gpu
N = 12


@pytest.fixture(scope="module")
def engine(checkpoints):
    from edgellm_fn.testing.cuda_executor import contract_engine

    model, _ = ef.load_checkpoint(checkpoints["llama"], dtype="float32")
    cfg = ef.EngineConfig.create(
        model, max_batch_size=2, max_input_len=16, kv_capacity=64, dtype="float32"
    )
    gpu = jax.devices("gpu")[0]
    rng = np.random.RandomState(0)
    table = rng.uniform(1, 2, (model.vocab_size, model.hidden_size)).astype(np.float32)
    return contract_engine(cfg, jax.device_put(table, gpu))


def test_decode_replays_the_captured_graph_for_every_step_after_the_first(engine):
    cfg, vocab = engine.config, engine.config.model.vocab_size
    ids = np.array([[5, 6, 7, 8, 9, 10, 11, 12], [20, 21, 22, 23, 24, 0, 0, 0]], np.int32)
    lengths = np.array([8, 5])
    state = ef.create_state(cfg, 2)
    state = ef.prefill(engine, state, ef.embed(engine, ids), lengths)
    before = engine.executor.stats
    fed = []
    for t in range(N):
        token = jnp.argmax(state.io.logits, axis=-1).astype(jnp.int32)
        np.testing.assert_array_equal(np.asarray(token), (lengths + t) % vocab)
        fed.append(np.asarray(token))
        state = ef.decode(engine, state, token)
    jax.block_until_ready(state)
    stats = engine.executor.stats
    hits, misses = stats.hits - before.hits, stats.misses - before.misses
    assert hits + misses == N
    assert hits >= N - 1, stats
    np.testing.assert_array_equal(np.asarray(state.kv.lengths), lengths + N)
    table = np.asarray(engine.embedding)
    k0 = np.asarray(state.kv.k[0])
    for b in range(2):  # the replayed steps wrote each fed token's row at its own position
        for t in range(N):
            pos = lengths[b] + t
            np.testing.assert_allclose(
                k0[b, :, pos, :],
                (table[fed[t][b]] + pos)[: k0.shape[3]] * np.ones((k0.shape[1], 1)),
                rtol=1e-6,
            )


def test_python_loop_replays_the_captured_graph(engine):
    cfg = engine.config
    ids = np.full((2, 8), 9, np.int32)
    lengths = np.array([8, 3])
    state = ef.create_state(cfg, 2)
    state = ef.prefill(engine, state, ef.embed(engine, ids), lengths)
    config, params = make_sampling_params(2, vocab_size=cfg.model.vocab_size, top_k=1)
    before = engine.executor.stats
    _, res = loops.decode_python(
        engine,
        state,
        config,
        params,
        jax.random.PRNGKey(0),
        loops.token_limits(engine, lengths, N),
        eos_ids=(),
        max_new_tokens=N,
    )
    stats = engine.executor.stats
    steps = (stats.hits - before.hits) + (stats.misses - before.misses)
    assert steps >= N - 1
    assert stats.hits - before.hits >= steps - 1, stats
    want = (lengths[:, None] + np.arange(N)) % cfg.model.vocab_size  # greedy id = ctx % V
    np.testing.assert_array_equal(res.tokens[:, :N], want)
