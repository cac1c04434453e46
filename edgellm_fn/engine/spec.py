"""``EngineSpec``: the engine contract as data (upstream's ``TensorRegistry``).

Each binding has a name, a direction, a dtype and a shape whose entries are fixed ints or products
of ``InferenceDims`` fields. ``validate`` checks a tensor map against it at trace time.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping

import numpy as np

from ..config import EngineConfig
from ..dims import ZERO_ALLOWED, InferenceDims
from ..errors import EngineError
from ..models.external import extra_shapes, weight_shapes
from ..models.lora import INDEX_BINDING, bank_shapes

Dim = int | tuple[str, ...]  # a fixed size, or the product of InferenceDims fields
#: Qwen3-VL's deepstack inputs ``[B, S, H]``, one per feature set (upstream's deepstackEmbeds).
DEEPSTACK_BINDING = "deepstack_embeds_%d"


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """One binding: ``shape`` entries are ints or tuples of ``InferenceDims`` field names.

    ``kind`` says where an input comes from: ``"step"`` (the per-step I/O and the shared state
    of ``build_tensor_map``), ``"weight"`` (external weights, ``SharedResources.weights``) or
    ``"extra"`` (declared extra inputs, ``SharedResources.extra``); see ``models/external.py``.
    """

    name: str
    io: str  # "in" | "out"
    dtype: str
    shape: tuple[Dim, ...]
    kind: str = "step"  # "step" | "weight" | "extra"

    def resolve(self, dims: InferenceDims) -> tuple[int, ...]:
        out = []
        for d in self.shape:
            if isinstance(d, int):
                out.append(d)
            else:
                out.append(int(np.prod([dims.value(f) for f in d])))
        return tuple(out)

    def referenced(self) -> set[str]:
        return {f for d in self.shape if not isinstance(d, int) for f in d}


@dataclasses.dataclass(frozen=True)
class Profile:
    """An optimization profile: inclusive ``(min, max)`` ranges of the dynamic dims.

    Attributes:
      batch, seq_len: rows and tokens per row of a step.
      select_len: logit rows per batch row (``last_token_ids`` width).
      start_index_len: ``kvcache_start_index`` length; None means the batch range.
      attn_mask_seq_len: tree-mask rows (spec decode); None means ``(1, 1)``.
    """

    batch: tuple[int, int]
    seq_len: tuple[int, int]
    select_len: tuple[int, int] = (1, 1)
    start_index_len: tuple[int, int] | None = None
    attn_mask_seq_len: tuple[int, int] | None = None

    def range(self, field: str) -> tuple[int, int]:
        """``(min, max)`` of one dynamic ``InferenceDims`` field in this profile."""
        if field == "start_index_len":
            return self.batch if self.start_index_len is None else self.start_index_len
        if field == "rope_batch":  # dynamic only for MRoPE, where it is the batch
            return self.batch
        if field in ("attn_mask_seq_len", "packed_mask_len"):
            lo, hi = self.attn_mask_seq_len or (1, 1)
            return (lo, hi) if field == "attn_mask_seq_len" else ((lo + 31) // 32, (hi + 31) // 32)
        if field not in ("batch", "seq_len", "select_len"):
            raise EngineError(
                f"Profile: field={field!r} (expected batch, seq_len, select_len or "
                "start_index_len); fix it in EngineSpec.static_dims if it is fixed at build time"
            )
        return getattr(self, field)


@dataclasses.dataclass(frozen=True)
class EngineSpec:
    """Every binding of an engine, its profiles, which outputs alias which inputs, and the dims
    fixed when the engine is built.

    Attributes:
      bindings: every input and output.
      profiles: optimization profiles (0 prefill, 1 decode/verify).
      aliases: ``(output, input)`` pairs updated in place.
      static_dims: ``(field, size)`` of the ``InferenceDims`` fields an engine file fixes (KV
        capacity, RoPE batch); every other field is dynamic within the profiles.
    """

    bindings: tuple[TensorSpec, ...]
    profiles: tuple[Profile, ...]
    aliases: tuple[tuple[str, str], ...]  # (output, input)
    static_dims: tuple[tuple[str, int], ...] = ()

    def inputs(self) -> tuple[TensorSpec, ...]:
        return tuple(b for b in self.bindings if b.io == "in")

    def outputs(self) -> tuple[TensorSpec, ...]:
        return tuple(b for b in self.bindings if b.io == "out")

    def of_kind(self, kind: str) -> tuple[TensorSpec, ...]:
        """The inputs of one ``TensorSpec.kind`` (``"weight"``, ``"extra"``, ``"step"``)."""
        return tuple(b for b in self.inputs() if b.kind == kind)

    def __getitem__(self, name: str) -> TensorSpec:
        for b in self.bindings:
            if b.name == name:
                return b
        raise KeyError(name)

    def built_dim(self, d: Dim) -> int | None:
        """The size an engine file fixes for shape entry ``d``; None when it is dynamic."""
        if isinstance(d, int):
            return d
        static = dict(self.static_dims)
        return static[d[0]] if len(d) == 1 and d[0] in static else None

    def built_shape(self, b: TensorSpec) -> tuple[int, ...]:
        """``b``'s shape as an engine file declares it: fixed sizes, -1 for dynamic dims."""
        return tuple(-1 if (n := self.built_dim(d)) is None else n for d in b.shape)

    def is_dynamic(self, b: TensorSpec) -> bool:
        """True when some dim of ``b`` varies within the profiles."""
        return -1 in self.built_shape(b)

    def profile_ranges(self, b: TensorSpec) -> tuple[tuple[tuple[int, ...], tuple[int, ...]], ...]:
        """``((min shape, max shape), ...)`` of binding ``b``, one pair per profile."""
        out = []
        for p in self.profiles:
            lo, hi = [], []
            for d in b.shape:
                fixed = self.built_dim(d)
                if fixed is not None:
                    lo.append(fixed)
                    hi.append(fixed)
                    continue
                a, z = 1, 1
                for field in d:
                    r = p.range(field)
                    a, z = a * r[0], z * r[1]
                lo.append(a)
                hi.append(z)
            out.append((tuple(lo), tuple(hi)))
        return tuple(out)

    def check_dims(self, profile: int, dims: InferenceDims) -> None:
        """Rejects a profile index or dims outside the profile's ranges."""
        if not 0 <= profile < len(self.profiles):
            raise EngineError(
                f"EngineSpec: profile={profile} (expected 0..{len(self.profiles) - 1})"
            )
        used = set().union(*(b.referenced() for b in self.bindings))
        for field in sorted(used):
            value = dims.value(field)
            if value < (0 if field in ZERO_ALLOWED else 1):
                raise EngineError(f"EngineSpec: dims.{field}={value} (expected >= 1)")
        p = self.profiles[profile]
        for field, (lo, hi) in (("batch", p.batch), ("seq_len", p.seq_len)):
            if not lo <= dims.value(field) <= hi:
                raise EngineError(
                    f"EngineSpec: dims.{field}={dims.value(field)} (expected {lo}..{hi} in "
                    f"profile {profile}); the engine was built for these limits"
                )

    def validate(self, profile: int, dims: InferenceDims, tensor_map: Mapping[str, object]) -> None:
        """Checks names, shapes and dtypes of every input (and any output given) in the map.

        Raises:
          EngineError: naming the binding and the expected vs actual shape/dtype.
        """
        self.check_dims(profile, dims)
        known = {b.name for b in self.bindings}
        for name in tensor_map:
            if name not in known:
                raise EngineError(f"tensor map: unknown binding {name!r} (not in the engine spec)")
        for b in self.bindings:
            if b.name not in tensor_map:
                if b.io == "in":
                    raise EngineError(
                        f"tensor map: missing input binding {b.name!r} (expected {b.dtype} "
                        f"{list(b.resolve(dims))}); build_tensor_map should have provided it"
                    )
                continue
            t = tensor_map[b.name]
            shape, dtype = tuple(t.shape), np.dtype(t.dtype).name
            if shape != b.resolve(dims):
                raise EngineError(
                    f"tensor map: {b.name} has shape {list(shape)} (expected "
                    f"{list(b.resolve(dims))} for profile {profile})"
                )
            if dtype != b.dtype:
                raise EngineError(f"tensor map: {b.name} has dtype {dtype} (expected {b.dtype})")


