"""A small ONNX graph builder and the Llama-family decoder written with standard opset-24 ops.

The graph implements the engine contract (``engine/spec.py``) with the same numerics as
``models/llama.py``. Per layer, the KV write and attention are::

    k_new ─ RotaryEmbedding ─┐
    past_key_i ──────────────┴─ TensorScatter(axis=2, write_indices=start) ─► present_key_i
                                                       │ (whole slab [B, Hkv, C, D])
    q ─ RotaryEmbedding ─────────────── Attention(q, present_k, present_v, mask) ─► y

    mask[b, 0, s, c] = c < context_lengths[b]  and  c <= start[b] + s  (and c > pos - window)

With a LoRA bank (``max_lora_rank >= 1``) each projection adds its row's adapter delta, gathered
from the ``lora_A/B_*`` inputs at ``lora_index`` (``models/lora.py``). With external weights the
weights are graph inputs of the same names (``export.build_model`` drops those initializers),
and a declared ``lm_head_weight`` extra input replaces the lm_head (``models/external.py``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ...config import EngineConfig
from ...dtypes import dtype as lookup_dtype
from ..external import LM_HEAD_INPUT
from ..llama import Params
from ..lora import INDEX_BINDING, binding_name

OPSET = 24


class GraphBuilder:
    """Collects nodes and initializers; ``op`` returns the output name(s) of the new node."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._count = 0

    def _name(self, hint: str) -> str:
        self._count += 1
        return f"{hint}_{self._count}"

    def op(
        self, op_type: str, inputs: Sequence[str], *, outputs: int | Sequence[str] = 1, **attrs
    ) -> str | list[str]:
        names = (
            [self._name(op_type.lower()) for _ in range(outputs)]
            if isinstance(outputs, int)
            else list(outputs)
        )
        self.nodes.append(
            helper.make_node(op_type, list(inputs), names, name=self._name(op_type), **attrs)
        )
        return names[0] if len(names) == 1 else names

    def const(self, value: np.ndarray, hint: str = "const") -> str:
        name = self._name(hint)
        self.initializers.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def weight(self, value, name: str, dtype: str) -> str:
        arr = np.asarray(value).astype(lookup_dtype(dtype).jnp)  # bfloat16 via ml_dtypes
        self.initializers.append(numpy_helper.from_array(arr, name))
        return name

    def i64(self, *values: int) -> str:
        return self.const(np.asarray(values, np.int64), "i64")


def _rms(g: GraphBuilder, x: str, scale: str, eps: float, offset: float = 0.0) -> str:
    """RMSNorm; ``offset`` (Gemma's 1 + weight) is added in the graph, so bound external
    weights keep the checkpoint's values."""
    if offset:
        scale = g.op("Add", [scale, g.op("CastLike", [g.const(np.float32(offset)), scale])])
    return g.op("RMSNormalization", [x, scale], axis=-1, epsilon=eps, stash_type=1)


def _softcap(g: GraphBuilder, x: str, cap: float | None) -> str:
    """``cap * tanh(x / cap)``; ``x`` itself without a cap."""
    if cap is None:
        return x
    c = g.op("CastLike", [g.const(np.float32(cap)), x])
    return g.op("Mul", [g.op("Tanh", [g.op("Div", [x, c])]), c])


def _linear(g: GraphBuilder, x: str, w: str, b: str | None) -> str:
    y = g.op("MatMul", [x, w])
    return g.op("Add", [y, b]) if b else y


def _activation(g: GraphBuilder, x: str, act: str) -> str:
    if act == "silu":
        return g.op("Mul", [x, g.op("Sigmoid", [x])])
    if act == "relu":
        return g.op("Relu", [x])
    return g.op("Gelu", [x], approximate="none" if act == "gelu" else "tanh")


