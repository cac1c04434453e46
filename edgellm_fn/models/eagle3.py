"""EAGLE3 draft model: config (parsed strictly), the spec-decode bundle, and the forward.

Architecture (as the EAGLE3 community checkpoints, ``LlamaForCausalLMEagle3``)::

    base features f [B, S, 3Ht] (inputs of 3 base layers) ──fc (3Ht→H, no bias)──┐
    draft hidden   g [B, S, H]  (the draft's own output, inside a tree) ──────────┴─► h = fc(f) + g
    token embeds   e [B, S, H]
    layer:  a = attn(concat(input_layernorm(e), hidden_norm(h)))    q/k/v take the 2H concat
            x = h + o_proj(a);  out = x + mlp(post_attention_layernorm(x))   (out: "prenorm")
    logits = lm_head(norm(out)) over draft_vocab_size; draft id i is target id i + d2t[i]

The draft input at position p pairs the base feature of position p with the token of position
p+1, so its prediction is the token of position p+2. Upstream feeds fc(features) and the draft's
own hidden state through two bindings and adds them (one of the two is zero in every step).

Params pytree (linear weights ``[out, in]`` as in the checkpoint)::

    {"fc": [H, 3Ht], "embed": [V, H] (absent: the base's embedding is used),
     "attn_norm": [H], "hidden_norm": [H], "wqkv": [(Hq+2Hkv)*D, 2H], "bqkv"?, "wo": [H, Hq*D],
     "bo"?, "mlp_norm": [H], "w_gate_up": [2F, H], "w_down": [H, F], "final_norm": [H],
     "lm_head": [Vd, H], "draft_to_target": [Vd] int32 (absolute target ids)}
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

from ..config import (
    ACTIVATIONS,
    EngineConfig,
    RopeConfig,
    _get,
    _parse_rope,
    _positive,
    _real,
    _require_mapping,
    normalize_dtype,
    read_json,
)
from ..errors import ConfigError, show
from . import llama

ARCHITECTURES = ("LlamaForCausalLMEagle3", "Eagle3LlamaForCausalLM")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Eagle3Config:
    """Dimensions of an EAGLE3 draft head (one decoder layer).

    Attributes:
      hidden_size, intermediate_size, num_attention_heads, num_key_value_heads, head_dim: the
        draft layer's geometry (its q/k/v take ``2 * hidden_size`` inputs).
      vocab_size: the target vocabulary (the embedding table's rows).
      draft_vocab_size: rows of the draft's lm_head (reduced vocabulary, ``d2t`` maps it back).
      target_hidden_size: the base model's hidden size (fc takes ``3 * target_hidden_size``).
      aux_layer_ids: base layers whose inputs are the features, or None for the default
        ``(2, L // 2, L - 3)`` of a base with ``L`` layers.
      rms_norm_eps, hidden_act, qkv_bias, o_bias, mlp_bias: as the Llama family.
      norm_before_residual: the residual is ``hidden_norm(h)`` instead of ``h``.
      rope: rotary parameters (must equal the base's: one RoPE table serves both).
      dtype: checkpoint dtype.
    """

    hidden_size: int
    intermediate_size: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    vocab_size: int
    draft_vocab_size: int
    target_hidden_size: int
    aux_layer_ids: tuple[int, ...] | None
    rms_norm_eps: float
    hidden_act: str
    qkv_bias: bool
    o_bias: bool
    mlp_bias: bool
    norm_before_residual: bool
    rope: RopeConfig
    dtype: str

    @property
    def q_size(self) -> int:
        return self.num_attention_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_key_value_heads * self.head_dim

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], where: str = "draft config.json") -> Eagle3Config:
        return _parse_eagle3(raw, where)

    @classmethod
    def from_file(cls, path: str | Path) -> Eagle3Config:
        path = Path(path)
        if path.is_dir():
            path = path / "config.json"
        return _parse_eagle3(
            read_json(path, missing="expected an EAGLE3 draft config.json"), str(path)
        )

    def dims(self, aux_layers: tuple[int, ...]) -> DraftDims:
        """The draft engine's geometry (one KV layer) for the resolved ``aux_layers``."""
        return DraftDims(
            hidden_size=self.hidden_size,
            num_layers=1,
            num_key_value_heads=self.num_key_value_heads,
            head_dim=self.head_dim,
            draft_vocab_size=self.draft_vocab_size,
            aux_layers=aux_layers,
        )


def default_aux_layers(num_layers: int) -> tuple[int, ...]:
    """EAGLE3's default feature layers ``(2, L // 2, L - 3)`` (inputs of those base layers)."""
    return (2, num_layers // 2, num_layers - 3)


def _parse_eagle3(raw: Mapping[str, Any], where: str) -> Eagle3Config:
    _require_mapping(raw, where)
    archs = raw.get("architectures")
    if not (isinstance(archs, list) and len(archs) == 1 and archs[0] in ARCHITECTURES):
        raise ConfigError(
            f"{where}: architectures={show(archs)} (expected one of {list(ARCHITECTURES)}); "
            "is this an EAGLE3 draft checkpoint?"
        )
    layers = _positive(raw, "num_hidden_layers", where, default=1)
    if layers != 1:
        raise ConfigError(
            f"{where}: num_hidden_layers={layers} (expected 1); EAGLE3 drafts with several "
            "layers are not supported"
        )
    hidden = _positive(raw, "hidden_size", where)
    heads = _positive(raw, "num_attention_heads", where)
    kv_heads = _positive(raw, "num_key_value_heads", where, default=heads)
    if heads % kv_heads:
        raise ConfigError(
            f"{where}: num_key_value_heads={kv_heads} (expected a divisor of "
            f"num_attention_heads={heads})"
        )
    head_dim = _positive(raw, "head_dim", where, default=None)
    if head_dim is None:
        if hidden % heads:
            raise ConfigError(
                f"{where}: hidden_size={hidden} is not divisible by num_attention_heads={heads}; "
                "set head_dim explicitly"
            )
        head_dim = hidden // heads
    vocab = _positive(raw, "vocab_size", where)
    draft_vocab = _positive(raw, "draft_vocab_size", where, default=vocab)
    if draft_vocab > vocab:
        raise ConfigError(
            f"{where}: draft_vocab_size={draft_vocab} (expected <= vocab_size={vocab}); the "
            "draft vocabulary is a subset of the target's"
        )
    act = _get(raw, "hidden_act", str, where, default="silu")
    if act not in ACTIVATIONS:
        raise ConfigError(f"{where}: hidden_act={show(act)} (expected one of {ACTIVATIONS})")
    bias = _get(raw, "attention_bias", bool, where, default=False)
    max_pos = _positive(raw, "max_position_embeddings", where, default=2048)
    return Eagle3Config(
        hidden_size=hidden,
        intermediate_size=_positive(raw, "intermediate_size", where),
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=head_dim,
        vocab_size=vocab,
        draft_vocab_size=draft_vocab,
        target_hidden_size=_positive(raw, "target_hidden_size", where, default=hidden),
        aux_layer_ids=_aux_ids(raw, where),
        rms_norm_eps=_real(raw, "rms_norm_eps", where, positive=True, default=1e-6),
        hidden_act=act,
        qkv_bias=_get(raw, "qkv_bias", bool, where, default=bias),
        o_bias=bias,
        mlp_bias=_get(raw, "mlp_bias", bool, where, default=False),
        norm_before_residual=_get(raw, "norm_before_residual", bool, where, default=False),
        rope=_parse_rope(raw, head_dim, max_pos, where),
        dtype=normalize_dtype(raw.get("dtype") or raw.get("torch_dtype") or "float32", "dtype"),
    )


def _aux_ids(raw: Mapping[str, Any], where: str) -> tuple[int, ...] | None:
    """``eagle_aux_hidden_state_layer_ids`` (top level, or inside ``eagle_config``)."""
    key = "eagle_aux_hidden_state_layer_ids"
    value = raw.get(key)
    nested = raw.get("eagle_config")
    if nested is not None:
        _require_mapping(nested, f"{where}: eagle_config")
        if nested.get("use_aux_hidden_state", True) is not True:
            raise ConfigError(
                f"{where}: eagle_config.use_aux_hidden_state="
                f"{show(nested['use_aux_hidden_state'])} (expected true); EAGLE3 drafts without "
                "base features are not supported"
            )
        if value is None:
            value, where = nested.get(key), f"{where}: eagle_config"
    if value is None:
        return None
    ok = (
        isinstance(value, list)
        and value
        and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)
    )
    if not ok:
        raise ConfigError(f"{where}: {key}={show(value)} (expected a non-empty list of ints >= 0)")
    return tuple(value)


@dataclasses.dataclass(frozen=True, kw_only=True)
class DraftDims:
    """What the runtime needs of a draft engine (its KV cache and I/O widths).

    Attributes:
      hidden_size: width of the draft's embeddings and hidden states.
      num_layers, num_key_value_heads, head_dim: its KV cache geometry.
      draft_vocab_size: width of its logits.
      aux_layers: base layers whose inputs feed it (the base's ``hidden_states`` output is
        ``len(aux_layers) * base hidden`` wide).
    """

    hidden_size: int
    num_layers: int
    num_key_value_heads: int
    head_dim: int
    draft_vocab_size: int
    aux_layers: tuple[int, ...]


@dataclasses.dataclass(frozen=True, kw_only=True)
class SpecDecodeConfig:
    """The bundle of base + draft and the tree shape (upstream's spec-decode DeploymentConfig).

    Static for ``jit`` (changing it recompiles).

    Attributes:
      base: the base engine's config (limits, dtypes).
      draft: the draft engine's geometry.
      tree_topk: K, children kept per expanded node (and nodes expanded per level).
      tree_steps: levels of the draft tree below the root (the longest accepted run of draft
        tokens; a round accepts at most ``tree_steps + 1`` tokens with the bonus).
      verify_size: V, tree tokens the base verifies per round (the root + ``V - 1`` best nodes).
      max_verify_tree_size: the most tree tokens the base engine was built for.
    """

    base: EngineConfig
    draft: DraftDims
    tree_topk: int
    tree_steps: int
    verify_size: int
    max_verify_tree_size: int

    def __post_init__(self) -> None:
        if self.base.model.hybrid is not None:
            raise ConfigError(
                f"SpecDecodeConfig: base architecture={self.base.model.architecture} (expected a "
                "dense decoder); tree verification of a hybrid Mamba2 model needs its recurrent "
                "state per tree node, which is not implemented"
            )
        for name in ("tree_topk", "tree_steps", "verify_size", "max_verify_tree_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"SpecDecodeConfig: {name}={show(value)} (expected an int >= 1)")
        if self.verify_size > self.max_verify_tree_size:
            raise ConfigError(
                f"SpecDecodeConfig: verify_size={self.verify_size} (expected <= "
                f"max_verify_tree_size={self.max_verify_tree_size}); the base engine was built "
                "for smaller trees, lower --verify-size or rebuild it"
            )
        if self.verify_size < 2:
            raise ConfigError(
                f"SpecDecodeConfig: verify_size={self.verify_size} (expected >= 2: the root and "
                "at least one draft token)"
            )
        if self.verify_size - 1 > self.num_candidates:
            raise ConfigError(
                f"SpecDecodeConfig: verify_size={self.verify_size} (expected <= 1 + "
                f"{self.num_candidates} = 1 + tree_topk + (tree_steps - 1) * tree_topk**2, the "
                "nodes the draft proposes); raise tree_topk or tree_steps, or verify fewer"
            )
        if self.tree_topk > self.draft.draft_vocab_size:
            raise ConfigError(
                f"SpecDecodeConfig: tree_topk={self.tree_topk} (expected <= draft_vocab_size="
                f"{self.draft.draft_vocab_size})"
            )
        if self.max_verify_tree_size > self.base.kv_capacity:
            raise ConfigError(
                f"SpecDecodeConfig: max_verify_tree_size={self.max_verify_tree_size} (expected "
                f"<= kv capacity={self.base.kv_capacity})"
            )
        if self.base.model.mrope is not None:
            raise ConfigError(
                f"SpecDecodeConfig: base {self.base.model.architecture} uses MRoPE (expected a "
                "1-D RoPE base); EAGLE3 drafts and tree verification read one shared rope "
                "table, not the per-row MRoPE table"
            )
        layers = self.base.model.num_hidden_layers
        bad = [i for i in self.draft.aux_layers if not 0 <= i <= layers]
        if bad or not self.draft.aux_layers:
            raise ConfigError(
                f"SpecDecodeConfig: aux layers {list(self.draft.aux_layers)} (expected each in "
                f"0..num_hidden_layers={layers} of the base); set eagle_aux_hidden_state_layer_ids "
                "in the draft's config.json"
            )

    @property
    def proposal_len(self) -> int:
        """P: draft tree tokens the proposal steps feed (levels 1..steps-1, K each; >= 1)."""
        return max(1, (self.tree_steps - 1) * self.tree_topk)

    @property
    def accept_len(self) -> int:
        """A: most tokens a round accepts (the draft tree's depth + the bonus token)."""
        return self.tree_steps + 1

    @property
    def num_candidates(self) -> int:
        """N: nodes the draft proposes per round, ``K + (steps - 1) * K**2``."""
        k = self.tree_topk
        return k + (self.tree_steps - 1) * k * k

    @property
    def hidden_dim(self) -> int:
        """Width of the base's ``hidden_states`` output (``len(aux_layers) * H``, 3H for EAGLE3)."""
        return len(self.draft.aux_layers) * self.base.model.hidden_size


def draft_forward(
    cfg: Eagle3Config,
    params: llama.Params,
    embeds: jax.Array,
    hidden: jax.Array,
    cos_sin: jax.Array,
    positions: jax.Array,
    write_pos: jax.Array,
    context_lengths: jax.Array,
    k_cache: jax.Array,
    v_cache: jax.Array,
    mask: jax.Array | None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The draft layer on ``embeds``/``hidden`` ``[B, S, H]``; returns ``(prenorm, k, v)``.

    ``mask`` ``[B, S, C]`` bool (a tree step) or None (causal, as ``llama.attend``).
    """
    b, s, _ = embeds.shape
    eps = cfg.rms_norm_eps
    h = llama.rms_norm(hidden, params["hidden_norm"], eps)
    residual = h if cfg.norm_before_residual else hidden
    x_in = jnp.concatenate([llama.rms_norm(embeds, params["attn_norm"], eps), h], axis=-1)
    qkv = llama.linear(x_in, params["wqkv"], params.get("bqkv"))
    q, k, v = jnp.split(qkv, [cfg.q_size, cfg.q_size + cfg.kv_size], axis=-1)
    q = llama.apply_rope(q.reshape(b, s, cfg.num_attention_heads, cfg.head_dim), cos_sin)
    k = llama.apply_rope(k.reshape(b, s, cfg.num_key_value_heads, cfg.head_dim), cos_sin)
    v = v.reshape(b, s, cfg.num_key_value_heads, cfg.head_dim)
    k_cache = llama.write_kv(k_cache, k, write_pos)
    v_cache = llama.write_kv(v_cache, v, write_pos)
    attn = llama.attend(q, k_cache, v_cache, positions, context_lengths, 0, mask=mask)
    x = residual + llama.linear(attn, params["wo"], params.get("bo"))
    m = llama.rms_norm(x, params["mlp_norm"], eps)
    gate, up = jnp.split(llama.linear(m, params["w_gate_up"], params.get("b_gate_up")), 2, axis=-1)
    act = llama.ACTIVATIONS[cfg.hidden_act]
    out = x + llama.linear(act(gate) * up, params["w_down"], params.get("b_down"))
    return out, k_cache, v_cache


def draft_logits(cfg: Eagle3Config, params: llama.Params, prenorm: jax.Array) -> jax.Array:
    """``lm_head(norm(prenorm))``: float32 logits ``[..., draft_vocab_size]``."""
    h = llama.rms_norm(prenorm, params["final_norm"], cfg.rms_norm_eps)
    dims = (((h.ndim - 1,), (1,)), ((), ()))
    return jax.lax.dot_general(h, params["lm_head"], dims, preferred_element_type=jnp.float32)
