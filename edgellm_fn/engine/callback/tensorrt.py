"""The ``tensorrt`` provider: a serialized TensorRT / TensorRT-RTX engine run inside ``jit``.

Each step is one ``buffer_callback`` (``engine/callback/glue.py``) on XLA's CUDA stream:
``set_optimization_profile_async`` when the profile changes, ``set_input_shape`` and
``set_tensor_address`` for every binding (``present_*`` share the ``past_*`` buffers), then
``execute_async_v3`` — through the ``GraphCache`` for decode steps (profile 1), so a decode step
whose bindings match a captured graph replays it. Context memory is sized once (the largest
profile) and owned by the executor. Loading fails early, with the reason, on a machine whose GPU
the installed TensorRT cannot run (e.g. TensorRT-RTX on sm_90).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType

import jax
import jax.numpy as jnp

from ...config import EngineConfig, read_json
from ...dims import InferenceDims
from ...errors import EngineError
from ..snapshot import BindingSnapshot, GraphCache
from ..spec import build_llm_spec
from .engine_dir import CONFIG_FILE, read_engine_dir, read_vocab_map
from .glue import BufferInfo, CallbackEngine
from .trt_adapter import _Logger, check_introspection, introspect_engine, is_rtx, load_module

#: Profile whose steps go through the ``GraphCache`` (decode/verify; prefill is never graphed).
GRAPHED_PROFILE = 1


def check_device(trt: ModuleType, device: jax.Device | None = None) -> str:
    """Returns ``"sm_XY"`` of the GPU JAX uses, or raises why ``trt`` cannot run there.

    Raises:
      EngineError: no CUDA GPU, or one outside the installed TensorRT's supported targets.
    """
    devices = [d for d in jax.devices() if d.platform == "gpu"] if device is None else [device]
    if not devices or devices[0].platform != "gpu":
        raise EngineError(
            f"tensorrt provider: no CUDA GPU visible to JAX (backend={jax.default_backend()!r}); "
            "TensorRT engines run on an NVIDIA GPU; use the onnxruntime provider on CPU"
        )
    cc = str(getattr(devices[0], "compute_capability", ""))
    sm = "SM" + cc.replace(".", "")
    if is_rtx(trt):
        targets = [n for n in trt.ComputeCapability.__members__ if n.startswith("SM")]
        if sm not in targets:
            raise EngineError(
                f"tensorrt provider: GPU compute capability={cc} (expected one of {targets} for "
                f"{trt.__name__} {trt.__version__}); TensorRT-RTX does not run on this GPU "
                "(Hopper sm_90 included); use NVIDIA TensorRT (`pip install tensorrt`) there"
            )
    return f"sm_{cc.replace('.', '')}"


class TrtExecutor:
    """One engine and one execution context; hashed by identity (a jit static)."""

    def __init__(self, trt: ModuleType, blob: bytes, cfg: EngineConfig, where: str):
        check_device(trt)
        self.trt = trt
        self._logger = _Logger(trt)
        self.runtime = trt.Runtime(self._logger)
        self.engine = self.runtime.deserialize_cuda_engine(blob)
        if self.engine is None:
            raise EngineError(
                f"{where}: {trt.__name__} cannot deserialize the engine: "
                f"{self._logger.last_error}; rebuild it with this TensorRT version"
            )
        check_introspection(introspect_engine(trt, self.engine), build_llm_spec(cfg), cfg, where)
        strategy = trt.ExecutionContextAllocationStrategy.USER_MANAGED
        self.context = self.engine.create_execution_context(strategy)
        size = max(
            self.engine.get_device_memory_size_for_profile_v2(p)
            for p in range(self.engine.num_optimization_profiles)
        )
        # Sized once for the largest profile; a JAX buffer keeps it alive with the executor.
        self._memory = jnp.zeros((max(size, 1),), jnp.uint8)
        self.context.set_device_memory(self._memory.unsafe_buffer_pointer(), size)
        self.graphs = GraphCache()
        self.capture = True
        self._profile: int | None = None
        self._inputs = {
            self.engine.get_tensor_name(i)
            for i in range(self.engine.num_io_tensors)
            if self.engine.get_tensor_mode(self.engine.get_tensor_name(i)) == trt.TensorIOMode.INPUT
        }
        self._lock = threading.Lock()

    def run(
        self,
        profile: int,
        dims: InferenceDims,
        buffers: Mapping[str, BufferInfo],
        stream: int | None,
    ) -> None:
        del dims  # shapes come from the buffers themselves
        if stream is None:
            raise EngineError("tensorrt provider: no CUDA stream from XLA (expected a GPU backend)")
        ctx = self.context
        with self._lock:
            if profile != self._profile:
                if not ctx.set_optimization_profile_async(profile, stream):
                    raise EngineError(
                        f"tensorrt provider: profile={profile} rejected: {self._logger.last_error}"
                    )
                self._profile = profile
            for name, info in buffers.items():
                if name in self._inputs and not ctx.set_input_shape(name, info.shape):
                    raise EngineError(
                        f"tensorrt provider: {name} shape={list(info.shape)} rejected for "
                        f"profile {profile}: {self._logger.last_error}"
                    )
                ctx.set_tensor_address(name, info.ptr)

            def enqueue(s: int) -> None:
                if not ctx.execute_async_v3(s):
                    raise EngineError(
                        f"tensorrt provider: execute_async_v3 failed: {self._logger.last_error}"
                    )

            if profile != GRAPHED_PROFILE:
                enqueue(stream)
                return
            snapshot = BindingSnapshot.of((n, i.ptr, i.shape) for n, i in buffers.items())
            self.graphs.execute(snapshot, stream, enqueue, capture=self.capture)


@jax.tree_util.register_pytree_node_class
class TensorRtEngine(CallbackEngine):
    """A TensorRT engine directory run through ``buffer_callback``; the embedding is the leaf.

    Decode steps (``GRAPHED_PROFILE``) are captured as CUDA graphs on their first run and replayed
    by the executor's ``GraphCache`` (``executor.graphs.stats``; ``executor.capture = False``
    always enqueues).
    """

    provider = "tensorrt"


def load_tensorrt_engine(engine_dir: str | Path) -> TensorRtEngine:
    """Loads an engine directory built with provider ``tensorrt`` or ``tensorrt-rtx``.

    Raises:
      EngineError: missing files; TensorRT not installed; no GPU it can run on; an engine whose
        bindings, profiles or aliasing contradict ``config.json``.
    """
    cfg, path, embedding = read_engine_dir(engine_dir, "tensorrt")
    builder = str(read_json(Path(engine_dir) / CONFIG_FILE)["engine"].get("builder", "tensorrt"))
    trt = load_module("tensorrt-rtx" if builder.startswith("tensorrt_rtx") else "tensorrt")
    executor = TrtExecutor(trt, path.read_bytes(), cfg, str(path))
    return TensorRtEngine(cfg, executor, jnp.asarray(embedding), read_vocab_map(engine_dir, cfg))
