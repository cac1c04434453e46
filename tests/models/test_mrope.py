"""Qwen2-VL, Qwen2.5-VL and Qwen3-VL text decoders against transformers: MRoPE and deepstack.

Each family is a tiny random ``*ForConditionalGeneration`` (vision tower included). transformers
runs its own vision tower and ``generate``; we feed the engine the same ``inputs_embeds``
(token embeddings with the image features scattered in), the 3-D ``position_ids`` of
``get_rope_index`` (an image grid in the middle of the prompt: t constant, h/w varying) and, for
Qwen3-VL, the deepstack features, and compare every step's logits and greedy token.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import edgellm_fn as ef
from edgellm_fn.engine.spec import build_llm_spec
from edgellm_fn.errors import ConfigError, InputError
from edgellm_fn.runtime.vl_inputs import dense_deepstack
from edgellm_fn.state.mrope import frequency_axes, mrope_cos_sin

IMG, VS, VE = 250, 251, 252  # image, vision start/end ids (inside the tiny vocabulary)
STEPS = 10  # greedy decode steps checked after the prefill
TEXT = dict(
    vocab_size=256,
    hidden_size=64,
    intermediate_size=112,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    rms_norm_eps=1e-6,
    initializer_range=0.15,
)
IDS = dict(image_token_id=IMG, video_token_id=249, vision_start_token_id=VS, vision_end_token_id=VE)
# Row 0: a 2x3 image grid (after the 2x2 merge) in the middle; row 1: a 3x2 grid, shorter row.
ROWS = [[5, 17, 99, VS] + [IMG] * 6 + [VE, 3, 64, 12], [44, 8, VS] + [IMG] * 6 + [VE, 61]]
GRIDS = [[1, 4, 6], [1, 6, 4]]


def _hf_model(family: str):
    import transformers

    torch.manual_seed(0)
    if family == "qwen3_vl":
        rope = {"rope_type": "default", "mrope_section": [4, 2, 2], "mrope_interleaved": True}
        text = dict(TEXT, head_dim=16, rope_parameters=dict(rope, rope_theta=10000.0))
        vision = dict(
            depth=2,
            hidden_size=32,
            intermediate_size=32,
            num_heads=2,
            out_hidden_size=64,
            deepstack_visual_indexes=[0, 1],
        )
        cls, cfg = "Qwen3VLForConditionalGeneration", "Qwen3VLConfig"
    else:
        rope = {"type": "mrope", "mrope_section": [2, 3, 3], "rope_theta": 10000.0}
        text = dict(TEXT, rope_scaling=rope)  # the older spelling (rope_scaling, type mrope)
        if family == "qwen2_vl":
            vision = dict(depth=1, embed_dim=32, hidden_size=64, num_heads=2)
            cls, cfg = "Qwen2VLForConditionalGeneration", "Qwen2VLConfig"
        else:
            vision = dict(
                depth=2,
                hidden_size=32,
                intermediate_size=32,
                num_heads=2,
                out_hidden_size=64,
                fullatt_block_indexes=[1],
            )
            cls, cfg = "Qwen2_5_VLForConditionalGeneration", "Qwen2_5_VLConfig"
    config = getattr(transformers, cfg)(text_config=text, vision_config=vision, **IDS)
    model = getattr(transformers, cls)(config).eval()
    if family != "qwen3_vl":  # random (non-zero) q/k/v biases
        with torch.no_grad():
            for layer in model.model.language_model.layers:
                for p in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                    p.bias.normal_(0.0, 0.2)
    return model


def _case(family: str, path) -> dict:
    """The saved checkpoint, its engine, the engine inputs of ``ROWS`` and transformers' run."""
    hf = _hf_model(family)
    hf.save_pretrained(path)
    model, params = ef.load_checkpoint(path)
    cfg = ef.EngineConfig.create(model, max_batch_size=2, max_input_len=32, kv_capacity=64)
    engine = ef.XlaEngine(cfg, params)
    vc = hf.config.vision_config
    patch = 3 * vc.temporal_patch_size * vc.patch_size**2
    gen = torch.Generator().manual_seed(1)
    lengths = np.array([len(r) for r in ROWS])
    s = int(lengths.max())
    x = np.zeros((2, s, 64), np.float32)
    pos = np.zeros((3, 2, s), np.int64)
    mask = np.zeros((2, s), bool)
    feats, deltas, ref_tokens, ref_logits = [], [], [], []
    for r, (row, grid) in enumerate(zip(ROWS, GRIDS, strict=True)):
        ids, thw = torch.tensor([row]), torch.tensor([grid])
        mm = (ids == IMG).int()
        pixels = torch.randn(int(np.prod(grid)), patch, generator=gen)
        with torch.no_grad():
            out = hf.generate(
                ids,
                pixel_values=pixels,
                image_grid_thw=thw,
                mm_token_type_ids=mm,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=STEPS + 1,
                do_sample=False,
                output_logits=True,
                return_dict_in_generate=True,
            )
            image = hf.model.get_image_features(pixels, thw)
            e = hf.model.get_input_embeddings()(ids)
            e = e.masked_scatter((ids == IMG)[..., None], torch.cat(image.pooler_output))
            p, delta = hf.model.get_rope_index(ids, mm, image_grid_thw=thw)
        x[r, : len(row)] = e[0].numpy()
        pos[:, r, : len(row)] = p[:, 0].numpy()
        mask[r, : len(row)] = np.array(row) == IMG
        if family == "qwen3_vl":
            feats.append([f[0].numpy() for f in image.deepstack_features])
        deltas.append(int(delta))
        ref_tokens.append(out.sequences[0, len(row) :].numpy())
        ref_logits.append(torch.stack(out.logits)[:, 0].numpy())
    deepstack = None
    if feats:
        per_set = [np.concatenate([f[k] for f in feats]) for k in range(len(feats[0]))]
        deepstack = dense_deepstack(mask, per_set)
    return dict(
        hf=hf,
        engine=engine,
        path=str(path),
        x=x,
        pos=pos,
        mask=mask,
        deepstack=deepstack,
        lengths=lengths,
        deltas=np.array(deltas),
        ref_tokens=np.stack(ref_tokens),  # [2, STEPS + 1]
        ref_logits=np.stack(ref_logits, 1),  # [STEPS + 1, 2, V]
    )


