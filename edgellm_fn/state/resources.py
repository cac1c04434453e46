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
from .rope import rope_table


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True, kw_only=True)
class SharedResources:
    """Process-lifetime device state.

    Attributes:
      kv: the base engine's KV cache.
      rope: ``[ropeB, KVcap, rot]`` float32 cos/sin table.
      draft_kv: the draft engine's KV cache (speculative decoding), else None.
    """

    kv: KVCache
    rope: jax.Array  # [ropeB, KVcap, rot] f32
    draft_kv: KVCache | None = None

    @classmethod
    def create_for_llm(cls, cfg: EngineConfig, batch: int) -> SharedResources:
        m = cfg.model
        kv = KVCache.create(
            batch,
            m.num_hidden_layers,
            m.num_key_value_heads,
            cfg.kv_capacity,
            m.head_dim,
            dtype(cfg.kv_dtype).jnp,
        )
        return cls(kv=kv, rope=rope_table(m.rope, cfg.kv_capacity))

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
) -> RuntimeState:
    """Allocates a ``RuntimeState`` for ``batch`` rows (each leaf a separate buffer).

    Args:
      cfg: engine config (shapes and dtypes).
      batch: rows, ``1..max_batch_size``.
      sampling: the sampling limits the decode loops will use (sizes the bias buffers; a loop
        given other limits reallocates them once).

    Raises:
      InputError: ``batch`` is outside ``1..max_batch_size``.
    """
    if not isinstance(batch, int) or not 1 <= batch <= cfg.max_batch_size:
        raise InputError(
            f"create_state: batch={batch!r} (expected 1..max_batch_size={cfg.max_batch_size}); "
            "build the engine with a larger max_batch_size or split the requests"
        )
    state = RuntimeState(
        io=PipelineIO.create(
            batch, cfg.model.vocab_size, cfg.model.hidden_size, dtype(cfg.dtype).jnp, sampling
        ),
        res=SharedResources.create_for_llm(cfg, batch),
    )
    host.remember(state.kv.lengths, np.zeros(batch, np.int64))
    return state
