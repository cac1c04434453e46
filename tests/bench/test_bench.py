"""The benchmark harness on CPU with the tiny preset: rows, roofline arithmetic, equal work."""

from __future__ import annotations

import dataclasses
import json
import math
import time

import jax
import numpy as np
import pytest

from edgellm_fn import cli
from edgellm_fn.bench.ceilings import (
    kv_bytes,
    prefill_flops,
    rooflines,
    weight_bytes_per_decode_step,
)
from edgellm_fn.bench.presets import PRESETS, get_preset, param_shapes, random_params
from edgellm_fn.bench.report import REQUIRED, plot, table
from edgellm_fn.bench.report import main as report_main
from edgellm_fn.bench.run import (
    CompileTimeout,
    RunSpec,
    build_engine,
    greedy_tokens,
    measure,
    run_matrix,
    time_limit,
)
from edgellm_fn.bench.systems import NaiveRunner, XlaRunner
from edgellm_fn.errors import InputError

TINY = get_preset("tiny")


def tiny_spec(**kw) -> RunSpec:
    base = dict(
        preset=TINY,
        batches=(1, 2),
        contexts=(8,),
        steps=4,
        warmup=1,
        kv_capacity=32,
        peers=("naive", "hf"),
    )
    return RunSpec(**{**base, **kw})


@pytest.fixture(scope="module")
def rows():
    return run_matrix(tiny_spec())


def test_rows_have_every_field_and_sane_values(rows):
    assert {(r["system"], r["batch"]) for r in rows} == {
        (s, b) for s in ("edgellm_fn/xla", "naive-jax", "hf-eager") for b in (1, 2)
    }
    for r in rows:
        assert set(REQUIRED) <= set(r), set(REQUIRED) - set(r)
        assert r["status"] == "ok", r["status"]
        assert r["model"] == "tiny" and r["context"] == 8 and r["steps"] == 4
        assert 0 < r["decode_ms_p10"] <= r["decode_ms"] <= r["decode_ms_p90"] < 10_000
        assert r["prefill_ms"] > 0 and r["copy_gbps"] > 0 and r["matmul_tflops"] > 0
        assert r["tokens_per_s"] == pytest.approx(r["batch"] * 1000 / r["decode_ms"])
        assert r["roofline_fraction"] == pytest.approx(r["roofline_ms"] / r["decode_ms"])
        assert r["roofline_ms"] == pytest.approx(
            (r["weight_bytes"] + r["kv_bytes"]) / (r["copy_gbps"] * 1e9) * 1e3
        )
        assert r["prefill_roofline_ms"] == pytest.approx(
            r["prefill_flops"] / (r["matmul_tflops"] * 1e12) * 1e3
        )
        assert r["gpu"].startswith("cpu: ") and len(r["date"]) == 10
        assert r["copy_method"] == "jitted jnp.copy" and r["decode_b2b_ms"] > 0
        ours = r["system"] == "edgellm_fn/xla"
        assert (r["decode_while_ms"] is not None) == ours == (r["step_launches"] is not None)
        if ours:
            assert 0 < r["decode_while_ms"] < 10_000 and r["step_launches"] > 10
    json.dumps(rows)  # serializable as written


def test_tiny_roofline_numbers_by_hand():
    # tiny: H=128, F=256, L=2, Hq=4, Hkv=2, D=32, V=512, tied, bf16.
    per_layer = 128 * (128 + 2 * 64) + 128 * 128 + 128 * 512 + 256 * 128 + 2 * 128
    assert per_layer == 147712
    weights = 2 * (2 * per_layer + 128 + 512 * 128)  # layers + final norm + lm_head (= embed)
    m = TINY.model
    assert weight_bytes_per_decode_step(m, 1, "bfloat16") == weights + 2 * 128  # + 1 embed row
    assert weight_bytes_per_decode_step(m, 8, "bfloat16") == weights + 8 * 2 * 128
    assert kv_bytes(m, 3, 100, "bfloat16") == 2 * 2 * 2 * 2 * 32 * 3 * 100
    dense = 2 * 2 * (per_layer - 256) * 2 * 32  # B=2, S=32
    head = 2 * 128 * 512 * 2
    attn = 2 * 4 * 2 * 4 * 32 * 32 * 33 / 2
    assert prefill_flops(m, 2, 32) == dense + head + attn
    limits = {"copy_gbps": 2.0, "matmul_tflops": 0.5}
    r = rooflines(m, batch=1, context=10, dtype="bfloat16", kv_dtype="bfloat16", limits=limits)
    assert r["roofline_ms"] == pytest.approx((weights + 256 + 5120) / 2e9 * 1e3)
    assert r["prefill_roofline_ms"] == pytest.approx(prefill_flops(m, 1, 10) / 0.5e12 * 1e3)


