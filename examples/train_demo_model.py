"""Trains edgellm_fn's embedded demo model: a small byte-level Llama on the Python stdlib's sources.

The data are the ``.py`` files of ``sysconfig.get_paths()["stdlib"]`` (``site-packages`` excluded),
sorted by relative path; every 20th file is held out. Each file becomes ``<|bos|> bytes <|eos|>``;
training samples random windows of the concatenated training files, evaluation uses fixed evenly
spaced windows of the held-out files. Losses are reported in bits per byte (targets that are byte
tokens only), next to the unigram byte entropy of the same held-out windows.

The output is a Hugging Face checkpoint directory (``config.json``, ``model.safetensors``,
``tokenizer.json``, ``tokenizer_config.json``, ``generation_config.json``, ``MODEL_CARD.md``,
``train_log.txt``)::

    python examples/train_demo_model.py --out edgellm_fn/assets/demo_model
    python examples/train_demo_model.py --platform gpu --steps 4000 --batch 64 --out /tmp/demo
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import sys
import sysconfig
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

BYTE_TOKENS = 256
SPECIALS = ("<|bos|>", "<|eos|>", "<|pad|>", "<|user|>", "<|assistant|>")
BOS, EOS, PAD, USER, ASSISTANT = range(BYTE_TOKENS, BYTE_TOKENS + len(SPECIALS))
VOCAB = 264  # 256 bytes + 5 specials, padded to a multiple of 8
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if m['role'] == 'user' %}<|user|>{{ m['content'] }}<|eos|>"
    "{% elif m['role'] == 'assistant' %}<|assistant|>{{ m['content'] }}<|eos|>"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("demo_model"), help="checkpoint directory")
    p.add_argument("--platform", default="cpu", help="JAX platform: cpu, gpu (= cuda), rocm, ...")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--hidden", type=int, default=192)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--intermediate", type=int, default=512)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--eval-every", type=int, default=200)
    p.add_argument("--eval-windows", type=int, default=128)
    p.add_argument("--holdout-every", type=int, default=20, help="every Nth file is held out")
    p.add_argument("--dtype", default="bfloat16", choices=("float32", "bfloat16"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stdlib", type=Path, default=None, help="default: the running Python's")
    return p.parse_args(argv)


# ----------------------------------------------------------------------------- data


def stdlib_files(root: Path) -> list[Path]:
    """The stdlib's ``.py`` files sorted by relative path, ``site-packages`` excluded."""
    files = [p for p in root.rglob("*.py") if "site-packages" not in p.relative_to(root).parts]
    return sorted((p for p in files if p.is_file()), key=lambda p: p.relative_to(root).as_posix())


def encode_files(files: list[Path]) -> np.ndarray:
    """``<|bos|> bytes <|eos|>`` of every file, concatenated, as uint16 token ids."""
    parts = []
    for f in files:
        data = np.frombuffer(f.read_bytes(), np.uint8).astype(np.uint16)
        parts += [np.array([BOS], np.uint16), data, np.array([EOS], np.uint16)]
    return np.concatenate(parts)


def eval_windows(tokens: np.ndarray, n: int, length: int) -> np.ndarray:
    """``n`` evenly spaced, non-overlapping windows ``[n, length]`` of ``tokens``."""
    starts = np.linspace(0, len(tokens) - length, n).astype(np.int64)
    return np.stack([tokens[s : s + length] for s in starts]).astype(np.int32)


def unigram_entropy_bits(tokens: np.ndarray) -> float:
    """Entropy (bits) of the empirical byte distribution of ``tokens`` (specials ignored)."""
    counts = np.bincount(tokens[tokens < BYTE_TOKENS], minlength=BYTE_TOKENS).astype(np.float64)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log2(p)).sum())


# ----------------------------------------------------------------------------- model files


