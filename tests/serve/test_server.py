"""The OpenAI-compatible server, driven by the real ``openai`` client over loopback."""

from __future__ import annotations

import concurrent.futures
import contextlib
import io
import json
import socket
import threading
import time

import pytest

# The serve extra (the test extras install it); a host without it, such as the offline GPU host
# running `pytest -m gpu`, skips this module instead of failing the whole collection.
httpx = pytest.importorskip("httpx")
openai = pytest.importorskip("openai")
uvicorn = pytest.importorskip("uvicorn")
pytest.importorskip("fastapi")

from edgellm_fn import cli, generate  # noqa: E402
from edgellm_fn.demo import demo_model_dir  # noqa: E402
from edgellm_fn.engine.loading import load_engine  # noqa: E402
from edgellm_fn.serve.app import create_app  # noqa: E402
from edgellm_fn.text.tokenizer import Tokenizer  # noqa: E402

LIMITS = dict(max_batch_size=4, max_input_len=64, kv_capacity=256)
PROMPT = "def read_file(path):\n    with open(path"


@contextlib.contextmanager
def running(app):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@pytest.fixture(scope="module")
def demo():
    path = demo_model_dir()
    engine = load_engine(path, **LIMITS)
    return engine, Tokenizer.from_dir(path, vocab_size=engine.config.model.vocab_size)


@pytest.fixture(scope="module")
def server(demo):
    engine, tok = demo
    with running(create_app(engine, tok, model_name="demo", max_queue=16)) as url:
        yield url


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server + "/v1", api_key="none", max_retries=0)


def cli_text(prompt: str, n: int, chat: bool) -> str:
    out = io.StringIO()
    args = [
        "generate",
        "--model",
        str(demo_model_dir()),
        "--prompt",
        prompt,
        "--top-k",
        "1",
        "--max-new-tokens",
        str(n),
    ]
    args += ["--json"] + ([] if chat else ["--no-chat"])
    args += ["--max-batch", "4", "--max-input-len", "64", "--kv-capacity", "256"]
    with contextlib.redirect_stdout(out):
        assert cli.main(args) == 0
    return json.loads(out.getvalue())["responses"][0]["output_text"]


def test_health_and_models(server, client):
    assert httpx.get(server + "/health").json() == {"status": "ok"}
    assert [m.id for m in client.models.list().data] == ["demo"]


