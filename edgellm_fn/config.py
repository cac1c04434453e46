"""Model and engine configuration parsed strictly from a Hugging Face ``config.json``.

``ModelConfig`` holds the model's dimensions, ``DeploymentConfig`` the built limits and
``EngineConfig`` both plus dtypes. All are frozen and hashable, so they can be static ``jit``
arguments (changing them recompiles).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import families_vl as vl
from .defaults import DEFAULTS
from .dtypes import FLOAT_DTYPES
from .errors import ConfigError, TensorParallelError, show

if TYPE_CHECKING:
    from .hybrid_config import HybridConfig

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
ROPE_TYPES = ("default", "linear", "dynamic", "llama3", "yarn", "longrope")
ACTIVATIONS = ("silu", "gelu", "gelu_new", "gelu_pytorch_tanh", "relu")
DTYPES = FLOAT_DTYPES
_DTYPE_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16"}
_ITEMSIZE = {"float32": 4, "bfloat16": 2, "float16": 2}

#: Sanity bounds of integer config fields: far above every released model of the family (Llama
#: 3.1 405B has 126 layers, hidden 16384, intermediate 53248; Llama 4 has a 10M context), far
#: below what would make a size computation or an allocation run for minutes.
LIMITS = {
    "vocab_size": 1 << 24,
    "hidden_size": 1 << 16,
    "intermediate_size": 1 << 20,
    "num_hidden_layers": 1024,
    "num_attention_heads": 1024,
    "num_key_value_heads": 1024,
    "head_dim": 1024,
    "max_position_embeddings": 1 << 24,
    "original_max_position_embeddings": 1 << 24,
    "sliding_window": 1 << 24,
    "max_batch_size": 1 << 16,
    "max_input_len": 1 << 24,
    "max_kv_cache_capacity": 1 << 24,
    "max_lora_rank": 1 << 12,
    "max_loras": 1 << 10,
    "reduced_vocab_size": 1 << 24,
}
#: ``builder_config`` integer fields that may be absent (0); written only when set.
OPTIONAL_DEPLOYMENT = ("max_lora_rank", "max_loras", "reduced_vocab_size")
#: Optional ``builder_config`` fields that are not integers (absent: False / empty).
OPTIONAL_FLAGS = ("external_weights", "extra_inputs")
#: Largest JSON file read whole (config.json, index, request files): 64 MiB.
MAX_JSON_BYTES = 64 << 20
#: Default share of the available device memory the KV cache and state may take.
MEMORY_FRACTION = 0.9


@dataclasses.dataclass(frozen=True, kw_only=True)
class RopeConfig:
    """Rotary embedding parameters (the ``rope_parameters``/``rope_scaling`` of config.json).

    Attributes:
      rope_type: one of ``ROPE_TYPES``.
      theta: base frequency.
      rotary_dim: rotated channels of each head (``head_dim * partial_rotary_factor``).
      factor, low_freq_factor, high_freq_factor, original_max_position_embeddings: scaling.
      beta_fast, beta_slow, truncate, attention_factor, mscale, mscale_all_dim: YaRN.
      short_factor, long_factor: LongRoPE per-frequency factors.
    """

    rope_type: str
    theta: float
    rotary_dim: int
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 0
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    truncate: bool = True
    attention_factor: float | None = None
    mscale: float | None = None
    mscale_all_dim: float | None = None
    short_factor: tuple[float, ...] = ()
    long_factor: tuple[float, ...] = ()


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
        ``hybrid_config.py``), None for a dense decoder. Its attention layers have no RoPE.
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


@dataclasses.dataclass(frozen=True, kw_only=True)
class DeploymentConfig:
    """Built limits of an engine (upstream's ``builder_config``).

    Attributes:
      max_batch_size: most rows of one step.
      max_input_len: longest prompt (tokens) of one prefill.
      max_kv_cache_capacity: KV slots per row; ``max_input_len <= max_kv_cache_capacity``.
      max_lora_rank: largest LoRA rank the adapter bank holds (upstream's
        ``maxSupportedLoraRank``); 0: the engine has no LoRA bindings.
      max_loras: adapter slots of the bank besides slot 0 (no adapter); 0 without LoRA.
      reduced_vocab_size: logit columns of a reduced vocabulary (upstream's
        ``reducedVocabSize``; ``models/vocab.py``); 0: the full vocabulary.
      external_weights: the engine takes its weights as inputs (``engine/weights.py``) instead
        of holding them, so one built engine serves several weight sets of one shape.
      extra_inputs: names of declared extra inputs (``engine/extras.py``, the general form of
        upstream's ``setLMHeadWeights``), bound from ``SharedResources.extra``.
    """

    max_batch_size: int
    max_input_len: int
    max_kv_cache_capacity: int
    max_lora_rank: int = 0
    max_loras: int = 0
    reduced_vocab_size: int = 0
    external_weights: bool = False
    extra_inputs: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in OPTIONAL_DEPLOYMENT:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(
                    f"builder_config: {name}={show(value)} (expected an integer >= 0)"
                )
            if value > LIMITS[name]:
                raise ConfigError(
                    f"builder_config: {name}={value} (expected <= {LIMITS[name]}, the sanity "
                    f"bound config.LIMITS[{name!r}])"
                )
        if not isinstance(self.external_weights, bool):
            raise ConfigError(
                f"builder_config: external_weights={show(self.external_weights)} (expected a bool)"
            )
        extras = self.extra_inputs
        if not isinstance(extras, tuple) or not all(isinstance(n, str) for n in extras):
            raise ConfigError(
                f"builder_config: extra_inputs={show(extras)} (expected a list of input names)"
            )
        if len(set(extras)) != len(extras):
            raise ConfigError(
                f"builder_config: extra_inputs={list(extras)} (expected each name once)"
            )
        if (self.max_lora_rank == 0) != (self.max_loras == 0):
            raise ConfigError(
                f"builder_config: max_lora_rank={self.max_lora_rank} with max_loras="
                f"{self.max_loras} (expected both 0, no LoRA, or both >= 1); set both to serve "
                "LoRA adapters"
            )
        for name in ("max_batch_size", "max_input_len", "max_kv_cache_capacity"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(
                    f"builder_config: {name}={show(value)} (expected an integer >= 1)"
                )
            if value > LIMITS[name]:
                raise ConfigError(
                    f"builder_config: {name}={value} (expected <= {LIMITS[name]}, the sanity "
                    f"bound config.LIMITS[{name!r}]); no device holds state of that size"
                )
        if self.max_input_len > self.max_kv_cache_capacity:
            raise ConfigError(
                f"builder_config: max_input_len={self.max_input_len} (expected <= "
                f"max_kv_cache_capacity={self.max_kv_cache_capacity}); a prompt must fit the cache"
            )

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], where: str = "builder_config") -> DeploymentConfig:
        _require_mapping(raw, where)
        known = {f.name for f in dataclasses.fields(cls)}
        for key in raw:
            if key not in known:
                raise ConfigError(
                    f"{where}: unknown field {show(key)} (expected one of {sorted(known)})"
                )
        optional = set(OPTIONAL_DEPLOYMENT) | set(OPTIONAL_FLAGS)
        missing = [k for k in sorted(known - optional) if k not in raw]
        if missing:
            raise ConfigError(f"{where}: missing required field {missing[0]!r}")
        values = {k: raw[k] for k in known if k in raw}
        if isinstance(values.get("extra_inputs"), list):  # JSON has no tuples
            values["extra_inputs"] = tuple(values["extra_inputs"])
        return cls(**values)


@dataclasses.dataclass(frozen=True, kw_only=True)
class EngineConfig:
    """A model plus its deployment limits and runtime dtypes (static for ``jit``).

    Attributes:
      model: the model's dimensions.
      deployment: built limits.
      dtype: activation/weight dtype name.
      kv_dtype: KV cache dtype name.
      tensor_parallel: devices the xla provider splits the model over (``engine/sharding.py``);
        1: one device. Not part of an engine directory's config.json.
    """

    model: ModelConfig
    deployment: DeploymentConfig
    dtype: str
    kv_dtype: str
    tensor_parallel: int = 1

    def __post_init__(self) -> None:
        tp = self.tensor_parallel
        if not isinstance(tp, int) or isinstance(tp, bool) or tp < 1:
            raise TensorParallelError(
                f"EngineConfig: tensor_parallel={show(tp)} (expected an integer >= 1, the "
                "devices to split the model over)"
            )
        for name in ("dtype", "kv_dtype"):
            value = getattr(self, name)
            if value not in DTYPES:
                raise ConfigError(f"EngineConfig: {name}={value!r} (expected one of {DTYPES})")
        reduced = self.deployment.reduced_vocab_size
        if reduced > self.model.vocab_size:
            raise ConfigError(
                f"EngineConfig: reduced_vocab_size={reduced} (expected <= vocab_size="
                f"{self.model.vocab_size}); a reduced vocabulary is a subset of the model's"
            )
        d = self.deployment
        if self.model.hybrid is not None and (
            d.max_lora_rank or d.external_weights or d.extra_inputs
        ):
            raise ConfigError(
                f"EngineConfig: max_lora_rank={d.max_lora_rank}, external_weights="
                f"{d.external_weights}, extra_inputs={list(d.extra_inputs)} (expected 0, False "
                f"and [] for {self.model.architecture}); LoRA adapters, external weights and "
                "extra inputs are not implemented for hybrid models"
            )

    @property
    def max_batch_size(self) -> int:
        return self.deployment.max_batch_size

    @property
    def max_input_len(self) -> int:
        return self.deployment.max_input_len

    @property
    def kv_capacity(self) -> int:
        return self.deployment.max_kv_cache_capacity

    @property
    def output_vocab_size(self) -> int:
        """Logit columns: ``reduced_vocab_size`` when set, else ``vocab_size`` (upstream's
        ``outputVocabSize``)."""
        return self.deployment.reduced_vocab_size or self.model.vocab_size

    def kv_cache_bytes(self, batch: int | None = None) -> int:
        """Bytes of the KV cache for ``batch`` rows (default ``max_batch_size``).

        One ``k`` and one ``v`` array ``[B, Hkv, KVcap, D]`` of ``kv_dtype`` per layer.
        """
        m = self.model
        b = self.max_batch_size if batch is None else batch
        per_row = m.num_key_value_heads * self.kv_capacity * m.head_dim * _ITEMSIZE[self.kv_dtype]
        return 2 * m.num_kv_layers * b * per_row

    def recurrent_bytes(self, batch: int | None = None) -> int:
        """Bytes of a hybrid model's SSM and conv states for ``batch`` rows (0 when dense)."""
        h = self.model.hybrid
        if h is None:
            return 0
        mc = h.mamba
        b = self.max_batch_size if batch is None else batch
        ssm = mc.num_heads * mc.head_dim * mc.state_size * _ITEMSIZE[mc.ssm_dtype]
        conv = mc.conv_dim * (mc.conv_kernel - 1) * _ITEMSIZE[self.dtype]
        return len(h.mamba_layers) * b * (ssm + conv)

    def state_bytes(self, batch: int | None = None) -> int:
        """Bytes of the state a runtime allocates up front for ``batch`` rows.

        The KV cache, the recurrent state (hybrid models), the float32 RoPE table
        ``[1, KVcap, rot]``, the prefill input
        ``[B, max_input_len, H]`` and the float32 logits ``[B, V]``; a lower bound of the whole.
        The KV cache, the float32 RoPE table ``[1, KVcap, rot]`` (``[B, ...]`` with MRoPE), the
        prefill input ``[B, max_input_len, H]`` and the float32 logits ``[B, V]``; a lower bound
        of the whole.
        """
        m = self.model
        b = self.max_batch_size if batch is None else batch
        rope = (b if m.mrope is not None else 1) * self.kv_capacity * m.rope_width * 4
        embeds = b * self.max_input_len * m.hidden_size * _ITEMSIZE[self.dtype]
        if m.hybrid is not None:
            rope = 0  # no rope table: hybrid attention has no RoPE
        logits = b * self.output_vocab_size * 4
        return self.kv_cache_bytes(b) + self.recurrent_bytes(b) + rope + embeds + logits

    def check_memory(self, max_state_bytes: int | None = None) -> None:
        """Refuses limits whose state would not fit ``max_state_bytes``.

        Args:
          max_state_bytes: the bound; default ``MEMORY_FRACTION`` of ``available_memory_bytes()``.

        Raises:
          ConfigError: ``state_bytes()`` exceeds the bound (the message gives both figures).
        """
        if max_state_bytes is None:
            available, device = available_memory_bytes()
            bound = int(available * MEMORY_FRACTION)
            source = f"{MEMORY_FRACTION:.0%} of the {available} bytes available on {device}"
        else:
            if isinstance(max_state_bytes, bool) or not isinstance(max_state_bytes, int):
                raise ConfigError(
                    f"EngineConfig: max_state_bytes={show(max_state_bytes)} (expected an int)"
                )
            bound, source = max_state_bytes, "the max_state_bytes argument"
        need = self.state_bytes()
        if need > bound:
            m = self.model
            raise ConfigError(
                f"EngineConfig: state_bytes={need} (expected <= {bound}, {source}); the KV cache "
                f"alone is {self.kv_cache_bytes()} bytes = 2 x {m.num_kv_layers} layers x "
                f"max_batch_size={self.max_batch_size} x {m.num_key_value_heads} kv heads x "
                f"kv_capacity={self.kv_capacity} x head_dim={m.head_dim} x "
                f"{_ITEMSIZE[self.kv_dtype]} bytes ({self.kv_dtype}); lower max_batch_size or "
                "kv_capacity, use a smaller kv_dtype, or pass max_state_bytes"
            )

    @classmethod
    def create(
        cls,
        model: ModelConfig,
        *,
        max_batch_size: int = DEFAULTS["max_batch_size"],
        max_input_len: int = DEFAULTS["max_input_len"],
        kv_capacity: int = DEFAULTS["kv_capacity"],
        dtype: str | None = None,
        kv_dtype: str | None = None,
        max_state_bytes: int | None = None,
        max_lora_rank: int = 0,
        max_loras: int = 0,
        reduced_vocab_size: int = 0,
        external_weights: bool = False,
        extra_inputs: tuple[str, ...] = (),
        tensor_parallel: int = 1,
    ) -> EngineConfig:
        """Builds an engine config; dtypes default to the checkpoint's.

        Args:
          model: the model's dimensions.
          max_batch_size, max_input_len, kv_capacity: the deployment limits.
          dtype, kv_dtype: activation and KV cache dtypes.
          max_state_bytes: most bytes the state (``state_bytes()``) may take; default
            ``MEMORY_FRACTION`` of the memory available on the default device.
          max_lora_rank, max_loras: the LoRA adapter bank (``models/lora.py``); 0: none.
          reduced_vocab_size, external_weights, extra_inputs: see ``DeploymentConfig``.
          tensor_parallel: devices to split the model over (``engine/sharding.py``).

        Raises:
          ConfigError: a limit is out of range, or the state would exceed ``max_state_bytes``.
        """
        dtype = normalize_dtype(dtype or model.dtype, "dtype")
        cfg = cls(
            model=model,
            deployment=DeploymentConfig(
                max_batch_size=max_batch_size,
                max_input_len=max_input_len,
                max_kv_cache_capacity=kv_capacity,
                max_lora_rank=max_lora_rank,
                max_loras=max_loras,
                reduced_vocab_size=reduced_vocab_size,
                external_weights=external_weights,
                extra_inputs=tuple(extra_inputs),
            ),
            dtype=dtype,
            kv_dtype=normalize_dtype(kv_dtype or dtype, "kv_cache_dtype"),
            tensor_parallel=tensor_parallel,
        )
        cfg.check_memory(max_state_bytes)
        return cfg

    @classmethod
    def from_dict(
        cls,
        raw: Mapping[str, Any],
        where: str = "config.json",
        *,
        max_state_bytes: int | None = None,
    ) -> EngineConfig:
        """Parses an engine directory's config.json (model fields + ``builder_config``).

        ``max_state_bytes`` bounds the state as in ``create``.
        """
        _require_mapping(raw, where)
        if "builder_config" not in raw:
            raise ConfigError(
                f"{where}: missing required field 'builder_config' (expected "
                "{max_batch_size, max_input_len, max_kv_cache_capacity}); is this a checkpoint "
                "rather than an engine directory?"
            )
        model = _parse_model(raw, where)
        deployment = DeploymentConfig.from_dict(raw["builder_config"], f"{where}: builder_config")
        dtype = normalize_dtype(raw.get("dtype") or model.dtype, "dtype")
        kv_dtype = normalize_dtype(raw.get("kv_cache_dtype") or dtype, "kv_cache_dtype")
        cfg = cls(model=model, deployment=deployment, dtype=dtype, kv_dtype=kv_dtype)
        cfg.check_memory(max_state_bytes)
        return cfg

    def to_dict(self) -> dict[str, Any]:
        """The ``builder_config``/dtype fields an engine directory adds to the model config."""
        return {
            "builder_config": {
                k: v
                for k, v in dataclasses.asdict(self.deployment).items()
                if v or k not in (*OPTIONAL_DEPLOYMENT, *OPTIONAL_FLAGS)
            },
            "dtype": self.dtype,
            "kv_cache_dtype": self.kv_dtype,
        }


def available_memory_bytes() -> tuple[int, str]:
    """``(bytes, device)``: free memory of the default JAX device, or the host's on CPU.

    GPUs report ``bytes_limit - bytes_in_use`` of XLA's allocator; CPU devices report no stats,
    so the host's ``MemAvailable`` (``/proc/meminfo``) is used, else the physical memory.
    """
    import jax  # lazily: parsing configs must not initialise a backend

    device = jax.local_devices()[0]
    stats = device.memory_stats() or {}
    if "bytes_limit" in stats:
        return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0)), str(device)
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024, f"{device} (host MemAvailable)"
    except (OSError, ValueError, IndexError):
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), f"{device} (host memory)"


