"""The provider names, one list for every command and function.

``xla`` runs a checkpoint directly; ``onnxruntime`` and ``tensorrt`` run an engine directory that
``edgellm-fn build --provider onnxruntime|tensorrt`` wrote. A ``tensorrt`` engine is built by
NVIDIA TensorRT or by TensorRT-RTX (``TENSORRT_BUILDERS``); the same provider runs both.

Old spellings stay accepted through ``ALIASES``: ``onnx`` (the build provider's former name) is
``onnxruntime``, and ``tensorrt-rtx`` is ``tensorrt`` built with TensorRT-RTX.
"""

from __future__ import annotations

from ..errors import ConfigError

PROVIDERS = ("xla", "onnxruntime", "tensorrt")
#: Libraries that build a ``tensorrt`` engine (``trt_adapter.load_module`` flavours).
TENSORRT_BUILDERS = ("tensorrt", "tensorrt-rtx")
#: Accepted old spelling → ``(provider, TensorRT builder or None)``.
ALIASES = {"onnx": ("onnxruntime", None), "tensorrt-rtx": ("tensorrt", "tensorrt-rtx")}
#: What ``--provider`` accepts in every CLI command.
CHOICES = PROVIDERS + tuple(ALIASES)
PROVIDER_HELP = (
    "xla (checkpoint directory), onnxruntime or tensorrt (engine directory); aliases: "
    "onnx = onnxruntime, tensorrt-rtx = tensorrt built with TensorRT-RTX"
)


def resolve_provider(name: str, where: str) -> tuple[str, str | None]:
    """Maps a provider name or alias to ``(provider, TensorRT builder)``.

    The builder is ``"tensorrt-rtx"`` for the alias of that name, ``"tensorrt"`` for
    ``"tensorrt"`` and None for the other providers.

    Raises:
      ConfigError: an unknown name (the message lists the names and the aliases).
    """
    if name in ALIASES:
        return ALIASES[name]
    if name not in PROVIDERS:
        aliases = ", ".join(f"{a!r} = {p!r}" for a, (p, _) in ALIASES.items())
        raise ConfigError(
            f"{where}: provider={name!r} (expected one of {PROVIDERS}; aliases: {aliases})"
        )
    return name, ("tensorrt" if name == "tensorrt" else None)
