"""The README's main command: generate Python code with the embedded demo model."""

from __future__ import annotations

import time
from pathlib import Path

import jax
from rich.console import Console
from rich.table import Table
from rich.text import Text

from .engine.loading import load_engine
from .runtime import steps
from .runtime.generate import generate
from .runtime.prompts import pad_prompts
from .state.resources import create_state
from .text.tokenizer import Tokenizer

PROMPTS = [
    "class Point:\n    def __init__(self, x, y):\n        self.x = x\n",
    "    def __repr__(self):\n        return ",
    "        if not isinstance(value, str):\n            raise ",
    "def read_file(path):\n    with open(path",
]


def demo_model_dir() -> Path:
    """The Hugging Face checkpoint directory of the embedded demo model.

    Raises:
      FileNotFoundError: the package was installed without its data files.
    """
    path = Path(__file__).resolve().parent / "assets" / "demo_model"
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"{path}: demo model missing (expected config.json there); the package data were not "
            "installed, or run examples/train_demo_model.py --out <dir> to train one"
        )
    return path


def demo_eagle3_dir() -> Path | None:
    """The shipped EAGLE3 draft head of the demo model, or None when it was not installed."""
    path = Path(__file__).resolve().parent / "assets" / "demo_eagle3"
    return path if (path / "config.json").is_file() else None


def run_demo(model: str | None = None, max_new_tokens: int = 64) -> int:
    """Loads the demo model, shows fixed buffer addresses, and completes a few prompts (then,
    with the shipped EAGLE3 head, greedy speculative decoding next to vanilla greedy)."""
    console = Console(highlight=False)
    path = Path(model) if model else demo_model_dir()
    with console.status(f"loading {path.name} and compiling steps..."):
        engine = load_engine(path, max_batch_size=len(PROMPTS), max_input_len=64, kv_capacity=128)
        tokenizer = Tokenizer.from_dir(path, vocab_size=engine.config.model.vocab_size)
        cfg = engine.config.model
        n_params = sum(x.size for x in jax.tree_util.tree_leaves(engine.params))
        prompts = [tokenizer.encode(p) for p in PROMPTS]
    console.print(
        f"[bold]model[/bold] {path.name}: {cfg.architecture}, {n_params / 1e6:.2f}M params, "
        f"{cfg.num_hidden_layers} layers, {cfg.num_attention_heads}/{cfg.num_key_value_heads} "
        f"heads; device {jax.devices()[0].device_kind}",
        soft_wrap=True,
    )
    _show_addresses(console, engine, prompts)
    greedy = None
    for title, loop, kwargs in (
        ("greedy", "while", dict(top_k=1)),
        ("sampled T=0.8 k=40 p=0.95", "python", dict(temperature=0.8, top_k=40, top_p=0.95)),
    ):
        args = dict(max_new_tokens=max_new_tokens, loop=loop, **kwargs)
        with console.status(f"compiling the {loop} loop..."):
            generate(engine, tokenizer, prompts, **args)  # first call compiles
        t0 = time.perf_counter()
        out = generate(engine, tokenizer, prompts, **args)
        dt = time.perf_counter() - t0
        n = sum(len(c.tokens) for c in out)
        loop_name = "one jitted while_loop" if loop == "while" else "python loop"
        console.rule(f"{title}, {loop_name}: {n} tokens in {dt:.2f} s = {n / dt:.0f} tokens/s")
        if greedy is None:
            greedy = (out, n, dt)
        for prompt, c in zip(PROMPTS, out, strict=True):
            console.print(Text(prompt, style="cyan") + Text(c.text), soft_wrap=True)
            console.print(f"[dim]-- {len(c.tokens)} tokens, finish: {c.finish_reason}[/dim]\n")
    head = demo_eagle3_dir() if model is None else None
    if head is not None:
        _speculative(console, path, head, tokenizer, prompts, greedy, max_new_tokens)
    return 0


def _speculative(
    console: Console,
    base_dir: Path,
    head: Path,
    tokenizer: Tokenizer,
    prompts: list[list[int]],
    greedy: tuple[list, int, float],
    n_new: int,
) -> None:
    """Greedy with the shipped EAGLE3 head next to vanilla greedy: speed, steps, same tokens."""
    from .engine.xla_spec import load_spec_engines
    from .runtime.spec_generate import spec_decode_generate

    k, steps, v = 4, 4, 16
    with console.status("loading the EAGLE3 head and compiling the speculative loop..."):
        base, draft = load_spec_engines(
            base_dir,
            head,
            tree_topk=k,
            tree_steps=steps,
            verify_size=v,
            max_batch_size=len(prompts),
            max_input_len=64,
            kv_capacity=128,
        )
        args = dict(max_new_tokens=n_new, loop="while")
        spec_decode_generate(base, draft, tokenizer, prompts, **args)  # first call compiles
    t0 = time.perf_counter()
    out, stats = spec_decode_generate(base, draft, tokenizer, prompts, **args)
    dt = time.perf_counter() - t0
    n = sum(len(c.tokens) for c in out)
    g_out, g_n, g_dt = greedy
    same = all(a.tokens == b.tokens for a, b in zip(out, g_out, strict=True))
    console.rule(f"speculative greedy, EAGLE3 head, tree {k}x{steps}x{v}, one jitted while_loop")
    table = Table()
    for col in ("", "tokens", "seconds", "tokens/s", "base steps", "tokens per base step"):
        table.add_column(col, justify="left" if not col else "right")
    g_steps = sum(max(len(c.tokens) - 1, 0) for c in g_out)  # first token: prefill
    table.add_row(
        "vanilla greedy", str(g_n), f"{g_dt:.2f}", f"{g_n / g_dt:.0f}", str(g_steps), "1.00"
    )
    table.add_row(
        "speculative",
        str(n),
        f"{dt:.2f}",
        f"{n / dt:.0f}",
        str(stats.rounds),
        f"{stats.accepted_per_round:.2f}",
    )
    console.print(table)
    verdict = "yes" if same else "NO (a bfloat16 near-tie? see the head's MODEL_CARD.md)"
    console.print(
        f"same tokens as vanilla greedy: {verdict}; base steps are summed over "
        "rows (the prefill's first token excluded). On a CPU a speculative round costs several "
        "vanilla steps, so tokens/s measures overhead; tokens per base step is the head's quality."
    )


def _show_addresses(console: Console, engine, prompts: list[list[int]]) -> None:
    """Prints a few state buffers' device addresses across decode steps: they never move."""
    ids, lengths = pad_prompts(prompts)
    state = create_state(engine.config, len(prompts))
    state = steps.prefill(engine, state, steps.embed(engine, ids), lengths)
    named = lambda s: {  # noqa: E731
        "kv.k[0]": s.kv.k[0],
        "kv.v[-1]": s.kv.v[-1],
        "kv.lengths": s.kv.lengths,
        "io.logits": s.io.logits,
    }
    before = {k: v.unsafe_buffer_pointer() for k, v in named(state).items()}
    token = ids[:, 0]
    for _ in range(8):
        state = steps.decode(engine, state, token)
    after = {k: v.unsafe_buffer_pointer() for k, v in named(state).items()}
    console.print(
        "[bold]state buffers[/bold] (address after prefill -> after 8 donated decode steps)"
    )
    for k in before:
        same = "same" if before[k] == after[k] else "MOVED"
        console.print(f"  {k:11} 0x{before[k]:x} -> 0x{after[k]:x}  {same}")
