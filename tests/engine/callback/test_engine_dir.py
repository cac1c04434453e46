"""Engine directories: layout, and clear errors for bad ones."""

from __future__ import annotations

import json
import shutil

import pytest

from edgellm_fn.engine.callback.build import build_engine
from edgellm_fn.engine.callback.onnxruntime import load_onnxruntime_engine
from edgellm_fn.errors import ConfigError, EngineError

from .helpers import LIMITS


@pytest.fixture(scope="module")
def built(checkpoints, tmp_path_factory):
    out = tmp_path_factory.mktemp("engine_qwen3")
    stages = []
    build_engine(
        checkpoints["qwen3"], out, "onnxruntime", **LIMITS, progress=lambda s, f: stages.append(f)
    )
    assert stages[0] == 0.0 and stages[-1] == 1.0
    return out


@pytest.fixture
def copy(built, tmp_path):
    dst = tmp_path / "engine"
    shutil.copytree(built, dst)
    return dst


def _edit_config(path, **changes):
    raw = json.loads((path / "config.json").read_text())
    for key, value in changes.items():
        if key in raw.get("builder_config", {}):
            raw["builder_config"][key] = value
        else:
            raw[key] = value
    (path / "config.json").write_text(json.dumps(raw))


def test_layout_and_config(built):
    names = {p.name for p in built.iterdir()}
    assert {"model.onnx", "model.onnx.data", "config.json", "embedding.safetensors"} <= names
    assert "tokenizer.json" in names  # copied from the checkpoint
    raw = json.loads((built / "config.json").read_text())
    assert raw["builder_config"] == {
        "max_batch_size": 2,
        "max_input_len": 16,
        "max_kv_cache_capacity": 32,
    }
    assert raw["engine"]["provider"] == "onnxruntime" and raw["kv_cache_dtype"] == "float32"
    assert load_onnxruntime_engine(built).embedding.shape == (128, 64)


def test_missing_engine_file(copy):
    (copy / "model.onnx").unlink()
    with pytest.raises(EngineError, match=r"model.onnx: engine file not found .*rebuild"):
        load_onnxruntime_engine(copy)


def test_missing_embedding(copy):
    (copy / "embedding.safetensors").unlink()
    with pytest.raises(EngineError, match=r"embedding.safetensors: file not found .*rebuild"):
        load_onnxruntime_engine(copy)


def test_missing_config(copy):
    (copy / "config.json").unlink()
    with pytest.raises(ConfigError, match=r"config.json: file not found"):
        load_onnxruntime_engine(copy)


def test_checkpoint_is_not_an_engine_dir(checkpoints):
    with pytest.raises(ConfigError, match=r"missing required field 'builder_config'.*checkpoint"):
        load_onnxruntime_engine(checkpoints["qwen3"])


def test_engine_built_for_another_provider(copy):
    _edit_config(copy, engine={"provider": "tensorrt", "file": "model.engine"})
    with pytest.raises(EngineError, match=r"engine.provider='tensorrt' \(expected 'onnxruntime'\)"):
        load_onnxruntime_engine(copy)


def test_config_with_more_layers_than_the_engine(copy):
    _edit_config(copy, num_hidden_layers=3)
    with pytest.raises(EngineError, match=r"missing binding 'past_key_2' .*rebuild"):
        load_onnxruntime_engine(copy)


def test_config_with_other_kv_capacity_than_the_engine(copy):
    _edit_config(copy, max_kv_cache_capacity=64)
    with pytest.raises(
        EngineError,
        match=r"'rope_rotary_cos_sin' shape=\[1, 32, 24\] "
        r"\(expected \[1, 64, 24\].*contradicts the engine",
    ):
        load_onnxruntime_engine(copy)


def test_config_with_other_dtype_than_the_engine(copy):
    _edit_config(copy, dtype="float16", kv_cache_dtype="float16")
    with pytest.raises(EngineError, match=r"'inputs_embeds' is in float32 \(expected in float16\)"):
        load_onnxruntime_engine(copy)


def test_directory_written_with_the_old_provider_name_still_loads(copy):
    _edit_config(copy, engine={"provider": "onnx", "file": "model.onnx", "builder": "onnx"})
    assert load_onnxruntime_engine(copy).provider == "onnxruntime"


def test_unknown_build_provider(checkpoints, tmp_path):
    with pytest.raises(ConfigError, match=r"build: provider='trt' \(expected one of"):
        build_engine(checkpoints["qwen3"], tmp_path, "trt")
    with pytest.raises(ConfigError, match=r"build: provider='xla' .*nothing to build"):
        build_engine(checkpoints["qwen3"], tmp_path, "xla")
    with pytest.raises(
        ConfigError, match=r"build: builder='tensorrt' \(expected None for provider"
    ):
        build_engine(checkpoints["qwen3"], tmp_path, "onnxruntime", builder="tensorrt")
    with pytest.raises(ConfigError, match=r"build: builder='trt' \(expected one of"):
        build_engine(checkpoints["qwen3"], tmp_path, "tensorrt", builder="trt")


def test_bfloat16_onnx_engine_is_refused_at_build(checkpoints, tmp_path):
    with pytest.raises(
        ConfigError, match=r"dtype='bfloat16' for provider 'onnxruntime' .*pass --dtype float32"
    ):
        build_engine(checkpoints["qwen3"], tmp_path, "onnx", dtype="bfloat16")  # old name


def test_unloadable_onnx_file_names_the_file(copy):
    (copy / "model.onnx").write_bytes(b"not an onnx model")
    with pytest.raises(EngineError, match=r"model.onnx: onnxruntime cannot load this engine"):
        load_onnxruntime_engine(copy)
