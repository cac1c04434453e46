"""ONNX export: standard opset-24 ops only, the contract's I/O, numerics incl. sliding windows."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
import onnx
import pytest

from edgellm_fn import EngineConfig, XlaEngine, build_llm_spec, load_checkpoint, prefill_dims
from edgellm_fn.errors import ConfigError
from edgellm_fn.models.onnx.export import DATA_FILE, build_model, export_onnx
from edgellm_fn.state.rope import rope_table

CORE_OPS = {"Attention", "TensorScatter", "RotaryEmbedding", "RMSNormalization"}


@pytest.fixture(scope="module")
def llama(checkpoints):
    model, params = load_checkpoint(checkpoints["llama"])
    return EngineConfig.create(model, max_batch_size=2, max_input_len=16, kv_capacity=32), params


def test_export_uses_standard_opset24_ops_and_external_data(llama, tmp_path):
    cfg, params = llama
    path = export_onnx(cfg, params, tmp_path)
    model = onnx.load(str(path), load_external_data=False)
    assert [(o.domain, o.version) for o in model.opset_import] == [("", 24)]
    assert model.ir_version <= 13
    ops = {n.op_type for n in model.graph.node}
    assert ops >= CORE_OPS
    assert all(n.domain == "" for n in model.graph.node)
    assert (tmp_path / DATA_FILE).stat().st_size > path.stat().st_size  # weights are external
    onnx.checker.check_model(str(path))


def test_graph_io_is_the_engine_contract(llama):
    cfg, params = llama
    spec = build_llm_spec(cfg)
    g = build_model(cfg, params).graph

    def shape(v):
        return [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]

    assert [i.name for i in g.input] == [b.name for b in spec.inputs()]
    assert [o.name for o in g.output] == [b.name for b in spec.outputs()]
    io = {v.name: v for v in (*g.input, *g.output)}
    assert shape(io["inputs_embeds"]) == ["batch", "seq_len", 64]
    assert shape(io["kvcache_start_index"]) == ["start_index_len"]
    assert shape(io["rope_rotary_cos_sin"]) == [1, 32, 16]
    assert shape(io["past_key_1"]) == ["batch", 2, 32, 16]  # KV capacity static
    assert shape(io["logits"]) == ["logits_rows", 128]
    assert io["last_token_ids"].type.tensor_type.elem_type == onnx.TensorProto.INT32


def _run_both(cfg, params, ctx, start=None):
    """One prefill through onnxruntime (plain session) and the xla engine."""
    import onnxruntime as ort

    m = cfg.model
    sess = ort.InferenceSession(build_model(cfg, params).SerializeToString())
    b, s = len(ctx), 12
    feeds = {
        "inputs_embeds": np.random.RandomState(0).randn(b, s, m.hidden_size).astype(np.float32),
        "context_lengths": np.asarray(ctx, np.int32),
        "kvcache_start_index": np.zeros((0,), np.int32),
        "rope_rotary_cos_sin": np.asarray(rope_table(m.rope, cfg.kv_capacity)),
        "last_token_ids": (np.asarray(ctx, np.int32) - 1)[:, None],
    }
    kv = (b, m.num_key_value_heads, cfg.kv_capacity, m.head_dim)
    for i in range(m.num_hidden_layers):
        feeds[f"past_key_{i}"] = np.zeros(kv, np.float32)
        feeds[f"past_value_{i}"] = np.zeros(kv, np.float32)
    got = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds), strict=True))
    xla = XlaEngine(cfg, params)
    tensors = {k: jnp.asarray(v) for k, v in feeds.items()}
    want = xla.execute(xla.prepare(0, prefill_dims(cfg, b, s, True), tensors))
    return got, want


def test_sliding_window_layers_match_xla(llama):
    cfg, params = llama
    model = dataclasses.replace(cfg.model, sliding_windows=(4, 0))
    cfg = dataclasses.replace(cfg, model=model)
    got, want = _run_both(cfg, params, [12, 9])
    np.testing.assert_allclose(got["logits"], np.asarray(want["logits"]), atol=1e-4)
    full, _ = _run_both(
        dataclasses.replace(cfg, model=dataclasses.replace(model, sliding_windows=(0, 0))),
        params,
        [12, 9],
    )
    assert np.abs(full["logits"] - got["logits"]).max() > 1e-3  # the window really masks


def test_odd_rotary_dim_is_refused(llama):
    cfg, params = llama
    rope = dataclasses.replace(cfg.model.rope, rotary_dim=7)
    bad = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, rope=rope))
    with pytest.raises(ConfigError, match=r"onnx export: rope rotary_dim=7 \(expected an even"):
        build_model(bad, params)


def test_partial_rotary_matches_xla(llama):
    cfg, params = llama
    rope = dataclasses.replace(cfg.model.rope, rotary_dim=8)  # head_dim 16: half rotated
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, rope=rope))
    got, want = _run_both(cfg, params, [12, 7])
    np.testing.assert_allclose(got["logits"], np.asarray(want["logits"]), atol=1e-4)
    np.testing.assert_allclose(
        got["present_key_0"][0, :, :12], want["present_key_0"][0, :, :12], atol=1e-5
    )