FAMILIES = ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"]


@pytest.fixture(scope="module")
def cases(tmp_path_factory) -> dict[str, dict]:
    return {f: _case(f, tmp_path_factory.mktemp(f)) for f in FAMILIES}


def _check_step(logits: np.ndarray, case: dict, step: int, what: str) -> None:
    for r in range(2):
        ref = case["ref_logits"][step, r]
        rel = np.abs(logits[r] - ref).max() / np.abs(ref).max()
        assert rel < 1e-4, f"{what} row {r} step {step}: relative logit error {rel:.2e}"
        assert int(logits[r].argmax()) == int(case["ref_tokens"][r, step]), f"{what} r{r} s{step}"


def _generate(engine, state, case: dict) -> None:
    """Checks the state's logits, then ``STEPS`` greedy decode steps, against transformers."""
    for step in range(STEPS + 1):
        logits = np.asarray(state.io.logits)
        _check_step(logits, case, step, engine.config.model.family)
        if step < STEPS:
            state = ef.decode(engine, state, logits.argmax(-1).astype(np.int32))


def _jx(a):
    import jax.numpy as jnp

    return jnp.asarray(a)


@pytest.mark.parametrize("family", FAMILIES)
def test_image_prompts_ragged_batch_generate_like_transformers(family, cases):
    """Two rows of different lengths, each with an image grid: prefill logits and 10 greedy
    decode steps (rope delta: positions continue after the largest one) equal transformers'
    ``generate`` on each row alone, which ran the vision tower itself."""
    case = cases[family]
    engine = case["engine"]
    state = ef.create_state(engine.config, 2)
    state = ef.prefill(
        engine,
        state,
        _jx(case["x"]),
        case["lengths"],
        position_ids=case["pos"],
        deepstack=case["deepstack"],
    )
    np.testing.assert_array_equal(np.asarray(state.res.rope_delta), case["deltas"])
    assert (case["deltas"] < 0).all()  # the grids really compress positions
    _generate(engine, state, case)


