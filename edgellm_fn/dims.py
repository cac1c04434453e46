"""``InferenceDims``: the symbolic dimension values of one step, built only by recipes.

Recipes follow Edge-LLM (see UPSTREAM.md); ``kv_len`` is always the full KV capacity and
``rope_batch`` is 1, B for MRoPE models (one rope table per row, ``state/mrope.py``).
"""

from __future__ import annotations

import dataclasses

from .config import EngineConfig

#: Fields that may legitimately be 0 (a fresh prefill binds an empty start index).
ZERO_ALLOWED = frozenset({"start_index_len"})


@dataclasses.dataclass(frozen=True, kw_only=True)
class InferenceDims:
    """Symbolic dims of a step; no defaults, so adding a field forces updating every recipe."""

    batch: int
    seq_len: int
    kv_len: int
    select_len: int
    attn_mask_seq_len: int
    rope_batch: int
    packed_mask_len: int
    start_index_len: int
    spec_verify_phase_len: int

    def value(self, name: str) -> int:
        return getattr(self, name)


def _packed(n: int) -> int:
    return (n + 31) // 32


def _rope_batch(cfg: EngineConfig, batch: int) -> int:
    return batch if cfg.model.mrope is not None else 1


def prefill_dims(cfg: EngineConfig, batch: int, seq_len: int, cache_empty: bool) -> InferenceDims:
    """Profile 0: ``seq_len`` new tokens per row; start index empty for a fresh cache."""
    return InferenceDims(
        batch=batch,
        seq_len=seq_len,
        kv_len=cfg.kv_capacity,
        select_len=1,
        attn_mask_seq_len=1,
        rope_batch=_rope_batch(cfg, batch),
        packed_mask_len=1,
        start_index_len=0 if cache_empty else batch,
        spec_verify_phase_len=0,
    )


def decode_dims(cfg: EngineConfig, batch: int) -> InferenceDims:
    """Profile 1: one new token per row."""
    return InferenceDims(
        batch=batch,
        seq_len=1,
        kv_len=cfg.kv_capacity,
        select_len=1,
        attn_mask_seq_len=1,
        rope_batch=_rope_batch(cfg, batch),
        packed_mask_len=1,
        start_index_len=batch,
        spec_verify_phase_len=0,
    )


def verify_dims(cfg: EngineConfig, batch: int, verify_len: int) -> InferenceDims:
    """Profile 1: verify a draft tree of ``verify_len`` tokens (logits at every node)."""
    return InferenceDims(
        batch=batch,
        seq_len=verify_len,
        kv_len=cfg.kv_capacity,
        select_len=verify_len,
        attn_mask_seq_len=verify_len,
        rope_batch=_rope_batch(cfg, batch),
        packed_mask_len=_packed(verify_len),
        start_index_len=batch,
        spec_verify_phase_len=verify_len,
    )


def proposal_dims(cfg: EngineConfig, batch: int, seq_len: int, select_len: int) -> InferenceDims:
    """Profile 1: draft proposal over ``seq_len`` tree tokens selecting ``select_len``."""
    return InferenceDims(
        batch=batch,
        seq_len=seq_len,
        kv_len=cfg.kv_capacity,
        select_len=select_len,
        attn_mask_seq_len=seq_len,
        rope_batch=_rope_batch(cfg, batch),
        packed_mask_len=_packed(seq_len),
        start_index_len=batch,
        spec_verify_phase_len=0,
    )


def accept_dims(cfg: EngineConfig, batch: int, accepted: int) -> InferenceDims:
    """Profile 1: draft accept of ``accepted`` tokens."""
    return InferenceDims(
        batch=batch,
        seq_len=accepted,
        kv_len=cfg.kv_capacity,
        select_len=1,
        attn_mask_seq_len=accepted,
        rope_batch=_rope_batch(cfg, batch),
        packed_mask_len=_packed(accepted),
        start_index_len=batch,
        spec_verify_phase_len=0,
    )
