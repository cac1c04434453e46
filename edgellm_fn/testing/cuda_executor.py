"""CUDA test executor: real kernels on XLA's stream through the engine glue, via `GraphCache`.

Used only by GPU tests, to prove the executor glue the TensorRT provider relies on
(`engine/callback/glue.py`: `call_executor`, the `Executor` protocol, `BufferInfo`): a jitted,
donated step hands `run` XLA's stream and in-place (aliased) buffers; the executor launches its
kernels there (cupy `RawKernel`), or replays the CUDA graph captured for the same binding
snapshot. Importing it needs no GPU (cupy is imported on the first launch). Its arithmetic, per
step, with `a` fixed at construction:

```
y          <- a * x + y                               # [N] float32, in place
kv[b, h, p, :] <- new_kv[b, h, :] + p  for p = positions[b], if 0 <= p < KVcap
positions  <- positions + 1                           # [B] int32, in place
```

so after `k` steps from `y0`, `positions0`: `y = y0 + k*a*x` and rows `positions0[b] + i`
(`i < k`) of `kv[b]` hold `new_kv[b] + positions0[b] + i`. Changing values inside the bound
buffers (positions) is replayed correctly; a new address or shape is a graph-cache miss.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from edgellm_fn.dims import InferenceDims
from edgellm_fn.engine.callback.glue import BufferInfo, call_executor
from edgellm_fn.engine.protocol import Prepared
from edgellm_fn.engine.snapshot import BindingSnapshot, GraphCache, GraphCacheStats
from edgellm_fn.engine.spec import EngineSpec, Profile, TensorSpec

#: Binding order (= callback argument order); the last three are updated in place.
BINDINGS = ("x", "new_kv", "y", "positions", "kv")
OUTPUTS = ("y", "positions", "kv")
_DTYPES = {"x": jnp.float32, "new_kv": jnp.float32, "y": jnp.float32, "positions": jnp.int32,
           "kv": jnp.float32}  # fmt: skip
#: The glue names outputs apart from inputs: ``y`` is written through ``y_out`` (same memory).
_OUT = {n: f"{n}_out" for n in OUTPUTS}
_THREADS = 256
_SOURCE = r"""
extern "C" __global__ void axpy_inplace(const float* x, float* y, float a, long long n) {
  long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) y[i] = a * x[i] + y[i];
}
extern "C" __global__ void kv_append(const float* new_kv, const int* positions, float* kv,
                                     int batch, int heads, int cap, int head_dim) {
  long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= (long long)batch * heads * head_dim) return;
  int d = i % head_dim, h = (i / head_dim) % heads, b = i / ((long long)head_dim * heads);
  int p = positions[b];
  if (p < 0 || p >= cap) return;
  kv[(((long long)b * heads + h) * cap + p) * head_dim + d] = new_kv[i] + (float)p;
}
extern "C" __global__ void advance(int* positions, int batch) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < batch) positions[i] += 1;
}
"""


def _blocks(n: int) -> tuple[int]:
    return (max(1, (n + _THREADS - 1) // _THREADS),)


def _spec(tensors: Mapping[str, jax.Array]) -> EngineSpec:
    """The bindings of one step as an ``EngineSpec`` (sizes fixed except ``batch``/``kv_len``)."""
    n = tensors["y"].shape[0]
    _, heads, _, head_dim = tensors["kv"].shape
    batch, cap = ("batch",), ("kv_len",)
    shapes = {
        "x": (n,),
        "new_kv": (batch, heads, head_dim),
        "y": (n,),
        "positions": (batch,),
        "kv": (batch, heads, cap, head_dim),
    }
    dtype = {k: jnp.dtype(v).name for k, v in _DTYPES.items()}
    ins = [TensorSpec(k, "in", dtype[k], shapes[k]) for k in BINDINGS]
    outs = [TensorSpec(_OUT[k], "out", dtype[k], shapes[k]) for k in OUTPUTS]
    profile = Profile(batch=(1, 1 << 30), seq_len=(1, 1))
    return EngineSpec(
        bindings=(*ins, *outs),
        profiles=(profile, profile),
        aliases=tuple((_OUT[k], k) for k in OUTPUTS),
    )


class CudaTestExecutor:
    """Engine-shaped test executor (`prepare`, `execute`) on three real CUDA kernels.

    `execute` runs `call_executor` (the glue of the callback providers) with this object as the
    `Executor`; `run` snapshots the bound buffers and goes through the `GraphCache`.

    Args:
      a: the axpy scale (a kernel argument, so it is part of a captured graph).
      capture: capture a CUDA graph on each new binding snapshot and replay it on hits;
        `False` always launches the kernels (the eager reference).
    """

    def __init__(self, a: float = 2.0, capture: bool = True) -> None:
        self.a = float(a)
        self.capture = capture
        self.graphs = GraphCache()
        self.last_action: str | None = None
        self._kernels: dict | None = None

    @property
    def stats(self) -> GraphCacheStats:
        return self.graphs.stats

    def prepare(
        self, profile: int, dims: InferenceDims, tensor_map: Mapping[str, jax.Array]
    ) -> Prepared:
        """Checks names, dtypes and shapes (`kv` is `[dims.batch, H, dims.kv_len, D]`)."""
        where = "CudaTestExecutor.prepare"
        if profile not in (0, 1):
            raise ValueError(f"{where}: profile={profile} (expected 0 or 1)")
        missing = [n for n in BINDINGS if n not in tensor_map]
        unknown = sorted(set(tensor_map) - set(BINDINGS))
        if missing or unknown:
            raise ValueError(
                f"{where}: missing={missing}, unknown={unknown} (expected exactly {BINDINGS})"
            )
        for name, dtype in _DTYPES.items():
            if jnp.dtype(tensor_map[name].dtype) != jnp.dtype(dtype):
                got = jnp.dtype(tensor_map[name].dtype)
                raise ValueError(f"{where}: {name}.dtype={got} (expected {jnp.dtype(dtype)})")
        b, c = dims.batch, dims.kv_len
        kv = tuple(tensor_map["kv"].shape)
        if len(kv) != 4 or kv[0] != b or kv[2] != c:
            raise ValueError(f"{where}: kv.shape={kv} (expected [{b}, H, {c}, D] from dims)")
        want = {
            "x": tuple(tensor_map["y"].shape),
            "new_kv": (b, kv[1], kv[3]),
            "positions": (b,),
        }
        for name, shape in want.items():
            if tuple(tensor_map[name].shape) != shape:
                got = tuple(tensor_map[name].shape)
                raise ValueError(f"{where}: {name}.shape={got} (expected {shape})")
        return Prepared(profile=profile, dims=dims, tensors={n: tensor_map[n] for n in BINDINGS})

    def execute(self, prepared: Prepared) -> dict[str, jax.Array]:
        """Runs one step inside the current trace; returns `y`, `positions`, `kv` (aliased)."""
        out = call_executor(_spec(prepared.tensors), self, prepared)
        return {n: out[_OUT[n]] for n in OUTPUTS}

    def run(
        self,
        profile: int,
        dims: InferenceDims,
        buffers: Mapping[str, BufferInfo],
        stream: int | None,
    ) -> None:
        """The `Executor` verb: enqueue (or replay) the three kernels on XLA's `stream`."""
        del profile, dims  # one graph per binding snapshot, whatever the profile
        if stream is None:
            raise ValueError("CudaTestExecutor.run: stream=None (expected XLA's CUDA stream)")
        bound = {n: buffers[n] for n in BINDINGS}  # outputs are the same memory as y/positions/kv
        snapshot = BindingSnapshot.of((n, b.ptr, b.shape) for n, b in bound.items())
        self.last_action = self.graphs.execute(
            snapshot, stream, lambda s: self._enqueue(s, bound), self.capture
        )

    def _enqueue(self, stream: int, bound: Mapping[str, BufferInfo]) -> None:
        import cupy

        if self._kernels is None:
            module = cupy.RawModule(code=_SOURCE)
            names = ("axpy_inplace", "kv_append", "advance")
            self._kernels = {n: module.get_function(n) for n in names}
        k = self._kernels
        ptr = {n: np.uint64(b.ptr) for n, b in bound.items()}
        n = int(np.prod(bound["y"].shape))
        batch, heads, _, head_dim = bound["kv"].shape
        rows = batch * heads * head_dim
        axpy_args = (ptr["x"], ptr["y"], np.float32(self.a), np.int64(n))
        kv_args = (ptr["new_kv"], ptr["positions"], ptr["kv"], *map(np.int32, bound["kv"].shape))
        with cupy.cuda.ExternalStream(stream):
            k["axpy_inplace"](_blocks(n), (_THREADS,), axpy_args)
            k["kv_append"](_blocks(rows), (_THREADS,), kv_args)
            k["advance"](_blocks(batch), (_THREADS,), (ptr["positions"], np.int32(batch)))