def test_chunked_prefill_splits_an_image_and_still_matches(cases):
    """The Qwen3-VL prompts prefilled in two chunks cut inside the image (each chunk with its
    own position ids and deepstack slice) give transformers' logits and tokens."""
    case = cases["qwen3_vl"]
    engine = case["engine"]
    cut = np.array([6, 5])  # both cuts fall inside the rows' image tokens
    state = ef.create_state(engine.config, 2)
    lo, hi = np.zeros(2, int), cut
    for append in (False, True):
        width = int((hi - lo).max())
        x = np.zeros((2, width, 64), np.float32)
        pos = np.zeros((3, 2, width), np.int64)
        ds = [np.zeros((2, width, 64), np.float32) for _ in case["deepstack"]]
        for r in range(2):
            n = hi[r] - lo[r]
            x[r, :n] = case["x"][r, lo[r] : hi[r]]
            pos[:, r, :n] = case["pos"][:, r, lo[r] : hi[r]]
            for d, full in zip(ds, case["deepstack"], strict=True):
                d[r, :n] = full[r, lo[r] : hi[r]]
        state = ef.prefill(engine, state, _jx(x), hi, append=append, position_ids=pos, deepstack=ds)
        lo, hi = cut, case["lengths"]
    np.testing.assert_array_equal(np.asarray(state.res.rope_delta), case["deltas"])
    _generate(engine, state, case)


def test_deepstack_features_change_the_output_exactly_as_transformers(cases):
    """With the features the prefill equals transformers' text model given the same
    ``visual_pos_masks``/``deepstack_visual_embeds``; without them it equals transformers
    without them, and the two differ."""
    case = cases["qwen3_vl"]
    engine, hf = case["engine"], case["hf"]
    mask = case["mask"]
    got = {}
    for with_features in (True, False):
        state = ef.create_state(engine.config, 2)
        ds = case["deepstack"] if with_features else None
        state = ef.prefill(
            engine, state, _jx(case["x"]), case["lengths"], position_ids=case["pos"], deepstack=ds
        )
        got[with_features] = np.asarray(state.io.logits)
        for r, n in enumerate(case["lengths"]):
            kwargs = {}
            if with_features:
                kwargs = dict(
                    visual_pos_masks=torch.tensor(mask[r : r + 1, :n]),
                    deepstack_visual_embeds=[torch.tensor(d[r, :n][mask[r, :n]]) for d in ds],
                )
            with torch.no_grad():
                out = hf.model.language_model(
                    inputs_embeds=torch.tensor(case["x"][r : r + 1, :n]),
                    position_ids=torch.tensor(case["pos"][:, r : r + 1, :n]),
                    **kwargs,
                )
                ref = hf.lm_head(out.last_hidden_state)[0, -1].numpy()
            rel = np.abs(got[with_features][r] - ref).max() / np.abs(ref).max()
            assert rel < 1e-4, f"features={with_features} row {r}: relative error {rel:.2e}"
    assert np.abs(got[True] - got[False]).max() > 1e-2  # the features matter


