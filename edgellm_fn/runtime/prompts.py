"""Prompt batching on the host: right-padding to a length bucket (STYLE rule 8)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import InputError


def bucket_length(n: int, max_input_len: int) -> int:
    """Pads prompt lengths to powers of two (>= 8) so nearby lengths share a compilation."""
    return min(max_input_len, max(8, 1 << (n - 1).bit_length()))


def pad_prompts(
    prompts: Sequence[Sequence[int]], width: int | None = None, *, pad_id: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Right-pads token lists into one batch.

    Args:
      prompts: token ids per row (each non-empty).
      width: the padded length S (default: the longest prompt); use ``bucket_length`` to share
        compilations between nearby lengths.
      pad_id: the id written past each row's end (never attended to).

    Returns:
      ``(ids [B, S] int32, lengths [B] int64)``.

    Raises:
      InputError: an empty batch or prompt, or a prompt longer than ``width``.
    """
    lengths = np.array([len(p) for p in prompts], np.int64)
    if lengths.size == 0 or lengths.min() < 1:
        raise InputError(
            f"pad_prompts: lengths={lengths.tolist()} (expected >= 1 prompt, each >= 1 token)"
        )
    width = int(lengths.max()) if width is None else width
    if lengths.max() > width:
        r = int(np.argmax(lengths))
        raise InputError(
            f"pad_prompts: prompt {r} has {int(lengths[r])} tokens (expected <= width={width})"
        )
    ids = np.full((len(prompts), width), pad_id, np.int32)
    for r, p in enumerate(prompts):
        ids[r, : len(p)] = p
    return ids, lengths
