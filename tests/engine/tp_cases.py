"""Tensor parallelism on 4 CPU devices (``engine/sharding.py``).

Not collected by the main suite (the file name has no ``test_`` prefix): ``test_tensor_parallel``
runs it in a subprocess with ``XLA_FLAGS=--xla_force_host_platform_device_count=4``, which must
be set before JAX starts its CPU backend.
"""

from __future__ import annotations

import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import edgellm_fn as ef
from edgellm_fn import cli
from edgellm_fn.engine import sharding
from edgellm_fn.runtime import steps

from ..conftest import FAMILIES, make_hf_model, write_char_tokenizer
from ..helpers import make_engine, pad

N = 4
LIMITS = dict(max_batch_size=2, max_input_len=16, kv_capacity=32)
PROMPTS = [[5, 9, 13, 7, 22, 3], [40, 41]]
STEPS = 16


@pytest.fixture(scope="module", autouse=True)
def four_devices():
    assert len(jax.devices()) == N, (
        f"expected {N} CPU devices, got {len(jax.devices())}: run with "
        f"XLA_FLAGS=--xla_force_host_platform_device_count={N} (test_tensor_parallel does)"
    )


def shard_pointers(state) -> list[int]:
    return [
        s.data.unsafe_buffer_pointer()
        for a in jax.tree_util.tree_leaves(state)
        for s in a.addressable_shards
    ]


def run_greedy(engine) -> dict:
    """Prefill + ``STEPS`` greedy decode steps; logits ``[STEPS+1, B, V]`` and buffer checks."""
    ids, lengths = pad(PROMPTS)
    state = ef.create_state(engine.config, len(PROMPTS))
    state = ef.prefill(engine, state, ef.embed(engine, ids), lengths)
    shardings = [a.sharding for a in jax.tree_util.tree_leaves(state)]
    pointers = shard_pointers(state)
    logits = [np.array(state.io.logits)]  # a copy: a numpy view would pin the buffer
    for _ in range(STEPS):
        state = ef.decode(engine, state, logits[-1].argmax(-1).astype(np.int32))
        logits.append(np.array(state.io.logits))
    return {
        "logits": np.stack(logits),
        "state": state,
        "shardings_kept": [a.sharding for a in jax.tree_util.tree_leaves(state)] == shardings,
        "pointers_kept": shard_pointers(state) == pointers,
    }


@pytest.mark.parametrize("family", list(FAMILIES))
def test_sharded_logits_equal_single_device_logits(checkpoints, family):
    single = run_greedy(make_engine(checkpoints[family], batch=2, max_input_len=16, kv_capacity=32))
    engine = ef.load_engine(checkpoints[family], tensor_parallel=N, **LIMITS)
    tp = run_greedy(engine)
    np.testing.assert_allclose(tp["logits"], single["logits"], rtol=1e-5, atol=2e-5)
    np.testing.assert_array_equal(tp["logits"].argmax(-1), single["logits"].argmax(-1))
    # Donation keeps every state leaf on its sharding and every shard at its address.
    assert tp["shardings_kept"] and tp["pointers_kept"]
    kv = tp["state"].kv.k[0]
    split = FAMILIES[family]["kwargs"]["num_key_value_heads"] % N == 0
    P = jax.sharding.PartitionSpec
    assert kv.sharding.spec == (P(None, "model") if split else P())
    assert len(kv.sharding.device_set) == N
    assert engine.decode_path(2) == ("reference", f"tensor_parallel={N} (kernels: 1 device)")


def test_two_devices_split_two_kv_heads(checkpoints):
    """llama has 2 KV heads: replicated on 4 devices, split on 2."""
    engine = ef.load_engine(checkpoints["llama"], tensor_parallel=2, **LIMITS)
    assert engine.params["layers"][0]["wk"].addressable_shards[0].data.shape == (16, 64)
    single = run_greedy(
        make_engine(checkpoints["llama"], batch=2, max_input_len=16, kv_capacity=32)
    )
    tp = run_greedy(engine)
    np.testing.assert_allclose(tp["logits"], single["logits"], rtol=1e-5, atol=2e-5)
    assert tp["state"].kv.k[0].addressable_shards[0].data.shape == (2, 1, 32, 16)


def _shard_shapes(x: jax.Array) -> set[tuple[int, ...]]:
    return {tuple(s.data.shape) for s in x.addressable_shards}


