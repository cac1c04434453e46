"""The ``xla`` provider: the model in JAX behind exactly the engine contract.

It is a pytree (params are leaves, the config and the kernel mode are static), so it can be
passed to ``jit`` like any argument. It cannot alias outputs to inputs itself; the step functions
donate the state so XLA writes ``present_*`` into the ``past_*`` buffers.

Kernel mode (``kernels=``, or the ``EDGELLM_FN_KERNELS`` environment variable for A/B runs):
``"auto"`` runs decode steps on the fused kernels (``models/fused.py``) and fresh prefills on cuDNN
flash attention on a GPU, and the reference path elsewhere; ``"on"`` forces the kernels (their CPU
twins on a CPU) and raises where they do not apply; ``"off"`` is the reference path everywhere.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import jax
import jax.numpy as jnp

from ..config import EngineConfig
from ..dims import InferenceDims
from ..errors import EngineError
from ..models import fused, hybrid, llama, lora
from ..models.external import LM_HEAD_INPUT
from . import sharding
from .protocol import Prepared, prepare_checked
from .spec import DEEPSTACK_BINDING, EngineSpec, build_llm_spec

KERNEL_MODES = ("auto", "on", "off")


def _kernel_mode(kernels: str | None) -> str:
    mode = kernels or os.environ.get("EDGELLM_FN_KERNELS", "auto")
    mode = {"1": "on", "0": "off"}.get(mode, mode)
    if mode not in KERNEL_MODES:
        raise EngineError(
            f"xla provider: kernels={mode!r} (expected one of {KERNEL_MODES}; the "
            "EDGELLM_FN_KERNELS environment variable takes the same values)"
        )
    return mode


@jax.tree_util.register_pytree_node_class
class XlaEngine:
    """Llama-family network on XLA (CPU or GPU); the golden reference for other providers."""

    provider = "xla"

    def __init__(
        self,
        config: EngineConfig,
        params: llama.Params,
        kernels: str | None = None,
        vocab_map: jax.Array | None = None,
    ):
        """Args:
        config: dims and limits; ``reduced_vocab_size`` needs ``vocab_map``.
        params: ``models/llama.py`` params; with a reduced vocabulary ``lm_head`` holds the
          kept rows only (``models.vocab.reduce_params``).
        kernels: kernel mode (module docstring).
        vocab_map: ``[reduced_vocab_size]`` int32 full id of each logit column.
        """
        self.config = config
        self.kernels = _kernel_mode(kernels)
        check_output_vocab(config, vocab_map, params.get("lm_head"), "xla provider")
        if config.tensor_parallel > 1:  # each device gets its shard (engine/sharding.py)
            if self.kernels == "on":
                raise EngineError(
                    f"xla provider: kernels='on' with tensor_parallel={config.tensor_parallel} "
                    "(expected 'auto' or 'off'); the fused kernels run on one device, tensor "
                    "parallelism runs the reference path"
                )
            params = sharding.shard_params(config, params)
            if vocab_map is not None:
                vocab_map = sharding.place(vocab_map, sharding.replicated(config))
        self.params = params
        self._vocab_map = vocab_map
        if config.deployment.external_weights:
            raise EngineError(
                "xla provider: external_weights=True (expected False); the xla provider holds "
                "its params, external weights are for built engines (onnxruntime, tensorrt)"
            )

    def tree_flatten(self):
        return (self.params, self._vocab_map), (self.config, self.kernels)

    @classmethod
    def tree_unflatten(cls, aux, children):
        engine = object.__new__(cls)  # no re-validation when jit rebuilds the engine
        engine.config, engine.kernels = aux
        engine.params, engine._vocab_map = children
        return engine

    @property
    def vocab_map(self) -> jax.Array | None:
        return self._vocab_map

    def decode_path(self, batch: int) -> tuple[str, str]:
        """``("kernels" | "reference", why)`` for decode steps of ``batch`` rows on this backend."""
        platform = jax.default_backend()
        if self.kernels == "off":
            return "reference", "kernels='off'"
        if self.config.tensor_parallel > 1:
            return "reference", f"tensor_parallel={self.config.tensor_parallel} (kernels: 1 device)"
        why = fused.kernel_support(self.config, batch, platform)
        if self.config.model.hybrid is not None:
            why = "hybrid Mamba2 models have no fused decode kernels"
        if why is None and platform == "gpu" and not _cuda_built():
            why = "the package was built without its CUDA handlers (no nvcc at install)"
        if why is None and (self.kernels == "on" or platform == "gpu"):
            return "kernels", f"fused kernels on {platform}"
        if self.kernels == "on":
            raise EngineError(f"xla provider: kernels='on' but {why}")
        return "reference", why or f"kernels='auto' uses the reference path on {platform}"

    @property
    def embedding(self) -> jax.Array:
        """``[V, H]`` token embedding table (the lookup runs outside the engine)."""
        return self.params["embed"]

    @property
    def spec(self) -> EngineSpec:
        return build_llm_spec(self.config)

    def prepare(
        self, profile: int, dims: InferenceDims, tensor_map: Mapping[str, jax.Array]
    ) -> Prepared:
        return prepare_checked(self.spec, profile, dims, tensor_map)

    def execute(self, prepared: Prepared) -> dict[str, jax.Array]:
        t = prepared.tensors
        m = self.config.model
        if m.hybrid is not None:  # Mamba2 + attention (NemotronH): its own layer stack
            self.decode_path(t["inputs_embeds"].shape[0])  # kernels='on' raises: none exist
            return hybrid.execute(self.config, self.params, prepared.profile, t)
        x = t["inputs_embeds"]
        b, s, _ = x.shape
        start = t["kvcache_start_index"]
        fresh = start.shape[0] == 0
        if fresh:  # fresh prefill: every row starts at slot 0
            start = jnp.zeros((b,), jnp.int32)
        context = t["context_lengths"]
        positions = start[:, None] + jnp.arange(s, dtype=jnp.int32)[None, :]
        cap = self.config.kv_capacity
        write_pos = jnp.where(positions < context[:, None], positions, cap)
        rope = t["rope_rotary_cos_sin"]
        cos_sin = rope[
            jnp.zeros_like(positions) if rope.shape[0] == 1 else jnp.arange(b)[:, None],
            jnp.minimum(positions, cap - 1),
        ]
        n = m.num_hidden_layers
        ks = [t[f"past_key_{i}"] for i in range(n)]
        vs = [t[f"past_value_{i}"] for i in range(n)]
        use_kernels = self.decode_path(b)[0] == "kernels"
        select = t["last_token_ids"]
        deepstack = [t[DEEPSTACK_BINDING % i] for i in range(m.num_deepstack_features)]
        if use_kernels and prepared.profile == 1 and s == 1:
            hidden, ks, vs = fused.decode_layers(
                m, self.params, x[:, 0], rope, start, context, ks, vs,
                deepstack=[d[:, 0] for d in deepstack],
            )  # fmt: skip
            picked = hidden[:, None]  # decode selects its only token
        else:
            flash = use_kernels and jax.default_backend() == "gpu" and fresh and _flash_ok(m)
            adapters = lora.gather_rows(t, n)
            hidden, ks, vs = llama.run_layers(
                m, self.params, x, cos_sin, positions, write_pos, context, ks, vs, flash, adapters,
                deepstack,
            )  # fmt: skip
            picked = jnp.take_along_axis(hidden, select[:, :, None], axis=1)  # [B, sel, H]
        params = self.params
        if LM_HEAD_INPUT in t:  # a declared extra input replaces the built-in head
            params = {**params, "lm_head": t[LM_HEAD_INPUT]}
        if use_kernels and picked.shape[0] * picked.shape[1] <= fused.MAX_ROWS:
            logits = fused.head_logits(m, params, picked)
        else:
            logits = llama.lm_logits(m, params, picked)
        out = {"logits": logits.reshape(-1, self.config.output_vocab_size)}
        for i in range(n):
            out[f"present_key_{i}"] = ks[i]
            out[f"present_value_{i}"] = vs[i]
        if self.config.tensor_parallel > 1:  # outputs land in the donated state's buffers
            out = sharding.constrain_outputs(self.config, out)
        return out


def check_output_vocab(
    cfg: EngineConfig, vocab_map: jax.Array | None, head: jax.Array | None, where: str
) -> None:
    """Refuses a vocab map that contradicts ``cfg.reduced_vocab_size`` (or an lm_head of other
    rows than ``output_vocab_size``, when given)."""
    reduced = cfg.deployment.reduced_vocab_size
    got = None if vocab_map is None else tuple(vocab_map.shape)
    if (reduced == 0) != (vocab_map is None) or (got is not None and got != (reduced,)):
        raise EngineError(
            f"{where}: vocab_map shape={None if got is None else list(got)} (expected "
            f"{[reduced] if reduced else None} for reduced_vocab_size={reduced}); load the "
            "engine with load_engine(..., vocab_map=DIR) so the config and the map agree"
        )
    if vocab_map is not None and vocab_map.dtype != jnp.int32:
        raise EngineError(f"{where}: vocab_map dtype={vocab_map.dtype} (expected int32)")
    if head is not None and head.shape[0] != cfg.output_vocab_size:
        raise EngineError(
            f"{where}: lm_head has {head.shape[0]} rows (expected output_vocab_size="
            f"{cfg.output_vocab_size}); slice it with models.vocab.reduce_params"
        )


def _cuda_built() -> bool:
    from ..ffi import cuda_available

    return cuda_available()


def _flash_ok(m) -> bool:
    """cuDNN's flash attention takes head_dim a multiple of 8 up to 128 and no soft-capping."""
    return m.head_dim % 8 == 0 and m.head_dim <= 128 and m.attn_softcap is None
