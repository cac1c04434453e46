"""Research-style decode loop written directly on the step functions.

One prompt is put in two batch rows; row 0 decodes greedily (temperature 0), row 1 samples
(temperature 0.9, top-p 0.95). The loop is the user's own: embed -> decode -> sample, threading
the donated state, and it tracks how far the two continuations' log-probabilities drift apart.

    python examples/greedy_vs_sampled.py [--model CKPT_DIR] [--prompt TEXT] [--steps N]
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

import edgellm_fn as ef
from edgellm_fn.demo import demo_model_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="checkpoint dir (default: demo model)")
    parser.add_argument("--prompt", default="def is_prime(n):\n")
    parser.add_argument("--steps", type=int, default=48)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    path = args.model or demo_model_dir()
    engine = ef.load_engine(path, max_batch_size=2, max_input_len=64, kv_capacity=128)
    tok = ef.Tokenizer.from_dir(path)
    ids = tok.encode(args.prompt)

    # Row 0 greedy, row 1 sampled: per-row params, one static SamplingConfig (one compilation).
    config, params = ef.make_sampling_params(
        2, vocab_size=engine.config.model.vocab_size, temperature=[0.0, 0.9], top_p=[1.0, 0.95]
    )
    sample = jax.jit(ef.sample, static_argnums=0)

    state = ef.create_state(engine.config, batch=2)
    prompt = np.array([ids, ids], np.int32)
    state = ef.prefill(engine, state, ef.embed(engine, prompt), np.array([len(ids)] * 2))
    key = jax.random.PRNGKey(args.seed)
    out, logp = [[], []], np.zeros(2)
    for _ in range(args.steps):
        key, sub = jax.random.split(key)
        s = sample(config, params, state.io.logits, jax.random.split(sub, 2))
        tokens = np.asarray(s.tokens)
        logp += np.asarray(s.token_logprobs)
        for row in range(2):
            out[row].append(int(tokens[row]))
        state = ef.decode(engine, state, ef.embed(engine, jnp.asarray(tokens)[:, None]))

    for row, name in enumerate(("greedy", "sampled T=0.9 p=0.95")):
        print(f"--- {name}: total log-prob {logp[row]:.1f} over {args.steps} tokens")
        print(args.prompt + tok.decode(out[row]))
    diverged = next((i for i, (a, b) in enumerate(zip(*out, strict=True)) if a != b), None)
    print(f"rows diverge at step {diverged}; KV lengths now {np.asarray(state.kv.lengths)}")


if __name__ == "__main__":
    main()
