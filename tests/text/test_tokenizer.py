"""Tests for edgellm_fn.text.tokenizer / chat_template against transformers on real files."""

import json
import re

import pytest
from tokenizers import Tokenizer as HFBackend
from tokenizers import decoders, models, pre_tokenizers, processors, trainers

from edgellm_fn.errors import CheckpointError, ConfigError, InputError
from edgellm_fn.text.tokenizer import StreamDecoder, Tokenizer, decode_incremental

SPECIALS = ["<s>", "</s>", "<|im_start|>", "<|im_end|>"]
CORPUS = [
    "Hello world! The quick brown fox jumps over the lazy dog.",
    "Tokenizers split text into pieces; streaming must not cut a character in half.",
    "日本語のテキストと中文文本 mixed with emoji 🙂🚀👩‍💻 and accents: café, naïve.",
] * 20
TEXTS = [
    "Hello world!",
    "  leading spaces and a tab\tthen a newline\n",
    "café 🙂 日本語 🚀👩‍💻 mixed",
    "<s>special tokens inline<|im_end|> too",
]
TEMPLATE = """{{ bos_token }}
{%- if tools %}
    {{- '<|im_start|>system\\nTools: ' + tools | tojson + '<|im_end|>\\n' }}
{%- endif %}
{%- set ns = namespace(users=0) %}
{%- for message in messages %}
    {%- if message.role not in ['system', 'user', 'assistant'] %}
        {{- raise_exception('Unsupported role: ' + message.role) }}
    {%- endif %}
    {%- if message.role == 'user' %}{% set ns.users = ns.users + 1 %}{% endif %}
    <|im_start|>{{ message.role }}
    {% if message.role == 'assistant' %}
{% generation %}{{ message.content | trim }}{% endgeneration %}
    {% else %}
{{ message.content }}
    {% endif %}
<|im_end|>
{% endfor %}
{% if add_generation_prompt %}
<|im_start|>assistant ({{ ns.users }} user turns, year {{ strftime_now('%Y')[:2] }})
{% endif %}"""
TOOL_TEMPLATE = "TOOLS {{ tools | tojson(indent=2) }}{{ messages[0].content }}{{ eos_token }}"
CHATS = [
    [{"role": "user", "content": "Hi there"}],
    [
        {"role": "system", "content": "Be brief. <b>&</b>"},
        {"role": "user", "content": "日本語で 🙂"},
        {"role": "assistant", "content": "  はい  ", "tool_calls": None},
        {"role": "user", "content": "again"},
    ],
]
TOOLS = [{"name": "lookup", "description": "查找 a word", "parameters": {"type": "object"}}]


