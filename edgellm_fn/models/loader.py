"""Loading a Hugging Face checkpoint directory into ``(ModelConfig, params)`` and saving one back.

Single-file (``model.safetensors``) and sharded (``model.safetensors.index.json``) checkpoints are
read; q/k/v and gate/up projections are fused, keeping the checkpoint's ``[out, in]`` layout
(see ``models/llama.py`` for the params pytree). Phi-3 checkpoints hold them fused already
(``qkv_proj``, ``gate_up_proj``: the same row order); Gemma's four norms per layer are mapped
by ``norm_names``.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath, PureWindowsPath

import jax.numpy as jnp
import numpy as np

from ..config import ModelConfig, normalize_dtype, read_json_file
from ..dtypes import dtype as lookup_dtype
from ..errors import CheckpointError, show
from .llama import Params
from .safetensors_io import (
    FLOAT_DTYPES,
    FLOAT_NUMPY_DTYPES,
    dtype_name,
    load_file,
    read_header,
    save_file,
)


def norm_names(cfg: ModelConfig) -> dict[str, str]:
    """Params key of each per-layer norm -> its Hugging Face name (under ``model.layers.i.``)."""
    if cfg.sandwich_norms:  # Gemma: post_attention_layernorm normalises the attention output
        return {
            "attn_norm": "input_layernorm",
            "post_attn_norm": "post_attention_layernorm",
            "mlp_norm": "pre_feedforward_layernorm",
            "post_mlp_norm": "post_feedforward_layernorm",
        }
    return {"attn_norm": "input_layernorm", "mlp_norm": "post_attention_layernorm"}


def _fused_checkpoint(cfg: ModelConfig) -> bool:
    """Phi-3 stores q/k/v as one ``qkv_proj`` and gate/up as one ``gate_up_proj``."""
    return cfg.family == "phi3"


#: Where a VL checkpoint saved by transformers 5 keeps its text decoder (older files, and
#: Qwen2(.5)-VL saved by transformers 5 in their original layout, use ``model.``).
VL_DECODER_PREFIX = "model.language_model."


def decoder_prefix(cfg: ModelConfig, names) -> str:
    """``"model."``, or ``VL_DECODER_PREFIX`` for a VL checkpoint whose tensors use it."""
    if cfg.mrope is not None and f"{VL_DECODER_PREFIX}embed_tokens.weight" in names:
        return VL_DECODER_PREFIX
    return "model."


def hf_tensor_shapes(cfg: ModelConfig, prefix: str = "model.") -> dict[str, tuple[int, ...]]:
    """Every tensor name the checkpoint must hold, with its Hugging Face shape ``[out, in]``.

    ``prefix``: where the decoder's tensors live (``decoder_prefix``); ``lm_head`` is top-level.
    A VL checkpoint's vision tower is not among them (it is not loaded).
    """
    if cfg.hybrid is not None:  # NemotronH: models/hybrid_weights.py
        from .hybrid_weights import hf_tensor_shapes as hybrid_shapes

        return hybrid_shapes(cfg)
    h, f, d = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim
    shapes: dict[str, tuple[int, ...]] = {
        f"{prefix}embed_tokens.weight": (cfg.vocab_size, h),
        f"{prefix}norm.weight": (h,),
    }
    if not cfg.tie_word_embeddings:
        shapes["lm_head.weight"] = (cfg.vocab_size, h)
    for i in range(cfg.num_hidden_layers):
        p = f"{prefix}layers.{i}."
        for hf in norm_names(cfg).values():
            shapes[p + f"{hf}.weight"] = (h,)
        if _fused_checkpoint(cfg):
            shapes[p + "self_attn.qkv_proj.weight"] = (cfg.q_size + 2 * cfg.kv_size, h)
            shapes[p + "self_attn.o_proj.weight"] = (h, cfg.q_size)
            shapes[p + "mlp.gate_up_proj.weight"] = (2 * f, h)
            shapes[p + "mlp.down_proj.weight"] = (h, f)
            continue  # Phi-3 has no biases or q/k norms
        for name, out in (("q", cfg.q_size), ("k", cfg.kv_size), ("v", cfg.kv_size)):
            shapes[p + f"self_attn.{name}_proj.weight"] = (out, h)
            if cfg.qkv_bias:
                shapes[p + f"self_attn.{name}_proj.bias"] = (out,)
        shapes[p + "self_attn.o_proj.weight"] = (h, cfg.q_size)
        if cfg.o_bias:
            shapes[p + "self_attn.o_proj.bias"] = (h,)
        if cfg.qk_norm:
            shapes[p + "self_attn.q_norm.weight"] = (d,)
            shapes[p + "self_attn.k_norm.weight"] = (d,)
        for name, shape in (("gate", (f, h)), ("up", (f, h)), ("down", (h, f))):
            shapes[p + f"mlp.{name}_proj.weight"] = shape
            if cfg.mlp_bias:
                shapes[p + f"mlp.{name}_proj.bias"] = shape[:1]
    return shapes


def _locate(ckpt: Path) -> dict[str, Path]:
    """Maps each tensor name to the file that holds it (always inside ``ckpt``)."""
    index = ckpt / "model.safetensors.index.json"
    if index.is_file():
        raw = read_json_file(index, CheckpointError, "a safetensors index")
        weight_map = raw.get("weight_map") if isinstance(raw, dict) else None
        if not isinstance(weight_map, dict):
            got = show(weight_map) if isinstance(raw, dict) else f"a {type(raw).__name__}"
            raise CheckpointError(
                f"{index}: weight_map={got} (expected an object mapping tensor names to shard "
                "file names); re-save the checkpoint with save_pretrained"
            )
        root = ckpt.resolve()
        files: dict[str, Path] = {}
        shards: dict[str, Path] = {}
        for name, shard in weight_map.items():
            if not isinstance(shard, str) or shard not in shards:
                path = _shard_path(index, root, name, shard)  # refuses a non-str shard
                shards[shard] = path
            files[name] = shards[shard]
        return files
    single = ckpt / "model.safetensors"
    if not single.is_file():
        raise CheckpointError(
            f"{ckpt}: no model.safetensors or model.safetensors.index.json (expected a Hugging "
            "Face checkpoint saved with safetensors)"
        )
    header, _ = read_header(single)
    return dict.fromkeys(header, single)


def _shard_path(index: Path, root: Path, name: str, shard) -> Path:
    """The shard's path, refused unless it names a file inside the checkpoint directory.

    The name must be relative with no ``..`` part, and its folder must resolve inside ``root``;
    the file itself may be a symlink (the Hugging Face hub cache links snapshots to blobs).
    """
    where = f"{index}: weight_map[{show(name)}]"
    if not isinstance(shard, str) or not shard or "\x00" in shard:
        raise CheckpointError(f"{where}={show(shard)} (expected a shard file name)")
    rel = PurePosixPath(shard.replace("\\", "/"))
    if rel.is_absolute() or ".." in rel.parts or PureWindowsPath(shard).drive:
        raise CheckpointError(
            f"{where}={show(shard)} (expected a file name inside the checkpoint directory "
            f"{root}); the index points outside the checkpoint, refusing to read it"
        )
    path = root.joinpath(*rel.parts)
    try:
        folder = path.parent.resolve()
    except (OSError, RuntimeError) as e:
        raise CheckpointError(f"{where}={show(shard)} cannot be resolved ({e})") from None
    if not folder.is_relative_to(root):
        raise CheckpointError(
            f"{where}={show(shard)} (expected a file inside the checkpoint directory {root}); "
            f"its folder resolves to {folder}, refusing to read outside the checkpoint"
        )
    if not path.is_file():
        raise CheckpointError(f"{index}: tensor {show(name)} is in {shard}, which is missing")
    return path


def load_hf_tensors(
    ckpt: str | Path, cfg: ModelConfig, *, allow_non_finite: bool = False
) -> dict[str, np.ndarray]:
    """Reads and checks every tensor ``cfg`` needs; extra tensors are ignored.

    Each must have its ``config.json`` shape and a floating dtype, and (unless
    ``allow_non_finite``) hold no NaN or infinity.

    Raises:
      CheckpointError: a file or tensor is missing, corrupt, of the wrong shape or dtype, or
        holds non-finite values; the message names the file and the tensor.
    """
    ckpt = Path(ckpt)
    located = _locate(ckpt)
    index = ckpt / "model.safetensors.index.json"
    source = index if index.is_file() else ckpt / "model.safetensors"
    shapes = hf_tensor_shapes(cfg, decoder_prefix(cfg, located))
    by_file: dict[Path, set[str]] = {}
    for name in shapes:
        if name not in located:
            raise CheckpointError(
                f"{source}: missing tensor {name!r} (expected shape {list(shapes[name])})"
            )
        by_file.setdefault(located[name], set()).add(name)
    tensors: dict[str, np.ndarray] = {}
    for path, names in sorted(by_file.items()):
        loaded = load_file(path, names)
        for name in sorted(names):
            if name not in loaded:
                raise CheckpointError(
                    f"{path}: missing tensor {name!r} (the index lists it in this file; expected "
                    f"shape {list(shapes[name])}); the index and the shard disagree"
                )
        tensors.update(loaded)
    for name, shape in shapes.items():
        arr = tensors[name]
        if arr.shape != shape:
            raise CheckpointError(
                f"{located[name]}: tensor {name!r} has shape {list(arr.shape)} (expected "
                f"{list(shape)} from config.json)"
            )
        if arr.dtype not in FLOAT_NUMPY_DTYPES:
            raise CheckpointError(
                f"{located[name]}: tensor {name!r} dtype={dtype_name(arr.dtype)} (expected one "
                f"of {sorted(FLOAT_DTYPES)}: it is a floating weight); the header's dtype is wrong"
            )
        if not allow_non_finite:
            _check_finite(located[name], name, arr)
    return tensors


def _check_finite(path: Path, name: str, arr: np.ndarray) -> None:
    """Refuses NaN/inf, scanning in blocks so the check never doubles the memory of a tensor."""
    flat = arr.reshape(-1)
    first, count = None, 0
    for lo in range(0, flat.size, 1 << 22):
        bad = ~np.isfinite(flat[lo : lo + (1 << 22)])
        n = int(bad.sum())
        if n and first is None:
            first = lo + int(np.argmax(bad))
        count += n
    if count:
        index = [int(i) for i in np.unravel_index(first, arr.shape)]
        raise CheckpointError(
            f"{path}: tensor {name!r} holds {count} non-finite values (first "
            f"{float(flat[first])} at index {index}; expected finite weights); the checkpoint "
            "is corrupt, or pass allow_non_finite=True to load it anyway"
        )


def params_from_hf(cfg: ModelConfig, tensors: dict[str, np.ndarray], dtype: str) -> Params:
    """Fuses Hugging Face tensors into the params pytree, cast to ``dtype``."""
    if cfg.hybrid is not None:  # NemotronH: models/hybrid_weights.py
        from .hybrid_weights import params_from_hf as hybrid_params

        return hybrid_params(cfg, tensors, dtype)
    pre = decoder_prefix(cfg, tensors)
    jdt = lookup_dtype(normalize_dtype(dtype, "dtype")).jnp

    def t(name: str) -> np.ndarray:
        return np.asarray(tensors[name], np.float32)

    def put(x: np.ndarray):
        return jnp.asarray(x, jdt)

    params: Params = {
        "embed": put(t(f"{pre}embed_tokens.weight")),
        "final_norm": put(t(f"{pre}norm.weight")),
    }
    if not cfg.tie_word_embeddings:
        params["lm_head"] = put(t("lm_head.weight"))
    layers = []
    for i in range(cfg.num_hidden_layers):
        p = f"{pre}layers.{i}."
        a, m = p + "self_attn.", p + "mlp."
        lp = {key: put(t(p + f"{hf}.weight")) for key, hf in norm_names(cfg).items()}
        if _fused_checkpoint(cfg):
            lp["wqkv"] = put(t(a + "qkv_proj.weight"))
            lp["w_gate_up"] = put(t(m + "gate_up_proj.weight"))
        else:
            lp["wqkv"] = put(np.concatenate([t(a + f"{n}_proj.weight") for n in "qkv"], 0))
            lp["w_gate_up"] = put(
                np.concatenate([t(m + "gate_proj.weight"), t(m + "up_proj.weight")], 0)
            )
        lp["wo"] = put(t(a + "o_proj.weight"))
        lp["w_down"] = put(t(m + "down_proj.weight"))
        if cfg.qkv_bias:
            lp["bqkv"] = put(np.concatenate([t(a + f"{n}_proj.bias") for n in "qkv"]))
        if cfg.o_bias:
            lp["bo"] = put(t(a + "o_proj.bias"))
        if cfg.qk_norm:
            lp["q_norm"] = put(t(a + "q_norm.weight"))
            lp["k_norm"] = put(t(a + "k_norm.weight"))
        if cfg.mlp_bias:
            lp["b_gate_up"] = put(np.concatenate([t(m + "gate_proj.bias"), t(m + "up_proj.bias")]))
            lp["b_down"] = put(t(m + "down_proj.bias"))
        layers.append(lp)
    params["layers"] = layers
    return params


def load_checkpoint(
    ckpt: str | Path, dtype: str | None = None, *, allow_non_finite: bool = False
) -> tuple[ModelConfig, Params]:
    """Loads ``config.json`` and the safetensors weights of a Hugging Face checkpoint directory.

    Args:
      ckpt: checkpoint directory.
      dtype: ``"float32"``, ``"bfloat16"`` or ``"float16"``; defaults to the checkpoint's.
      allow_non_finite: load weights holding NaN or infinity instead of refusing them.

    Raises:
      ConfigError: config.json is missing or invalid.
      CheckpointError: a weight file or tensor is missing, truncated, corrupt, outside the
        checkpoint directory, of the wrong shape or dtype, or holds NaN/inf.
    """
    cfg = ModelConfig.from_file(Path(ckpt) / "config.json")
    tensors = load_hf_tensors(ckpt, cfg, allow_non_finite=allow_non_finite)
    return cfg, params_from_hf(cfg, tensors, dtype or cfg.dtype)


def params_to_hf(cfg: ModelConfig, params: Params, prefix: str = "model.") -> dict[str, np.ndarray]:
    """Inverse of ``params_from_hf``: Hugging Face tensor names and ``[out, in]`` layouts
    (the decoder's under ``prefix``)."""

    def n(x) -> np.ndarray:
        return np.asarray(x)

    out = {
        f"{prefix}embed_tokens.weight": n(params["embed"]),
        f"{prefix}norm.weight": n(params["final_norm"]),
    }
    if not cfg.tie_word_embeddings:
        out["lm_head.weight"] = n(params["lm_head"])
    q, kv = cfg.q_size, cfg.kv_size
    for i, lp in enumerate(params["layers"]):
        p = f"{prefix}layers.{i}."
        a, m = p + "self_attn.", p + "mlp."
        for key, hf in norm_names(cfg).items():
            out[p + f"{hf}.weight"] = n(lp[key])
        if _fused_checkpoint(cfg):
            out[a + "qkv_proj.weight"] = n(lp["wqkv"])
            out[a + "o_proj.weight"] = n(lp["wo"])
            out[m + "gate_up_proj.weight"] = n(lp["w_gate_up"])
            out[m + "down_proj.weight"] = n(lp["w_down"])
            continue
        wq, wk, wv = np.split(n(lp["wqkv"]), [q, q + kv], axis=0)
        out.update({a + "q_proj.weight": wq, a + "k_proj.weight": wk, a + "v_proj.weight": wv})
        out[a + "o_proj.weight"] = n(lp["wo"])
        gate, up = np.split(n(lp["w_gate_up"]), 2, axis=0)
        out.update({m + "gate_proj.weight": gate, m + "up_proj.weight": up})
        out[m + "down_proj.weight"] = n(lp["w_down"])
        if "bqkv" in lp:
            bq, bk, bv = np.split(n(lp["bqkv"]), [q, q + kv])
            out.update({a + "q_proj.bias": bq, a + "k_proj.bias": bk, a + "v_proj.bias": bv})
        if "bo" in lp:
            out[a + "o_proj.bias"] = n(lp["bo"])
        if "q_norm" in lp:
            out[a + "q_norm.weight"] = n(lp["q_norm"])
            out[a + "k_norm.weight"] = n(lp["k_norm"])
        if "b_gate_up" in lp:
            bg, bu = np.split(n(lp["b_gate_up"]), 2)
            out.update({m + "gate_proj.bias": bg, m + "up_proj.bias": bu})
            out[m + "down_proj.bias"] = n(lp["b_down"])
    return {k: np.ascontiguousarray(v) for k, v in out.items()}


def save_weights(cfg: ModelConfig, params: Params, path: str | Path) -> None:
    """Writes ``params`` as a Hugging Face ``model.safetensors`` file."""
    save_file(params_to_hf(cfg, params), path)