def test_text_prefill_resets_a_row_after_an_image_request(cases):
    """A fresh prefill without position ids on a state that served an image prompt uses text
    positions again (delta 0): its logits equal transformers' text model on the ids."""
    case = cases["qwen2_vl"]
    engine, hf = case["engine"], case["hf"]
    state = ef.create_state(engine.config, 2)
    state = ef.prefill(engine, state, _jx(case["x"]), case["lengths"], position_ids=case["pos"])
    state = ef.decode(engine, state, np.array([3, 4], np.int32))
    ids = np.array([[7, 9, 11, 13, 15, 17], [20, 22, 24, 26, 28, 30]], np.int32)
    state = ef.prefill(engine, state, ef.embed(engine, ids), np.array([6, 4]))
    np.testing.assert_array_equal(np.asarray(state.res.rope_delta), [0, 0])
    logits = np.asarray(state.io.logits)
    for r, n in enumerate((6, 4)):
        with torch.no_grad():
            out = hf.model.language_model(input_ids=torch.tensor(ids[r : r + 1, :n]))
            ref = hf.lm_head(out.last_hidden_state)[0, -1].numpy()
        assert np.abs(logits[r] - ref).max() / np.abs(ref).max() < 1e-4


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen3_vl"])
def test_cos_sin_equal_transformers_rotary_embedding(family, cases):
    """The per-token cos/sin of random 3-D positions equal transformers' text rotary module
    (contiguous sections for Qwen2-VL, interleaved for Qwen3-VL)."""
    case = cases[family]
    model = case["engine"].config.model
    pos = np.random.RandomState(0).randint(0, 40, (3, 2, 9))
    got = np.asarray(mrope_cos_sin(model, _jx(pos.astype(np.int32))))
    rotary = case["hf"].model.language_model.rotary_emb
    cos, sin = rotary(torch.zeros(1, dtype=torch.float32), torch.tensor(pos))
    half = got.shape[-1] // 2
    np.testing.assert_allclose(got[..., :half], cos[..., :half].numpy(), atol=1e-6)
    np.testing.assert_allclose(got[..., half:], sin[..., :half].numpy(), atol=1e-6)


def test_frequency_layouts():
    contiguous = ef.MRopeConfig(section=(2, 3, 3))
    np.testing.assert_array_equal(frequency_axes(contiguous, 8), [0, 0, 1, 1, 1, 2, 2, 2])
    interleaved = ef.MRopeConfig(section=(4, 2, 2), interleaved=True)
    np.testing.assert_array_equal(frequency_axes(interleaved, 8), [0, 1, 2, 0, 1, 2, 0, 0])


def test_each_vl_config_is_parsed(cases):
    q2 = ef.ModelConfig.from_file(cases["qwen2_vl"]["path"])
    assert q2.family == "qwen2_vl" and q2.qkv_bias and not q2.o_bias and not q2.qk_norm
    assert q2.mrope == ef.MRopeConfig(section=(2, 3, 3)) and q2.num_deepstack_features == 0
    q25 = ef.ModelConfig.from_file(cases["qwen2_5_vl"]["path"])
    assert q25.family == "qwen2_5_vl" and q25.mrope == q2.mrope
    q3 = ef.ModelConfig.from_file(cases["qwen3_vl"]["path"])
    assert q3.family == "qwen3_vl" and q3.qk_norm and q3.head_dim == 16
    assert q3.mrope == ef.MRopeConfig(section=(4, 2, 2), interleaved=True)
    assert q3.num_deepstack_features == 2
    # transformers 5 writes Qwen3-VL's decoder under model.language_model. (Qwen2-VL: model.)
    from safetensors import safe_open

    with safe_open(f"{cases['qwen3_vl']['path']}/model.safetensors", "np") as f:
        assert "model.language_model.embed_tokens.weight" in set(f.keys())
    # A text config saved on its own (model_type qwen3_vl_text) loads the same decoder.
    raw = _raw(cases, "qwen3_vl")
    alone = ef.ModelConfig.from_dict(dict(raw["text_config"], num_deepstack_features=2))
    assert alone.mrope == q3.mrope and alone.num_deepstack_features == 2


def _raw(cases, family: str) -> dict:
    with open(f"{cases[family]['path']}/config.json") as f:
        return json.load(f)


def _with_rope(raw: dict, **changes) -> dict:
    text = dict(raw["text_config"])
    key = "rope_parameters" if "rope_parameters" in text else "rope_scaling"
    text[key] = {**text[key], **changes}
    return {**raw, "text_config": text}