def _step_inputs(g: GraphBuilder, cfg: EngineConfig) -> dict[str, str]:
    """Positions, write indices, masks and rope caches shared by every layer."""
    cap, dtype = cfg.kv_capacity, cfg.dtype
    batch_shape = g.op("Shape", ["context_lengths"])
    zeros = g.op(
        "ConstantOfShape", [batch_shape], value=helper.make_tensor("z", TensorProto.INT32, [1], [0])
    )
    # kvcache_start_index is [0] for a fresh prefill: take the first B of (start ++ zeros).
    both = g.op("Concat", ["kvcache_start_index", zeros], axis=0)
    start = g.op("Slice", [both, g.i64(0), batch_shape])
    seq = g.op("Gather", [g.op("Shape", ["inputs_embeds"]), g.i64(1)], axis=0)
    steps = g.op(
        "Range",
        [g.const(np.int32(0)), g.op("Cast", [seq], to=TensorProto.INT32), g.const(np.int32(1))],
    )
    pos = g.op("Add", [g.op("Unsqueeze", [start, g.i64(1)]), g.op("Unsqueeze", [steps, g.i64(0)])])
    rope_pos = g.op("Cast", [g.op("Min", [pos, g.const(np.int32(cap - 1))])], to=TensorProto.INT64)
    slot = g.const(np.arange(cap, dtype=np.int32).reshape(1, 1, 1, cap), "slot")
    pos4 = g.op("Unsqueeze", [pos, g.i64(1, 3)])  # [B, 1, S, 1]
    ctx4 = g.op("Unsqueeze", ["context_lengths", g.i64(1, 2, 3)])  # [B, 1, 1, 1]
    base = g.op("And", [g.op("Less", [slot, ctx4]), g.op("LessOrEqual", [slot, pos4])])
    masks = {0: base}
    for w in sorted(set(cfg.model.sliding_windows) - {0}):
        lo = g.op("Sub", [pos4, g.const(np.int32(w))])
        masks[w] = g.op("And", [base, g.op("Greater", [slot, lo])])
    half = cfg.model.rope.rotary_dim // 2
    table = g.op("Squeeze", ["rope_rotary_cos_sin", g.i64(0)])  # [C, rot] (or [C, 2 rot])
    tables = {}
    # A local rope (Gemma 3's sliding layers) follows the global one on the last axis.
    for kind, off in (("", 0), ("local_", 2 * half)) if cfg.model.local_rope else (("", 0),):
        cos = g.op("Slice", [table, g.i64(off), g.i64(off + half), g.i64(1)])
        sin = g.op("Slice", [table, g.i64(off + half), g.i64(off + 2 * half), g.i64(1)])
        if dtype != "float32":
            cos = g.op("Cast", [cos], to=lookup_dtype(dtype).onnx)
            sin = g.op("Cast", [sin], to=lookup_dtype(dtype).onnx)
        tables[f"{kind}cos"], tables[f"{kind}sin"] = cos, sin
    write = g.op("Cast", [start], to=TensorProto.INT64)
    return {
        "rope_pos": rope_pos,
        **tables,
        "write": write,
        **{f"mask{w}": m for w, m in masks.items()},
    }


def _heads(g: GraphBuilder, x: str, heads: int, head_dim: int) -> str:
    """``[B, S, heads*D]`` → ``[B, S, heads, D]``."""
    return g.op("Reshape", [x, g.i64(0, 0, heads, head_dim)])


def _layer(
    g: GraphBuilder, cfg: EngineConfig, i: int, lp: Params, x: str, s: dict[str, str]
) -> str:
    m, dt = cfg.model, cfg.dtype
    p = f"layers.{i}."

    def w(key: str) -> str | None:
        if key not in lp:
            return None
        value = np.asarray(lp[key])
        # ONNX MatMul takes [in, out]; the params hold [out, in] (the checkpoint's layout).
        return g.weight(value.T if value.ndim == 2 else value, p + key, dt)

    eps, off = m.rms_norm_eps, m.norm_offset
    h = _rms(g, x, w("attn_norm"), eps, off)
    qkv = _lora(g, cfg, i, h, _linear(g, h, w("wqkv"), w("bqkv")), "q_proj", "k_proj", "v_proj")
    q, k, v = g.op("Split", [qkv, g.i64(m.q_size, m.kv_size, m.kv_size)], outputs=3, axis=-1)
    q = _heads(g, q, m.num_attention_heads, m.head_dim)
    k = _heads(g, k, m.num_key_value_heads, m.head_dim)
    v = _heads(g, v, m.num_key_value_heads, m.head_dim)
    if m.qk_norm:
        q = _rms(g, q, w("q_norm"), eps, off)
        k = _rms(g, k, w("k_norm"), eps, off)
    q, k, v = (g.op("Transpose", [t], perm=[0, 2, 1, 3]) for t in (q, k, v))  # [B, heads, S, D]
    rope = dict(rotary_embedding_dim=m.rope.rotary_dim, interleaved=0)
    kind = "local_" if m.local_rope and m.sliding_windows[i] else ""
    cos, sin = s[f"{kind}cos"], s[f"{kind}sin"]
    q = g.op("RotaryEmbedding", [q, cos, sin, s["rope_pos"]], **rope)
    k = g.op("RotaryEmbedding", [k, cos, sin, s["rope_pos"]], **rope)
    caches = []
    for kind, new in (("key", k), ("value", v)):
        if cfg.kv_dtype != dt:
            new = g.op("Cast", [new], to=lookup_dtype(cfg.kv_dtype).onnx)
        out = g.op(
            "TensorScatter",
            [f"past_{kind}_{i}", new, s["write"]],
            outputs=[f"present_{kind}_{i}"],
            axis=2,
            mode="linear",
        )
        caches.append(out if cfg.kv_dtype == dt else g.op("Cast", [out], to=lookup_dtype(dt).onnx))
    mask = s[f"mask{m.sliding_windows[i]}"]
    # No softmax_precision: TensorRT rejects it (its attention layer picks its own precision).
    attn = dict(scale=m.attn_scale)
    if m.attn_softcap is not None:
        attn["softcap"] = m.attn_softcap
    y = g.op("Attention", [q, caches[0], caches[1], mask], **attn)
    y = g.op("Reshape", [g.op("Transpose", [y], perm=[0, 2, 1, 3]), g.i64(0, 0, m.q_size)])
    out = _lora(g, cfg, i, y, _linear(g, y, w("wo"), w("bo")), "o_proj")
    if m.sandwich_norms:
        out = _rms(g, out, w("post_attn_norm"), eps, off)
    x = g.op("Add", [x, out])
    h = _rms(g, x, w("mlp_norm"), eps, off)
    gate_up = _lora(
        g, cfg, i, h, _linear(g, h, w("w_gate_up"), w("b_gate_up")), "gate_proj", "up_proj"
    )
    gate, up = g.op(
        "Split", [gate_up, g.i64(m.intermediate_size, m.intermediate_size)], outputs=2, axis=-1
    )
    act = g.op("Mul", [_activation(g, gate, m.hidden_act), up])
    down = _lora(g, cfg, i, act, _linear(g, act, w("w_down"), w("b_down")), "down_proj")
    if m.sandwich_norms:
        down = _rms(g, down, w("post_mlp_norm"), eps, off)
    return g.op("Add", [x, down])