def test_completion_equals_cli_generate_streaming_and_not(client):
    want = cli_text(PROMPT, 24, chat=False)
    r = client.completions.create(model="demo", prompt=PROMPT, max_tokens=24, temperature=0)
    assert r.choices[0].text == want
    assert r.usage.completion_tokens <= 24 and r.usage.prompt_tokens > 0
    chunks = list(
        client.completions.create(
            model="demo",
            prompt=PROMPT,
            max_tokens=24,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert "".join(c.choices[0].text for c in chunks if c.choices) == want
    assert chunks[-1].usage.total_tokens == r.usage.total_tokens


def test_chat_equals_cli_generate_streaming_and_not(client):
    want = cli_text("write a loop", 20, chat=True)
    msgs = [{"role": "user", "content": "write a loop"}]
    r = client.chat.completions.create(
        model="demo", messages=msgs, max_tokens=20, temperature=0, logprobs=True, top_logprobs=3
    )
    assert r.choices[0].message.content == want
    assert len(r.choices[0].logprobs.content[0].top_logprobs) == 3
    stream = client.chat.completions.create(
        model="demo", messages=msgs, max_tokens=20, temperature=0, stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream) == want


def test_concurrent_requests_each_equal_alone(client):
    jobs = [
        dict(prompt=PROMPT[:n], max_tokens=m, temperature=0, **kw)
        for n, m, kw in [
            (10, 12, {}),
            (25, 20, dict(repetition_penalty=1.3)),
            (40, 8, {}),
            (15, 16, dict(presence_penalty=1.0)),
            (30, 10, dict(frequency_penalty=0.7)),
            (20, 14, dict(min_p=0.1)),
            (35, 6, {}),
            (12, 18, dict(repetition_penalty=1.1)),
        ]
    ]

    def one(j):
        extra = {k: j[k] for k in ("repetition_penalty", "min_p") if k in j}
        rest = {k: v for k, v in j.items() if k not in extra}
        return client.completions.create(model="demo", extra_body=extra, **rest).choices[0].text

    alone = [one(j) for j in jobs]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        together = list(pool.map(one, jobs))
    assert together == alone


def test_bad_requests_name_the_field(client):
    for kw, field in [
        (dict(temperature=5), "temperature"),
        (dict(max_tokens=0), "max_tokens"),
        (dict(top_p="x"), "top_p"),
        (dict(n=2), "n"),
        (dict(extra_body={"min_p": 2}), "min_p"),
    ]:
        with pytest.raises(openai.BadRequestError) as e:
            client.completions.create(model="demo", prompt="x", **kw)
        assert e.value.body["param"] == field
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="demo", messages=[])
    assert e.value.body["param"] == "messages"
    hi = [{"role": "user", "content": "hi"}]
    for extra, field in [
        ({"continue_final_message": "yes"}, "continue_final_message"),
        ({"continue_final_message": True, "add_generation_prompt": True}, "continue_final_message"),
        ({"chat_template_kwargs": {"tools": []}}, "chat_template_kwargs"),
        ({"tools": [3]}, "tools"),
    ]:
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(model="demo", messages=hi, extra_body=extra)
        assert e.value.body["param"] == field, extra


def test_chat_continue_final_message_equals_generate(demo, client):
    engine, tok = demo
    messages = [
        {"role": "user", "content": "def add(a, b):"},
        {"role": "assistant", "content": "    return"},
    ]
    r = client.chat.completions.create(
        model="demo",
        messages=messages,
        max_tokens=8,
        temperature=0,
        extra_body={"continue_final_message": True, "add_generation_prompt": False},
    )
    want = generate(
        engine,
        tok,
        [messages],
        top_k=1,
        max_new_tokens=8,
        chat_template_kwargs={"continue_final_message": True},
    )[0]
    assert r.choices[0].message.content == want.text


def test_full_queue_gets_429_and_a_cancelled_stream_frees_its_row(demo):
    engine, tok = demo
    app = create_app(engine, tok, model_name="demo", max_batch=1, max_queue=1)
    with running(app) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0)
        no_eos = {str(i): -100 for i in tok.eos_token_ids}
        long = client.completions.create(
            model="demo",
            prompt=PROMPT,
            max_tokens=190,
            temperature=0,
            stream=True,
            logit_bias=no_eos,
        )
        next(iter(long))  # decoding in the only row
        queued = client.completions.create(model="demo", prompt="x", max_tokens=2, stream=True)
        with pytest.raises(openai.RateLimitError):
            client.completions.create(model="demo", prompt="y", max_tokens=2)
        long.close()  # the disconnect frees the row: the queued request is served
        assert "".join(c.choices[0].text for c in queued) is not None
        r = client.completions.create(model="demo", prompt="z", max_tokens=3, temperature=0)
        assert r.choices[0].finish_reason in ("stop", "length")


def test_prefix_cache_reuses_the_chat_history_and_changes_nothing(demo):
    engine, tok = demo
    app = create_app(engine, tok, model_name="demo", max_batch=2, prefix_cache=4)
    turn1 = [{"role": "user", "content": "def add(a, b):"}]
    with running(app) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0)

        def ask(messages):
            return client.chat.completions.create(
                model="demo", messages=messages, max_tokens=8, temperature=0
            )

        first = ask(turn1)
        turn2 = [
            *turn1,
            {"role": "assistant", "content": first.choices[0].message.content},
            {"role": "user", "content": "and sub?"},
        ]
        second = ask(turn2)
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    # the second turn's prompt starts with the first's: all of it but its last token is reused
    cached = second.usage.prompt_tokens_details.cached_tokens
    assert 0 < cached < second.usage.prompt_tokens
    for messages, r in ((turn1, first), (turn2, second)):
        want = generate(engine, tok, [messages], top_k=1, max_new_tokens=8)[0]
        assert r.choices[0].message.content == want.text
