"""Publishing external weights and extra inputs (upstream's ``externalWeightManager``: "the
runtime is responsible for loading files, validating against the base engine, and publishing it
to a TensorMap").

``check_inputs`` validates a set against the engine spec's bindings of one kind (every name,
shape and dtype, finiteness) on the host, before anything reaches a device or a state;
``create_state(..., weights=, extra=)`` then holds the arrays in ``SharedResources`` and
``build_tensor_map`` publishes them under their binding names.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ..config import EngineConfig
from ..dtypes import dtype as lookup_dtype
from ..errors import EngineError
from ..models.external import engine_weights
from ..models.safetensors_io import load_file
from .spec import EngineSpec, build_llm_spec

#: Where each kind is published from, for messages.
_SLOT = {"weight": "SharedResources.weights", "extra": "SharedResources.extra"}


def check_inputs(
    spec: EngineSpec,
    kind: str,
    arrays: Mapping[str, object] | None,
    where: str,
    *,
    allow_non_finite: bool = False,
) -> dict[str, np.ndarray | object]:
    """Validates ``arrays`` against the spec's inputs of ``kind`` (``"weight"`` or ``"extra"``).

    Args:
      spec: the engine's spec.
      kind: the ``TensorSpec.kind`` checked.
      arrays: name -> array (numpy or jax); None stands for none.
      where: the caller, for messages.
      allow_non_finite: accept NaN/inf values (checked on the host otherwise).

    Returns:
      ``arrays`` as a dict in spec order.

    Raises:
      EngineError: a missing or extra name, a wrong shape or dtype, or a non-finite value.
    """
    want = {b.name: b for b in spec.of_kind(kind)}
    arrays = dict(arrays or {})
    for name in arrays:
        if name not in want:
            raise EngineError(
                f"{where}: {kind} input {name!r} is not in the engine spec (expected one of "
                f"{sorted(want)[:6]}{'...' if len(want) > 6 else ''}); the set was made for "
                "another model or build"
            )
    for name, b in want.items():
        if name not in arrays:
            raise EngineError(
                f"{where}: missing {kind} input {name!r} (expected {b.dtype} {list(b.shape)}); "
                f"pass every one to create_state ({_SLOT[kind]})"
            )
        a = arrays[name]
        shape, dt = tuple(np.shape(a)), np.dtype(getattr(a, "dtype", None) or np.float64)
        if shape != tuple(b.shape):
            raise EngineError(
                f"{where}: {kind} input {name!r} shape={list(shape)} (expected {list(b.shape)}); "
                "the set was made for a model of another shape"
            )
        if dt != np.dtype(lookup_dtype(b.dtype).jnp):
            raise EngineError(
                f"{where}: {kind} input {name!r} dtype={dt.name} (expected {b.dtype}); cast it "
                "to the engine's dtype"
            )
        if not allow_non_finite and not np.isfinite(np.asarray(a, np.float32)).all():
            raise EngineError(
                f"{where}: {kind} input {name!r} holds NaN or inf (expected finite values); pass "
                "allow_non_finite=True to load it anyway"
            )
    return {name: arrays[name] for name in want}


def load_external_weights(
    cfg: EngineConfig, source: str | Path, *, allow_non_finite: bool = False
) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """Loads a weight set for an engine built with ``external_weights`` and validates it.

    Args:
      cfg: the engine's config (``engine.config``).
      source: a Hugging Face checkpoint directory of the same shape (converted to the engine
        layout, reduced to the engine's vocab map when it has one), or a safetensors file in the
        engine layout (``models/external.py``).
      allow_non_finite: accept NaN/inf weights.

    Returns:
      ``(weights, embedding)``: name -> host array, ready for ``create_state(..., weights=)``,
      and the checkpoint's ``[V, H]`` embedding (the lookup runs outside the engine: pass it
      to ``engine.with_embedding``), None for a safetensors file.

    Raises:
      EngineError: the engine takes no external weights, or the set does not fit its spec.
      CheckpointError, ConfigError: the source cannot be read.
    """
    spec = build_llm_spec(cfg)
    where = f"load_external_weights({source})"
    if not spec.of_kind("weight"):
        raise EngineError(
            f"{where}: builder_config.external_weights={cfg.deployment.external_weights} "
            "(expected True); the engine holds its own weights, rebuild it with "
            "external_weights=True"
        )
    source = Path(source)
    if source.is_dir():
        from ..models.loader import load_checkpoint

        model, params = load_checkpoint(source, cfg.dtype, allow_non_finite=allow_non_finite)
        if model.vocab_size != cfg.model.vocab_size or model.hidden_size != cfg.model.hidden_size:
            raise EngineError(
                f"{where}: vocab_size={model.vocab_size} hidden_size={model.hidden_size} "
                f"(expected {cfg.model.vocab_size}, {cfg.model.hidden_size}: the engine's model)"
            )
        if cfg.deployment.reduced_vocab_size:
            raise EngineError(
                f"{where}: a checkpoint for an engine with reduced_vocab_size="
                f"{cfg.deployment.reduced_vocab_size} (expected a safetensors file in the engine "
                "layout, lm_head already reduced)"
            )
        # The checkpoint's own names and shapes, so check_inputs names any difference.
        arrays = engine_weights(dataclasses.replace(cfg, model=model), params)
        embedding = np.asarray(params["embed"])
    else:
        arrays, embedding = load_file(source), None
    weights = check_inputs(spec, "weight", arrays, where, allow_non_finite=allow_non_finite)
    return weights, embedding
