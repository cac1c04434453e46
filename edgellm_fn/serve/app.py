"""The OpenAI-compatible FastAPI app over the continuous-batching ``Scheduler``.

One scheduler thread runs every request (``runtime/batching.py``); each HTTP request turns its
tokens into text deltas (stop strings, EOS) and hands events to its asyncio queue. A full queue
answers 429, a bad field 400 naming it, a client that goes away cancels its row, and shutdown
cancels whatever still runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
import uuid

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from ..errors import InputError
from ..runtime import batching
from ..runtime.gen_defaults import GenerationDefaults
from ..runtime.generate import eos_ids_of
from ..runtime.prefix_cache import PrefixStore
from ..runtime.sampling import SamplingConfig
from ..text.stops import find_stop, partial_stop_length
from ..text.tokenizer import StreamDecoder
from .params import (
    MAX_BIAS,
    MAX_TOP_LOGPROBS,
    FieldError,
    chat_template_options,
    sampling_fields,
)


def _error(status: int, message: str, param: str | None) -> JSONResponse:
    kind = "rate_limit_exceeded" if status == 429 else "invalid_request_error"
    body = {"error": {"message": message, "type": kind, "param": param, "code": None}}
    return JSONResponse(body, status_code=status)


class _Job:
    """One request's text state; its events go to an asyncio queue (thread-safe)."""

    def __init__(self, tokenizer, eos, stop, num_logprobs, loop, queue):
        self.tok, self.eos, self.stop, self.k = tokenizer, eos, stop, num_logprobs
        self.decoder = StreamDecoder(tokenizer)
        self.text, self.sent, self.tokens, self.logprobs = "", 0, 0, []
        self.loop, self.queue, self.hit_stop = loop, queue, False

    def _put(self, item) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, item)

    def on_token(self, tok, logprob, top_ids, top_lps) -> bool:
        self.tokens += 1
        if tok in self.eos:
            return False
        self.text += self.decoder.push(tok)
        self.logprobs.append(
            (tok, logprob, [(int(i), float(v)) for i, v in zip(top_ids, top_lps, strict=True)])
        )
        hit = find_stop(self.text, self.stop) if self.stop else None
        if hit is not None:
            self.text, self.hit_stop = self.text[: hit[0]], True
        visible = (
            self.text
            if hit
            else self.text[: len(self.text) - partial_stop_length(self.text, self.stop)]
        )
        if len(visible) > self.sent:
            self._put(("delta", visible[self.sent :], self.logprobs[-1]))
            self.sent = len(visible)
        return hit is not None

    def on_finish(self, reason: str) -> None:
        if self.sent < len(self.text) and not self.hit_stop:
            self._put(("delta", self.text[self.sent :], None))
            self.sent = len(self.text)
        self._put(("finish", "stop" if self.hit_stop else reason, None))


