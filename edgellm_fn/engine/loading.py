"""``load_engine``: a Hugging Face checkpoint (xla provider) or a built engine directory."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from ..config import EngineConfig, ModelConfig, read_json
from ..config.defaults import DEFAULTS
from ..errors import ConfigError, TensorParallelError
from ..models.loader import load_checkpoint
from ..models.vocab import load_vocab_map, reduce_params
from .protocol import Engine
from .providers import resolve_provider
from .sharding import AXIS, check_count, check_tensor_parallel
from .xla import XlaEngine


def is_engine_dir(path: str | Path) -> bool:
    """An engine directory's config.json carries a ``builder_config`` section."""
    cfg = Path(path) / "config.json"
    return cfg.is_file() and "builder_config" in read_json(cfg)


def load_engine(
    path: str | Path,
    *,
    provider: str | None = None,
    max_batch_size: int = DEFAULTS["max_batch_size"],
    max_input_len: int = DEFAULTS["max_input_len"],
    kv_capacity: int = DEFAULTS["kv_capacity"],
    dtype: str | None = None,
    kernels: str | None = None,
    max_lora_rank: int = 0,
    max_loras: int = 0,
    vocab_map: str | Path | None = None,
    tensor_parallel: int = 1,
    mesh: Mesh | None = None,
) -> Engine:
    """Loads an engine.

    Args:
      path: a checkpoint directory (run by the xla provider with the given limits) or an engine
        directory (its ``builder_config`` sets the limits).
      provider: one of ``providers.PROVIDERS`` (or an alias): ``"xla"`` for checkpoints; for
        engine directories ``"onnxruntime"`` or ``"tensorrt"`` (default: from its config.json).
      max_batch_size, max_input_len, kv_capacity, dtype: limits of an xla engine.
      kernels: the xla engine's kernel mode, ``"auto"`` (default), ``"on"`` or ``"off"``
        (``engine/xla.py``; ``EDGELLM_FN_KERNELS`` sets the default).
      max_lora_rank, max_loras: an xla engine's LoRA bank (``runtime.lora.lora_limits`` gives
        them for a set of adapters); an engine directory's are fixed when it is built.
      vocab_map: a reduced vocabulary for a checkpoint (``models/vocab.py``: the directory
        ``edgellm-fn reduce-vocab`` wrote, or the file); an engine directory carries its own.
      tensor_parallel: devices to split an xla engine over (``engine/sharding.py``: heads,
        MLP and vocabulary split, few KV heads replicated); the weights are staged on the host
        and each device receives only its shard.
      mesh: instead of ``tensor_parallel``, the 1-D ``("model",)`` mesh over the first N devices
        (``engine.sharding.model_mesh(N)``).

    Raises:
      ConfigError: unknown provider, or a provider that does not fit the directory.
      TensorParallelError: a ``tensor_parallel`` or ``mesh`` the model or the devices do not fit.
    """
    path = Path(path)
    tensor_parallel = _tensor_parallel(tensor_parallel, mesh)
    if tensor_parallel > 1 and is_engine_dir(path):
        raise TensorParallelError(
            f"load_engine: tensor_parallel={tensor_parallel} for the engine directory {path} "
            "(expected 1); tensor parallelism runs on the xla provider, pass the checkpoint"
        )
    if provider is not None:
        provider, _ = resolve_provider(provider, "load_engine")
    if is_engine_dir(path):
        if vocab_map is not None:
            raise ConfigError(
                f"load_engine: vocab_map={str(vocab_map)!r} for the engine directory {path} "
                "(expected None: an engine's reduced vocabulary is fixed when it is built); pass "
                "it to `edgellm-fn build --vocab-map` instead"
            )
        return _load_engine_dir(path, provider)
    if provider not in (None, "xla"):
        raise ConfigError(
            f"load_engine: {path} is a checkpoint, not an engine directory (provider={provider!r}"
            f" needs one); build it with `edgellm-fn build --model CKPT --out DIR --provider "
            f"{provider}`"
        )
    if tensor_parallel > 1:  # stage on the host; XlaEngine sends each device its shard
        check_tensor_parallel(ModelConfig.from_file(path), tensor_parallel, "load_engine")
        with jax.default_device(_host_device()):
            cfg, params = load_checkpoint(path, dtype=dtype)
    else:
        cfg, params = load_checkpoint(path, dtype=dtype)
    ids = None if vocab_map is None else load_vocab_map(vocab_map, cfg)
    if ids is not None:
        params = reduce_params(params, ids)
    ecfg = EngineConfig.create(
        cfg,
        max_batch_size=max_batch_size,
        max_input_len=max_input_len,
        kv_capacity=kv_capacity,
        dtype=dtype,
        max_lora_rank=max_lora_rank,
        max_loras=max_loras,
        reduced_vocab_size=0 if ids is None else int(ids.size),
        tensor_parallel=tensor_parallel,
    )
    return XlaEngine(ecfg, params, kernels, None if ids is None else jnp.asarray(ids))


def _host_device() -> jax.Device | None:
    """JAX's CPU device, where tensor-parallel weights are staged; None (the default device)
    when the CPU backend is off (``JAX_PLATFORMS=cuda``)."""
    try:
        return jax.devices("cpu")[0]
    except RuntimeError:
        return None


def _tensor_parallel(n: int, mesh: Mesh | None) -> int:
    """The device count of ``tensor_parallel``/``mesh``, refusing a mesh ``model_mesh`` would
    not rebuild (the state is placed on ``model_mesh(N)``)."""
    check_count(n, "load_engine")
    if mesh is None:
        return n
    if mesh.axis_names != (AXIS,) or list(mesh.devices.flat) != jax.devices()[: mesh.size]:
        raise TensorParallelError(
            f"load_engine: mesh axes={mesh.axis_names} over {mesh.size} devices (expected the 1-D "
            f"mesh ({AXIS!r},) over the first N of jax.devices(), engine.sharding.model_mesh(N))"
        )
    if n not in (1, mesh.size):
        raise TensorParallelError(
            f"load_engine: tensor_parallel={n} with a mesh of {mesh.size} devices (expected one "
            "of them, or both equal)"
        )
    return mesh.size


def _load_engine_dir(path: Path, provider: str | None) -> Engine:
    if provider == "xla":
        raise ConfigError(
            f"load_engine: {path} is an engine directory (expected a checkpoint for provider "
            "'xla'); pass the checkpoint directory instead"
        )
    if provider is None:
        provider = "tensorrt" if any(path.glob("*.engine")) else "onnxruntime"
    if provider == "onnxruntime":
        from .callback.onnxruntime import load_onnxruntime_engine

        return load_onnxruntime_engine(path)
    from .callback.tensorrt import load_tensorrt_engine

    return load_tensorrt_engine(path)
