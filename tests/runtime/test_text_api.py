"""Text-level generation: string and chat-message prompts, and the ``stream`` iterator."""

from __future__ import annotations

import pytest

from edgellm_fn import TextDelta, generate, load_engine, stream
from edgellm_fn.demo import demo_model_dir
from edgellm_fn.errors import InputError
from edgellm_fn.runtime.text_api import encode_messages
from edgellm_fn.text.tokenizer import Tokenizer

GREEDY = dict(top_k=1, max_new_tokens=12)


@pytest.fixture(scope="module")
def demo():
    engine = load_engine(demo_model_dir(), max_batch_size=2, max_input_len=64, kv_capacity=96)
    return engine, Tokenizer.from_dir(demo_model_dir())


def test_string_and_message_prompts_equal_their_token_ids(demo):
    engine, tok = demo
    messages = [{"role": "user", "content": "def add(a, b):"}]
    got = generate(engine, tok, ["import os\n", messages], **GREEDY)
    want = generate(
        engine, tok, [tok.encode("import os\n"), encode_messages(tok, messages)], **GREEDY
    )
    assert [c.tokens for c in got] == [c.tokens for c in want]
    assert [c.text for c in got] == [c.text for c in want] and got[0].tokens


def test_bad_text_prompts_are_named(demo):
    engine, tok = demo
    with pytest.raises(InputError, match=r"prompts\[0\]\[0\]=.*string 'role' and 'content'"):
        generate(engine, tok, [[{"role": "user"}]], **GREEDY)
    with pytest.raises(InputError, match=r"prompts\[1\]=7 \(expected a list of token ids\)"):
        generate(engine, tok, ["ok", 7], **GREEDY)


def test_stream_yields_the_generated_text_then_its_finish_reason(demo):
    engine, tok = demo
    deltas = stream(engine, tok, "class A:\n    def", **GREEDY)
    first = next(deltas)  # the first piece arrives before the generation has ended
    rest = list(deltas)
    whole = generate(engine, tok, ["class A:\n    def"], **GREEDY)[0]
    pieces = [first, *rest]
    assert all(isinstance(d, TextDelta) for d in pieces) and len(pieces) >= 3
    assert "".join(d.text for d in pieces) == whole.text
    assert [d.finish_reason for d in pieces[:-1]] == [None] * (len(pieces) - 1)
    assert pieces[-1] == TextDelta("", whole.finish_reason, whole)


def test_stream_with_a_stop_string_never_shows_it(demo):
    engine, tok = demo
    whole = generate(engine, tok, ["class A:\n    def"], **GREEDY)[0].text
    stop = whole[3:5]
    pieces = list(stream(engine, tok, "class A:\n    def", stop=[stop], **GREEDY))
    text = "".join(d.text for d in pieces)
    assert text == whole[: whole.index(stop)] and pieces[-1].finish_reason == "stop"


def test_chat_template_kwargs_reach_the_template(demo):
    engine, tok = demo
    messages = [
        {"role": "user", "content": "def add(a, b):"},
        {"role": "assistant", "content": "    return"},
    ]
    opts = {"continue_final_message": True}
    got = generate(engine, tok, [messages], chat_template_kwargs=opts, **GREEDY)[0]
    text = tok.apply_chat_template(messages, continue_final_message=True)
    want = generate(engine, tok, [tok.encode(text, add_special_tokens=False)], **GREEDY)[0]
    assert got.tokens == want.tokens
    assert encode_messages(tok, messages, chat_template_kwargs=opts) != encode_messages(
        tok, messages
    )


def test_bad_stream_arguments_are_named_at_the_call(demo):
    engine, tok = demo
    with pytest.raises(InputError, match=r"stream: loop= is set by stream itself"):
        stream(engine, tok, "hi", loop="while")
    with pytest.raises(InputError, match=r"top_k"):
        stream(engine, tok, "hi", top_k=-1)
    for bad in ("x", {"messages": []}, {1: True}):
        with pytest.raises(InputError, match=r"chat_template_kwargs=.*expected a dict"):
            generate(engine, tok, [[{"role": "user", "content": "hi"}]], chat_template_kwargs=bad)
    with pytest.raises(InputError, match=r"stream: unknown argument 'max_tokens'"):
        stream(engine, tok, "hi", max_tokens=3)
