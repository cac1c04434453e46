"""ONNX export of the spec-decode base's tree-verify step, checked against the xla engine with
onnxruntime on a real draft tree (packed mask and tree positions as inputs)."""

from __future__ import annotations

import jax
import numpy as np
import onnx
import pytest

from edgellm_fn.dims import verify_dims
from edgellm_fn.engine.spec import build_spec_base_spec
from edgellm_fn.engine.tensor_map import build_tensor_map_for_spec_decode
from edgellm_fn.models.onnx.tree_export import build_tree_verify_model, export_tree_verify_onnx
from edgellm_fn.runtime import spec_decode as sd

from ...runtime.spec_helpers import TREES, spec_engines


@pytest.fixture(scope="module")
def engines(checkpoints):
    return spec_engines(checkpoints["llama"], "oracle", TREES["wide"])


def test_tree_verify_graph_uses_standard_ops_and_the_contract_io(engines, tmp_path):
    base, _ = engines
    path = export_tree_verify_onnx(base.bundle, base.params, tmp_path)
    model = onnx.load(str(path), load_external_data=False)
    assert [(o.domain, o.version) for o in model.opset_import] == [("", 24)]
    assert all(n.domain == "" for n in model.graph.node)
    ops = {n.op_type for n in model.graph.node}
    assert {"Attention", "TensorScatter", "RotaryEmbedding", "BitwiseAnd"} <= ops
    spec = build_spec_base_spec(base.bundle)
    assert [i.name for i in model.graph.input] == [b.name for b in spec.inputs()]
    assert [o.name for o in model.graph.output] == [b.name for b in spec.outputs()]
    onnx.checker.check_model(str(path))


def test_onnxruntime_matches_xla_on_a_draft_tree(engines):
    import onnxruntime as ort

    base, draft = engines
    b = base.bundle
    ids = np.array([[5, 9, 13, 7, 22], [40, 41, 0, 0, 0], [3, 4, 5, 6, 7]], np.int32)
    state = sd.create_spec_state(b, 3)
    state = sd.spec_prefill(base, draft, state, ids, np.array([5, 2, 5]))
    state = sd.propose(draft, state)
    # The verify bindings as the step writes them (embedded tree tokens, start, context).
    sp = state.io.spec
    v = b.verify_size
    verify = sp.verify.__class__(
        inputs_embeds=base.embedding[sp.tree_tokens],
        context_lengths=state.kv.lengths + v,
        start_index=state.kv.lengths,
        last_token_ids=np.broadcast_to(np.arange(v, dtype=np.int32), (3, v)),
        attention_mask=sp.verify.attention_mask,
        attention_pos_id=sp.verify.attention_pos_id,
    )
    tensors = build_tensor_map_for_spec_decode(verify, state.res)
    feeds = {k: np.asarray(x) for k, x in tensors.items()}
    assert (feeds["attention_mask"] > 1).any()  # a real tree, not a chain of single bits
    sess = ort.InferenceSession(build_tree_verify_model(b, base.params).SerializeToString())
    got = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds), strict=True))
    want = jax.device_get(base.execute(base.prepare(1, verify_dims(b.base, 3, v), dict(tensors))))
    np.testing.assert_allclose(got["logits"], want["logits"], atol=2e-4)
    np.testing.assert_allclose(got["hidden_states"], want["hidden_states"], atol=2e-4)
    for i in range(b.base.model.num_hidden_layers):
        np.testing.assert_allclose(got[f"present_key_{i}"], want[f"present_key_{i}"], atol=1e-4)
        np.testing.assert_allclose(got[f"present_value_{i}"], want[f"present_value_{i}"], atol=1e-4)
