r"""KV-cache utilities (Edge-LLM `kvCacheUtils`) as XLA FFI custom calls, each with a `_ref` twin.

Layout: per attention layer separate k and v arrays, each `[B, Hkv, KVcap, D]`
(float32/float16/bfloat16); a saved row is `[Hkv, seq_len, D]`; lengths are `[B]` int32.

```
cache[b] (one head):  | t0 t1 ... t(L-1) | ........ free ........ |   KVcap positions
                        \______________/
saved (same head):    | t0 t1 ... t(L-1) |                            L = seq_len
```

`save_*` copies row `batch_idx`'s first `seq_len` positions out; `instantiate_*` writes them back
into a row in place (the cache is aliased to the result: donate it to keep its buffer).
The row `batch_idx` is a BUFFER (DESIGN section 5: values that change per step are buffers): a
Python int (checked here before anything runs) or an int32 scalar array, traced or not, so one
executable serves every row. A traced row must be in range: the CPU handler then returns an
error, the CUDA kernel copies nothing, the `_ref` clamps (save) or drops (instantiate). The saved
length `seq_len` stays a static int: it is the saved array's shape. The batched variants copy
many arrays (k and v of every layer, per-layer Hkv may differ, one D) in a single kernel launch.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from edgellm_fn.ffi import _kv_cache_utils

MAX_BATCHED_LAYERS: int = int(_kv_cache_utils.MAX_BATCHED_LAYERS)
_DTYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.float16), jnp.dtype(jnp.bfloat16))
_INT32 = jnp.dtype(jnp.int32)


def _static_int(op: str, name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(
            f"{op}: {name}={value!r} (expected a static Python int); it sizes the kernel's work at "
            f"trace time, so pass a concrete int (under jit mark it static, e.g. static_argnames)"
        )
    return int(value)


def _check_cache(op: str, name: str, x: object) -> tuple[int, int, int, int]:
    shape, dtype = getattr(x, "shape", None), getattr(x, "dtype", None)
    if shape is None or dtype is None:
        raise TypeError(f"{op}: {name} is {type(x).__name__} (expected a jax.Array)")
    if len(shape) != 4:
        raise ValueError(
            f"{op}: {name}.shape={tuple(shape)} (expected rank 4 [B, Hkv, KVcap, D]); pass one "
            f"k or v array of one layer"
        )
    if jnp.dtype(dtype) not in _DTYPES:
        raise ValueError(
            f"{op}: {name}.dtype={jnp.dtype(dtype)} (expected float32, float16 or bfloat16)"
        )
    return tuple(int(d) for d in shape)  # type: ignore[return-value]


def _check_batch_idx(
    op: str, batch_idx: object, batch: int, name: str = "cache"
) -> int | jax.Array:
    """Range-checks a concrete row; returns it, or the int32 scalar array as given."""
    if isinstance(batch_idx, jax.Array):
        if batch_idx.shape != () or jnp.dtype(batch_idx.dtype) != _INT32:
            raise TypeError(
                f"{op}: batch_idx is {jnp.dtype(batch_idx.dtype)}{list(batch_idx.shape)} "
                "(expected a Python int or an int32 scalar array); use jnp.int32(row)"
            )
        if isinstance(batch_idx, jax.core.Tracer):
            return batch_idx
        batch_idx = int(batch_idx)
    if isinstance(batch_idx, bool) or not isinstance(batch_idx, int | np.integer):
        raise TypeError(
            f"{op}: batch_idx={batch_idx!r} (expected a Python int or an int32 scalar array); "
            "the row is a buffer, so a traced jnp.int32 works too"
        )
    b = int(batch_idx)
    if not 0 <= b < batch:
        raise ValueError(
            f"{op}: batch_idx={b} (expected 0 <= batch_idx < {batch} = {name} batch); pass the "
            f"row of the cache to use"
        )
    return b


def _check_seq_len(op: str, seq_len: int, cap: int, name: str = "cache") -> None:
    if not 1 <= seq_len <= cap:
        raise ValueError(
            f"{op}: seq_len={seq_len} (expected 1 <= seq_len <= {cap} = {name} KVcap); a row "
            f"holds at most KVcap tokens"
        )


def _check_saved(op: str, name: str, saved: object, cache: jax.Array, cache_name: str) -> int:
    """Checks `saved` is `[Hkv, L, D]` matching the cache; returns L."""
    _, heads, cap, head_dim = cache.shape
    shape, dtype = getattr(saved, "shape", None), getattr(saved, "dtype", None)
    if shape is None or dtype is None:
        raise TypeError(f"{op}: {name} is {type(saved).__name__} (expected a jax.Array)")
    if len(shape) != 3 or shape[0] != heads or shape[2] != head_dim:
        raise ValueError(
            f"{op}: {name}.shape={tuple(shape)} (expected [{heads}, seq_len, {head_dim}] = "
            f"[Hkv, seq_len, D] of {cache_name}); pass what save_kv_cache_* returned for it"
        )
    if jnp.dtype(dtype) != jnp.dtype(cache.dtype):
        raise ValueError(
            f"{op}: {name}.dtype={jnp.dtype(dtype)} (expected {jnp.dtype(cache.dtype)} = "
            f"{cache_name}.dtype); cast it with .astype first"
        )
    _check_seq_len(op, int(shape[1]), cap, cache_name)
    return int(shape[1])


def _check_layers(op: str, layers: object, kernel: bool) -> list[jax.Array]:
    if not isinstance(layers, Sequence) or isinstance(layers, str) or len(layers) == 0:
        raise TypeError(
            f"{op}: layers={type(layers).__name__} (expected a non-empty list of "
            f"[B, Hkv, KVcap, D] arrays)"
        )
    if kernel and len(layers) > MAX_BATCHED_LAYERS:
        raise ValueError(
            f"{op}: len(layers)={len(layers)} (expected <= {MAX_BATCHED_LAYERS}, the kernel's "
            f"layer table); split the layers over several calls"
        )
    first = layers[0]
    _check_cache(op, "layers[0]", first)
    for i, x in enumerate(layers):
        shape = _check_cache(op, f"layers[{i}]", x)
        if shape[3] != first.shape[3] or jnp.dtype(x.dtype) != jnp.dtype(first.dtype):
            raise ValueError(
                f"{op}: layers[{i}] has D={shape[3]}, dtype={jnp.dtype(x.dtype)} (expected "
                f"D={first.shape[3]}, dtype={jnp.dtype(first.dtype)} as layers[0]); one launch "
                f"copies one head dim and dtype"
            )
    return list(layers)


def _check_save(op: str, layers: list[jax.Array], batch_idx: object, seq_len: object) -> tuple:
    length = _static_int(op, "seq_len", seq_len)
    for i, x in enumerate(layers):
        name = "cache" if len(layers) == 1 and op.endswith("_layer") else f"layers[{i}]"
        b = _check_batch_idx(op, batch_idx, x.shape[0], name)
        _check_seq_len(op, length, x.shape[2], name)
    return b, length


def _check_instantiate(
    op: str, layers: list[jax.Array], saved: object, batch_idx: object
) -> tuple[int, list[jax.Array]]:
    single = op.endswith("_layer")
    if single:
        saved_list = [saved]
    elif not isinstance(saved, Sequence) or len(saved) != len(layers):
        got = len(saved) if isinstance(saved, Sequence) else type(saved).__name__
        raise ValueError(
            f"{op}: len(saved)={got} (expected {len(layers)} = len(layers)); pass the list "
            f"save_kv_cache_batched returned for these layers"
        )
    else:
        saved_list = list(saved)
    lengths = set()
    for i, (x, s) in enumerate(zip(layers, saved_list, strict=True)):
        cache_name = "cache" if single else f"layers[{i}]"
        b = _check_batch_idx(op, batch_idx, x.shape[0], cache_name)
        lengths.add(_check_saved(op, "saved" if single else f"saved[{i}]", s, x, cache_name))
    if len(lengths) > 1:
        raise ValueError(
            f"{op}: saved seq_len values {sorted(lengths)} (expected one seq_len for all "
            f"layers); save all layers of a row with one save_kv_cache_batched call"
        )
    return b, saved_list


def _row(b: int | jax.Array) -> jax.Array:
    """The row as the int32 scalar operand every handler reads (a buffer, not an attribute)."""
    return jnp.asarray(b, jnp.int32)


def _saved_type(x: jax.Array, seq_len: int) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct((x.shape[1], seq_len, x.shape[3]), x.dtype)


def save_kv_cache_layer(cache_layer: jax.Array, batch_idx: int, seq_len: int) -> jax.Array:
    """Copies row `batch_idx`'s first `seq_len` positions out of one k or v array.

    Args:
      cache_layer: `[B, Hkv, KVcap, D]` k or v array of one layer.
      batch_idx: row, `0 <= batch_idx < B`: an int or an int32 scalar array (a buffer).
      seq_len: static number of positions, `1 <= seq_len <= KVcap`.

    Returns:
      `[Hkv, seq_len, D]`, equal to `cache_layer[batch_idx, :, :seq_len, :]`.

    Raises:
      TypeError, ValueError: on a non-int index or one out of range (before anything runs).
    """
    op = "save_kv_cache_layer"
    _check_cache(op, "cache_layer", cache_layer)
    b, length = _check_save(op, [cache_layer], batch_idx, seq_len)
    call = jax.ffi.ffi_call(
        "edgellm_save_kv_cache_layer",
        _saved_type(cache_layer, length),
        vmap_method="sequential",
    )
    return call(_row(b), cache_layer, seq_len=np.int32(length))


def save_kv_cache_layer_ref(cache_layer: jax.Array, batch_idx: int, seq_len: int) -> jax.Array:
    """Pure-JAX `save_kv_cache_layer` (same arguments, checks and result)."""
    op = "save_kv_cache_layer"
    _check_cache(op, "cache_layer", cache_layer)
    b, length = _check_save(op, [cache_layer], batch_idx, seq_len)
    return jax.lax.dynamic_index_in_dim(cache_layer, b, 0, keepdims=False)[:, :length, :]


def instantiate_kv_cache_layer(
    cache_layer: jax.Array, saved: jax.Array, batch_idx: int
) -> jax.Array:
    """Writes a saved row back into row `batch_idx` of one k or v array, in place.

    Args:
      cache_layer: `[B, Hkv, KVcap, D]`; aliased to the result (donate it to keep its buffer).
      saved: `[Hkv, L, D]` with `1 <= L <= KVcap`, same dtype.
      batch_idx: row, `0 <= batch_idx < B`: an int or an int32 scalar array (a buffer).

    Returns:
      `[B, Hkv, KVcap, D]`: `cache_layer` with `[batch_idx, :, :L, :]` replaced by `saved`.

    Raises:
      TypeError, ValueError: on mismatched shapes or dtypes, or an index out of range.
    """
    op = "instantiate_kv_cache_layer"
    _check_cache(op, "cache_layer", cache_layer)
    b, _ = _check_instantiate(op, [cache_layer], saved, batch_idx)
    call = jax.ffi.ffi_call(
        "edgellm_instantiate_kv_cache_layer",
        jax.ShapeDtypeStruct(cache_layer.shape, cache_layer.dtype),
        vmap_method="sequential",
        input_output_aliases={1: 0},
    )
    return call(_row(b), cache_layer, saved)


def instantiate_kv_cache_layer_ref(
    cache_layer: jax.Array, saved: jax.Array, batch_idx: int
) -> jax.Array:
    """Pure-JAX `instantiate_kv_cache_layer` (same arguments, checks and result)."""
    op = "instantiate_kv_cache_layer"
    _check_cache(op, "cache_layer", cache_layer)
    b, _ = _check_instantiate(op, [cache_layer], saved, batch_idx)
    return cache_layer.at[b, :, : saved.shape[1], :].set(saved, mode="drop")


def save_kv_cache_batched(
    layers: Sequence[jax.Array], batch_idx: int, seq_len: int
) -> list[jax.Array]:
    """`save_kv_cache_layer` over many arrays in one kernel launch.

    Args:
      layers: `n` arrays `[B_i, Hkv_i, KVcap_i, D]` (e.g. k and v of every layer), one D and
        dtype, `n <= MAX_BATCHED_LAYERS`.
      batch_idx: row valid in every array: an int or an int32 scalar array (a buffer).
      seq_len: static number of positions, `<= KVcap_i` for every array.

    Returns:
      `n` arrays `[Hkv_i, seq_len, D]`.

    Raises:
      TypeError, ValueError: as `save_kv_cache_layer`, naming the offending `layers[i]`.
    """
    op = "save_kv_cache_batched"
    layers = _check_layers(op, layers, kernel=True)
    b, length = _check_save(op, layers, batch_idx, seq_len)
    call = jax.ffi.ffi_call(
        "edgellm_save_kv_cache_batched",
        [_saved_type(x, length) for x in layers],
        vmap_method="sequential",
    )
    return list(call(_row(b), *layers, seq_len=np.int32(length)))


def save_kv_cache_batched_ref(
    layers: Sequence[jax.Array], batch_idx: int, seq_len: int
) -> list[jax.Array]:
    """Pure-JAX `save_kv_cache_batched` (same arguments, checks and result; no layer limit)."""
    op = "save_kv_cache_batched"
    layers = _check_layers(op, layers, kernel=False)
    b, length = _check_save(op, layers, batch_idx, seq_len)
    return [jax.lax.dynamic_index_in_dim(x, b, 0, keepdims=False)[:, :length, :] for x in layers]


def instantiate_kv_cache_batched(
    layers: Sequence[jax.Array], saved: Sequence[jax.Array], batch_idx: int
) -> list[jax.Array]:
    """`instantiate_kv_cache_layer` over many arrays in one kernel launch, in place.

    Args:
      layers: `n` arrays `[B_i, Hkv_i, KVcap_i, D]`; `layers[i]` is aliased to result `i`.
      saved: `n` arrays `[Hkv_i, L, D]` (one L), e.g. from `save_kv_cache_batched`.
      batch_idx: row valid in every array: an int or an int32 scalar array (a buffer).

    Returns:
      `n` arrays like `layers`, row `batch_idx`'s first L positions replaced.

    Raises:
      TypeError, ValueError: as `instantiate_kv_cache_layer`, naming the offending index.
    """
    op = "instantiate_kv_cache_batched"
    layers = _check_layers(op, layers, kernel=True)
    b, saved_list = _check_instantiate(op, layers, saved, batch_idx)
    n = len(layers)
    call = jax.ffi.ffi_call(
        "edgellm_instantiate_kv_cache_batched",
        [jax.ShapeDtypeStruct(x.shape, x.dtype) for x in layers],
        vmap_method="sequential",
        input_output_aliases={i + 1: i for i in range(n)},
    )
    return list(call(_row(b), *layers, *saved_list))


def instantiate_kv_cache_batched_ref(
    layers: Sequence[jax.Array], saved: Sequence[jax.Array], batch_idx: int
) -> list[jax.Array]:
    """Pure-JAX `instantiate_kv_cache_batched` (same arguments, checks and result)."""
    op = "instantiate_kv_cache_batched"
    layers = _check_layers(op, layers, kernel=False)
    b, saved_list = _check_instantiate(op, layers, saved, batch_idx)
    return [
        x.at[b, :, : s.shape[1], :].set(s, mode="drop")
        for x, s in zip(layers, saved_list, strict=True)
    ]


def _check_increment(lengths: object, inc: object) -> np.int32 | jax.Array:
    op = "increment_lengths"
    shape, dtype = getattr(lengths, "shape", None), getattr(lengths, "dtype", None)
    if shape is None or len(shape) != 1 or jnp.dtype(dtype) != _INT32:
        raise ValueError(
            f"{op}: lengths is {dtype}{list(shape) if shape is not None else ''} "
            f"(expected int32 [B]); keep lengths as an int32 vector"
        )
    if isinstance(inc, int | np.integer) and not isinstance(inc, bool):
        if not np.iinfo(np.int32).min <= int(inc) <= np.iinfo(np.int32).max:
            raise ValueError(f"{op}: inc={int(inc)} (expected an int32 value)")
        return np.int32(inc)
    inc_shape, inc_dtype = getattr(inc, "shape", None), getattr(inc, "dtype", None)
    if inc_shape is None or tuple(inc_shape) != tuple(shape) or jnp.dtype(inc_dtype) != _INT32:
        got = f"{inc_dtype}{list(inc_shape)}" if inc_shape is not None else repr(inc)
        raise ValueError(
            f"{op}: inc={got} (expected a Python int, or an int32 array of lengths' shape "
            f"{list(shape)}); use a Python int for a uniform step, an int32 [B] array per row"
        )
    return inc  # type: ignore[return-value]


def increment_lengths(lengths: jax.Array, inc: int | jax.Array) -> jax.Array:
    """Adds `inc` to every row's length, in place.

    Args:
      lengths: `[B]` int32; aliased to the result (donate it to keep its buffer).
      inc: a Python int (a static attribute: changing it recompiles), or an int32 `[B]` array
        (per-row, a buffer: varies freely per step).

    Returns:
      `[B]` int32 `lengths + inc` (wrapping on int32 overflow, like the kernel).

    Raises:
      ValueError: when lengths is not int32 `[B]` or inc is neither of the above.
    """
    checked = _check_increment(lengths, inc)
    out = jax.ShapeDtypeStruct(lengths.shape, lengths.dtype)
    if isinstance(checked, np.int32):
        call = jax.ffi.ffi_call(
            "edgellm_increment_lengths",
            out,
            vmap_method="broadcast_all",
            input_output_aliases={0: 0},
        )
        return call(lengths, inc=checked)
    call = jax.ffi.ffi_call(
        "edgellm_increment_lengths_by_tensor",
        out,
        vmap_method="broadcast_all",
        input_output_aliases={0: 0},
    )
    return call(lengths, checked)


def increment_lengths_ref(lengths: jax.Array, inc: int | jax.Array) -> jax.Array:
    """Pure-JAX `increment_lengths` (same arguments, checks and result)."""
    return lengths + _check_increment(lengths, inc)
