"""LoRA adapters: reading PEFT adapters, the padded adapter bank, and the per-row delta.

A PEFT LoRA adapter (``adapter_config.json`` + ``adapter_model.safetensors``) adds to a projection
``y = x W^T`` the low-rank term ``scaling * (x A^T) B^T`` with ``A [r, in]``, ``B [out, r]`` and
``scaling = lora_alpha / r`` (``lora_alpha / sqrt(r)`` with ``use_rslora``).

The bank holds every adapter of an engine as one pytree of arrays, one pair per layer and target
(binding names ``lora_A_<target>_<layer>`` / ``lora_B_<target>_<layer>``)::

    lora_A_q_proj_0: [slots, R, in]      slot 0: zeros (no adapter)
    lora_B_q_proj_0: [slots, out, R]     slot s: adapter s, rank r_s <= R zero-padded,
                                         scaling folded into B
    lora_index:      [B] int32           the slot of each row

Zero padding is exact (padded ranks contribute ``0``), and a module an adapter does not target
holds zeros, so every row runs the same graph: switching or mixing adapters is data.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ..config import EngineConfig, ModelConfig, read_json
from ..dtypes import dtype as lookup_dtype
from ..errors import AdapterError, show
from .safetensors_io import FLOAT_NUMPY_DTYPES, dtype_name, load_file

#: Projections an adapter may target, in the order of ``models/llama.py``.
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_BLOCK = {t: "self_attn" if t[0] in "qkvo" else "mlp" for t in TARGETS}
_KEY = re.compile(
    r"base_model\.model\.model\.layers\.(\d+)\.(self_attn|mlp)\.(\w+)\.lora_([AB])\.weight"
)
_SUFFIX = re.compile(r"\.(lora_\w+|base_layer)(\.weight|\.bias)?$")
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
INDEX_BINDING = "lora_index"


def binding_name(kind: str, target: str, layer: int) -> str:
    """``lora_A_q_proj_0``-style binding name of one bank array (``kind`` is ``A`` or ``B``)."""
    return f"lora_{kind}_{target}_{layer}"


def target_dims(m: ModelConfig, target: str) -> tuple[int, int]:
    """``(in, out)`` features of projection ``target``."""
    h, f = m.hidden_size, m.intermediate_size
    return {
        "q_proj": (h, m.q_size),
        "k_proj": (h, m.kv_size),
        "v_proj": (h, m.kv_size),
        "o_proj": (m.q_size, h),
        "gate_proj": (h, f),
        "up_proj": (h, f),
        "down_proj": (f, h),
    }[target]


def bank_shapes(cfg: EngineConfig) -> dict[str, tuple[int, ...]]:
    """Every bank binding with its shape; empty when the engine has no LoRA."""
    r, slots = cfg.deployment.max_lora_rank, cfg.deployment.max_loras + 1
    if not r:
        return {}
    out = {}
    for i in range(cfg.model.num_hidden_layers):
        for t in TARGETS:
            fan_in, fan_out = target_dims(cfg.model, t)
            out[binding_name("A", t, i)] = (slots, r, fan_in)
            out[binding_name("B", t, i)] = (slots, fan_out, r)
    return out


@dataclasses.dataclass(frozen=True)
class Adapter:
    """One PEFT adapter read from disk.

    Attributes:
      name: the name requests use (``lora_name``).
      path: its directory.
      weights: ``(layer, target) -> (A [r, in], B [out, r] * scaling)`` float32.
    """

    name: str
    path: Path
    weights: dict[tuple[int, str], tuple[np.ndarray, np.ndarray]]

    @property
    def rank(self) -> int:
        return max((a.shape[0] for a, _ in self.weights.values()), default=0)


def _pattern_value(patterns: Mapping[str, Any], module: str, default: Any) -> Any:
    """PEFT's ``rank_pattern``/``alpha_pattern`` lookup: a key matches the module name's tail."""
    for key, value in patterns.items():
        if key == module or re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def _check_config(raw: Mapping[str, Any], where: str) -> dict[str, Any]:
    """The fields of ``adapter_config.json`` that change the math, checked."""
    if raw.get("peft_type", "LORA") != "LORA":
        raise AdapterError(f"{where}: peft_type={show(raw['peft_type'])} (expected 'LORA')")
    refused = {
        "use_dora": (False, None),
        "fan_in_fan_out": (False, None),
        "lora_bias": (False, None),
        "bias": ("none", None),
        "modules_to_save": (None, []),
    }
    for key, allowed in refused.items():
        if key in raw and raw[key] not in allowed:
            raise AdapterError(
                f"{where}: {key}={show(raw[key])} (expected {show(allowed[0])}); only plain LoRA "
                f"on {list(TARGETS)} is supported, retrain or re-save the adapter without it"
            )
    r, alpha = raw.get("r"), raw.get("lora_alpha", raw.get("r"))
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise AdapterError(f"{where}: r={show(r)} (expected an integer >= 1)")
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not math.isfinite(alpha):
        raise AdapterError(f"{where}: lora_alpha={show(alpha)} (expected a finite number)")
    rslora = raw.get("use_rslora", False)
    if not isinstance(rslora, bool):
        raise AdapterError(f"{where}: use_rslora={show(rslora)} (expected true or false)")
    targets = raw.get("target_modules")
    if isinstance(targets, list):
        for t in targets:
            if t not in TARGETS:
                raise AdapterError(
                    f"{where}: target_modules has {show(t)} (expected a subset of "
                    f"{list(TARGETS)}); unknown target module, this runtime adapts only these"
                )
    patterns = {}
    for key in ("rank_pattern", "alpha_pattern"):
        value = raw.get(key) or {}
        if not isinstance(value, dict):
            raise AdapterError(f"{where}: {key}={show(value)} (expected an object)")
        patterns[key] = value
    return dict(r=r, alpha=float(alpha), rslora=rslora, **patterns)


def read_peft_adapter(
    path: str | Path, model: ModelConfig, max_rank: int, name: str | None = None
) -> Adapter:
    """Reads and checks one PEFT LoRA adapter directory for ``model``.

    Args:
      path: directory with ``adapter_config.json`` and ``adapter_model.safetensors``.
      model: the base model the adapter must fit.
      max_rank: the bank's ``max_lora_rank``.
      name: the adapter's name (default: the directory name).

    Raises:
      AdapterError: a missing or ill-formed file, an unsupported option, an unknown target
        module, a rank above ``max_rank``, or a tensor whose layer or shape does not fit
        ``model`` (an adapter trained for another model).
    """
    path = Path(path)
    name = path.name if name is None else name
    where = f"lora {name!r} ({path})"
    if not (path / WEIGHTS_FILE).is_file():
        raise AdapterError(
            f"{where}: no {WEIGHTS_FILE} (expected a PEFT adapter directory); save it with "
            "`model.save_pretrained(dir)` (safe_serialization=True)"
        )
    raw = read_json(path / CONFIG_FILE, error=AdapterError)
    conf = _check_config(raw, f"{where}: {CONFIG_FILE}")
    tensors = load_file(path / WEIGHTS_FILE)
    halves: dict[tuple[int, str], dict[str, np.ndarray]] = {}
    for key, arr in tensors.items():
        match = _KEY.fullmatch(key)
        if match is None or match[3] not in TARGETS or _BLOCK[match[3]] != match[2]:
            module = _SUFFIX.sub("", key.removeprefix("base_model.model."))
            raise AdapterError(
                f"{where}: tensor {show(key)} (expected base_model.model.model.layers.N."
                f"{{self_attn,mlp}}.{{{','.join(TARGETS)}}}.lora_{{A,B}}.weight); unknown target "
                f"module {show(module)}, this runtime adapts only these projections"
            )
        layer, target, kind = int(match[1]), match[3], match[4]
        if layer >= model.num_hidden_layers:
            raise AdapterError(
                f"{where}: tensor {key!r} layer={layer} (expected < num_hidden_layers="
                f"{model.num_hidden_layers}); the adapter was trained for another model"
            )
        if arr.dtype not in FLOAT_NUMPY_DTYPES:
            raise AdapterError(
                f"{where}: tensor {key!r} dtype={dtype_name(arr.dtype)} (expected a float dtype)"
            )
        if not np.isfinite(np.asarray(arr, np.float32)).all():
            raise AdapterError(
                f"{where}: tensor {key!r} holds NaN or inf (expected finite weights); the adapter "
                "file is corrupt"
            )
        halves.setdefault((layer, target), {})[kind] = np.asarray(arr, np.float32)
    weights = {}
    for (layer, target), pair in sorted(halves.items()):
        module = f"model.layers.{layer}.{_BLOCK[target]}.{target}"
        if set(pair) != {"A", "B"}:
            missing = ({"A", "B"} - set(pair)).pop()
            raise AdapterError(
                f"{where}: {module} has no lora_{missing}.weight (expected both lora_A and lora_B)"
            )
        a, b = pair["A"], pair["B"]
        fan_in, fan_out = target_dims(model, target)
        r = _pattern_value(conf["rank_pattern"], module, conf["r"])
        fits = a.ndim == b.ndim == 2 and a.shape[1] == fan_in and b.shape == (fan_out, a.shape[0])
        if not fits:
            raise AdapterError(
                f"{where}: {module} has lora_A {list(a.shape)} and lora_B {list(b.shape)} "
                f"(expected [r, {fan_in}] and [{fan_out}, r] for this model); the adapter was "
                "trained for another model"
            )
        if a.shape[0] != r:
            raise AdapterError(
                f"{where}: {module} has rank {a.shape[0]} (expected r={r} from {CONFIG_FILE}); "
                "the config and the weights disagree"
            )
        if r > max_rank:
            raise AdapterError(
                f"{where}: {module} rank={r} (expected <= max_lora_rank={max_rank}); build the "
                "engine with a larger max_lora_rank"
            )
        alpha = float(_pattern_value(conf["alpha_pattern"], module, conf["alpha"]))
        scaling = alpha / math.sqrt(r) if conf["rslora"] else alpha / r
        weights[(layer, target)] = (a, b * np.float32(scaling))
    if not weights:
        raise AdapterError(
            f"{where}: {WEIGHTS_FILE} holds no LoRA tensors (expected lora_A/lora_B weights)"
        )
    return Adapter(name=name, path=path, weights=weights)


def build_bank(cfg: EngineConfig, adapters: Sequence[Adapter]) -> dict[str, np.ndarray]:
    """Packs ``adapters`` into slots ``1..n`` of the zero-padded bank (slot 0 stays zero).

    Raises:
      AdapterError: the engine has no LoRA bindings, or more adapters than ``max_loras``.
    """
    d = cfg.deployment
    if not d.max_lora_rank:
        raise AdapterError(
            "lora bank: max_lora_rank=0 (expected >= 1); the engine was built without LoRA "
            "bindings, create its config with max_lora_rank and max_loras"
        )
    if len(adapters) > d.max_loras:
        raise AdapterError(
            f"lora bank: {len(adapters)} adapters (expected <= max_loras={d.max_loras}); build "
            "the engine with more adapter slots"
        )
    np_dtype = np.dtype(lookup_dtype(cfg.dtype).jnp)
    bank = {n: np.zeros(s, np.float32) for n, s in bank_shapes(cfg).items()}
    for slot, adapter in enumerate(adapters, start=1):
        for (layer, target), (a, b) in adapter.weights.items():
            if a.shape[0] > d.max_lora_rank:
                raise AdapterError(
                    f"lora {adapter.name!r}: rank={a.shape[0]} (expected <= max_lora_rank="
                    f"{d.max_lora_rank})"
                )
            bank[binding_name("A", target, layer)][slot, : a.shape[0]] = a
            bank[binding_name("B", target, layer)][slot, :, : a.shape[0]] = b
    return {n: v.astype(np_dtype) for n, v in bank.items()}


LayerLora = dict[str, tuple[jax.Array, jax.Array]]


def gather_rows(tensors: Mapping[str, jax.Array], num_layers: int) -> list[LayerLora] | None:
    """Per layer, each target's ``(A [B, R, in], B [B, out, R])`` of each row's slot.

    Returns None when ``tensors`` holds no bank (an engine without LoRA).
    """
    if INDEX_BINDING not in tensors:
        return None
    index = tensors[INDEX_BINDING]
    return [
        {
            t: (
                jnp.take(tensors[binding_name("A", t, i)], index, axis=0),
                jnp.take(tensors[binding_name("B", t, i)], index, axis=0),
            )
            for t in TARGETS
        }
        for i in range(num_layers)
    ]


def delta(x: jax.Array, ab: tuple[jax.Array, jax.Array]) -> jax.Array:
    """Per row ``(x A^T) B^T`` for x ``[B, S, in]``, A ``[B, R, in]``, B ``[B, out, R]``."""
    a, b = ab
    xa = jnp.einsum("bsi,bri->bsr", x, a.astype(x.dtype))
    return jnp.einsum("bsr,bor->bso", xa, b.astype(x.dtype))
