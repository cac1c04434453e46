"""``edgellm-fn chat``: multi-turn history, /reset, /exit, the input-length notice, the CLI."""

from __future__ import annotations

import io

import pytest

from edgellm_fn import cli, generate, load_engine
from edgellm_fn.demo import demo_model_dir
from edgellm_fn.serve.chat import chat_loop
from edgellm_fn.text.tokenizer import Tokenizer

GREEDY = dict(top_k=1, max_new_tokens=6)
LIMITS = ["--max-batch", "1", "--max-input-len", "64", "--kv-capacity", "96"]


@pytest.fixture(scope="module")
def demo():
    engine = load_engine(demo_model_dir(), max_batch_size=1, max_input_len=64, kv_capacity=96)
    return engine, Tokenizer.from_dir(demo_model_dir())


def test_turns_build_the_history_and_reset_clears_it(demo):
    engine, tok = demo
    out = io.StringIO()
    lines = ["def f():\n", "/reset\n", "import os\n", "/exit\n", "never read\n"]
    history = chat_loop(engine, tok, lines, system="be brief", out=out, **GREEDY)
    first = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "def f():"}]
    want = generate(engine, tok, [first], **GREEDY)[0].text
    text = out.getvalue()
    assert text.startswith(want + "\n(history cleared)\n")
    assert [m["role"] for m in history] == ["system", "user", "assistant"]
    assert history[1]["content"] == "import os" and "never read" not in text
    assert history[2]["content"] == generate(engine, tok, [history[:2]], **GREEDY)[0].text


def test_a_turn_past_max_input_len_is_refused_and_the_history_kept(demo):
    engine, tok = demo
    out = io.StringIO()
    history = chat_loop(engine, tok, ["hi\n", "x" * 200 + "\n"], out=out, **GREEDY)
    assert "more than --max-input-len=64" in out.getvalue()
    assert [m["content"] for m in history][0] == "hi" and len(history) == 2


def test_chat_command_reads_stdin_and_streams_replies(monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", io.StringIO("hello\n"))
    assert cli.main(["chat", "--model", str(demo_model_dir()), "--top-k", "1", *LIMITS]) == 0
    assert capsys.readouterr().out.strip()
