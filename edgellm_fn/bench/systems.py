"""The JAX systems of the benchmark: edgellm_fn's xla provider and the naive JAX baseline.

Every system is a ``Runner``: ``start`` prefills a prompt and returns each row's greedy next
token; ``step`` feeds that token back and returns the next one. Tokens stay on the device; a
step is timed up to ``sync`` of its returned token (every output of one XLA executable becomes
ready together). All systems do the same work per step: embedding, the network, the final
norm, lm_head and the argmax.
"""

from __future__ import annotations

import dataclasses
import re
import time
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from ..engine.protocol import Engine
from ..runtime import loops, steps
from ..runtime.sampling import SamplingConfig, make_sampling_params
from ..state.resources import RuntimeState, create_state
from . import naive_jax


class Runner(Protocol):
    """One system under test, for one batch size."""

    system: str

    def start(self, ids: np.ndarray) -> Any:
        """Prefills ``ids`` ``[B, S]`` into a fresh cache; returns the greedy next tokens."""

    def step(self, token: Any) -> Any:
        """Decodes one token per row; returns the greedy next tokens."""

    def sync(self, token: Any) -> None:
        """Blocks until ``token`` (and everything its step computed) is ready."""

    def numpy(self, token: Any) -> np.ndarray:
        """``[B]`` int host copy of ``token``."""

    def loop_seconds(self, ids: np.ndarray, steps: int) -> float | None:
        """Seconds of a whole-generation device loop over ``steps`` greedy tokens after a
        prefill of ``ids`` (compile excluded); None for a system without one."""

    def step_launches(self, token: Any) -> int | None:
        """Device operations one decode step launches; None where not counted."""


class JaxRunner:
    """``sync``/``numpy`` shared by the JAX systems."""

    def sync(self, token: jax.Array) -> None:
        jax.block_until_ready(token)

    def numpy(self, token: jax.Array) -> np.ndarray:
        return np.asarray(token).reshape(-1)

    def loop_seconds(self, ids: np.ndarray, steps: int) -> float | None:
        return None

    def step_launches(self, token: jax.Array) -> int | None:
        return None


def _greedy_decode_step(
    engine: Engine, state: RuntimeState, token: jax.Array
) -> tuple[RuntimeState, jax.Array]:
    x = jnp.take(engine.embedding, token[:, None], axis=0)
    state = steps.decode_step(engine, state, x)
    return state, jnp.argmax(state.io.logits, -1).astype(jnp.int32)


# The Python decode loop's unit of work in one executable: embed + decode_step (the body that
# decode_while runs) + argmax, state donated. Static: the engine's config (pytree structure);
# dynamic: params, state, token.
_greedy_decode_jit = jax.jit(_greedy_decode_step, donate_argnames=("state",), keep_unused=True)
_argmax = jax.jit(lambda logits: jnp.argmax(logits, -1).astype(jnp.int32))


@dataclasses.dataclass
class XlaRunner(JaxRunner):
    """edgellm_fn: the public ``prefill``, then the jitted ``decode_step`` body per token."""

    engine: Engine
    batch: int
    system: str = "edgellm_fn/xla"
    state: RuntimeState | None = None

    def start(self, ids: np.ndarray) -> jax.Array:
        # A new request reuses the state's buffers (as a server does): a fresh prefill donates
        # them, so every executable and XLA's recorded command buffers see the same addresses.
        state, self.state = self.state, None
        if state is None:
            state = create_state(self.engine.config, self.batch)
        lengths = np.full(ids.shape[0], ids.shape[1])
        self.state = steps.prefill(self.engine, state, steps.embed(self.engine, ids), lengths)
        return _argmax(self.state.io.logits)

    def step(self, token: jax.Array) -> jax.Array:
        self.state, token = _greedy_decode_jit(self.engine, self.state, token)
        return token

    def loop_seconds(self, ids: np.ndarray, steps: int) -> float:
        """``decode_while`` (the library's device loop) over ``steps`` greedy tokens; the second
        of two runs, so the compile is excluded."""
        b = ids.shape[0]
        config, params = make_sampling_params(
            b, vocab_size=self.engine.config.model.vocab_size, top_k=1,
            config=SamplingConfig(max_top_k=1),
        )  # fmt: skip
        limits = loops.token_limits(self.engine, np.full(b, ids.shape[1]), steps)
        for _ in range(2):
            self.start(ids)
            jax.block_until_ready(self.state)
            t0 = time.perf_counter()
            self.state, res = loops.decode_while(
                self.engine, self.state, config, params, jax.random.PRNGKey(0), limits,
                eos_ids=(), max_new_tokens=steps,
            )  # fmt: skip
            jax.block_until_ready(res.tokens)
            seconds = time.perf_counter() - t0
        return seconds

    def step_launches(self, token: jax.Array) -> int:
        """Fusions and custom calls in the compiled per-token step (XLA's kernel-launching ops;
        an FFI custom call counts once even where it launches two kernels)."""
        hlo = _greedy_decode_jit.lower(self.engine, self.state, token).compile().as_text()
        return len(re.findall(r"\b(?:fusion|custom-call)\(", hlo))


@dataclasses.dataclass
class NaiveRunner(JaxRunner):
    """The plain jitted JAX step of ``bench/naive_jax.py`` on the same weights."""

    engine: Engine
    batch: int
    system: str = "naive-jax"
    cache: list | None = None
    pos: jax.Array | None = None

    def __post_init__(self) -> None:
        self._nj = naive_jax
        cfg = self.engine.config
        self.params = self._nj.split_params(cfg.model, self.engine.params)
        self.rope = self._nj.rope_table(cfg.model, cfg.kv_capacity)

    def start(self, ids: np.ndarray) -> jax.Array:
        cfg = self.engine.config
        self.cache = None
        cache = self._nj.init_cache(cfg.model, self.batch, cfg.kv_capacity, cfg.kv_dtype)
        token, self.cache = self._nj.prefill(
            cfg.model, self.params, cache, jnp.asarray(ids, jnp.int32), self.rope
        )
        self.pos = jnp.int32(ids.shape[1])
        return token

    def step(self, token: jax.Array) -> jax.Array:
        m = self.engine.config.model
        token, self.cache, self.pos = self._nj.decode(
            m, self.params, self.cache, token, self.pos, self.rope
        )
        return token
