"""The ``xla`` provider: the model in JAX behind exactly the engine contract.

It is a pytree (params are leaves, the config is static), so it can be passed to ``jit`` like
any argument. It cannot alias outputs to inputs itself; the step functions donate the state so
XLA writes ``present_*`` into the ``past_*`` buffers.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp

from ..config import EngineConfig
from ..dims import InferenceDims
from ..models import llama
from .protocol import Prepared, prepare_checked
from .spec import EngineSpec, build_llm_spec


@jax.tree_util.register_pytree_node_class
class XlaEngine:
    """Llama-family network on XLA (CPU or GPU); the golden reference for other providers."""

    provider = "xla"

    def __init__(self, config: EngineConfig, params: llama.Params):
        self.config = config
        self.params = params

    def tree_flatten(self):
        return (self.params,), self.config

    @classmethod
    def tree_unflatten(cls, config, children):
        return cls(config, children[0])

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
        x = t["inputs_embeds"]
        b, s, _ = x.shape
        start = t["kvcache_start_index"]
        if start.shape[0] == 0:  # fresh prefill: every row starts at slot 0
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
        hidden, ks, vs = llama.run_layers(
            m,
            self.params,
            x,
            cos_sin,
            positions,
            write_pos,
            context,
            [t[f"past_key_{i}"] for i in range(n)],
            [t[f"past_value_{i}"] for i in range(n)],
        )
        select = t["last_token_ids"]
        picked = jnp.take_along_axis(hidden, select[:, :, None], axis=1)  # [B, sel, H]
        logits = llama.lm_logits(m, self.params, picked).reshape(-1, m.vocab_size)
        out = {"logits": logits}
        for i in range(n):
            out[f"present_key_{i}"] = ks[i]
            out[f"present_value_{i}"] = vs[i]
        return out

    def capture_graph(self, prepared: Prepared) -> bool:
        """XLA captures its own CUDA graphs (command buffers); nothing to capture here."""
        del prepared
        return False
