"""Tensor parallelism on one host: a 1-D ``model`` mesh and the sharding of every param and state
leaf (XLA SPMD partitions the step and inserts the collectives; nothing here is hand-written
communication).

The rule, for ``N = tensor_parallel`` devices (``PartitionSpec`` per leaf)::

    leaf                          split          on N devices, each device holds
    wq [Hq*D, H], bq              column (rows)  Hq/N query heads        Hq % N == 0, else error
    wk, wv [Hkv*D, H], bk, bv     column (rows)  Hkv/N kv heads          when Hkv % N == 0
                                  replicated     all Hkv heads           otherwise (GQA, few kv)
    wo [H, Hq*D]                  row (columns)  the inputs of its heads; XLA all-reduces the out
    w_gate, w_up [F, H], biases   column (rows)  F/N                     F % N == 0, else error
    w_down [H, F]                 row (columns)  F/N; XLA all-reduces the output
    embed [V, H], lm_head [Vo, H] vocab (rows)   V/N rows                when V % N == 0, else
                                                                         replicated
    norms, bo, b_down, q/k_norm   replicated
    KV cache k/v [B, Hkv, C, D]   as wk/wv: split on Hkv, or replicated with them
    every other state leaf        replicated (lengths, logits [B, V], sampling buffers, RoPE)

The q/k/v and gate/up projections are held unfused (``to_tp_layout``): a fused ``wqkv`` split on
its rows would put q on some devices and k/v on others. ``models/llama.py`` takes either layout.

Placement sends each device only its shard (``jax.make_array_from_callback`` over host arrays,
``jax.jit(..., out_shardings=)`` for the state), never the whole array to every device.

NVLink multicast (NVLS) stays off: ``model_mesh`` sets ``NCCL_NVLS_ENABLE=0`` before any
collective runs (NCCL reads it when XLA creates its first communicator), and refuses another value.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any, TypeVar

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ..config import EngineConfig, ModelConfig
from ..errors import TensorParallelError

AXIS = "model"
Params = dict[str, Any]
T = TypeVar("T")

_COLUMN = frozenset({"wq", "bq", "w_gate", "b_gate", "w_up", "b_up"})
_KV = frozenset({"wk", "wv", "bk", "bv"})
_ROW = frozenset({"wo", "w_down"})
_VOCAB = frozenset({"embed", "lm_head"})


def check_count(n: Any, where: str) -> None:
    """Refuses a device count that is not an integer >= 1 (``TensorParallelError``)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise TensorParallelError(
            f"{where}: tensor_parallel={n!r} (expected an integer >= 1, the devices to split the "
            "model over)"
        )


def check_tensor_parallel(m: ModelConfig, n: int, where: str = "tensor_parallel") -> None:
    """Refuses a device count ``n`` the model ``m`` cannot be split over (before any weight is
    read or placed).

    Raises:
      TensorParallelError: ``N`` is not a positive int, exceeds ``len(jax.devices())``, or does
        not divide ``num_attention_heads`` or ``intermediate_size``; or the model is a hybrid.
    """
    check_count(n, where)
    if n == 1:
        return
    if m.hybrid is not None:
        raise TensorParallelError(
            f"{where}: tensor_parallel={n} for the hybrid Mamba2 model {m.architecture} "
            "(expected 1); its Mamba2 layers have no sharding rule yet"
        )
    available = len(jax.devices())
    if n > available:
        raise TensorParallelError(
            f"{where}: tensor_parallel={n} (expected <= {available}, the devices JAX sees: "
            f"{jax.devices()[0].platform} x{available}); lower --tensor-parallel, or on a CPU set "
            f"XLA_FLAGS=--xla_force_host_platform_device_count={n} before JAX starts"
        )
    for field, value in (
        ("num_attention_heads", m.num_attention_heads),
        ("intermediate_size", m.intermediate_size),
    ):
        if value % n:
            fits = [d for d in range(1, min(value, available) + 1) if value % d == 0]
            raise TensorParallelError(
                f"{where}: tensor_parallel={n} does not divide {field}={value} (expected a "
                f"divisor; {fits} fit this model on {available} devices); each device holds "
                f"{field}/N of every layer"
            )


def kv_sharded(m: ModelConfig, n: int) -> bool:
    """True when the KV heads split over ``n`` devices; False: they are replicated (GQA)."""
    return m.num_key_value_heads % n == 0


@functools.cache
def model_mesh(n: int) -> Mesh:
    """The 1-D mesh ``("model",)`` over the first ``n`` of ``jax.devices()``.

    Raises:
      TensorParallelError: ``NCCL_NVLS_ENABLE`` is set to a value other than ``"0"``.
    """
    nvls = os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
    if nvls != "0":
        raise TensorParallelError(
            f"tensor_parallel: NCCL_NVLS_ENABLE={nvls!r} (expected '0' or unset); NVLink "
            "multicast can put a shared host's GPUs out of service, unset it"
        )
    return Mesh(np.array(jax.devices()[:n]), (AXIS,))