def _lora(g: GraphBuilder, cfg: EngineConfig, i: int, x: str, y: str, *targets: str) -> str:
    """``y`` plus each row's adapter delta of ``targets`` (concatenated), from the bank inputs
    ``lora_A/B_<target>_<i>`` gathered at ``lora_index``; ``y`` itself without LoRA."""
    if not cfg.deployment.max_lora_rank:
        return y
    parts = []
    for t in targets:
        a = g.op("Gather", [binding_name("A", t, i), INDEX_BINDING], axis=0)  # [B, R, in]
        b = g.op("Gather", [binding_name("B", t, i), INDEX_BINDING], axis=0)  # [B, out, R]
        xa = g.op("MatMul", [x, g.op("Transpose", [a], perm=[0, 2, 1])])  # [B, S, R]
        parts.append(g.op("MatMul", [xa, g.op("Transpose", [b], perm=[0, 2, 1])]))
    d = parts[0] if len(parts) == 1 else g.op("Concat", parts, axis=-1)
    return g.op("Add", [y, d])


def decoder_graph(g: GraphBuilder, cfg: EngineConfig, params: Params) -> None:
    """Adds every node of the decoder; graph I/O names are the contract's binding names."""
    m, dt = cfg.model, cfg.dtype
    shared = _step_inputs(g, cfg)
    x = "inputs_embeds"
    if m.embed_scale != 1.0:  # Gemma: the plain lookup times sqrt(hidden), in the model dtype
        x = g.op("Mul", [x, g.op("CastLike", [g.const(np.float32(m.embed_scale)), x])])
    for i, lp in enumerate(params["layers"]):
        x = _layer(g, cfg, i, lp, x, shared)
    idx = g.op("Unsqueeze", [g.op("Cast", ["last_token_ids"], to=TensorProto.INT64), g.i64(-1)])
    picked = g.op("GatherND", [x, idx], batch_dims=1)  # [B, sel, H]
    final_norm = g.weight(params["final_norm"], "final_norm", dt)
    h = _rms(g, picked, final_norm, m.rms_norm_eps, m.norm_offset)
    if LM_HEAD_INPUT in cfg.deployment.extra_inputs:  # bound at run time: [Vout, H]
        head_name = g.op("Transpose", [LM_HEAD_INPUT], perm=[1, 0])
    else:
        # A reduced vocabulary's params hold the sliced head (models/vocab.py: reduce_params).
        head = np.asarray(params["lm_head"] if "lm_head" in params else params["embed"]).T
        head_name = g.weight(head, "lm_head", dt)
    logits = g.op("MatMul", [h, head_name])
    if dt != "float32":
        logits = g.op("Cast", [logits], to=TensorProto.FLOAT)
    logits = _softcap(g, logits, m.final_softcap)
    g.op("Reshape", [logits, g.i64(-1, cfg.output_vocab_size)], outputs=["logits"])
