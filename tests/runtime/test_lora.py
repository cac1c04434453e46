"""LoRA adapters per row against ``transformers`` + ``peft`` (CPU, float32), for every family."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import edgellm_fn as ef
from edgellm_fn.runtime.lora import load_lora_bank

from ..lora_common import greedy_lora, make_adapter, peft_logits
from .test_step_path import count_compiles

FAMILIES = ("llama", "qwen2", "qwen3", "mistral", "gemma2", "gemma3")  # phi3: fused qkv, refused
PROMPTS = [[5, 17, 99, 3, 64, 12, 7], [40, 41, 42], [3, 4, 5, 6, 7, 8, 9, 10, 11]]
STEPS = 6
# "a": every target, plain scaling. "b": a few targets on layer 1 only, rsLoRA, per-module
# rank and alpha (rank_pattern/alpha_pattern).
ADAPTERS = {
    "a": dict(r=4, lora_alpha=8),
    "b": dict(
        r=2,
        lora_alpha=16,
        use_rslora=True,
        target_modules=["q_proj", "v_proj", "down_proj"],
        layers_to_transform=[1],
        rank_pattern={"v_proj": 3},
        alpha_pattern={"q_proj": 4},
    ),
}


@pytest.fixture(scope="module")
def setups(checkpoints, hf_models, tmp_path_factory) -> dict:
    """Per family: the PEFT models, an xla engine with a 2-slot bank of rank 4, and the bank."""
    out = {}
    for family in FAMILIES:
        peft = {}
        paths = {}
        for seed, (name, kwargs) in enumerate(ADAPTERS.items()):
            paths[name] = tmp_path_factory.mktemp(f"lora_{family}_{name}")
            peft[name] = make_adapter(hf_models[family], paths[name], seed=seed + 1, **kwargs)
        model, params = ef.load_checkpoint(checkpoints[family])
        cfg = ef.EngineConfig.create(
            model, max_batch_size=3, max_input_len=16, kv_capacity=48, max_lora_rank=4, max_loras=2
        )
        engine = ef.XlaEngine(cfg, params)
        out[family] = dict(engine=engine, bank=load_lora_bank(cfg, paths), peft=peft, paths=paths)
    return out


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("name", list(ADAPTERS))
def test_one_adapter_logits_and_greedy_tokens_match_peft(family, name, setups, hf_models):
    s = setups[family]
    run = greedy_lora(s["engine"], s["bank"], [PROMPTS[0]], [name], STEPS)
    seq = list(PROMPTS[0])
    for step, ours in enumerate(run["logits"]):
        ref = peft_logits(s["peft"][name], seq)
        base = peft_logits(hf_models[family], seq)
        scale = np.abs(ref).max()
        assert np.abs(ours[0] - ref).max() / scale < 1e-4, f"{family}/{name} step {step}"
        # The adapter really changes the logits: the comparison above is not the base model's.
        assert np.abs(base - ref).max() / scale > 1e-2, f"{family}/{name}: adapter has no effect"
        assert int(ref.argmax()) == int(run["tokens"][0, step])
        seq.append(int(run["tokens"][0, step]))


@pytest.mark.parametrize("family", FAMILIES)
def test_rows_mixing_adapters_and_none_equal_each_row_alone(family, setups, hf_models):
    s = setups[family]
    names = ["b", None, "a"]
    mixed = greedy_lora(s["engine"], s["bank"], PROMPTS, names, STEPS)
    for row, (prompt, name) in enumerate(zip(PROMPTS, names, strict=True)):
        alone = greedy_lora(s["engine"], s["bank"], [prompt], [name], STEPS)
        np.testing.assert_allclose(mixed["logits"][:, row], alone["logits"][:, 0], atol=2e-5)
        np.testing.assert_array_equal(mixed["tokens"][row], alone["tokens"][0])
    # The row without an adapter is the base model.
    ref = peft_logits(hf_models[family], PROMPTS[1])
    assert np.abs(mixed["logits"][0, 1] - ref).max() / np.abs(ref).max() < 1e-4
    assert s["bank"].active(mixed["state"]) == names


def test_switching_adapters_between_requests_compiles_nothing(setups):
    s = setups["llama"]
    engine, bank = s["engine"], s["bank"]
    first = greedy_lora(engine, bank, PROMPTS, ["a", "b", None], STEPS)  # warm-up
    with count_compiles() as compiles:
        second = greedy_lora(engine, bank, PROMPTS, [None, "a", "b"], STEPS)
        state = bank.switch(second["state"], ["b", "b", 2])
        state = ef.decode(engine, state, np.array([5, 6, 7], np.int32))
        assert bank.active(state) == ["b", "b", "b"]
    assert compiles == [], f"{len(compiles)} compilations for switched adapters"
    assert not np.array_equal(first["tokens"], second["tokens"])  # the switch took effect


def test_upstream_names_available_and_active(setups):
    bank = setups["qwen2"]["bank"]
    assert bank.available() == ["a", "b"]
    state = ef.create_state(bank.config, 2, lora=bank.state(["a", None]))
    assert bank.active(state) == ["a", None]
    assert bank.active(bank.switch(state, [None, "b"])) == [None, "b"]


def test_unknown_lora_name_and_bad_index_raise_before_donation(setups):
    s = setups["qwen3"]
    bank = s["bank"]
    with pytest.raises(ef.InputError, match=r"lora: lora_name='zzz' \(expected one of \['a', 'b'\] or null\); load it with --lora"):
        bank.state(["zzz", None, None])
    state = ef.create_state(bank.config, 3, lora=bank.state(["a", None, None]))
    with pytest.raises(ef.InputError, match=r"switch_lora: lora index=3 \(expected 0\.\.2: 0 for no adapter"):
        bank.switch(state, [3, 0, 0])
    with pytest.raises(ef.InputError, match=r"switch_lora: 2 lora names \(expected one per row, 3\); pass a list"):
        bank.switch(state, ["a", "b"])
    with pytest.raises(ef.InputError, match=r"switch_lora: lora_name='nope'"):
        bank.switch(state, ["nope", None, None])
    # Nothing was donated: the state still runs.
    ids = np.array(PROMPTS[1:2] * 3, np.int32)
    state = ef.prefill(s["engine"], state, ef.embed(s["engine"], ids), np.array([3, 3, 3]))
    donated = state
    state = ef.decode(s["engine"], state, np.array([1, 2, 3], np.int32))
    with pytest.raises(ef.InputError, match=r"switch_lora: this state was already donated.*state = switch_lora"):
        bank.switch(donated, [None, None, None])
    lora = dataclasses.replace(state.res.lora, index=np.array([0, 7, 0], np.int32))
    foreign = dataclasses.replace(state, res=dataclasses.replace(state.res, lora=lora))
    with pytest.raises(ef.InputError, match=r"active_lora: row 1 slot=7 \(expected 0\.\.2\); the state's bank is not this bank"):
        bank.active(foreign)


def test_a_bank_state_of_another_batch_is_refused(setups):
    bank = setups["llama"]["bank"]
    with pytest.raises(ef.InputError, match=r"create_state: lora.index has shape \[2\] \(expected \[3\], one adapter slot per row\)"):
        ef.create_state(bank.config, 3, lora=bank.state(["a", None]))
