"""``DeploymentConfig`` (the built limits: batch, input length, KV capacity, LoRA, vocab) and
``EngineConfig`` (a model, its limits and dtypes; sizes of the state it needs), checked before
anything is allocated."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import ConfigError, TensorParallelError, show
from .defaults import DEFAULTS
from .fields import _ITEMSIZE, DTYPES, LIMITS, _require_mapping, normalize_dtype
from .model import ModelConfig, _parse_model

#: ``builder_config`` integer fields that may be absent (0); written only when set.
OPTIONAL_DEPLOYMENT = ("max_lora_rank", "max_loras", "reduced_vocab_size")
#: Optional ``builder_config`` fields that are not integers (absent: False / empty).
OPTIONAL_FLAGS = ("external_weights", "extra_inputs")
#: Default share of the available device memory the KV cache and state may take.
MEMORY_FRACTION = 0.9


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
    def long_rope_switch(self) -> int | None:
        """LongRoPE past its pretraining length: a row whose length exceeds this
        (``original_max_position_embeddings``) rotates its new tokens with the long factors,
        as ``transformers`` does; None when the KV capacity never gets there (or no longrope)."""
        r = self.model.rope
        if r.rope_type == "longrope" and self.kv_capacity > r.original_max_position_embeddings:
            return r.original_max_position_embeddings
        return None

    @property
    def per_row_rope(self) -> bool:
        """One rope table per row (``rope_batch`` = B): MRoPE, or LongRoPE's per-row switch."""
        return self.model.mrope is not None or self.long_rope_switch is not None

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
        ``[1, KVcap, rot]`` (``[B, ...]`` with MRoPE; a second, long-factor one with LongRoPE
        past its pretraining length), the prefill input ``[B, max_input_len, H]`` and the float32
        logits ``[B, V]``; a lower bound of the whole.
        """
        m = self.model
        b = self.max_batch_size if batch is None else batch
        tables = b if m.mrope is not None else 2 if self.long_rope_switch is not None else 1
        rope = tables * self.kv_capacity * m.rope_width * 4
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


