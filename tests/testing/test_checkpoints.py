"""Made-up checkpoints: a preset with random weights loads in edgellm_fn and transformers alike."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import edgellm_fn as ef
from edgellm_fn.errors import InputError
from edgellm_fn.testing.checkpoints import write_preset_checkpoint
from edgellm_fn.text.tokenizer import Tokenizer


def test_preset_checkpoint_loads_in_both_and_is_never_overwritten(tmp_path):
    transformers = pytest.importorskip("transformers")
    path = write_preset_checkpoint("tiny", tmp_path / "tiny", dtype="float32")
    engine = ef.load_engine(path, max_batch_size=1, max_input_len=16, kv_capacity=32)
    tok = Tokenizer.from_dir(path, vocab_size=engine.config.model.vocab_size)
    ids = tok.encode("def f(x):")
    state = ef.prefill(
        engine, ef.create_state(engine.config, 1), ef.embed(engine, np.array([ids])), [len(ids)]
    )
    hf = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    with torch.no_grad():
        want = hf(torch.tensor([ids])).logits[0, -1].numpy()
    got = np.asarray(state.io.logits)[0]
    assert np.abs(got - want).max() / np.abs(want).max() < 1e-4
    with pytest.raises(InputError, match="already exists and is not an empty directory"):
        write_preset_checkpoint("tiny", tmp_path / "tiny")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "model.safetensors").write_bytes(b"the user's")
    with pytest.raises(InputError, match="already exists and is not an empty directory"):
        write_preset_checkpoint("tiny", mine)
    assert (mine / "model.safetensors").read_bytes() == b"the user's"
