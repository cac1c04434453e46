"""PEFT adapter reading: every way an adapter can fail to fit raises a named error; the bank
layout; the config fields; the fused path declines LoRA engines."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

import edgellm_fn as ef
from edgellm_fn.errors import AdapterError
from edgellm_fn.models import fused
from edgellm_fn.models.lora import bank_shapes, build_bank, read_peft_adapter
from edgellm_fn.models.safetensors_io import load_file, save_file
from edgellm_fn.runtime.lora import load_lora_bank, lora_limits

from ..conftest import make_hf_model
from ..lora_common import make_adapter


@pytest.fixture(scope="module")
def base(hf_models):
    return hf_models["llama"]


@pytest.fixture(scope="module")
def adapter_dir(base, tmp_path_factory):
    path = tmp_path_factory.mktemp("adapter")
    make_adapter(base, path, r=4, lora_alpha=8)
    return path


@pytest.fixture(scope="module")
def model_cfg(checkpoints):
    return ef.ModelConfig.from_file(checkpoints["llama"])


def _cfg(model_cfg, rank=4, loras=2):
    return ef.EngineConfig.create(
        model_cfg, max_batch_size=2, max_input_len=8, kv_capacity=16, max_lora_rank=rank,
        max_loras=loras,
    )


def _copy(adapter_dir, tmp_path, **config):
    out = tmp_path / "copy"
    shutil.copytree(adapter_dir, out)
    raw = json.loads((out / "adapter_config.json").read_text())
    raw.update(config)
    (out / "adapter_config.json").write_text(json.dumps(raw))
    return out


def test_bank_pads_ranks_folds_scaling_and_keeps_slot_0_zero(adapter_dir, model_cfg):
    cfg = _cfg(model_cfg, rank=6)
    adapter = read_peft_adapter(adapter_dir, model_cfg, 6, "a")
    assert adapter.rank == 4 and len(adapter.weights) == 7 * model_cfg.num_hidden_layers
    bank = build_bank(cfg, [adapter])
    assert {n: a.shape for n, a in bank.items()} == bank_shapes(cfg)
    raw = load_file(adapter_dir / "adapter_model.safetensors")
    key = "base_model.model.model.layers.1.mlp.down_proj.lora_"
    a, b = bank["lora_A_down_proj_1"], bank["lora_B_down_proj_1"]
    assert a.shape == (3, 6, model_cfg.intermediate_size)
    assert not a[0].any() and not b[0].any() and not a[2].any()  # no adapter / empty slot
    np.testing.assert_array_equal(a[1, :4], raw[key + "A.weight"])
    assert not a[1, 4:].any() and not b[1, :, 4:].any()  # rank padding
    np.testing.assert_allclose(b[1, :, :4], raw[key + "B.weight"] * 2.0, rtol=1e-6)  # 8 / 4


def test_lora_limits_read_rank_and_count_from_configs(adapter_dir, tmp_path):
    other = _copy(adapter_dir, tmp_path, rank_pattern={"v_proj": 6})
    assert lora_limits({"a": adapter_dir, "b": other}) == (6, 2)
    assert lora_limits({}) == (0, 0)


def test_rank_above_max_lora_rank(adapter_dir, model_cfg):
    with pytest.raises(AdapterError, match=r"lora 'a' .*: model\.layers\.0\.mlp\.down_proj rank=4 \(expected <= max_lora_rank=2\); build the engine with a larger max_lora_rank"):
        load_lora_bank(_cfg(model_cfg, rank=2), {"a": adapter_dir})


def test_unknown_target_module_in_config_or_tensors(base, model_cfg, tmp_path):
    listed = tmp_path / "listed"
    make_adapter(base, listed, target_modules=["q_proj", "lm_head"])
    with pytest.raises(AdapterError, match=r"target_modules has 'lm_head' \(expected a subset of \['q_proj'.*unknown target module"):
        read_peft_adapter(listed, model_cfg, 4)
    regex = tmp_path / "regex"
    make_adapter(base, regex, target_modules=r".*(q_proj|lm_head)")
    with pytest.raises(AdapterError, match=r"tensor 'base_model\.model\.lm_head\.[\w.]+' \(expected base_model\.model\.model\.layers\.N\..*\); unknown target module 'lm_head', this runtime adapts only these"):
        read_peft_adapter(regex, model_cfg, 4)


def test_adapter_for_another_model(tmp_path, model_cfg):
    wider = make_hf_model("llama", hidden_size=32, intermediate_size=48)
    make_adapter(wider, tmp_path / "wider")
    with pytest.raises(AdapterError, match=r"model\.layers\.0\.mlp\.down_proj has lora_A \[4, 48\] and lora_B \[32, 4\] \(expected \[r, 112\] and \[64, r\] for this model\); the adapter was trained for another model"):
        read_peft_adapter(tmp_path / "wider", model_cfg, 4)
    deeper = make_hf_model("llama", num_hidden_layers=3)
    make_adapter(deeper, tmp_path / "deeper", target_modules=["o_proj"])
    with pytest.raises(AdapterError, match=r"layer=2 \(expected < num_hidden_layers=2\); the adapter was trained for another model"):
        read_peft_adapter(tmp_path / "deeper", model_cfg, 4)


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("use_dora", True, r"use_dora=True \(expected False\); only plain LoRA"),
        ("bias", "all", r"bias='all' \(expected 'none'\)"),
        ("fan_in_fan_out", True, r"fan_in_fan_out=True \(expected False\)"),
        ("peft_type", "IA3", r"peft_type='IA3' \(expected 'LORA'\)"),
        ("r", 0, r"r=0 \(expected an integer >= 1\)"),
        ("r", 8, r"rank 4 \(expected r=8 from adapter_config.json\); the config and the weights disagree"),
        ("lora_alpha", "x", r"lora_alpha='x' \(expected a finite number\)"),
        ("use_rslora", "yes", r"use_rslora='yes' \(expected true or false\)"),
    ],
)
def test_ill_formed_adapter_config(adapter_dir, model_cfg, tmp_path, field, value, match):
    with pytest.raises(AdapterError, match=match):
        read_peft_adapter(_copy(adapter_dir, tmp_path, **{field: value}), model_cfg, 8)


def test_missing_or_broken_adapter_files(adapter_dir, model_cfg, tmp_path):
    with pytest.raises(AdapterError, match=r"no adapter_model\.safetensors \(expected a PEFT adapter directory\); save it with"):
        read_peft_adapter(tmp_path, model_cfg, 4)
    half = _copy(adapter_dir, tmp_path)
    tensors = {k: np.array(v) for k, v in load_file(half / "adapter_model.safetensors").items()}
    del tensors["base_model.model.model.layers.0.self_attn.k_proj.lora_B.weight"]
    save_file(tensors, half / "adapter_model.safetensors")
    with pytest.raises(AdapterError, match=r"model\.layers\.0\.self_attn\.k_proj has no lora_B\.weight \(expected both"):
        read_peft_adapter(half, model_cfg, 4)
    tensors = {k: np.array(v) for k, v in load_file(adapter_dir / "adapter_model.safetensors").items()}
    tensors["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"][0, 0] = np.nan
    save_file(tensors, half / "adapter_model.safetensors")
    with pytest.raises(AdapterError, match=r"holds NaN or inf \(expected finite weights\)"):
        read_peft_adapter(half, model_cfg, 4)


def test_bank_limits(adapter_dir, model_cfg):
    no_lora = ef.EngineConfig.create(model_cfg, max_batch_size=1, max_input_len=8, kv_capacity=8)
    with pytest.raises(AdapterError, match=r"max_lora_rank=0 \(expected >= 1\); the engine was built without LoRA bindings"):
        load_lora_bank(no_lora, {"a": adapter_dir})
    with pytest.raises(AdapterError, match=r"2 adapters \(expected <= max_loras=1\); build the engine with more adapter slots"):
        load_lora_bank(_cfg(model_cfg, loras=1), {"a": adapter_dir, "b": adapter_dir})
    with pytest.raises(AdapterError, match=r"name='' \(expected a unique non-empty string"):
        load_lora_bank(_cfg(model_cfg), {"": adapter_dir})


def test_deployment_lora_fields(model_cfg):
    with pytest.raises(ef.ConfigError, match=r"max_lora_rank=4 with max_loras=0 \(expected both 0, no LoRA, or both >= 1\)"):
        _cfg(model_cfg, rank=4, loras=0)
    with pytest.raises(ef.ConfigError, match=r"builder_config: max_loras=-1 \(expected an integer >= 0\)"):
        _cfg(model_cfg, rank=4, loras=-1)
    cfg = _cfg(model_cfg, rank=4, loras=3)
    raw = json.loads(json.dumps(cfg.to_dict()))
    assert raw["builder_config"]["max_lora_rank"] == 4 and raw["builder_config"]["max_loras"] == 3
    assert "max_lora_rank" not in ef.EngineConfig.create(model_cfg).to_dict()["builder_config"]
    again = ef.DeploymentConfig.from_dict(raw["builder_config"])
    assert again == cfg.deployment


def test_fused_path_declines_a_lora_engine_on_every_platform(model_cfg, checkpoints):
    cfg = _cfg(model_cfg)
    for platform in ("cpu", "gpu"):
        assert fused.kernel_support(cfg, 1, platform).startswith("LoRA adapters (max_lora_rank=4)")
    _, params = ef.load_checkpoint(checkpoints["llama"])
    path, why = ef.XlaEngine(cfg, params, kernels="auto").decode_path(1)
    assert path == "reference" and "LoRA adapters" in why
    with pytest.raises(ef.EngineError, match=r"kernels='on' but LoRA adapters \(max_lora_rank=4\) have no fused kernel"):
        ef.XlaEngine(cfg, params, kernels="on").decode_path(1)
