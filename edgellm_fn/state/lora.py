"""``LoraState``: the adapter bank and each row's adapter slot, threaded with the state."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from ..config import EngineConfig
from ..dtypes import dtype
from ..models.lora import bank_shapes


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True, kw_only=True)
class LoraState:
    """Upstream's ``loraManager`` as device state (``models/lora.py`` has the layout).

    Attributes:
      weights: bank binding name -> ``[slots, R, in]`` (``lora_A_*``) or ``[slots, out, R]``
        (``lora_B_*``); slot 0 is zeros.
      index: ``[B]`` int32 the bank slot of each row (0: no adapter).
    """

    weights: dict[str, jax.Array]
    index: jax.Array  # [B] i32

    @classmethod
    def create(
        cls,
        cfg: EngineConfig,
        batch: int,
        weights: Mapping[str, np.ndarray | jax.Array] | None = None,
        index: np.ndarray | None = None,
    ) -> LoraState:
        """A bank of copies of ``weights`` (default all zeros) and ``index`` (default 0s).

        Each state gets its own copy: steps donate the state, so a shared bank array would be
        invalidated by the first step.
        """
        jdt = dtype(cfg.dtype).jnp
        if weights is None:
            arrays = {n: jnp.zeros(s, jdt) for n, s in bank_shapes(cfg).items()}
        else:
            arrays = {n: jnp.array(w, jdt, copy=True) for n, w in weights.items()}
        idx = np.zeros(batch, np.int32) if index is None else np.asarray(index, np.int32)
        return cls(weights=arrays, index=jnp.asarray(idx))