def _bytes_of(cfg, dtype: str) -> tuple[int, int]:
    """(all param bytes, embedding bytes) from the arrays random_params would make."""
    shapes = jax.eval_shape(lambda k: random_params(cfg, k, dtype), jax.random.PRNGKey(0))
    total = sum(x.size * x.dtype.itemsize for x in jax.tree_util.tree_leaves(shapes))
    return total, shapes["embed"].size * shapes["embed"].dtype.itemsize


@pytest.mark.parametrize("name", sorted(PRESETS))
@pytest.mark.parametrize("tied", [True, False])
def test_weight_bytes_match_the_params_pytree(name, tied):
    raw = {**PRESETS[name].hf_config, "tie_word_embeddings": tied}
    cfg = dataclasses.replace(PRESETS[name], hf_config=raw).model
    total, embed = _bytes_of(cfg, "bfloat16")
    row = 2 * cfg.hidden_size
    # Tied: every param is read (the embedding as lm_head) + one embedding row per token.
    # Untied: the embedding is only looked up (one row per token); lm_head is read whole.
    expected = total + 4 * row if tied else total - embed + 4 * row
    assert weight_bytes_per_decode_step(cfg, 4, "bfloat16") == expected


def test_preset_shapes_are_the_public_models():
    llama = PRESETS["llama-3.2-1b"].model
    assert (llama.hidden_size, llama.num_hidden_layers, llama.head_dim) == (2048, 16, 64)
    assert (llama.num_attention_heads, llama.num_key_value_heads) == (32, 8)
    assert (llama.intermediate_size, llama.vocab_size, llama.tie_word_embeddings) == (
        8192,
        128256,
        True,
    )
    assert (llama.rope.rope_type, llama.rope.factor, llama.rope.theta) == ("llama3", 32.0, 5e5)
    qwen2 = PRESETS["qwen2.5-0.5b"].model
    assert (qwen2.hidden_size, qwen2.num_hidden_layers, qwen2.head_dim, qwen2.qkv_bias) == (
        896,
        24,
        64,
        True,
    )
    qwen3 = PRESETS["qwen3-1.7b"].model
    assert (qwen3.hidden_size, qwen3.num_hidden_layers, qwen3.head_dim, qwen3.qk_norm) == (
        2048,
        28,
        128,
        True,
    )
    # Billions of parameters, counted from the params pytree (embedding once: tied).
    counts = {
        n: sum(math.prod(s) for s in jax.tree_util.tree_leaves(
            param_shapes(PRESETS[n].model), is_leaf=lambda x: isinstance(x, tuple)
        ))
        for n in ("llama-3.2-1b", "qwen2.5-0.5b", "qwen3-1.7b", "llama-3.1-8b", "llama-3.1-70b")
    }  # fmt: skip
    assert 1.23e9 < counts["llama-3.2-1b"] < 1.24e9
    assert 8.02e9 < counts["llama-3.1-8b"] < 8.04e9
    assert 70.5e9 < counts["llama-3.1-70b"] < 70.6e9
    assert 0.49e9 < counts["qwen2.5-0.5b"] < 0.50e9
    assert 1.7e9 < counts["qwen3-1.7b"] < 1.73e9