# ---------------------------------------------------------------------------------------------
# The engine contract's bindings on CUDA kernels: drives the REAL decode path (create_state,
# build_tensor_map, CallbackEngine glue, donated steps) on a GPU with no model.

_CONTRACT_SOURCE = r"""
extern "C" __global__ void kv_write(const float* embeds, const int* start, int has_start,
                                    const int* ctx, float* kv, int batch, int seq, int hidden,
                                    int heads, int cap, int head_dim) {
  long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= (long long)batch * seq * heads * head_dim) return;
  int d = i % head_dim, h = (i / head_dim) % heads;
  int s = (i / ((long long)head_dim * heads)) % seq;
  int b = i / ((long long)head_dim * heads * seq);
  int pos = (has_start ? start[b] : 0) + s;
  if (pos < 0 || pos >= ctx[b] || pos >= cap) return;
  kv[(((long long)b * heads + h) * cap + pos) * head_dim + d] =
      embeds[((long long)b * seq + s) * hidden + (d % hidden)] + (float)pos;
}
extern "C" __global__ void one_hot_logits(const int* ctx, float* logits, int batch, int vocab) {
  long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= (long long)batch * vocab) return;
  int v = i % vocab, b = i / vocab;
  logits[i] = (v == ctx[b] % vocab) ? 1.0f : 0.0f;
}
"""


