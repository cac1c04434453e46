"""Tokenizer of a Hugging Face checkpoint, streaming detokenization and stop strings (host side).

``Tokenizer.from_dir(dir)`` reads ``tokenizer.json`` (``tokenizers`` package), the special tokens
and chat templates of ``tokenizer_config.json`` (see ``chat_template``), and the end-of-sequence
ids of ``generation_config.json`` / ``config.json``. Encoding, decoding and chat rendering match
``transformers.PreTrainedTokenizerFast`` loaded from the same directory.
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import tokenizers

from edgellm_fn.config import read_json
from edgellm_fn.errors import CheckpointError, ConfigError, InputError, show
from edgellm_fn.text import chat_template

SPECIAL_TOKEN_FIELDS = (
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
)


def _token_content(path: pathlib.Path, field: str, value: Any) -> str | None:
    """A special token is a string or a serialized AddedToken ``{"content": ...}``."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, Mapping) and isinstance(value.get("content"), str):
        return value["content"]
    raise ConfigError(f"{path}: {field}={value!r} (expected a string or {{'content': str}})")


def _eos_ids(path: pathlib.Path, data: Mapping[str, Any]) -> list[int]:
    value = data.get("eos_token_id")
    if value is None:
        return []
    values = value if isinstance(value, list) else [value]
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values):
        raise ConfigError(
            f"{path}: eos_token_id={value!r} (expected an int >= 0 or a list of them)"
        )
    return values


