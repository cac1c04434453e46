"""Text-level generation: prompts as strings or chat messages.

``generate`` takes token ids; these helpers encode text first, as ``edgellm-fn generate`` does:
a string is encoded as is (with the tokenizer's special tokens); a list of chat messages
(``{"role": ..., "content": ...}``) goes through the checkpoint's chat template with the
generation prompt appended (or, without a template, its contents joined by newlines).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import InputError, show
from ..text.tokenizer import Tokenizer

#: A prompt: token ids, a string, or chat messages.
Prompt = Sequence[int] | str | Sequence[Mapping[str, Any]]


def encode_messages(
    tokenizer: Tokenizer,
    messages: Sequence[Mapping[str, Any]],
    chat: bool = True,
    chat_template_kwargs: Mapping[str, Any] | None = None,
) -> list[int]:
    """Chat-templated ids of ``messages`` (special tokens come from the template), or the
    contents joined by newlines when ``chat`` is off or the checkpoint has no template.

    ``chat_template_kwargs`` go to ``Tokenizer.apply_chat_template``: ``tools``,
    ``continue_final_message``, ``add_generation_prompt`` (default: on, unless the final message
    is continued), ``template_name``, or template variables (``enable_thinking``, ...).
    """
    if chat_template_kwargs is not None and (
        not isinstance(chat_template_kwargs, Mapping)
        or not all(isinstance(k, str) for k in chat_template_kwargs)
        or "messages" in chat_template_kwargs
    ):
        raise InputError(
            f"chat_template_kwargs={show(chat_template_kwargs)} (expected a dict of option and "
            "template-variable names, without 'messages')"
        )
    if chat and tokenizer.chat_templates:
        kwargs = dict(chat_template_kwargs or {})
        kwargs.setdefault("add_generation_prompt", not kwargs.get("continue_final_message"))
        text = tokenizer.apply_chat_template(list(messages), **kwargs)
        return tokenizer.encode(text, add_special_tokens=False)
    return tokenizer.encode("\n".join(str(m["content"]) for m in messages))


def encode_prompts(
    tokenizer: Tokenizer,
    prompts: Sequence[Prompt],
    chat_template_kwargs: Mapping[str, Any] | None = None,
) -> list[Sequence[int]]:
    """Token ids of every prompt (ids pass through unchanged; chat messages are rendered with
    ``chat_template_kwargs``, see ``encode_messages``).

    Raises:
      InputError: a prompt that is none of ids, a string or a list of ``{role, content}``
        messages (the message names the prompt's index).
    """
    if isinstance(prompts, (str, bytes)) or not isinstance(prompts, Sequence | np.ndarray):
        raise InputError(
            f"generate: prompts={show(prompts)} (expected a list of prompts: token ids, strings "
            "or chat messages); wrap a single prompt in a list"
        )
    out: list[Sequence[int]] = []
    for i, p in enumerate(prompts):
        if isinstance(p, str):
            out.append(tokenizer.encode(p))
        elif isinstance(p, Sequence) and p and all(isinstance(m, Mapping) for m in p):
            for j, m in enumerate(p):
                if not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
                    raise InputError(
                        f"generate: prompts[{i}][{j}]={show(m)} (expected a message with string "
                        "'role' and 'content')"
                    )
            out.append(encode_messages(tokenizer, p, chat_template_kwargs=chat_template_kwargs))
        else:
            out.append(p)
    return out


def is_text(prompts) -> bool:
    """Whether any prompt is a string or a list of chat messages (not token ids)."""
    if isinstance(prompts, (str, bytes)) or not isinstance(prompts, Sequence):
        return False
    return any(
        isinstance(p, str) or (isinstance(p, Sequence) and len(p) > 0 and isinstance(p[0], Mapping))
        for p in prompts
    )
