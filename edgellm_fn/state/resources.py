"""``SharedResources`` (KV cache, RoPE table) and ``RuntimeState``, the pytree steps thread."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from ..config import EngineConfig
from ..dtypes import dtype
from ..errors import InputError
from ..runtime.sampling import SamplingConfig
from . import host
from .io import PipelineIO
from .kv import KVCache
from .lora import LoraState
from .rope import rope_table


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True, kw_only=True)
class SharedResources:
    """Process-lifetime device state.

    Attributes:
      kv: the base engine's KV cache.
      rope: ``[ropeB, KVcap, rot]`` float32 cos/sin table.
      lora: the LoRA adapter bank and per-row slots (upstream's ``loraManager``); None for an
        engine without LoRA bindings.
    """

    kv: KVCache
    rope: jax.Array  # [ropeB, KVcap, rot] f32
    lora: LoraState | None = None

    @classmethod
    def create_for_llm(
        cls, cfg: EngineConfig, batch: int, lora: LoraState | None = None
    ) -> SharedResources:
        m = cfg.model
        kv = KVCache.create(
            batch,
            m.num_hidden_layers,
            m.num_key_value_heads,
            cfg.kv_capacity,
            m.head_dim,
            dtype(cfg.kv_dtype).jnp,
        )
        if lora is None and cfg.deployment.max_lora_rank:
            lora = LoraState.create(cfg, batch)
        return cls(kv=kv, rope=rope_table(m.rope, cfg.kv_capacity), lora=lora)


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
) -> RuntimeState:
    """Allocates a ``RuntimeState`` for ``batch`` rows (each leaf a separate buffer).

    Args:
      cfg: engine config (shapes and dtypes).
      batch: rows, ``1..max_batch_size``.
      sampling: the sampling limits the decode loops will use (sizes the bias buffers; a loop
        given other limits reallocates them once).
      lora: the adapter bank and row slots (``runtime.lora.LoraBank.state``); default: an
        all-zero bank when the engine has LoRA bindings.

    Raises:
      InputError: ``batch`` is outside ``1..max_batch_size``, or ``lora`` has another batch.
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
    state = RuntimeState(
        io=PipelineIO.create(
            batch, cfg.output_vocab_size, cfg.model.hidden_size, dtype(cfg.dtype).jnp, sampling
        ),
        res=SharedResources.create_for_llm(cfg, batch, lora),
    )
    host.remember(state.kv.lengths, np.zeros(batch, np.int64))
    return state
