"""The provider-neutral ``Engine`` protocol (upstream's ``EngineExecutor``)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Protocol, runtime_checkable

import jax

from ..config import EngineConfig
from ..dims import InferenceDims
from .spec import EngineSpec


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True, kw_only=True)
class Prepared:
    """A validated binding set: profile and dims are static, tensors are leaves.

    Attributes:
      profile: optimization profile index (0 prefill, 1 decode/verify).
      dims: symbolic dims of this step.
      tensors: every input binding by name.
    """

    profile: int = dataclasses.field(metadata=dict(static=True))
    dims: InferenceDims = dataclasses.field(metadata=dict(static=True))
    tensors: dict[str, jax.Array]


@runtime_checkable
class Engine(Protocol):
    """What the runtime drives; it never knows which provider is behind it.

    Attributes:
      provider: one of ``providers.PROVIDERS`` (for messages and benchmark labels only; the
        runtime never branches on it).
      config: the model and the limits the engine was built for.

    CUDA graphs are not part of the contract: XLA captures its own (command buffers) and the
    ``tensorrt`` executor captures decode steps in its ``GraphCache``.
    """

    provider: str
    config: EngineConfig

    @property
    def spec(self) -> EngineSpec:
        """Every binding, the two profiles and the aliased pairs."""
        ...

    @property
    def embedding(self) -> jax.Array:
        """``[V, H]`` token embedding table; the lookup runs outside the engine (as upstream)."""
        ...

    @property
    def vocab_map(self) -> jax.Array | None:
        """``[Vout]`` int32 full-vocabulary id of each logit column (``models/vocab.py``); None
        when the logits cover the full vocabulary."""
        ...

    def prepare(
        self, profile: int, dims: InferenceDims, tensor_map: Mapping[str, jax.Array]
    ) -> Prepared:
        """Checks ``tensor_map`` against the spec for ``profile``/``dims`` and binds it."""
        ...

    def execute(self, prepared: Prepared) -> dict[str, jax.Array]:
        """Runs one step; returns every output binding (``present_*`` alias ``past_*``)."""
        ...


def prepare_checked(
    spec: EngineSpec, profile: int, dims: InferenceDims, tensor_map: Mapping[str, jax.Array]
) -> Prepared:
    """Shared ``prepare``: validate against ``spec`` then bind (used by every provider)."""
    spec.validate(profile, dims, tensor_map)
    return Prepared(profile=profile, dims=dims, tensors=dict(tensor_map))
