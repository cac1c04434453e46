"""Real PEFT LoRA adapters of the tiny test models, and a greedy loop with per-row adapters."""

from __future__ import annotations

import copy

import jax.numpy as jnp
import numpy as np

import edgellm_fn as ef

ALL_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def make_adapter(model, path, seed: int = 0, **lora_kwargs):
    """Wraps a copy of ``model`` in a random (non-zero) PEFT LoRA adapter, saved to ``path``.

    Returns the PEFT model (float32, eval) for reference logits.
    """
    import torch
    from peft import LoraConfig, get_peft_model

    kwargs = dict(r=4, lora_alpha=8, target_modules=ALL_TARGETS, lora_dropout=0.0)
    kwargs.update(lora_kwargs)
    torch.manual_seed(seed)
    peft_model = get_peft_model(
        copy.deepcopy(model), LoraConfig(init_lora_weights=False, **kwargs)
    ).eval()
    peft_model.save_pretrained(str(path))
    return peft_model


def peft_logits(model, seq: list[int]) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(torch.tensor([seq])).logits[0, -1].float().numpy()


def greedy_lora(engine, bank, prompts, names, steps: int, width: int = 12) -> dict:
    """Prefill (padded to ``width``) + ``steps`` greedy decode steps, row ``r`` on adapter
    ``names[r]``; returns ``tokens [B, steps+1]`` and ``logits [steps+1, B, V]``."""
    ids = np.zeros((len(prompts), width), np.int32)
    for i, p in enumerate(prompts):
        ids[i, : len(p)] = p
    lengths = np.array([len(p) for p in prompts])
    state = ef.create_state(engine.config, len(prompts), lora=bank.state(names))
    state = ef.prefill(engine, state, ef.embed(engine, ids), lengths)
    logits = [np.asarray(state.io.logits)]
    for _ in range(steps):
        state = ef.decode(engine, state, jnp.asarray(logits[-1].argmax(-1), jnp.int32))
        logits.append(np.asarray(state.io.logits))
    stacked = np.stack(logits)
    return {"tokens": stacked.argmax(-1).T, "logits": stacked, "state": state}