def parse_json_bytes(data: bytes, where: str, error: type[ValueError] = ConfigError) -> Any:
    """Decodes UTF-8 JSON, raising ``error`` naming ``where`` for every way it can be bad.

    Non-UTF-8 bytes, syntax errors, nesting too deep for Python's parser and integers of more
    than 4300 digits all become ``error`` (never ``UnicodeDecodeError`` or ``RecursionError``).
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise error(
            f"{where}: byte {e.start}={data[e.start : e.start + 1]!r} (expected UTF-8 text); "
            "re-save the file as UTF-8 JSON"
        ) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise error(f"{where}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    except RecursionError:
        raise error(
            f"{where}: JSON nesting too deep (expected a shallow JSON object); the file is "
            "corrupt or hostile"
        ) from None
    except ValueError as e:  # e.g. an integer literal of more than 4300 digits
        raise error(f"{where}: invalid JSON value ({e})") from None


def read_json_file(
    path: str | Path,
    error: type[ValueError] = ConfigError,
    what: str = "a Hugging Face config.json",
    max_bytes: int = MAX_JSON_BYTES,
) -> Any:
    """Reads a JSON file of at most ``max_bytes``, raising ``error`` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: file not found (expected {what})")
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise error(
                f"{path}: size={size} bytes (expected <= {max_bytes} for {what}); this is not "
                "a JSON file of that kind"
            )
        data = path.read_bytes()
    except OSError as e:
        raise error(f"{path}: cannot be read ({e.strerror}); check its permissions") from None
    return parse_json_bytes(data, str(path), error)


