"""ONNX export of the spec-decode base's tree-verify step (profile 1 of
``build_spec_base_spec``): the tree mask stays an input, unpacked in the graph.

Standard opset-24 ops only, as ``export.py``; per step::

    attention_mask [B, S, W] int32 ─ Gather(word j // 32) ─ BitwiseAnd(1 << j % 32) ≠ 0
        ─► bits [B, S, S] ─ GatherElements(slot - start) ─► tree part of [B, 1, S, C]
    mask = slot < start  or  tree bit;  and  slot < context_lengths
    attention_pos_id ─► RotaryEmbedding positions;  TensorScatter writes slots start..start+S-1

Outputs ``logits`` ``[B * sel, V]``, ``hidden_states`` ``[B * S, 3H]`` (the inputs of the
feature layers, concatenated) and the ``present_*`` caches. Only this step is exported: the
base prefill with features (profile 0) and the draft engine are not in ONNX yet, and a tree
that would pass the KV capacity is the caller's to avoid (``TensorScatter`` does not drop
writes as the xla provider does).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from ...dtypes import dtype as lookup_dtype
from ...engine.spec import EngineSpec, TensorSpec, build_spec_base_spec
from ...errors import ConfigError
from ..llama import Params
from .export import DATA_FILE, EXTERNAL_THRESHOLD, IR_VERSION, check_exportable
from .graph import OPSET, GraphBuilder, _layer, _rms

TREE_MODEL_FILE = "tree_verify.onnx"
_DIM_NAMES = {
    ("batch",): "batch",
    ("seq_len",): "seq_len",
    ("select_len",): "select_len",
    ("start_index_len",): "batch",
    ("attn_mask_seq_len",): "seq_len",
    ("packed_mask_len",): "packed_mask_len",
    ("batch", "select_len"): "logits_rows",
    ("batch", "seq_len"): "hidden_rows",
}


def _value_info(b: TensorSpec, spec: EngineSpec) -> onnx.ValueInfoProto:
    shape = [_DIM_NAMES[d] if spec.built_dim(d) is None else spec.built_dim(d) for d in b.shape]
    return helper.make_tensor_value_info(b.name, lookup_dtype(b.dtype).onnx, shape)


def check_tree_exportable(bundle) -> None:
    """Raises ``ConfigError`` for what the tree-verify graph cannot express."""
    check_exportable(bundle.base)
    if any(bundle.base.model.sliding_windows):
        raise ConfigError(
            "onnx tree export: sliding_windows="
            f"{bundle.base.model.sliding_windows} (expected full attention in every layer); "
            "windows over tree positions are not in the ONNX graph yet"
        )


def _tree_inputs(g: GraphBuilder, bundle) -> dict[str, str]:
    cfg = bundle.base
    cap, dt = cfg.kv_capacity, cfg.dtype
    start = "kvcache_start_index"
    seq = g.op("Gather", [g.op("Shape", ["attention_mask"]), g.i64(1)], axis=0)
    j = g.op("Range", [g.const(np.int64(0)), seq, g.const(np.int64(1))])  # [S]
    words = g.op("Gather", ["attention_mask", g.op("Div", [j, g.const(np.int64(32))])], axis=2)
    pow2 = g.const((np.uint32(1) << np.arange(32, dtype=np.uint32)).view(np.int32), "pow2")
    bit = g.op("Gather", [pow2, g.op("Mod", [j, g.const(np.int64(32))])], axis=0)  # [S]
    zero = g.const(np.int32(0))
    bits = g.op("Not", [g.op("Equal", [g.op("BitwiseAnd", [words, bit]), zero])])  # [B, S, S]
    slot = g.const(np.arange(cap, dtype=np.int32).reshape(1, cap), "slot")
    rel = g.op("Sub", [slot, g.op("Unsqueeze", [start, g.i64(1)])])  # [B, C]
    seq32 = g.op("Cast", [seq], to=TensorProto.INT32)
    in_tree = g.op("And", [g.op("GreaterOrEqual", [rel, zero]), g.op("Less", [rel, seq32])])
    top = g.op("Sub", [seq32, g.const(np.int32(1))])
    idx = g.op("Min", [g.op("Max", [rel, zero]), top])  # [B, C]
    full = g.op("Concat", [g.op("Shape", ["attention_mask"], end=2), g.i64(cap)], axis=0)
    idx3 = g.op("Expand", [g.op("Unsqueeze", [idx, g.i64(1)]), full])  # [B, S, C]
    tree_bit = g.op("GatherElements", [bits, g.op("Cast", [idx3], to=TensorProto.INT64)], axis=2)
    seen = g.op(
        "Or",
        [
            g.op("Unsqueeze", [g.op("Less", [rel, zero]), g.i64(1)]),
            g.op("And", [g.op("Unsqueeze", [in_tree, g.i64(1)]), tree_bit]),
        ],
    )
    ctx = g.op("Unsqueeze", ["context_lengths", g.i64(1, 2)])  # [B, 1, 1]
    slot3 = g.op("Unsqueeze", [slot, g.i64(0)])  # [1, 1, C]
    mask = g.op("And", [seen, g.op("Less", [slot3, ctx])])
    mask = g.op("Unsqueeze", [mask, g.i64(1)])  # [B, 1, S, C]
    pos = g.op("Min", ["attention_pos_id", g.const(np.int32(cap - 1))])
    half = cfg.model.rope.rotary_dim // 2
    table = g.op("Squeeze", ["rope_rotary_cos_sin", g.i64(0)])  # [C, rot]
    cos = g.op("Slice", [table, g.i64(0), g.i64(half), g.i64(1)])
    sin = g.op("Slice", [table, g.i64(half), g.i64(2 * half), g.i64(1)])
    if dt != "float32":
        cos = g.op("Cast", [cos], to=lookup_dtype(dt).onnx)
        sin = g.op("Cast", [sin], to=lookup_dtype(dt).onnx)
    return {
        "rope_pos": g.op("Cast", [pos], to=TensorProto.INT64),
        "cos": cos,
        "sin": sin,
        "write": g.op("Cast", [start], to=TensorProto.INT64),
        "mask0": mask,
    }


def build_tree_verify_model(bundle, params: Params) -> onnx.ModelProto:
    """The in-memory ONNX model of the base's tree-verify step for ``bundle``."""
    check_tree_exportable(bundle)
    cfg, spec = bundle.base, build_spec_base_spec(bundle)
    m, dt = cfg.model, cfg.dtype
    g = GraphBuilder()
    shared = _tree_inputs(g, bundle)
    x, aux = "inputs_embeds", {}
    for i, lp in enumerate(params["layers"]):
        aux[i] = x
        x = _layer(g, cfg, i, lp, x, shared)
    aux[m.num_hidden_layers] = x
    feats = g.op("Concat", [aux[i] for i in bundle.draft.aux_layers], axis=-1)
    g.op("Reshape", [feats, g.i64(-1, bundle.hidden_dim)], outputs=["hidden_states"])
    idx = g.op("Unsqueeze", [g.op("Cast", ["last_token_ids"], to=TensorProto.INT64), g.i64(-1)])
    picked = g.op("GatherND", [x, idx], batch_dims=1)
    h = _rms(g, picked, g.weight(params["final_norm"], "final_norm", dt), m.rms_norm_eps)
    head = np.asarray(params["lm_head"] if "lm_head" in params else params["embed"]).T
    logits = g.op("MatMul", [h, g.weight(head, "lm_head", dt)])
    if dt != "float32":
        logits = g.op("Cast", [logits], to=TensorProto.FLOAT)
    g.op("Reshape", [logits, g.i64(-1, m.vocab_size)], outputs=["logits"])
    graph = helper.make_graph(
        g.nodes,
        "edgellm_fn_tree_verify",
        [_value_info(b, spec) for b in spec.inputs()],
        [_value_info(b, spec) for b in spec.outputs()],
        initializer=g.initializers,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="edgellm_fn",
        ir_version=IR_VERSION,
    )
    model.doc_string = f"edgellm_fn {m.architecture} EAGLE3 base tree verify (profile 1)"
    return model


def export_tree_verify_onnx(bundle, params: Params, out_dir: str | Path) -> Path:
    """Writes ``tree_verify.onnx`` (+ external weights) into ``out_dir``; returns its path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = build_tree_verify_model(bundle, params)
    onnx.checker.check_model(model, full_check=False)
    path = out_dir / TREE_MODEL_FILE
    data = "tree_verify." + DATA_FILE
    (out_dir / data).unlink(missing_ok=True)
    onnx.save_model(
        model,
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=data,
        size_threshold=EXTERNAL_THRESHOLD,
    )
    return path
