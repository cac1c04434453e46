"""Model and engine configuration parsed strictly from a Hugging Face ``config.json``.

``ModelConfig`` holds the model's dimensions, ``DeploymentConfig`` the built limits and
``EngineConfig`` both plus dtypes. All are frozen and hashable, so they can be static ``jit``
arguments (changing them recompiles).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .dtypes import FLOAT_DTYPES
from .errors import ConfigError

ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
}
ROPE_TYPES = ("default", "linear", "dynamic", "llama3", "yarn", "longrope")
ACTIVATIONS = ("silu", "gelu", "gelu_new", "gelu_pytorch_tanh", "relu")
DTYPES = FLOAT_DTYPES
_DTYPE_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16"}


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
class ModelConfig:
    """Dimensions and options of a Llama-family decoder (Llama 3.x, Qwen2/2.5, Qwen3).

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

    @property
    def family(self) -> str:
        return ARCHITECTURES[self.architecture]

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
    """

    max_batch_size: int
    max_input_len: int
    max_kv_cache_capacity: int

    def __post_init__(self) -> None:
        for name in ("max_batch_size", "max_input_len", "max_kv_cache_capacity"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"builder_config: {name}={value!r} (expected an integer >= 1)")
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
                    f"{where}: unknown field {key!r} (expected one of {sorted(known)})"
                )
        missing = [k for k in sorted(known) if k not in raw]
        if missing:
            raise ConfigError(f"{where}: missing required field {missing[0]!r}")
        return cls(**{k: raw[k] for k in known})


@dataclasses.dataclass(frozen=True, kw_only=True)
class EngineConfig:
    """A model plus its deployment limits and runtime dtypes (static for ``jit``).

    Attributes:
      model: the model's dimensions.
      deployment: built limits.
      dtype: activation/weight dtype name.
      kv_dtype: KV cache dtype name.
    """

    model: ModelConfig
    deployment: DeploymentConfig
    dtype: str
    kv_dtype: str

    def __post_init__(self) -> None:
        for name in ("dtype", "kv_dtype"):
            value = getattr(self, name)
            if value not in DTYPES:
                raise ConfigError(f"EngineConfig: {name}={value!r} (expected one of {DTYPES})")

    @property
    def max_batch_size(self) -> int:
        return self.deployment.max_batch_size

    @property
    def max_input_len(self) -> int:
        return self.deployment.max_input_len

    @property
    def kv_capacity(self) -> int:
        return self.deployment.max_kv_cache_capacity

    @classmethod
    def create(
        cls,
        model: ModelConfig,
        *,
        max_batch_size: int = 4,
        max_input_len: int = 128,
        kv_capacity: int = 256,
        dtype: str | None = None,
        kv_dtype: str | None = None,
    ) -> EngineConfig:
        """Builds an engine config; dtypes default to the checkpoint's."""
        dtype = normalize_dtype(dtype or model.dtype, "dtype")
        return cls(
            model=model,
            deployment=DeploymentConfig(
                max_batch_size=max_batch_size,
                max_input_len=max_input_len,
                max_kv_cache_capacity=kv_capacity,
            ),
            dtype=dtype,
            kv_dtype=normalize_dtype(kv_dtype or dtype, "kv_cache_dtype"),
        )

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], where: str = "config.json") -> EngineConfig:
        """Parses an engine directory's config.json (model fields + ``builder_config``)."""
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
        return cls(model=model, deployment=deployment, dtype=dtype, kv_dtype=kv_dtype)

    def to_dict(self) -> dict[str, Any]:
        """The ``builder_config``/dtype fields an engine directory adds to the model config."""
        return {
            "builder_config": dataclasses.asdict(self.deployment),
            "dtype": self.dtype,
            "kv_cache_dtype": self.kv_dtype,
        }


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
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise error(f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from e
    except UnicodeDecodeError as e:
        raise error(f"{path}: invalid JSON ({e}); re-save the file as UTF-8") from e
    if not isinstance(raw, Mapping):
        raise error(f"{path}: expected a JSON object, got {type(raw).__name__}")
    return raw


def normalize_dtype(name: Any, field: str) -> str:
    value = _DTYPE_ALIASES.get(name, name)
    if value not in DTYPES:
        raise ConfigError(f"config.json: {field}={name!r} (expected one of {DTYPES})")
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
        raise error(f"{where}: {key}={value!r} (expected {names})")
    return value


_get = get_field


def _positive(raw: Mapping[str, Any], key: str, where: str, **default) -> int:
    value = _get(raw, key, int, where, **default)
    if value is not None and value < 1:
        raise ConfigError(f"{where}: {key}={value} (expected an integer >= 1)")
    return value


def _parse_model(raw: Mapping[str, Any], where: str) -> ModelConfig:
    _require_mapping(raw, where)
    archs = raw.get("architectures")
    model_type = raw.get("model_type")
    if archs:
        if not isinstance(archs, list) or len(archs) != 1 or archs[0] not in ARCHITECTURES:
            raise ConfigError(
                f"{where}: architectures={archs!r} (expected one of {sorted(ARCHITECTURES)}); "
                "this runtime supports the Llama family"
            )
        arch = archs[0]
        if model_type is not None and model_type != ARCHITECTURES[arch]:
            raise ConfigError(
                f"{where}: model_type={model_type!r} contradicts architectures={archs!r} "
                f"(expected {ARCHITECTURES[arch]!r})"
            )
    elif model_type in ARCHITECTURES.values():
        arch = next(a for a, t in ARCHITECTURES.items() if t == model_type)
    else:
        raise ConfigError(
            f"{where}: missing required field 'architectures' (and model_type={model_type!r} is "
            f"not one of {sorted(ARCHITECTURES.values())})"
        )
    family = ARCHITECTURES[arch]

    hidden = _positive(raw, "hidden_size", where)
    heads = _positive(raw, "num_attention_heads", where)
    kv_heads = _positive(raw, "num_key_value_heads", where, default=heads)
    layers = _positive(raw, "num_hidden_layers", where)
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

    act = _get(raw, "hidden_act", str, where, default="silu")
    if act not in ACTIVATIONS:
        raise ConfigError(f"{where}: hidden_act={act!r} (expected one of {ACTIVATIONS})")
    attention_bias = _get(raw, "attention_bias", bool, where, default=False)
    qkv_bias = True if family == "qwen2" else attention_bias
    o_bias = False if family == "qwen2" else attention_bias
    mlp_bias = _get(raw, "mlp_bias", bool, where, default=False)

    dtype = normalize_dtype(raw.get("dtype") or raw.get("torch_dtype") or "float32", "dtype")
    eos = raw.get("eos_token_id")
    if eos is None:
        eos_ids: tuple[int, ...] = ()
    elif isinstance(eos, int) and not isinstance(eos, bool):
        eos_ids = (eos,)
    elif isinstance(eos, list) and all(isinstance(e, int) for e in eos):
        eos_ids = tuple(eos)
    else:
        raise ConfigError(f"{where}: eos_token_id={eos!r} (expected an int or a list of ints)")

    return ModelConfig(
        architecture=arch,
        vocab_size=_positive(raw, "vocab_size", where),
        hidden_size=hidden,
        intermediate_size=_positive(raw, "intermediate_size", where),
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=head_dim,
        rms_norm_eps=float(_get(raw, "rms_norm_eps", float, where, default=1e-6)),
        hidden_act=act,
        tie_word_embeddings=_get(raw, "tie_word_embeddings", bool, where, default=False),
        qkv_bias=qkv_bias,
        o_bias=o_bias,
        mlp_bias=mlp_bias,
        qk_norm=family == "qwen3",
        sliding_windows=_parse_sliding_windows(raw, family, layers, where),
        rope=_parse_rope(raw, head_dim, where),
        max_position_embeddings=_positive(raw, "max_position_embeddings", where, default=2048),
        dtype=dtype,
        bos_token_id=_get(raw, "bos_token_id", int, where, default=None),
        eos_token_ids=eos_ids,
    )


def _parse_sliding_windows(
    raw: Mapping[str, Any], family: str, layers: int, where: str
) -> tuple[int, ...]:
    """Per-layer sliding windows; Qwen2/3 use them only with ``use_sliding_window``."""
    if family == "llama" or not _get(raw, "use_sliding_window", bool, where, default=False):
        return (0,) * layers
    window = _positive(raw, "sliding_window", where)
    layer_types = raw.get("layer_types")
    if layer_types is None:
        first = _get(raw, "max_window_layers", int, where, default=layers)
        layer_types = [
            "sliding_attention" if i >= first else "full_attention" for i in range(layers)
        ]
    if not isinstance(layer_types, list) or len(layer_types) != layers:
        raise ConfigError(
            f"{where}: layer_types has {len(layer_types) if isinstance(layer_types, list) else '?'}"
            f" entries (expected num_hidden_layers={layers})"
        )
    out = []
    for i, t in enumerate(layer_types):
        if t not in ("full_attention", "sliding_attention"):
            raise ConfigError(
                f"{where}: layer_types[{i}]={t!r} (expected 'full_attention' or "
                "'sliding_attention')"
            )
        out.append(window if t == "sliding_attention" else 0)
    return tuple(out)


def _parse_rope(raw: Mapping[str, Any], head_dim: int, where: str) -> RopeConfig:
    """Accepts both ``rope_parameters`` (transformers 5) and ``rope_theta``+``rope_scaling``."""
    params = raw.get("rope_parameters")
    rwhere = f"{where}: rope_parameters"
    if params is None:
        params = dict(raw.get("rope_scaling") or {})
        rwhere = f"{where}: rope_scaling"
        if "rope_theta" in raw:
            params.setdefault("rope_theta", raw["rope_theta"])
    _require_mapping(params, rwhere)
    if params and all(isinstance(v, Mapping) for v in params.values()):
        raise ConfigError(f"{rwhere}: per-layer-type rope parameters are not supported")
    params = dict(params)
    if "partial_rotary_factor" in raw:
        params.setdefault("partial_rotary_factor", raw["partial_rotary_factor"])
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type not in ROPE_TYPES:
        raise ConfigError(f"{rwhere}: rope_type={rope_type!r} (expected one of {ROPE_TYPES})")
    theta = float(_get(params, "rope_theta", float, rwhere, default=10000.0))
    prf = float(_get(params, "partial_rotary_factor", float, rwhere, default=1.0))
    if not 0.0 < prf <= 1.0:
        raise ConfigError(f"{rwhere}: partial_rotary_factor={prf} (expected 0 < value <= 1)")
    rotary_dim = int(head_dim * prf)
    if rotary_dim < 2 or rotary_dim % 2:
        raise ConfigError(
            f"{rwhere}: rotary dim head_dim*partial_rotary_factor={rotary_dim} (expected an even "
            "number >= 2)"
        )
    fields: dict[str, Any] = {"rope_type": rope_type, "theta": theta, "rotary_dim": rotary_dim}
    max_pos = raw.get("max_position_embeddings", 2048)
    if rope_type in ("linear", "dynamic", "llama3", "yarn"):
        factor = _get(params, "factor", float, rwhere, default=None)
        if factor is None and rope_type == "yarn":
            orig = _positive(params, "original_max_position_embeddings", rwhere)
            factor = max_pos / orig
        if factor is None:
            raise ConfigError(
                f"{rwhere}: missing required field 'factor' for rope_type={rope_type!r}"
            )
        if factor <= 0:
            raise ConfigError(f"{rwhere}: factor={factor} (expected > 0)")
        fields["factor"] = float(factor)
    if rope_type == "llama3":
        fields["low_freq_factor"] = float(_get(params, "low_freq_factor", float, rwhere))
        fields["high_freq_factor"] = float(_get(params, "high_freq_factor", float, rwhere))
        if fields["high_freq_factor"] <= fields["low_freq_factor"]:
            raise ConfigError(
                f"{rwhere}: high_freq_factor={fields['high_freq_factor']} (expected > "
                f"low_freq_factor={fields['low_freq_factor']})"
            )
    if rope_type in ("llama3", "yarn", "longrope"):
        fields["original_max_position_embeddings"] = _positive(
            params,
            "original_max_position_embeddings",
            rwhere,
            **(
                {"default": raw.get("original_max_position_embeddings", max_pos)}
                if rope_type == "longrope"
                else {}
            ),
        )
    if rope_type == "dynamic":
        fields["original_max_position_embeddings"] = max_pos
    if rope_type == "yarn":
        fields["beta_fast"] = float(_get(params, "beta_fast", float, rwhere, default=32.0))
        fields["beta_slow"] = float(_get(params, "beta_slow", float, rwhere, default=1.0))
        fields["truncate"] = _get(params, "truncate", bool, rwhere, default=True)
        for key in ("attention_factor", "mscale", "mscale_all_dim"):
            value = _get(params, key, float, rwhere, default=None)
            fields[key] = None if value is None else float(value)
    if rope_type == "longrope":
        for key in ("short_factor", "long_factor"):
            value = _get(params, key, list, rwhere)
            if len(value) != rotary_dim // 2:
                raise ConfigError(
                    f"{rwhere}: {key} has {len(value)} entries (expected rotary_dim/2="
                    f"{rotary_dim // 2})"
                )
            fields[key] = tuple(float(v) for v in value)
        factor = _get(params, "factor", float, rwhere, default=None)
        orig = fields["original_max_position_embeddings"]
        fields["factor"] = float(factor if factor is not None else max_pos / orig)
        af = _get(params, "attention_factor", float, rwhere, default=None)
        if af is None:
            f = fields["factor"]
            af = 1.0 if f <= 1.0 else math.sqrt(1 + math.log(f) / math.log(orig))
        fields["attention_factor"] = float(af)
    return RopeConfig(**fields)
