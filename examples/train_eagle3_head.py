"""Trains an EAGLE3 draft head for the embedded demo model (self-distillation, training-time test).

The draft (``models/eagle3.py``: fc 3H->H, one decoder layer over [embedding; hidden], norm,
lm_head) learns the base's own next-token distribution on the demo model's corpus (the Python
stdlib, the same train/held-out split as ``examples/train_demo_model.py``). Features are the
base's hidden states entering the ``--aux-layers`` (as the base engine's ``hidden_states``
output). Training-time test (EAGLE3): the draft is unrolled ``--ttt-steps`` steps, step ``s``
feeding its own previous output as the hidden state, with the attention the runtime's tree
steps see (the real draft cache up to the origin plus the unrolled chain itself).

Draft entry ``p`` pairs the base feature of position ``p`` with the token of position ``p + 1``
and predicts position ``p + 2``; its ``s``-th unrolled step sits at position ``p + s - 1``,
takes the token of ``p + s`` and predicts ``p + s + 1`` (target: the base's distribution there).

Writes a community-layout checkpoint (``config.json`` ``LlamaForCausalLMEagle3``,
``model.safetensors`` bfloat16, no embedding: the base's is shared) and measures acceptance
with the real runtime (``spec_decode_generate``) for a few tree shapes::

    python examples/train_eagle3_head.py --steps 400 --out edgellm_fn/assets/demo_eagle3
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import sysconfig
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(HERE))

import train_demo_model as tdm  # noqa: E402  (examples/ is not a package)

TREES = {  # name: (tree_topk, tree_steps, verify_size)
    "chain": (1, 4, 5),
    "default": (4, 4, 16),
    "wide": (8, 3, 24),
    "deep": (2, 6, 12),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", type=Path, default=REPO / "edgellm_fn" / "assets" / "demo_model")
    p.add_argument("--out", type=Path, default=Path("demo_eagle3"), help="checkpoint directory")
    p.add_argument("--platform", default="cpu", help="JAX platform: cpu, gpu (= cuda), rocm, ...")
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--ttt-steps", type=int, default=3, help="training-time test unroll depth")
    p.add_argument("--ttt-decay", type=float, default=0.8, help="loss weight ratio per step")
    p.add_argument("--aux-layers", default="1,2,4", help="base layers whose inputs are features")
    p.add_argument("--intermediate", type=int, default=512)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--warmup", type=int, default=30)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--eval-windows", type=int, default=32)
    p.add_argument(
        "--greedy-sequences",
        type=int,
        default=512,
        help="sequences the base generates greedily (from corpus prompts) to train on too",
    )
    p.add_argument("--greedy-prompt", type=int, default=32, help="their prompt length")
    p.add_argument("--greedy-frac", type=float, default=0.5, help="share of each batch")
    p.add_argument("--measure-tokens", type=int, default=96, help="new tokens per prompt")
    p.add_argument(
        "--measure-trees", nargs="+", default=list(TREES), choices=list(TREES), metavar="TREE"
    )
    p.add_argument(
        "--measure-dtypes",
        nargs="+",
        default=["float32", "bfloat16"],
        choices=["float32", "bfloat16"],
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stdlib", type=Path, default=None, help="default: the running Python's")
    return p.parse_args(argv)


def draft_config_dict(base_cfg: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """The draft's ``config.json`` (EAGLE3 community layout)."""
    return {
        "architectures": ["LlamaForCausalLMEagle3"],
        "model_type": "llama",
        "hidden_size": base_cfg["hidden_size"],
        "intermediate_size": args.intermediate,
        "num_attention_heads": base_cfg["num_attention_heads"],
        "num_key_value_heads": base_cfg["num_key_value_heads"],
        "head_dim": base_cfg["head_dim"],
        "num_hidden_layers": 1,
        "hidden_act": "silu",
        "vocab_size": base_cfg["vocab_size"],
        "draft_vocab_size": base_cfg["vocab_size"],
        "target_hidden_size": base_cfg["hidden_size"],
        "max_position_embeddings": base_cfg["max_position_embeddings"],
        "rms_norm_eps": base_cfg["rms_norm_eps"],
        "rope_theta": base_cfg["rope_parameters"]["rope_theta"],
        "attention_bias": False,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "eagle_config": {
            "eagle_aux_hidden_state_layer_ids": [int(i) for i in args.aux_layers.split(",")],
            "use_aux_hidden_state": True,
        },
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    import jax

    # "gpu" as jax_platforms also asks for ROCm, which fails on a CUDA host (JAX 0.11).
    jax.config.update("jax_platforms", "cuda" if args.platform == "gpu" else args.platform)
    import jax.numpy as jnp

    try:
        import optax
    except ModuleNotFoundError:
        sys.exit("train_eagle3_head.py needs optax: pip install -e '.[train]'")

    from edgellm_fn.models import eagle3, llama, tree
    from edgellm_fn.models.eagle3_loader import save_eagle3_draft
    from edgellm_fn.models.loader import load_checkpoint
    from edgellm_fn.state.rope import model_rope_table

    wall0 = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    log_lines: list[str] = []

    def log(msg: str) -> None:
        print(msg, flush=True)
        log_lines.append(msg)

    command = "python " + shlex.join(
        [os.path.relpath(__file__, Path.cwd())] + (sys.argv[1:] if argv is None else argv)
    )
    log(f"command: {command}")
    log(f"jax {jax.__version__} devices {jax.devices()}")

    root = args.stdlib or Path(sysconfig.get_paths()["stdlib"])
    files = tdm.stdlib_files(root)
    train = [f for i, f in enumerate(files) if i % 20 != 0]
    held = [f for i, f in enumerate(files) if i % 20 == 0]
    train_tokens, held_tokens = tdm.encode_files(train), tdm.encode_files(held)
    log(f"stdlib {root}: {len(train)} train files, {len(held)} held-out files")

    base_cfg_dict = json.loads((args.base / "config.json").read_text())
    mcfg, bparams = load_checkpoint(args.base, dtype="float32")
    dcfg_dict = draft_config_dict(base_cfg_dict, args)
    dcfg = eagle3.Eagle3Config.from_dict(dcfg_dict)
    aux = dcfg.aux_layer_ids
    t_len, n_steps = args.seq_len, args.ttt_steps
    table = model_rope_table(mcfg, t_len + n_steps)[0]  # [C, rot]
    embed = bparams["embed"]

    def base_features(tokens: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Causal base pass: ``(features [B, T, 3H], log-probs [B, T, V])``."""
        b, t = tokens.shape
        x = embed[tokens]
        pos = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
        cs = jnp.broadcast_to(table[:t], (b, t, table.shape[-1]))
        shape = (b, mcfg.num_key_value_heads, t, mcfg.head_dim)
        caches = [jnp.zeros(shape, x.dtype) for _ in range(mcfg.num_hidden_layers)]
        lengths = jnp.full((b,), t, jnp.int32)
        hidden, feats, _, _ = tree.run_layers_aux(
            mcfg, bparams, x, cs, pos, pos, lengths, caches, caches, aux
        )
        return feats, jax.nn.log_softmax(llama.lm_logits(mcfg, bparams, hidden), axis=-1)

    def draft_unroll(dp: dict, feats: jax.Array, tokens: jax.Array) -> list[jax.Array]:
        """Logits ``[B, T, Vd]`` of each unrolled step (row ``p``: the chain from entry ``p``)."""
        b, t = tokens.shape
        eps, hq, hkv, d = (
            dcfg.rms_norm_eps,
            dcfg.num_attention_heads,
            dcfg.num_key_value_heads,
            (dcfg.head_dim),
        )
        g = hq // hkv
        causal = jnp.arange(t)[None, :] <= jnp.arange(t)[:, None]  # [query, key]
        hidden = llama.linear(feats, dp["fc"])
        ks, vs, logits = [], [], []
        for s in range(1, n_steps + 1):
            tok = jnp.concatenate([tokens[:, s:], jnp.zeros((b, s), tokens.dtype)], axis=1)
            cs = jnp.broadcast_to(table[s - 1 : s - 1 + t], (b, t, table.shape[-1]))
            h = llama.rms_norm(hidden, dp["hidden_norm"], eps)
            x_in = jnp.concatenate([llama.rms_norm(embed[tok], dp["attn_norm"], eps), h], -1)
            q, k, v = jnp.split(
                llama.linear(x_in, dp["wqkv"]), [dcfg.q_size, dcfg.q_size + dcfg.kv_size], -1
            )
            q = llama.apply_rope(q.reshape(b, t, hq, d), cs).reshape(b, t, hkv, g, d)
            k = llama.apply_rope(k.reshape(b, t, hkv, d), cs)
            ks.append(k)
            vs.append(v.reshape(b, t, hkv, d))
            sc = jnp.einsum("btkgd,bckd->bkgtc", q, ks[0]) * d**-0.5
            sc = jnp.where(causal[None, None, None], sc, -1e30)
            diag = [jnp.einsum("btkgd,btkd->bkgt", q, kj)[..., None] * d**-0.5 for kj in ks[1:]]
            p = jax.nn.softmax(jnp.concatenate([sc, *diag], axis=-1), axis=-1)
            out = jnp.einsum("bkgtc,bckd->btkgd", p[..., :t], vs[0])
            for j, vj in enumerate(vs[1:]):
                out = out + p[..., t + j].transpose(0, 3, 1, 2)[..., None] * vj[:, :, :, None]
            x = hidden + llama.linear(out.reshape(b, t, hq * d), dp["wo"])
            gate, up = jnp.split(
                llama.linear(llama.rms_norm(x, dp["mlp_norm"], eps), dp["w_gate_up"]), 2, -1
            )
            hidden = x + llama.linear(jax.nn.silu(gate) * up, dp["w_down"])
            logits.append(eagle3.draft_logits(dcfg, dp, hidden))
        return logits

    def loss_fn(dp: dict, tokens: jax.Array) -> tuple[jax.Array, jax.Array]:
        feats, logp = base_features(tokens)
        feats, logp = jax.lax.stop_gradient(feats), jax.lax.stop_gradient(logp)
        t = tokens.shape[1]
        total, accs = 0.0, []
        for s, lg in enumerate(draft_unroll(dp, feats, tokens), start=1):
            target = jnp.concatenate([logp[:, s:], jnp.zeros_like(logp[:, :s])], axis=1)
            valid = (jnp.arange(t) < t - s)[None, :]
            ce = -jnp.sum(jnp.exp(target) * jax.nn.log_softmax(lg, -1), -1)
            hit = jnp.argmax(lg, -1) == jnp.argmax(target, -1)
            n = jnp.sum(valid) * tokens.shape[0]
            total = total + args.ttt_decay ** (s - 1) * jnp.sum(jnp.where(valid, ce, 0)) / n
            accs.append(jnp.sum(jnp.where(valid, hit, 0)) / n)
        return total, jnp.stack(accs)

    h, f = dcfg.hidden_size, dcfg.intermediate_size
    key = jax.random.split(jax.random.PRNGKey(args.seed), 5)

    def normal(k, shape, std=0.02):
        return std * jax.random.normal(k, shape, jnp.float32)

    qkv = dcfg.q_size + 2 * dcfg.kv_size
    dp = {
        "fc": normal(key[0], (h, 3 * mcfg.hidden_size)),
        "attn_norm": jnp.ones((h,)),
        "hidden_norm": jnp.ones((h,)),
        "wqkv": normal(key[1], (qkv, 2 * h)),
        "wo": normal(key[2], (h, dcfg.q_size)),
        "mlp_norm": jnp.ones((h,)),
        "w_gate_up": normal(key[3], (2 * f, h)),
        "w_down": normal(key[4], (h, f)),
        "final_norm": jnp.asarray(bparams["final_norm"]),
        "lm_head": jnp.asarray(embed),  # the base's tied head as the start
    }
    n_params = sum(int(x.size) for x in jax.tree_util.tree_leaves(dp))
    log(f"draft: {n_params} parameters; aux layers {list(aux)}; config {json.dumps(dcfg_dict)}")

    sched = optax.warmup_cosine_decay_schedule(
        0.0, args.lr, args.warmup, max(args.steps, args.warmup + 1), end_value=args.lr * 0.1
    )
    decay = jax.tree_util.tree_map(lambda x: x.ndim >= 2, dp)
    opt = optax.chain(
        optax.clip_by_global_norm(1.0),
        optax.adamw(sched, b1=0.9, b2=0.95, weight_decay=args.weight_decay, mask=decay),
    )
    opt_state = opt.init(dp)

    @jax.jit
    def train_step(dp, opt_state, batch):
        (loss, accs), grads = jax.value_and_grad(loss_fn, has_aux=True)(dp, batch)
        updates, opt_state = opt.update(grads, opt_state, dp)
        return optax.apply_updates(dp, updates), opt_state, loss, accs

    eval_fn = jax.jit(loss_fn)
    greedy = np.zeros((0, t_len), np.int32)
    if args.greedy_sequences:
        g0 = time.perf_counter()
        greedy = greedy_sequences(
            args.base, train_tokens, args.greedy_sequences, args.greedy_prompt, t_len, args.seed
        )
        log(
            f"greedy data: {len(greedy)} of {args.greedy_sequences} sequences of {t_len} tokens "
            f"(prompt {args.greedy_prompt} corpus tokens, the rest the base's greedy output; "
            f"rows that hit EOS dropped) in {time.perf_counter() - g0:.0f} s"
        )
    n_greedy = int(round(args.batch * args.greedy_frac)) if len(greedy) else 0
    held_windows = jnp.asarray(tdm.eval_windows(held_tokens, args.eval_windows, t_len))
    rng = np.random.default_rng(args.seed)
    t0 = time.perf_counter()
    for step in range(1, args.steps + 1):
        starts = rng.integers(0, len(train_tokens) - t_len, args.batch - n_greedy)
        rows = [train_tokens[s : s + t_len] for s in starts]
        rows += list(greedy[rng.integers(0, len(greedy), n_greedy)]) if n_greedy else []
        batch = np.stack(rows).astype(np.int32)
        dp, opt_state, loss, accs = train_step(dp, opt_state, jnp.asarray(batch))
        if step % 25 == 0 or step == 1 or step == args.steps:
            acc = " ".join(f"{a:.3f}" for a in np.asarray(accs))
            log(
                f"step {step}: loss {float(loss):.4f} top-1 match per TTT step {acc} "
                f"({time.perf_counter() - t0:.0f} s)"
            )
    train_s = time.perf_counter() - t0
    eval_loss, eval_accs = eval_fn(dp, held_windows)
    eval_accs = [round(float(a), 4) for a in np.asarray(eval_accs)]
    log(f"held-out: loss {float(eval_loss):.4f}, draft argmax == base argmax per step {eval_accs}")

    import ml_dtypes

    bf16 = lambda x: np.asarray(x, np.float32).astype(ml_dtypes.bfloat16)  # noqa: E731
    q, kv = dcfg.q_size, dcfg.kv_size
    wq, wk, wv = np.split(np.asarray(dp["wqkv"]), [q, q + kv], axis=0)
    wg, wu = np.split(np.asarray(dp["w_gate_up"]), 2, axis=0)
    m = "midlayer."
    tensors = {
        "fc.weight": bf16(dp["fc"]),
        m + "input_layernorm.weight": bf16(dp["attn_norm"]),
        m + "hidden_norm.weight": bf16(dp["hidden_norm"]),
        m + "self_attn.q_proj.weight": bf16(wq),
        m + "self_attn.k_proj.weight": bf16(wk),
        m + "self_attn.v_proj.weight": bf16(wv),
        m + "self_attn.o_proj.weight": bf16(dp["wo"]),
        m + "post_attention_layernorm.weight": bf16(dp["mlp_norm"]),
        m + "mlp.gate_proj.weight": bf16(wg),
        m + "mlp.up_proj.weight": bf16(wu),
        m + "mlp.down_proj.weight": bf16(dp["w_down"]),
        "norm.weight": bf16(dp["final_norm"]),
        "lm_head.weight": bf16(dp["lm_head"]),
        "d2t": np.zeros(dcfg.draft_vocab_size, np.int64),
        "t2d": np.ones(dcfg.vocab_size, bool),
    }
    save_eagle3_draft(args.out, dcfg_dict, tensors)
    size = (args.out / "model.safetensors").stat().st_size
    log(f"wrote {args.out} (model.safetensors {size} bytes)")

    accept = measure_acceptance(
        args.base,
        args.out,
        held_tokens,
        args.measure_tokens,
        log,
        trees={t: TREES[t] for t in args.measure_trees},
        dtypes=args.measure_dtypes,
    )
    report = {
        "command": command,
        "steps": args.steps,
        "batch": args.batch,
        "seq_len": t_len,
        "ttt_steps": n_steps,
        "lr": args.lr,
        "warmup": args.warmup,
        "weight_decay": args.weight_decay,
        "greedy_sequences": len(greedy),
        "greedy_frac": args.greedy_frac if n_greedy else 0.0,
        "measure_tokens": args.measure_tokens,
        "params": n_params,
        "safetensors_bytes": size,
        "train_s": round(train_s, 1),
        "wall_s": round(time.perf_counter() - wall0, 1),
        "heldout_loss": round(float(eval_loss), 4),
        "heldout_top1_match": eval_accs,
        "acceptance": accept,
        "machine": f"{os.uname().machine} Linux, {os.cpu_count()} CPU cores visible, "
        f"JAX {jax.__version__} on {jax.devices()[0].platform}",
    }
    (args.out / "train_report.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "train_log.txt").write_text("\n".join(log_lines) + "\n")
    (args.out / "MODEL_CARD.md").write_text(model_card(report, dcfg_dict))


def model_card(r: dict[str, Any], cfg: dict[str, Any]) -> str:
    """The head's MODEL_CARD.md from the run's report."""
    rows = "\n".join(
        f"| {name} | {a['tree_topk']} | {a['tree_steps']} | {a['verify_size']} | {dt} "
        f"| {a[dt]['rounds']} | {a[dt]['accepted_per_round']:.2f} | {a[dt]['rows_equal_vanilla']} |"
        for name, a in r["acceptance"].items()
        for dt in ("float32", "bfloat16")
        if dt in a
    )
    match = ", ".join(f"{m:.3f}" for m in r["heldout_top1_match"])
    aux = cfg["eagle_config"]["eagle_aux_hidden_state_layer_ids"]
    return f"""# EAGLE3 draft head of the edgellm_fn demo model

An EAGLE3 speculative-decoding draft head for `../demo_model` (the 4-layer byte-level Python
completion model), trained by `examples/train_eagle3_head.py`. It only fits that base model.

## Architecture

`LlamaForCausalLMEagle3` community layout (`config.json`, `model.safetensors`): `fc` 3x192 -> 192
over the base's hidden states entering layers {aux} (`eagle_aux_hidden_state_layer_ids`; 4 = the
last layer's output), one decoder layer over [embedding; hidden] (384 inputs to q/k/v, 4 query /
2 KV heads of 48, SwiGLU {cfg["intermediate_size"]}), `norm`, `lm_head` over the full 264-token
vocabulary (`d2t` all zeros, `t2d` all true); no `embed_tokens` (the base's embedding is
shared). {r["params"]:,} parameters, bfloat16, `model.safetensors` {r["safetensors_bytes"]:,} bytes.

## Training

Self-distillation: the target of every draft prediction is the base model's own next-token
distribution (soft cross-entropy, the base run in float32 on the demo model's shipped weights).
Each batch: {1 - r["greedy_frac"]:.0%} uniformly random 128-token windows of the demo model's
training files (the Python 3.11.7 stdlib, every 20th file held out, as
`examples/train_demo_model.py`), {r["greedy_frac"]:.0%} rows of {r["greedy_sequences"]}
sequences the base generated greedily (32-token prompts from the training files, 96 greedy
tokens: the kind of text the head drafts for at inference). Training-time test as in
the EAGLE3 paper: the draft is unrolled {r["ttt_steps"]} steps, each step feeding its own output
hidden state and attending to the real draft entries up to its origin plus its own chain (the
attention the runtime's tree steps see); step losses are weighted 0.8^(s-1).
AdamW (b1 0.9, b2 0.95, weight decay {r["weight_decay"]}), peak learning rate {r["lr"]}, linear
warmup {r["warmup"]} steps then cosine decay to 10%, clipping at norm 1, batch {r["batch"]} x
{r["seq_len"]} tokens, {r["steps"]} steps
({r["train_s"]:.0f} s of training, {r["wall_s"]:.0f} s wall with data, evaluation and the
acceptance runs) on {r["machine"]}.

Command (run from the repository root):

```
{r["command"]}
```

Held-out (32 windows of the held-out files): draft argmax == base argmax for unrolled step
1, 2, 3...: {match}.

## Acceptance (measured with the runtime)

`spec_decode_generate` (the jitted `lax.while_loop` over rounds, xla provider; base and head
run in float32, and in bfloat16 as shipped) on the demo's 4 prompts and the starts of 4
held-out windows, {r["measure_tokens"]} new tokens each, batch 4, KV capacity 128, greedy.
Accepted = mean tokens accepted per base verify step (the bonus token included). Rows equal =
rows whose output equals vanilla greedy decoding (`generate(top_k=1)`, same dtype) token for
token.

| tree | K | steps | verify size | dtype | rounds | accepted per base step | rows equal vanilla |
|---|---|---|---|---|---|---|---|
{rows}

In float32 every row equals vanilla greedy. In bfloat16 a row can differ where the base's
top two logits are within bfloat16 rounding of each other: the tree-verify step (reference
layers, tree mask) and vanilla decoding round differently and can break such a near-tie the
other way. Checked for the default tree: the one differing row (the 8th prompt) first differs
at its 61st generated token, where the base's two best logits are 0.005 apart in bfloat16
(`llama.forward` on the same prefix) and in the opposite order in float32; the speculative run
gave float32's token. That is a numerics property of bfloat16 decoding, not of this head.

The default tree is the CLI's (`edgellm-fn generate --draft DIR`: K 4, 4 steps, verify 16).
The full log of the run is `train_log.txt`, its figures `train_report.json`.
"""


def greedy_sequences(
    base_dir: Path, tokens: np.ndarray, n: int, prompt_len: int, t_len: int, seed: int
) -> np.ndarray:
    """``[<= n, t_len]`` int32: corpus prompts continued by the base's greedy decoding (the
    runtime's, bfloat16 as shipped), so training also sees the text the head will draft for."""
    from edgellm_fn.engine.loading import load_engine
    from edgellm_fn.runtime.generate import generate
    from edgellm_fn.text.tokenizer import Tokenizer

    engine = load_engine(base_dir, max_batch_size=32, max_input_len=prompt_len, kv_capacity=t_len)
    tok = Tokenizer.from_dir(base_dir, vocab_size=engine.config.model.vocab_size)
    rng = np.random.default_rng(seed + 1)
    starts = rng.integers(0, len(tokens) - prompt_len, n)
    prompts = [tokens[s : s + prompt_len].astype(np.int64).tolist() for s in starts]
    new = t_len - prompt_len
    out = generate(engine, tok, prompts, max_new_tokens=new, top_k=1, loop="while")
    rows = [p + c.tokens for p, c in zip(prompts, out, strict=True) if len(c.tokens) == new]
    return np.asarray(rows, np.int32).reshape(-1, t_len)


def measure_prompts(held_tokens: np.ndarray, n_held: int = 4, length: int = 48) -> list[str]:
    """The demo's prompts and the starts of a few held-out windows (bytes, specials dropped)."""
    from edgellm_fn.demo import PROMPTS

    out = list(PROMPTS)
    for s in np.linspace(0, len(held_tokens) - 4 * length, n_held).astype(np.int64):
        window = held_tokens[s : s + 4 * length]
        text = bytes(int(t) for t in window if t < 256)[:length].decode("utf-8", "replace")
        out.append(text)
    return out


def measure_acceptance(
    base_dir: Path,
    draft_dir: Path,
    held_tokens: np.ndarray,
    max_new: int,
    log,
    trees: dict[str, tuple[int, int, int]] = TREES,
    dtypes: list[str] = ("float32", "bfloat16"),
) -> dict[str, dict[str, Any]]:
    """Mean accepted tokens per base step (bonus included) of each tree of ``trees``, with
    ``spec_decode_generate`` on ``measure_prompts``, in each of ``dtypes`` (bfloat16 as
    shipped), and how many rows equal vanilla greedy decoding of the same dtype."""
    from edgellm_fn.engine.loading import load_engine
    from edgellm_fn.engine.xla_spec import load_spec_engines
    from edgellm_fn.runtime.generate import generate
    from edgellm_fn.runtime.spec_generate import spec_decode_generate
    from edgellm_fn.text.tokenizer import Tokenizer

    prompts_text = measure_prompts(held_tokens)
    limits = dict(max_batch_size=4, max_input_len=64, kv_capacity=128)
    tok = Tokenizer.from_dir(base_dir)
    prompts = [tok.encode(p)[:64] for p in prompts_text]
    out: dict[str, dict[str, Any]] = {}
    for dtype in dtypes:
        engine = load_engine(base_dir, dtype=dtype, **limits)
        vanilla = generate(engine, tok, prompts, max_new_tokens=max_new, top_k=1, loop="while")
        for name, (k, steps, v) in trees.items():
            base, draft = load_spec_engines(
                base_dir,
                draft_dir,
                tree_topk=k,
                tree_steps=steps,
                verify_size=v,
                dtype=dtype,
                **limits,
            )
            comps, stats = spec_decode_generate(
                base, draft, tok, prompts, max_new_tokens=max_new, loop="while"
            )
            same = sum(a.tokens == b.tokens for a, b in zip(comps, vanilla, strict=True))
            row = out.setdefault(name, {"tree_topk": k, "tree_steps": steps, "verify_size": v})
            row[dtype] = {
                "rounds": stats.rounds,
                "accepted_per_round": round(stats.accepted_per_round, 3),
                "rows_equal_vanilla": f"{same}/{len(prompts)}",
            }
            log(
                f"acceptance {dtype} {name} (K={k}, steps={steps}, V={v}): "
                f"{stats.accepted_per_round:.3f} tokens per base step over {stats.rounds} rounds; "
                f"rows equal to vanilla greedy: {same}/{len(prompts)}"
            )
    return out


if __name__ == "__main__":
    main()
