"""Chat templates: find them in a checkpoint directory and render them as Hugging Face does.

Where templates live (the newest convention wins, as in ``transformers``):

- ``chat_template.jinja`` (the default template) and ``additional_chat_templates/<name>.jinja``;
- else ``tokenizer_config.json`` field ``chat_template``: a string, or a list of
  ``{"name": ..., "template": ...}``;
- else ``chat_template.json`` field ``chat_template`` (processor checkpoints).

Rendering uses jinja2's ``ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)``
with the globals and filters Hugging Face templates rely on: ``raise_exception``, ``strftime_now``,
``tojson`` (no HTML escaping), the ``loopcontrols`` extension and ``{% generation %}`` blocks.
"""

from __future__ import annotations

import functools
import json
import pathlib
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

from edgellm_fn.errors import ConfigError, InputError
from edgellm_fn.text.tool_schema import tool_schemas

DEFAULT = "default"


class _GenerationBlock(jinja2.ext.Extension):
    """``{% generation %}...{% endgeneration %}`` renders its body (HF marks assistant spans)."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(lineno)

    def _render(self, caller):
        return caller()


def _raise_exception(message: str):
    raise jinja2.exceptions.TemplateError(message)


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False) -> str:
    return json.dumps(
        x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


@functools.lru_cache(maxsize=16)
def compile_chat_template(source: str, where: str = "chat_template") -> jinja2.Template:
    """Compiles a template string in the sandboxed environment Hugging Face uses.

    Raises:
      ConfigError: the template has a jinja syntax error (``where`` names its file and field).
    """
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=[_GenerationBlock, jinja2.ext.loopcontrols],
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    try:
        return env.from_string(source)
    except jinja2.TemplateSyntaxError as e:
        raise ConfigError(
            f"{where}: jinja syntax error at line {e.lineno}: {e.message}; fix the template"
        ) from None


def render_chat_template(
    source: str,
    messages: Sequence[Mapping[str, Any]],
    *,
    add_generation_prompt: bool = True,
    continue_final_message: bool | str = False,
    tools: Sequence[Mapping[str, Any] | Callable] | None = None,
    documents: Sequence[Mapping[str, Any]] | None = None,
    special_tokens: Mapping[str, str] | None = None,
    where: str = "chat_template",
    **kwargs: Any,
) -> str:
    """Renders ``source`` like ``transformers``' ``apply_chat_template(..., tokenize=False)``.

    Args:
      source: the jinja template.
      messages: ``[{"role": ..., "content": ...}, ...]``; keys whose value is None are dropped.
      add_generation_prompt: append the assistant header.
      continue_final_message: end the text inside the final message (no end-of-turn after it),
        so the model continues it; a string names the field to continue (default
        ``"content"``, or a reasoning field). Not with ``add_generation_prompt``.
      tools: JSON schemas, or functions (``tool_schema.function_schema`` converts them).
      documents: passed to the template as ``documents`` (dicts).
      special_tokens: ``bos_token``, ``eos_token``, ... as template variables.
      where: names the template's file and field in errors.
      **kwargs: extra template variables (they override ``special_tokens``).

    Raises:
      InputError: empty or malformed messages, or the template called ``raise_exception``.
      ConfigError: the template does not compile.
    """
    if isinstance(messages, (str, bytes, Mapping)) or len(messages) == 0:
        raise InputError(
            f"apply_chat_template: messages={messages!r} "
            "(expected a non-empty list of {'role': ..., 'content': ...} dicts)"
        )
    chat = []
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise InputError(
                f"apply_chat_template: messages[{i}]={message!r} (expected a role/content dict)"
            )
        chat.append(_alias_reasoning({k: v for k, v in message.items() if v is not None}))
    if continue_final_message and add_generation_prompt:
        raise InputError(
            "apply_chat_template: continue_final_message=True with add_generation_prompt=True "
            "(expected one: continue the final message, or open a new assistant turn)"
        )
    template = compile_chat_template(source, where)
    variables = {**(special_tokens or {}), **kwargs}
    field = None
    if continue_final_message:
        field = continue_final_message if isinstance(continue_final_message, str) else "content"
        final = chat[-1].get(field)
        if not isinstance(final, str):
            raise InputError(
                f"apply_chat_template: continue_final_message: the final message has no string "
                f"{field!r} to continue (got {final!r})"
            )
        for name in REASONING_FIELDS if field in REASONING_FIELDS else (field,):
            if chat[-1].get(name) == final:
                chat[-1][name] = final + _CONTINUE_TAG
    try:
        text = template.render(
            messages=chat,
            tools=tool_schemas(tools),
            documents=None if documents is None else list(documents),
            add_generation_prompt=add_generation_prompt,
            **variables,
        )
    except jinja2.TemplateError as e:
        raise InputError(f"apply_chat_template: {where} raised: {e}") from e
    if field is None:
        return text
    cut = text.rfind(_CONTINUE_TAG.strip())
    if cut < 0:
        raise InputError(
            f"apply_chat_template: continue_final_message: {where} does not render the final "
            f"message's {field!r} (it drops or rewrites it), so it cannot be continued"
        )
    # a template that kept the tag's trailing space kept the message's own spacing too
    return text[:cut] if text.startswith(_CONTINUE_TAG, cut) else text[:cut].rstrip()


#: Names a message's reasoning goes by; templates read the first (and gpt-oss ``thinking``).
REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")
_CONTINUE_TAG = "CONTINUE_FINAL_MESSAGE_TAG "


def _alias_reasoning(message: dict) -> dict:
    """``message`` with its reasoning (under any of ``REASONING_FIELDS``) under every name the
    templates read: ``reasoning_content`` and ``thinking``."""
    reasoning = next((message[k] for k in REASONING_FIELDS if message.get(k) is not None), None)
    if reasoning is None:
        return message
    return {"thinking": reasoning, **message, "reasoning_content": reasoning}


def load_chat_templates(model_dir: str | pathlib.Path, tokenizer_config: Mapping[str, Any]) -> dict:
    """Finds a checkpoint's chat templates.

    Args:
      model_dir: the checkpoint directory.
      tokenizer_config: the parsed ``tokenizer_config.json`` (``{}`` when absent).

    Returns:
      ``{name: (source, where)}``, the default template under ``"default"``; ``where`` names the
      file and field for error messages. Empty when the checkpoint has none.

    Raises:
      ConfigError: a ``chat_template`` field of the wrong type.
    """
    root = pathlib.Path(model_dir)
    templates: dict[str, tuple[str, str]] = {}
    jinja_file = root / "chat_template.jinja"
    if jinja_file.is_file():
        templates[DEFAULT] = (jinja_file.read_text(encoding="utf-8"), str(jinja_file))
    extra_dir = root / "additional_chat_templates"
    if extra_dir.is_dir():
        for path in sorted(extra_dir.glob("*.jinja")):
            templates[path.stem] = (path.read_text(encoding="utf-8"), str(path))
    if templates:
        return templates
    field = tokenizer_config.get("chat_template")
    where = f"{root / 'tokenizer_config.json'}: chat_template"
    if field is None and (root / "chat_template.json").is_file():
        field = json.loads((root / "chat_template.json").read_text(encoding="utf-8")).get(
            "chat_template"
        )
        where = f"{root / 'chat_template.json'}: chat_template"
    if field is None:
        return {}
    if isinstance(field, str):
        return {DEFAULT: (field, where)}
    if isinstance(field, list) and all(
        isinstance(t, Mapping)
        and isinstance(t.get("name"), str)
        and isinstance(t.get("template"), str)
        for t in field
    ):
        return {t["name"]: (t["template"], f"{where}[{t['name']!r}]") for t in field}
    raise ConfigError(
        f"{where}={type(field).__name__} (expected a string or a list of "
        '{"name": str, "template": str})'
    )


def select_chat_template(
    templates: Mapping[str, tuple[str, str]],
    name: str | None,
    *,
    has_tools: bool,
    model_dir: str,
) -> tuple[str, str]:
    """Picks ``(source, where)`` as ``transformers`` does: ``name``, else ``"tool_use"`` when tools
    are given and it exists, else ``"default"``.

    Raises:
      ConfigError: the checkpoint has no template, or none of that name.
    """
    if not templates:
        raise ConfigError(
            f"{model_dir}: no chat template (expected chat_template.jinja or field chat_template "
            "in tokenizer_config.json); pass apply_chat_template=False or add a template"
        )
    if name is None:
        name = "tool_use" if has_tools and "tool_use" in templates else DEFAULT
    if name not in templates:
        raise ConfigError(
            f"{model_dir}: chat template name={name!r} (expected one of {sorted(templates)})"
        )
    return templates[name]
