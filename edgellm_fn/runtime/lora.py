"""``LoraBank``: named PEFT adapters of one engine (upstream's ``LoRAManager`` and the runner's
``switchLoraWeights`` / ``getActiveLoraWeightsName`` / ``getAvailableLoraWeights``).

Adapters live in slots ``1..n`` of the engine's bank; each row of a batch picks one by name (None:
no adapter), so one batch may mix adapters. Choosing or switching adapters changes only the
``[B]`` slot array (data, never a recompile)::

    bank = load_lora_bank(engine.config, {"math": "adapters/math", "chat": "adapters/chat"})
    state = create_state(engine.config, 3, lora=bank.state(["math", None, "chat"]))
    ...
    state = bank.switch(state, ["chat", "chat", None])   # between requests
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from ..config import EngineConfig, read_json
from ..errors import AdapterError, InputError, show
from ..models.lora import CONFIG_FILE, Adapter, build_bank, read_peft_adapter
from ..state.lora import LoraState
from ..state.resources import RuntimeState
from .steps import check_live


class LoraBank:
    """The adapters an engine serves, by name, packed into its padded bank.

    Attributes:
      config: the engine config the bank was built for.
      adapters: the adapters in slot order (slot ``i + 1``).
      weights: bank binding name -> host array (``models/lora.py`` layout).
    """

    def __init__(self, config: EngineConfig, adapters: Sequence[Adapter]):
        names = [a.name for a in adapters]
        for n in names:
            if not isinstance(n, str) or not n or names.count(n) > 1:
                raise AdapterError(
                    f"lora bank: name={show(n)} (expected a unique non-empty string per adapter)"
                )
        self.config = config
        self.adapters = tuple(adapters)
        self.weights = build_bank(config, adapters)
        self._slots = {n: i + 1 for i, n in enumerate(names)}

    def available(self) -> list[str]:
        """Every adapter name (upstream's ``getAvailableLoraWeights``)."""
        return list(self._slots)

    def slot(self, name: str | int | None, where: str = "lora") -> int:
        """The bank slot of adapter ``name`` (0 for None or ``""``: no adapter); an int is taken
        as a slot index itself.

        Raises:
          InputError: an unknown name or a slot index out of range.
        """
        if name is None or name == "":
            return 0
        if isinstance(name, int) and not isinstance(name, bool):
            if not 0 <= name <= len(self._slots):
                raise InputError(
                    f"{where}: lora index={name} (expected 0..{len(self._slots)}: 0 for no "
                    f"adapter, i for adapter {self.available()}[i - 1])"
                )
            return name
        if name not in self._slots:
            raise InputError(
                f"{where}: lora_name={show(name)} (expected one of {self.available()} or null); "
                "load it with --lora NAME=DIR or available_lora_weights"
            )
        return self._slots[name]

    def indices(self, names: Sequence[str | int | None], batch: int, where: str) -> np.ndarray:
        """``[batch]`` int32 slots of ``names`` (one per row)."""
        if isinstance(names, str) or len(names) != batch:
            raise InputError(
                f"{where}: {len(names) if not isinstance(names, str) else 'a string'} lora names "
                f"(expected one per row, {batch}); pass a list with None for rows without one"
            )
        return np.array([self.slot(n, where) for n in names], np.int32)

    def state(self, names: Sequence[str | int | None]) -> LoraState:
        """A fresh device bank (its own copy) with each row set to ``names[row]``."""
        return LoraState.create(
            self.config, len(names), self.weights, self.indices(names, len(names), "lora")
        )

    def switch(self, state: RuntimeState, names: Sequence[str | int | None]) -> RuntimeState:
        """Sets each row's adapter (upstream's ``switchLoraWeights``); no step, no recompile.

        Raises:
          InputError: a state without a LoRA bank, a wrong count or an unknown name; nothing
            is donated.
        """
        check_live(state, "switch_lora")
        lora = _lora_of(state, "switch_lora")
        index = self.indices(names, state.batch, "switch_lora")
        new = dataclasses.replace(lora, index=jnp.asarray(index))
        return dataclasses.replace(state, res=dataclasses.replace(state.res, lora=new))

    def active(self, state: RuntimeState) -> list[str | None]:
        """Each row's adapter name, None for none (upstream's ``getActiveLoraWeightsName``)."""
        index = np.asarray(_lora_of(state, "active_lora").index)
        names = [None, *self._slots]
        bad = np.flatnonzero((index < 0) | (index >= len(names)))
        if bad.size:
            r = int(bad[0])
            raise InputError(
                f"active_lora: row {r} slot={int(index[r])} (expected 0..{len(names) - 1}); the "
                "state's bank is not this bank"
            )
        return [names[int(i)] for i in index]


def _lora_of(state: RuntimeState, where: str) -> LoraState:
    if state.res.lora is None:
        raise InputError(
            f"{where}: the state has no LoRA bank (expected an engine built with max_lora_rank "
            ">= 1); create the engine config with max_lora_rank and max_loras"
        )
    return state.res.lora


def load_lora_bank(cfg: EngineConfig, paths: Mapping[str, str | Path]) -> LoraBank:
    """Reads every PEFT adapter of ``paths`` (name -> directory) into a bank for ``cfg``.

    Raises:
      AdapterError: an adapter that does not fit (``models.lora.read_peft_adapter``), more
        adapters than ``max_loras``, or an engine without LoRA bindings.
    """
    r = cfg.deployment.max_lora_rank
    if not r:
        build_bank(cfg, [])  # raises the engine-without-LoRA error
    return LoraBank(cfg, [read_peft_adapter(p, cfg.model, r, name) for name, p in paths.items()])


def lora_limits(paths: Mapping[str, str | Path]) -> tuple[int, int]:
    """``(max_lora_rank, max_loras)`` an xla engine needs for these adapters (0, 0 if none).

    Reads only the configs' ranks (``r`` and ``rank_pattern``); the weights are checked later.
    """
    rank = 0
    for name, p in paths.items():
        raw = read_json(Path(p) / CONFIG_FILE, error=AdapterError)
        ranks = [raw.get("r"), *(raw.get("rank_pattern") or {}).values()]
        for v in ranks:
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise AdapterError(f"lora {name!r} ({p}): r={show(v)} (expected an integer >= 1)")
        rank = max(rank, *ranks)
    return rank, len(paths)