@pytest.mark.parametrize(
    ("family", "kv_rows"),
    [("qwen2", 64 // N), ("llama", 32)],  # 4 KV heads split; 2 KV heads (GQA) replicated
)
def test_each_device_holds_its_shard(checkpoints, family, kv_rows):
    engine = ef.load_engine(checkpoints[family], tensor_parallel=N, **LIMITS)
    ref = make_engine(checkpoints[family], batch=2, max_input_len=16, kv_capacity=32)
    h, f, q, v = 64, 112, 64, 128  # hidden, intermediate, Hq*D, vocab
    lp = engine.params["layers"][0]
    expected = {
        "wq": (q // N, h),
        "wk": (kv_rows, h),
        "wv": (kv_rows, h),
        "wo": (h, q // N),
        "w_gate": (f // N, h),
        "w_up": (f // N, h),
        "w_down": (h, f // N),
    }
    if family == "qwen2":
        expected |= {"bq": (q // N,), "bk": (kv_rows,), "bv": (kv_rows,)}
    for name, shape in expected.items():
        assert _shard_shapes(lp[name]) == {shape}, name
        assert len(lp[name].addressable_shards) == N
    assert "wqkv" not in lp and "w_gate_up" not in lp
    assert _shard_shapes(engine.params["embed"]) == {(v // N, h)}
    if "lm_head" in engine.params:
        assert _shard_shapes(engine.params["lm_head"]) == {(v // N, h)}
    for norm in ("attn_norm", "mlp_norm"):
        assert _shard_shapes(lp[norm]) == {(h,)}  # replicated
    # The shards, in device order, are the checkpoint's rows: q heads of device d are d's own.
    wq = np.concatenate([np.asarray(s.data) for s in lp["wq"].addressable_shards])
    np.testing.assert_array_equal(wq, np.asarray(ref.params["layers"][0]["wqkv"])[:q])
    devices = [s.device for s in lp["wq"].addressable_shards]
    assert devices == jax.devices()[:N]
    # The KV cache follows wk/wv: split on the kv-head axis, or whole on every device.
    state = ef.create_state(engine.config, 2)
    heads = FAMILIES[family]["kwargs"]["num_key_value_heads"]
    kv_heads = heads // N if heads % N == 0 else heads
    assert _shard_shapes(state.kv.k[1]) == {(2, kv_heads, 32, 16)}
    assert _shard_shapes(state.io.logits) == {(2, v)}  # replicated
    pointers = [s.data.unsafe_buffer_pointer() for s in state.kv.k[1].addressable_shards]
    assert len(set(pointers)) == N  # one buffer per device, even when replicated


def test_decode_step_all_reduces_activations_and_never_gathers_weights(checkpoints):
    """Per decode step: one all-reduce [B, 1, H] for the vocab-parallel embedding and two per
    layer (o, down), one all-gather of the logits [B, V]; nothing else moves between devices."""
    engine = ef.load_engine(checkpoints["qwen2"], tensor_parallel=N, **LIMITS)
    state = ef.create_state(engine.config, 2)
    hlo = steps.decode_tokens_jit.lower(engine, state, jnp.zeros(2, jnp.int32)).compile()
    text = hlo.as_text()

    def shapes(op: str) -> list[str]:
        return re.findall(rf"= (\S+) {op}(?:-start)?\(", text)

    assert [s.split("{")[0] for s in shapes("all-reduce")] == ["f32[2,1,64]"] * (1 + 2 * 2)
    assert [s.split("{")[0] for s in shapes("all-gather")] == ["f32[2,1,128]"]
    for op in ("all-to-all", "collective-permute", "reduce-scatter"):
        assert shapes(op) == [], op


def test_while_loop_generate_equals_single_device(checkpoints):
    from edgellm_fn.text.tokenizer import Tokenizer

    tok = Tokenizer.from_dir(checkpoints["gemma2"])
    out = []
    for tp in (1, N):
        engine = ef.load_engine(checkpoints["gemma2"], tensor_parallel=tp, **LIMITS)
        done = ef.generate(engine, tok, PROMPTS, max_new_tokens=10, top_k=1, loop="while")
        out.append([c.tokens for c in done])
    assert out[0] == out[1] and all(out[0])


def test_continuous_batching_under_tensor_parallelism(checkpoints):
    """The serve loop (``Scheduler``: rows admitted mid-decode, chunked prefill) on 4 devices."""
    from edgellm_fn.runtime.batching import Request, Scheduler

    prompts = [[5, 9, 13, 7, 22, 3, 8, 10, 11], [40, 41], [3, 4, 5, 6]]
    runs = []
    for tp in (1, N):
        engine = ef.load_engine(checkpoints["qwen2"], tensor_parallel=tp, **LIMITS)
        sched = Scheduler(engine, eos_ids=(), max_batch=2, chunk=4)
        out: dict[int, list[int]] = {i: [] for i in range(len(prompts))}
        for i, p in enumerate(prompts):
            on_token = lambda t, *_, i=i, out=out: out[i].append(t) and False  # noqa: E731
            sched.submit(Request(prompt=p, max_tokens=6, temperature=0.0, on_token=on_token))
            sched.step()
        sched.run_until_idle()
        runs.append(out)
    assert runs[0] == runs[1] and all(len(t) == 6 for t in runs[0].values())


def test_lora_adapters_under_tensor_parallelism(checkpoints, hf_models, tmp_path):
    from ..lora_common import greedy_lora, make_adapter

    make_adapter(hf_models["llama"], tmp_path / "a")
    runs = []
    for tp in (1, N):
        engine = ef.load_engine(
            checkpoints["llama"], max_lora_rank=4, max_loras=1, tensor_parallel=tp, **LIMITS
        )
        bank = ef.load_lora_bank(engine.config, {"a": str(tmp_path / "a")})
        runs.append(greedy_lora(engine, bank, PROMPTS, ["a", None], 4))
    np.testing.assert_allclose(runs[1]["logits"], runs[0]["logits"], rtol=1e-5, atol=2e-5)


def _generate(ckpt: str, *extra: str) -> list[str]:
    return [
        "generate", "--model", ckpt, "--prompt", "def add(a, b):", "--max-new-tokens", "8",
        "--max-batch", "1", "--max-input-len", "40", "--kv-capacity", "56", "--json", *extra,
    ]  # fmt: skip


def test_cli_tensor_parallel_equals_single_device(checkpoints, capsys):
    ckpt = checkpoints["phi3"]
    assert cli.main(_generate(ckpt)) == 0
    single = json.loads(capsys.readouterr().out)["responses"][0]
    assert cli.main(_generate(ckpt, "--tensor-parallel", str(N))) == 0
    tp = json.loads(capsys.readouterr().out)["responses"][0]
    assert tp == single and single["output_text"]
    assert os.environ["NCCL_NVLS_ENABLE"] == "0"


def test_cli_bench_model_tensor_parallel(checkpoints, capsys, tmp_path):
    out = tmp_path / "bench.json"
    argv = ["bench", "--model", checkpoints["qwen3"], "--tensor-parallel", str(N), "--batch", "1"]
    argv += ["--context", "8", "--steps", "2", "--kv-capacity", "16", "--max-input-len", "8"]
    argv += ["--output", str(out)]
    assert cli.main(argv) == 0
    rows = json.loads(out.read_text())
    rows = rows["rows"] if isinstance(rows, dict) else rows
    assert rows[0]["tensor_parallel"] == N and rows[0]["decode_ms"] > 0


def test_bench_preset_draws_sharded_random_params():
    from edgellm_fn.bench.presets import get_preset
    from edgellm_fn.bench.run import RunSpec, build_engine

    spec = RunSpec(
        preset=get_preset("tiny"), batches=(1,), contexts=(8,), steps=1, warmup=1,
        kv_capacity=16, peers=(), dtype="float32", tensor_parallel=N,
    )  # fmt: skip
    engine = build_engine(spec)
    assert _shard_shapes(engine.params["layers"][0]["wq"]) == {(4 * 32 // N, 128)}
    assert _shard_shapes(engine.params["layers"][0]["w_down"]) == {(128, 256 // N)}
    with pytest.raises(ef.InputError, match=r"--tensor-parallel 4 with --peers=naive \(expected"):
        RunSpec(**{**spec.__dict__, "peers": ("naive",)})


def test_serve_and_chat_take_the_flag():
    parser = cli.build_parser()
    for command in ("serve", "chat"):
        args = parser.parse_args([command, "--model", "M", "--tensor-parallel", "2"])
        assert args.tensor_parallel == 2


@pytest.mark.parametrize(
    ("n", "match"),
    [
        ("0", r"argument --tensor-parallel: 0 \(expected an integer >= 1\)"),
        ("8", r"tensor_parallel=8 \(expected <= 4, the devices JAX sees: cpu x4\); lower"),
        ("3", r"tensor_parallel=3 does not divide num_attention_heads=4 \(expected a divisor; "
              r"\[1, 2, 4\] fit"),
    ],
)  # fmt: skip
def test_cli_bad_tensor_parallel_is_a_named_error(checkpoints, capsys, n, match):
    argv = _generate(checkpoints["llama"], "--tensor-parallel", n)
    if n == "0":
        with pytest.raises(SystemExit):
            cli.main(argv)
    else:
        assert cli.main(argv) == 2
    assert re.search(match, capsys.readouterr().err)


def test_cli_draft_with_tensor_parallel_is_refused(checkpoints, capsys):
    argv = _generate(checkpoints["llama"], "--tensor-parallel", "2", "--draft", "D", "--top-k", "1")
    assert cli.main(argv) == 2
    assert "--draft with --tensor-parallel 2 (expected 1)" in capsys.readouterr().err


def test_impossible_splits_are_named_errors(checkpoints, tmp_path):
    odd = tmp_path / "odd"
    make_hf_model("llama", intermediate_size=110).save_pretrained(odd)
    write_char_tokenizer(odd)
    with pytest.raises(ef.TensorParallelError, match=r"does not divide intermediate_size=110"):
        ef.load_engine(odd, tensor_parallel=N, **LIMITS)
    with pytest.raises(ef.EngineError, match=r"kernels='on' with tensor_parallel=4 \(expected"):
        ef.load_engine(checkpoints["llama"], tensor_parallel=N, kernels="on", **LIMITS)
    with pytest.raises(ef.TensorParallelError, match=r"tensor_parallel=True \(expected an int"):
        ef.load_engine(checkpoints["llama"], tensor_parallel=True, **LIMITS)
    wrong = jax.sharding.Mesh(np.array(jax.devices()[1:3]), ("model",))
    with pytest.raises(ef.TensorParallelError, match=r"over the first N of jax.devices\(\)"):
        ef.load_engine(checkpoints["llama"], mesh=wrong, **LIMITS)
    engine = ef.load_engine(checkpoints["llama"], mesh=sharding.model_mesh(2), **LIMITS)
    assert engine.config.tensor_parallel == 2


def test_an_engine_directory_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"builder_config": {}}))
    with pytest.raises(ef.TensorParallelError, match=r"runs on the xla provider, pass the ch"):
        ef.load_engine(tmp_path, tensor_parallel=2)


def test_nvlink_multicast_stays_off(monkeypatch):
    monkeypatch.setenv("NCCL_NVLS_ENABLE", "1")
    with pytest.raises(ef.TensorParallelError, match=r"NCCL_NVLS_ENABLE='1' \(expected '0'"):
        sharding.model_mesh.__wrapped__(2)
    monkeypatch.delenv("NCCL_NVLS_ENABLE")
    sharding.model_mesh.__wrapped__(2)
    assert os.environ["NCCL_NVLS_ENABLE"] == "0"


def test_a_hybrid_model_is_refused_before_its_weights_are_read(tmp_path):
    import transformers

    from ..models.test_hybrid import make_hf_nemotron_h

    make_hf_nemotron_h().config.save_pretrained(tmp_path)  # config.json only: no weights
    assert isinstance(transformers.NemotronHConfig.from_pretrained(tmp_path).vocab_size, int)
    with pytest.raises(ef.TensorParallelError, match=r"hybrid Mamba2 model .* \(expected 1\)"):
        ef.load_engine(tmp_path, tensor_parallel=2, **LIMITS)


def test_mrope_and_deepstack_under_tensor_parallelism(tmp_path):
    """Qwen3-VL's text decoder (per-row MRoPE table, rope delta, deepstack inputs): a prefill of
    given embeddings and 3-D positions, then 6 greedy steps, equal on 1 and 4 devices."""
    from ..models.test_mrope import _hf_model

    _hf_model("qwen3_vl").save_pretrained(tmp_path)
    rng = np.random.default_rng(0)
    lengths = np.array([9, 5])
    x = jnp.asarray(rng.normal(size=(2, 9, 64)), jnp.float32)
    pos = np.broadcast_to(np.arange(9), (3, 2, 9)).copy()
    pos[1:, :, 3:6] = [[0, 1, 2]]  # an image-like block: h/w positions repeat
    deepstack = tuple(jnp.asarray(rng.normal(size=(2, 9, 64)), jnp.float32) for _ in range(2))
    runs = []
    for tp in (1, N):
        engine = ef.load_engine(tmp_path, tensor_parallel=tp, **LIMITS)
        state = ef.create_state(engine.config, 2)
        state = ef.prefill(engine, state, x, lengths, position_ids=pos, deepstack=deepstack)
        logits = [np.array(state.io.logits)]
        for _ in range(6):
            state = ef.decode(engine, state, logits[-1].argmax(-1).astype(np.int32))
            logits.append(np.array(state.io.logits))
        runs.append(np.stack(logits))
    np.testing.assert_allclose(runs[1], runs[0], rtol=1e-5, atol=2e-5)
    np.testing.assert_array_equal(runs[1].argmax(-1), runs[0].argmax(-1))
