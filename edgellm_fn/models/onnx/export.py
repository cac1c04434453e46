"""ONNX export of a loaded model with exactly the engine contract (``build_llm_spec``).

Batch, sequence, start-index and select lengths are dynamic (named dims); the KV capacity and the
RoPE batch are static. Only standard opset-24 ops are used (``Attention``, ``TensorScatter``,
``RotaryEmbedding``, ``RMSNormalization``), so onnxruntime runs the file and TensorRT's ONNX parser
maps it onto its native attention, rotary and KV-cache-update layers.
"""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import helper

from ...config import EngineConfig
from ...dtypes import dtype as lookup_dtype
from ...engine.spec import EngineSpec, TensorSpec, build_llm_spec
from ...errors import ConfigError
from ..llama import Params
from .graph import OPSET, GraphBuilder, decoder_graph

#: onnxruntime reads models up to this IR version.
IR_VERSION = 11
MODEL_FILE = "model.onnx"
DATA_FILE = "model.onnx.data"
#: Initializers above this many bytes go to ``DATA_FILE``.
EXTERNAL_THRESHOLD = 1024

_DIM_NAMES = {
    ("batch",): "batch",
    ("seq_len",): "seq_len",
    ("select_len",): "select_len",
    ("start_index_len",): "start_index_len",
    ("batch", "select_len"): "logits_rows",
}


def value_info(b: TensorSpec, spec: EngineSpec) -> onnx.ValueInfoProto:
    """The graph input/output declaration of binding ``b``: sizes fixed by ``spec`` at build
    time, named dims for the dynamic ones."""
    shape: list[int | str] = []
    for d in b.shape:
        fixed = spec.built_dim(d)
        shape.append(_DIM_NAMES[d] if fixed is None else fixed)
    return helper.make_tensor_value_info(b.name, lookup_dtype(b.dtype).onnx, shape)


def check_exportable(cfg: EngineConfig) -> None:
    """Raises ``ConfigError`` for configs the ONNX graph cannot express."""
    if cfg.model.hybrid is not None:
        raise ConfigError(
            f"onnx export: architecture={cfg.model.architecture} (expected a dense decoder); "
            "the Mamba2 layers' chunked scan and state updates are not in the ONNX graph (no "
            "standard op; they would need a Scan/Loop subgraph), so hybrid models run on the "
            "xla provider only"
        )
    m = cfg.model
    if m.mrope is not None:
        raise ConfigError(
            f"onnx export: {m.architecture} uses MRoPE"
            f"{' and deepstack inputs' if m.num_deepstack_features else ''} (expected a 1-D "
            "RoPE model); the graph reads one shared rope table and has no deepstack inputs, "
            "run this family on the xla provider"
        )
    rot = cfg.model.rope.rotary_dim
    if rot % 2 or rot > cfg.model.head_dim:
        raise ConfigError(
            f"onnx export: rope rotary_dim={rot} (expected an even number <= head_dim="
            f"{cfg.model.head_dim})"
        )


def build_model(
    cfg: EngineConfig, params: Params, spec: EngineSpec | None = None
) -> onnx.ModelProto:
    """The in-memory ONNX model of ``params`` with the I/O of ``spec`` (default: the contract)."""
    check_exportable(cfg)
    spec = spec or build_llm_spec(cfg)
    g = GraphBuilder()
    decoder_graph(g, cfg, params)
    # External weights are graph inputs of the initializers' names: one built engine, any
    # weight set of this shape, bound at run time (models/external.py).
    bound = {b.name for b in spec.of_kind("weight")}
    graph = helper.make_graph(
        g.nodes,
        "edgellm_fn_decoder",
        [value_info(b, spec) for b in spec.inputs()],
        [value_info(b, spec) for b in spec.outputs()],
        initializer=[t for t in g.initializers if t.name not in bound],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="edgellm_fn",
        ir_version=IR_VERSION,
    )
    model.doc_string = f"edgellm_fn {cfg.model.architecture} decoder, engine contract v1"
    return model


def export_onnx(cfg: EngineConfig, params: Params, out_dir: str | Path) -> Path:
    """Writes ``model.onnx`` (+ ``model.onnx.data`` for large weights) into ``out_dir``.

    Args:
      cfg: engine config (model dims, KV capacity, dtypes).
      params: params pytree of ``models/llama.py``.
      out_dir: directory to write into (created if missing).

    Returns:
      The path of ``model.onnx``.

    Raises:
      ConfigError: the model uses something the ONNX graph cannot express.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = build_model(cfg, params)
    onnx.checker.check_model(model, full_check=False)
    path = out_dir / MODEL_FILE
    (out_dir / DATA_FILE).unlink(missing_ok=True)
    onnx.save_model(
        model,
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=DATA_FILE,
        size_threshold=EXTERNAL_THRESHOLD,
    )
    return path
