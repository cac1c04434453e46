"""``FakeEngine``: an ``Engine`` whose every output can be worked out by hand.

For orchestration tests (loops, batching, stop conditions, compaction), next to, never instead
of, tests through the real xla provider. Its arithmetic, with ``V = vocab_size``:

```
embedding[v]       = [v, 0, ..., 0]                    # [V, H]: channel 0 carries the token id
token[b, s]        = round(inputs_embeds[b, s, 0])
position[b, s]     = start[b] + s                      # start = kvcache_start_index (0 if empty)
logits[b*sel + j]  = one_hot((token[b, last_token_ids[b, j]] + 1) % V)   # float32 0/1
present_key_i[b, :, p, :]   = token[b, s]      for p = position[b, s] < context_lengths[b]
present_value_i[b, :, p, :] = p                (same positions); every other slot is kept
```

so greedy decoding from a prompt ending in token ``t`` yields ``t+1, t+2, ...`` (mod ``V``), and
after prefill + ``n`` decode steps slot ``p`` of every layer's K holds the token fed at ``p``.

    engine = FakeEngine(fake_config(vocab_size=16))
    state = prefill(engine, create_state(engine.config, 1), embed(engine, [[3, 4, 5]]), [3])
    state.io.logits.argmax(-1)  # [6]
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp

from ..config import EngineConfig, ModelConfig
from ..dims import InferenceDims
from ..dtypes import dtype as lookup_dtype
from ..engine.protocol import Prepared, prepare_checked
from ..engine.spec import EngineSpec, build_llm_spec


def fake_config(
    *,
    vocab_size: int = 16,
    hidden_size: int = 8,
    num_hidden_layers: int = 1,
    max_batch_size: int = 2,
    max_input_len: int = 8,
    kv_capacity: int = 16,
    dtype: str = "float32",
) -> EngineConfig:
    """A small Llama-shaped engine config (2 heads, 1 KV head) for ``FakeEngine``.

    Raises:
      ConfigError: a field out of range (names the field), as for any config.
    """
    model = ModelConfig.from_dict(
        {
            "architectures": ["LlamaForCausalLM"],
            "vocab_size": vocab_size,
            "hidden_size": hidden_size,
            "intermediate_size": 2 * hidden_size,
            "num_hidden_layers": num_hidden_layers,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "max_position_embeddings": max(kv_capacity, 1),
            "dtype": dtype,
        },
        "fake_config",
    )
    return EngineConfig.create(
        model,
        max_batch_size=max_batch_size,
        max_input_len=max_input_len,
        kv_capacity=kv_capacity,
        dtype=dtype,
    )


@jax.tree_util.register_pytree_node_class
class FakeEngine:
    """The hand-checkable engine of the module docstring (a pytree: embedding leaf, config static).

    Args:
      config: any engine config; ``fake_config()`` gives a small one.
    """

    provider = "fake"

    def __init__(self, config: EngineConfig, embedding: jax.Array | None = None):
        self.config = config
        if embedding is None:
            m = config.model
            ids = jnp.arange(m.vocab_size, dtype=jnp.float32)
            table = jnp.zeros((m.vocab_size, m.hidden_size), jnp.float32).at[:, 0].set(ids)
            embedding = table.astype(lookup_dtype(config.dtype).jnp)
        self._embedding = embedding

    def tree_flatten(self):
        return (self._embedding,), self.config

    @classmethod
    def tree_unflatten(cls, config, children):
        return cls(config, children[0])

    @property
    def spec(self) -> EngineSpec:
        return build_llm_spec(self.config)

    @property
    def embedding(self) -> jax.Array:
        """``[V, H]``: row ``v`` is ``[v, 0, ..., 0]``."""
        return self._embedding

    @property
    def vocab_map(self) -> jax.Array | None:
        """Always None: the fake engine's logits cover the full vocabulary."""
        return None

    def prepare(
        self, profile: int, dims: InferenceDims, tensor_map: Mapping[str, jax.Array]
    ) -> Prepared:
        return prepare_checked(self.spec, profile, dims, tensor_map)

    def execute(self, prepared: Prepared) -> dict[str, jax.Array]:
        t = prepared.tensors
        v = self.config.model.vocab_size
        x = t["inputs_embeds"]
        b, s, _ = x.shape
        tokens = jnp.round(x[..., 0].astype(jnp.float32)).astype(jnp.int32)  # [B, S]
        start = t["kvcache_start_index"]
        if start.shape[0] == 0:  # fresh prefill: every row starts at slot 0
            start = jnp.zeros((b,), jnp.int32)
        positions = start[:, None] + jnp.arange(s, dtype=jnp.int32)[None, :]  # [B, S]
        valid = positions < t["context_lengths"][:, None]
        write = jnp.where(valid, positions, self.config.kv_capacity)  # out of range: dropped
        rows = jnp.arange(b)[:, None]
        last = jnp.take_along_axis(tokens, t["last_token_ids"], axis=1)  # [B, sel]
        out = {"logits": jax.nn.one_hot((last + 1) % v, v, dtype=jnp.float32).reshape(-1, v)}
        for i in range(self.config.model.num_hidden_layers):
            for kind, value in (("key", tokens), ("value", positions)):
                past = t[f"past_{kind}_{i}"]
                fill = value.astype(past.dtype)[:, :, None, None]  # [B, S, 1, 1]
                out[f"present_{kind}_{i}"] = past.at[rows, :, write, :].set(fill, mode="drop")
        return out
