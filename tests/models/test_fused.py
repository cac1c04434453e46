"""The fused decode path (`models/fused.py`, kernels='on' runs the CPU twins) against the reference."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from edgellm_fn import create_state, decode, embed, load_engine, prefill
from edgellm_fn.demo import demo_model_dir
from edgellm_fn.engine.xla import XlaEngine
from edgellm_fn.errors import EngineError

from ..helpers import pad


def _greedy(engine, prompts, steps):
    ids, lengths = pad(prompts)
    state = create_state(engine.config, len(prompts))
    state = prefill(engine, state, embed(engine, ids), lengths)
    out, logits = [], []
    for _ in range(steps):
        logits.append(np.asarray(state.io.logits))
        tok = np.asarray(state.io.logits).argmax(-1)
        out.append(tok)
        state = decode(engine, state, embed(engine, jnp.asarray(tok[:, None], jnp.int32)))
    return np.stack(out, 1), np.stack(logits, 1)


@pytest.fixture(scope="module")
def demo_engines():
    kw = dict(max_batch_size=3, max_input_len=32, kv_capacity=96)
    ref = load_engine(demo_model_dir(), kernels="off", **kw)
    return ref, XlaEngine(ref.config, ref.params, "on")


def test_kernel_path_tokens_equal_reference_for_32_steps_on_ragged_prompts(demo_engines):
    ref, fused = demo_engines
    assert fused.decode_path(3)[0] == "kernels" and ref.decode_path(3)[0] == "reference"
    prompts = [list(b"def main():\n    "), list(b"import os"), list(b"class A:\n    def f(self")]
    want, want_logits = _greedy(ref, prompts, 32)
    got, got_logits = _greedy(fused, prompts, 32)
    np.testing.assert_array_equal(got, want)
    err = np.abs(got_logits - want_logits).max() / np.abs(want_logits).max()
    assert err < 2e-2, err


def test_kernel_path_matches_reference_logits_in_float32(checkpoints):
    for family, ckpt in checkpoints.items():
        ref = load_engine(ckpt, kernels="off", max_batch_size=2, max_input_len=16, kv_capacity=32)
        fused = XlaEngine(ref.config, ref.params, "on")
        if family.startswith("gemma"):  # no fused kernel: forcing them names every reason
            with pytest.raises(EngineError, match=r"kernels='on' but gemma.*sandwich_norms"):
                fused.decode_path(2)
            continue
        prompts = [[5, 6, 7, 8, 9], [10, 11]]
        want_tok, want = _greedy(ref, prompts, 8)
        got_tok, got = _greedy(fused, prompts, 8)
        np.testing.assert_array_equal(got_tok, want_tok, err_msg=family)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4, err_msg=family)


def test_kernel_mode_is_checked_and_named(demo_engines, monkeypatch):
    ref, _ = demo_engines
    with pytest.raises(
        EngineError, match=r"kernels='fast' \(expected one of \('auto', 'on', 'off'\)"
    ):
        XlaEngine(ref.config, ref.params, "fast")
    monkeypatch.setenv("EDGELLM_FN_KERNELS", "0")
    assert XlaEngine(ref.config, ref.params).kernels == "off"
    monkeypatch.setenv("EDGELLM_FN_KERNELS", "auto")
    assert XlaEngine(ref.config, ref.params).decode_path(1)[0] == "reference"  # CPU: golden path
