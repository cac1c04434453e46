"""``SharedResources`` (KV cache, recurrent state, RoPE table) and ``RuntimeState``, the pytree
steps thread."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ..config import EngineConfig
from ..dtypes import dtype
from ..errors import InputError
from ..runtime.sampling import SamplingConfig
from . import host
from .io import PipelineIO
from .kv import KVCache
from .lora import LoraState
from .recurrent import RecurrentState
from .rope import model_rope_table


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True, kw_only=True)
class SharedResources:
    """Process-lifetime device state.

    Attributes:
      kv: the base engine's KV cache (a hybrid model's attention layers only).
      rope: ``[ropeB, KVcap, rot]`` float32 cos/sin table; None for a model without RoPE
        (NemotronH).
      lora: the LoRA adapter bank and per-row slots (upstream's ``loraManager``); None for an
        engine without LoRA bindings.
      weights: external weights by binding name (upstream's ``externalWeightManager``;
        ``engine/inputs.py``); None for an engine that holds its weights.
      extra: declared extra inputs by binding name (``models/external.py``); None without.
      draft_kv: the draft engine's KV cache (speculative decoding), else None.
      recurrent: the SSM/conv states of a hybrid model's Mamba2 layers
        (``state/recurrent.py``), else None.
      rope_delta: ``[B]`` int32 per-row MRoPE delta (decode position = slot + delta;
        ``state/mrope.py``); None for a model with 1-D RoPE.
      rope_long, rope_switch: LongRoPE with a KV capacity past
        ``original_max_position_embeddings`` (``EngineConfig.long_rope_switch``): the
        long-factor table and that length; a row longer than it rotates its new tokens with
        ``rope_long`` (``engine/tensor_map.py``). None otherwise.
    """

    kv: KVCache
    rope: jax.Array | None  # [ropeB, KVcap, rot] f32
    lora: LoraState | None = None
    weights: dict[str, jax.Array] | None = None  # name -> engine-layout weight
    extra: dict[str, jax.Array] | None = None  # name -> declared extra input
    draft_kv: KVCache | None = None
    recurrent: RecurrentState | None = None
    rope_delta: jax.Array | None = None  # [B] i32, MRoPE only
    rope_long: jax.Array | None = None  # [1, KVcap, rot] f32, LongRoPE past its switch only
    rope_switch: jax.Array | None = None  # [] i32: rows longer than this use rope_long

    @classmethod
    def create_for_llm(
        cls,
        cfg: EngineConfig,
        batch: int,
        lora: LoraState | None = None,
        weights: Mapping[str, Any] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> SharedResources:
        """Allocates the KV cache and RoPE table and copies ``weights``/``extra`` onto the
        device (each state its own copy: steps donate the state). Validate them first with
        ``engine.inputs.check_inputs`` (``create_state`` does)."""
        m = cfg.model
        kv = KVCache.create(
            batch,
            m.num_kv_layers,
            m.num_key_value_heads,
            cfg.kv_capacity,
            m.head_dim,
            dtype(cfg.kv_dtype).jnp,
        )
        if lora is None and cfg.deployment.max_lora_rank:
            lora = LoraState.create(cfg, batch)

        def copy(arrays):
            return None if not arrays else {n: jnp.array(a, copy=True) for n, a in arrays.items()}

        recurrent = None
        if m.hybrid is not None:
            recurrent = RecurrentState.create(
                batch,
                len(m.hybrid.mamba_layers),
                m.hybrid.mamba,
                dtype(m.hybrid.mamba.ssm_dtype).jnp,
                dtype(cfg.dtype).jnp,
            )
        # MRoPE: one table per row (ropeBatch = B), each row rewritten by its prefill.
        mrope = m.mrope is not None
        return cls(
            kv=kv,
            rope=None
            if m.hybrid is not None
            else model_rope_table(m, cfg.kv_capacity, batch if mrope else 1),
            lora=lora,
            weights=copy(weights),
            extra=copy(extra),
            recurrent=recurrent,
            rope_delta=jnp.zeros((batch,), jnp.int32) if mrope else None,
            **_long_rope(cfg),
        )

    @classmethod
    def create_for_spec_decode(cls, bundle, batch: int) -> SharedResources:
        """Base and draft KV caches and ONE RoPE table (``bundle``: a ``SpecDecodeConfig``)."""
        cfg, d = bundle.base, bundle.draft
        res = cls.create_for_llm(cfg, batch)
        draft_kv = KVCache.create(
            batch,
            d.num_layers,
            d.num_key_value_heads,
            cfg.kv_capacity,
            d.head_dim,
            dtype(cfg.kv_dtype).jnp,
        )
        return dataclasses.replace(res, draft_kv=draft_kv)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True, kw_only=True)
class RuntimeState:
    """Everything a step reads and writes; donated to every step.

    Attributes:
      io: per-step I/O buffers.
      res: shared resources (KV cache, RoPE table).
    """

    io: PipelineIO
    res: SharedResources

    @property
    def batch(self) -> int:
        return self.res.kv.batch

    @property
    def kv(self) -> KVCache:
        return self.res.kv


def create_state(
    cfg: EngineConfig,
    batch: int,
    sampling: SamplingConfig = SamplingConfig(),  # noqa: B008 (frozen, hashable)
    *,
    lora: LoraState | None = None,
    weights: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> RuntimeState:
    """Allocates a ``RuntimeState`` for ``batch`` rows (each leaf a separate buffer).

    Args:
      cfg: engine config (shapes and dtypes).
      batch: rows, ``1..max_batch_size``.
      sampling: the sampling limits the decode loops will use (sizes the bias buffers; a loop
        given other limits reallocates them once).
      lora: the adapter bank and row slots (``runtime.lora.LoraBank.state``); default: an
        all-zero bank when the engine has LoRA bindings.
      weights: an engine built with ``external_weights``: its weight set
        (``engine.inputs.load_external_weights``), name -> array.
      extra: the engine's declared extra inputs (``builder_config.extra_inputs``), name -> array.

    Raises:
      InputError: ``batch`` is outside ``1..max_batch_size``, or ``lora`` has another batch.
      EngineError: ``weights`` or ``extra`` misses a name, has an unknown one, or one of
        another shape or dtype (checked before anything is allocated).
    """
    if not isinstance(batch, int) or not 1 <= batch <= cfg.max_batch_size:
        raise InputError(
            f"create_state: batch={batch!r} (expected 1..max_batch_size={cfg.max_batch_size}); "
            "build the engine with a larger max_batch_size or split the requests"
        )
    if lora is not None and tuple(lora.index.shape) != (batch,):
        raise InputError(
            f"create_state: lora.index has shape {list(lora.index.shape)} (expected [{batch}], "
            "one adapter slot per row); pass bank.state(names) with one name per row"
        )
    from ..engine.inputs import check_inputs
    from ..engine.spec import build_llm_spec

    spec = build_llm_spec(cfg)
    weights = check_inputs(spec, "weight", weights, "create_state: weights") or None
    extra = check_inputs(spec, "extra", extra, "create_state: extra") or None

    def build() -> RuntimeState:
        return RuntimeState(
            io=PipelineIO.create(
                batch, cfg.output_vocab_size, cfg.model.hidden_size, dtype(cfg.dtype).jnp, sampling
            ),
            res=SharedResources.create_for_llm(cfg, batch, lora, weights, extra),
        )

    if cfg.tensor_parallel > 1:  # each device allocates its shard (engine/sharding.py)
        from ..engine.sharding import allocate_state

        state = allocate_state(cfg, build)
    else:
        state = build()
    host.remember(state.kv.lengths, np.zeros(batch, np.int64))
    return state


def _long_rope(cfg: EngineConfig) -> dict[str, jax.Array]:
    """``rope_long``/``rope_switch`` of ``SharedResources`` (empty without the switch)."""
    switch = cfg.long_rope_switch
    if switch is None:
        return {}
    return dict(
        rope_long=model_rope_table(cfg.model, cfg.kv_capacity, 1, long=True),
        rope_switch=jnp.int32(switch),
    )