@functools.cache
def build_llm_spec(cfg: EngineConfig, max_decode_len: int = 1) -> EngineSpec:
    """The base-LLM contract of DESIGN.md section 3 for ``cfg``.

    Args:
      cfg: engine config (dims, limits, dtypes).
      max_decode_len: most tokens per row in profile 1 (1 for vanilla decode).
    """
    m = cfg.model
    batch, seq = ("batch",), ("seq_len",)
    bindings = [
        TensorSpec("inputs_embeds", "in", cfg.dtype, (batch, seq, m.hidden_size)),
        TensorSpec("context_lengths", "in", "int32", (batch,)),
        TensorSpec("kvcache_start_index", "in", "int32", (("start_index_len",),)),
    ]
    if m.hybrid is None:  # NemotronH attention has no RoPE: no table to bind
        bindings.append(
            TensorSpec(
                "rope_rotary_cos_sin",
                "in",
                "float32",
                (("rope_batch",), ("kv_len",), m.rope_width),
            )
        )
    bindings.append(TensorSpec("last_token_ids", "in", "int32", (batch, ("select_len",))))
    # Qwen3-VL: visual features added to the hidden states after layer i (zeros elsewhere).
    bindings += [
        TensorSpec(DEEPSTACK_BINDING % i, "in", cfg.dtype, (batch, seq, m.hidden_size))
        for i in range(m.num_deepstack_features)
    ]
    kv_shape = (batch, m.num_key_value_heads, ("kv_len",), m.head_dim)
    aliases = []
    for i in range(m.num_kv_layers):
        for kind in ("key", "value"):
            bindings.append(TensorSpec(f"past_{kind}_{i}", "in", cfg.kv_dtype, kv_shape))
    recurrent = _recurrent_bindings(cfg)
    bindings += [b for b, _ in recurrent]
    bindings += _lora_bindings(cfg)
    if cfg.deployment.external_weights:
        bindings += [
            TensorSpec(n, "in", cfg.dtype, s, kind="weight") for n, s in weight_shapes(cfg).items()
        ]
    bindings += [
        TensorSpec(n, "in", cfg.dtype, s, kind="extra") for n, s in extra_shapes(cfg).items()
    ]
    vocab = cfg.output_vocab_size  # reduced_vocab_size when set (models/vocab.py)
    bindings.append(TensorSpec("logits", "out", "float32", (("batch", "select_len"), vocab)))
    for i in range(m.num_kv_layers):
        for kind in ("key", "value"):
            bindings.append(TensorSpec(f"present_{kind}_{i}", "out", cfg.kv_dtype, kv_shape))
            aliases.append((f"present_{kind}_{i}", f"past_{kind}_{i}"))
    for past, present in recurrent:
        bindings.append(present)
        aliases.append((present.name, past.name))
    batch_range = (1, cfg.max_batch_size)
    profiles = (
        # Prefill: logits of the last token only; no start index (fresh) or one per row (append).
        Profile(
            batch=batch_range,
            seq_len=(1, cfg.max_input_len),
            select_len=(1, 1),
            start_index_len=(0, cfg.max_batch_size),
        ),
        # Decode/verify: up to one logit row per token; one start index per row.
        Profile(batch=batch_range, seq_len=(1, max_decode_len), select_len=(1, max_decode_len)),
    )
    # MRoPE: one table per row, so rope_batch follows the batch (dims.py); else fixed at 1.
    rope_batch = () if m.mrope is not None else (("rope_batch", 1),)
    return EngineSpec(
        bindings=tuple(bindings),
        profiles=profiles,
        aliases=tuple(aliases),
        static_dims=(("kv_len", cfg.kv_capacity), *rope_batch),
    )


