"""NemotronH (hybrid Mamba2 + attention) against transformers, and its recurrent state.

transformers runs its Mamba2 "torch_forward" reference path here (no ``mamba_ssm`` kernels).
Its chunked scan clamps the time step to ``time_step_limit`` (transformers >= 5.25; earlier
versions clamped at ``time_step_min``) and its single-step decode does not, so decode logits are
compared with transformers' own incremental decoding (``generate(output_logits=True)``), not with
a fresh forward over the grown sequence.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
import torch

import edgellm_fn as ef
from edgellm_fn.engine.spec import build_llm_spec
from edgellm_fn.errors import CheckpointError, ConfigError, EngineError, InputError
from edgellm_fn.runtime import loops
from edgellm_fn.runtime.prefix_cache import PrefixStore, prefill_with_prefixes, save_prefix

from ..helpers import make_engine, pad

PROMPTS = [[5, 17, 99, 3, 64, 12, 7, 88, 41, 23, 9, 200, 31], [44, 8, 120, 61, 250]]
FIRST_CHUNK = np.array([6, 2])  # tokens of each row's first prefill chunk
STEPS = 16


def make_hf_nemotron_h(seed: int = 0, **overrides):
    """A random float32 NemotronH: vocab 256, hidden 64, layers Mamba2 / attention / MLP /
    Mamba2, 8 SSM heads in 2 groups, chunk 4 (prompts span several chunks)."""
    import transformers

    kwargs = dict(
        vocab_size=256,
        hidden_size=64,
        layers_block_type=["linear_attention", "full_attention", "mlp", "linear_attention"],
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        intermediate_size=96,
        mamba_num_heads=8,
        mamba_head_dim=16,
        ssm_state_size=16,
        n_groups=2,
        conv_kernel=4,
        chunk_size=4,
        max_position_embeddings=256,
        initializer_range=0.15,
        bos_token_id=1,
        eos_token_id=2,
    )
    kwargs.update(overrides)
    torch.manual_seed(seed)
    return transformers.NemotronHForCausalLM(transformers.NemotronHConfig(**kwargs)).eval()


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("ckpt_nemotron_h")
    make_hf_nemotron_h().save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def hf_model(ckpt):
    import transformers

    return transformers.AutoModelForCausalLM.from_pretrained(ckpt, dtype="float32").eval()


@pytest.fixture(scope="module")
def engine(ckpt):
    return make_engine(ckpt, batch=2, max_input_len=16, kv_capacity=40)


def hf_decode(model, prompt: list[int], steps: int) -> tuple[np.ndarray, np.ndarray]:
    """transformers' greedy incremental decoding: ``(logits [steps+1, V], tokens [steps+1])``."""
    with torch.no_grad():
        out = model.generate(
            torch.tensor([prompt]),
            max_new_tokens=steps + 1,
            do_sample=False,
            output_logits=True,
            return_dict_in_generate=True,
            pad_token_id=0,
            eos_token_id=None,
        )
    logits = torch.stack(out.logits)[:, 0].float().numpy()
    return logits, out.sequences[0, len(prompt) :].numpy()


@pytest.fixture(scope="module")
def hf_runs(hf_model) -> list[tuple[np.ndarray, np.ndarray]]:
    return [hf_decode(hf_model, p, STEPS) for p in PROMPTS]


def recurrent_addresses(state) -> list[int]:
    rec = state.res.recurrent
    leaves = (*state.kv.k, *state.kv.v, *rec.ssm, *rec.conv)
    return [a.unsafe_buffer_pointer() for a in leaves]


def _chunk(prompts, lo, hi) -> np.ndarray:
    out = np.zeros((len(prompts), int((hi - lo).max())), np.int32)
    for r, p in enumerate(prompts):
        out[r, : hi[r] - lo[r]] = p[lo[r] : hi[r]]
    return out


