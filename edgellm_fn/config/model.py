"""``ModelConfig``: a model's dimensions and features, parsed strictly from a Hugging Face
``config.json`` (every field its family's ``transformers`` config reads; ``families.py`` holds
what differs per family). Frozen and hashable: a static ``jit`` argument."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError, show
from . import families_vl as vl
from .fields import _get, _positive, _real, _require_mapping, _token_id, checkpoint_dtype, read_json
from .rope import RopeConfig, _parse_rope, _rope_from_params

if TYPE_CHECKING:
    from .hybrid import HybridConfig

ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
    "MistralForCausalLM": "mistral",
    "Gemma2ForCausalLM": "gemma2",
    "Gemma3ForCausalLM": "gemma3_text",
    "Phi3ForCausalLM": "phi3",
    "NemotronHForCausalLM": "nemotron_h",
    # The text decoders of the VL models (families_vl.py; the vision tower is not loaded).
    "Qwen2VLForConditionalGeneration": "qwen2_vl",
    "Qwen2_5_VLForConditionalGeneration": "qwen2_5_vl",
    "Qwen3VLForConditionalGeneration": "qwen3_vl",
}
ACTIVATIONS = ("silu", "gelu", "gelu_new", "gelu_pytorch_tanh", "relu")

@dataclasses.dataclass(frozen=True, kw_only=True)
class MRopeConfig:
    """Multimodal RoPE of the Qwen-VL text decoders (``families_vl.py``, ``state/mrope.py``).

    Attributes:
      section: rotary frequencies driven by each position axis (temporal, height, width);
        they sum to ``rotary_dim / 2``.
      interleaved: Qwen3-VL's layout (frequency ``j`` takes axis ``j % 3`` while that axis has
        frequencies left); else contiguous blocks in t, h, w order (Qwen2/2.5-VL).
    """

    section: tuple[int, int, int]
    interleaved: bool = False


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """Dimensions and options of a dense decoder (Llama 3.x, Qwen2/2.5, Qwen3, Mistral, Gemma 2/3
    text, Phi-3; ``families.py`` parses the family-specific fields).

    Attributes:
      architecture: e.g. ``"LlamaForCausalLM"``.
      vocab_size, hidden_size, intermediate_size, num_hidden_layers: model size.
      num_attention_heads, num_key_value_heads, head_dim: attention geometry (GQA).
      rms_norm_eps: RMSNorm epsilon.
      hidden_act: MLP activation.
      tie_word_embeddings: lm_head shares the embedding matrix.
      qkv_bias, o_bias, mlp_bias: which projections carry a bias.
      qk_norm: per-head RMSNorm on q and k (Qwen3).
      sliding_windows: per layer, the sliding window in tokens, 0 for full attention.
      rope: rotary embedding parameters.
      max_position_embeddings: trained context length.
      dtype: checkpoint dtype name.
      bos_token_id, eos_token_ids: special ids (eos may be several).
      norm_offset: RMSNorm multiplies by ``offset + weight`` in float32 (1 for Gemma), else
        by ``weight`` after the cast back (0, Llama).
      sandwich_norms: extra norms on the attention and MLP outputs before each residual add
        (Gemma 2/3: ``post_attn_norm``, ``post_mlp_norm``).
      embed_scale: the input embeddings are multiplied by it in the model dtype (Gemma:
        ``sqrt(hidden_size)``); inside the engine, so ``inputs_embeds`` stay plain lookups.
      query_pre_attn_scalar: attention scores scale by its ``** -0.5`` (None: ``head_dim``).
      attn_softcap, final_softcap: ``cap * tanh(x / cap)`` on attention scores / final logits.
      local_rope: RoPE of the sliding-window layers when it differs from ``rope`` (Gemma 3's
        ``rope_local_base_freq``); the rope table then holds both, ``rope`` first.
      hybrid: the layer layout and Mamba2 mixer of a hybrid model (NemotronH;
        ``config/hybrid.py``), None for a dense decoder. Its attention layers have no RoPE.
      mrope: multimodal RoPE (Qwen-VL): 3-D position ids, a per-row rope table; None for 1-D.
      num_deepstack_features: visual feature sets added after the first layers (Qwen3-VL).
    """

    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float
    hidden_act: str
    tie_word_embeddings: bool
    qkv_bias: bool
    o_bias: bool
    mlp_bias: bool
    qk_norm: bool
    sliding_windows: tuple[int, ...]
    rope: RopeConfig
    max_position_embeddings: int
    dtype: str
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    norm_offset: float = 0.0
    sandwich_norms: bool = False
    embed_scale: float = 1.0
    query_pre_attn_scalar: float | None = None
    attn_softcap: float | None = None
    final_softcap: float | None = None
    local_rope: RopeConfig | None = None
    hybrid: HybridConfig | None = None
    mrope: MRopeConfig | None = None
    num_deepstack_features: int = 0

    @property
    def family(self) -> str:
        return ARCHITECTURES[self.architecture]

    @property
    def attn_scale(self) -> float:
        """The attention score scale (``query_pre_attn_scalar ** -0.5``, default ``D ** -0.5``)."""
        return (self.query_pre_attn_scalar or self.head_dim) ** -0.5

    @property
    def rope_width(self) -> int:
        """Last dim of the rope table: ``rotary_dim``, twice that with a ``local_rope``."""
        return self.rope.rotary_dim * (2 if self.local_rope else 1)

    @property
    def llama_compatible(self) -> bool:
        """True when the network is plain Llama math (what the fused kernels implement)."""
        return (
            self.norm_offset == 0.0
            and not self.sandwich_norms
            and self.embed_scale == 1.0
            and self.query_pre_attn_scalar is None
            and self.attn_softcap is None
            and self.final_softcap is None
            and self.local_rope is None
            and self.hybrid is None
        )

    @property
    def num_kv_layers(self) -> int:
        """Layers with KV slots: every layer, or a hybrid model's attention layers."""
        if self.hybrid is None:
            return self.num_hidden_layers
        return len(self.hybrid.attention_layers)

    @property
    def q_size(self) -> int:
        return self.num_attention_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_key_value_heads * self.head_dim

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], where: str = "config.json") -> ModelConfig:
        return _parse_model(raw, where)

    @classmethod
    def from_file(cls, path: str | Path) -> ModelConfig:
        path = Path(path)
        if path.is_dir():
            path = path / "config.json"
        return _parse_model(read_json(path), str(path))