class Tokenizer:
    """Text <-> token ids, special tokens, end-of-sequence ids and chat templates.

    Attributes:
      backend: the ``tokenizers.Tokenizer``.
      special_tokens: ``{"bos_token": "<s>", ...}``: the fields of ``tokenizer_config.json`` that
        are set (template variables too).
      eos_token_ids: every id that ends generation: ``generation_config.json``, then
        ``config.json``, then the ``eos_token``; deduplicated, in that order.
      chat_templates: ``{name: (source, where)}`` (``"default"`` is the default template).
      clean_up_tokenization_spaces: as in ``transformers``; ignored for BPE models, as there.
    """

    def __init__(
        self,
        backend: tokenizers.Tokenizer,
        *,
        special_tokens: Mapping[str, str],
        eos_token_ids: Sequence[int],
        chat_templates: Mapping[str, tuple[str, str]],
        clean_up_tokenization_spaces: bool = False,
        name: str = "tokenizer",
    ):
        self.backend = backend
        self.special_tokens = dict(special_tokens)
        self.eos_token_ids = tuple(eos_token_ids)
        self.chat_templates = dict(chat_templates)
        self.clean_up_tokenization_spaces = clean_up_tokenization_spaces
        self.name = name

    @classmethod
    def from_dir(cls, path: str | pathlib.Path, *, vocab_size: int | None = None) -> Tokenizer:
        """Loads the tokenizer of a Hugging Face checkpoint directory.

        Args:
          path: the checkpoint directory.
          vocab_size: the model's ``vocab_size``; when given, ``check_vocab`` runs on load.

        Raises:
          CheckpointError: the directory or ``tokenizer.json`` is missing or unreadable, or the
            tokenizer has ids the model's embedding does not (``vocab_size``).
          ConfigError: a JSON file or one of its fields is malformed.
        """
        root = pathlib.Path(path)
        if not root.is_dir():
            raise CheckpointError(f"Tokenizer.from_dir: path={str(root)!r} (expected a directory)")
        tokenizer_file = root / "tokenizer.json"
        if not tokenizer_file.is_file():
            raise CheckpointError(
                f"{root}: tokenizer.json not found (expected the Hugging Face fast-tokenizer "
                "file); save it with tokenizer.save_pretrained(dir)"
            )
        try:
            backend = tokenizers.Tokenizer.from_file(str(tokenizer_file))
        except Exception as e:  # tokenizers raises a bare Exception on parse errors
            raise CheckpointError(f"{tokenizer_file}: cannot be parsed ({e})") from None
        config_file = root / "tokenizer_config.json"
        config = read_json(config_file, missing=None)
        special = {}
        for field in SPECIAL_TOKEN_FIELDS:
            content = _token_content(config_file, field, config.get(field))
            if content is not None:
                special[field] = content
        eos = _eos_ids(
            root / "generation_config.json",
            read_json(root / "generation_config.json", missing=None),
        )
        eos += _eos_ids(root / "config.json", read_json(root / "config.json", missing=None))
        if "eos_token" in special:
            eos_id = backend.token_to_id(special["eos_token"])
            if eos_id is None:
                raise ConfigError(
                    f"{config_file}: eos_token={special['eos_token']!r} "
                    "(expected a token of tokenizer.json)"
                )
            eos.append(eos_id)
        tokenizer = cls(
            backend,
            special_tokens=special,
            eos_token_ids=list(dict.fromkeys(eos)),
            chat_templates=chat_template.load_chat_templates(root, config),
            clean_up_tokenization_spaces=bool(config.get("clean_up_tokenization_spaces", False)),
            name=str(root),
        )
        if vocab_size is not None:
            tokenizer.check_vocab(vocab_size)
        return tokenizer

    def check_vocab(self, vocab_size: int) -> None:
        """Refuses a tokenizer with ids the model cannot embed (``id >= vocab_size``).

        A model's vocab may be larger than its tokenizer's (padded embeddings), never smaller:
        an id past the embedding table would be looked up out of range and give garbage.

        Args:
          vocab_size: the model's ``vocab_size`` (``ModelConfig.vocab_size``).

        Raises:
          CheckpointError: the tokenizer (added tokens included) has more ids.
        """
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 1:
            raise InputError(
                f"Tokenizer.check_vocab: vocab_size={show(vocab_size)} (expected an int >= 1)"
            )
        largest = max(self.backend.get_vocab(with_added_tokens=True).values(), default=-1)
        if largest >= vocab_size:
            raise CheckpointError(
                f"{self.name}: tokenizer vocab_size={max(self.vocab_size, largest + 1)} "
                f"(expected <= the model's vocab_size={vocab_size} from config.json); the "
                "tokenizer belongs to another model, so its ids would index past the embedding"
            )

    @property
    def vocab_size(self) -> int:
        """Number of ids, added tokens included."""
        return self.backend.get_vocab_size(with_added_tokens=True)

    def token_id(self, field: str) -> int | None:
        """Id of a special token by field name (``"bos_token"``, ...), None when unset."""
        token = self.special_tokens.get(field)
        return None if token is None else self.backend.token_to_id(token)

    @property
    def bos_token_id(self) -> int | None:
        return self.token_id("bos_token")

    @property
    def pad_token_id(self) -> int | None:
        return self.token_id("pad_token")

    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        """Token ids of ``text``; ``add_special_tokens`` runs the post-processor (e.g. BOS).

        Text rendered by ``apply_chat_template`` already holds its special tokens: encode it with
        ``add_special_tokens=False``, as ``transformers`` does.
        """
        if not isinstance(text, str):
            raise InputError(f"Tokenizer.encode: text={show(text)} (expected a str)")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:
            raise InputError(
                f"Tokenizer.encode: text has a lone surrogate {text[e.start]!r} at index "
                f"{e.start} (expected valid Unicode text; undecodable bytes in a command line or "
                "file arrive as lone surrogates)"
            ) from None
        return self.backend.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: Iterable[int], *, skip_special_tokens: bool = False) -> str:
        """Text of ``ids`` (invalid UTF-8 byte sequences become U+FFFD)."""
        text = self.backend.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)
        if self.clean_up_tokenization_spaces and not isinstance(
            self.backend.model, tokenizers.models.BPE
        ):
            for old, new in _CLEANUP:
                text = text.replace(old, new)
        return text

    def apply_chat_template(
        self,
        messages: Sequence[Mapping[str, Any]],
        add_generation_prompt: bool = False,
        *,
        continue_final_message: bool | str = False,
        tools: Sequence[Mapping[str, Any] | Callable] | None = None,
        template_name: str | None = None,
        **kwargs: Any,
    ) -> str:
        """Renders the chat as ``transformers``' ``apply_chat_template(..., tokenize=False)``.

        Args:
          messages: ``[{"role": ..., "content": ...}, ...]``; a message's ``reasoning`` or
            ``thinking`` is also passed as ``reasoning_content`` (and the reverse), as
            ``transformers`` does.
          add_generation_prompt: end with the assistant header (default off, as
            ``transformers``; the text API and the server turn it on).
          continue_final_message: end inside the final message so the model continues it (a
            field name, or True for ``"content"``); not with ``add_generation_prompt``.
          tools: JSON schemas of tools, or Python functions (type hints and a Google-style
            docstring; ``text/tool_schema.py``), passed to the template.
          template_name: a named template; default ``"tool_use"`` with tools if present, else
            ``"default"``.
          **kwargs: extra template variables.

        Raises:
          ConfigError: the checkpoint has no (such) template, or it does not compile.
          InputError: malformed messages, or the template raised (e.g. unsupported role).
        """
        source, where = chat_template.select_chat_template(
            self.chat_templates, template_name, has_tools=tools is not None, model_dir=self.name
        )
        return chat_template.render_chat_template(
            source,
            messages,
            add_generation_prompt=add_generation_prompt,
            continue_final_message=continue_final_message,
            tools=tools,
            special_tokens=self.special_tokens,
            where=where,
            **kwargs,
        )