def _rel(ours: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


def test_config_layout_and_engine_contract(engine):
    m = engine.config.model
    assert m.hybrid.layer_types == ("mamba", "attention", "mlp", "mamba")
    assert (m.num_kv_layers, m.hybrid.mamba_layers, m.hybrid.mamba.conv_dim) == (1, (0, 3), 192)
    spec = build_llm_spec(engine.config)
    names = {b.name for b in spec.bindings}
    assert "rope_rotary_cos_sin" not in names  # NemotronH attention has no RoPE
    assert {"past_key_0", "present_value_0"} <= names and "past_key_1" not in names
    for i in range(2):
        assert (f"present_ssm_state_{i}", f"past_ssm_state_{i}") in spec.aliases
        assert (f"present_conv_state_{i}", f"past_conv_state_{i}") in spec.aliases
    assert spec["past_ssm_state_1"].shape == (("batch",), 8, 16, 16)
    assert spec["past_ssm_state_1"].dtype == "float32"  # mamba_ssm_cache_dtype
    assert spec["past_conv_state_0"].shape == (("batch",), 192, 3)


@pytest.mark.parametrize("chunked", [False, True])
def test_ragged_prefill_and_16_decode_steps_match_transformers(engine, hf_runs, chunked):
    """Rows of different lengths (one prefill, or two chunks each), then 16 greedy steps:
    every row's logits equal transformers' decoding of that row alone, tokens identical."""
    lengths = np.array([len(p) for p in PROMPTS])
    state = ef.create_state(engine.config, len(PROMPTS))
    before = recurrent_addresses(state)
    if chunked:
        first = _chunk(PROMPTS, np.zeros(2, int), FIRST_CHUNK)
        state = ef.prefill(engine, state, ef.embed(engine, first), FIRST_CHUNK)
        rest = _chunk(PROMPTS, FIRST_CHUNK, lengths)
        state = ef.prefill(engine, state, ef.embed(engine, rest), lengths, append=True)
    else:
        ids, _ = pad(PROMPTS)
        state = ef.prefill(engine, state, ef.embed(engine, ids), lengths)
    for step in range(STEPS + 1):
        logits = np.asarray(state.io.logits)
        for r, (ref, ref_tokens) in enumerate(hf_runs):
            rel = _rel(logits[r], ref[step])
            assert rel < 1e-4, f"row {r} step {step}: relative logit error {rel:.2e}"
            assert int(logits[r].argmax()) == int(ref_tokens[step]), f"row {r} step {step}"
        if step < STEPS:
            state = ef.decode(engine, state, logits.argmax(-1).astype(np.int32))
    assert recurrent_addresses(state) == before  # every KV and recurrent buffer kept its place


def test_prefill_logits_equal_a_transformers_forward(engine, hf_model):
    ids, lengths = pad(PROMPTS)
    state = ef.create_state(engine.config, len(PROMPTS))
    state = ef.prefill(engine, state, ef.embed(engine, ids), lengths)
    for r, p in enumerate(PROMPTS):
        with torch.no_grad():
            ref = hf_model(torch.tensor([p])).logits[0, -1].numpy()
        assert _rel(np.asarray(state.io.logits)[r], ref) < 1e-5


def test_decode_loops_give_transformers_greedy_tokens(engine, hf_runs):
    """``decode_while`` (one jitted while loop) and the Python loop thread the recurrent state
    like ``decode``: both give transformers' greedy tokens."""
    ids, lengths = pad(PROMPTS)
    config, params = ef.make_sampling_params(2, vocab_size=256, top_k=1)
    limits = loops.token_limits(engine, lengths, STEPS)
    results = []
    for run in (loops.decode_while, loops.decode_python):
        state = ef.create_state(engine.config, 2)
        state = ef.prefill(engine, state, ef.embed(engine, ids), lengths)
        before = recurrent_addresses(state)
        state, res = run(
            engine, state, config, params, jax.random.PRNGKey(0), limits,
            eos_ids=(), max_new_tokens=STEPS,
        )  # fmt: skip
        assert recurrent_addresses(state) == before
        results.append(np.asarray(jax.device_get(res.tokens))[:, :STEPS])
    for r, (_, ref_tokens) in enumerate(hf_runs):
        np.testing.assert_array_equal(results[0][r], ref_tokens[:STEPS])
        np.testing.assert_array_equal(results[1][r], ref_tokens[:STEPS])


def test_continuous_batching_admits_rows_with_their_recurrent_state(engine, hf_model, hf_runs):
    """Requests prefilled in chunks of 4 and inserted mid-decode (a third one reusing a freed
    row) give transformers' greedy tokens."""
    from edgellm_fn.runtime.batching import Request, Scheduler

    third = [7, 19, 33, 2, 101, 45, 6, 90, 12]
    want = [hf_runs[0][1][:10], hf_runs[1][1][:6], hf_decode(hf_model, third, 7)[1][:8]]
    out: dict[int, list[int]] = {0: [], 1: [], 2: []}
    sched = Scheduler(engine, eos_ids=(), max_batch=2, chunk=4)

    def request(i, prompt):
        return Request(
            prompt=prompt,
            max_tokens=len(want[i]),
            temperature=0.0,
            on_token=lambda t, *_, i=i: out[i].append(t) and False,
        )

    sched.submit(request(0, PROMPTS[0]))
    for _ in range(5):
        sched.step()
    sched.submit(request(1, PROMPTS[1]))
    sched.submit(request(2, third))
    sched.run_until_idle()
    for i in range(3):
        assert out[i] == [int(t) for t in want[i]], f"request {i}"


def test_a_new_request_starts_from_zeroed_state(engine):
    """Request B prefilled on the state request A used equals B on a fresh state."""
    a, b = pad([[9, 8, 7, 6, 5, 4, 3, 2, 1, 10], [100, 101, 102]]), pad(PROMPTS)
    state = ef.create_state(engine.config, 2)
    state = ef.prefill(engine, state, ef.embed(engine, a[0]), a[1])
    for _ in range(3):
        state = ef.decode(engine, state, np.asarray(state.io.logits).argmax(-1).astype(np.int32))
    assert float(np.abs(np.asarray(state.res.recurrent.ssm[0])).max()) > 0
    reused = ef.prefill(engine, state, ef.embed(engine, b[0]), b[1])
    fresh = ef.prefill(engine, ef.create_state(engine.config, 2), ef.embed(engine, b[0]), b[1])
    np.testing.assert_array_equal(np.asarray(reused.io.logits), np.asarray(fresh.io.logits))
    for x, y in zip(reused.res.recurrent.ssm, fresh.res.recurrent.ssm, strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    tok = np.asarray(fresh.io.logits).argmax(-1).astype(np.int32)
    np.testing.assert_array_equal(
        np.asarray(ef.decode(engine, reused, tok).io.logits),
        np.asarray(ef.decode(engine, fresh, tok).io.logits),
    )


def test_prefix_cache_restore_equals_full_prefill(engine):
    """A saved system prompt (KV + SSM/conv state at its end) restored into one row, the rest
    prefilled with append: logits and the next decode step equal a full prefill."""
    system = PROMPTS[0][:7]
    prompts = [system + [77, 78, 79], [44, 8, 120, 61, 250, 3]]  # row 1: no cached prefix
    state = ef.create_state(engine.config, 1)
    state = ef.prefill(engine, state, ef.embed(engine, np.array([system])), np.array([7]))
    with pytest.raises(InputError, match="recurrent state exists only at the row's end"):
        save_prefix(state, 0, system[:5])
    store = PrefixStore(vocab_size=256)
    store.add(save_prefix(state, 0, system))
    state, reused = prefill_with_prefixes(engine, ef.create_state(engine.config, 2), prompts, store)
    assert reused == [7, 0]
    ids, lengths = pad(prompts)
    full = ef.prefill(engine, ef.create_state(engine.config, 2), ef.embed(engine, ids), lengths)
    ours, ref = np.asarray(state.io.logits), np.asarray(full.io.logits)
    assert _rel(ours, ref) < 1e-5
    tok = ref.argmax(-1).astype(np.int32)
    ours = np.asarray(ef.decode(engine, state, tok).io.logits)
    assert _rel(ours, np.asarray(ef.decode(engine, full, tok).io.logits)) < 1e-5
    # The whole entry or nothing: a prompt that ends inside the entry reuses none of it.
    assert store.lookup(system[:4] + [1, 2])[1] == 0
    assert store.lookup(system)[1] == 0  # at most len - 1 tokens reused, and the entry is 7


def test_bfloat16_matches_transformers_bfloat16(ckpt):
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.bfloat16).eval()
    engine = make_engine(ckpt, dtype="bfloat16", batch=2, max_input_len=16, kv_capacity=40)
    ref, ref_tokens = hf_decode(model, PROMPTS[0], 8)
    state = ef.create_state(engine.config, 1)
    ids = np.array([PROMPTS[0]], np.int32)
    state = ef.prefill(engine, state, ef.embed(engine, ids), np.array([len(PROMPTS[0])]))
    for step in range(9):
        logits = np.asarray(state.io.logits)[0]
        assert _rel(logits, ref[step]) < 5e-2, f"bf16 step {step}"
        assert int(logits.argmax()) == int(ref_tokens[step]), f"bf16 step {step}"
        state = ef.decode(engine, state, np.array([ref_tokens[step]], np.int32))


@pytest.mark.parametrize(
    "edit, match",
    [
        # conv_dim 160 (+ z and dt: in_proj 296 rows); the checkpoint's is 192 (328 rows)
        (dict(ssm_state_size=8), r"in_proj.weight' has shape \[328, 64\] \(expected \[296, 64\]"),
        (dict(conv_kernel=3), r"conv1d.weight' has shape \[192, 1, 4\] \(expected \[192, 1, 3\]"),
    ],
)
def test_checkpoint_with_inconsistent_conv_dims_is_refused(ckpt, tmp_path, edit, match):
    import json
    import shutil

    for name in ("config.json", "model.safetensors"):
        shutil.copy(f"{ckpt}/{name}", tmp_path / name)
    raw = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**raw, **edit}))
    with pytest.raises(CheckpointError, match=match):
        ef.load_checkpoint(tmp_path)


def test_unsupported_paths_are_refused_by_name(engine):
    from edgellm_fn.models.onnx.export import check_exportable

    with pytest.raises(ConfigError, match="hybrid models run on the xla provider only"):
        check_exportable(engine.config)
    with pytest.raises(ConfigError, match="not implemented for hybrid models"):
        ef.EngineConfig.create(engine.config.model, max_lora_rank=4, max_loras=1)
    forced = ef.XlaEngine(engine.config, engine.params, kernels="on")
    with pytest.raises(EngineError, match="hybrid Mamba2 models have no fused decode kernels"):
        forced.decode_path(1)
    assert engine.decode_path(1)[0] == "reference"
