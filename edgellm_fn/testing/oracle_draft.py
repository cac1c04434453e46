"""An oracle draft engine: the base model itself behind the EAGLE3 draft contract.

Its predictions are the base's own, so every tree contains the base's greedy path (a chain,
``tree_topk=1``, is accepted whole every round): tests and benchmarks use it to exercise long
acceptances. It is a real engine of ``build_draft_spec`` (same bindings, same steps), with a
draft KV cache of the base's geometry.

The draft's entry at position ``p`` pairs the base feature of ``p`` with the token of ``p + 1``;
the oracle stores that token's base KV one slot later (``p + 1``, its true position), and takes
the token of position 0 from the feature channel: the feature layers start with layer 0, whose
input is the token embedding.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp

from ..dims import InferenceDims
from ..engine.protocol import Prepared, prepare_checked
from ..engine.spec import EngineSpec, build_draft_spec
from ..engine.xla_spec import XlaSpecBaseEngine
from ..models import llama, tree
from ..models.eagle3 import DraftDims, SpecDecodeConfig


def oracle_dims(base_model, aux_layers: tuple[int, ...] = (0,)) -> DraftDims:
    """Draft geometry of the oracle for a base ``ModelConfig`` (``aux_layers`` starts with 0)."""
    if not aux_layers or aux_layers[0] != 0:
        raise ValueError(f"oracle_dims: aux_layers={aux_layers} (expected to start with 0)")
    return DraftDims(
        hidden_size=base_model.hidden_size,
        num_layers=base_model.num_hidden_layers,
        num_key_value_heads=base_model.num_key_value_heads,
        head_dim=base_model.head_dim,
        draft_vocab_size=base_model.vocab_size,
        aux_layers=aux_layers,
    )


@jax.tree_util.register_pytree_node_class
class OracleDraftEngine:
    """The base model as a draft (``bundle.draft`` must be ``oracle_dims(base model)``)."""

    provider = "xla"

    def __init__(self, bundle: SpecDecodeConfig, params: llama.Params):
        self.bundle = bundle
        self.config = bundle.base
        self.params = params

    @classmethod
    def from_base(cls, base: XlaSpecBaseEngine) -> OracleDraftEngine:
        return cls(base.bundle, base.params)

    def tree_flatten(self):
        return (self.params,), self.bundle

    @classmethod
    def tree_unflatten(cls, bundle, children):
        return cls(bundle, children[0])

    @property
    def embedding(self) -> jax.Array:
        return self.params["embed"]

    @property
    def draft_to_target(self) -> jax.Array:
        return jnp.arange(self.config.model.vocab_size, dtype=jnp.int32)

    @property
    def spec(self) -> EngineSpec:
        return build_draft_spec(self.bundle)

    def prepare(
        self, profile: int, dims: InferenceDims, tensor_map: Mapping[str, jax.Array]
    ) -> Prepared:
        return prepare_checked(self.spec, profile, dims, tensor_map)

    def execute(self, prepared: Prepared) -> dict[str, jax.Array]:
        t, m = prepared.tensors, self.config.model
        cap = self.config.kv_capacity
        x = t["inputs_embeds"]
        b, s, h = x.shape
        context = t["context_lengths"]
        select = t["last_token_ids"]
        if prepared.profile == 0:  # tokens 0..S at positions 0..S (token 0 from the features)
            x = jnp.concatenate([t["base_hidden_states"][:, :1, :h], x], axis=1)
            start = jnp.zeros((b,), jnp.int32)
            positions = jnp.broadcast_to(jnp.arange(s + 1, dtype=jnp.int32), (b, s + 1))
            tree_in, n = None, s + 1
        else:  # every token one slot and one position later than the draft's
            start = t["kvcache_start_index"] + 1
            positions = t["attention_pos_id"] + 1
            tree_in, n = (start, t["attention_mask"]), s
        context = jnp.minimum(context + 1, cap)
        slots = start[:, None] + jnp.arange(n, dtype=jnp.int32)[None, :]
        write_pos = jnp.where(slots < context[:, None], slots, cap)
        rope = t["rope_rotary_cos_sin"]
        cos_sin = rope[jnp.zeros_like(positions), jnp.clip(positions, 0, cap - 1)]
        layers = m.num_hidden_layers
        hidden, _, ks, vs = tree.run_layers_aux(
            m,
            self.params,
            x,
            cos_sin,
            positions,
            write_pos,
            context,
            [t[f"past_key_{i}"] for i in range(layers)],
            [t[f"past_value_{i}"] for i in range(layers)],
            (0,),
            tree_in,
        )
        if prepared.profile == 0:
            select = select + 1
        picked = jnp.take_along_axis(hidden, select[:, :, None], axis=1)
        out = {
            "logits": llama.lm_logits(m, self.params, picked).reshape(-1, m.vocab_size),
            "draft_hidden_states_out": jnp.zeros((picked.shape[0] * picked.shape[1], h), x.dtype),
        }
        for i in range(layers):
            out[f"present_key_{i}"], out[f"present_value_{i}"] = ks[i], vs[i]
        return out