_CLEANUP = (
    (" .", "."),
    (" ?", "?"),
    (" !", "!"),
    (" ,", ","),
    (" ' ", "'"),
    (" n't", "n't"),
    (" 'm", "'m"),
    (" 's", "'s"),
    (" 've", "'ve"),
    (" 're", "'re"),
)


def decode_incremental(
    tokenizer: Tokenizer,
    ids: Sequence[int],
    prefix_offset: int,
    read_offset: int,
    *,
    skip_special_tokens: bool = False,
) -> tuple[str, int, int]:
    """One step of streaming detokenization (pure; the offsets are the state).

    ``ids[prefix_offset:read_offset]`` is context already emitted; the new text is
    ``decode(ids[prefix_offset:])`` minus ``decode(ids[prefix_offset:read_offset])``, held back
    while it ends in U+FFFD (an incomplete multi-byte character). Decoding a small window rather
    than one token keeps context-dependent decoders (SentencePiece spaces) right.

    Returns:
      ``(text, prefix_offset, read_offset)``: the new complete text (possibly ``""``) and the next
      offsets. Start with ``(0, 0)``.
    """
    prefix = tokenizer.decode(
        ids[prefix_offset:read_offset], skip_special_tokens=skip_special_tokens
    )
    full = tokenizer.decode(ids[prefix_offset:], skip_special_tokens=skip_special_tokens)
    if len(full) > len(prefix) and not full.endswith("\ufffd"):
        return full[len(prefix) :], read_offset, len(ids)
    return "", prefix_offset, read_offset


class StreamDecoder:
    """Turns a stream of token ids into a stream of complete text.

    ``"".join(push(...) for each chunk) + flush() == tokenizer.decode(all_ids)`` whenever
    ``decode`` is a concatenation of per-token pieces (byte-level BPE; SentencePiece too).
    """

    def __init__(self, tokenizer: Tokenizer, *, skip_special_tokens: bool = False):
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.ids: list[int] = []
        self._prefix_offset = 0
        self._read_offset = 0

    def push(self, ids: int | Iterable[int]) -> str:
        """Adds token ids; returns the text they complete (``""`` while a character is partial)."""
        self.ids.extend([int(ids)] if isinstance(ids, int) else (int(i) for i in ids))
        text, self._prefix_offset, self._read_offset = decode_incremental(
            self.tokenizer,
            self.ids,
            self._prefix_offset,
            self._read_offset,
            skip_special_tokens=self.skip_special_tokens,
        )
        return text

    def flush(self) -> str:
        """Returns whatever is still held back (a trailing partial character as U+FFFD)."""
        kwargs = {"skip_special_tokens": self.skip_special_tokens}
        prefix = self.tokenizer.decode(self.ids[self._prefix_offset : self._read_offset], **kwargs)
        full = self.tokenizer.decode(self.ids[self._prefix_offset :], **kwargs)
        self._prefix_offset = self._read_offset = len(self.ids)
        return full[len(prefix) :]
