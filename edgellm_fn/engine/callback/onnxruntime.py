"""The ``onnxruntime`` provider: the exported ONNX run by onnxruntime through the executor glue.

Inside ``jit`` each step is one ``buffer_callback`` (``engine/callback/glue.py``); onnxruntime's I/O
binding points at XLA's raw buffers, and ``present_*`` is bound to the ``past_*`` buffer so
``TensorScatter`` takes its in-place path. It runs on CPU, so the glue the ``tensorrt`` provider
uses is exercised for real in CI.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from ...dims import InferenceDims
from ...dtypes import from_ort
from ...errors import EngineError
from ..protocol import Prepared
from ..spec import build_llm_spec
from .engine_dir import FoundBinding, check_io, read_engine_dir, read_vocab_map
from .glue import BufferInfo, CallbackEngine


class OrtExecutor:
    """One onnxruntime session run on raw buffers; hashed by identity (a jit static)."""

    def __init__(self, model_path: str | Path, threads: int = 1, log_severity: int = 3):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = log_severity  # 2 shows TensorScatter copy warnings
        try:
            self.session = ort.InferenceSession(
                str(model_path), opts, providers=["CPUExecutionProvider"]
            )
        except Exception as e:  # onnxruntime raises its own exception types
            raise EngineError(f"{model_path}: onnxruntime cannot load this engine ({e})") from e
        self._lock = threading.Lock()
        #: Steps run; each bound every binding to XLA's buffers (no copies by this glue).
        self.runs = 0

    def introspect(self) -> dict[str, FoundBinding]:
        """Bindings as the session declares them (named dims become -1)."""
        found = {}
        for io, values in (("in", self.session.get_inputs()), ("out", self.session.get_outputs())):
            for v in values:
                shape = tuple(d if isinstance(d, int) else -1 for d in v.shape)
                found[v.name] = (io, from_ort(v.type), shape)
        return found

    def run(
        self,
        profile: int,
        dims: InferenceDims,
        buffers: Mapping[str, BufferInfo],
        stream: int | None,
    ) -> None:
        del profile, dims, stream  # onnxruntime needs no profile; CPU has no stream
        binding = self.session.io_binding()
        outputs = {o.name for o in self.session.get_outputs()}
        for name, info in buffers.items():
            bind = binding.bind_output if name in outputs else binding.bind_input
            if name not in outputs and 0 in info.shape:  # empty tensor: no valid address
                binding.bind_cpu_input(name, np.empty(info.shape, info.dtype))
                continue
            bind(name, "cpu", 0, info.dtype, list(info.shape), info.ptr)
        with self._lock:
            self.session.run_with_iobinding(binding)
            self.runs += 1


@jax.tree_util.register_pytree_node_class
class OnnxRuntimeEngine(CallbackEngine):
    """An exported engine directory run by onnxruntime (CPU); the embedding is the only leaf."""

    provider = "onnxruntime"

    def execute(self, prepared: Prepared) -> dict[str, jax.Array]:
        if jax.default_backend() != "cpu":
            raise EngineError(
                f"onnxruntime provider: backend={jax.default_backend()!r} (expected 'cpu'); this "
                "provider binds host buffers, run it with JAX_PLATFORMS=cpu"
            )
        return super().execute(prepared)


def load_onnxruntime_engine(
    engine_dir: str | Path, threads: int = 1, log_severity: int = 3
) -> OnnxRuntimeEngine:
    """Loads an engine directory built with provider ``onnxruntime`` and checks its I/O.

    Args:
      engine_dir: the directory ``build_engine(..., provider="onnxruntime")`` wrote.
      threads: onnxruntime intra-op threads.
      log_severity: onnxruntime log level (0 verbose .. 4 fatal).

    Raises:
      EngineError: a missing file, or a model whose bindings contradict ``config.json``.
    """
    cfg, path, embedding = read_engine_dir(engine_dir, "onnxruntime")
    executor = OrtExecutor(path, threads, log_severity)
    check_io(executor.introspect(), build_llm_spec(cfg), str(path))
    return OnnxRuntimeEngine(cfg, executor, jnp.asarray(embedding), read_vocab_map(engine_dir, cfg))