def _parse_model(raw: Mapping[str, Any], where: str) -> ModelConfig:
    _require_mapping(raw, where)
    archs = raw.get("architectures")
    model_type = raw.get("model_type")
    if archs:
        if (
            not isinstance(archs, list)
            or len(archs) != 1
            or not isinstance(archs[0], str)
            or archs[0] not in ARCHITECTURES
        ):
            raise ConfigError(
                f"{where}: architectures={show(archs)} (expected one of "
                f"{sorted(ARCHITECTURES)}); README.md lists the supported families"
            )
        arch = archs[0]
        if model_type is not None and model_type != ARCHITECTURES[arch]:
            raise ConfigError(
                f"{where}: model_type={show(model_type)} contradicts architectures={archs!r} "
                f"(expected {ARCHITECTURES[arch]!r})"
            )
    elif isinstance(model_type, str) and model_type in ARCHITECTURES.values():
        arch = next(a for a, t in ARCHITECTURES.items() if t == model_type)
    elif isinstance(model_type, str) and model_type in vl.TEXT_MODEL_TYPES:
        arch = next(a for a, t in vl.ARCHITECTURES.items() if t == vl.TEXT_MODEL_TYPES[model_type])
    else:
        raise ConfigError(
            f"{where}: missing required field 'architectures' (and model_type="
            f"{show(model_type)} is not one of {sorted(ARCHITECTURES.values())})"
        )
    family = ARCHITECTURES[arch]
    from . import families as fam  # lazily: families imports nothing from here at module level

    vl_fields: dict[str, Any] = {}
    if family in vl.BASE:  # a VL checkpoint: its text decoder, on the base family's fields
        raw, vl_fields, where = vl.text_fields(raw, family, where)
        family = vl.BASE[family]
    fam.check_fields(raw, family, where)
    if family == "nemotron_h":
        from .hybrid import parse_nemotron_h  # lazily: it imports this module

        return parse_nemotron_h(raw, arch, where)
    fdefaults = fam.DEFAULTS.get(family, {})

    hidden = _positive(raw, "hidden_size", where)
    heads = _positive(raw, "num_attention_heads", where)
    kv_heads = _positive(raw, "num_key_value_heads", where, default=heads)
    layers = _positive(raw, "num_hidden_layers", where)
    if heads % kv_heads:
        raise ConfigError(
            f"{where}: num_key_value_heads={kv_heads} (expected a divisor of "
            f"num_attention_heads={heads})"
        )
    head_dim = _positive(raw, "head_dim", where, default=fdefaults.get("head_dim"))
    if head_dim is None:
        if hidden % heads:
            raise ConfigError(
                f"{where}: hidden_size={hidden} is not divisible by num_attention_heads={heads}; "
                "set head_dim explicitly"
            )
        head_dim = hidden // heads

    gemma = family in fam.GEMMA
    act_key = "hidden_activation" if gemma else "hidden_act"
    act = _get(raw, act_key, str, where, default="gelu_pytorch_tanh" if gemma else "silu")
    if act not in ACTIVATIONS:
        raise ConfigError(f"{where}: {act_key}={show(act)} (expected one of {ACTIVATIONS})")
    attention_bias = _get(raw, "attention_bias", bool, where, default=False)
    qkv_bias = True if family == "qwen2" else attention_bias
    o_bias = False if family == "qwen2" else attention_bias
    mlp_bias = _get(raw, "mlp_bias", bool, where, default=False)

    dtype = checkpoint_dtype(raw)
    bos = _token_id(raw, "bos_token_id", where)
    if isinstance(raw.get("bos_token_id"), list):
        raise ConfigError(
            f"{where}: bos_token_id={show(raw['bos_token_id'])} (expected one int >= 0)"
        )
    max_pos = _positive(raw, "max_position_embeddings", where, default=2048)
    extra: dict[str, Any] = {}
    if family == "gemma3_text":
        full, local, rwhere = fam.gemma3_rope_params(raw, where)
        rope = _rope_from_params(full, head_dim, max_pos, f"{rwhere}.full_attention")
        extra["local_rope"] = _rope_from_params(
            local, head_dim, max_pos, f"{rwhere}.sliding_attention"
        )
    else:
        rope = _parse_rope(raw, head_dim, max_pos, where, family)
    if gemma:
        extra.update(fam.gemma_fields(raw, family, hidden, where))
    if vl_fields:
        extra.update(_vl_extra(vl_fields, rope, layers, where))

    return ModelConfig(
        architecture=arch,
        vocab_size=_positive(raw, "vocab_size", where),
        hidden_size=hidden,
        intermediate_size=_positive(raw, "intermediate_size", where),
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=head_dim,
        rms_norm_eps=_real(raw, "rms_norm_eps", where, positive=True, default=1e-6),
        hidden_act=act,
        tie_word_embeddings=_get(
            raw,
            "tie_word_embeddings",
            bool,
            where,
            default=fdefaults.get("tie_word_embeddings", False),
        ),
        qkv_bias=qkv_bias,
        o_bias=o_bias,
        mlp_bias=mlp_bias,
        qk_norm=family in ("qwen3", "gemma3_text"),
        sliding_windows=_parse_sliding_windows(raw, family, layers, where),
        rope=rope,
        max_position_embeddings=max_pos,
        dtype=dtype,
        bos_token_id=bos[0] if bos else None,
        eos_token_ids=_token_id(raw, "eos_token_id", where),
        **extra,
    )


