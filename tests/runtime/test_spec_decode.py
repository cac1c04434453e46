"""EAGLE3 speculative decoding: greedy tokens equal vanilla greedy decoding, token for token.

Two drafts: a random EAGLE3 checkpoint (acceptance near 1) and the oracle (the base itself
behind the draft contract: long acceptances, so multi-token commits are exercised).
"""

from __future__ import annotations

import numpy as np
import pytest

from edgellm_fn.config import ModelConfig
from edgellm_fn.models.eagle3_loader import random_eagle3_checkpoint

from .spec_helpers import TREES, spec_engines, speculative, vanilla, vanilla_engine
from .test_step_path import count_compiles

PROMPTS = [[5, 9, 13, 7, 22], [40, 41], [3, 4, 5, 6, 7, 8]]


@pytest.fixture(scope="module")
def llama(checkpoints):
    return checkpoints["llama"]


@pytest.fixture(scope="module")
def random_draft(llama, tmp_path_factory):
    path = tmp_path_factory.mktemp("draft_llama")
    # Reduced draft vocabulary (d2t), features from layers 0, 1 and the output.
    random_eagle3_checkpoint(
        path, ModelConfig.from_file(llama), aux_layer_ids=(0, 1, 2), draft_vocab_size=96
    )
    return str(path)


def _check_equal(spec, van):
    n = van.tokens.shape[1]
    np.testing.assert_array_equal(spec.tokens[:, :n], van.tokens)
    np.testing.assert_array_equal(spec.num_tokens, van.num_tokens)
    np.testing.assert_array_equal(spec.hit_eos, van.hit_eos)


@pytest.mark.parametrize("loop", ["while", "python"])
@pytest.mark.parametrize("tree", sorted(TREES))
def test_random_draft_gives_vanilla_greedy_tokens(llama, random_draft, tree, loop):
    base, draft = spec_engines(llama, random_draft, TREES[tree])
    van, _ = vanilla(vanilla_engine(llama), PROMPTS, 24)
    spec, _ = speculative(base, draft, PROMPTS, 24, loop=loop)
    _check_equal(spec, van)
    mean = spec.mean_accepted()
    print(f"random draft, {tree} tree: mean accepted tokens per base step {mean:.2f}")
    assert 1.0 <= mean < 2.0


@pytest.mark.parametrize("loop", ["while", "python"])
@pytest.mark.parametrize("tree", sorted(TREES))
def test_oracle_draft_accepts_long_runs_and_gives_vanilla_tokens(llama, tree, loop):
    k, steps, _ = TREES[tree]
    base, draft = spec_engines(llama, "oracle", TREES[tree])
    van, _ = vanilla(vanilla_engine(llama), PROMPTS, 24)
    spec, _ = speculative(base, draft, PROMPTS, 24, loop=loop)
    _check_equal(spec, van)
    mean = spec.mean_accepted()
    print(f"oracle draft, {tree} tree: mean accepted tokens per base step {mean:.2f}")
    if k == 1:  # a chain of the base's own greedy tokens is accepted whole
        np.testing.assert_array_equal(spec.accepted, spec.rounds * (steps + 1))
    assert mean >= 2.0


@pytest.mark.parametrize("loop", ["while", "python"])
@pytest.mark.parametrize("draft_kind", ["random", "oracle"])
def test_rows_stopping_at_eos_mid_round_match_vanilla(llama, random_draft, draft_kind, loop):
    draft_dir = random_draft if draft_kind == "random" else "oracle"
    base, draft = spec_engines(llama, draft_dir, TREES["deep"])
    full, _ = vanilla(vanilla_engine(llama), PROMPTS, 24)
    eos = int(full.tokens[0, 6])  # row 0 ends there (or earlier); others wherever it appears
    van, _ = vanilla(vanilla_engine(llama), PROMPTS, 24, eos_ids=(eos,))
    assert van.hit_eos[0] and van.num_tokens[0] <= 7
    spec, _ = speculative(base, draft, PROMPTS, 24, eos_ids=(eos,), loop=loop)
    _check_equal(spec, van)


@pytest.mark.parametrize("loop", ["while", "python"])
def test_rows_reaching_kv_capacity_mid_round_match_vanilla(llama, loop):
    # Capacity 24, a prompt at max_input_len=16: the row may generate 9 tokens, so a chain that
    # accepts 5 per round runs out of KV slots in the middle of a round; the tree also no
    # longer fits the cache (16 + 5 > 24 near the end).
    prompts = [list(range(3, 19)), [40, 41, 42, 43, 44, 45, 46, 47, 48]]
    limits = dict(batch=2, max_input_len=16, kv_capacity=24)
    base, draft = spec_engines(llama, "oracle", TREES["chain"], **limits)
    van, _ = vanilla(vanilla_engine(llama, **limits), prompts, 40)
    np.testing.assert_array_equal(van.num_tokens, [9, 16])
    spec, state = speculative(base, draft, prompts, 40, loop=loop)
    _check_equal(spec, van)
    assert (np.asarray(state.kv.lengths) <= 24).all()


