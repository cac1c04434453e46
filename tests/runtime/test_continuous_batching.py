"""Continuous batching: requests admitted mid-decode equal the same request run alone, and
admitting requests with other settings compiles nothing."""

from __future__ import annotations

import numpy as np
import pytest

from edgellm_fn.errors import InputError
from edgellm_fn.runtime import batching
from edgellm_fn.runtime.batching import Request, Scheduler
from edgellm_fn.runtime.generate import eos_ids_of, generate
from edgellm_fn.runtime.prefix_cache import PrefixStore
from edgellm_fn.runtime.sampling import make_sampling_params
from edgellm_fn.text.tokenizer import Tokenizer

from ..helpers import make_engine
from .test_step_path import count_compiles

SETTINGS = [  # (prompt length, max tokens, settings)
    (13, 10, dict()),
    (5, 6, dict(repetition_penalty=1.3)),
    (20, 12, dict(temperature=1.0, top_p=0.9, seed=7)),
    (9, 8, dict(presence_penalty=0.8, frequency_penalty=0.5)),
    (3, 9, dict(temperature=0.7, top_k=5, min_p=0.1, seed=3)),
]


@pytest.fixture(scope="module")
def setup(checkpoints):
    engine = make_engine(checkpoints["qwen3"])
    tok = Tokenizer.from_dir(checkpoints["qwen3"])
    rng = np.random.RandomState(5)
    prompts = [[int(t) for t in rng.randint(3, 128, n)] for n, _, _ in SETTINGS]
    return engine, tok, prompts


def alone(engine, tok, prompt, max_tokens, kw) -> list[int]:
    kw = {"temperature": 0.0, **kw}
    seed = kw.pop("seed", 0)
    res = generate(
        engine,
        tok,
        [prompt],
        max_new_tokens=max_tokens,
        seed=[seed],
        loop="while",
        **{"repetition_penalty": 1.0, "min_p": 0.0, "top_k": 0, "top_p": 1.0, **kw},
    )
    return res[0].tokens


def run_staggered(sched, prompts, order) -> dict[int, list[int]]:
    """Submits the first request, steps 3 times, then admits the rest while it decodes."""
    out: dict[int, list[int]] = {i: [] for i in order}
    reasons: dict[int, str] = {}

    def request(i):
        _, max_tokens, kw = SETTINGS[i]
        return Request(
            prompt=prompts[i],
            max_tokens=max_tokens,
            **{"temperature": 0.0, **kw},
            on_token=lambda t, *_, i=i: out[i].append(t) and False,
            on_finish=lambda r, i=i: reasons.__setitem__(i, r),
        )

    sched.submit(request(order[0]))
    for _ in range(3):
        sched.step()
    for i in order[1:]:
        sched.submit(request(i))
    sched.run_until_idle()
    assert set(reasons) == set(order)
    return out


def test_admitted_mid_decode_equals_alone_and_compiles_nothing(setup):
    engine, tok, prompts = setup
    want = {i: alone(engine, tok, prompts[i], m, kw) for i, (_, m, kw) in enumerate(SETTINGS)}
    # 3 rows for 5 requests: rows are freed and reused; chunk 8: prompts take 1..3 chunks.
    sched = Scheduler(engine, eos_ids=eos_ids_of(engine, tok), max_batch=3, chunk=8)
    got = run_staggered(sched, prompts, [0, 1, 2, 3, 4])
    assert got == want
    with count_compiles() as compiles:
        again = run_staggered(sched, prompts, [4, 2, 0, 3, 1])  # other slots and order
    assert compiles == [], f"{len(compiles)} compilations after warm-up"
    assert again == want


def test_cancel_frees_the_row_for_the_next_request(setup):
    engine, tok, prompts = setup
    sched = Scheduler(engine, eos_ids=(), max_batch=1, chunk=8)
    reasons = []
    first = Request(prompt=prompts[0], max_tokens=50, temperature=0.0, on_finish=reasons.append)
    sched.submit(first)
    for _ in range(4):
        sched.step()
    sched.cancel(first)
    toks: list[int] = []
    sched.submit(
        Request(
            prompt=prompts[1],
            max_tokens=6,
            temperature=0.0,
            on_token=lambda t, *_: toks.append(t) and False,
            on_finish=reasons.append,
        )
    )
    sched.run_until_idle()
    assert reasons == ["cancelled", "length"]
    assert toks == alone(engine, tok, prompts[1], 6, {})[:6]


def test_bad_requests_and_inserts_are_named(setup):
    engine, _, prompts = setup
    sched = Scheduler(engine, eos_ids=(), max_batch=2)
    with pytest.raises(InputError, match="max_tokens"):
        sched.submit(Request(prompt=prompts[0], max_tokens=0))
    with pytest.raises(InputError, match="prompt"):
        sched.submit(Request(prompt=[]))
    with pytest.raises(InputError, match="top_p"):
        sched.submit(Request(prompt=prompts[0], top_p=0.0))
    _, params = make_sampling_params(
        1, vocab_size=engine.config.output_vocab_size, config=sched.config
    )
    with pytest.raises(InputError, match="slot"):
        batching.insert(sched.state, 2, sched._prefill_state, params, 4)
    with pytest.raises(InputError, match="prefilled"):
        batching.insert(sched.state, 0, sched.state, params, 4)


def test_prefix_store_on_admission_reuses_the_history_and_equals_alone(setup):
    engine, tok, prompts = setup
    store = PrefixStore(max_entries=2)
    sched = Scheduler(
        engine,
        eos_ids=eos_ids_of(engine, tok),
        max_batch=2,
        chunk=8,
        prefix_store=store,
        save_prompts=True,
    )

    def run(prompt):
        toks: list[int] = []
        req = Request(
            prompt=prompt,
            max_tokens=6,
            temperature=0.0,
            on_token=lambda t, *_: toks.append(t) and False,
        )
        sched.submit(req)
        sched.run_until_idle()
        return req, toks

    history = prompts[2]  # 20 tokens: three chunks of 8
    turn2 = history + prompts[1]  # the next turn extends the history
    first, t1 = run(history)
    second, t2 = run(turn2)
    assert (first.cached_tokens, second.cached_tokens) == (0, len(history))
    assert t1 == alone(engine, tok, history, 6, {})
    assert t2 == alone(engine, tok, turn2, 6, {})
    assert len(store) == 2
    third, t3 = run(prompts[0])  # a third prompt evicts the least recently used entry
    assert third.cached_tokens == 0 and t3 == alone(engine, tok, prompts[0], 6, {})
    # the two newest entries remain (history, the oldest, was dropped)
    assert len(store) == 2 and store.lookup(turn2 + [5])[1] == len(turn2)
    assert store.lookup(prompts[0] + [5])[1] == len(prompts[0])
    with pytest.raises(InputError, match="save_prompts=True needs a prefix_store"):
        Scheduler(engine, eos_ids=(), save_prompts=True)
    with pytest.raises(InputError, match="max_entries=0"):
        PrefixStore(max_entries=0)
