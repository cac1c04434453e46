"""Spec-decode engines for the tests: a random EAGLE3 draft or the oracle, and vanilla greedy."""

from __future__ import annotations

import functools

import jax
import numpy as np

import edgellm_fn as ef
from edgellm_fn.engine.xla_spec import XlaSpecBaseEngine, load_spec_engines
from edgellm_fn.models.eagle3 import SpecDecodeConfig
from edgellm_fn.runtime import loops
from edgellm_fn.runtime import spec_decode as sd
from edgellm_fn.testing.oracle_draft import OracleDraftEngine, oracle_dims

from ..helpers import pad

#: Tree shapes (tree_topk, tree_steps, verify_size): a chain, a wide and a deep tree.
TREES = {"chain": (1, 4, 5), "wide": (4, 2, 12), "deep": (2, 5, 11)}


@functools.cache
def spec_engines(
    ckpt: str,
    draft: str,
    tree: tuple[int, int, int],
    *,
    batch: int = 3,
    max_input_len: int = 16,
    kv_capacity: int = 64,
):
    """``(base, draft)`` for ``draft`` a checkpoint directory or ``"oracle"``."""
    k, steps, v = tree
    limits = dict(max_batch_size=batch, max_input_len=max_input_len, kv_capacity=kv_capacity)
    if draft != "oracle":
        return load_spec_engines(
            ckpt,
            draft,
            tree_topk=k,
            tree_steps=steps,
            verify_size=v,
            max_verify_tree_size=16,
            **limits,
        )
    model, params = ef.load_checkpoint(ckpt)
    cfg = ef.EngineConfig.create(model, **limits)
    bundle = SpecDecodeConfig(
        base=cfg,
        draft=oracle_dims(model, (0, 1, 2)),
        tree_topk=k,
        tree_steps=steps,
        verify_size=v,
        max_verify_tree_size=16,
    )
    base = XlaSpecBaseEngine(bundle, params)
    return base, OracleDraftEngine.from_base(base)


@functools.cache
def vanilla_engine(ckpt: str, *, batch: int = 3, max_input_len: int = 16, kv_capacity: int = 64):
    model, params = ef.load_checkpoint(ckpt)
    cfg = ef.EngineConfig.create(
        model, max_batch_size=batch, max_input_len=max_input_len, kv_capacity=kv_capacity
    )
    return ef.XlaEngine(cfg, params, kernels="off")


def vanilla(engine, prompts, max_new_tokens, eos_ids=()):
    """Greedy ``decode_while``: ``(DecodeResult as numpy, final state)``."""
    ids, lengths = pad(prompts)
    b = len(prompts)
    config, params = ef.make_sampling_params(b, vocab_size=engine.config.model.vocab_size, top_k=1)
    state = ef.prefill(engine, ef.create_state(engine.config, b), ef.embed(engine, ids), lengths)
    limits = loops.token_limits(engine, lengths, max_new_tokens)
    state, res = ef.decode_while(
        engine,
        state,
        config,
        params,
        jax.random.PRNGKey(0),
        limits,
        eos_ids=eos_ids,
        max_new_tokens=max_new_tokens,
    )
    return jax.device_get(res), state


def speculative(base, draft, prompts, max_new_tokens, eos_ids=(), loop="while", width=None):
    """``spec_decode_while`` / ``spec_decode_python``: ``(SpecResult as numpy, final state)``."""
    ids, lengths = pad(prompts)
    if width is not None:
        ids = np.pad(ids, ((0, 0), (0, width - ids.shape[1])))
    state = sd.create_spec_state(base.bundle, len(prompts))
    state = sd.spec_prefill(base, draft, state, ids, lengths)
    limits = loops.token_limits(base, lengths, max_new_tokens)
    run = sd.spec_decode_while if loop == "while" else sd.spec_decode_python
    state, res = run(base, draft, state, limits, eos_ids=eos_ids, max_new_tokens=max_new_tokens)
    return jax.device_get(res), state
