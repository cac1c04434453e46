"""``build_engine``: checkpoint directory → engine directory (what ``edgellm-fn build`` calls).

Providers (``engine/providers.py``): ``onnxruntime`` (``model.onnx`` [+ ``model.onnx.data``])
and ``tensorrt`` (``model.engine`` built from the same ONNX by NVIDIA TensorRT, or by TensorRT-RTX
with ``builder="tensorrt-rtx"`` or the alias provider ``tensorrt-rtx``). ``xla`` needs no build.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ...config import EngineConfig
from ...config.defaults import DEFAULTS
from ...errors import ConfigError
from ...models.loader import load_checkpoint
from ...models.onnx.export import export_onnx
from ...models.vocab import load_vocab_map, reduce_params
from ..providers import PROVIDERS, TENSORRT_BUILDERS, resolve_provider
from ..spec import build_llm_spec
from .engine_dir import ENGINE_FILES, write_engine_dir

#: ``progress(stage, fraction)``: stage is a short text, fraction in ``[0, 1]``.
Progress = Callable[[str, float], None]


def build_engine(
    ckpt_dir: str | Path,
    out_dir: str | Path,
    provider: str,
    max_batch: int = DEFAULTS["max_batch_size"],
    max_input_len: int = DEFAULTS["max_input_len"],
    kv_capacity: int = DEFAULTS["kv_capacity"],
    *,
    dtype: str | None = None,
    builder: str | None = None,
    progress: Progress | None = None,
    max_lora_rank: int = 0,
    max_loras: int = 0,
    vocab_map: str | Path | None = None,
    external_weights: bool = False,
    extra_inputs: tuple[str, ...] = (),
) -> Path:
    """Builds an engine directory from a Hugging Face checkpoint directory.

    Args:
      ckpt_dir: checkpoint (``config.json``, ``*.safetensors``, tokenizer files).
      out_dir: engine directory to write: new or empty, outside the checkpoint (never
        overwrites a file; see ``check_out_dir``).
      provider: ``"onnxruntime"`` or ``"tensorrt"`` (or an alias: ``"onnx"``,
        ``"tensorrt-rtx"``; see ``providers.ALIASES``).
      max_batch, max_input_len, kv_capacity: built limits (``builder_config``).
      dtype: activation/weight dtype; defaults to the checkpoint's.
      builder: for ``tensorrt``, which library builds the engine (``TENSORRT_BUILDERS``);
        default NVIDIA TensorRT, or TensorRT-RTX for the ``tensorrt-rtx`` alias.
      progress: called with ``(stage, fraction)`` as the build advances.
      max_lora_rank, max_loras: the LoRA adapter bank the engine takes as inputs (0: none).
      vocab_map: a reduced vocabulary (``models/vocab.py``): the lm_head is sliced to its rows,
        ``logits`` are ``[rows, len(vocab_map)]``, and the map is saved in the engine directory.
      external_weights: the engine takes its weights as inputs (``models/external.py``): one
        build serves every weight set of this shape (``engine.inputs.load_external_weights``).
      extra_inputs: declared extra inputs (``models/external.EXTRA_INPUTS``), e.g.
        ``("lm_head_weight",)``.

    Returns:
      ``out_dir``.

    Raises:
      ConfigError: unknown provider or builder, an ``out_dir`` that ``check_out_dir`` refuses,
        invalid limits, or a model the export cannot express.
      EngineError: the TensorRT package is missing or refuses to build.
    """
    provider, alias_builder = resolve_provider(provider, "build")
    if provider == "xla":
        built = [p for p in PROVIDERS if p != "xla"]
        raise ConfigError(
            f"build: provider='xla' (expected one of {built}); the xla provider runs the "
            "checkpoint directory itself, nothing to build"
        )
    if provider == "tensorrt":
        builder = builder or alias_builder
        if builder not in TENSORRT_BUILDERS:
            raise ConfigError(
                f"build: builder={builder!r} (expected one of {TENSORRT_BUILDERS} for provider "
                "'tensorrt')"
            )
    elif builder is not None:
        raise ConfigError(f"build: builder={builder!r} (expected None for provider {provider!r})")
    report = progress or (lambda stage, fraction: None)
    ckpt_dir, out_dir = Path(ckpt_dir), Path(out_dir)
    check_out_dir(ckpt_dir, out_dir)
    report("loading checkpoint", 0.0)
    model, params = load_checkpoint(ckpt_dir, dtype)
    ids = None if vocab_map is None else load_vocab_map(vocab_map, model)
    if ids is not None:
        params = reduce_params(params, ids)
    cfg = EngineConfig.create(
        model,
        max_batch_size=max_batch,
        max_input_len=max_input_len,
        kv_capacity=kv_capacity,
        dtype=dtype,
        max_lora_rank=max_lora_rank,
        max_loras=max_loras,
        reduced_vocab_size=0 if ids is None else int(ids.size),
        external_weights=external_weights,
        extra_inputs=tuple(extra_inputs),
    )
    if provider == "onnxruntime" and cfg.dtype == "bfloat16":
        raise ConfigError(
            "build: dtype='bfloat16' for provider 'onnxruntime' (expected float32 or float16); "
            "onnxruntime's CPU kernels have no bfloat16 MatMul, pass --dtype float32"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    if provider == "onnxruntime":
        import onnx

        report("exporting ONNX", 0.2)
        export_onnx(cfg, params, out_dir)
        made_by = f"onnx {onnx.__version__}"
    else:
        from .trt_adapter import build_serialized, load_module

        module = load_module(builder)
        with tempfile.TemporaryDirectory(prefix="edgellm_onnx_") as tmp:
            report("exporting ONNX", 0.2)
            onnx_path = export_onnx(cfg, params, tmp)
            report(f"building {module.__name__} engine", 0.4)
            built = build_serialized(
                module,
                onnx_path,
                build_llm_spec(cfg),
                cfg,
                progress=lambda f: report(f"building {module.__name__} engine", 0.4 + 0.5 * f),
            )
        (out_dir / ENGINE_FILES[provider]).write_bytes(built.blob)
        made_by = f"{module.__name__} {module.__version__}"
    report("writing engine directory", 0.9)
    write_engine_dir(
        out_dir, ckpt_dir, cfg, provider, np.asarray(params["embed"]), made_by, vocab_map=ids
    )
    report("done", 1.0)
    return out_dir


def check_out_dir(ckpt_dir: Path, out_dir: Path) -> None:
    """Refuses an engine directory that would overwrite a file the user has (checked first).

    Raises:
      ConfigError: ``out_dir`` is the checkpoint directory or inside it, exists and is not an
        empty directory, or cannot be created (its nearest existing parent is not a writable
        directory).
    """
    ckpt, out = ckpt_dir.resolve(), out_dir.resolve()
    if out == ckpt or ckpt in out.parents:
        raise ConfigError(
            f"build: out={str(out_dir)!r} is inside the checkpoint directory {str(ckpt_dir)!r} "
            "(expected a directory outside it); the engine's config.json and tokenizer files "
            "would overwrite the checkpoint's"
        )
    if out.exists():
        if not out.is_dir() or any(out.iterdir()):
            raise ConfigError(
                f"build: out={str(out_dir)!r} exists and is not an empty directory (expected a "
                "new or empty directory; nothing is ever overwritten); remove it or pick another"
            )
        parent = out
    else:
        parent = next(p for p in out.parents if p.exists())
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(
            f"build: out={str(out_dir)!r} cannot be written ({str(parent)!r} is not a writable "
            "directory); pick a directory you can write"
        )
