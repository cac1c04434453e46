"""Loading an EAGLE3 draft checkpoint directory (``config.json`` + ``model.safetensors``).

Tensor names follow the community releases: ``fc.weight``, the layer under ``midlayer.`` (or
``layers.0.``, optionally behind ``model.``), ``norm.weight``, ``lm_head.weight``, ``d2t``
(draft id → target id offset; required when the draft vocabulary is reduced), ``t2d`` (ignored)
and, optionally, ``embed_tokens.weight`` (absent: the base's embedding is shared).
Every check against the base (hidden size, vocabulary, RoPE, feature layers) happens here, so a
mismatched draft fails at load time with a named error.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from ..config import ModelConfig, normalize_dtype
from ..dtypes import dtype as lookup_dtype
from ..errors import CheckpointError, ConfigError
from .eagle3 import Eagle3Config, default_aux_layers
from .llama import Params
from .safetensors_io import FLOAT_NUMPY_DTYPES, dtype_name, load_file, read_header, save_file


def _canonical(name: str) -> str:
    """``model.layers.0.x`` / ``layers.0.x`` / ``model.x`` → ``midlayer.x`` / ``x``."""
    name = name.removeprefix("model.")
    return "midlayer." + name.removeprefix("layers.0.") if name.startswith("layers.0.") else name


def eagle3_tensor_shapes(cfg: Eagle3Config, prefix: str = "midlayer.") -> dict[str, tuple]:
    """Every weight the draft needs (``d2t``/``embed_tokens`` aside) with its shape."""
    h, f = cfg.hidden_size, cfg.intermediate_size
    p = prefix
    shapes = {
        "fc.weight": (h, 3 * cfg.target_hidden_size),
        p + "input_layernorm.weight": (h,),
        p + "hidden_norm.weight": (h,),
        p + "self_attn.q_proj.weight": (cfg.q_size, 2 * h),
        p + "self_attn.k_proj.weight": (cfg.kv_size, 2 * h),
        p + "self_attn.v_proj.weight": (cfg.kv_size, 2 * h),
        p + "self_attn.o_proj.weight": (h, cfg.q_size),
        p + "post_attention_layernorm.weight": (h,),
        p + "mlp.gate_proj.weight": (f, h),
        p + "mlp.up_proj.weight": (f, h),
        p + "mlp.down_proj.weight": (h, f),
        "norm.weight": (h,),
        "lm_head.weight": (cfg.draft_vocab_size, h),
    }
    if cfg.qkv_bias:
        for n, out in (("q", cfg.q_size), ("k", cfg.kv_size), ("v", cfg.kv_size)):
            shapes[p + f"self_attn.{n}_proj.bias"] = (out,)
    if cfg.o_bias:
        shapes[p + "self_attn.o_proj.bias"] = (h,)
    return shapes


def check_against_base(cfg: Eagle3Config, base: ModelConfig, where: str) -> tuple[int, ...]:
    """Refuses a draft made for another base; returns the resolved feature layers."""
    if cfg.target_hidden_size != base.hidden_size:
        raise ConfigError(
            f"{where}: target_hidden_size={cfg.target_hidden_size} (expected the base's "
            f"hidden_size={base.hidden_size}); this draft was trained for another base model"
        )
    if cfg.vocab_size != base.vocab_size:
        raise ConfigError(
            f"{where}: vocab_size={cfg.vocab_size} (expected the base's vocab_size="
            f"{base.vocab_size}); the draft and the base must share one tokenizer"
        )
    if cfg.rope != base.rope:
        diff = [
            f"{f.name}={getattr(cfg.rope, f.name)!r} (base: {getattr(base.rope, f.name)!r})"
            for f in dataclasses.fields(cfg.rope)
            if getattr(cfg.rope, f.name) != getattr(base.rope, f.name)
        ]
        raise ConfigError(
            f"{where}: rope {', '.join(diff)} (expected the base's rope parameters); one RoPE "
            "table serves base and draft"
        )
    layers = base.num_hidden_layers
    aux = cfg.aux_layer_ids or default_aux_layers(layers)
    bad = [i for i in aux if not 0 <= i <= layers]
    if bad or len(aux) != 3:
        raise ConfigError(
            f"{where}: eagle_aux_hidden_state_layer_ids={list(aux)} (expected 3 ids, each in "
            f"0..num_hidden_layers={layers} of the base); set it in the draft's config.json"
        )
    return tuple(aux)


def load_eagle3_draft(
    path: str | Path, base: ModelConfig, dtype: str | None = None
) -> tuple[Eagle3Config, Params, tuple[int, ...]]:
    """Loads and checks an EAGLE3 draft for ``base``.

    Returns:
      ``(config, params, aux_layers)``; params as in ``models/eagle3.py`` (without ``embed``
      when the checkpoint has no embedding: the base's is used).

    Raises:
      ConfigError: config.json is invalid or made for another base.
      CheckpointError: a tensor is missing, of the wrong shape or dtype, non-finite, or
        ``d2t`` maps outside the target vocabulary.
    """
    path = Path(path)
    cfg = Eagle3Config.from_file(path / "config.json")
    aux = check_against_base(cfg, base, str(path / "config.json"))
    file = path / "model.safetensors"
    if not file.is_file():
        raise CheckpointError(f"{path}: no model.safetensors (expected an EAGLE3 draft checkpoint)")
    header, _ = read_header(file)
    actual = {_canonical(n): n for n in header}  # canonical name -> name in the file
    shapes = eagle3_tensor_shapes(cfg)
    if "embed_tokens.weight" in actual:
        shapes["embed_tokens.weight"] = (cfg.vocab_size, cfg.hidden_size)
    elif cfg.hidden_size != base.hidden_size:
        raise ConfigError(
            f"{path}: the draft has no embed_tokens and hidden_size={cfg.hidden_size} (expected "
            f"the base's hidden_size={base.hidden_size} to share its embedding)"
        )
    if "d2t" not in actual and cfg.draft_vocab_size != cfg.vocab_size:
        raise CheckpointError(
            f"{file}: missing tensor 'd2t' (expected [{cfg.draft_vocab_size}] ints: "
            f"draft_vocab_size={cfg.draft_vocab_size} < vocab_size={cfg.vocab_size})"
        )
    missing = sorted(n for n in shapes if n not in actual)
    if missing:
        raise CheckpointError(
            f"{file}: missing tensor {missing[0]!r} (expected shape {list(shapes[missing[0]])}; "
            "the layer may also be under 'layers.0.', names may start with 'model.')"
        )
    wanted = [*shapes, *(["d2t"] if "d2t" in actual else [])]
    loaded = load_file(file, {actual[n] for n in wanted})
    tensors = {n: loaded[actual[n]] for n in wanted}
    for name, shape in shapes.items():
        arr = tensors[name]
        if arr.shape != shape:
            raise CheckpointError(
                f"{file}: tensor {actual[name]!r} has shape {list(arr.shape)} (expected "
                f"{list(shape)} from config.json and the base)"
            )
        if arr.dtype not in FLOAT_NUMPY_DTYPES:
            raise CheckpointError(
                f"{file}: tensor {actual[name]!r} dtype={dtype_name(arr.dtype)} (expected a "
                "float dtype)"
            )
        if not np.isfinite(np.asarray(arr, np.float32)).all():
            raise CheckpointError(f"{file}: tensor {actual[name]!r} holds non-finite values")
    ids = np.arange(cfg.draft_vocab_size, dtype=np.int64)
    if "d2t" in tensors:
        d2t_name = actual["d2t"]
        d2t = tensors["d2t"]
        if d2t.shape != (cfg.draft_vocab_size,) or not np.issubdtype(d2t.dtype, np.integer):
            raise CheckpointError(
                f"{file}: tensor {d2t_name!r} is {dtype_name(d2t.dtype)}{list(d2t.shape)} "
                f"(expected [{cfg.draft_vocab_size}] ints)"
            )
        ids = ids + d2t.astype(np.int64)
    if ids.min() < 0 or ids.max() >= cfg.vocab_size:
        raise CheckpointError(
            f"{file}: d2t maps draft ids to [{ids.min()}, {ids.max()}] (expected target ids in "
            f"0..{cfg.vocab_size - 1})"
        )
    params = _params(cfg, tensors, "midlayer.")
    jdt = lookup_dtype(normalize_dtype(dtype or cfg.dtype, "dtype")).jnp
    params = jax.tree_util.tree_map(lambda x: jnp.asarray(x, jdt), params)
    params["draft_to_target"] = jnp.asarray(ids, jnp.int32)
    return cfg, params, aux


def _params(cfg: Eagle3Config, t: dict[str, np.ndarray], p: str) -> Params:
    def f(name: str) -> np.ndarray:
        return np.asarray(t[name], np.float32)

    a, m = p + "self_attn.", p + "mlp."
    params: Params = {
        "fc": f("fc.weight"),
        "attn_norm": f(p + "input_layernorm.weight"),
        "hidden_norm": f(p + "hidden_norm.weight"),
        "wqkv": np.concatenate([f(a + f"{n}_proj.weight") for n in "qkv"], 0),
        "wo": f(a + "o_proj.weight"),
        "mlp_norm": f(p + "post_attention_layernorm.weight"),
        "w_gate_up": np.concatenate([f(m + "gate_proj.weight"), f(m + "up_proj.weight")], 0),
        "w_down": f(m + "down_proj.weight"),
        "final_norm": f("norm.weight"),
        "lm_head": f("lm_head.weight"),
    }
    if cfg.qkv_bias:
        params["bqkv"] = np.concatenate([f(a + f"{n}_proj.bias") for n in "qkv"])
    if cfg.o_bias:
        params["bo"] = f(a + "o_proj.bias")
    if "embed_tokens.weight" in t:
        params["embed"] = f("embed_tokens.weight")
    return params


def save_eagle3_draft(
    path: str | Path,
    config: dict,
    tensors: dict[str, np.ndarray],
) -> Path:
    """Writes a draft checkpoint directory (``config.json`` + ``model.safetensors``)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(config, indent=2))
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, path / "model.safetensors")
    return path