def model_config_dict(args: argparse.Namespace) -> dict[str, Any]:
    """The ``config.json`` of the trained model (LlamaForCausalLM)."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": VOCAB,
        "hidden_size": args.hidden,
        "intermediate_size": args.intermediate,
        "num_hidden_layers": args.layers,
        "num_attention_heads": args.heads,
        "num_key_value_heads": args.kv_heads,
        "head_dim": args.hidden // args.heads,
        "hidden_act": "silu",
        "max_position_embeddings": args.seq_len,
        "rms_norm_eps": 1e-5,
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "tie_word_embeddings": True,
        "initializer_range": 0.02,
        "use_cache": True,
        "dtype": args.dtype,
        "bos_token_id": BOS,
        "eos_token_id": EOS,
        "pad_token_id": PAD,
    }


def byte_to_unicode() -> dict[int, str]:
    """GPT-2's printable stand-in character for each byte (the ByteLevel alphabet)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), 256)]
    chars, n = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + n)
            n += 1
    return chars


def tokenizer_json() -> dict[str, Any]:
    """A byte-level ``tokenizer.json``: token id == byte value; specials are added tokens."""
    alphabet = byte_to_unicode()
    added = [
        {
            "id": BYTE_TOKENS + i,
            "content": s,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": True,
        }
        for i, s in enumerate(SPECIALS)
    ]
    byte_level = {
        "type": "ByteLevel",
        "add_prefix_space": False,
        "trim_offsets": False,
        "use_regex": False,
    }
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": byte_level,
        "post_processor": None,
        "decoder": byte_level,
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": {alphabet[b]: b for b in range(256)},
            "merges": [],
        },
    }


def tokenizer_config_json(args: argparse.Namespace) -> dict[str, Any]:
    """``tokenizer_config.json``: specials and a chat template (``<|user|>``, ``<|assistant|>``)."""
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<|bos|>",
        "eos_token": "<|eos|>",
        "pad_token": "<|pad|>",
        "additional_special_tokens": ["<|user|>", "<|assistant|>"],
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": args.seq_len,
        "chat_template": CHAT_TEMPLATE,
    }


def generation_config_json() -> dict[str, Any]:
    return {
        "bos_token_id": BOS,
        "eos_token_id": EOS,
        "pad_token_id": PAD,
        "do_sample": True,
        "temperature": 0.8,
        "top_k": 40,
        "top_p": 0.95,
    }


def write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


# ----------------------------------------------------------------------------- training


def init_params(cfg, key) -> dict[str, Any]:
    """Normal(0.02) weights, residual outputs scaled by ``1/sqrt(2*layers)``, unit norms."""
    import jax
    import jax.numpy as jnp

    h, f, n = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    keys = iter(jax.random.split(key, 1 + 4 * n))

    def normal(shape, std=0.02):
        return std * jax.random.normal(next(keys), shape, jnp.float32)

    out_std = 0.02 / math.sqrt(2 * n)
    layers = [
        {
            "attn_norm": jnp.ones((h,), jnp.float32),
            "wqkv": normal((cfg.q_size + 2 * cfg.kv_size, h)),
            "wo": normal((h, cfg.q_size), out_std),
            "mlp_norm": jnp.ones((h,), jnp.float32),
            "w_gate_up": normal((2 * f, h)),
            "w_down": normal((h, f), out_std),
        }
        for _ in range(n)
    ]
    return {
        "embed": normal((cfg.vocab_size, h)),
        "final_norm": jnp.ones((h,), jnp.float32),
        "layers": layers,
    }


def make_loss(cfg) -> Callable:
    """``loss(params, windows[B, T+1]) -> (mean nats per byte target, byte-target count)``."""
    import jax
    import jax.numpy as jnp

    from edgellm_fn.models.llama import forward

    def loss(params, windows):
        inputs, targets = windows[:, :-1], windows[:, 1:]
        logits = forward(cfg, params, inputs)
        logp = jax.nn.log_softmax(logits, axis=-1)
        # A one-hot product rather than a gather: its gradient avoids a slow CPU scatter.
        nll = -(logp * jax.nn.one_hot(targets, cfg.vocab_size, dtype=logp.dtype)).sum(-1)
        mask = (targets < BYTE_TOKENS).astype(jnp.float32)
        count = mask.sum()
        return (nll * mask).sum() / jnp.maximum(count, 1.0), count

    return loss