def test_random_params_match_the_model_layout_and_dtype():
    params = random_params(TINY.model, jax.random.PRNGKey(0), "bfloat16")
    shapes = param_shapes(TINY.model)
    got = jax.tree_util.tree_map(lambda x: tuple(x.shape), params)
    assert got == shapes
    assert {str(x.dtype) for x in jax.tree_util.tree_leaves(params)} == {"bfloat16"}
    assert float(np.std(np.asarray(params["embed"], np.float32))) == pytest.approx(1.0, rel=0.1)


SMALL = dict(
    vocab_size=512,
    hidden_size=128,
    intermediate_size=256,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=32,
    tie_word_embeddings=False,  # tied random weights make every step repeat its input token
)


def small_engine(family: str):
    """A float32 engine of ``family``'s preset shrunk to SMALL (untied, so tokens vary)."""
    name = {"llama": "tiny", "qwen2": "qwen2.5-0.5b", "qwen3": "qwen3-1.7b"}[family]
    preset = dataclasses.replace(PRESETS[name], hf_config={**PRESETS[name].hf_config, **SMALL})
    spec = tiny_spec(preset=preset, dtype="float32", batches=(2,), contexts=(12,), steps=10)
    return preset, build_engine(spec)


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3"])
def test_peers_produce_edgellm_greedy_tokens(family):
    from edgellm_fn.bench.hf import HfEagerRunner, build_hf_model

    preset, engine = small_engine(family)
    ids = np.random.default_rng(3).integers(0, 512, (2, 12), dtype=np.int32)
    want = greedy_tokens(XlaRunner(engine, 2), ids, 10)
    assert want.shape == (2, 11) and len(np.unique(want)) > 5  # a real, varied sequence
    naive = greedy_tokens(NaiveRunner(engine, 2), ids, 10)
    model = build_hf_model(preset.hf_config, engine.config, engine.params)
    hf = greedy_tokens(HfEagerRunner(model, 2), ids, 10)
    np.testing.assert_array_equal(naive, want)
    np.testing.assert_array_equal(hf, want)


def test_a_second_start_restarts_from_an_empty_cache():
    _, engine = small_engine("llama")
    ids = np.random.default_rng(4).integers(0, 512, (2, 12), dtype=np.int32)
    for runner in (XlaRunner(engine, 2), NaiveRunner(engine, 2)):
        first = greedy_tokens(runner, ids, 4)
        np.testing.assert_array_equal(greedy_tokens(runner, ids, 4), first)


class CountingRunner:
    system = "fake"

    def __init__(self, delay: float = 0.0):
        self.calls: list[str] = []
        self.delay = delay

    def start(self, ids):
        self.calls.append("start")
        time.sleep(self.delay)
        return 0

    def step(self, token):
        self.calls.append("step")
        return token + 1

    def sync(self, token):
        self.calls.append("sync")

    def numpy(self, token):
        return np.array([token])

    def loop_seconds(self, ids, steps):
        return None

    def step_launches(self, token):
        return None


def test_measure_times_every_step_after_warmup_and_syncs_each():
    r = CountingRunner()
    out = measure(r, np.zeros((2, 5), np.int32), steps=7, warmup=3)
    assert r.calls[:4] == ["start", "sync", "start", "sync"]
    assert r.calls[4:24] == ["step", "sync"] * 10
    assert r.calls[24:] == ["start", "sync"] + ["step"] * 7 + ["sync"]  # back to back
    assert out["decode_b2b_ms"] > 0 and out["decode_while_ms"] is None
    assert out["prefill_tokens_per_s"] == pytest.approx(10 / (out["prefill_ms"] / 1e3))
    assert out["tokens_per_s"] == pytest.approx(2e3 / out["decode_ms"])


