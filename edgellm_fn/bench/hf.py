"""Hugging Face ``transformers`` peers on PyTorch (CUDA when JAX runs on a GPU, else CPU).

Both load the *same* random weights as edgellm_fn (through DLPack, so no host round trip on a
GPU) and use SDPA attention:

- ``hf-eager``: eager forward with a ``DynamicCache`` (the default of ``generate``).
- ``hf-compile``: ``StaticCache`` + ``torch.compile(mode="reduce-overhead", fullgraph=True)``
  of the decode forward (CUDA graphs on a GPU); prefill runs eagerly into the static cache, as
  Hugging Face recommends.

Prefill asks for the last token's logits only (``logits_to_keep=1``), as edgellm_fn does.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from ..config import EngineConfig
from ..models.loader import params_to_hf


def torch_device() -> str:
    """``"cuda"`` when JAX's default device is a GPU, else ``"cpu"``.

    Raises:
      RuntimeError: JAX runs on a GPU that torch cannot see.
    """
    import torch

    if jax.devices()[0].platform == "gpu":
        if not torch.cuda.is_available():
            raise RuntimeError("bench: JAX runs on a GPU but torch.cuda.is_available() is False")
        return "cuda"
    return "cpu"


def state_dict_from_params(cfg: EngineConfig, params: dict, device: str) -> dict[str, Any]:
    """``models.loader.params_to_hf`` as torch tensors on ``device`` (tied heads share the
    embedding)."""
    import torch

    def t(x: np.ndarray) -> torch.Tensor:
        x = np.array(x)  # writable: torch refuses to wrap read-only buffers
        if x.dtype.name == "bfloat16":  # torch.from_numpy has no ml_dtypes bfloat16
            return torch.from_numpy(x.view(np.uint16)).view(torch.bfloat16).to(device)
        return torch.from_numpy(x).to(device)

    sd = {name: t(x) for name, x in params_to_hf(cfg.model, params).items()}
    sd.setdefault("lm_head.weight", sd["model.embed_tokens.weight"])
    return sd


def build_hf_model(hf_config: Mapping[str, Any], cfg: EngineConfig, params: dict):
    """A ``transformers`` model of ``hf_config`` holding ``params`` in ``cfg.dtype``."""
    import torch
    import transformers

    device = torch_device()
    if device == "cpu":
        # OpenMP workers spin-wait; on a small shared host two threads made every op ~100x
        # slower (measured on the 2-core dev machine). One thread is the fair CPU baseline.
        torch.set_num_threads(1)
    raw = {k: v for k, v in hf_config.items() if k not in ("architectures", "dtype")}
    config = transformers.AutoConfig.for_model(raw.pop("model_type"), **raw)
    with torch.device(device):
        model = transformers.AutoModelForCausalLM.from_config(
            config, dtype=getattr(torch, cfg.dtype), attn_implementation="sdpa"
        )
    model.load_state_dict(state_dict_from_params(cfg, params, device), strict=True)
    return model.eval()


class _TorchRunner:
    def sync(self, token) -> None:
        import torch

        if token.is_cuda:
            torch.cuda.synchronize()

    def numpy(self, token) -> np.ndarray:
        return token.detach().cpu().numpy().reshape(-1)

    def loop_seconds(self, ids: np.ndarray, steps: int) -> float | None:
        return None

    def step_launches(self, token) -> int | None:
        return None


@dataclasses.dataclass
class HfEagerRunner(_TorchRunner):
    """Eager ``transformers`` forward with a ``DynamicCache``."""

    model: Any
    batch: int
    system: str = "hf-eager"
    cache: Any = None

    def start(self, ids: np.ndarray):
        import torch
        import transformers

        self.cache = None
        ids_t = torch.as_tensor(ids, dtype=torch.long, device=self.model.device)
        self.cache = transformers.DynamicCache(config=self.model.config)
        with torch.no_grad():
            out = self.model(
                input_ids=ids_t, past_key_values=self.cache, use_cache=True, logits_to_keep=1
            )
        return out.logits[:, -1].argmax(-1)

    def step(self, token):
        import torch

        with torch.no_grad():
            out = self.model(input_ids=token[:, None], past_key_values=self.cache, use_cache=True)
        return out.logits[:, -1].argmax(-1)


@dataclasses.dataclass
class HfCompileRunner(_TorchRunner):
    """``StaticCache`` + ``torch.compile(mode="reduce-overhead")`` decode; eager prefill."""

    model: Any
    batch: int
    kv_capacity: int
    system: str = "hf-compile"

    def __post_init__(self) -> None:
        import torch
        import transformers

        self.cache = transformers.StaticCache(
            config=self.model.config, max_cache_len=self.kv_capacity
        )

        def decode(token, pos):
            out = self.model(
                input_ids=token[:, None],
                past_key_values=self.cache,
                cache_position=pos,
                use_cache=True,
            )
            return out.logits[:, -1].argmax(-1)

        self._decode = torch.compile(decode, mode="reduce-overhead", fullgraph=True)

    def start(self, ids: np.ndarray):
        import torch

        dev = self.model.device
        self.cache.reset()
        s = ids.shape[1]
        with torch.no_grad():
            out = self.model(
                input_ids=torch.as_tensor(ids, dtype=torch.long, device=dev),
                past_key_values=self.cache,
                cache_position=torch.arange(s, device=dev),
                use_cache=True,
                logits_to_keep=1,
            )
        self.pos = torch.tensor([s], device=dev)
        return out.logits[:, -1].argmax(-1)

    def step(self, token):
        import torch

        with torch.no_grad():
            # A CUDA graph's outputs are overwritten by its next replay: keep a copy.
            nxt = self._decode(token, self.pos).clone()
        self.pos += 1
        return nxt