def test_bad_configs_raise_named_errors(cases):
    q2, q3 = _raw(cases, "qwen2_vl"), _raw(cases, "qwen3_vl")
    bad = [
        (_with_rope(q2, mrope_section=[2, 3, 4]), r"mrope_section=\[2, 3, 4\] sums to 9 "),
        (_with_rope(q2, mrope_section=[4, -1, 5]), r"expected 3 integers >= 0"),
        (_with_rope(q2, mrope_section=[8]), r"expected 3 integers >= 0"),
        (_with_rope(q3, mrope_interleaved=False), r"mrope_interleaved=False .*always interleaves"),
        (_with_rope(q2, mrope_interleaved=True), r"mrope_interleaved=True .*contiguously"),
        (_with_rope(q2, rope_type="yarn", factor=2.0), r"rope_type='yarn' .*not verified"),
        ({**q2, "text_config": {**q2["text_config"], "head_dim": 32}}, r"head_dim=32 .*ignores"),
        (
            {**q3, "text_config": {**q3["text_config"], "use_sliding_window": True}},
            r"use_sliding_window=True .*no sliding window",
        ),
        (
            {
                **q3,
                "vision_config": {**q3["vision_config"], "deepstack_visual_indexes": [0, 1] * 2},
            },
            r"num_deepstack_features=4 \(expected <= num_hidden_layers=3\)",
        ),
        ({**q3, "num_deepstack_features": 3}, r"contradicts .*deepstack_visual_indexes"),
        (
            {**q2, "text_config": {**q2["text_config"], "model_type": "qwen2_text"}},
            r"model_type='qwen2_text' \(expected 'qwen2_vl_text'",
        ),
    ]
    for raw, match in bad:
        with pytest.raises(ConfigError, match=match):
            ef.ModelConfig.from_dict(raw)


def test_bad_inputs_raise_before_the_state_is_donated(cases, tmp_path):
    case = cases["qwen3_vl"]
    engine = case["engine"]
    x, lengths, pos, ds = _jx(case["x"]), case["lengths"], case["pos"], case["deepstack"]
    state = ef.create_state(engine.config, 2)
    bad = [
        (dict(position_ids=pos[0]), r"position_ids has shape \[2, 14\] .*stack it three times"),
        (dict(position_ids=pos[:, :, :5]), r"expected \[3, B=2, S=14\]"),
        (dict(position_ids=pos.astype(np.float32)), r"dtype float32 \(expected integers\)"),
        (dict(position_ids=-pos - 1), r"position_ids\[0, 0, 0\]=-1 \(expected 0\.\."),
        (dict(position_ids=pos, deepstack=ds[:1]), r"1 feature sets \(expected "),
        (dict(position_ids=pos, deepstack=[d[:, :5] for d in ds]), r"deepstack\[0\] has shape"),
        (dict(position_ids=pos, deepstack=ds[0]), r"deepstack is a ndarray"),
    ]
    for kwargs, match in bad:
        with pytest.raises(InputError, match=match):
            ef.prefill(engine, state, x, lengths, **kwargs)
    q2 = cases["qwen2_vl"]["engine"]
    with pytest.raises(InputError, match=r"0 of Qwen2VLForConditionalGeneration"):
        ef.prefill(q2, ef.create_state(q2.config, 2), x, lengths, deepstack=ds)
    from ..conftest import make_hf_model

    make_hf_model("qwen2").save_pretrained(tmp_path)
    plain = ef.XlaEngine(
        ef.EngineConfig.create(ef.load_checkpoint(tmp_path)[0], max_input_len=32, kv_capacity=64),
        ef.load_checkpoint(tmp_path)[1],
    )
    ids = np.ones((1, 4), np.int32)
    with pytest.raises(InputError, match=r"position_ids given for Qwen2ForCausalLM .*1-D"):
        ef.prefill(plain, ef.create_state(plain.config, 1), ef.embed(plain, ids), [4],
                   position_ids=np.zeros((3, 1, 4), np.int32))  # fmt: skip
    # Nothing was donated: the same state still prefills.
    state = ef.prefill(engine, state, x, lengths, position_ids=pos, deepstack=ds)
    assert np.isfinite(np.asarray(state.io.logits)).all()