def read_json(
    path: str | Path,
    *,
    missing: str | None = "expected a Hugging Face config.json",
    error: type[ValueError] = ConfigError,
) -> dict[str, Any]:
    """Reads a JSON object; every problem raises ``error`` naming the file.

    Args:
      path: the file.
      missing: what the file-not-found message expects; None returns ``{}`` for a missing file
        (optional files such as ``generation_config.json``).
      error: the error type (``ConfigError`` for configs, ``InputError`` for request files).
    """
    path = Path(path)
    if not path.is_file():
        if missing is None:
            return {}
        raise error(f"{path}: file not found ({missing})")
    raw = read_json_file(path, error, missing or "a JSON object")
    if not isinstance(raw, Mapping):
        raise error(f"{path}: expected a JSON object, got {type(raw).__name__}")
    return raw


def normalize_dtype(name: Any, field: str) -> str:
    value = _DTYPE_ALIASES.get(name, name) if isinstance(name, str) else name
    if value not in DTYPES:
        raise ConfigError(f"config.json: {field}={show(name)} (expected one of {DTYPES})")
    return value


def _require_mapping(raw: Any, where: str) -> None:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: expected a JSON object, got {type(raw).__name__}")


def get_field(
    raw: Mapping[str, Any],
    key: str,
    kind: type | tuple[type, ...],
    where: str,
    *,
    error: type[ValueError] = ConfigError,
    **default,
):
    """Reads ``raw[key]`` checking its type (an int passes for float, a bool never for int).

    ``default=`` makes the field optional (missing or null gives the default); ``error`` is the
    error type raised, naming ``where`` and the field.
    """
    if key not in raw or (raw[key] is None and "default" in default):
        if "default" in default:
            return default["default"]
        raise error(f"{where}: missing required field {key!r}")
    value = raw[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    ok = isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)
    if float in kinds and isinstance(value, int) and not isinstance(value, bool):
        ok = True
    if not ok:
        names = "/".join(k.__name__ for k in kinds)
        raise error(f"{where}: {key}={show(value)} (expected {names})")
    return value


