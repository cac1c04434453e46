"""Vocab maps: strict validation, files (safetensors and JSON), the input-aware choice."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgellm_fn.config import ModelConfig
from edgellm_fn.errors import ConfigError
from edgellm_fn.models.safetensors_io import save_file
from edgellm_fn.models.vocab import (
    VOCAB_MAP_FILE,
    check_vocab_map,
    choose_vocab,
    load_vocab_map,
    reduce_params,
    save_vocab_map,
)

MODEL = ModelConfig.from_dict(
    {
        "architectures": ["LlamaForCausalLM"],
        "vocab_size": 16,
        "hidden_size": 8,
        "intermediate_size": 16,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "max_position_embeddings": 32,
        "eos_token_id": 2,
    }
)


def test_a_valid_map_round_trips(tmp_path):
    ids = np.array([0, 2, 5, 15])
    path = save_vocab_map(check_vocab_map(ids, 16, (2,)), tmp_path)
    assert path == tmp_path / VOCAB_MAP_FILE
    loaded = load_vocab_map(tmp_path, MODEL)
    assert loaded.dtype == np.int32 and loaded.tolist() == [0, 2, 5, 15]
    (tmp_path / "m.json").write_text(json.dumps({"vocab_map": [1, 2, 3]}))
    assert load_vocab_map(tmp_path / "m.json", MODEL).tolist() == [1, 2, 3]
    (tmp_path / "l.json").write_text("[2, 9]")
    assert load_vocab_map(tmp_path / "l.json", MODEL).tolist() == [2, 9]


@pytest.mark.parametrize(
    "ids, match",
    [
        (np.zeros((2, 2), int), r"vocab_map: shape=\[2, 2\] .*expected a 1-D integer array"),
        (np.array([0.0, 2.0]), r"dtype=float64 \(expected a 1-D integer array"),
        (np.array([], int), r"length=0 \(expected 1..vocab_size=16\)"),
        (np.arange(17), r"length=17 \(expected 1..vocab_size=16\)"),
        (
            np.array([2, 16]),
            r"id\[1\]=16 \(expected 0 <= id < vocab_size=16\); the map was made for another model",
        ),
        (np.array([-1, 2]), r"id\[0\]=-1 \(expected 0 <= id < vocab_size=16\)"),
        (
            np.array([2, 5, 5]),
            r"id\[2\]=5 after id\[1\]=5 \(expected strictly increasing ids: sorted, each once\); sort and deduplicate",
        ),
        (np.array([5, 2]), r"id\[1\]=2 after id\[0\]=5 \(expected strictly increasing"),
        (
            np.array([1, 3]),
            r"eos id 2 is not kept \(expected every EOS id of config.json in the map\)",
        ),
    ],
)
def test_ill_formed_maps_are_refused_by_name(ids, match):
    with pytest.raises(ConfigError, match=match):
        check_vocab_map(ids, 16, (2,))


def test_bad_files_are_refused_by_name(tmp_path):
    with pytest.raises(
        ConfigError,
        match=r"vocab_map.safetensors: vocab map not found \(expected vocab_map.safetensors or a JSON list of ids\); write one with `edgellm-fn reduce-vocab`",
    ):
        load_vocab_map(tmp_path, MODEL)
    save_file({"ids": np.array([2], np.int32)}, tmp_path / "other.safetensors")
    with pytest.raises(ConfigError, match=r"tensors=\['ids'\] \(expected a 'vocab_map' tensor\)"):
        load_vocab_map(tmp_path / "other.safetensors", MODEL)
    save_file({"vocab_map": np.array([2], np.int64)}, tmp_path / "wide.safetensors")
    with pytest.raises(ConfigError, match=r"vocab_map dtype=int64 \(expected int32\)"):
        load_vocab_map(tmp_path / "wide.safetensors", MODEL)
    (tmp_path / "bad.safetensors").write_bytes(b"\x01\x02")
    with pytest.raises(ConfigError, match=r"bad.safetensors: not a readable safetensors file"):
        load_vocab_map(tmp_path / "bad.safetensors", MODEL)
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ConfigError, match=r"bad.json: not valid JSON .*expected a list of ids"):
        load_vocab_map(tmp_path / "bad.json", MODEL)
    (tmp_path / "str.json").write_text('["a", 2]')
    with pytest.raises(
        ConfigError, match=r"str.json: vocab_map=\['a', 2\] \(expected a list of integer ids"
    ):
        load_vocab_map(tmp_path / "str.json", MODEL)
    (tmp_path / "far.json").write_text("[2, 40]")
    with pytest.raises(
        ConfigError, match=r"far.json: id\[1\]=40 \(expected 0 <= id < vocab_size=16\)"
    ):
        load_vocab_map(tmp_path / "far.json", MODEL)


def test_reduce_params_slices_the_head_and_keeps_the_embedding():
    embed = np.arange(16 * 2, dtype=np.float32).reshape(16, 2)
    head = -embed
    ids = np.array([1, 2, 7])
    tied = reduce_params({"embed": embed}, ids)
    assert tied["embed"].shape == (16, 2)
    np.testing.assert_array_equal(tied["lm_head"], embed[ids])
    untied = reduce_params({"embed": embed, "lm_head": head}, ids)
    np.testing.assert_array_equal(untied["lm_head"], head[ids])


def test_choose_vocab_keeps_specials_then_the_most_frequent_ids():
    tokens = [[5, 5, 5, 9, 9, 11], [9, 12, 5, 13]]  # counts: 5:4, 9:3, 11:1, 12:1, 13:1
    assert choose_vocab(tokens, {0, 2}, 5, 16).tolist() == [0, 2, 5, 9, 11]  # tie -> smaller id
    assert choose_vocab(tokens, {2}, 2, 16).tolist() == [2, 5]
    # Fewer distinct ids than size: the smallest unused ids fill up.
    assert choose_vocab([[7]], {2}, 4, 16).tolist() == [0, 1, 2, 7]
    assert choose_vocab([[7]], {2}, 16, 16).tolist() == list(range(16))


def test_choose_vocab_refuses_bad_sizes_by_name():
    with pytest.raises(ConfigError, match=r"reduce-vocab: size=17 \(expected 1..vocab_size=16\)"):
        choose_vocab([[1]], {2}, 17, 16)
    with pytest.raises(ConfigError, match=r"reduce-vocab: size=0 \(expected 1..vocab_size=16\)"):
        choose_vocab([[1]], {2}, 0, 16)
    with pytest.raises(
        ConfigError,
        match=r"size=2 \(expected >= 3, the number of special and EOS ids, which are always kept\); pass a larger --size",
    ):
        choose_vocab([[1]], {0, 1, 2}, 2, 16)
    with pytest.raises(ConfigError, match=r"input id 20 \(expected < vocab_size=16\)"):
        choose_vocab([[20]], {2}, 4, 16)