def param_spec(cfg: EngineConfig, name: str, shape: tuple[int, ...]) -> PartitionSpec:
    """The ``PartitionSpec`` of the param leaf ``name`` (its last key) in the TP layout."""
    n = cfg.tensor_parallel
    if name in _COLUMN or (name in _KV and kv_sharded(cfg.model, n)):
        return PartitionSpec(AXIS)
    if name in _ROW:
        return PartitionSpec(None, AXIS)
    if name in _VOCAB and shape[0] % n == 0:
        return PartitionSpec(AXIS)
    return PartitionSpec()


def to_tp_layout(m: ModelConfig, params: Params) -> Params:
    """Unfuses ``wqkv``/``bqkv`` into ``wq, wk, wv``/``bq, bk, bv`` and ``w_gate_up`` (and its
    bias) into ``w_gate, w_up`` (row slices: numpy views on host arrays); a params tree already
    in the TP layout is returned as is."""
    q, kv = m.q_size, m.kv_size
    layers = []
    for lp in params["layers"]:
        lp = dict(lp)
        for fused, names, cuts in (
            ("wqkv", ("wq", "wk", "wv"), (0, q, q + kv, q + 2 * kv)),
            ("bqkv", ("bq", "bk", "bv"), (0, q, q + kv, q + 2 * kv)),
            ("w_gate_up", ("w_gate", "w_up"), None),
            ("b_gate_up", ("b_gate", "b_up"), None),
        ):
            if fused in lp:
                x = lp.pop(fused)
                if cuts is None:
                    cuts = (0, x.shape[0] // 2, x.shape[0])
                lp.update({k: x[lo:hi] for k, lo, hi in zip(names, cuts, cuts[1:], strict=False)})
        layers.append(lp)
    return {**params, "layers": layers}


def param_shardings(cfg: EngineConfig, params: Params) -> Params:
    """A ``NamedSharding`` per leaf of a TP-layout params tree (the same structure)."""
    mesh = model_mesh(cfg.tensor_parallel)

    def one(path, x) -> NamedSharding:
        name = path[-1].key if hasattr(path[-1], "key") else str(path[-1])
        return NamedSharding(mesh, param_spec(cfg, name, tuple(x.shape)))

    return jax.tree_util.tree_map_with_path(one, params)


def shard_params(cfg: EngineConfig, params: Params) -> Params:
    """``params`` (fused or TP layout, on the host or any device) in the TP layout, each device
    holding only its shard (``param_spec``).

    Raises:
      TensorParallelError: see ``check_tensor_parallel``.
    """
    check_tensor_parallel(cfg.model, cfg.tensor_parallel)
    tp = to_tp_layout(cfg.model, params)
    return jax.tree.map(place, tp, param_shardings(cfg, tp))


def place(x: Any, sharding: NamedSharding) -> jax.Array:
    """``x`` on ``sharding``: an array already there is kept; otherwise each device is given its
    own slice of a host copy (never the whole array)."""
    if isinstance(x, jax.Array) and x.sharding == sharding:
        return x
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])


def replicated(cfg: EngineConfig) -> NamedSharding:
    """Every device holds the whole leaf."""
    return NamedSharding(model_mesh(cfg.tensor_parallel), PartitionSpec())


def kv_sharding(cfg: EngineConfig) -> NamedSharding:
    """The sharding of a KV layer ``[B, Hkv, C, D]``: split on Hkv, or replicated (GQA)."""
    split = kv_sharded(cfg.model, cfg.tensor_parallel)
    spec = PartitionSpec(None, AXIS) if split else PartitionSpec()
    return NamedSharding(model_mesh(cfg.tensor_parallel), spec)


def state_shardings(cfg: EngineConfig, state: T) -> T:
    """A sharding per leaf of a runtime state: ``res.kv`` k/v as ``kv_sharding``, the rest
    replicated."""
    kv, rep = kv_sharding(cfg), replicated(cfg)

    def one(path, _) -> NamedSharding:
        keys = [getattr(p, "name", getattr(p, "key", None)) for p in path]
        return kv if keys[:3] in (["res", "kv", "k"], ["res", "kv", "v"]) else rep

    return jax.tree_util.tree_map_with_path(one, state)


def allocate_state(cfg: EngineConfig, build: Callable[[], T]) -> T:
    """``build()`` (a state allocation) run under ``jit`` with ``state_shardings`` as its output
    shardings, so each device allocates only its shard of the KV cache."""
    shapes = jax.eval_shape(build)
    return jax.jit(build, out_shardings=state_shardings(cfg, shapes))()


def constrain_outputs(cfg: EngineConfig, outputs: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """Pins the engine's outputs to the state's shardings (present k/v as the past ones, logits
    replicated), so a donated state buffer is reused by the step's output."""
    kv, rep = kv_sharding(cfg), replicated(cfg)
    return {
        name: jax.lax.with_sharding_constraint(x, kv if name.startswith("present_") else rep)
        for name, x in outputs.items()
    }