def _vl_extra(
    vl_fields: Mapping[str, Any], rope: RopeConfig, layers: int, where: str
) -> dict[str, Any]:
    """``mrope`` and ``num_deepstack_features`` of a VL text decoder, checked against it."""
    sections = vl_fields["mrope_section"]
    vl.check_sections(sections, rope.rotary_dim, f"{where}: rope_parameters")
    count = vl_fields["num_deepstack_features"]
    if count > layers:
        raise ConfigError(
            f"{where}: num_deepstack_features={count} (expected <= num_hidden_layers={layers}); "
            "each feature set is added after one of the first decoder layers"
        )
    return dict(
        mrope=MRopeConfig(section=sections, interleaved=vl_fields["mrope_interleaved"]),
        num_deepstack_features=count,
    )


def _parse_sliding_windows(
    raw: Mapping[str, Any], family: str, layers: int, where: str
) -> tuple[int, ...]:
    """Per-layer sliding windows; Qwen2/3 use them only with ``use_sliding_window``.

    As in transformers 5, ``use_sliding_window`` with ``sliding_window: null`` means full
    attention in every layer (the window, not ``layer_types``, decides). Mistral and Phi-3
    apply ``sliding_window`` to every layer; Gemma alternates local and global layers.
    """
    from . import families as fam

    if family in ("mistral", "phi3"):
        return (fam.sliding_window(raw, family, where) or 0,) * layers
    gemma = family in fam.GEMMA
    if gemma:
        window = fam.sliding_window(raw, family, where)
        if window is None:
            raise ConfigError(
                f"{where}: sliding_window=None (expected an integer >= 1 for {family}); its "
                "local layers attend over a window"
            )
    elif family == "llama" or not _get(raw, "use_sliding_window", bool, where, default=False):
        return (0,) * layers
    else:
        window = _positive(raw, "sliding_window", where, default=None)
    if window is None:
        return (0,) * layers
    layer_types = raw.get("layer_types")
    if gemma:
        layer_types = fam.gemma_layer_types(raw, family, layers, where)
    elif layer_types is None:
        first = _get(raw, "max_window_layers", int, where, default=layers)
        layer_types = [
            "sliding_attention" if i >= first else "full_attention" for i in range(layers)
        ]
    if not isinstance(layer_types, list) or len(layer_types) != layers:
        got = len(layer_types) if isinstance(layer_types, list) else show(layer_types)
        raise ConfigError(
            f"{where}: layer_types has {got} entries (expected a list of "
            f"num_hidden_layers={layers} entries)"
        )
    out = []
    for i, t in enumerate(layer_types):
        if t not in ("full_attention", "sliding_attention"):
            raise ConfigError(
                f"{where}: layer_types[{i}]={show(t)} (expected 'full_attention' or "
                "'sliding_attention')"
            )
        out.append(window if t == "sliding_attention" else 0)
    return tuple(out)