class CudaContractExecutor:
    """A glue ``Executor`` (``run(profile, dims, buffers, stream)``) for the LLM contract.

    Its arithmetic, per step, on float32 engines (``H`` hidden, ``V`` vocab, ``s < S``):

    ```
    pos = start[b] + s   (start = 0 for a fresh prefill), if pos < context_lengths[b]:
        present_{key,value}_i[b, h, pos, d] <- inputs_embeds[b, s, d % H] + pos   # in place
    logits[b, v] <- 1 if v == context_lengths[b] % V else 0      # greedy next id = ctx % V
    ```

    Decode steps (profile 1) go through a ``GraphCache``: captured on a new binding snapshot,
    replayed on an equal one. Prefill (profile 0, ``S`` varies) is always enqueued.
    """

    def __init__(self) -> None:
        self.graphs = GraphCache()
        self._kernels: dict | None = None

    @property
    def stats(self) -> GraphCacheStats:
        return self.graphs.stats

    def run(self, profile: int, dims: InferenceDims, buffers, stream: int | None) -> None:
        """Runs one step on XLA's stream (see the class docstring)."""
        if stream is None:
            raise ValueError("CudaContractExecutor.run: stream=None (expected XLA's CUDA stream)")
        for name, info in buffers.items():
            if name != "rope_rotary_cos_sin" and info.dtype not in (np.float32, np.int32):
                raise ValueError(
                    f"CudaContractExecutor: {name}.dtype={info.dtype} (expected "
                    "float32 or int32: build the engine config in float32)"
                )
        if profile != 1:
            self._enqueue(stream, buffers)
            return
        snapshot = BindingSnapshot.of((n, b.ptr, b.shape) for n, b in buffers.items())
        self.graphs.execute(snapshot, stream, lambda s: self._enqueue(s, buffers), capture=True)

    def _enqueue(self, stream: int, buffers) -> None:
        import cupy

        if self._kernels is None:
            module = cupy.RawModule(code=_CONTRACT_SOURCE)
            self._kernels = {n: module.get_function(n) for n in ("kv_write", "one_hot_logits")}
        k, i32 = self._kernels, np.int32
        embeds, ctx, start = (
            buffers[n] for n in ("inputs_embeds", "context_lengths", "kvcache_start_index")
        )
        batch, seq, hidden = embeds.shape
        has_start = int(np.prod(start.shape)) > 0
        start_ptr = np.uint64(start.ptr if has_start else ctx.ptr)  # unread when empty
        logits = buffers["logits"]
        with cupy.cuda.ExternalStream(stream):
            for name, info in buffers.items():
                if not name.startswith("present_"):
                    continue  # aliased to past_*: the same memory
                _, heads, cap, head_dim = info.shape
                n = batch * seq * heads * head_dim
                k["kv_write"](
                    _blocks(n),
                    (_THREADS,),
                    (
                        np.uint64(embeds.ptr),
                        start_ptr,
                        i32(has_start),
                        np.uint64(ctx.ptr),
                        np.uint64(info.ptr),
                        i32(batch),
                        i32(seq),
                        i32(hidden),
                        i32(heads),
                        i32(cap),
                        i32(head_dim),
                    ),
                )
            vocab = logits.shape[1]
            k["one_hot_logits"](
                _blocks(batch * vocab),
                (_THREADS,),
                (np.uint64(ctx.ptr), np.uint64(logits.ptr), i32(batch), i32(vocab)),
            )


def contract_engine(config, embedding: jax.Array):
    """A ``CallbackEngine`` running ``CudaContractExecutor`` (imported lazily: GPU tests only)."""
    from edgellm_fn.engine.callback.glue import CallbackEngine

    @jax.tree_util.register_pytree_node_class
    class CudaContractEngine(CallbackEngine):
        provider = "cuda-contract-test"

    return CudaContractEngine(config, CudaContractExecutor(), embedding)