def test_committed_kv_equals_what_vanilla_decoding_writes(llama):
    base, draft = spec_engines(llama, "oracle", TREES["deep"])
    van, vstate = vanilla(vanilla_engine(llama), PROMPTS, 24)
    spec, sstate = speculative(base, draft, PROMPTS, 24)
    _check_equal(spec, van)
    assert spec.mean_accepted() > 2.0  # multi-token commits happened
    vlen = np.asarray(vstate.kv.lengths)
    assert (np.asarray(sstate.kv.lengths) >= vlen).all()
    for name in ("k", "v"):
        for vk, sk in zip(getattr(vstate.kv, name), getattr(sstate.kv, name), strict=True):
            vk, sk = np.asarray(vk), np.asarray(sk)
            for r, n in enumerate(vlen):
                np.testing.assert_allclose(sk[r, :, :n], vk[r, :, :n], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("loop", ["while", "python"])
def test_requests_after_warm_up_compile_nothing(llama, random_draft, loop):
    base, draft = spec_engines(llama, random_draft, TREES["wide"])
    speculative(base, draft, PROMPTS, 12, eos_ids=(2,), loop=loop, width=8)  # warm-up
    others = [[9, 8, 7], [1, 2, 3, 4, 5, 6, 7, 8], [60]]
    with count_compiles() as compiles:
        speculative(base, draft, others, 16, eos_ids=(2,), loop=loop, width=8)
        speculative(base, draft, PROMPTS, 9, eos_ids=(2,), loop=loop, width=8)
    assert compiles == [], f"{len(compiles)} compilations for new requests"
    with count_compiles() as control:  # the listener does see compilations: a new batch size
        speculative(base, draft, PROMPTS[:2], 12, eos_ids=(2,), loop=loop, width=8)
    assert control


def _addresses(state) -> list[int]:
    kv, dkv = state.res.kv, state.res.draft_kv
    return [x.unsafe_buffer_pointer() for x in (*kv.k, *kv.v, *dkv.k, *dkv.v)]


@pytest.mark.parametrize("loop", ["while", "python"])
def test_both_caches_keep_their_buffers_across_a_generation(llama, loop):
    from edgellm_fn.runtime import loops
    from edgellm_fn.runtime import spec_decode as sd

    from ..helpers import pad

    base, draft = spec_engines(llama, "oracle", TREES["deep"])
    ids, lengths = pad(PROMPTS)
    state = sd.spec_prefill(base, draft, sd.create_spec_state(base.bundle, 3), ids, lengths)
    before = _addresses(state)
    run = sd.spec_decode_while if loop == "while" else sd.spec_decode_python
    state, res = run(
        base,
        draft,
        state,
        loops.token_limits(base, lengths, 20),
        eos_ids=(),
        max_new_tokens=20,
    )
    assert _addresses(state) == before  # commits and tree writes happened in place
    assert np.asarray(res.num_tokens).tolist() == [20, 20, 20]


def test_cli_generate_with_a_draft_matches_vanilla_and_reports_acceptance(
    checkpoints, random_draft, capsys
):
    import json

    from edgellm_fn.cli import main

    common = ["generate", "--model", checkpoints["llama"], "--prompt", "hi", "--no-chat"]
    common += ["--max-new-tokens", "10", "--max-batch", "1", "--max-input-len", "16"]
    common += ["--kv-capacity", "64", "--loop", "while", "--json"]
    assert main(common) == 0
    vanilla_out = json.loads(capsys.readouterr().out)
    draft = ["--draft", random_draft, "--tree-topk", "2", "--tree-steps", "3"]
    assert main([*common, *draft, "--verify-size", "6"]) == 0
    spec_out = json.loads(capsys.readouterr().out)
    assert spec_out["responses"] == vanilla_out["responses"]
    assert spec_out["spec_decode"]["rounds"] >= 1
    assert spec_out["spec_decode"]["accepted_per_round"] >= 1.0
    assert main([*common, *draft, "--verify-size", "99"]) == 2  # named error, exit code 2
    assert "verify_size=99" in capsys.readouterr().err


@pytest.mark.parametrize("loop", ["python", "while"])
def test_spec_decode_generate_matches_greedy_generate_with_stop_strings(llama, loop):
    from edgellm_fn.runtime.generate import generate
    from edgellm_fn.runtime.spec_generate import spec_decode_generate
    from edgellm_fn.text.tokenizer import Tokenizer

    tok = Tokenizer.from_dir(llama)
    base, draft = spec_engines(llama, "oracle", TREES["deep"])
    van = vanilla_engine(llama)
    full = generate(van, tok, PROMPTS, max_new_tokens=20, top_k=1, loop="while")
    stops = [[full[0].text[5:7]], [], [full[2].text[3:4]]]  # rows 0 and 2 stop mid-way
    want = generate(van, tok, PROMPTS, max_new_tokens=20, top_k=1, stop=stops, loop=loop)
    streamed = {}
    got, stats = spec_decode_generate(
        base,
        draft,
        tok,
        PROMPTS,
        max_new_tokens=20,
        stop=stops,
        loop=loop,
        on_text=(lambda i, s: streamed.__setitem__(i, streamed.get(i, "") + s))
        if loop == "python"
        else None,
    )
    assert [c.text for c in got] == [c.text for c in want]
    assert [c.finish_reason for c in got] == [c.finish_reason for c in want]
    assert got[0].finish_reason == "stop" and got[1].finish_reason == "length"
    if loop == "python":
        assert [streamed.get(i, "") for i in range(3)] == [c.text for c in want]
    assert stats.rounds >= 1 and stats.accepted_per_round > 2.0