_get = get_field


def _positive(raw: Mapping[str, Any], key: str, where: str, **default) -> int:
    """An integer field >= 1 and <= ``LIMITS[key]`` (when bounded)."""
    value = _get(raw, key, int, where, **default)
    if "default" in default and (key not in raw or raw[key] is None):
        return value
    if value < 1:
        raise ConfigError(f"{where}: {key}={value} (expected an integer >= 1)")
    limit = LIMITS.get(key)
    if limit is not None and value > limit:
        raise ConfigError(
            f"{where}: {key}={show(value)} (expected <= {limit}, the sanity bound "
            f"config.LIMITS[{key!r}]); larger than any supported model, so the file is corrupt"
        )
    return value


def _real(
    raw: Mapping[str, Any], key: str, where: str, *, positive: bool = False, **default
) -> float | None:
    """A finite number (``positive``: > 0); ``default=`` makes it optional."""
    value = _get(raw, key, float, where, **default)
    if value is None:
        return None
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise ConfigError(
            f"{where}: {key}={show(value)} (expected a finite number); NaN or infinity here "
            "makes every logit NaN"
        )
    if positive and number <= 0:
        raise ConfigError(f"{where}: {key}={show(value)} (expected a number > 0)")
    return number


def _token_id(raw: Mapping[str, Any], key: str, where: str) -> tuple[int, ...]:
    """An id or list of ids, each an int >= 0 (``eos_token_id`` may list several)."""
    value = raw.get(key)
    if value is None:
        return ()
    values = value if isinstance(value, list) else [value]
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values):
        raise ConfigError(
            f"{where}: {key}={show(value)} (expected an int or a list of ints, each >= 0)"
        )
    return tuple(values)


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
        from .hybrid_config import parse_nemotron_h  # lazily: it imports this module

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

    dtype = normalize_dtype(raw.get("dtype") or raw.get("torch_dtype") or "float32", "dtype")
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