def test_compile_time_limit_raises_and_is_recorded():
    with pytest.raises(CompileTimeout, match=r"did not compile and warm up within 0.2 s"):
        measure(CountingRunner(delay=2.0), np.zeros((1, 2), np.int32), steps=1, warmup=1,
                limit_s=0.2)  # fmt: skip
    with time_limit(5.0):  # the timer is disarmed on exit
        pass
    time.sleep(0.01)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        (
            dict(contexts=(30,), steps=4, warmup=1, kv_capacity=32),
            r"--context=30 \+ --warmup=1 \+ --steps=4 needs 35 KV slots \(expected <= --kv-capacity=32\); lower --steps or --context, or raise --kv-capacity",
        ),
        (
            dict(peers=("hf", "vllm")),
            r"--peers=hf,vllm has unknown \['vllm'\] \(expected a comma-separated subset of hf,hf-compile,naive\)",
        ),
        (dict(batches=(0,)), r"--batch=\[0\] \(expected integers >= 1\)"),
        (dict(steps=0), r"--steps=0 --warmup=1 \(expected >= 1 each\)"),
    ],
)
def test_bad_run_specs_name_the_flag_and_the_limit(kw, match):
    with pytest.raises(InputError, match=match):
        tiny_spec(**kw)


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(
        InputError,
        match=r"--preset='llama-9b' \(expected one of \['llama-3.1-70b', 'llama-3.1-8b', "
        r"'llama-3.2-1b', 'qwen2.5-0.5b', 'qwen3-1.7b', 'tiny'\]\)",
    ):
        get_preset("llama-9b")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--preset", "nope"], "bench: --preset='nope' (expected one of"),
        (
            ["--preset", "tiny", "--context", "250", "--steps", "10"],
            "--context=250 + --warmup=3 + --steps=10 needs 263 KV slots (expected <= --kv-capacity=256)",
        ),
        (["--preset", "tiny", "--peers", "hf,trt"], "has unknown ['trt']"),
        (["--model", "/no/such/dir", "--peers", "hf"], "bench: --peers needs --preset"),
    ],
)
def test_cli_errors_exit_2_with_the_message(argv, message, capsys):
    assert cli.main(["bench", *argv]) == 2
    assert message in capsys.readouterr().err


def test_cli_tiny_run_writes_json_plot_and_prints_the_table_last(tmp_path, capsys):
    out = tmp_path / "r.json"
    argv = ["bench", "--preset", "tiny", "--batch", "1", "--context", "8", "--steps", "3"]
    assert cli.main([*argv, "--warmup", "1", "--peers", "", "--output", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert [(r["system"], r["status"]) for r in rows] == [("edgellm_fn/xla", "ok")]
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[0].split()[:4] == ["system", "model", "B", "ctx"]
    assert printed[-1].startswith("limits measured on cpu: ")


def test_report_merges_files_and_shows_failed_rows(rows, tmp_path, capsys):
    failed = dict(rows[0], system="hf-compile", status="failed: CompileTimeout: too slow")
    failed.update(decode_ms=None, tokens_per_s=None, prefill_ms=None, roofline_fraction=None)
    (tmp_path / "a.json").write_text(json.dumps(rows))
    (tmp_path / "b.json").write_text(json.dumps([failed]))
    merged = tmp_path / "all.json"
    argv = [str(tmp_path / n) for n in ("a.json", "b.json", "gone.json")]
    assert report_main([*argv, "--output", str(merged), "--plot", str(tmp_path / "p.png")]) == 0
    assert len(json.loads(merged.read_text())) == len(rows) + 1
    text = capsys.readouterr().out
    assert f"missing result file (that run wrote nothing): {tmp_path / 'gone.json'}" in text
    assert "failed: CompileTimeout: too slow" in table([failed])
    assert plot([failed], tmp_path / "empty.png")  # no ok rows: still a valid (empty) plot


@pytest.mark.gpu
def test_gpu_peers_and_compiled_hf_produce_edgellm_tokens():
    from edgellm_fn.bench.hf import HfCompileRunner, HfEagerRunner, build_hf_model

    preset, engine = small_engine("qwen3")
    ids = np.random.default_rng(3).integers(0, 512, (2, 12), dtype=np.int32)
    want = greedy_tokens(XlaRunner(engine, 2), ids, 10)
    model = build_hf_model(preset.hf_config, engine.config, engine.params)
    assert model.device.type == "cuda"
    for runner in (NaiveRunner(engine, 2), HfEagerRunner(model, 2), HfCompileRunner(model, 2, 32)):
        np.testing.assert_array_equal(greedy_tokens(runner, ids, 10), want, err_msg=runner.system)