def random_eagle3_checkpoint(
    path: str | Path,
    base: ModelConfig,
    *,
    seed: int = 0,
    draft_vocab_size: int | None = None,
    intermediate_size: int | None = None,
    aux_layer_ids: tuple[int, ...] | None = None,
    scale: float = 0.15,
    embed: bool = False,
) -> Path:
    """A random float32 EAGLE3 draft for ``base`` in the community layout (tests, benchmarks).

    ``draft_vocab_size`` below the base vocabulary keeps the first ids (``d2t`` all zeros
    would map draft id i to target id i; here the kept target ids are every other id).
    """
    rng = np.random.default_rng(seed)
    h, v = base.hidden_size, base.vocab_size
    dv = draft_vocab_size or v
    heads = base.num_attention_heads
    config = {
        "architectures": ["LlamaForCausalLMEagle3"],
        "hidden_size": h,
        "intermediate_size": intermediate_size or base.intermediate_size,
        "num_attention_heads": heads,
        "num_key_value_heads": base.num_key_value_heads,
        "head_dim": base.head_dim,
        "num_hidden_layers": 1,
        "vocab_size": v,
        "draft_vocab_size": dv,
        "rms_norm_eps": base.rms_norm_eps,
        "rope_theta": base.rope.theta,
        "max_position_embeddings": base.max_position_embeddings,
        "torch_dtype": "float32",
    }
    if base.rope.rope_type != "default":
        config["rope_scaling"] = _rope_dict(base)
    if base.rope.rotary_dim != base.head_dim:
        config["partial_rotary_factor"] = base.rope.rotary_dim / base.head_dim
    if aux_layer_ids is not None:
        config["eagle_config"] = {
            "eagle_aux_hidden_state_layer_ids": list(aux_layer_ids),
            "use_aux_hidden_state": True,
        }
    cfg = Eagle3Config.from_dict(config)
    tensors = {
        name: (rng.standard_normal(shape) * scale).astype(np.float32)
        if len(shape) == 2
        else (1.0 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
        for name, shape in eagle3_tensor_shapes(cfg).items()
    }
    if dv < v:
        kept = np.sort(rng.choice(v, dv, replace=False))
        tensors["d2t"] = (kept - np.arange(dv)).astype(np.int64)
        t2d = np.zeros(v, bool)
        t2d[kept] = True
        tensors["t2d"] = t2d
    if embed:
        tensors["embed_tokens.weight"] = (rng.standard_normal((v, h)) * scale).astype(np.float32)
    return save_eagle3_draft(path, config, tensors)


def _rope_dict(base: ModelConfig) -> dict:
    r = base.rope
    out = {"rope_type": r.rope_type, "factor": r.factor}
    if r.rope_type == "llama3":
        out.update(
            low_freq_factor=r.low_freq_factor,
            high_freq_factor=r.high_freq_factor,
            original_max_position_embeddings=r.original_max_position_embeddings,
        )
    return out