def create_app(
    engine,
    tokenizer,
    *,
    model_name: str,
    max_batch: int | None = None,
    max_queue: int = 64,
    defaults: GenerationDefaults | None = None,
    chat: bool = True,
    prefix_cache: int = 0,
) -> FastAPI:
    """The app; its lifespan starts and stops the scheduler thread.

    ``prefix_cache``: keep the KV of the last N prompts and reuse a request's longest cached
    prefix on admission (reported as ``usage.prompt_tokens_details.cached_tokens``); 0 = off.
    """
    eos = eos_ids_of(engine, tokenizer)
    limits = SamplingConfig(max_num_logprobs=MAX_TOP_LOGPROBS, max_bias_entries=MAX_BIAS)
    store = None
    if prefix_cache:
        store = PrefixStore(engine.config.model.vocab_size, max_entries=prefix_cache)
    sched = batching.Scheduler(
        engine,
        eos_ids=eos,
        max_batch=max_batch,
        sampling=limits,
        prefix_store=store,
        save_prompts=store is not None,
    )
    defaults = defaults or GenerationDefaults.from_dir(tokenizer.name)
    stop_event = threading.Event()

    @contextlib.asynccontextmanager
    async def lifespan(app):
        thread = threading.Thread(target=sched.serve, args=(stop_event,), daemon=True)
        thread.start()
        yield
        stop_event.set()
        thread.join(timeout=30)

    app = FastAPI(lifespan=lifespan)
    app.state.scheduler = sched

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models():
        return {
            "object": "list",
            "data": [{"id": model_name, "object": "model", "created": 0, "owned_by": "edgellm_fn"}],
        }

    async def run(request: Request, is_chat: bool):
        from ..cli import encode_request

        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return _error(400, "body: not valid JSON", "body")
        try:
            f = sampling_fields(body, defaults, is_chat)
            if is_chat:
                msgs = body.get("messages")
                if (
                    not isinstance(msgs, list)
                    or not msgs
                    or not all(
                        isinstance(m, dict) and isinstance(m.get("content"), str) for m in msgs
                    )
                ):
                    raise FieldError("messages", "expected a non-empty list of {role, content}")
                options = chat_template_options(body)
                try:
                    prompt = encode_request(tokenizer, msgs, chat, options)
                except InputError as e:  # the template refused the messages or options
                    field = "continue_final_message" if "continue_final" in str(e) else "messages"
                    raise FieldError(field, str(e)) from None
            else:
                text = body.get("prompt")
                if not isinstance(text, str) or not text:
                    raise FieldError("prompt", f"{text!r} (expected a non-empty string)")
                prompt = tokenizer.encode(text)
        except FieldError as e:
            return _error(e.status, str(e), e.param)
        if sched.pending() >= max_queue:
            return _error(429, f"queue full ({max_queue} requests waiting); retry later", None)
        loop, queue = asyncio.get_running_loop(), asyncio.Queue()
        job = _Job(tokenizer, set(eos), f["stop"], f["num_logprobs"], loop, queue)
        req = batching.Request(
            prompt=prompt,
            on_token=job.on_token,
            on_finish=job.on_finish,
            **{
                k: f[k]
                for k in (
                    "max_tokens",
                    "temperature",
                    "top_p",
                    "top_k",
                    "min_p",
                    "repetition_penalty",
                    "presence_penalty",
                    "frequency_penalty",
                    "seed",
                    "num_logprobs",
                    "logit_bias",
                )
            },
        )
        try:
            sched.submit(req)
        except InputError as e:
            param = "messages" if is_chat and "prompt" in str(e) else str(e).split(":")[0]
            return _error(400, str(e), param.split("=")[0])
        rid = ("chatcmpl-" if is_chat else "cmpl-") + uuid.uuid4().hex
        meta = dict(id=rid, created=int(time.time()), model=model_name)
        obj = "chat.completion" if is_chat else "text_completion"

        def usage():
            return {
                "prompt_tokens": len(prompt),
                "completion_tokens": job.tokens,
                "total_tokens": len(prompt) + job.tokens,
                "prompt_tokens_details": {"cached_tokens": req.cached_tokens},
            }

        def choice(text, lps, reason, delta):
            c = {"index": 0, "finish_reason": reason}
            if is_chat:
                c["delta" if delta else "message"] = (
                    {"role": "assistant", "content": text} if not delta or text is not None else {}
                )
                c["logprobs"] = _chat_logprobs(tokenizer, lps) if f["logprobs"] and lps else None
            else:
                c["text"] = text or ""
                c["logprobs"] = _cmpl_logprobs(tokenizer, lps) if f["logprobs"] and lps else None
            return c

        if not f["stream"]:
            try:
                while True:
                    kind, _, _ = item = await queue.get()
                    if kind == "finish":
                        break
            except asyncio.CancelledError:
                sched.cancel(req)
                raise
            reason = item[1]
            return {
                **meta,
                "object": obj,
                "usage": usage(),
                "choices": [choice(job.text, job.logprobs, reason, False)],
            }

        async def events():
            chunk_obj = "chat.completion.chunk" if is_chat else "text_completion"
            try:
                while True:
                    kind, value, lp = await queue.get()
                    if kind == "finish":
                        last = choice(None if is_chat else "", None, value, True)
                        yield _sse({**meta, "object": chunk_obj, "choices": [last]})
                        break
                    c = choice(value, [lp] if lp else None, None, True)
                    yield _sse({**meta, "object": chunk_obj, "choices": [c]})
                if f["include_usage"]:
                    yield _sse({**meta, "object": chunk_obj, "choices": [], "usage": usage()})
                yield "data: [DONE]\n\n"
            finally:
                sched.cancel(req)  # a no-op once finished; frees the row on a disconnect

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await run(request, True)

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await run(request, False)

    return app


def _sse(obj) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def _entry(tokenizer, tid, lp):
    text = tokenizer.decode([tid])
    return {"token": text, "logprob": lp, "bytes": list(text.encode())}


def _chat_logprobs(tokenizer, lps):
    return {
        "content": [
            {**_entry(tokenizer, t, lp), "top_logprobs": [_entry(tokenizer, i, v) for i, v in top]}
            for t, lp, top in lps
        ]
    }


def _cmpl_logprobs(tokenizer, lps):
    return {
        "tokens": [tokenizer.decode([t]) for t, _, _ in lps],
        "token_logprobs": [lp for _, lp, _ in lps],
        "top_logprobs": [{tokenizer.decode([i]): v for i, v in top} for _, _, top in lps],
    }
