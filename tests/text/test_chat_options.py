"""Chat-template options against transformers: tools as functions, continue_final_message,
reasoning fields, the add_generation_prompt default."""

from __future__ import annotations

import enum
from typing import Any, Literal

import pytest

from edgellm_fn.errors import InputError
from edgellm_fn.text.tokenizer import Tokenizer
from edgellm_fn.text.tool_schema import function_schema

from .test_tokenizer import BASE_CONFIG, write_checkpoint

transformers = pytest.importorskip("transformers")

TEMPLATE = """{%- if tools %}TOOLS {{ tools | tojson }}
{% endif %}
{%- for m in messages %}<|im_start|>{{ m.role }}
{% if m.reasoning_content %}<think>{{ m.reasoning_content }}</think>{% endif %}
{%- if m.thinking %}[t:{{ m.thinking }}]{% endif %}
{{- m.content }}<|im_end|>
{% endfor %}
{%- if add_generation_prompt %}<|im_start|>assistant
{% endif %}"""


class Unit(enum.Enum):
    C = "celsius"
    F = "fahrenheit"


def get_weather(city: str, unit: Unit, days: int = 1) -> dict[str, float]:
    """Looks up the weather.

    Args:
        city: The city, for example
            "Paris" or "Tokyo".
        unit: The unit of the temperatures.
        days: How many days ahead (choices: [1, 2, 3])

    Returns:
        The temperature per day.
    """
    return {}


def search(query: str, tags: list[str] | None, mode: Literal["fast", "deep"] = "fast"):
    """Searches the index.

    Args:
        query: What to look for.
        tags (list): Optional tags to filter by.
        mode: fast or deep (choices: ["fast", "deep"])
    """


def mixed(pair: tuple[int, str], anything: Any, scores: dict[str, int | float]) -> None:
    """No args section text beyond the arguments.

    Args:
        pair: A pair.
        anything: Whatever.
        scores: Named scores.
    """


class Custom:
    pass


class Toolbox:
    def lookup(self, word: str) -> str:
        """Defines a word.

        Args:
            word: The word.
        """
        return word


@pytest.mark.parametrize("fn", [get_weather, search, mixed, Toolbox().lookup])
def test_function_schema_equals_transformers(fn):
    from transformers.utils import get_json_schema

    assert function_schema(fn) == get_json_schema(fn)


def test_bad_tools_are_named():
    def no_doc(x: int):
        pass

    def no_hint(x):
        """Doc.

        Args:
            x: An x.
        """

    def undocumented(x: int):
        """Doc without args."""

    def custom(x: Custom):
        """Doc.

        Args:
            x: A custom thing.
        """

    with pytest.raises(InputError, match=r"'no_doc' has no docstring"):
        function_schema(no_doc)
    with pytest.raises(InputError, match=r"argument 'x' has no type hint"):
        function_schema(no_hint)
    with pytest.raises(InputError, match=r"argument 'x' has no description"):
        function_schema(undocumented)
    with pytest.raises(InputError, match=r"argument 'x'.*has no JSON schema"):
        function_schema(custom)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    path = write_checkpoint(
        tmp_path_factory.mktemp("opts"), {**BASE_CONFIG, "chat_template": TEMPLATE}
    )
    return Tokenizer.from_dir(path), transformers.AutoTokenizer.from_pretrained(str(path))


CHAT = [
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "reasoning": "Call the tool.", "content": "Let me check"},
]


@pytest.mark.parametrize(
    "kwargs",
    [
        {},  # the default: no generation prompt, as transformers
        {"add_generation_prompt": True, "tools": [get_weather, search]},
        {"continue_final_message": True},
        {"continue_final_message": "reasoning"},
        {"continue_final_message": "thinking"},
    ],
)
def test_chat_options_render_as_transformers(pair, kwargs):
    ours, hf = pair
    want = hf.apply_chat_template(CHAT, tokenize=False, **kwargs)
    assert ours.apply_chat_template(CHAT, **kwargs) == want


def test_reasoning_names_alias_each_other(pair):
    ours, hf = pair
    for name in ("reasoning", "thinking", "reasoning_content"):
        chat = [{"role": "assistant", name: "hmm", "content": "ok"}]
        text = ours.apply_chat_template(chat)
        assert text == hf.apply_chat_template(chat, tokenize=False)
        assert "<think>hmm</think>[t:hmm]ok" in text


def test_continue_final_message_errors_are_named(pair):
    ours, _ = pair
    with pytest.raises(InputError, match="continue_final_message=True with add_generation_prompt"):
        ours.apply_chat_template(CHAT, True, continue_final_message=True)
    with pytest.raises(InputError, match="final message has no string 'summary'"):
        ours.apply_chat_template(CHAT, continue_final_message="summary")
    with pytest.raises(InputError, match=r"tools\[0\]=3"):
        ours.apply_chat_template(CHAT, tools=[3])
