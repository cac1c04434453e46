"""One thin adapter over NVIDIA TensorRT (``tensorrt``) and TensorRT-RTX (``tensorrt_rtx`` or the
wheel module ``tensorrt_rtx_bindings``): build with the contract's two optimization profiles, and
introspect a network or an engine into one ``Introspection`` checked against the ``EngineSpec``.

Profiles (from ``EngineSpec.profiles``): 0 = prefill (``S`` 1..max_input_len, start index 0..B),
1 = decode (``S`` 1..max_decode_len, start index B). ``present_*`` must alias ``past_*``: in the
network each is the output of a ``KV_CACHE_UPDATE`` layer on the ``past_*`` input; in an engine,
``get_aliased_input_tensor`` says so.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from ...config import EngineConfig
from ...dtypes import from_tensorrt
from ...errors import EngineError
from ..spec import EngineSpec, Profile
from .engine_dir import FoundBinding, check_io

_MODULES = {"tensorrt": ("tensorrt",), "tensorrt-rtx": ("tensorrt_rtx", "tensorrt_rtx_bindings")}
_PIP = {"tensorrt": "tensorrt", "tensorrt-rtx": "tensorrt-rtx-cu13-libs tensorrt-rtx-cu13-bindings"}
#: TensorRT-RTX targets for a build on a machine without a GPU (Turing lacks FP32 GEMM).
RTX_DEFAULT_TARGETS = ("SM80", "SM86", "SM89", "SM120", "SM121")


def load_module(flavour: str) -> ModuleType:
    """Imports TensorRT (``"tensorrt"``) or TensorRT-RTX (``"tensorrt-rtx"``).

    Raises:
      EngineError: the package is not installed (with the pip command).
    """
    if flavour not in _MODULES:
        raise EngineError(f"trt_adapter: flavour={flavour!r} (expected one of {sorted(_MODULES)})")
    for name in _MODULES[flavour]:
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    raise EngineError(
        f"trt_adapter: {flavour} is not installed (tried modules {_MODULES[flavour]}); "
        f"pip install {_PIP[flavour]}"
    )


def is_rtx(trt: ModuleType) -> bool:
    return trt.__name__.startswith("tensorrt_rtx")


@dataclasses.dataclass(frozen=True)
class Introspection:
    """What a network (as parsed, with the builder's profiles) or an engine declares.

    Attributes:
      bindings: name → (io, dtype, shape with -1 for dynamic dims).
      ranges: input name → per profile ``(min shape, max shape)``.
      aliases: output name → the input it aliases (in place).
    """

    bindings: dict[str, FoundBinding]
    ranges: dict[str, tuple[tuple[tuple[int, ...], tuple[int, ...]], ...]]
    aliases: dict[str, str]

    def profiles(self) -> tuple[Profile, ...]:
        """Batch and sequence ranges per profile, read from ``inputs_embeds``."""
        return tuple(
            Profile(batch=(lo[0], hi[0]), seq_len=(lo[1], hi[1]))
            for lo, hi in self.ranges.get("inputs_embeds", ())
        )


def check_introspection(
    found: Introspection, spec: EngineSpec, cfg: EngineConfig, where: str
) -> None:
    """Checks bindings, both profiles' shape ranges and the KV aliasing against ``spec``.

    Raises:
      EngineError: naming the first mismatch (an engine built for other limits included).
    """
    check_io(found.bindings, spec, where)
    for b in spec.inputs():
        want = spec.profile_ranges(b)
        got = found.ranges.get(b.name)
        if got is not None and tuple(got) != want:
            raise EngineError(
                f"{where}: binding {b.name!r} profile ranges={list(got)} (expected {list(want)} "
                f"from config.json: max_batch_size={cfg.max_batch_size}, max_input_len="
                f"{cfg.max_input_len}); the engine was built for other limits, rebuild it"
            )
    for out, inp in spec.aliases:
        if found.aliases.get(out) != inp:
            raise EngineError(
                f"{where}: output {out!r} aliases {found.aliases.get(out)!r} (expected {inp!r}); "
                "the KV cache would not be updated in place"
            )


def introspect_network(trt: ModuleType, network: Any, profiles: Sequence[Any]) -> Introspection:
    """Bindings of a parsed network, the ranges set in ``profiles`` and its KV-update aliases."""
    bindings: dict[str, FoundBinding] = {}
    ranges = {}
    for io, count, get in (
        ("in", network.num_inputs, network.get_input),
        ("out", network.num_outputs, network.get_output),
    ):
        for i in range(count):
            t = get(i)
            bindings[t.name] = (io, from_tensorrt(t.dtype), tuple(t.shape))
            if io == "in" and -1 in tuple(t.shape):
                ranges[t.name] = tuple(
                    (tuple(p.get_shape(t.name)[0]), tuple(p.get_shape(t.name)[2])) for p in profiles
                )
    aliases = {}
    inputs = {n for n, (io, _, _) in bindings.items() if io == "in"}
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if layer.type == trt.LayerType.KV_CACHE_UPDATE:
            cache, out = layer.get_input(0).name, layer.get_output(0).name
            if cache in inputs and out in bindings:
                aliases[out] = cache
    return Introspection(bindings, ranges, aliases)


def introspect_engine(trt: ModuleType, engine: Any) -> Introspection:
    """Bindings, profile ranges and aliases of a deserialized engine (needs a GPU)."""
    bindings: dict[str, FoundBinding] = {}
    ranges, aliases = {}, {}
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        io = "in" if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT else "out"
        shape = tuple(engine.get_tensor_shape(name))
        bindings[name] = (io, from_tensorrt(engine.get_tensor_dtype(name)), shape)
        if io == "in" and -1 in shape:
            ranges[name] = tuple(
                (tuple(s[0]), tuple(s[2]))
                for s in (
                    engine.get_tensor_profile_shape(name, p)
                    for p in range(engine.num_optimization_profiles)
                )
            )
        elif io == "out" and engine.get_aliased_input_tensor(name):
            aliases[name] = engine.get_aliased_input_tensor(name)
    return Introspection(bindings, ranges, aliases)


@dataclasses.dataclass(frozen=True)
class BuildResult:
    """A serialized engine and what the builder was given (checked against the spec)."""

    blob: bytes
    network: Introspection
    targets: tuple[str, ...]
    decomposable_attention: int  # attention layers TensorRT may decompose without a fused kernel


def build_serialized(
    trt: ModuleType,
    onnx_path: str | Path,
    spec: EngineSpec,
    cfg: EngineConfig,
    *,
    targets: Sequence[str] | None = None,
    progress: Callable[[float], None] | None = None,
) -> BuildResult:
    """Parses the exported ONNX, adds the two profiles, checks the network and builds.

    Args:
      trt: the module from ``load_module``.
      onnx_path: ``model.onnx`` from ``export_onnx``.
      spec, cfg: the contract and limits (profiles come from ``spec.profiles``).
      targets: TensorRT-RTX compute capabilities (default ``RTX_DEFAULT_TARGETS``, which lets
        a machine without a GPU build); ignored by TensorRT, which builds for the current GPU.
      progress: called with a fraction in ``[0, 1]``.

    Raises:
      EngineError: the parser rejects a node, the network contradicts the spec, or the build fails.
    """
    report = progress or (lambda f: None)
    logger = _Logger(trt)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineError(f"{onnx_path}: {trt.__name__} cannot parse the ONNX: {errors}")
    report(0.2)
    decomposable = 0
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if layer.type == trt.LayerType.ATTENTION_INPUT:
            layer.__class__ = trt.IAttentionInputLayer
            # Fused kernels exist for fp16/bf16; float32 attention must be decomposed.
            layer.attention.decomposable = True
            decomposable += 1
    config = builder.create_builder_config()
    chosen: tuple[str, ...] = ()
    if is_rtx(trt):
        chosen = tuple(targets or RTX_DEFAULT_TARGETS)
        config.num_compute_capabilities = len(chosen)
        for i, name in enumerate(chosen):
            if name not in trt.ComputeCapability.__members__:
                raise EngineError(
                    f"build: target={name!r} (expected one of "
                    f"{list(trt.ComputeCapability.__members__)})"
                )
            config.set_compute_capability(trt.ComputeCapability.__members__[name], i)
    profiles = []
    for index in range(len(spec.profiles)):
        profile = builder.create_optimization_profile()
        for b in spec.inputs():
            if spec.is_dynamic(b):
                lo, hi = spec.profile_ranges(b)[index]
                profile.set_shape(b.name, lo, hi, hi)
        config.add_optimization_profile(profile)
        profiles.append(profile)
    found = introspect_network(trt, network, profiles)
    check_introspection(found, spec, cfg, f"{onnx_path} (as parsed by {trt.__name__})")
    report(0.3)
    blob = builder.build_serialized_network(network, config)
    if blob is None:
        raise EngineError(f"{onnx_path}: {trt.__name__} build failed: {logger.last_error}")
    report(1.0)
    return BuildResult(bytes(blob), found, chosen, decomposable)


def _Logger(trt: ModuleType):
    """A TensorRT logger that keeps the last error (for messages) and prints nothing else."""

    class Logger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)
            self.last_error = "(no error message)"

        def log(self, severity, msg):
            if severity in (trt.ILogger.Severity.ERROR, trt.ILogger.Severity.INTERNAL_ERROR):
                self.last_error = msg

    return Logger()
