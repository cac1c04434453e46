"""TensorRT-RTX: engines built on the CPU and checked against the EngineSpec; runtime on a GPU.

What a CPU can check: the network TensorRT-RTX parsed from our ONNX (names, dtypes, shapes), the
two optimization profiles it was built with, that every ``present_*`` comes from a native
KV-cache-update layer on its ``past_*`` input (TensorRT aliases them), and that the build
succeeds. Deserializing needs a CUDA driver, so engine introspection and execution are GPU tests.
"""

from __future__ import annotations

import json

import jax
import pytest

from edgellm_fn import EngineConfig, build_llm_spec, load_checkpoint
from edgellm_fn.engine.callback.build import build_engine
from edgellm_fn.engine.callback.trt_adapter import (
    build_serialized,
    check_introspection,
    load_module,
)
from edgellm_fn.errors import EngineError
from edgellm_fn.models.onnx.export import export_onnx

from .helpers import LIMITS


def _rtx():
    try:
        return load_module("tensorrt-rtx")
    except EngineError as e:
        print(f"SKIP reason: {e}")
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def built(checkpoints, tmp_path_factory):
    """A float16 Qwen3 engine (fused attention) built for the CPU-visible targets."""
    trt = _rtx()
    model, params = load_checkpoint(checkpoints["qwen3"], dtype="float16")
    cfg = EngineConfig.create(
        model, max_batch_size=2, max_input_len=16, kv_capacity=32, dtype="float16"
    )
    onnx_path = export_onnx(cfg, params, tmp_path_factory.mktemp("onnx16"))
    return trt, cfg, build_serialized(trt, onnx_path, build_llm_spec(cfg), cfg)


def test_engine_builds_on_cpu_with_the_contract_io(built):
    trt, cfg, result = built
    spec = build_llm_spec(cfg)
    assert len(result.blob) > 100_000
    found = result.network
    assert set(found.bindings) == {b.name for b in spec.bindings}
    for b in spec.bindings:
        io, dtype, _ = found.bindings[b.name]
        assert (io, dtype) == (b.io, b.dtype), b.name
    assert found.bindings["past_key_0"][2] == (-1, 1, 32, 24)
    assert found.bindings["inputs_embeds"][1] == "float16"
    assert found.bindings["logits"][1] == "float32"
    check_introspection(found, spec, cfg, "network")


def test_two_profiles_prefill_and_decode(built):
    _, cfg, result = built
    ranges = result.network.ranges
    assert ranges["inputs_embeds"] == (((1, 1, 64), (2, 16, 64)), ((1, 1, 64), (2, 1, 64)))
    assert ranges["kvcache_start_index"] == (((0,), (2,)), ((1,), (2,)))
    assert ranges["past_value_1"] == (((1, 1, 32, 24), (2, 1, 32, 24)),) * 2
    assert [(p.batch, p.seq_len) for p in result.network.profiles()] == [
        ((1, 2), (1, 16)),
        ((1, 2), (1, 1)),
    ]


def test_present_aliases_past_through_native_kv_cache_update(built):
    _, cfg, result = built
    assert result.network.aliases == {
        f"present_{k}_{i}": f"past_{k}_{i}" for i in range(2) for k in ("key", "value")
    }


def test_engine_built_for_other_limits_is_refused(built):
    _, cfg, result = built
    other = EngineConfig.create(
        cfg.model, max_batch_size=4, max_input_len=16, kv_capacity=32, dtype="float16"
    )
    with pytest.raises(
        EngineError,
        match=r"'inputs_embeds' profile ranges=.*max_batch_size=4.*"
        r"built for other limits, rebuild it",
    ):
        check_introspection(result.network, build_llm_spec(other), other, "engine")


def test_profile_ranges_follow_the_spec(built):
    _, cfg, _ = built
    spec = build_llm_spec(cfg)
    assert spec.profile_ranges(spec["last_token_ids"]) == (((1, 1), (2, 1)),) * 2


def test_build_engine_float32_writes_an_engine_dir(checkpoints, tmp_path):
    _rtx()
    stages = []
    build_engine(
        checkpoints["llama"],
        tmp_path,
        "tensorrt-rtx",
        **LIMITS,
        progress=lambda s, f: stages.append(s),
    )
    raw = json.loads((tmp_path / "config.json").read_text())
    assert raw["engine"]["provider"] == "tensorrt"
    assert raw["engine"]["builder"].startswith("tensorrt_rtx")
    assert (tmp_path / "model.engine").stat().st_size > 100_000
    assert any("tensorrt_rtx" in s for s in stages)


def _supported_gpu() -> str | None:
    """None when a TensorRT GPU test can run here, else why not."""
    from edgellm_fn.engine.callback.tensorrt import check_device

    try:
        check_device(_rtx())
    except EngineError as e:
        return str(e)
    return None


def test_loading_without_a_supported_gpu_fails_at_load_with_the_reason(checkpoints, tmp_path):
    reason = _supported_gpu()
    if reason is None:
        pytest.skip("a supported GPU is present; covered by the gpu test")
    from edgellm_fn.engine.callback.tensorrt import load_tensorrt_engine

    build_engine(checkpoints["qwen3"], tmp_path, "tensorrt-rtx", **LIMITS, dtype="float16")
    pattern = r"no CUDA GPU visible to JAX" if jax.default_backend() != "gpu" else r"does not run"
    with pytest.raises(EngineError, match=pattern):
        load_tensorrt_engine(tmp_path)


@pytest.mark.gpu
def test_tensorrt_runtime_matches_xla(checkpoints, tmp_path):
    reason = _supported_gpu()
    if reason is not None:
        print(f"SKIP reason: {reason}")
        pytest.skip(reason)
    from edgellm_fn import XlaEngine
    from edgellm_fn.engine.callback.tensorrt import load_tensorrt_engine

    from ...helpers import greedy
    from .helpers import DECODE_STEPS, PROMPTS

    build_engine(checkpoints["qwen3"], tmp_path, "tensorrt-rtx", **LIMITS, dtype="float16")
    engine = load_tensorrt_engine(tmp_path)
    _, params = load_checkpoint(checkpoints["qwen3"], dtype="float16")
    got = greedy(engine, PROMPTS, DECODE_STEPS)
    want = greedy(XlaEngine(engine.config, params), PROMPTS, DECODE_STEPS)
    assert got["addresses_kept"]
    assert abs(got["logits"] - want["logits"]).max() < 5e-2
    assert engine.executor.graphs.stats.hits > 0