def count_params(params) -> int:
    import jax

    return int(sum(x.size for x in jax.tree_util.tree_leaves(params)))


def model_card(r: dict[str, Any]) -> str:
    """``MODEL_CARD.md`` from the run's measured numbers ``r``."""
    specials = "`" + "`, `".join(SPECIALS) + "`"
    return f"""# edgellm_fn demo model

A small Llama-architecture language model trained by `examples/train_demo_model.py` so that the
demo and the tests of edgellm_fn have a model whose output means something. It completes Python
code; it is far too small to be useful for anything else and was never trained on chat data
(the chat template exists only so the template path can be exercised).

## Architecture

| | |
|---|---|
| architecture | `LlamaForCausalLM` (RMSNorm, SwiGLU, RoPE theta 10000, tied embeddings) |
| layers | {r["layers"]} |
| hidden size | {r["hidden"]} |
| intermediate size | {r["intermediate"]} |
| attention | {r["heads"]} query heads, {r["kv_heads"]} KV heads (GQA), head dim {r["head_dim"]} |
| vocabulary | {VOCAB}: 256 byte tokens (id == byte value) + {specials} \
(ids {BOS}-{ASSISTANT}), padded to a multiple of 8 |
| context | {r["seq_len"]} tokens (training window; `max_position_embeddings`) |
| parameters | {r["params"]:,} |
| weights | `model.safetensors`, {r["dtype"]}, {r["weights_bytes"]:,} bytes |
| package | {r["package_bytes"]:,} bytes (this directory) |

## Data

The `.py` files of the Python standard library of the training machine
(`sysconfig.get_paths()["stdlib"]` = `{r["stdlib"]}`, Python {r["python"]};
`site-packages` excluded), sorted by relative path. Every {r["holdout_every"]}th file
(index % {r["holdout_every"]} == 0) is held out: {r["train_files"]:,} training files
({r["train_tokens"]:,} tokens), {r["heldout_files"]:,} held-out files
({r["heldout_tokens"]:,} tokens). Each file is `<|bos|> bytes <|eos|>`; training samples
uniformly random windows of {r["seq_len"]} + 1 tokens from the concatenated training files
(seed {r["seed"]}).

## Training

AdamW (b1 0.9, b2 0.95, weight decay {r["weight_decay"]}), peak learning rate {r["lr"]},
linear warmup {r["warmup"]} steps then cosine decay to 10%, gradient clipping at norm 1.0,
float32 training, batch {r["batch"]} x {r["seq_len"]} tokens, {r["steps"]:,} steps
({r["tokens_seen"]:,} tokens seen).

Command (run from the repository root):

```
{r["command"]}
```

Trained in {r["train_seconds"]:.0f} s ({r["steps_per_s"]:.2f} steps/s; \
{r["wall_seconds"]:.0f} s wall in all, data and evaluation included) on {r["machine"]}.

## Held-out loss

Measured on {r["eval_windows"]} evenly spaced windows of {r["seq_len"]} + 1 tokens of the held-out
files ({r["eval_bytes"]:,} byte targets; targets that are special tokens are not counted):

| | bits per byte |
|---|---|
| unigram byte entropy of the same held-out windows | {r["unigram_bits"]:.3f} |
| unigram byte entropy of all held-out files | {r["unigram_bits_all"]:.3f} |
| model, float32 weights | {r["heldout_bits_f32"]:.3f} |
| model, shipped {r["dtype"]} weights | {r["heldout_bits_shipped"]:.3f} |
| final train loss (last {r["train_avg_steps"]} steps, float32) | {r["train_bits"]:.3f} |

The full log of the run is `train_log.txt`.
"""


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    import jax

    # "gpu" as jax_platforms also asks for ROCm, which fails on a CUDA host (JAX 0.11).
    jax.config.update("jax_platforms", "cuda" if args.platform == "gpu" else args.platform)
    import jax.numpy as jnp

    try:
        import optax
    except ModuleNotFoundError:
        sys.exit("train_demo_model.py needs optax: pip install -e '.[train]'")

    repo = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(repo))
    from edgellm_fn.config import ModelConfig
    from edgellm_fn.models.loader import load_checkpoint, save_weights

    wall0 = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    log_file = (args.out / "train_log.txt").open("w")

    def log(msg: str) -> None:
        print(msg, flush=True)
        log_file.write(msg + "\n")
        log_file.flush()

    command = "python " + shlex.join(
        [os.path.relpath(__file__, Path.cwd())] + (sys.argv[1:] if argv is None else argv)
    )
    log(f"command: {command}")
    log(f"jax {jax.__version__} devices {jax.devices()}")

    root = args.stdlib or Path(sysconfig.get_paths()["stdlib"])
    files = stdlib_files(root)
    held = [f for i, f in enumerate(files) if i % args.holdout_every == 0]
    train = [f for i, f in enumerate(files) if i % args.holdout_every != 0]
    train_tokens, held_tokens = encode_files(train), encode_files(held)
    windows = eval_windows(held_tokens, args.eval_windows, args.seq_len + 1)
    unigram = unigram_entropy_bits(windows[:, 1:].ravel())
    unigram_all = unigram_entropy_bits(held_tokens)
    log(
        f"stdlib {root}: {len(train)} train files ({len(train_tokens)} tokens), "
        f"{len(held)} held-out files ({len(held_tokens)} tokens)"
    )
    log(
        f"unigram byte entropy: eval windows {unigram:.4f} bits/byte, all held-out "
        f"{unigram_all:.4f} bits/byte"
    )

    cfg_dict = model_config_dict(args)
    cfg = ModelConfig.from_dict(cfg_dict)
    params = init_params(cfg, jax.random.PRNGKey(args.seed))
    n_params = count_params(params)
    log(f"model: {n_params} parameters; config {json.dumps(cfg_dict)}")

    sched = optax.warmup_cosine_decay_schedule(
        0.0, args.lr, args.warmup, max(args.steps, args.warmup + 1), end_value=args.lr * 0.1
    )
    decay_mask = jax.tree_util.tree_map(lambda x: x.ndim >= 2, params)
    opt = optax.chain(
        optax.clip_by_global_norm(1.0),
        optax.adamw(sched, b1=0.9, b2=0.95, weight_decay=args.weight_decay, mask=decay_mask),
    )
    opt_state = opt.init(params)
    loss_fn = make_loss(cfg)

    @jax.jit
    def train_step(params, opt_state, batch):
        (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    @jax.jit
    def eval_sums(params, batch):
        loss, count = loss_fn(params, batch)
        return loss * count, count

    def heldout_bits(params) -> float:
        total, count = 0.0, 0.0
        for i in range(0, len(windows), args.batch):
            s, c = eval_sums(params, jnp.asarray(windows[i : i + args.batch]))
            total, count = total + float(s), count + float(c)
        return total / count / math.log(2)

    rng = np.random.default_rng(args.seed)
    span = len(train_tokens) - args.seq_len - 1
    offsets = np.arange(args.seq_len + 1)
    recent: list[float] = []
    train_seconds = 0.0
    t_log = time.perf_counter()
    for step in range(1, args.steps + 1):
        starts = rng.integers(0, span, args.batch)
        batch = jnp.asarray(train_tokens[starts[:, None] + offsets].astype(np.int32))
        t0 = time.perf_counter()
        params, opt_state, loss = train_step(params, opt_state, batch)
        loss = float(loss)
        train_seconds += time.perf_counter() - t0
        recent = (recent + [loss])[-50:]
        if step % 25 == 0 or step == 1:
            rate = (25 if step > 1 else 1) / (time.perf_counter() - t_log)
            t_log = time.perf_counter()
            bits, lr = loss / math.log(2), float(sched(step))
            log(
                f"step {step:5d}  train {bits:.4f} bits/byte  lr {lr:.2e}  {rate:.2f} steps/s  "
                f"elapsed {time.perf_counter() - wall0:.0f}s"
            )
        if step % args.eval_every == 0 and step != args.steps:
            log(f"step {step:5d}  held-out {heldout_bits(params):.4f} bits/byte")
            t_log = time.perf_counter()
    train_bits = float(np.mean(recent)) / math.log(2)
    bits_f32 = heldout_bits(params)
    log(
        f"final held-out {bits_f32:.4f} bits/byte (float32 weights); train (last {len(recent)} "
        f"steps) {train_bits:.4f}; training time {train_seconds:.1f}s"
    )

    # Write the checkpoint, reload it through edgellm_fn, and measure the shipped weights.
    jdt = jnp.bfloat16 if args.dtype == "bfloat16" else jnp.float32
    save_weights(
        cfg, jax.tree_util.tree_map(lambda x: x.astype(jdt), params), args.out / "model.safetensors"
    )
    write_json(args.out / "config.json", cfg_dict)
    write_json(args.out / "tokenizer.json", tokenizer_json())
    write_json(args.out / "tokenizer_config.json", tokenizer_config_json(args))
    write_json(args.out / "generation_config.json", generation_config_json())
    _, shipped = load_checkpoint(args.out, dtype="float32")
    bits_shipped = heldout_bits(shipped)
    log(f"held-out {bits_shipped:.4f} bits/byte with the shipped {args.dtype} weights (reloaded)")

    wall = time.perf_counter() - wall0
    log(f"wall time {wall:.1f}s")
    log_file.close()
    report = {
        **{
            k: getattr(args, k)
            for k in (
                "layers",
                "hidden",
                "intermediate",
                "heads",
                "kv_heads",
                "seq_len",
                "dtype",
                "holdout_every",
                "seed",
                "lr",
                "warmup",
                "weight_decay",
                "batch",
                "steps",
                "eval_windows",
            )
        },
        "head_dim": cfg.head_dim,
        "params": n_params,
        "weights_bytes": (args.out / "model.safetensors").stat().st_size,
        "stdlib": str(root),
        "python": platform.python_version(),
        "train_files": len(train),
        "train_tokens": len(train_tokens),
        "heldout_files": len(held),
        "heldout_tokens": len(held_tokens),
        "tokens_seen": args.steps * args.batch * args.seq_len,
        "command": command,
        "train_seconds": train_seconds,
        "steps_per_s": args.steps / train_seconds,
        "wall_seconds": wall,
        "machine": f"{platform.machine()} {platform.system()}, {os.cpu_count()} CPU cores visible, "
        f"JAX {jax.__version__} on {jax.devices()[0].device_kind} ({args.platform})",
        "eval_bytes": int((windows[:, 1:] < BYTE_TOKENS).sum()),
        "unigram_bits": unigram,
        "unigram_bits_all": unigram_all,
        "heldout_bits_f32": bits_f32,
        "heldout_bits_shipped": bits_shipped,
        "train_avg_steps": len(recent),
        "train_bits": train_bits,
        "package_bytes": 0,
    }
    card = args.out / "MODEL_CARD.md"
    for _ in range(3):  # the card states the package size, itself included
        card.write_text(model_card(report))
        write_json(args.out / "train_report.json", report)
        report["package_bytes"] = sum(p.stat().st_size for p in args.out.iterdir() if p.is_file())
    print(f"wrote {args.out} ({report['package_bytes']} bytes)")


if __name__ == "__main__":
    main()