def _parse_rope(
    raw: Mapping[str, Any], head_dim: int, max_pos: int, where: str, family: str = "llama"
) -> RopeConfig:
    """Accepts both ``rope_parameters`` (transformers 5) and ``rope_theta``+``rope_scaling``."""
    params = raw.get("rope_parameters")
    rwhere = f"{where}: rope_parameters"
    if params is None:
        rwhere = f"{where}: rope_scaling"
        scaling = raw.get("rope_scaling")
        if scaling is None:
            scaling = {}
        _require_mapping(scaling, rwhere)
        params = dict(scaling)
        if "rope_theta" in raw:
            params.setdefault("rope_theta", raw["rope_theta"])
    _require_mapping(params, rwhere)
    if params and all(isinstance(v, Mapping) for v in params.values()):
        raise ConfigError(f"{rwhere}: per-layer-type rope parameters are not supported")
    params = dict(params)
    if "partial_rotary_factor" in raw:
        params.setdefault("partial_rotary_factor", raw["partial_rotary_factor"])
    if family == "phi3" and raw.get("original_max_position_embeddings") is not None:
        params.setdefault(
            "original_max_position_embeddings", raw["original_max_position_embeddings"]
        )
    return _rope_from_params(params, head_dim, max_pos, rwhere)


def _rope_from_params(
    params: Mapping[str, Any], head_dim: int, max_pos: int, rwhere: str
) -> RopeConfig:
    """One rope parameter set (``rope_type``, ``rope_theta``, scaling fields) checked."""
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type == "su":  # Phi-3's first name of longrope (transformers maps it the same way)
        rope_type = "longrope"
    if not isinstance(rope_type, str) or rope_type not in ROPE_TYPES:
        raise ConfigError(f"{rwhere}: rope_type={show(rope_type)} (expected one of {ROPE_TYPES})")
    theta = _real(params, "rope_theta", rwhere, positive=True, default=10000.0)
    prf = _real(params, "partial_rotary_factor", rwhere, default=1.0)
    if not 0.0 < prf <= 1.0:
        raise ConfigError(f"{rwhere}: partial_rotary_factor={prf} (expected 0 < value <= 1)")
    rotary_dim = int(head_dim * prf)
    if rotary_dim < 2 or rotary_dim % 2:
        raise ConfigError(
            f"{rwhere}: rotary dim head_dim*partial_rotary_factor={rotary_dim} (expected an even "
            "number >= 2)"
        )
    fields: dict[str, Any] = {"rope_type": rope_type, "theta": theta, "rotary_dim": rotary_dim}
    if rope_type in ("llama3", "yarn", "longrope"):
        # transformers 5 (standardize_rope_params): absent, it is max_position_embeddings.
        fields["original_max_position_embeddings"] = _positive(
            params, "original_max_position_embeddings", rwhere, default=max_pos
        )
    orig = fields.get("original_max_position_embeddings", max_pos)
    if rope_type in ("linear", "dynamic", "llama3", "yarn"):
        factor = _real(params, "factor", rwhere, positive=True, default=None)
        if factor is None and rope_type == "yarn":
            factor = max_pos / orig
        if factor is None:
            raise ConfigError(
                f"{rwhere}: missing required field 'factor' for rope_type={rope_type!r}"
            )
        fields["factor"] = factor
    if rope_type == "llama3":
        low = _real(params, "low_freq_factor", rwhere, positive=True)
        high = _real(params, "high_freq_factor", rwhere, positive=True)
        if high <= low:
            raise ConfigError(
                f"{rwhere}: high_freq_factor={high} (expected > low_freq_factor={low})"
            )
        fields["low_freq_factor"], fields["high_freq_factor"] = low, high
    if rope_type == "dynamic":
        fields["original_max_position_embeddings"] = max_pos
    if rope_type == "yarn":
        fields["beta_fast"] = _real(params, "beta_fast", rwhere, positive=True, default=32.0)
        fields["beta_slow"] = _real(params, "beta_slow", rwhere, positive=True, default=1.0)
        fields["truncate"] = _get(params, "truncate", bool, rwhere, default=True)
        fields["attention_factor"] = _real(
            params, "attention_factor", rwhere, positive=True, default=None
        )
        for key in ("mscale", "mscale_all_dim"):
            fields[key] = _real(params, key, rwhere, default=None)
    if rope_type == "longrope":
        for key in ("short_factor", "long_factor"):
            value = _get(params, key, list, rwhere)
            if len(value) != rotary_dim // 2:
                raise ConfigError(
                    f"{rwhere}: {key} has {len(value)} entries (expected rotary_dim/2="
                    f"{rotary_dim // 2})"
                )
            items = {f"{key}[{i}]": v for i, v in enumerate(value)}
            fields[key] = tuple(_real(items, k, rwhere, positive=True) for k in items)
        factor = _real(params, "factor", rwhere, positive=True, default=None)
        fields["factor"] = factor if factor is not None else max_pos / orig
        af = _real(params, "attention_factor", rwhere, positive=True, default=None)
        if af is None:
            f = fields["factor"]
            if f > 1.0 and orig < 2:
                raise ConfigError(
                    f"{rwhere}: original_max_position_embeddings={orig} (expected >= 2 when "
                    "factor > 1 and attention_factor is unset: it divides by log(value)); set "
                    "attention_factor or the pretraining context length"
                )
            af = 1.0 if f <= 1.0 else math.sqrt(1 + math.log(f) / math.log(orig))
        fields["attention_factor"] = af
    return RopeConfig(**fields)