def write_checkpoint(path, tokenizer_config, **files):
    backend = HFBackend(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=420,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(CORPUS, trainer)
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 0)]
    )
    path.mkdir(parents=True, exist_ok=True)
    backend.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    for name, content in files.items():
        target = path / name.replace("__", "/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


BASE_CONFIG = {
    "tokenizer_class": "PreTrainedTokenizerFast",
    "bos_token": "<s>",
    "eos_token": {"__type": "AddedToken", "content": "</s>", "special": True},
    "pad_token": "<|im_end|>",
    "clean_up_tokenization_spaces": False,
}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return write_checkpoint(
        tmp_path_factory.mktemp("ckpt"),
        {**BASE_CONFIG, "chat_template": TEMPLATE},
        **{"generation_config.json": {"eos_token_id": [3, 1]}, "config.json": {"eos_token_id": 1}},
    )


@pytest.fixture(scope="module")
def tok(ckpt):
    return Tokenizer.from_dir(ckpt)


@pytest.fixture(scope="module")
def hf(ckpt):
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(str(ckpt))


@pytest.mark.parametrize("add_special_tokens", [True, False])
def test_encode_decode_match_transformers(tok, hf, add_special_tokens):
    for text in TEXTS:
        ids = tok.encode(text, add_special_tokens=add_special_tokens)
        assert ids == hf.encode(text, add_special_tokens=add_special_tokens)
        assert (ids[0] == tok.bos_token_id) == (add_special_tokens or text.startswith("<s>"))
        for skip in (True, False):
            assert tok.decode(ids, skip_special_tokens=skip) == hf.decode(
                ids, skip_special_tokens=skip
            )
        assert tok.decode(tok.encode(text, add_special_tokens=False)) == text


def test_special_tokens_and_eos_ids(tok, hf):
    assert tok.special_tokens == {
        "bos_token": "<s>",
        "eos_token": "</s>",
        "pad_token": "<|im_end|>",
    }
    assert tok.special_tokens == hf.special_tokens_map
    assert tok.eos_token_ids == (3, 1)  # generation_config, then config, then eos_token (deduped)
    assert (tok.bos_token_id, tok.pad_token_id, tok.vocab_size) == (0, 3, len(hf))


@pytest.mark.parametrize("chat", CHATS)
@pytest.mark.parametrize("add_generation_prompt", [True, False])
@pytest.mark.parametrize("tools", [None, TOOLS])
def test_chat_template_matches_transformers(tok, hf, chat, add_generation_prompt, tools):
    ours = tok.apply_chat_template(chat, add_generation_prompt=add_generation_prompt, tools=tools)
    theirs = hf.apply_chat_template(
        chat, add_generation_prompt=add_generation_prompt, tools=tools, tokenize=False
    )
    assert ours == theirs
    assert ("<|im_start|>assistant (" in ours) == add_generation_prompt


@pytest.mark.parametrize(
    ("layout", "name"),
    [
        ("jinja_file", None),
        ("jinja_file", "tool_use"),
        ("named_list", None),
        ("named_list", "tool_use"),
    ],
)
def test_template_sources_and_names_match_transformers(tmp_path, layout, name):
    transformers = pytest.importorskip("transformers")
    if layout == "jinja_file":  # newer transformers: chat_template.jinja wins over the config
        files = {
            "chat_template.jinja": TEMPLATE,
            "additional_chat_templates__tool_use.jinja": TOOL_TEMPLATE,
        }
        config = {**BASE_CONFIG, "chat_template": "ignored"}
    else:
        named = [
            {"name": "default", "template": TEMPLATE},
            {"name": "tool_use", "template": TOOL_TEMPLATE},
        ]
        files, config = {}, {**BASE_CONFIG, "chat_template": named}
    path = write_checkpoint(tmp_path, config, **files)
    tok = Tokenizer.from_dir(path)
    hf = transformers.AutoTokenizer.from_pretrained(str(path))
    ours = tok.apply_chat_template(
        CHATS[1], True, template_name=name, tools=TOOLS if name else None
    )
    theirs = hf.apply_chat_template(
        CHATS[1],
        chat_template=name,
        tools=TOOLS if name else None,
        tokenize=False,
        add_generation_prompt=True,
    )
    assert ours == theirs
    assert ours.startswith("TOOLS [\n  {") == (name == "tool_use")


def test_streaming_decoder_is_utf8_safe_and_equals_full_decode(tok):
    text = "Streaming 日本語 and 中文 with 🙂🚀👩‍💻 emoji, café."
    ids = tok.encode(text, add_special_tokens=True)
    stream = StreamDecoder(tok)
    pieces = [stream.push(i) for i in ids]
    assert not any("\ufffd" in p for p in pieces)
    assert "" in pieces[1:]  # some byte tokens end inside a multi-byte character
    assert "".join(pieces) + stream.flush() == tok.decode(ids) == "<s>" + text
    skip = StreamDecoder(tok, skip_special_tokens=True)
    assert skip.push(ids[:5]) + skip.push(ids[5:]) + skip.flush() == text


def test_streaming_flush_returns_a_partial_character(tok):
    ids = tok.encode("🙂", add_special_tokens=False)
    assert len(ids) > 1
    stream = StreamDecoder(tok)
    assert stream.push(ids[:-1]) == ""
    assert stream.flush() == tok.decode(ids[:-1]) and "\ufffd" in tok.decode(ids[:-1])


def test_decode_incremental_is_pure(tok):
    ids = tok.encode("ab 🙂 c", add_special_tokens=False)
    out, p, r = [], 0, 0
    for n in range(1, len(ids) + 1):
        text, p, r = decode_incremental(tok, ids[:n], p, r)
        out.append(text)
        assert decode_incremental(tok, ids[:n], p, r)[0] == ""  # same state, nothing new
    assert "".join(out) == "ab 🙂 c"


def test_load_errors(tmp_path, ckpt):
    with pytest.raises(CheckpointError, match=r"path='.*nowhere' \(expected a directory\)"):
        Tokenizer.from_dir(tmp_path / "nowhere")
    with pytest.raises(CheckpointError, match=r"tokenizer.json not found .*save_pretrained"):
        Tokenizer.from_dir(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{}")
    with pytest.raises(CheckpointError, match=r"tokenizer.json: cannot be parsed"):
        Tokenizer.from_dir(tmp_path)
    (tmp_path / "tokenizer.json").write_text((ckpt / "tokenizer.json").read_text())
    bad = {
        "tokenizer_config.json": (
            "{not json",
            r"tokenizer_config.json: invalid JSON at line 1 column 2",
        ),
        "generation_config.json": (
            json.dumps({"eos_token_id": "2"}),
            r"generation_config.json: eos_token_id='2' \(expected an int >= 0 or a list of them\)",
        ),
        "config.json": (json.dumps([1]), r"config.json: expected a JSON object, got list"),
    }
    for name, (content, match) in bad.items():
        (tmp_path / name).write_text(content)
        with pytest.raises(ConfigError, match=match):
            Tokenizer.from_dir(tmp_path)
        (tmp_path / name).unlink()
    for config, match in [
        ({"eos_token": 5}, r"eos_token=5 \(expected a string or \{'content': str\}\)"),
        ({"eos_token": "<nope>"}, r"eos_token='<nope>' \(expected a token of tokenizer.json\)"),
        ({"chat_template": 3}, r"chat_template=int \(expected a string or a list of"),
        ({"chat_template": [{"name": "x"}]}, r"chat_template=list \(expected a string"),
    ]:
        (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
        with pytest.raises(ConfigError, match=match):
            Tokenizer.from_dir(tmp_path)


def test_chat_template_errors(tmp_path, tok):
    path = write_checkpoint(tmp_path, BASE_CONFIG)
    plain = Tokenizer.from_dir(path)
    assert plain.eos_token_ids == (1,)
    with pytest.raises(
        ConfigError,
        match=r"no chat template \(expected chat_template.jinja or field chat_template",
    ):
        plain.apply_chat_template(CHATS[0])
    with pytest.raises(
        ConfigError, match=re.escape("chat template name='tool_use' (expected one of ['default'])")
    ):
        tok.apply_chat_template(CHATS[0], template_name="tool_use")
    with pytest.raises(
        InputError, match=r"tokenizer_config.json: chat_template raised: Unsupported role: tool"
    ):
        tok.apply_chat_template([{"role": "tool", "content": "x"}])
    with pytest.raises(InputError, match=r"messages=\[\] \(expected a non-empty list"):
        tok.apply_chat_template([])
    with pytest.raises(InputError, match=r"messages\[1\]='hi' \(expected a role/content dict"):
        tok.apply_chat_template([{"role": "user", "content": "a"}, "hi"])
    (path / "chat_template.jinja").write_text("{% if %}")
    broken = Tokenizer.from_dir(path)
    with pytest.raises(ConfigError, match=r"chat_template.jinja: jinja syntax error at line 1"):
        broken.apply_chat_template(CHATS[0])
    with pytest.raises(InputError, match=r"Tokenizer.encode: text=\[1\] \(expected a str\)"):
        tok.encode([1])


def test_tokenizer_larger_than_the_model_vocab_is_refused(tmp_path):
    from ..conftest import write_char_tokenizer

    write_char_tokenizer(tmp_path, vocab_size=128)
    tok = Tokenizer.from_dir(tmp_path, vocab_size=128)  # equal: fine
    tok.check_vocab(256)  # a padded model vocab is fine too
    with pytest.raises(
        CheckpointError,
        match=r"tokenizer vocab_size=128 \(expected <= the model's vocab_size=100 from config.json\); the tokenizer belongs to another model",
    ):
        Tokenizer.from_dir(tmp_path, vocab_size=100)
    with pytest.raises(
        CheckpointError, match=r"tokenizer vocab_size=128 \(expected <= the model's vocab_size=127"
    ):
        tok.check_vocab(127)
    with pytest.raises(
        InputError, match=r"Tokenizer.check_vocab: vocab_size='x' \(expected an int >= 1\)"
    ):
        tok.check_vocab("x")
