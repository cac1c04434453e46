"""LoRA through the request path: ``generate(lora=, lora_names=)``, the request JSON's
``available_lora_weights``/``lora_name``, ``edgellm-fn generate --lora``, and prefix-cache keys."""

from __future__ import annotations

import json

import numpy as np
import pytest

import edgellm_fn as ef
from edgellm_fn import cli
from edgellm_fn.runtime.generate import generate
from edgellm_fn.runtime.lora import load_lora_bank
from edgellm_fn.runtime.prefix_cache import PrefixStore, prefill_with_prefixes, save_prefix
from edgellm_fn.text.tokenizer import Tokenizer

from ..helpers import pad
from ..lora_common import make_adapter

LIMITS = dict(max_batch_size=2, max_input_len=32, kv_capacity=48)
CLI_LIMITS = ["--max-batch", "2", "--max-input-len", "32", "--kv-capacity", "48"]


@pytest.fixture(scope="module")
def setup(checkpoints, hf_models, tmp_path_factory):
    path = tmp_path_factory.mktemp("req_lora_a")
    make_adapter(hf_models["llama"], path, seed=3, r=4, lora_alpha=16)
    model, params = ef.load_checkpoint(checkpoints["llama"])
    cfg = ef.EngineConfig.create(model, max_lora_rank=4, max_loras=1, **LIMITS)
    engine = ef.XlaEngine(cfg, params)
    tokenizer = Tokenizer.from_dir(checkpoints["llama"])
    return dict(engine=engine, bank=load_lora_bank(cfg, {"a": path}), path=path, tok=tokenizer)


def _texts(setup, names, prompts=("hello", "hello")):
    ids = [setup["tok"].encode(p) for p in prompts]
    out = generate(
        setup["engine"], setup["tok"], ids, max_new_tokens=6, top_k=1, lora=setup["bank"],
        lora_names=names,
    )
    return [c.text for c in out]


def test_generate_rows_follow_their_adapter(setup):
    mixed = _texts(setup, ["a", None])
    assert mixed[0] == _texts(setup, ["a", "a"])[0]
    assert mixed[1] == _texts(setup, [None, None])[1]
    assert mixed[0] != mixed[1]  # the adapter changes the greedy text
    with pytest.raises(ef.InputError, match=r"generate: lora_name='b' \(expected one of \['a'\] or null\)"):
        _texts(setup, ["a", "b"])
    with pytest.raises(ef.InputError, match=r"generate: lora_name='a' \(expected null: no LoRA adapters are loaded\); pass lora="):
        generate(setup["engine"], setup["tok"], [[5, 6]], lora_names=["a"])


def test_request_file_and_cli_flags_serve_adapters(setup, checkpoints, tmp_path, capsys):
    want = _texts(setup, ["a", None])
    request = {
        "top_k": 1,
        "max_generate_length": 6,
        "apply_chat_template": False,
        "available_lora_weights": {"a": str(setup["path"])},
        "requests": [
            {"messages": [{"role": "user", "content": "hello"}], "lora_name": "a"},
            {"messages": [{"role": "user", "content": "hello"}]},
        ],
    }
    req = tmp_path / "req.json"
    req.write_text(json.dumps(request))
    out = tmp_path / "out.json"
    model = checkpoints["llama"]
    assert cli.main(["generate", "--model", model, "--input-file", str(req), "--output-file", str(out), *CLI_LIMITS]) == 0
    assert [r["output_text"] for r in json.loads(out.read_text())["responses"]] == want
    flags = ["generate", "--model", model, "--prompt", "hello", "--no-chat", "--max-new-tokens", "6", "--output-file", str(out), *CLI_LIMITS]
    assert cli.main([*flags, "--lora", f"a={setup['path']}", "--lora-name", "a"]) == 0
    assert json.loads(out.read_text())["responses"][0]["output_text"] == want[0]
    assert cli.main([*flags, "--lora", "a"]) == 2
    assert "generate: --lora 'a' (expected NAME=DIR)" in capsys.readouterr().err
    assert cli.main([*flags, "--lora-name", "zz"]) == 2
    assert "lora_name='zz' (expected null: no LoRA adapters are loaded)" in capsys.readouterr().err
    assert cli.main(["generate", "--model", model, "--input-file", str(req), "--lora-name", "a"]) == 2
    assert "--lora-name with --input-file (expected --prompt)" in capsys.readouterr().err


def test_prefix_cache_entries_are_keyed_by_adapter(setup):
    engine, bank = setup["engine"], setup["bank"]
    system = [11, 12, 13, 14, 15, 16, 17, 18]
    prompts = [system + [40, 41], system + [50]]
    ids, lengths = pad([system, system])
    warm = ef.create_state(engine.config, 2, lora=bank.state(["a", None]))
    warm = ef.prefill(engine, warm, ef.embed(engine, ids), lengths)
    store = PrefixStore()
    store.add(save_prefix(warm, 0, system), "a")
    assert store.lookup(prompts[0], None) == (None, 0)
    assert store.lookup(prompts[0], "a")[1] == len(system)
    for names in (["a", None], [None, "a"]):
        state = ef.create_state(engine.config, 2, lora=bank.state(names))
        state, reused = prefill_with_prefixes(engine, state, prompts, store, lora_names=names)
        assert reused == [len(system) if n == "a" else 0 for n in names]
        ids, lengths = pad(prompts)
        full = ef.create_state(engine.config, 2, lora=bank.state(names))
        full = ef.prefill(engine, full, ef.embed(engine, ids), lengths)
        np.testing.assert_allclose(np.asarray(state.io.logits), np.asarray(full.io.logits), atol=1e-5)
    with pytest.raises(ef.InputError, match=r"len\(lora_names\)=1 \(expected one per prompt, 2\)"):
        prefill_with_prefixes(engine, ef.create_state(engine.config, 2), prompts, store, lora_names=["a"])