def test_engine_contract_per_row_rope_and_deepstack_bindings(cases):
    """The spec binds a ``[B, KVcap, rot]`` rope table (ropeBatch = B) and one
    ``deepstack_embeds_i`` ``[B, S, H]`` per feature set; decode keeps the table's address;
    ONNX export and speculative decoding refuse MRoPE by name."""
    engine = cases["qwen3_vl"]["engine"]
    cfg = engine.config
    spec = build_llm_spec(cfg)
    assert [b.name for b in spec.inputs() if b.name.startswith("deepstack")] == [
        "deepstack_embeds_0",
        "deepstack_embeds_1",
    ]
    assert spec["deepstack_embeds_1"].shape == (("batch",), ("seq_len",), 64)
    assert "rope_batch" not in dict(spec.static_dims)
    dims = ef.prefill_dims(cfg, 2, 7, cache_empty=True)
    assert dims.rope_batch == 2
    assert spec["rope_rotary_cos_sin"].resolve(dims) == (2, cfg.kv_capacity, 16)
    state = ef.create_state(cfg, 2)
    case = cases["qwen3_vl"]
    state = ef.prefill(engine, state, _jx(case["x"]), case["lengths"], position_ids=case["pos"])
    before = state.res.rope.unsafe_buffer_pointer()
    for _ in range(2):
        state = ef.decode(engine, state, np.array([1, 2], np.int32))
    assert state.res.rope.unsafe_buffer_pointer() == before
    from edgellm_fn.models.onnx.export import check_exportable

    with pytest.raises(ConfigError, match=r"onnx export: Qwen3VL.* uses MRoPE and deepstack"):
        check_exportable(cfg)


def test_fused_decode_kernels_give_the_same_tokens(cases):
    """The fused decode path (CPU twins) reads the per-row table and adds the (zero) decode
    deepstack bindings: same greedy tokens as the reference path."""
    case = cases["qwen3_vl"]
    ref = case["engine"]
    fused = ef.XlaEngine(ref.config, ref.params, kernels="on")
    tokens = []
    for engine in (ref, fused):
        state = ef.create_state(engine.config, 2)
        state = ef.prefill(
            engine,
            state,
            _jx(case["x"]),
            case["lengths"],
            position_ids=case["pos"],
            deepstack=case["deepstack"],
        )
        out = []
        for _ in range(4):
            out.append(np.asarray(state.io.logits).argmax(-1))
            state = ef.decode(engine, state, out[-1].astype(np.int32))
        tokens.append(np.stack(out))
    np.testing.assert_array_equal(tokens[0], tokens[1])
    np.testing.assert_array_equal(tokens[0].T, case["ref_tokens"][:, :4])


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen3_vl"])
def test_bfloat16_matches_transformers_bfloat16(family, cases):
    """bfloat16 engine vs transformers' bfloat16 text model on the same (rounded) inputs: the
    prefill and 6 decode steps (both fed transformers' greedy token; transformers given the
    decode positions ``max + 1, ...``). Tokens must agree wherever transformers' top-2 margin
    exceeds the bf16 logit tolerance (random tiny models have near-ties)."""
    import jax.numpy as jnp
    import transformers

    case = cases[family]
    hf = transformers.AutoModelForImageTextToText.from_pretrained(
        case["path"], dtype=torch.bfloat16
    ).eval()
    model, params = ef.load_checkpoint(case["path"], dtype="bfloat16")
    cfg = ef.EngineConfig.create(
        model, max_batch_size=2, max_input_len=32, kv_capacity=64, dtype="bfloat16"
    )
    engine = ef.XlaEngine(cfg, params)
    x = jnp.asarray(case["x"], jnp.bfloat16)
    ds = (
        None
        if case["deepstack"] is None
        else [jnp.asarray(d, jnp.bfloat16) for d in case["deepstack"]]
    )
    state = ef.create_state(cfg, 2)
    state = ef.prefill(engine, state, x, case["lengths"], position_ids=case["pos"], deepstack=ds)
    seqs: list[list[int]] = [[], []]
    clear = 0
    for step in range(7):
        logits = np.asarray(state.io.logits)
        for r, n in enumerate(case["lengths"]):
            ref = _hf_bf16_logits(hf, case, x, ds, r, int(n), seqs[r])
            scale = np.abs(ref).max()
            rel = np.abs(logits[r] - ref).max() / scale
            assert rel < 5e-2, f"{family} bf16 row {r} step {step}: relative logit error {rel:.2e}"
            top2 = np.sort(ref)[-2:]
            if top2[1] - top2[0] > 5e-2 * scale:
                clear += 1
                assert int(ref.argmax()) == int(logits[r].argmax()), f"{family} bf16 r{r} s{step}"
            seqs[r].append(int(ref.argmax()))
        if step < 6:
            state = ef.decode(engine, state, np.array([q[-1] for q in seqs], np.int32))
    assert clear >= 7  # most steps had a clear winner, so the token check is not vacuous


