"""Host-side mirror of ``kv.lengths`` (host bookkeeping, kept apart from device state).

``decode`` checks capacity on the host without reading the device: each step records the new
lengths it knows (prefill's ``context_lengths``, then ``+ 1`` per decode step) against the exact
``jax.Array`` object it returned. A state whose lengths the host does not know (for instance after
``decode_while``, where EOS decides) costs one device read, then the mirror is known again.
"""

from __future__ import annotations

import weakref

import jax
import numpy as np

_MIRROR: dict[int, np.ndarray] = {}


def remember(lengths: jax.Array, values: np.ndarray | None) -> None:
    """Records ``values`` ``[B]`` as the host copy of ``lengths`` (None forgets it)."""
    key = id(lengths)
    if values is None:
        _MIRROR.pop(key, None)
        return
    if key not in _MIRROR:  # the entry dies with the array, so a reused id is never stale
        weakref.finalize(lengths, _MIRROR.pop, key, None)
    _MIRROR[key] = np.array(values, np.int64)


def recall(lengths: jax.Array) -> np.ndarray:
    """The host copy of ``lengths``; reads the device once when the host does not know it."""
    values = _MIRROR.get(id(lengths))
    if values is None:
        values = np.asarray(jax.device_get(lengths), np.int64)
        remember(lengths, values)
    return values.copy()
