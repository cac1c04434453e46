"""The ``xla`` provider's speculative-decoding engines: the base on a draft tree and the draft.

Both run the reference layers explicitly (``models/llama.py``, ``models/tree.py``,
``models/eagle3.py``): the fused decode kernels do not take a tree mask yet. They are pytrees
(params are leaves; configs static), so they pass through ``jit`` like the vanilla engine.

Profile 0 (prefill) attends causally and ignores the tree inputs; profile 1 attends with the
packed tree mask and the given positions (a plain decode step is the tree of one token).
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp

from ..config import EngineConfig
from ..dims import InferenceDims
from ..models import eagle3, llama, tree
from ..models.eagle3 import Eagle3Config, SpecDecodeConfig
from .protocol import Prepared, prepare_checked
from .spec import EngineSpec, build_draft_spec, build_spec_base_spec


def step_geometry(t: Mapping[str, jax.Array], profile: int, capacity: int):
    """``(start, positions, write_pos, cos_sin, tree)`` of one step from its bindings.

    ``tree`` is ``(start, packed mask)`` in profile 1, else None (causal).
    """
    x = t["inputs_embeds"]
    b, s, _ = x.shape
    start = t["kvcache_start_index"]
    if start.shape[0] == 0:  # fresh prefill: every row starts at slot 0
        start = jnp.zeros((b,), jnp.int32)
    slots = start[:, None] + jnp.arange(s, dtype=jnp.int32)[None, :]
    write_pos = jnp.where(slots < t["context_lengths"][:, None], slots, capacity)
    positions = t["attention_pos_id"] if profile == 1 else slots
    rope = t["rope_rotary_cos_sin"]
    cos_sin = rope[jnp.zeros_like(positions), jnp.clip(positions, 0, capacity - 1)]
    return start, positions, write_pos, cos_sin, (start, t["attention_mask"]) if profile else None


@jax.tree_util.register_pytree_node_class
class XlaSpecBaseEngine:
    """The base model behind ``build_spec_base_spec``: logits of every selected token and the
    EAGLE3 features ``hidden_states`` ``[B * S, 3H]``."""

    provider = "xla"

    def __init__(self, bundle: SpecDecodeConfig, params: llama.Params):
        self.bundle = bundle
        self.config: EngineConfig = bundle.base
        self.params = params

    def tree_flatten(self):
        return (self.params,), self.bundle

    @classmethod
    def tree_unflatten(cls, bundle, children):
        return cls(bundle, children[0])

    @property
    def embedding(self) -> jax.Array:
        return self.params["embed"]

    @property
    def spec(self) -> EngineSpec:
        return build_spec_base_spec(self.bundle)

    def prepare(
        self, profile: int, dims: InferenceDims, tensor_map: Mapping[str, jax.Array]
    ) -> Prepared:
        return prepare_checked(self.spec, profile, dims, tensor_map)

    def execute(self, prepared: Prepared) -> dict[str, jax.Array]:
        t, m = prepared.tensors, self.config.model
        b, s, _ = t["inputs_embeds"].shape
        _, positions, write_pos, cos_sin, tree_in = step_geometry(
            t, prepared.profile, self.config.kv_capacity
        )
        n = m.num_hidden_layers
        hidden, aux, ks, vs = tree.run_layers_aux(
            m,
            self.params,
            t["inputs_embeds"],
            cos_sin,
            positions,
            write_pos,
            t["context_lengths"],
            [t[f"past_key_{i}"] for i in range(n)],
            [t[f"past_value_{i}"] for i in range(n)],
            self.bundle.draft.aux_layers,
            tree_in,
        )
        picked = jnp.take_along_axis(hidden, t["last_token_ids"][:, :, None], axis=1)
        out = {
            "logits": llama.lm_logits(m, self.params, picked).reshape(-1, m.vocab_size),
            "hidden_states": aux.reshape(b * s, -1),
        }
        for i in range(n):
            out[f"present_key_{i}"], out[f"present_value_{i}"] = ks[i], vs[i]
        return out


@jax.tree_util.register_pytree_node_class
class XlaDraftEngine:
    """An EAGLE3 draft behind ``build_draft_spec``.

    Attributes:
      config: the base engine's config (limits and dtypes are shared).
      bundle: the spec-decode bundle; ``draft_config`` the draft's own dimensions.
    """

    provider = "xla"

    def __init__(self, bundle: SpecDecodeConfig, draft_config: Eagle3Config, params: llama.Params):
        self.bundle = bundle
        self.config: EngineConfig = bundle.base
        self.draft_config = draft_config
        self.params = params

    def tree_flatten(self):
        return (self.params,), (self.bundle, self.draft_config)

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls(aux[0], aux[1], children[0])

    @property
    def embedding(self) -> jax.Array:
        """``[V, Hd]`` the draft's token embedding (the base's when the checkpoint has none)."""
        return self.params["embed"]

    @property
    def draft_to_target(self) -> jax.Array:
        """``[Vd]`` int32 target id of each draft id."""
        return self.params["draft_to_target"]

    @property
    def spec(self) -> EngineSpec:
        return build_draft_spec(self.bundle)

    def prepare(
        self, profile: int, dims: InferenceDims, tensor_map: Mapping[str, jax.Array]
    ) -> Prepared:
        return prepare_checked(self.spec, profile, dims, tensor_map)

    def execute(self, prepared: Prepared) -> dict[str, jax.Array]:
        t, c = prepared.tensors, self.draft_config
        cap = self.config.kv_capacity
        start, positions, write_pos, cos_sin, tree_in = step_geometry(t, prepared.profile, cap)
        mask = None
        if tree_in is not None:
            mask = tree.tree_attention_mask(start, tree_in[1], positions, t["context_lengths"], cap)
        hidden = (
            llama.linear(t["base_hidden_states"], self.params["fc"]) + t["draft_hidden_states_in"]
        )
        out, k, v = eagle3.draft_forward(
            c,
            self.params,
            t["inputs_embeds"],
            hidden,
            cos_sin,
            positions,
            write_pos,
            t["context_lengths"],
            t["past_key_0"],
            t["past_value_0"],
            mask,
        )
        picked = jnp.take_along_axis(out, t["last_token_ids"][:, :, None], axis=1)
        return {
            "logits": eagle3.draft_logits(c, self.params, picked).reshape(-1, c.draft_vocab_size),
            "draft_hidden_states_out": picked.reshape(-1, c.hidden_size),
            "present_key_0": k,
            "present_value_0": v,
        }


def load_spec_engines(
    base_dir,
    draft_dir,
    *,
    tree_topk: int = 4,
    tree_steps: int = 4,
    verify_size: int = 16,
    max_verify_tree_size: int | None = None,
    max_batch_size: int = 4,
    max_input_len: int = 256,
    kv_capacity: int = 512,
    dtype: str | None = None,
) -> tuple[XlaSpecBaseEngine, XlaDraftEngine]:
    """Loads a Hugging Face base checkpoint and an EAGLE3 draft into the two xla engines.

    Raises:
      ConfigError: a draft made for another base (hidden size, vocabulary, RoPE, feature
        layers), or a tree that does not fit (``verify_size > max_verify_tree_size``, ...).
      CheckpointError: a missing or malformed tensor in either checkpoint.
    """
    from ..models.eagle3_loader import load_eagle3_draft
    from ..models.loader import load_checkpoint

    model, params = load_checkpoint(base_dir, dtype=dtype)
    cfg = EngineConfig.create(
        model,
        max_batch_size=max_batch_size,
        max_input_len=max_input_len,
        kv_capacity=kv_capacity,
        dtype=dtype,
    )
    draft_cfg, draft_params, aux = load_eagle3_draft(draft_dir, model, dtype=cfg.dtype)
    bundle = SpecDecodeConfig(
        base=cfg,
        draft=draft_cfg.dims(aux),
        tree_topk=tree_topk,
        tree_steps=tree_steps,
        verify_size=verify_size,
        max_verify_tree_size=max_verify_tree_size or verify_size,
    )
    if "embed" not in draft_params:
        draft_params["embed"] = params["embed"]
    return XlaSpecBaseEngine(bundle, params), XlaDraftEngine(bundle, draft_cfg, draft_params)
