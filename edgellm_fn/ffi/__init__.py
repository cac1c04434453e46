"""XLA FFI custom calls of edgellm_fn: C++ CPU handlers, CUDA handlers when built with nvcc.

Importing this package registers every handler with `jax.ffi.register_ffi_target`; it prints
nothing and initialises no device (targets for a platform that is not loaded yet are kept by
XLA until it is).
"""

from __future__ import annotations

import types

import jax

try:
    from edgellm_fn.ffi import _decode_attention, _gemv, _kv_cache_utils, _kv_commit
except ImportError as e:  # pragma: no cover - only without a build
    raise ImportError(
        f"edgellm_fn.ffi: a compiled handler module is missing ({e}); build the handlers "
        "with `pip install -e .` (or `pip install .`) from the repository root"
    ) from e

from edgellm_fn.ffi.decode_attention import decode_attention as decode_attention
from edgellm_fn.ffi.decode_attention import decode_attention_ref as decode_attention_ref
from edgellm_fn.ffi.gemv import gemv as gemv
from edgellm_fn.ffi.gemv import gemv_ref as gemv_ref
from edgellm_fn.ffi.kv_cache_utils import (
    MAX_BATCHED_LAYERS as MAX_BATCHED_LAYERS,
)
from edgellm_fn.ffi.kv_cache_utils import (
    increment_lengths as increment_lengths,
)
from edgellm_fn.ffi.kv_cache_utils import (
    increment_lengths_ref as increment_lengths_ref,
)
from edgellm_fn.ffi.kv_cache_utils import (
    instantiate_kv_cache_batched as instantiate_kv_cache_batched,
)
from edgellm_fn.ffi.kv_cache_utils import (
    instantiate_kv_cache_batched_ref as instantiate_kv_cache_batched_ref,
)
from edgellm_fn.ffi.kv_cache_utils import (
    instantiate_kv_cache_layer as instantiate_kv_cache_layer,
)
from edgellm_fn.ffi.kv_cache_utils import (
    instantiate_kv_cache_layer_ref as instantiate_kv_cache_layer_ref,
)
from edgellm_fn.ffi.kv_cache_utils import (
    save_kv_cache_batched as save_kv_cache_batched,
)
from edgellm_fn.ffi.kv_cache_utils import (
    save_kv_cache_batched_ref as save_kv_cache_batched_ref,
)
from edgellm_fn.ffi.kv_cache_utils import (
    save_kv_cache_layer as save_kv_cache_layer,
)
from edgellm_fn.ffi.kv_cache_utils import (
    save_kv_cache_layer_ref as save_kv_cache_layer_ref,
)
from edgellm_fn.ffi.kv_commit import commit_kv as commit_kv
from edgellm_fn.ffi.kv_commit import commit_kv_ref as commit_kv_ref

__all__ = [
    "MAX_BATCHED_LAYERS",
    "commit_kv",
    "commit_kv_ref",
    "cuda_available",
    "decode_attention",
    "decode_attention_ref",
    "gemv",
    "gemv_ref",
    "increment_lengths",
    "increment_lengths_ref",
    "instantiate_kv_cache_batched",
    "instantiate_kv_cache_batched_ref",
    "instantiate_kv_cache_layer",
    "instantiate_kv_cache_layer_ref",
    "registered_targets",
    "save_kv_cache_batched",
    "save_kv_cache_batched_ref",
    "save_kv_cache_layer",
    "save_kv_cache_layer_ref",
]

_COMPILED_MODULES: tuple[types.ModuleType, ...] = (
    _kv_cache_utils,
    _gemv,
    _decode_attention,
    _kv_commit,
)


def _register_all() -> dict[str, tuple[str, ...]]:
    registered: dict[str, tuple[str, ...]] = {}
    for module in _COMPILED_MODULES:
        for platform, targets in module.registrations().items():
            for name, capsule in targets.items():
                jax.ffi.register_ffi_target(name, capsule, platform=platform)
            registered[platform] = registered.get(platform, ()) + tuple(sorted(targets))
    return registered


_REGISTERED = _register_all()


def registered_targets() -> dict[str, tuple[str, ...]]:
    """Target names registered at import, by platform (`"cpu"`, and `"CUDA"` if built)."""
    return dict(_REGISTERED)


def cuda_available() -> bool:
    """Whether this build contains the CUDA handlers (it says nothing about a GPU being present)."""
    return "CUDA" in _REGISTERED