def _recurrent_bindings(cfg: EngineConfig) -> list[tuple[TensorSpec, TensorSpec]]:
    """``(past, present)`` SSM and conv state pairs of each Mamba2 layer (``i`` counts Mamba
    layers): ``*_ssm_state_{i}`` ``[B, heads, head_dim, d_state]`` and ``*_conv_state_{i}``
    ``[B, conv_dim, kernel - 1]``; none for a dense model."""
    h = cfg.model.hybrid
    if h is None:
        return []
    mc, batch = h.mamba, ("batch",)
    shapes = {
        "ssm_state": (mc.ssm_dtype, (batch, mc.num_heads, mc.head_dim, mc.state_size)),
        "conv_state": (cfg.dtype, (batch, mc.conv_dim, mc.conv_kernel - 1)),
    }
    out = []
    for i in range(len(h.mamba_layers)):
        for kind, (dt, shape) in shapes.items():
            out.append(
                (
                    TensorSpec(f"past_{kind}_{i}", "in", dt, shape),
                    TensorSpec(f"present_{kind}_{i}", "out", dt, shape),
                )
            )
    return out


def _lora_bindings(cfg: EngineConfig) -> list[TensorSpec]:
    """The adapter bank inputs (``models/lora.py``): the per-row slot and, per layer and target,
    ``lora_A [slots, R, in]`` and ``lora_B [slots, out, R]``; none without LoRA."""
    shapes = bank_shapes(cfg)
    if not shapes:
        return []
    out = [TensorSpec(INDEX_BINDING, "in", "int32", (("batch",),))]
    return out + [TensorSpec(n, "in", cfg.dtype, s) for n, s in shapes.items()]


def _tree_inputs() -> list[TensorSpec]:
    """The tree mask and positions of a spec-decode step (DESIGN.md section 3)."""
    mask = (("batch",), ("attn_mask_seq_len",), ("packed_mask_len",))
    return [
        TensorSpec("attention_mask", "in", "int32", mask),
        TensorSpec("attention_pos_id", "in", "int32", (("batch",), ("attn_mask_seq_len",))),
    ]


