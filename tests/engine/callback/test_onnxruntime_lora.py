"""The onnxruntime provider takes the LoRA bank as engine inputs: a batch mixing adapters equals
the xla provider row for row, and a built engine declares every bank binding."""

from __future__ import annotations

import numpy as np
import pytest

from edgellm_fn import XlaEngine, load_checkpoint
from edgellm_fn.engine.callback.build import build_engine
from edgellm_fn.engine.callback.onnxruntime import load_onnxruntime_engine
from edgellm_fn.runtime.lora import load_lora_bank

from ...lora_common import greedy_lora, make_adapter

PROMPTS = [[5, 17, 99, 3, 64, 12, 7], [40, 41, 42], [3, 4, 5, 6, 7, 8, 9, 10, 11]]
NAMES = ["b", "a", None]


@pytest.fixture(scope="module")
def setup(checkpoints, hf_models, tmp_path_factory):
    paths = {
        "a": tmp_path_factory.mktemp("ort_lora_a"),
        "b": tmp_path_factory.mktemp("ort_lora_b"),
    }
    make_adapter(hf_models["qwen2"], paths["a"], seed=1)
    make_adapter(
        hf_models["qwen2"], paths["b"], seed=2, r=3, target_modules=["k_proj", "up_proj"],
        use_rslora=True,
    )
    engine_dir = tmp_path_factory.mktemp("ort_lora_engine")
    limits = dict(max_batch=3, max_input_len=16, kv_capacity=32, max_lora_rank=4, max_loras=2)
    build_engine(checkpoints["qwen2"], engine_dir, "onnxruntime", **limits)
    ort = load_onnxruntime_engine(engine_dir)
    _, params = load_checkpoint(checkpoints["qwen2"])
    return ort, XlaEngine(ort.config, params), load_lora_bank(ort.config, paths)


def test_built_engine_declares_the_bank_as_inputs(setup):
    ort, _, _ = setup
    found = ort.executor.introspect()
    assert found["lora_index"] == ("in", "int32", (-1,))
    assert found["lora_A_q_proj_0"] == ("in", "float32", (3, 4, 64))
    assert found["lora_B_down_proj_1"] == ("in", "float32", (3, 64, 4))
    assert ort.config.deployment.max_lora_rank == 4 and ort.config.deployment.max_loras == 2


def test_mixed_adapters_match_the_xla_provider(setup):
    ort, xla, bank = setup
    runs_before = ort.executor.runs
    got = greedy_lora(ort, bank, PROMPTS, NAMES, steps=4)
    want = greedy_lora(xla, bank, PROMPTS, NAMES, steps=4)
    assert ort.executor.runs == runs_before + 5  # onnxruntime ran every step
    np.testing.assert_allclose(got["logits"], want["logits"], atol=1e-4, rtol=1e-4)
    np.testing.assert_array_equal(got["tokens"], want["tokens"])
    plain = greedy_lora(xla, bank, PROMPTS, [None] * 3, steps=0)
    assert np.abs(plain["logits"][0, :2] - want["logits"][0, :2]).max() > 1e-2  # adapters act
