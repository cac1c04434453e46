"""The executor glue shared by the ``tensorrt`` and ``onnxruntime`` providers.

An engine step becomes one ``jax.experimental.buffer_callback`` inside ``jit``: XLA hands the
backend its device buffers (and, on GPU, its stream); ``present_*`` outputs are declared as aliases
of the ``past_*`` inputs, so the backend writes the KV cache in place and, with the state donated,
the cache keeps its address across steps. Backends know nothing about models (STYLE rule 13).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Protocol

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental.buffer_callback import Buffer, ExecutionContext, buffer_callback

from ...config import EngineConfig
from ...dims import InferenceDims
from ...errors import EngineError
from ..protocol import Prepared, prepare_checked
from ..spec import EngineSpec, build_llm_spec


@dataclasses.dataclass(frozen=True)
class BufferInfo:
    """Address, shape and dtype of one binding as the backend sees it."""

    ptr: int
    shape: tuple[int, ...]
    dtype: np.dtype


class Executor(Protocol):
    """A backend run on raw buffers (upstream's ``EngineExecutor::execute``)."""

    def run(
        self,
        profile: int,
        dims: InferenceDims,
        buffers: Mapping[str, BufferInfo],
        stream: int | None,
    ) -> None:
        """Runs one step; ``buffers`` holds every input and output binding by name.

        Aliased outputs (``present_*``) are the same memory as their inputs (``past_*``).
        """
        ...


def buffer_info(buf: Buffer, gpu: bool) -> BufferInfo:
    """Reads a ``Buffer``'s address through ``__array_interface__`` (CPU) or CUDA's interface."""
    if not gpu:
        arr = np.asarray(buf)
        return BufferInfo(arr.__array_interface__["data"][0], tuple(arr.shape), arr.dtype)
    iface = buf.__cuda_array_interface__
    return BufferInfo(int(iface["data"][0]), tuple(iface["shape"]), np.dtype(buf.dtype))


def _stream(ctx: ExecutionContext, gpu: bool) -> int | None:
    """XLA's CUDA stream on GPU; ``ctx.stream`` raises on CPU, where there is none."""
    return int(ctx.stream) if gpu else None


def call_executor(spec: EngineSpec, executor: Executor, prepared: Prepared) -> dict[str, jax.Array]:
    """Runs ``executor`` on ``prepared`` inside the current trace; returns every output by name.

    Args:
      spec: the engine's bindings; inputs are passed in spec order.
      executor: a hashable backend (it is captured by the lowered callback).
      prepared: validated tensors, profile and dims (``Engine.prepare``).
    """
    ins, outs = spec.inputs(), spec.outputs()
    in_names = [b.name for b in ins]
    out_names = [b.name for b in outs]
    result = [jax.ShapeDtypeStruct(b.resolve(prepared.dims), np.dtype(b.dtype)) for b in outs]
    aliases = {in_names.index(i): out_names.index(o) for o, i in spec.aliases}
    profile, dims = prepared.profile, prepared.dims
    gpu = jax.default_backend() == "gpu"

    def callback(ctx: ExecutionContext, out_bufs, *in_bufs) -> None:
        buffers = {n: buffer_info(b, gpu) for n, b in zip(in_names, in_bufs, strict=True)}
        buffers.update((n, buffer_info(b, gpu)) for n, b in zip(out_names, out_bufs, strict=True))
        for out, inp in spec.aliases:  # XLA guarantees this for declared aliases; never assume
            if buffers[out].ptr != buffers[inp].ptr:
                raise EngineError(
                    f"executor: {out} at {buffers[out].ptr:#x} (expected the {inp} buffer at "
                    f"{buffers[inp].ptr:#x}); the KV cache would not be updated in place"
                )
        executor.run(profile, dims, buffers, _stream(ctx, gpu))

    call = buffer_callback(
        callback,
        result,
        has_side_effect=False,
        vmap_method=None,  # an engine step is not vmappable
        input_output_aliases=aliases,
    )
    values = call(*(prepared.tensors[n] for n in in_names))
    return dict(zip(out_names, values, strict=True))


class CallbackEngine:
    """An engine whose steps run an ``Executor`` through ``call_executor``.

    A pytree whose leaves are the embedding table and the vocab map; the config and the
    (hashable) executor are static. Subclasses set ``provider`` (a name of
    ``providers.PROVIDERS``) and register themselves as pytrees.
    """

    provider: str

    def __init__(
        self,
        config: EngineConfig,
        executor: Executor,
        embedding: jax.Array,
        vocab_map: jax.Array | None = None,
    ):
        self.config = config
        self.executor = executor
        self._embedding = embedding
        self._vocab_map = vocab_map

    def tree_flatten(self):
        return (self._embedding, self._vocab_map), (self.config, self.executor)

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls(aux[0], aux[1], *children)

    @property
    def vocab_map(self) -> jax.Array | None:
        """``[Vout]`` int32 full id of each logit column; None for the full vocabulary."""
        return self._vocab_map

    def with_embedding(self, embedding) -> CallbackEngine:
        """This engine (same executor, no reload) with another ``[V, H]`` embedding table: the
        embedding of an external weight set (``engine.inputs.load_external_weights``).

        Raises:
          EngineError: a table of another shape or dtype.
        """
        old = self._embedding
        if tuple(embedding.shape) != tuple(old.shape) or embedding.dtype != old.dtype:
            raise EngineError(
                f"{self.provider} provider: embedding {embedding.dtype} {list(embedding.shape)} "
                f"(expected {old.dtype} {list(old.shape)}); the weight set has another shape"
            )
        return type(self)(self.config, self.executor, jnp.asarray(embedding), self._vocab_map)

    @property
    def embedding(self) -> jax.Array:
        """``[V, H]`` token embedding table (the lookup runs outside the engine)."""
        return self._embedding

    @property
    def spec(self) -> EngineSpec:
        return build_llm_spec(self.config)

    def prepare(
        self, profile: int, dims: InferenceDims, tensor_map: Mapping[str, jax.Array]
    ) -> Prepared:
        return prepare_checked(self.spec, profile, dims, tensor_map)

    def execute(self, prepared: Prepared) -> dict[str, jax.Array]:
        return call_executor(self.spec, self.executor, prepared)