def _hf_bf16_logits(hf, case, x, ds, r: int, n: int, generated: list[int]) -> np.ndarray:
    """transformers' text model on row ``r``'s prompt plus ``generated`` (float32 head)."""
    extra = torch.tensor(generated, dtype=torch.long)
    prompt = torch.tensor(np.asarray(x[r, :n], np.float32)).to(torch.bfloat16)
    embeds = torch.cat([prompt, hf.model.get_input_embeddings()(extra)])[None]
    later = torch.arange(len(generated)) + int(case["pos"][:, r, :n].max()) + 1
    pos = torch.cat([torch.tensor(case["pos"][:, r, :n]), later.expand(3, -1)], 1)
    kwargs = {}
    if ds is not None:
        mask = case["mask"][r, :n]
        kwargs = dict(
            visual_pos_masks=torch.tensor(np.concatenate([mask, np.zeros(len(generated), bool)]))[
                None
            ],
            deepstack_visual_embeds=[
                torch.tensor(np.asarray(d[r, :n], np.float32)[mask]).to(torch.bfloat16) for d in ds
            ],
        )
    with torch.no_grad():
        out = hf.model.language_model(inputs_embeds=embeds, position_ids=pos[:, None], **kwargs)
        # The head in float32, as the engine's (bf16 logits would round into exact ties).
        hidden = out.last_hidden_state[0, -1].float()
        return (hidden @ hf.lm_head.weight.float().T).numpy()


def test_decode_while_after_an_image_prefill_gives_transformers_tokens(cases):
    """The single jitted ``lax.while_loop`` continues an MRoPE prefill with the same greedy
    tokens as transformers' ``generate``."""
    import jax

    from edgellm_fn.runtime import loops
    from edgellm_fn.runtime.sampling import make_sampling_params

    case = cases["qwen3_vl"]
    engine = case["engine"]
    state = ef.create_state(engine.config, 2)
    state = ef.prefill(
        engine,
        state,
        _jx(case["x"]),
        case["lengths"],
        position_ids=case["pos"],
        deepstack=case["deepstack"],
    )
    config, params = make_sampling_params(2, vocab_size=256, top_k=1)
    limits = loops.token_limits(engine, case["lengths"], STEPS + 1)
    _, res = loops.decode_while(
        engine, state, config, params, jax.random.PRNGKey(0), limits, eos_ids=(),
        max_new_tokens=STEPS + 1,
    )  # fmt: skip
    np.testing.assert_array_equal(np.asarray(res.tokens)[:, : STEPS + 1], case["ref_tokens"])