@functools.cache
def build_spec_base_spec(bundle) -> EngineSpec:
    """The base contract for EAGLE3 spec decoding (``bundle``: a ``SpecDecodeConfig``).

    The LLM contract (profile 1 up to ``max_verify_tree_size`` tokens, a logit row per token)
    plus the tree inputs ``attention_mask`` ``[B, S, ceil(S/32)]`` / ``attention_pos_id``
    ``[B, S]`` (profile 0 binds ``[B, 1, 1]`` / ``[B, 1]`` and attends causally) and the output
    ``hidden_states`` ``[B * S, 3H]`` (the inputs of the draft's feature layers).
    """
    llm = build_llm_spec(bundle.base, bundle.max_verify_tree_size)
    ins = [b for b in llm.bindings if b.io == "in"] + _tree_inputs()
    hidden = TensorSpec(
        "hidden_states", "out", bundle.base.dtype, (("batch", "seq_len"), bundle.hidden_dim)
    )
    outs = [b for b in llm.bindings if b.io == "out"]
    p0, p1 = llm.profiles
    p1 = dataclasses.replace(p1, attn_mask_seq_len=p1.seq_len)
    return dataclasses.replace(
        llm, bindings=tuple(ins + outs[:1] + [hidden] + outs[1:]), profiles=(p0, p1)
    )


@functools.cache
def build_draft_spec(bundle) -> EngineSpec:
    """The EAGLE3 draft contract (upstream's ``buildRegistryForSpecDecodeDraft``).

    Inputs: ``inputs_embeds`` ``[B, S, Hd]``, ``base_hidden_states`` ``[B, S, 3H]`` and
    ``draft_hidden_states_in`` ``[B, S, Hd]`` (the draft adds ``fc(base) + draft``; a step binds
    zeros to the one it does not use), the LLM inputs and the tree inputs, the draft's KV cache.
    Outputs: ``logits`` ``[B * sel, Vd]`` over the draft vocabulary and
    ``draft_hidden_states_out`` ``[B * sel, Hd]`` (its hidden state before the final norm).
    Profile 0 is the draft prefill; profile 1 the proposal (``P`` tokens, ``K`` logit rows) and
    accept (``A`` tokens, 1 logit row) steps.
    """
    cfg, d = bundle.base, bundle.draft
    batch, seq, sel = ("batch",), ("seq_len",), ("select_len",)
    bindings = [
        TensorSpec("inputs_embeds", "in", cfg.dtype, (batch, seq, d.hidden_size)),
        TensorSpec("base_hidden_states", "in", cfg.dtype, (batch, seq, bundle.hidden_dim)),
        TensorSpec("draft_hidden_states_in", "in", cfg.dtype, (batch, seq, d.hidden_size)),
        TensorSpec("context_lengths", "in", "int32", (batch,)),
        TensorSpec("kvcache_start_index", "in", "int32", (("start_index_len",),)),
        TensorSpec(
            "rope_rotary_cos_sin",
            "in",
            "float32",
            (("rope_batch",), ("kv_len",), cfg.model.rope.rotary_dim),
        ),
        TensorSpec("last_token_ids", "in", "int32", (batch, sel)),
        *_tree_inputs(),
    ]
    kv_shape = (batch, d.num_key_value_heads, ("kv_len",), d.head_dim)
    for i in range(d.num_layers):
        for kind in ("key", "value"):
            bindings.append(TensorSpec(f"past_{kind}_{i}", "in", cfg.kv_dtype, kv_shape))
    bindings.append(
        TensorSpec("logits", "out", "float32", (("batch", "select_len"), d.draft_vocab_size))
    )
    bindings.append(
        TensorSpec(
            "draft_hidden_states_out", "out", cfg.dtype, (("batch", "select_len"), d.hidden_size)
        )
    )
    aliases = []
    for i in range(d.num_layers):
        for kind in ("key", "value"):
            bindings.append(TensorSpec(f"present_{kind}_{i}", "out", cfg.kv_dtype, kv_shape))
            aliases.append((f"present_{kind}_{i}", f"past_{kind}_{i}"))
    batch_range = (1, cfg.max_batch_size)
    step = max(bundle.proposal_len, bundle.accept_len)
    profiles = (
        Profile(
            batch=batch_range,
            seq_len=(1, cfg.max_input_len),
            start_index_len=(0, cfg.max_batch_size),
        ),
        Profile(
            batch=batch_range,
            seq_len=(1, step),
            select_len=(1, bundle.tree_topk),
            attn_mask_seq_len=(1, step),
        ),
    )
    return EngineSpec(
        bindings=tuple(bindings),
        profiles=profiles,
        aliases=tuple(aliases),
        static_dims=(("kv_len", cfg.kv_capacity), ("rope_batch", 1)),
    )
