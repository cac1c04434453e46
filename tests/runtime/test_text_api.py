"""Text-level generation: string and chat-message prompts."""

from __future__ import annotations

import pytest

from edgellm_fn import generate, load_engine
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
